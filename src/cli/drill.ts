/**
 * `lsnfs drill`: proves the promise "every acknowledged commit survives" on
 * a real PostgreSQL. On a file device it formats and mounts a volume, starts
 * PostgreSQL on it, runs pgbench while pgbench logs every commit it saw
 * acknowledged (-l), then SIGKILLs PostgreSQL and the filesystem daemon at a
 * random moment, remounts, lets PostgreSQL recover, and checks:
 *   RPO  every acknowledged commit is in pgbench_history (lost = 0),
 *        the tpcb balances agree, pg_amcheck --heapallindexed is clean;
 *   RTO  time from the kill to the first successful commit afterwards,
 *        split into phases.
 * A round is one kill and recovery; the report has one row per round. A
 * failover drill (standby, fencing) fills the same columns with its own
 * phases.
 */
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Command, Option } from 'commander';
import { openDevice } from '../device/open';
import { fsck, FsckReport } from '../volume/inspect';
import { mkfs } from '../volume/mkfs';
import { UserError } from '../util/errors';
import { processAlive } from '../util/process';
import { formatBytes, parseSizeBytes } from '../util/units';
import {
  LSNFS_SETTINGS, PgCluster, RunningPgbench, countLoggedCommits, exec, pgBinDir, pgbenchInit, serverPids, startPgbench, tpcbBalances, waitForExit,
} from '../pg';
import { mountInBackground, umount } from './mount';
import { isMounted, readMountRecord, removeMountRecord } from './runtime';

export interface DrillOptions {
  dir?: string;
  size: string;
  rounds: number;
  scale: number;
  clients: number;
  killAfter: string;
  port: number;
  fullPageWrites: 'on' | 'off';
  keep: boolean;
  json: boolean;
}

export interface DrillPhase { name: string; ms: number }

export interface DrillRound {
  round: number;
  /** Seconds of load before the kill. */
  killAfterS: number;
  /** Commits pgbench saw acknowledged, this round and in total since pgbench -i. */
  acknowledgedInRound: number;
  acknowledged: number;
  /** Rows of pgbench_history after recovery. */
  found: number;
  /** Acknowledged commits missing after recovery: the RPO in transactions (must be 0). */
  lost: number;
  /** Rows beyond the acknowledged ones: transactions in flight at the kill that did commit. */
  inFlightCommitted: number;
  /** Kill -> first successful commit after recovery. */
  rtoMs: number;
  phases: DrillPhase[];
  balancesConsistent: boolean;
  amcheckClean: boolean;
  amcheckOutput?: string;
  ok: boolean;
}

export interface DrillReport {
  kind: 'crash-restart';
  ok: boolean;
  dir: string;
  /** False when the drill passed in a temp dir and removed it. */
  dirKept: boolean;
  device: { path: string; type: 'file'; bytes: number };
  postgres: { version: string; settings: Record<string, string | number | boolean>; dataChecksums: boolean };
  load: { tool: 'pgbench'; script: 'tpcb-like'; scale: number; clients: number };
  setup: DrillPhase[];
  rounds: DrillRound[];
  summary: { rounds: number; failedRounds: number; lostTotal: number; rpoTransactions: number; rtoMs: { min: number; median: number; max: number } };
  fsck: { ok: boolean; records: number; problems: FsckReport['problems'] } | null;
  postgresLogProblems: string[];
}

const PG_EXIT_TIMEOUT_MS = 30_000;

function parseCount(what: string, min: number) {
  return (text: string): number => {
    const value = Number(text);
    if (!Number.isSafeInteger(value) || value < min) throw new UserError(`${what}: "${text}" must be an integer >= ${min}`);
    return value;
  };
}

