/**
 * PostgreSQL primary and hot standbys on lsnfs (DESIGN.md section 6): the
 * settings, the checks, and what a standby's data directory needs before its
 * first start. The data directory is the primary's, seen through a standby's
 * replica mount: every file written here lands in that mount's private
 * overlay, never on the shared device.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { UserError } from '../util/errors';
import { pgProgram } from './binaries';
import { PgCluster, Settings, LSNFS_SETTINGS, ownedDirectory } from './cluster';
import { exec, execOk } from './exec';
import { ControlFile, formatPgLsn, isWalSegmentName, parseControlFile, parsePgLsn, walSegmentStartLsn, withMinRecoveryPoint } from './control';

/**
 * A primary on lsnfs: no WAL pre-zeroing or recycling (a log-structured
 * filesystem gains nothing from either), and no full-page images: lsnfs
 * writes a whole 8 KiB page as one log record (an image), replayed whole or
 * not at all, so a torn page cannot happen.
 *
 * A checkpoint every 30 s (PostgreSQL's default is 5 min, or max_wal_size of
 * WAL: 64 MB with lsnfs's 1 MB segments). It bounds the redo of a crash
 * recovery, and so a failover's RTO (~0.2 s per MiB of WAL here). And a
 * standby's costs follow the checkpoint cycle: each restart point writes every
 * page its replay dirtied, and such a page stays in its overlay until the
 * primary writes the page again and the standby's view L, which moves mostly
 * while a restart point writes, reaches that write (until then the standby
 * also keeps a copy of its view's version of each page the primary writes:
 * KeptPages). Over
 * 12 minutes of bench-standby the three overlays held 84 MB on average with
 * checkpoints every 2.2 min, 6-13 MB with 30 s. The price is page writes: a
 * page dirtied again after a checkpoint is written again at the next one
 * (the primary alone under pgbench, 1 GB, shared_buffers 2GB: 25 % more
 * buffers written by checkpoints, 7 % fewer transactions a second).
 */
export const PRIMARY_SETTINGS: Readonly<Settings> = {
  ...LSNFS_SETTINGS,
  full_page_writes: false,
  wal_level: 'replica',
  checkpoint_timeout: '30s',
};

/**
 * WAL segment size (initdb --wal-segsize) of the clusters lsnfs creates. A
 * promotion copies the last WAL segment to the new timeline and zero-fills
 * it to its full size: with the default 16 MB that is ~2000 FUSE writes,
 * 0.5-1.1 s of a failover. A log-structured store gains nothing from large
 * segments (PostgreSQL neither pre-zeroes nor recycles them here).
 */
export const LSNFS_WAL_SEGMENT_MB = 1;

/**
 * A standby reads WAL straight from the shared pg_wal/: no replication
 * connection and no archive, and it looks for new WAL every few milliseconds.
 * Restart points every 30 s let lsnfs forget the WAL segments the primary
 * removed once the standby has passed them.
 */
export const STANDBY_SETTINGS: Readonly<Settings> = {
  ...LSNFS_SETTINGS,
  hot_standby: true,
  primary_conninfo: '',
  restore_command: '',
  wal_retrieve_retry_interval: '5ms',
  // Every page write is a round trip to the lsnfs daemon, which on a busy host waits for a CPU. Replay
  // that must evict a dirty buffer waits for that trip: in bench-standby, a standby that fell behind
  // had its startup process in DataFileWrite in 65-77 % of the samples. A background writer that keeps
  // clean buffers ahead takes those writes off replay's path (there: 24-58 %, and half as many samples
  // behind by more than 200 ms).
  bgwriter_delay: '10ms',
  bgwriter_lru_maxpages: 1000,
  bgwriter_lru_multiplier: 4,
  checkpoint_timeout: '30s',
  recovery_init_sync_method: 'syncfs',
  // No connection to the primary means no hot_standby_feedback: the primary prunes row versions a
  // standby query may still see. Rather than cancel such queries, replay waits for them to finish
  // (replay lag grows with the longest conflicting query; set a limit where lag matters more).
  max_standby_archive_delay: -1,
  max_standby_streaming_delay: -1,
};

let binariesMajor: Promise<number> | null = null;

