/**
 * pgbench on lsnfs against the same PostgreSQL on a plain local directory.
 *
 * Two clusters with identical settings (plus lsnfs's wal_init_zero/wal_recycle
 * off on both), pgbench scale 20, 4 clients; tpcb-like and select-only runs
 * alternate between the two so that machine noise hits both alike. lsnfs is
 * also run with full_page_writes=off (safe there: page writes are atomic).
 * A CHECKPOINT precedes every run, so every tpcb run pays the same full-page
 * images after it.
 *
 * Usage (as root): scripts/bench-pgbench [--duration S] [--runs N] [--scale N]
 *   [--clients N] [--dir DIR] [--keep] [--json]
 * --json prints one object on stdout (medians; ratio = lsnfs/local):
 *   {"tpcb":{"local":N,"lsnfs":N,"ratio":R},"select":{…},"tpcb_fpw_off":{"lsnfs":N,"ratio":R}}
 * Progress and per-run figures go to stderr.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { Command } from 'commander';
import { LsnfsVolume, log, makeWorkDir, removeWorkDir, runBenchProgram, median, round1, round3, positiveInt } from './bench-common';
import { BuiltinScript, LSNFS_SETTINGS, PgCluster, execOk, pgbenchInit, runPgbench } from '../src/pg';

interface BenchOptions { duration: number; runs: number; scale: number; clients: number; dir?: string; keep: boolean; json: boolean }

type Target = 'local' | 'lsnfs' | 'lsnfs-fpw-off';
interface RunRecord { round: number; target: Target; script: BuiltinScript; tps: number }

async function bench(options: BenchOptions): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('bench-pgbench mounts lsnfs and runs PostgreSQL as user postgres: run it as root');
  const dir = await makeWorkDir(options, 'lsnfs-bench-');
  const volume = new LsnfsVolume(path.join(dir, 'lsnfs'));
  const settings = { ...LSNFS_SETTINGS, full_page_writes: true };
  const portBase = 21000 + (process.pid % 10000);
  const clusters: Record<'local' | 'lsnfs', PgCluster> = {
    local: new PgCluster({ dataDir: path.join(dir, 'local', 'pgdata'), runDir: path.join(dir, 'local-run'), port: portBase, settings }),
    lsnfs: new PgCluster({ dataDir: path.join(volume.mountpoint, 'pgdata'), runDir: path.join(dir, 'lsnfs-run'), port: portBase + 1, settings }),
  };
  let mounted = false;
  try {
    log(`bench: in ${dir}; local data directory on ${(await execOk('df', ['--output=fstype', dir])).split('\n')[1]?.trim()}, lsnfs on a file device`);
    await fsp.mkdir(path.dirname(volume.mountpoint), { recursive: true });
    await volume.create('8G');
    await volume.mount();
    mounted = true;
    for (const name of ['local', 'lsnfs'] as const) {
      const cluster = clusters[name];
      await fsp.mkdir(path.dirname(cluster.dataDir), { recursive: true });
      await cluster.initdb();
      await cluster.start();
      const seconds = await pgbenchInit(cluster, options.scale);
      log(`bench: ${name}: pgbench -i -s ${options.scale} took ${seconds.toFixed(1)} s`);
    }

    const runs: RunRecord[] = [];
    const runOne = async (round: number, target: Target, script: BuiltinScript): Promise<void> => {
      const cluster = clusters[target === 'local' ? 'local' : 'lsnfs'];
      await cluster.psql('CHECKPOINT');
      const result = await runPgbench(cluster, { builtin: script, clients: options.clients, threads: Math.min(options.clients, 2), durationS: options.duration });
      runs.push({ round, target, script, tps: result.tps! });
      log(`bench: round ${round} ${script.padEnd(11)} ${target.padEnd(13)} ${result.tps!.toFixed(1).padStart(9)} tps`);
    };
    for (let round = 1; round <= options.runs; round++) {
      // Alternate which side goes first, so drift over time hits both alike.
      const order: Array<'local' | 'lsnfs'> = round % 2 ? ['local', 'lsnfs'] : ['lsnfs', 'local'];
      for (const target of order) {
        await runOne(round, target, 'tpcb-like');
        if (target === 'lsnfs') {
          await clusters.lsnfs.reconfigure({ full_page_writes: false });
          await runOne(round, 'lsnfs-fpw-off', 'tpcb-like');
          await clusters.lsnfs.reconfigure({ full_page_writes: true });
        }
      }
      for (const target of order) await runOne(round, target, 'select-only');
    }

    const med = (target: Target, script: BuiltinScript): number =>
      round1(median(runs.filter((r) => r.target === target && r.script === script).map((r) => r.tps)));
    const tpcbLocal = med('local', 'tpcb-like');
    const selectLocal = med('local', 'select-only');
    const summary = {
      tpcb: { local: tpcbLocal, lsnfs: med('lsnfs', 'tpcb-like'), ratio: round3(med('lsnfs', 'tpcb-like') / tpcbLocal) },
      select: { local: selectLocal, lsnfs: med('lsnfs', 'select-only'), ratio: round3(med('lsnfs', 'select-only') / selectLocal) },
      tpcb_fpw_off: { lsnfs: med('lsnfs-fpw-off', 'tpcb-like'), ratio: round3(med('lsnfs-fpw-off', 'tpcb-like') / tpcbLocal) },
    };
    for (const [name, cluster] of Object.entries(clusters)) {
      const problems = await cluster.logProblems();
      if (problems.length > 0) log(`bench: ${name} server log has ${problems.length} warning/error line(s), e.g.:\n  ${problems.slice(0, 5).join('\n  ')}`);
    }

    if (options.json) {
      process.stdout.write(JSON.stringify(summary) + '\n');
    } else {
      const lines = [
        '',
        `pgbench scale ${options.scale}, ${options.clients} clients, ${options.duration} s per run, ${options.runs} run(s) each (TPS)`,
        'round  script       local       lsnfs       lsnfs fpw=off',
      ];
      for (let round = 1; round <= options.runs; round++) {
        for (const script of ['tpcb-like', 'select-only'] as const) {
          const tps = (target: Target): string => {
            const run = runs.find((r) => r.round === round && r.target === target && r.script === script);
            return (run ? run.tps.toFixed(1) : '-').padStart(10);
          };
          lines.push(`${String(round).padStart(5)}  ${script.padEnd(11)} ${tps('local')}  ${tps('lsnfs')}  ${tps('lsnfs-fpw-off')}`);
        }
      }
      lines.push(
        '',
        `median tpcb-like:   local ${summary.tpcb.local}, lsnfs ${summary.tpcb.lsnfs} (ratio ${summary.tpcb.ratio}), ` +
          `lsnfs fpw=off ${summary.tpcb_fpw_off.lsnfs} (ratio ${summary.tpcb_fpw_off.ratio})`,
        `median select-only: local ${summary.select.local}, lsnfs ${summary.select.lsnfs} (ratio ${summary.select.ratio})`,
      );
      process.stdout.write(lines.join('\n') + '\n');
    }
  } finally {
    for (const cluster of Object.values(clusters)) await cluster.stopQuietly('fast');
    if (mounted) await volume.umount().catch((error: Error) => log(`bench: umount failed: ${error.message}`));
    await removeWorkDir(options, dir);
  }
}

const program = new Command('bench-pgbench')
  .description('pgbench: PostgreSQL on lsnfs vs the same PostgreSQL on a local directory')
  .option('--duration <seconds>', 'seconds per pgbench run', positiveInt('--duration'), 30)
  .option('--runs <n>', 'runs of each kind per target (alternated)', positiveInt('--runs'), 2)
  .option('--scale <n>', 'pgbench scale factor', positiveInt('--scale'), 20)
  .option('--clients <n>', 'pgbench clients', positiveInt('--clients'), 4);
runBenchProgram(program, bench);
