/**
 * `lsnfs drill`: the failover drill. It proves "every acknowledged commit
 * survives the loss of the primary" on a real PostgreSQL:
 *
 *   setup  format the device (a file in the drill directory, or --device
 *          iscsi://...), mount it read-write on host node-a, initdb, start
 *          PostgreSQL, pgbench -i; a PostgreSQL hot standby on host node-b
 *          (a replica mount with a private overlay: no data copied).
 *   round  pgbench tpcb-like on the primary, logging every commit it saw
 *          acknowledged (-l), while the standby's replay lag is sampled; at a random
 *          moment the primary host fails: `kill` SIGKILLs PostgreSQL and the
 *          filesystem daemon, `freeze` SIGSTOPs them (a hung host that may
 *          wake up). Then the standby is stopped and `lsnfs failover` makes its host
 *          the primary (fence, fresh
 *          primary mount: log recovered to its end, epoch bumped), PostgreSQL
 *          started there (standby mode + promote: replays the shared WAL to
 *          its end without a synchronous end-of-recovery checkpoint), first
 *          commit. The old host is verified fenced (a frozen one is resumed
 *          and must not write again), cleaned up and started again as the
 *          hot standby: the next round fails over the other way.
 *   check  RPO: every acknowledged commit is in pgbench_history (lost = 0),
 *          tpcb balances agree, pg_amcheck --heapallindexed clean; RTO:
 *          failure -> first commit on the new primary, split into phases;
 *          fsck of the device at the end.
 *
 * The drill knows when it killed the primary, so it fails over with --force
 * instead of waiting for the old primary's heartbeat to go stale
 * (HOLDER_STALE_MS, 3 s): RTO excludes failure detection.
 */
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { withDevice } from '../device/open';
import { readHolder } from '../fence/holder-block';
import { fsck, FsckReport } from '../volume/inspect';
import { mkfs, refuseExistingVolume } from '../volume/mkfs';
import { UserError } from '../util/errors';
import { processAlive } from '../util/process';
import { percentile } from '../util/stats';
import { formatBytes, parseSizeBytes } from '../util/units';
import {
  LSNFS_WAL_SEGMENT_MB, PRIMARY_SETTINGS, PgCluster, RunningPgbench, childPids, countLoggedCommits, exec, parsePgLsn, pgBinDir, pgbenchInit, startPgbench, startStandby, tpcbBalances,
  waitForExit,
} from '../pg';
import { FailoverPhase, failover } from './failover';
import { mountInBackground, umount } from './mount';
import { isMounted, readMountRecord, removeMountRecord } from './runtime';

export type FailureMode = 'kill' | 'freeze';

export interface DrillOptions {
  dir?: string;
  device?: string;
  size: string;
  rounds: number;
  scale: number;
  clients: number;
  killAfter: string;
  port: number;
  failure: FailureMode | 'alternate';
  fullPageWrites: 'on' | 'off';
  force: boolean;
  keep: boolean;
  json: boolean;
}

/** A timed step of the setup or of a round (the failover's phases, then PostgreSQL's). */
export type DrillPhase = FailoverPhase;

export interface DrillRound {
  round: number;
  failure: FailureMode;
  from: string;
  to: string;
  /** Seconds of load before the failure. */
  failAfterS: number;
  /** Commits pgbench saw acknowledged since pgbench -i (all rounds). */
  acknowledged: number;
  /** Rows of pgbench_history on the new primary. */
  found: number;
  /** Acknowledged commits missing on the new primary: the RPO in transactions (must be 0). */
  lost: number;
  /** Rows beyond the acknowledged ones: transactions in flight at the failure that did commit. */
  inFlightCommitted: number;
  /** Failure -> first successful commit on the new primary. */
  rtoMs: number;
  phases: DrillPhase[];
  /** The old primary can no longer write: it is not the holder, and (freeze) once resumed it stopped writing for good. */
  fenced: boolean;
  fenceEvidence: string;
  /**
   * WAL from the round's checkpoint to the new primary's first commit: what PostgreSQL on the new
   * primary replayed (pg recovery grows with it).
   */
  redoWalBytes: number;
  /** The hot standby's replay lag while the load ran: now() - its last replayed commit's time, sampled every 200 ms. */
  standbyLagMs: { p50: number; max: number; samples: number };
  balancesConsistent: boolean;
  amcheckClean: boolean;
  amcheckOutput?: string;
  ok: boolean;
}