function parseKillWindow(text: string): { minS: number; maxS: number } {
  const match = /^\s*(\d+(?:\.\d+)?)\s*(?:-\s*(\d+(?:\.\d+)?))?\s*$/.exec(text);
  if (!match) throw new UserError(`--kill-after: "${text}" is not SECONDS or MIN-MAX (e.g. 3-12)`);
  const minS = Number(match[1]);
  const maxS = match[2] !== undefined ? Number(match[2]) : minS;
  if (maxS < minS || minS <= 0) throw new UserError(`--kill-after: "${text}" needs 0 < MIN <= MAX`);
  return { minS, maxS };
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function median(values: number[]): number {
  if (values.length === 0) return 0;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid]! : Math.round((sorted[mid - 1]! + sorted[mid]!) / 2);
}

/** Times one step. */
async function timed<T>(phases: DrillPhase[], name: string, body: () => Promise<T>): Promise<T> {
  const started = Date.now();
  const value = await body();
  phases.push({ name, ms: Date.now() - started });
  return value;
}

/** The mounted volume the drill works on. */
class DrillVolume {
  readonly device: string;
  readonly mountpoint: string;
  constructor(readonly dir: string, readonly host: string) {
    this.device = path.join(dir, 'device.img');
    this.mountpoint = path.join(dir, 'mnt');
  }

  async create(sizeBytes: number): Promise<void> {
    const handle = await fsp.open(this.device, 'wx');
    try {
      await handle.truncate(sizeBytes);
    } finally {
      await handle.close();
    }
    const device = await openDevice(this.device, { readOnly: false });
    try {
      await mkfs(device);
    } finally {
      await device.close();
    }
    await fsp.mkdir(this.mountpoint, { recursive: true });
  }

  async mount(): Promise<void> {
    await mountInBackground({ device: this.device, mountpoint: this.mountpoint, host: this.host, allowOther: true, foreground: false, role: 'primary', pollIntervalMs: 5 });
  }

  async daemonPid(): Promise<number> {
    const record = await readMountRecord(this.mountpoint);
    if (!record) throw new Error(`no mount record for ${this.mountpoint}`);
    return record.pid;
  }

  /** After a crash: wait until the daemon is gone, drop the dead kernel mount and the stale record. */
  async cleanUpAfterCrash(pid: number): Promise<void> {
    while (processAlive(pid)) await sleep(5);
    if (await isMounted(this.mountpoint)) await exec('umount', ['-l', this.mountpoint]);
    await removeMountRecord(this.mountpoint);
  }

  async umount(): Promise<void> {
    await umount(this.mountpoint);
  }

  /** Best effort for error paths. */
  async forceUmount(): Promise<void> {
    if (!(await isMounted(this.mountpoint))) return;
    await umount(this.mountpoint).catch(async () => {
      const record = await readMountRecord(this.mountpoint);
      if (record && processAlive(record.pid)) process.kill(record.pid, 'SIGKILL');
      await exec('umount', ['-l', this.mountpoint]).catch(() => undefined);
      await removeMountRecord(this.mountpoint);
    });
  }
}

type Progress = (message: string) => void;

