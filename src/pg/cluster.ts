/**
 * One PostgreSQL cluster for tests, benchmarks and the drill: initdb, the
 * settings we run with, start/stop/crash, and psql. Every program runs as
 * the PostgreSQL OS user; the server listens only on a Unix socket in a
 * private directory, on a port the caller picks.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { CommandError, ExecResult, exec, execOk } from './exec';
import { pgProgram } from './binaries';
import { processAlive } from '../util/process';
import { DB_IN_PRODUCTION, parseControlFile } from './control';

export type SettingValue = string | number | boolean;
export type Settings = Record<string, SettingValue>;

/** What every cluster runs with; callers add or override (wal_init_zero, full_page_writes, …). */
export const BASE_SETTINGS: Readonly<Settings> = {
  listen_addresses: '',
  fsync: true,
  synchronous_commit: true,
  shared_buffers: '128MB',
  max_connections: 50,
};

/**
 * Settings that suit lsnfs (DESIGN.md section 6): no WAL pre-zeroing or
 * recycling. full_page_writes=off is safe too (page writes are atomic) but
 * left to the caller.
 */
export const LSNFS_SETTINGS: Readonly<Settings> = {
  wal_init_zero: false,
  wal_recycle: false,
};

export const SUPERUSER = 'postgres';
/** The OS user that runs PostgreSQL unless a cluster names another. */
export const PG_OS_USER = 'postgres';

export interface ClusterOptions {
  /** Data directory (made absolute). */
  dataDir: string;
  /** Holds the Unix socket and the server log; created and given to the OS user. Keep it off the volume under test. */
  runDir: string;
  port: number;
  /** OS user that runs PostgreSQL (default postgres). */
  osUser?: string;
  /** Added to BASE_SETTINGS (port and unix_socket_directories are set from the options). */
  settings?: Settings;
}

export interface CrashedServer {
  postmasterPid: number;
  /** The postmaster's children when it was killed (backends, checkpointer, …). */
  childPids: number[];
}

export function formatSetting(value: SettingValue): string {
  if (typeof value === 'boolean') return value ? 'on' : 'off';
  if (typeof value === 'number') return String(value);
  return `'${value.replace(/'/g, "''")}'`;
}

/** Makes `dir` (and its parents) and gives it to the PostgreSQL OS user with `mode` (a run directory: 0o755). */
export async function ownedDirectory(dir: string, mode: number, osUser = PG_OS_USER): Promise<void> {
  const { uid, gid } = await osIds(osUser);
  await fsp.mkdir(dir, { recursive: true });
  await fsp.chown(dir, uid, gid);
  await fsp.chmod(dir, mode);
}

const osIdsByUser = new Map<string, Promise<{ uid: number; gid: number }>>();

/** uid and gid of an OS user (asked of `id` once per process). */
export function osIds(user: string): Promise<{ uid: number; gid: number }> {
  let ids = osIdsByUser.get(user);
  if (!ids) {
    ids = Promise.all([execOk('id', ['-u', user]), execOk('id', ['-g', user])])
      .then(([uid, gid]) => ({ uid: Number(uid.trim()), gid: Number(gid.trim()) }));
    ids.catch(() => osIdsByUser.delete(user));
    osIdsByUser.set(user, ids);
  }
  return ids;
}

/** Children of `pid`, from /proc. */
export async function childPids(pid: number): Promise<number[]> {
  const entries = await fsp.readdir('/proc');
  const children: number[] = [];
  await Promise.all(entries.filter((e) => /^\d+$/.test(e)).map(async (entry) => {
    const stat = await fsp.readFile(`/proc/${entry}/stat`, 'utf8').catch(() => '');
    const afterComm = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    if (Number(afterComm[1]) === pid) children.push(Number(entry));
  }));
  return children.sort((a, b) => a - b);
}

/** Every process of a crashed server: the postmaster (until reaped) and its children. */
export function serverPids(crashed: CrashedServer): number[] {
  return [crashed.postmasterPid, ...crashed.childPids];
}

function killQuietly(pid: number): void {
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    // already gone
  }
}

/**
 * True while the pid exists at all, zombies included: PostgreSQL's own check
 * of an old postmaster.pid is kill(pid, 0), which succeeds on a zombie, and
 * init may take a second to reap one.
 */