/** Major version of this host's PostgreSQL binaries (from `postgres --version`, asked once per process). */
export function binariesMajorVersion(): Promise<number> {
  binariesMajor ??= (async () => {
    const out = await execOk(await pgProgram('postgres'), ['--version']);
    const match = /\(PostgreSQL\) (\d+)/.exec(out);
    if (!match) throw new Error(`cannot read the PostgreSQL version from "${out.trim()}"`);
    return Number(match[1]);
  })();
  binariesMajor.catch(() => { binariesMajor = null; });
  return binariesMajor;
}

/**
 * Checks that `dataDir` holds a data directory this host's PostgreSQL can run
 * and returns its pg_control. Refuses another major version by name.
 */
export async function checkDataDirectory(dataDir: string): Promise<ControlFile> {
  const versionText = await fsp.readFile(path.join(dataDir, 'PG_VERSION'), 'utf8').catch(() => null);
  if (versionText === null) throw new UserError(`${dataDir}: no PostgreSQL data directory there (no PG_VERSION file)`);
  const dataMajor = Number(versionText.trim());
  const binMajor = await binariesMajorVersion();
  if (dataMajor !== binMajor) {
    throw new UserError(`${dataDir}: the data directory is PostgreSQL ${versionText.trim()}, but this host's PostgreSQL binaries ` +
      `(${path.dirname(await pgProgram('postgres'))}) are version ${binMajor}; a standby must run the primary's major version`);
  }
  const control = parseControlFile(await fsp.readFile(path.join(dataDir, 'global', 'pg_control')));
  if (!control) throw new UserError(`${dataDir}/global/pg_control: not a PostgreSQL ${binMajor} control file (version or checksum mismatch)`);
  return control;
}

/**
 * The newest timeline's WAL segment files in pg_wal/, oldest first. After a
 * failover pg_wal/ holds segments of several timelines; the WAL a standby
 * follows (recovery_target_timeline = latest) continues on the newest one,
 * whose first segment is a copy of the switch segment.
 */
async function newestTimelineSegments(dataDir: string): Promise<{ timeline: number; segments: string[] }> {
  const names = (await fsp.readdir(path.join(dataDir, 'pg_wal'))).filter(isWalSegmentName);
  const timeline = Math.max(1, ...names.map((name) => parseInt(name.slice(0, 8), 16)));
  return { timeline, segments: names.filter((name) => parseInt(name.slice(0, 8), 16) === timeline).sort() };
}

/** Header sizes of a WAL page (short) and of a segment's first page (long). */
const WAL_PAGE_HEADER_BYTES = [24, 40];
const WAL_PAGE_BYTES = 8192;
/** Where a WAL page header keeps the WAL position of the page (xlp_pageaddr, u64 little-endian). */
const WAL_PAGE_ADDR_OFFSET = 8;

/**
 * Whether segment `name` holds WAL: its first page is a page of that segment (xlp_pageaddr is the
 * segment's start). A segment PostgreSQL created ahead of need is zeros; a recycled one names another.
 */
async function holdsWal(walDir: string, name: string, segmentBytes: number): Promise<boolean> {
  const header = Buffer.alloc(WAL_PAGE_ADDR_OFFSET + 8);
  const handle = await fsp.open(path.join(walDir, name), 'r');
  try {
    const { bytesRead } = await handle.read(header, 0, header.length, 0);
    return bytesRead === header.length && Number(header.readBigUInt64LE(WAL_PAGE_ADDR_OFFSET)) === walSegmentStartLsn(name, segmentBytes);
  } finally {
    await handle.close();
  }
}

/**
 * Where the valid WAL ends now: the end of the last complete record
 * (pg_waldump reads from the newest segments until it finds no valid record).
 * A standby that has replayed this far has seen every change any page on the
 * shared store can carry at this moment.
 */