export async function runDrill(options: DrillOptions, progress: Progress): Promise<DrillReport> {
  const killWindow = parseKillWindow(options.killAfter);
  const sizeBytes = parseSizeBytes(options.size, '--size');
  if (process.getuid?.() !== 0) throw new UserError('lsnfs drill mounts a filesystem and runs PostgreSQL as user postgres: run it as root');
  await pgBinDir().catch((error: Error) => { throw new UserError(error.message); });

  const dir = await drillDir(options.dir);
  await fsp.chmod(dir, 0o755); // PostgreSQL (user postgres) must reach the mount and its run directory
  const volume = new DrillVolume(dir, os.hostname());
  const settings = { ...LSNFS_SETTINGS, full_page_writes: options.fullPageWrites === 'on' };
  const cluster = new PgCluster({ dataDir: path.join(volume.mountpoint, 'pgdata'), runDir: path.join(dir, 'pg-run'), port: options.port, settings });
  const report: DrillReport = {
    kind: 'crash-restart', ok: false, dir, dirKept: true,
    device: { path: volume.device, type: 'file', bytes: sizeBytes },
    postgres: { version: '', settings: cluster.settings, dataChecksums: true },
    load: { tool: 'pgbench', script: 'tpcb-like', scale: options.scale, clients: options.clients },
    setup: [], rounds: [],
    summary: { rounds: 0, failedRounds: 0, lostTotal: 0, rpoTransactions: 0, rtoMs: { min: 0, median: 0, max: 0 } },
    fsck: null, postgresLogProblems: [],
  };

  let acknowledged = 0;
  let load: RunningPgbench | null = null;
  const cleanUp = async (): Promise<void> => {
    load?.kill('SIGKILL');
    await cluster.stopQuietly('immediate');
    await volume.forceUmount().catch(() => undefined);
  };
  const onInterrupt = (): void => {
    progress(`drill: interrupted; stopping PostgreSQL and unmounting (files kept in ${dir})`);
    void cleanUp().finally(() => process.exit(130));
  };
  process.once('SIGINT', onInterrupt);
  process.once('SIGTERM', onInterrupt);
  try {
    progress(`drill: volume in ${dir} (${formatBytes(sizeBytes)} file device)`);
    await timed(report.setup, 'mkfs', () => volume.create(sizeBytes));
    await timed(report.setup, 'mount', () => volume.mount());
    await timed(report.setup, 'initdb', () => cluster.initdb({ dataChecksums: true }));
    await timed(report.setup, 'postgres start', () => cluster.start());
    report.postgres.version = await cluster.psql('SHOW server_version');
    progress(`drill: PostgreSQL ${report.postgres.version} up; pgbench -i -s ${options.scale}`);
    await timed(report.setup, 'pgbench -i', () => pgbenchInit(cluster, options.scale));
    await cluster.psql('CREATE TABLE drill_probe (round int, at timestamptz DEFAULT now())');

    for (let round = 1; round <= options.rounds; round++) {
      const killAfterS = killWindow.minS + Math.random() * (killWindow.maxS - killWindow.minS);
      progress(`drill: round ${round}/${options.rounds}: pgbench with ${options.clients} clients, SIGKILL in ${killAfterS.toFixed(1)} s`);
      const logDir = path.join(dir, `pgbench-round-${round}`);
      load = await startPgbench(cluster, {
        clients: options.clients, threads: Math.min(options.clients, 2), durationS: Math.ceil(killWindow.maxS) + 600,
        noVacuum: true, logDir,
      });
      await sleep(killAfterS * 1000);

      // The crash of a host: every PostgreSQL process and the filesystem daemon, in the same instant.
      const daemonPid = await volume.daemonPid();
      const killedAt = Date.now();
      const crashed = await cluster.crash({ killChildren: true });
      process.kill(daemonPid, 'SIGKILL');
      const phases: DrillPhase[] = [];
      await timed(phases, 'exit', async () => {
        await volume.cleanUpAfterCrash(daemonPid);
        const stuck = await waitForExit(serverPids(crashed), PG_EXIT_TIMEOUT_MS);
        if (stuck.length > 0) throw new Error(`PostgreSQL processes ${stuck.join(', ')} still alive ${PG_EXIT_TIMEOUT_MS} ms after SIGKILL`);
      });
      await timed(phases, 'remount', () => volume.mount());
      await timed(phases, 'pg recovery', () => cluster.start());
      await timed(phases, '1st commit', () => cluster.psql(`INSERT INTO drill_probe (round) VALUES (${round})`));
      const rtoMs = Date.now() - killedAt;

      const loadResult = await load.result;
      if (!loadResult.aborted && loadResult.exitCode === 0) progress(`drill: warning: pgbench did not notice the crash in round ${round}`);
      const acknowledgedInRound = await countLoggedCommits(logDir);
      acknowledged += acknowledgedInRound;
      progress(`drill: round ${round}: recovered in ${rtoMs} ms; verifying ${acknowledged} acknowledged commits and pg_amcheck`);
      const balances = await tpcbBalances(cluster);
      if (balances.historyRows - acknowledged > options.clients) {
        progress(`drill: warning: ${balances.historyRows - acknowledged} unacknowledged commits, more than one per client: is the pgbench log complete?`);
      }
      const amcheck = await cluster.amcheck();
      const lost = Math.max(0, acknowledged - balances.historyRows);
      const result: DrillRound = {
        round, killAfterS: Number(killAfterS.toFixed(2)), acknowledgedInRound, acknowledged, found: balances.historyRows, lost,
        inFlightCommitted: Math.max(0, balances.historyRows - acknowledged), rtoMs, phases,
        balancesConsistent: balances.consistent, amcheckClean: amcheck.clean,
        ...(amcheck.clean ? {} : { amcheckOutput: amcheck.output }),
        ok: lost === 0 && balances.consistent && amcheck.clean,
      };
      report.rounds.push(result);
      // The next round must find what survived this one (in-flight commits included); a loss counts once.
      acknowledged = balances.historyRows;
    }

    report.postgresLogProblems = (await cluster.logProblems())
      .filter((line) => !/terminating connection because of (crash|unexpected postmaster exit)|Transport endpoint is not connected|Software caused connection abort|could not receive data from client|connection to client lost/.test(line))
      .slice(0, 50);
    progress('drill: stopping PostgreSQL, unmounting, fsck');
    await cluster.stop('fast');
    await volume.umount();
    const device = await openDevice(volume.device, { readOnly: true });
    try {
      const result = await fsck(device);
      report.fsck = { ok: result.ok, records: result.records, problems: result.problems };
    } finally {
      await device.close();
    }
  } catch (error) {
    await cleanUp();
    const message = error instanceof Error ? error.message : String(error);
    throw new UserError(`drill failed: ${message}\n(files kept in ${dir}; PostgreSQL log: ${cluster.logFile})`);
  } finally {
    process.removeListener('SIGINT', onInterrupt);
    process.removeListener('SIGTERM', onInterrupt);
  }

  const rtos = report.rounds.map((r) => r.rtoMs);
  const failed = report.rounds.filter((r) => !r.ok).length;
  const lostTotal = report.rounds.reduce((sum, r) => sum + r.lost, 0);
  report.summary = {
    rounds: report.rounds.length, failedRounds: failed, lostTotal, rpoTransactions: Math.max(0, ...report.rounds.map((r) => r.lost)),
    rtoMs: { min: Math.min(...rtos), median: median(rtos), max: Math.max(...rtos) },
  };
  report.ok = failed === 0 && report.fsck?.ok === true;
  if (report.ok && !options.keep && !options.dir) {
    await fsp.rm(dir, { recursive: true, force: true });
    report.dirKept = false;
  }
  return report;
}