function pidExists(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * postmaster.pid says the postmaster accepts connections: its status line
 * (the 8th, LOCK_FILE_LINE_PM_STATUS) is "ready" (or "standby" for a hot
 * standby), and its pid (the 1st line) is alive. What pg_ctl -w waits for.
 */
function isAcceptingConnections(pidFile: string): boolean {
  const lines = pidFile.split('\n');
  const status = lines[7]?.trim();
  return (status === 'ready' || status === 'standby') && pidExists(Number(lines[0]));
}

/** How often waits for a server state look again (pg_ctl -w looks every 100 ms: a failover waits on it twice). */
const EXIT_POLL_MS = 5;

/** Waits until none of `pids` exists (not even as a zombie); returns those still there after `timeoutMs`. */
export async function waitForExit(pids: number[], timeoutMs: number): Promise<number[]> {
  const deadline = Date.now() + timeoutMs;
  let alive = pids.filter((pid) => pidExists(pid));
  while (alive.length > 0 && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, EXIT_POLL_MS));
    alive = alive.filter((pid) => pidExists(pid));
  }
  return alive;
}

export class PgCluster {
  readonly dataDir: string;
  readonly runDir: string;
  readonly port: number;
  readonly osUser: string;
  readonly settings: Settings;

  constructor(options: ClusterOptions) {
    this.dataDir = path.resolve(options.dataDir);
    this.runDir = path.resolve(options.runDir);
    this.port = options.port;
    this.osUser = options.osUser ?? PG_OS_USER;
    this.settings = { ...BASE_SETTINGS, ...options.settings, port: options.port, unix_socket_directories: this.runDir };
  }

  get socketDir(): string { return this.runDir; }
  get logFile(): string { return path.join(this.runDir, 'postgresql.log'); }

  /** -h/-p/-U for psql, pgbench and pg_amcheck. */
  connectionArgs(): string[] {
    return ['-h', this.socketDir, '-p', String(this.port), '-U', SUPERUSER];
  }

  /**
   * Creates the run directory and an empty data directory owned by the OS
   * user, mode 0700. On an lsnfs mount the data directory's owner is what
   * every file PostgreSQL creates inside it inherits.
   */
  async prepareDirectories(): Promise<void> {
    await ownedDirectory(this.runDir, 0o755, this.osUser);
    await ownedDirectory(this.dataDir, 0o700, this.osUser);
  }

  /** initdb (with its normal fsyncs), then the settings. */
  async initdb(options: { dataChecksums?: boolean; walSegmentMb?: number } = {}): Promise<void> {
    await this.prepareDirectories();
    const args = ['-D', this.dataDir, '-U', SUPERUSER, '--auth=trust', '-E', 'UTF8', '--locale=C'];
    if (options.dataChecksums) args.push('--data-checksums');
    if (options.walSegmentMb !== undefined) args.push(`--wal-segsize=${options.walSegmentMb}`);
    await execOk(await pgProgram('initdb'), args, { user: this.osUser });
    await this.writeSettings();
  }

  /** Appends the settings to postgresql.conf (later lines win over initdb's). */
  async writeSettings(): Promise<void> {
    const lines = Object.entries(this.settings).map(([name, value]) => `${name} = ${formatSetting(value)}`);
    await fsp.appendFile(path.join(this.dataDir, 'postgresql.conf'), `\n# written by lsnfs\n${lines.join('\n')}\n`);
  }

  /**
   * pg_ctl start -w; resolves once the server accepts connections (read-only ones, for a hot standby). On
   * failure the error carries the end of the server log. `settings` apply to this start only.
   *
   * pg_ctl -w looks at the server's state every 100 ms; postmaster.pid's status line is looked at here
   * every few ms as well, and whichever sees the server ready first ends the wait (pg_ctl then exits on
   * its own). pg_ctl still reports a server that fails to start.
   */
  async start(options: { timeoutS?: number; settings?: Settings } = {}): Promise<void> {
    const once = Object.entries(options.settings ?? {}).map(([name, value]) => ` -c ${name}=${formatSetting(value)}`).join('');
    const pidFile = path.join(this.dataDir, 'postmaster.pid');
    const stalePidFile = await fsp.readFile(pidFile, 'utf8').catch(() => null);
    let pgCtlResult: ExecResult | null = null;
    const pgCtl = exec(await pgProgram('pg_ctl'),
      // Port and socket directory from this object, whatever postgresql.conf says: after a failover the
      // data directory's configuration is the old host's.
      // pg_ctl hands -o to /bin/sh: the socket directory is quoted for it (setting values are plain words, see `lsnfs pg -c`).
      ['-D', this.dataDir, '-l', this.logFile, '-o', `-p ${this.port} -k '${this.runDir.replace(/'/g, "'\\''")}'${once}`, '-w', '-t', String(options.timeoutS ?? 600), 'start'],
      { user: this.osUser }).then((result) => { pgCtlResult = result; });
    while (pgCtlResult === null) {
      const content = await fsp.readFile(pidFile, 'utf8').catch(() => null);
      if (content !== null && content !== stalePidFile && isAcceptingConnections(content)) return;
      await Promise.race([pgCtl, new Promise((resolve) => setTimeout(resolve, EXIT_POLL_MS))]);
    }
    const result: ExecResult = pgCtlResult;
    if (result.code !== 0) throw new Error(`${new CommandError(result).message}\nserver log:\n${await this.logTail(30)}`);
  }