export interface DrillReport {
  kind: 'failover';
  ok: boolean;
  dir: string;
  /** False when the drill passed in a temp dir and removed it. */
  dirKept: boolean;
  device: { spec: string; type: 'file' | 'iscsi'; bytes: number; fencing: string };
  postgres: { version: string; settings: Record<string, string | number | boolean>; dataChecksums: boolean; walSegmentMb: number };
  load: { tool: 'pgbench'; script: 'tpcb-like'; scale: number; clients: number };
  setup: DrillPhase[];
  rounds: DrillRound[];
  summary: {
    rounds: number; failedRounds: number; lostTotal: number; rpoTransactions: number; fenceFailures: number;
    rtoMs: { min: number; median: number; max: number };
  };
  fsck: { ok: boolean; records: number; problems: FsckReport['problems'] } | null;
  postgresLogProblems: string[];
}

const PG_EXIT_TIMEOUT_MS = 30_000;
const FENCE_NOTICE_TIMEOUT_MS = 15_000;
const LAG_SAMPLE_INTERVAL_MS = 200;
const HOSTS = ['node-a', 'node-b'] as const;

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

/** Times one step. */
async function timed<T>(phases: DrillPhase[], name: string, body: () => Promise<T>): Promise<T> {
  const started = Date.now();
  const value = await body();
  phases.push({ name, ms: Date.now() - started });
  return value;
}

/** One host of the drill: its mountpoint and the PostgreSQL that runs there when it is primary. */
class DrillHost {
  readonly mountpoint: string;
  readonly cluster: PgCluster;
  constructor(readonly name: string, dir: string, port: number, settings: Record<string, string | number | boolean>) {
    this.mountpoint = path.join(dir, name);
    // Each host has its own port and socket directory: a frozen old primary still holds its own.
    this.cluster = new PgCluster({ dataDir: path.join(this.mountpoint, 'pgdata'), runDir: path.join(dir, `pg-${name}`), port, settings });
  }

  async daemonPid(): Promise<number> {
    const record = await readMountRecord(this.mountpoint);
    if (!record) throw new Error(`no mount record for ${this.mountpoint}`);
    return record.pid;
  }

  async mountPrimary(device: string): Promise<void> {
    await mountInBackground({ device, mountpoint: this.mountpoint, host: this.name, allowOther: true, foreground: false, role: 'primary', pollIntervalMs: 5 });
  }

  /**
   * A hot standby on this host: a replica mount with a fresh private overlay
   * (what the standby writes stays local) and PostgreSQL started on it in
   * standby mode, reading WAL from the shared pg_wal/.
   */
  async startStandby(device: string, overlayDir: string): Promise<void> {
    await mountInBackground({
      device, mountpoint: this.mountpoint, host: this.name, allowOther: true, foreground: false, role: 'replica', pollIntervalMs: 5, overlay: overlayDir,
    });
    await startStandby({ dataDir: this.cluster.dataDir, runDir: this.cluster.runDir, port: this.cluster.port });
  }

  /** After the host died or was fenced: its processes gone, the dead kernel mount dropped, the stale record removed. */
  async cleanUp(pids: number[]): Promise<void> {
    for (const pid of pids) if (processAlive(pid)) process.kill(pid, 'SIGKILL');
    const stuck = await waitForExit(pids, PG_EXIT_TIMEOUT_MS);
    if (stuck.length > 0) throw new Error(`processes ${stuck.join(', ')} of host ${this.name} still alive ${PG_EXIT_TIMEOUT_MS} ms after SIGKILL`);
    if (await isMounted(this.mountpoint)) await exec('umount', ['-l', this.mountpoint]);
    await removeMountRecord(this.mountpoint);
  }