async function drillDir(dir: string | undefined): Promise<string> {
  if (!dir) return fsp.mkdtemp(path.join(os.tmpdir(), 'lsnfs-drill-'));
  const resolved = path.resolve(dir);
  await fsp.mkdir(resolved, { recursive: true });
  if ((await fsp.readdir(resolved)).length > 0) throw new UserError(`--dir ${resolved}: not empty (the drill creates a device, a mountpoint and logs there)`);
  return resolved;
}

function pad(text: string | number, width: number): string {
  return String(text).padStart(width);
}

export function formatReport(report: DrillReport): string {
  const lines: string[] = [];
  const seconds = (ms: number): string => `${(ms / 1000).toFixed(1)} s`;
  lines.push(`lsnfs drill: crash and restart, file device ${report.device.path} (${formatBytes(report.device.bytes)})`);
  lines.push(`PostgreSQL ${report.postgres.version}, data checksums on, full_page_writes=${report.postgres.settings.full_page_writes ? 'on' : 'off'}; ` +
    `pgbench tpcb-like scale ${report.load.scale}, ${report.load.clients} clients`);
  lines.push(`setup: ${report.setup.map((p) => `${p.name} ${seconds(p.ms)}`).join(', ')}`);
  lines.push('');
  const phaseNames = report.rounds[0]?.phases.map((p) => p.name) ?? [];
  const header = ['round', 'kill at', 'acked', 'found', 'lost', 'in-flight', 'RTO ms', ...phaseNames.map((n) => `${n} ms`), 'balances', 'amcheck', 'result'];
  const rows = report.rounds.map((r) => [
    String(r.round), `${r.killAfterS.toFixed(1)} s`, String(r.acknowledged), String(r.found), String(r.lost), String(r.inFlightCommitted),
    String(r.rtoMs), ...r.phases.map((p) => String(p.ms)), r.balancesConsistent ? 'agree' : 'DIFFER', r.amcheckClean ? 'clean' : 'CORRUPT',
    r.ok ? 'ok' : 'FAILED',
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i]!.length)));
  lines.push(header.map((h, i) => pad(h, widths[i]!)).join('  '));
  for (const row of rows) lines.push(row.map((cell, i) => pad(cell, widths[i]!)).join('  '));
  lines.push('phases: exit = the killed daemon and PostgreSQL processes gone (and reaped); remount = lsnfs log recovery and mount;');
  lines.push('        pg recovery = pg_ctl start -w (WAL redo, end-of-recovery checkpoint); 1st commit = the first INSERT after it');
  lines.push('');
  const s = report.summary;
  lines.push(`RPO: ${s.lostTotal === 0 ? '0' : `${s.lostTotal} acknowledged commit(s) LOST`} over ${s.rounds} round(s); ` +
    `RTO (kill -> first commit): min ${s.rtoMs.min} ms, median ${s.rtoMs.median} ms, max ${s.rtoMs.max} ms`);
  if (report.fsck) lines.push(`fsck after the drill: ${report.fsck.ok ? 'clean' : `${report.fsck.problems.length} problem(s)`} (${report.fsck.records} records)`);
  for (const r of report.rounds) if (r.amcheckOutput) lines.push(`round ${r.round} pg_amcheck:\n${r.amcheckOutput}`);
  if (report.postgresLogProblems.length > 0) {
    lines.push(`PostgreSQL log (warnings and errors, expected crash noise left out):`);
    for (const line of report.postgresLogProblems.slice(0, 15)) lines.push(`  ${line}`);
  }
  lines.push(report.ok ? 'drill passed' : `drill FAILED (files kept in ${report.dir})`);
  return lines.join('\n') + '\n';
}

