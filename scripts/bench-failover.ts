/**
 * Failover benchmark: `lsnfs drill` rounds on a file device and on iSCSI
 * (a private tgt on 127.0.0.1), alternated in blocks, and pgbench TPS of a
 * primary over iSCSI against the same over a file device, alternated.
 *
 * RTO is failure -> first commit on the new primary (detection excluded: the
 * drill fails over with --force). RPO must be 0 in every round.
 *
 * Each round starts from a completed checkpoint and fails the primary
 * --kill-after seconds into the load (default 3-10): the redo, the largest
 * part of the RTO, grows with it. 20-57 covers the late part of a 30 s
 * checkpoint cycle (a spread checkpoint completes ~27 s after it starts).
 *
 * Usage (as root): scripts/bench-failover [--rounds N] [--block N] [--scale N]
 *   [--kill-after MIN-MAX] [--duration S] [--runs N] [--dir DIR] [--keep] [--json]
 * --json prints one object on stdout:
 *   {"rounds":N,"rpo_lost_commits":N,"fence_failures":N,"rto_s":{"p50":N,"p99":N,"max":N},
 *    "rto_s_by_device":{"file":{…},"iscsi":{…}},"tps_iscsi_over_file":R,"tps":{"file":N,"iscsi":N}}
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { Command } from 'commander';
import { REPO_ROOT, log, lsnfsCli, makeWorkDir, median, removeWorkDir, round1, round2, round3, positiveInt, runBenchProgram } from './bench-common';
import { DrillRound, runDrill } from '../src/cli/drill';
import { percentile } from '../src/util/stats';
import { formatBytes } from '../src/util/units';
import { LSNFS_SETTINGS, PgCluster, execOk, pgbenchInit, runPgbench } from '../src/pg';

interface BenchOptions { rounds: number; block: number; scale: number; killAfter: string; duration: number; runs: number; dir?: string; keep: boolean; json: boolean }
type DeviceKind = 'file' | 'iscsi';

function rtoSummary(rounds: DrillRound[]): { p50: number; p99: number; max: number } {
  const seconds = rounds.map((r) => r.rtoMs / 1000);
  return { p50: round2(percentile(seconds, 50)), p99: round2(percentile(seconds, 99)), max: round2(Math.max(...seconds)) };
}

/** A private tgt target (scripts/tgt-start): returns its LUN's URL. */
async function startTarget(dir: string, port: number): Promise<string> {
  const out = await execOk(path.join(REPO_ROOT, 'scripts', 'tgt-start'), [dir, '8G', String(port)]);
  return out.trim().split('\n').pop()!;
}

/** pgbench tpcb-like TPS of a primary on each device, alternated. */
async function measureTps(dir: string, devices: Record<DeviceKind, string>, options: BenchOptions): Promise<Record<DeviceKind, number>> {
  const env = { LSNFS_RUNTIME_DIR: path.join(dir, 'run') };
  const clusters = {} as Record<DeviceKind, PgCluster>;
  const mountpoints = {} as Record<DeviceKind, string>;
  const portBase = 23000 + (process.pid % 5000);
  try {
    for (const [i, kind] of (['file', 'iscsi'] as const).entries()) {
      mountpoints[kind] = path.join(dir, `tps-${kind}`);
      await fsp.mkdir(mountpoints[kind], { recursive: true });
      await lsnfsCli(['mkfs', '--device', devices[kind], '--force', ...(kind === 'file' ? ['--size', '8G'] : [])], env);
      await lsnfsCli(['mount', '--device', devices[kind], '--mountpoint', mountpoints[kind], '--allow-other', '--host', `tps-${kind}`], env);
      clusters[kind] = new PgCluster({
        dataDir: path.join(mountpoints[kind], 'pgdata'), runDir: path.join(dir, `tps-${kind}-run`), port: portBase + i,
        settings: { ...LSNFS_SETTINGS, full_page_writes: false },
      });
      await clusters[kind].initdb();
      await clusters[kind].start();
      await pgbenchInit(clusters[kind], options.scale);
    }
    const tps: Record<DeviceKind, number[]> = { file: [], iscsi: [] };
    for (let run = 1; run <= options.runs; run++) {
      for (const kind of run % 2 ? (['file', 'iscsi'] as const) : (['iscsi', 'file'] as const)) {
        await clusters[kind].psql('CHECKPOINT');
        const result = await runPgbench(clusters[kind], { builtin: 'tpcb-like', clients: 4, threads: 2, durationS: options.duration });
        tps[kind].push(result.tps!);
        log(`bench: run ${run} tpcb-like on ${kind.padEnd(5)} ${result.tps!.toFixed(1).padStart(8)} tps`);
      }
    }
    return { file: round1(median(tps.file)), iscsi: round1(median(tps.iscsi)) };
  } finally {
    for (const kind of ['file', 'iscsi'] as const) {
      await clusters[kind]?.stopQuietly('fast');
      if (mountpoints[kind]) await lsnfsCli(['umount', '--mountpoint', mountpoints[kind]], env).catch(() => undefined);
    }
  }
}