  /** Best effort for error paths. */
  async forceDown(): Promise<void> {
    await this.cluster.stopQuietly('immediate');
    if (!(await isMounted(this.mountpoint))) return;
    await umount(this.mountpoint).catch(async () => {
      const record = await readMountRecord(this.mountpoint);
      if (record && processAlive(record.pid)) process.kill(record.pid, 'SIGKILL');
      await exec('umount', ['-l', this.mountpoint]).catch(() => undefined);
      await removeMountRecord(this.mountpoint);
    });
  }
}

/** Samples the standby's replay lag: the age of the last commit it replayed (the load commits all the time). */
function sampleStandbyLag(standby: PgCluster): { stop: () => Promise<number[]> } {
  const samples: number[] = [];
  let running = true;
  const loop = (async () => {
    while (running) {
      const ms = await standby.psql('SELECT coalesce(round(extract(epoch FROM now() - pg_last_xact_replay_timestamp()) * 1000), -1)')
        .then(Number, () => -1);
      if (ms >= 0) samples.push(ms);
      await sleep(LAG_SAMPLE_INTERVAL_MS);
    }
  })();
  return { stop: async () => { running = false; await loop; return samples; } };
}

type Progress = (message: string) => void;

export async function runDrill(options: DrillOptions, progress: Progress): Promise<DrillReport> {
  const killWindow = parseKillWindow(options.killAfter);
  if (process.getuid?.() !== 0) throw new UserError('lsnfs drill mounts filesystems and runs PostgreSQL as user postgres: run it as root');
  await pgBinDir().catch((error: Error) => { throw new UserError(error.message); });

  const dir = await drillDir(options.dir);
  await fsp.chmod(dir, 0o755); // PostgreSQL (user postgres) must reach the mounts and its run directories
  const iscsi = options.device?.startsWith('iscsi://') ?? false;
  const deviceSpec = options.device ?? path.join(dir, 'device.img');
  // The settings lsnfs pg primary writes (checkpoints every 30 s among them: a short redo after a failover).
  const settings = { ...PRIMARY_SETTINGS, full_page_writes: options.fullPageWrites === 'on', wal_retrieve_retry_interval: '100ms' };
  const hosts = HOSTS.map((name, i) => new DrillHost(name, dir, options.port + i, settings));
  const report: DrillReport = {
    kind: 'failover', ok: false, dir, dirKept: true,
    device: { spec: deviceSpec, type: iscsi ? 'iscsi' : 'file', bytes: 0, fencing: iscsi ? 'SCSI-3 persistent reservations (enforced by the target)' : 'emulated (holder block; a holder on this machine is killed)' },
    postgres: { version: '', settings: hosts[0]!.cluster.settings, dataChecksums: true, walSegmentMb: LSNFS_WAL_SEGMENT_MB },
    load: { tool: 'pgbench', script: 'tpcb-like', scale: options.scale, clients: options.clients },
    setup: [], rounds: [],
    summary: { rounds: 0, failedRounds: 0, lostTotal: 0, rpoTransactions: 0, fenceFailures: 0, rtoMs: { min: 0, median: 0, max: 0 } },
    fsck: null, postgresLogProblems: [],
  };

  let load: RunningPgbench | null = null;
  const cleanUp = async (): Promise<void> => {
    load?.kill('SIGKILL');
    for (const host of hosts) await host.forceDown().catch(() => undefined);
  };
  const onInterrupt = (): void => {
    progress(`drill: interrupted; stopping PostgreSQL and unmounting (files kept in ${dir})`);
    void cleanUp().finally(() => process.exit(130));
  };
  process.once('SIGINT', onInterrupt);
  process.once('SIGTERM', onInterrupt);
  try {
    await timed(report.setup, 'mkfs', () => createVolume(deviceSpec, iscsi ? null : parseSizeBytes(options.size, '--size'), options.force));
    report.device.bytes = await withDevice(deviceSpec, { readOnly: true, host: 'drill-observer' }, async (device) => device.sizeBytes);
    progress(`drill: volume on ${deviceSpec} (${formatBytes(report.device.bytes)}, ${report.device.fencing}); working in ${dir}`);
    for (const host of hosts) await fsp.mkdir(host.mountpoint, { recursive: true });
    let [primary, replica] = hosts as unknown as [DrillHost, DrillHost];
    await timed(report.setup, 'mount primary', () => primary.mountPrimary(deviceSpec));
    await timed(report.setup, 'initdb', () => primary.cluster.initdb({ dataChecksums: report.postgres.dataChecksums, walSegmentMb: report.postgres.walSegmentMb }));
    await timed(report.setup, 'postgres start', () => primary.cluster.start());
    report.postgres.version = await primary.cluster.psql('SHOW server_version');
    progress(`drill: PostgreSQL ${report.postgres.version} up on ${primary.name}; pgbench -i -s ${options.scale}`);
    await timed(report.setup, 'pgbench -i', () => pgbenchInit(primary.cluster, options.scale));
    await primary.cluster.psql('CREATE TABLE drill_probe (round int, at timestamptz DEFAULT now())');
    // The standby then starts from a recent restart point (it replays from the last checkpoint).
    await primary.cluster.psql('CHECKPOINT');
    await timed(report.setup, 'standby', () => replica.startStandby(deviceSpec, path.join(dir, `overlay-${replica.name}-0`)));

    let acknowledged = 0;
    for (let round = 1; round <= options.rounds; round++) {
      const failure: FailureMode = options.failure === 'alternate' ? (round % 2 === 1 ? 'kill' : 'freeze') : options.failure;
      const failAfterS = killWindow.minS + Math.random() * (killWindow.maxS - killWindow.minS);
      progress(`drill: round ${round}/${options.rounds}: pgbench on ${primary.name}, ${failure} it in ${failAfterS.toFixed(1)} s, fail over to ${replica.name}`);
      const logDir = path.join(dir, `pgbench-round-${round}`);
      // Every round starts from a completed checkpoint, as on a primary that has run for a while: else the
      // last round's end-of-recovery checkpoint (spread over checkpoint_timeout) is still running when this
      // one fails, and the redo spans both rounds. The redo is then this round's WAL (redoWalBytes).
      await primary.cluster.psql('CHECKPOINT');
      const checkpointWalLsn = parsePgLsn(await primary.cluster.psql('SELECT pg_current_wal_lsn()'));
      load = await startPgbench(primary.cluster, {
        clients: options.clients, threads: Math.min(options.clients, 2), durationS: Math.ceil(killWindow.maxS) + 600, noVacuum: true, logDir,
      });
      const lag = sampleStandbyLag(replica.cluster);
      await sleep(failAfterS * 1000);

      // The primary host fails: every PostgreSQL process and the filesystem daemon, in the same instant.
      const daemonPid = await primary.daemonPid();
      const postmasterPid = await primary.cluster.postmasterPid();
      const pgPids = postmasterPid === null ? [] : [postmasterPid, ...(await childPids(postmasterPid))];
      const failedAt = Date.now();
      for (const pid of [...pgPids, daemonPid]) process.kill(pid, failure === 'kill' ? 'SIGKILL' : 'SIGSTOP');
      const lagSamples = await lag.stop();

      // The standby's host takes over: its standby (and overlay) make way for a primary on the shared state.
      const promoted = await failover({
        device: deviceSpec, host: replica.name, mountpoint: replica.mountpoint, force: true, allowOther: true,
        beforeUnmount: { phase: 'stop standby', run: () => replica.cluster.stopImmediately() },
      });
      const phases: DrillPhase[] = [...promoted.phases];
      await timed(phases, 'pg recovery', () => replica.cluster.startAsPromotedStandby());
      await timed(phases, '1st commit', () => replica.cluster.psql(`INSERT INTO drill_probe (round) VALUES (${round})`));
      const rtoMs = Date.now() - failedAt;
      const redoWalBytes = parsePgLsn(await replica.cluster.psql('SELECT pg_current_wal_lsn()')) - checkpointWalLsn;

      const fence = await verifyFenced(primary, daemonPid, pgPids, failure, promoted.fence?.killedPid, deviceSpec, replica.name);
      await primary.cleanUp([...pgPids, daemonPid]);
      const loadResult = await load.result;
      if (!loadResult.aborted && loadResult.exitCode === 0) progress(`drill: warning: pgbench did not notice the failure in round ${round}`);
      acknowledged += await countLoggedCommits(logDir);
      progress(`drill: round ${round}: ${replica.name} took commits ${rtoMs} ms after the failure; verifying ${acknowledged} acknowledged commits and pg_amcheck`);
      const balances = await tpcbBalances(replica.cluster);
      if (balances.historyRows - acknowledged > options.clients) {
        progress(`drill: warning: ${balances.historyRows - acknowledged} unacknowledged commits, more than one per client: is the pgbench log complete?`);
      }
      const amcheck = await replica.cluster.amcheck();
      const lost = Math.max(0, acknowledged - balances.historyRows);
      report.rounds.push({
        round, failure, from: primary.name, to: replica.name, failAfterS: Number(failAfterS.toFixed(2)), acknowledged,
        found: balances.historyRows, lost, inFlightCommitted: Math.max(0, balances.historyRows - acknowledged), rtoMs, phases, redoWalBytes,
        fenced: fence.ok, fenceEvidence: fence.evidence,
        standbyLagMs: { p50: lagSamples.length > 0 ? percentile(lagSamples, 50) : 0, max: Math.max(0, ...lagSamples), samples: lagSamples.length },
        balancesConsistent: balances.consistent, amcheckClean: amcheck.clean, ...(amcheck.clean ? {} : { amcheckOutput: amcheck.output }),
        ok: lost === 0 && fence.ok && balances.consistent && amcheck.clean,
      });
      // The next round must find what survived this one (in-flight commits included); a loss counts once.
      acknowledged = balances.historyRows;
      // The old primary's host comes back as the new standby, on a fresh overlay.
      await primary.startStandby(deviceSpec, path.join(dir, `overlay-${primary.name}-${round}`));
      [primary, replica] = [replica, primary];
    }

    report.postgresLogProblems = (await Promise.all(hosts.map((host) => host.cluster.logProblems()))).flat()
      .filter((line) => !/terminating connection because of (crash|unexpected postmaster exit)|Transport endpoint is not connected|Software caused connection abort|could not receive data from client|connection to client lost|Input\/output error|could not (fsync|write|open)|checkpoint request failed|PANIC|startup process|archive recovery|could not open file "pg_wal/.test(line))
      .slice(0, 50);
    progress('drill: stopping PostgreSQL, unmounting, fsck');
    await replica.cluster.stop('fast');
    await primary.cluster.stop('fast');
    for (const host of hosts) await umount(host.mountpoint);
    const result = await withDevice(deviceSpec, { readOnly: true, host: 'drill-observer' }, fsck);
    report.fsck = { ok: result.ok, records: result.records, problems: result.problems };
  } catch (error) {
    await cleanUp();
    const message = error instanceof Error ? error.message : String(error);
    throw new UserError(`drill failed: ${message}\n(files kept in ${dir}; PostgreSQL logs: ${hosts.map((h) => h.cluster.logFile).join(', ')})`);
  } finally {
    process.removeListener('SIGINT', onInterrupt);
    process.removeListener('SIGTERM', onInterrupt);
  }

  const rtos = report.rounds.map((r) => r.rtoMs);
  const lostTotal = report.rounds.reduce((sum, r) => sum + r.lost, 0);
  report.summary = {
    rounds: report.rounds.length, failedRounds: report.rounds.filter((r) => !r.ok).length, lostTotal,
    rpoTransactions: Math.max(0, ...report.rounds.map((r) => r.lost)), fenceFailures: report.rounds.filter((r) => !r.fenced).length,
    rtoMs: { min: Math.min(...rtos), median: percentile(rtos, 50), max: Math.max(...rtos) },
  };
  report.ok = report.summary.failedRounds === 0 && report.fsck?.ok === true;
  if (report.ok && !options.keep && !options.dir) {
    await fsp.rm(dir, { recursive: true, force: true });
    report.dirKept = false;
  }
  return report;
}

/** Formats the drill's device: a new file of `sizeBytes`, or an existing device (an iSCSI LUN) that holds no lsnfs volume unless --force. */
async function createVolume(spec: string, sizeBytes: number | null, force: boolean): Promise<void> {
  if (sizeBytes !== null) {
    const handle = await fsp.open(spec, 'wx');
    try { await handle.truncate(sizeBytes); } finally { await handle.close(); }
  } else if (!force) {
    await withDevice(spec, { readOnly: true, host: 'drill-observer' }, refuseExistingVolume);
  }
  await withDevice(spec, { readOnly: false, host: 'drill-observer' }, (device) => mkfs(device, { force: true }));
}

/**
 * Evidence that the old primary cannot write any more. It must no longer be
 * the holder; a frozen one (unless the fence killed it) is resumed and must
 * stop writing for good on its own (its daemon logs it; over iSCSI the
 * target refuses its writes).
 */
async function verifyFenced(
  old: DrillHost, daemonPid: number, pgPids: number[], failure: FailureMode, killedPid: number | undefined, deviceSpec: string, newPrimary: string,
): Promise<{ ok: boolean; evidence: string }> {
  const holder = await withDevice(deviceSpec, { readOnly: true, host: 'drill-observer' }, readHolder);
  if (holder?.host !== newPrimary) return { ok: false, evidence: `the holder is ${holder ? `'${holder.host}'` : 'nobody'}, not '${newPrimary}'` };
  if (failure === 'kill') return { ok: true, evidence: `old daemon killed; holder is '${newPrimary}'` };
  if (killedPid === daemonPid) return { ok: true, evidence: `frozen daemon (pid ${daemonPid}) killed by the fence` };
  for (const pid of [daemonPid, ...pgPids]) if (processAlive(pid)) process.kill(pid, 'SIGCONT');
  const record = await readMountRecord(old.mountpoint);
  const deadline = Date.now() + FENCE_NOTICE_TIMEOUT_MS;
  while (Date.now() < deadline) {
    const logText = record ? await fsp.readFile(record.logFile, 'utf8').catch(() => '') : '';
    if (/writes stopped for good/.test(logText)) return { ok: true, evidence: 'resumed daemon stopped writing for good (fenced)' };
    if (!processAlive(daemonPid)) return { ok: true, evidence: 'resumed daemon exited' };
    await sleep(50);
  }
  return { ok: false, evidence: `resumed daemon (pid ${daemonPid}) did not report being fenced within ${FENCE_NOTICE_TIMEOUT_MS} ms` };
}

async function drillDir(dir: string | undefined): Promise<string> {
  if (!dir) return fsp.mkdtemp(path.join(os.tmpdir(), 'lsnfs-drill-'));
  const resolved = path.resolve(dir);
  await fsp.mkdir(resolved, { recursive: true });
  if ((await fsp.readdir(resolved)).length > 0) throw new UserError(`--dir ${resolved}: not empty (the drill creates a device, mountpoints and logs there)`);
  return resolved;
}

function pad(text: string | number, width: number): string {
  return String(text).padStart(width);
}

export function formatReport(report: DrillReport): string {
  const lines: string[] = [];
  const seconds = (ms: number): string => `${(ms / 1000).toFixed(1)} s`;
  lines.push(`lsnfs drill: failover, ${report.device.type} device ${report.device.spec} (${formatBytes(report.device.bytes)}); fencing: ${report.device.fencing}`);
  lines.push(`PostgreSQL ${report.postgres.version}, data checksums on, WAL segments ${report.postgres.walSegmentMb} MB, full_page_writes=${report.postgres.settings.full_page_writes ? 'on' : 'off'}; ` +
    `pgbench tpcb-like scale ${report.load.scale}, ${report.load.clients} clients`);
  lines.push(`setup: ${report.setup.map((p) => `${p.name} ${seconds(p.ms)}`).join(', ')}`);
  lines.push('');
  const phaseNames = report.rounds[0]?.phases.map((p) => p.name) ?? [];
  const header = ['round', 'failure', 'from->to', 'at', 'acked', 'found', 'lost', 'RTO ms', ...phaseNames.map((n) => `${n} ms`), 'redo WAL',
    'standby lag p50/max ms', 'fenced', 'balances', 'amcheck', 'result'];
  const rows = report.rounds.map((r) => [
    String(r.round), r.failure, `${r.from}->${r.to}`, `${r.failAfterS.toFixed(1)} s`, String(r.acknowledged), String(r.found), String(r.lost),
    String(r.rtoMs), ...r.phases.map((p) => String(p.ms)), formatBytes(r.redoWalBytes), `${r.standbyLagMs.p50}/${r.standbyLagMs.max}`, r.fenced ? 'yes' : 'NO',
    r.balancesConsistent ? 'agree' : 'DIFFER', r.amcheckClean ? 'clean' : 'CORRUPT', r.ok ? 'ok' : 'FAILED',
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i]!.length)));
  lines.push(header.map((h, i) => pad(h, widths[i]!)).join('  '));
  for (const row of rows) lines.push(row.map((cell, i) => pad(cell, widths[i]!)).join('  '));
  lines.push('phases (lsnfs failover): check, fence the old primary, stop standby = the PostgreSQL standby on the target host, unmount replica,');
  lines.push('        daemon start = the wait for the new primary\'s daemon (started at the beginning, held), mount primary = lease, log recovery, epoch;');
  lines.push('        pg recovery = PostgreSQL on the new primary replays the shared WAL and is promoted; 1st commit = the first INSERT after it;');
  lines.push('        redo WAL = WAL written since the round\'s checkpoint (each round starts from one; a failure later in a checkpoint cycle replays more)');
  for (const r of report.rounds) lines.push(`round ${r.round} fence: ${r.fenceEvidence}`);
  lines.push('');
  const s = report.summary;
  lines.push(`RPO: ${s.lostTotal === 0 ? '0' : `${s.lostTotal} acknowledged commit(s) LOST`} over ${s.rounds} round(s); fence failures: ${s.fenceFailures}; ` +
    `RTO (failure -> first commit, detection excluded): min ${s.rtoMs.min} ms, median ${s.rtoMs.median} ms, max ${s.rtoMs.max} ms`);
  if (report.fsck) lines.push(`fsck after the drill: ${report.fsck.ok ? 'clean' : `${report.fsck.problems.length} problem(s)`} (${report.fsck.records} records)`);
  for (const r of report.rounds) if (r.amcheckOutput) lines.push(`round ${r.round} pg_amcheck:\n${r.amcheckOutput}`);
  if (report.postgresLogProblems.length > 0) {
    lines.push(`PostgreSQL logs (warnings and errors, expected failure noise left out):`);
    for (const line of report.postgresLogProblems.slice(0, 15)) lines.push(`  ${line}`);
  }
  lines.push(report.ok ? 'drill passed' : `drill FAILED (files kept in ${report.dir})`);
  return lines.join('\n') + '\n';
}