export async function walEnd(dataDir: string, control: ControlFile): Promise<{ lsn: number; timeline: number }> {
  const { timeline, segments } = await newestTimelineSegments(dataDir);
  const segmentBytes = control.walSegmentBytes;
  const walDir = path.join(dataDir, 'pg_wal');
  // Start in the newest segment that holds WAL (PostgreSQL may have created several ahead of need), never
  // before the REDO point. pg_waldump reads one timeline (default 1): an older timeline's segments end at
  // its switch point, which would make the end of WAL look earlier than it is.
  let candidate = control.redoLsn;
  for (let i = segments.length - 1; i >= 0; i--) {
    if (!(await holdsWal(walDir, segments[i]!, segmentBytes))) continue;
    candidate = walSegmentStartLsn(segments[i]!, segmentBytes);
    break;
  }
  const start = Math.max(candidate, control.redoLsn);
  const result = await exec(await pgProgram('pg_waldump'), ['-q', '-p', walDir, '-t', String(timeline), '-s', formatPgLsn(start)]);
  const text = result.stderr + result.stdout;
  // "error in WAL record at 0/1500718: invalid record length at 0/1500790: wanted 24, got 0"
  const at = /error in WAL record at [0-9A-F]+\/[0-9A-F]+: .*? at ([0-9A-F]+\/[0-9A-F]+)/.exec(text);
  if (at) {
    const lsn = parsePgLsn(at[1]!);
    // The reader reports the position after a page header when the last record ended on a page boundary.
    return { lsn: WAL_PAGE_HEADER_BYTES.includes(lsn % WAL_PAGE_BYTES) ? lsn - (lsn % WAL_PAGE_BYTES) : lsn, timeline };
  }
  // "invalid magic number 0000 in log segment 000000010000000000000005, offset 131072": the end is that page boundary.
  const page = /in (?:log|WAL) segment ([0-9A-F]{24}), offset (\d+)/.exec(text);
  if (page) return { lsn: walSegmentStartLsn(page[1]!, segmentBytes) + Number(page[2]), timeline };
  throw new Error(`cannot find the end of the WAL in ${dataDir}/pg_wal from ${formatPgLsn(start)} on timeline ${timeline}: ${text.trim().split('\n').slice(-3).join(' / ')}`);
}

/**
 * Makes the primary's data directory, seen through a standby's mount, a
 * standby's: forget the primary's postmaster.pid, add standby.signal, and
 * raise minRecoveryPoint to the current end of WAL so that PostgreSQL serves
 * no query before it has replayed as far as any page it may read.
 */
export async function prepareStandbyDirectory(dataDir: string, control: ControlFile): Promise<{ minRecoveryPoint: number }> {
  await fsp.rm(path.join(dataDir, 'postmaster.pid'), { force: true });
  await fsp.rm(path.join(dataDir, 'recovery.signal'), { force: true });
  await fsp.writeFile(path.join(dataDir, 'standby.signal'), '');
  const end = await walEnd(dataDir, control);
  const controlPath = path.join(dataDir, 'global', 'pg_control');
  await fsp.writeFile(controlPath, withMinRecoveryPoint(await fsp.readFile(controlPath), end.lsn, end.timeline));
  return { minRecoveryPoint: end.lsn };
}

export interface PgServerOptions {
  dataDir: string;
  runDir: string;
  port: number;
  /** The user's settings for this start (postgres -c), over the ones lsnfs writes to postgresql.conf. */
  settings?: Settings;
}

/** Settings no server on lsnfs takes from `-c`, each with why. */
const FIXED_SETTINGS: Readonly<Record<string, string>> = {
  port: 'set by --port',
  unix_socket_directories: 'the socket is in --run-dir',
  data_directory: 'the data directory is --pgdata on the mount',
  config_file: 'the configuration is the data directory\'s',
  hba_file: 'the configuration is the data directory\'s',
  ident_file: 'the configuration is the data directory\'s',
};
/** And none a standby on lsnfs takes: it reads WAL from the shared pg_wal/, follows the primary and serves read-only queries. */
const STANDBY_FIXED_SETTINGS: Readonly<Record<string, string>> = {
  hot_standby: 'a standby on lsnfs is a hot standby',
  primary_conninfo: 'a standby on lsnfs reads WAL from the shared pg_wal/, not from a connection',
  restore_command: 'a standby on lsnfs reads WAL from the shared pg_wal/, not from an archive',
  promote_trigger_file: 'promote with lsnfs failover',
};

/** Why `lsnfs pg primary` refuses `-c name=value` (null: it takes it). */
export function primarySettingRefusal(name: string, value: string): string | null {
  if (name === 'wal_level' && value.toLowerCase() === 'minimal') return 'standbys need replica or logical';
  return reasonFor(FIXED_SETTINGS, name);
}

/** Why `lsnfs pg standby` refuses `-c name=value` (null: it takes it). */
export function standbySettingRefusal(name: string): string | null {
  if (name.startsWith('recovery_target')) return 'a standby on lsnfs follows the primary to the end of its WAL';
  return reasonFor(FIXED_SETTINGS, name) ?? reasonFor(STANDBY_FIXED_SETTINGS, name);
}

/** `reasons[name]`, own entries only (a name like "constructor" is not a reason). */
function reasonFor(reasons: Readonly<Record<string, string>>, name: string): string | null {
  return Object.hasOwn(reasons, name) ? reasons[name]! : null;
}