  async stop(mode: 'smart' | 'fast' | 'immediate' = 'fast', options: { timeoutS?: number } = {}): Promise<void> {
    await execOk(await pgProgram('pg_ctl'),
      ['-D', this.dataDir, '-m', mode, '-w', '-t', String(options.timeoutS ?? 600), 'stop'], { user: this.osUser });
  }

  /**
   * Takes over a data directory another host's PostgreSQL was running on (a
   * failover): starts it in standby mode, which replays the WAL left on the
   * shared store, then promotes it. Promotion ends recovery with an
   * end-of-recovery record and a background checkpoint, where a plain crash
   * recovery would write every dirty page before accepting a commit.
   * postmaster.pid belongs to the old host: its pid means nothing here.
   *
   * Crash recovery first fsyncs every file of the data directory (one FUSE
   * open + fsync per file: 0.4-0.5 s on the drill's database), so that pages
   * the crashed server left in this host's page cache are durable before
   * redo trusts them. A fresh mount after a failover has no such pages: all
   * it serves came from the device and was made durable by the mount's
   * recovery. syncfs (no FUSE call) is enough for this start.
   */
  async startAsPromotedStandby(options: { timeoutS?: number } = {}): Promise<void> {
    await ownedDirectory(this.runDir, 0o755, this.osUser);
    await fsp.rm(path.join(this.dataDir, 'postmaster.pid'), { force: true });
    const { uid, gid } = await osIds(this.osUser);
    const signal = path.join(this.dataDir, 'standby.signal');
    await fsp.writeFile(signal, '');
    await fsp.chown(signal, uid, gid);
    await this.start({ ...options, settings: { recovery_init_sync_method: 'syncfs' } });
    await execOk(await pgProgram('pg_ctl'), ['-D', this.dataDir, '-W', 'promote'], { user: this.osUser });
    // What pg_ctl promote -w waits for, looked at every few ms: pg_control says "in production".
    const deadlineMs = Date.now() + (options.timeoutS ?? 600) * 1000;
    for (;;) {
      const control = parseControlFile(await fsp.readFile(path.join(this.dataDir, 'global', 'pg_control')));
      if (control?.state === DB_IN_PRODUCTION) return;
      const pid = await this.postmasterPid();
      if (pid === null || !pidExists(pid)) throw new Error(`PostgreSQL in ${this.dataDir} stopped while being promoted\nserver log:\n${await this.logTail(30)}`);
      if (Date.now() > deadlineMs) throw new Error(`PostgreSQL in ${this.dataDir} was not promoted within ${options.timeoutS ?? 600} s`);
      await new Promise((resolve) => setTimeout(resolve, EXIT_POLL_MS));
    }
  }

  /** Immediate shutdown (SIGQUIT to the postmaster: no checkpoint), returning as soon as every server process is gone. */
  async stopImmediately(options: { timeoutS?: number } = {}): Promise<void> {
    const pid = await this.postmasterPid();
    if (pid === null || !pidExists(pid)) throw new Error(`no running postmaster for ${this.dataDir}`);
    process.kill(pid, 'SIGQUIT');
    // The postmaster exits after its children: then nothing holds a file of the data directory open. It is
    // init's child (pg_ctl detaches it), and init may take a second to reap it: exited is enough here.
    const deadlineMs = Date.now() + (options.timeoutS ?? 60) * 1000;
    while (processAlive(pid)) {
      if (Date.now() > deadlineMs) throw new Error(`PostgreSQL in ${this.dataDir} did not stop (postmaster ${pid})`);
      await new Promise((resolve) => setTimeout(resolve, EXIT_POLL_MS));
    }
  }

  /** Stops the server if one runs; never throws (for cleanup paths). */
  async stopQuietly(mode: 'fast' | 'immediate' = 'immediate'): Promise<void> {
    const pid = await this.postmasterPid().catch(() => null);
    if (pid === null || !processAlive(pid)) return;
    await this.stop(mode, { timeoutS: 60 }).catch(() => undefined);
  }