async function bench(options: BenchOptions): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('bench-failover mounts lsnfs, runs tgt and PostgreSQL: run it as root');
  const dir = await makeWorkDir(options, 'lsnfs-bench-failover-');
  const tgtDir = path.join(dir, 'tgt');
  let targetStarted = false;
  try {
    const iscsiUrl = await startTarget(tgtDir, 3260 + 1 + (process.pid % 1000));
    targetStarted = true;
    const devices: Record<DeviceKind, string> = { file: path.join(dir, 'tps-file.img'), iscsi: iscsiUrl };
    const rounds: Record<DeviceKind, DrillRound[]> = { file: [], iscsi: [] };
    const perDevice = Math.ceil(options.rounds / 2);
    for (let block = 0; rounds.file.length + rounds.iscsi.length < options.rounds; block++) {
      for (const kind of block % 2 ? (['iscsi', 'file'] as const) : (['file', 'iscsi'] as const)) {
        const count = Math.min(options.block, perDevice - rounds[kind].length);
        if (count <= 0) continue;
        log(`bench: drill block ${block + 1} on ${kind}: ${count} round(s)`);
        const report = await runDrill({
          dir: path.join(dir, `drill-${block}-${kind}`), ...(kind === 'iscsi' ? { device: iscsiUrl, force: true } : { force: false }),
          size: '4G', rounds: count, scale: options.scale, clients: 4, killAfter: options.killAfter, port: 25000 + (process.pid % 5000),
          failure: 'alternate', fullPageWrites: 'off', keep: false, json: true,
        }, (message) => log(`  ${message}`));
        for (const r of report.rounds) {
          log(`bench: ${kind} round: ${r.failure} RTO ${r.rtoMs} ms (${r.phases.map((p) => `${p.name} ${p.ms}`).join(', ')}; redo WAL ${formatBytes(r.redoWalBytes)}), lost ${r.lost}, fenced ${r.fenced}`);
        }
        rounds[kind].push(...report.rounds);
        if (!options.keep) await fsp.rm(report.dir, { recursive: true, force: true });
      }
    }
    const all = [...rounds.file, ...rounds.iscsi];
    log(`bench: pgbench TPS over iscsi vs file (${options.runs} run(s) each, ${options.duration} s, alternated)`);
    const tps = await measureTps(dir, devices, options);
    const summary = {
      rounds: all.length,
      rpo_lost_commits: all.reduce((sum, r) => sum + r.lost, 0),
      fence_failures: all.filter((r) => !r.fenced).length,
      rto_s: rtoSummary(all),
      rto_s_by_device: { file: rtoSummary(rounds.file), iscsi: rtoSummary(rounds.iscsi) },
      tps_iscsi_over_file: round3(tps.iscsi / tps.file),
      tps,
    };
    if (options.json) process.stdout.write(JSON.stringify(summary) + '\n');
    else {
      const phaseNames = all[0]?.phases.map((p) => p.name) ?? [];
      const phaseMedians = phaseNames.map((name) => `${name} ${median(all.map((r) => r.phases.find((p) => p.name === name)?.ms ?? 0))} ms`);
      process.stdout.write([
        `failover drill: ${summary.rounds} rounds (file ${rounds.file.length}, iscsi ${rounds.iscsi.length}), pgbench scale ${options.scale}`,
        `RPO: ${summary.rpo_lost_commits} acknowledged commits lost; fence failures: ${summary.fence_failures}`,
        `RTO s: p50 ${summary.rto_s.p50}, p99 ${summary.rto_s.p99}, max ${summary.rto_s.max} ` +
          `(file p50 ${summary.rto_s_by_device.file.p50} / max ${summary.rto_s_by_device.file.max}; iscsi p50 ${summary.rto_s_by_device.iscsi.p50} / max ${summary.rto_s_by_device.iscsi.max})`,
        `median phases: ${phaseMedians.join(', ')}`,
        `pgbench tpcb-like TPS: file ${tps.file}, iscsi ${tps.iscsi}, ratio iscsi/file ${summary.tps_iscsi_over_file}`,
      ].join('\n') + '\n');
    }
  } finally {
    if (targetStarted) await execOk(path.join(REPO_ROOT, 'scripts', 'tgt-stop'), [tgtDir]).catch((error: Error) => log(`bench: tgt-stop: ${error.message}`));
    await removeWorkDir(options, dir);
  }
}

const program = new Command('bench-failover')
  .description('failover drill rounds on a file device and on iSCSI (tgt): RTO, RPO, fence; pgbench TPS over iSCSI vs file')
  .option('--rounds <n>', 'drill rounds in all, half on each device', positiveInt('--rounds'), 20)
  .option('--block <n>', 'rounds per drill (one setup each); devices alternate between blocks', positiveInt('--block'), 5)
  .option('--scale <n>', 'pgbench scale factor', positiveInt('--scale'), 10)
  .option('--kill-after <seconds>', 'the drill\'s window for the failure, seconds into each round\'s load (MIN-MAX)', '3-10')
  .option('--duration <seconds>', 'seconds per TPS run', positiveInt('--duration'), 30)
  .option('--runs <n>', 'TPS runs per device (alternated)', positiveInt('--runs'), 2);

runBenchProgram(program, bench);