/**
 * The standby's values of the settings the primary records in pg_control: the primary's, unless the
 * user asked for more. PostgreSQL refuses to start a hot standby with less (and lsnfs writes its own
 * max_connections, which a primary set up elsewhere may well exceed).
 */
export function hotStandbySettings(control: ControlFile, requested: Settings): Settings {
  const settings: Settings = {};
  for (const [name, primaryValue] of Object.entries(control.hotStandbyMinimums)) {
    const wanted = requested[name];
    if (wanted === undefined) settings[name] = primaryValue;
    else if (Number(wanted) < primaryValue) {
      throw new UserError(`-c ${name}=${wanted}: the primary runs with ${name} = ${primaryValue} (its pg_control says so); ` +
        'a hot standby needs at least that');
    }
  }
  return settings;
}

/** Starts a hot standby on a standby's mount; resolves once it accepts read-only connections. */
export async function startStandby(options: PgServerOptions): Promise<{ cluster: PgCluster; minRecoveryPoint: number }> {
  const control = await checkDataDirectory(options.dataDir);
  // Refused settings are refused before anything is written to the overlay.
  const requested = options.settings ?? {};
  const settings = { ...hotStandbySettings(control, requested), ...requested };
  await ownedDirectory(options.runDir, 0o755);
  const cluster = new PgCluster({ ...options, settings: STANDBY_SETTINGS });
  const { minRecoveryPoint } = await prepareStandbyDirectory(options.dataDir, control);
  await cluster.writeSettings();
  await cluster.start({ settings });
  return { cluster, minRecoveryPoint };
}

/** Starts a primary on a read-write mount (initdb first when the data directory does not exist yet). */
export async function startPrimary(options: PgServerOptions): Promise<{ cluster: PgCluster; initialized: boolean }> {
  const cluster = new PgCluster({ ...options, settings: PRIMARY_SETTINGS });
  const exists = await fsp.access(path.join(options.dataDir, 'PG_VERSION')).then(() => true, () => false);
  if (exists) {
    await checkDataDirectory(options.dataDir);
    await ownedDirectory(options.runDir, 0o755);
  } else {
    await cluster.initdb({ walSegmentMb: LSNFS_WAL_SEGMENT_MB });
  }
  await cluster.start({ settings: options.settings ?? {} });
  return { cluster, initialized: !exists };
}

/** The standby's replay position (pg_last_wal_replay_lsn) as a number. */
export async function replayLsn(cluster: PgCluster): Promise<number> {
  return parsePgLsn(await cluster.psql('SELECT pg_last_wal_replay_lsn()'));
}

/** The primary's current WAL flush position as a number. */
export async function flushLsn(cluster: PgCluster): Promise<number> {
  return parsePgLsn(await cluster.psql('SELECT pg_current_wal_flush_lsn()'));
}

/** md5 of every row of each table, in primary-key order: equal on two servers when the tables hold the same rows. */
export async function tableChecksums(cluster: PgCluster, tables: Record<string, string>, db = 'postgres'): Promise<Record<string, string>> {
  const sums: Record<string, string> = {};
  for (const [table, orderBy] of Object.entries(tables)) {
    sums[table] = await cluster.psql(`SELECT count(*) || ':' || coalesce(md5(string_agg(t::text, ',' ORDER BY ${orderBy})), '') FROM ${table} t`, { db });
  }
  return sums;
}

/** pgbench's tables and the order that makes their rows comparable. */
export const PGBENCH_TABLES: Readonly<Record<string, string>> = {
  pgbench_accounts: 'aid', pgbench_branches: 'bid', pgbench_tellers: 'tid', pgbench_history: 't::text',
};

/** Waits until the standby has replayed up to `lsn`; returns the milliseconds it took. */
export async function waitForReplay(standby: PgCluster, lsn: number, timeoutMs: number, pollIntervalMs = 20): Promise<number> {
  const started = Date.now();
  for (;;) {
    if ((await replayLsn(standby)) >= lsn) return Date.now() - started;
    if (Date.now() - started > timeoutMs) {
      throw new Error(`standby on port ${standby.port} did not replay to ${formatPgLsn(lsn)} within ${timeoutMs} ms (at ${formatPgLsn(await replayLsn(standby))})`);
    }
    await new Promise((resolve) => setTimeout(resolve, pollIntervalMs));
  }
}