  /** First line of postmaster.pid, or null when the file is absent. */
  async postmasterPid(): Promise<number | null> {
    const text = await fsp.readFile(path.join(this.dataDir, 'postmaster.pid'), 'utf8').catch(() => null);
    if (text === null) return null;
    const pid = Number(text.split('\n')[0]);
    return Number.isSafeInteger(pid) && pid > 0 ? pid : null;
  }

  /**
   * SIGKILLs the postmaster (a crash). With `killChildren` its children
   * (backends, checkpointer, …) die in the same instant, as in a host crash.
   * Without, they are left to notice the postmaster is gone; most exit by
   * themselves, but a backend waiting for a lock whose holder died (e.g. one
   * that PANICked on an fsync error) waits forever: see killLeftovers().
   * Either way wait for serverPids() to exit before starting the server
   * again, or it refuses the old postmaster.pid or shared memory.
   */
  async crash(options: { killChildren?: boolean } = {}): Promise<CrashedServer> {
    const postmasterPid = await this.postmasterPid();
    if (postmasterPid === null || !processAlive(postmasterPid)) throw new Error(`no running postmaster for ${this.dataDir}`);
    const children = await childPids(postmasterPid);
    process.kill(postmasterPid, 'SIGKILL');
    if (options.killChildren) for (const pid of children) killQuietly(pid);
    return { postmasterPid, childPids: children };
  }

  /** Waits up to `graceMs` for a crashed server's processes to exit, then SIGKILLs the rest; returns those it killed. */
  static async killLeftovers(crashed: CrashedServer, graceMs: number): Promise<number[]> {
    const stuck = await waitForExit(serverPids(crashed), graceMs);
    for (const pid of stuck) killQuietly(pid);
    const unkillable = await waitForExit(stuck, 10_000);
    if (unkillable.length > 0) throw new Error(`PostgreSQL processes ${unkillable.join(', ')} survive SIGKILL (stuck in the kernel?)`);
    return stuck;
  }

  /** psql -At: the query's rows, one per line, fields separated by '|'. */
  async psql(sql: string, options: { db?: string; timeoutMs?: number } = {}): Promise<string> {
    const out = await execOk(await pgProgram('psql'),
      ['-X', '-At', '-v', 'ON_ERROR_STOP=1', ...this.connectionArgs(), '-d', options.db ?? 'postgres', '-c', sql],
      { user: this.osUser, ...(options.timeoutMs ? { timeoutMs: options.timeoutMs } : {}) });
    return out.trim();
  }

  /** ALTER SYSTEM SET + reload, then waits until new sessions see the values. */
  async reconfigure(settings: Settings): Promise<void> {
    for (const [name, value] of Object.entries(settings)) await this.psql(`ALTER SYSTEM SET ${name} = ${formatSetting(value)}`);
    await this.psql('SELECT pg_reload_conf()');
    for (const [name, value] of Object.entries(settings)) {
      const want = typeof value === 'boolean' ? (value ? 'on' : 'off') : String(value);
      const deadline = Date.now() + 10_000;
      while ((await this.psql(`SHOW ${name}`)) !== want) {
        if (Date.now() > deadline) throw new Error(`${name} did not become ${want} after reload`);
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    }
    // The checkpointer and WAL writer pick the reload up on their own schedule; give them a moment.
    await new Promise((resolve) => setTimeout(resolve, 300));
  }

  /**
   * pg_amcheck --heapallindexed over every relation of `db`. It installs amcheck if needed, except
   * with `readOnly` (a hot standby refuses even CREATE EXTENSION IF NOT EXISTS: create it on the primary).
   */
  async amcheck(db = 'postgres', options: { readOnly?: boolean } = {}): Promise<{ clean: boolean; output: string }> {
    const result = await exec(await pgProgram('pg_amcheck'),
      [...this.connectionArgs(), '--heapallindexed', ...(options.readOnly ? [] : ['--install-missing']), '-d', db], { user: this.osUser });
    return { clean: result.code === 0 && result.stdout.trim() === '', output: (result.stdout + result.stderr).trim() };
  }

  async logTail(lines: number): Promise<string> {
    const text = await fsp.readFile(this.logFile, 'utf8').catch(() => '');
    return text.split('\n').slice(-lines - 1).join('\n');
  }

  /** Server log lines at WARNING or worse (ERROR, FATAL, PANIC). */
  async logProblems(): Promise<string[]> {
    const text = await fsp.readFile(this.logFile, 'utf8').catch(() => '');
    return text.split('\n').filter((line) => /\b(WARNING|ERROR|FATAL|PANIC):/.test(line));
  }
}