/** Adds `lsnfs drill` to the program. */
export function registerDrill(program: Command): void {
  program.command('drill')
    .description('crash drill: PostgreSQL + pgbench on a fresh volume, SIGKILL PostgreSQL and the daemon, recover, verify every acknowledged commit (RPO) and time recovery (RTO)')
    .option('--dir <dir>', 'empty directory for the device file, mountpoint and logs (default: a temp dir, removed if the drill passes)')
    .option('--size <size>', 'size of the file device', '4G')
    .option('--rounds <n>', 'kill/recover rounds', parseCount('--rounds', 1), 1)
    .option('--scale <n>', 'pgbench scale factor', parseCount('--scale', 1), 10)
    .option('--clients <n>', 'pgbench clients', parseCount('--clients', 1), 4)
    .option('--kill-after <seconds>', 'kill at a random moment this many seconds into the load (MIN-MAX)', '3-15')
    .option('--port <port>', 'PostgreSQL port (its socket is in a private directory)', parseCount('--port', 1024), 54329)
    .addOption(new Option('--full-page-writes <on|off>', 'PostgreSQL full_page_writes (off is safe on lsnfs)').choices(['on', 'off']).default('off'))
    .option('--keep', 'keep the drill directory even if the drill passes', false)
    .option('--json', 'print the report as JSON', false)
    .action(async (options: DrillOptions) => {
      const progress: Progress = (message) => process.stderr.write(`${message}\n`);
      const report = await runDrill(options, progress);
      process.stdout.write(options.json ? JSON.stringify(report, null, 2) + '\n' : formatReport(report));
      if (!report.ok) process.exitCode = 2;
    });
}
