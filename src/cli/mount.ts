/**
 * `lsnfs mount` and `lsnfs umount`. A mount runs as its own process (the
 * daemon) because FUSE ops run on that process's event loop; the command a
 * user types starts the daemon, waits until the mount is live, and returns.
 */
import { spawn } from 'node:child_process';
import { openSync, promises as fsp } from 'node:fs';
import path from 'node:path';
import Fuse from 'fuse-native';
import pino from 'pino';
import { openDevice } from '../device/open';
import { fuseOps } from '../fuse/adapter';
import { UserError, assert } from '../util/errors';
import { processAlive } from '../util/process';
import { MountRole, Volume } from '../volume/volume';
import { FileSystem } from '../volume/file-system';
import { openStandby } from '../volume/standby';
import { isMounted, mountLogPath, readMountRecord, removeMountRecord, runtimeDir, writeMountRecord } from './runtime';

export interface MountOptions {
  device: string;
  mountpoint: string;
  host: string;
  allowOther: boolean;
  foreground: boolean;
  role: MountRole;
  /** Replica: how often to look for new records. */
  pollIntervalMs: number;
  /** Primary: a reader whose heartbeat is older than this no longer holds the GC horizon. */
  replicaTimeoutMs?: number;
  /** Snapshot: the LSN or the time to serve. */
  atLsn?: number;
  atTimeMs?: number;
  /**
   * Snapshot: make it writable with a private overlay in this directory (a branch).
   * Replica: a PostgreSQL standby's mount; its own writes go to this directory.
   */
  overlay?: string;
  /** The daemon loads and opens the device, then waits for the word to mount (see spawnHeldMount). */
  held?: boolean;
}

const READY_TIMEOUT_MS = 120_000;
/** The `lsnfs` binary the daemon runs (whoever calls mountInBackground: the CLI, the drill, a test); this file is dist/src/cli/mount.js. */
const LSNFS_BIN = path.resolve(__dirname, '..', '..', '..', 'bin', 'lsnfs');
const UMOUNT_WAIT_MS = 120_000;
const LARGEST_WRITE_BYTES = 128 * 1024;
/**
 * Kernel readahead on a standby's mount: PostgreSQL's replay reads pages at random, and each
 * readahead page is a page lsnfs reconstructs for nothing.
 */
const STANDBY_READAHEAD_BYTES = 8192;

/** The `lsnfs mount` arguments that make the daemon serve `options`. */
function daemonArgs(options: MountOptions): string[] {
  const args = ['mount', '--device', options.device, '--mountpoint', options.mountpoint, '--host', options.host,
    '--role', options.role, '--poll-interval-ms', String(options.pollIntervalMs)];
  if (options.atLsn !== undefined) args.push('--at-lsn', String(options.atLsn));
  if (options.atTimeMs !== undefined) args.push('--at-time', new Date(options.atTimeMs).toISOString());
  if (options.overlay !== undefined) args.push('--overlay', options.overlay);
  if (options.replicaTimeoutMs !== undefined) args.push('--replica-timeout', `${options.replicaTimeoutMs}ms`);
  if (options.allowOther) args.push('--allow-other');
  if (options.held) args.push('--held');
  return [...args, '--foreground'];
}

/** What the daemon tells its starter: held (device open), ready (mounted, at this epoch), or why it failed. */
interface DaemonMessage { ready?: boolean; held?: boolean; epoch?: number; error?: string }

/** Spawns the daemon; `next(kind)` resolves on its next message of that kind, and throws (killing it) on an error or its exit. */
async function spawnDaemon(options: MountOptions): Promise<{ pid: number; logFile: string; next(kind: 'held' | 'ready'): Promise<DaemonMessage>; send(message: object): void; release(): void }> {
  await fsp.mkdir(runtimeDir(), { recursive: true });
  const logFile = mountLogPath(options.mountpoint);
  const logFd = openSync(logFile, 'a');
  const child = spawn(process.execPath, [LSNFS_BIN, ...daemonArgs(options)], {
    detached: true,
    stdio: ['ignore', logFd, logFd, 'ipc'],
  });
  const next = async (kind: 'held' | 'ready'): Promise<DaemonMessage> => {
    const outcome = await new Promise<{ ok: true; message: DaemonMessage } | { ok: false; message: string }>((resolve) => {
      const timer = setTimeout(() => resolve({ ok: false, message: `mount did not come up within ${READY_TIMEOUT_MS} ms (see ${logFile})` }), READY_TIMEOUT_MS);
      const onMessage = (message: DaemonMessage): void => {
        if (!message[kind] && message.error === undefined) return;
        done(message[kind] ? { ok: true, message } : { ok: false, message: message.error ?? 'mount failed' });
      };
      const onExit = (code: number | null, signal: string | null): void => done({ ok: false, message: `mount process exited (${signal ?? `code ${code}`}); see ${logFile}` });
      const done = (result: { ok: true; message: DaemonMessage } | { ok: false; message: string }): void => {
        clearTimeout(timer);
        child.off('message', onMessage);
        child.off('exit', onExit);
        resolve(result);
      };
      child.on('message', onMessage);
      child.on('exit', onExit);
    });
    if (!outcome.ok) {
      child.kill('SIGKILL');
      throw new UserError(outcome.message);
    }
    return outcome.message;
  };
  return {
    pid: child.pid!, logFile, next,
    send: (message) => child.send(message),
    release: () => { child.disconnect(); child.unref(); },
  };
}

/** Starts the daemon in the background and resolves once the mount is live. */
export async function mountInBackground(options: MountOptions): Promise<{ pid: number; logFile: string }> {
  await checkMountpoint(options.mountpoint);
  const daemon = await spawnDaemon({ ...options, held: false });
  await daemon.next('ready');
  daemon.release();
  return { pid: daemon.pid, logFile: daemon.logFile };
}

/** A daemon started ahead of its mount (it has loaded and opened the device): `mount()` mounts, `cancel()` kills it. */
export interface HeldMount {
  /** Resolves once the mount is live; `epoch` is the one it took. */
  mount(): Promise<{ pid: number; logFile: string; epoch: number }>;
  cancel(): void;
}

/**
 * Starts the daemon for `options` now and returns once it has loaded and
 * opened the device; it mounts (lease, recovery, FUSE) when told. A failover
 * starts the new primary's daemon this way before fencing and unmounting the
 * replica at the mountpoint, so that neither Node's start nor the device's
 * login is part of the outage.
 */
export async function spawnHeldMount(options: MountOptions): Promise<HeldMount> {
  const daemon = await spawnDaemon({ ...options, held: true });
  await daemon.next('held');
  return {
    mount: async () => {
      await checkMountpoint(options.mountpoint);
      daemon.send({ mount: true });
      const { epoch } = await daemon.next('ready');
      daemon.release();
      assert(epoch !== undefined, 'a ready daemon names its epoch');
      return { pid: daemon.pid, logFile: daemon.logFile, epoch };
    },
    cancel: () => { if (processAlive(daemon.pid)) process.kill(daemon.pid, 'SIGKILL'); daemon.release(); },
  };
}

async function checkMountpoint(mountpoint: string): Promise<void> {
  const stat = await fsp.stat(mountpoint).catch(() => null);
  if (!stat?.isDirectory()) throw new UserError(`mountpoint ${mountpoint}: not a directory`);
  if (await isMounted(mountpoint)) throw new UserError(`mountpoint ${mountpoint}: something is already mounted there`);
}

/** The daemon: serves the mount until SIGTERM/SIGINT, then closes the volume cleanly. */
export async function runMountDaemon(options: MountOptions): Promise<void> {
  const log = pino({ name: 'lsnfs-mount' }, pino.destination(2));
  const notify = (message: object): void => { if (process.send) process.send(message); };
  let volume: Volume;
  let served: FileSystem & { close(): Promise<void> };
  try {
    // The host's name is its iSCSI initiator name too: one nexus per host.
    const device = await openDevice(options.device, { readOnly: false, host: options.host });
    if (options.held) {
      // Held for a failover: its word mounts; once it is gone, no word will come.
      const mountNow = new Promise<void>((resolve, reject) => {
        const onDisconnect = (): void => reject(new UserError('the command that started this held mount is gone; not mounting'));
        process.once('disconnect', onDisconnect);
        process.once('message', () => { process.off('disconnect', onDisconnect); resolve(); });
      });
      notify({ held: true });
      await mountNow;
    }
    await checkMountpoint(options.mountpoint);
    if (options.role === 'replica' && options.overlay !== undefined) {
      const standby = await openStandby(device, { host: options.host, overlayDir: path.resolve(options.overlay), pollIntervalMs: options.pollIntervalMs });
      volume = standby.shared;
      served = standby;
    } else served = volume = options.role === 'primary'
      ? await Volume.openPrimary(device, { host: options.host, ...(options.replicaTimeoutMs !== undefined ? { replicaTimeoutMs: options.replicaTimeoutMs } : {}) })
      : await Volume.openReader(device, {
        host: options.host, role: options.role, pollIntervalMs: options.pollIntervalMs,
        ...(options.atLsn !== undefined ? { atLsn: options.atLsn } : {}),
        ...(options.atTimeMs !== undefined ? { atTimeMs: options.atTimeMs } : {}),
        ...(options.overlay !== undefined ? { overlayDir: path.resolve(options.overlay) } : {}),
      });
    await mountFuse(served, options);
  } catch (error) {
    notify({ error: error instanceof UserError ? error.message : String(error) });
    throw error;
  }
  const mountpoint = path.resolve(options.mountpoint);
  await writeMountRecord({
    pid: process.pid, device: options.device, mountpoint, host: options.host, role: options.role,
    ...(options.overlay !== undefined ? { overlay: path.resolve(options.overlay) } : {}),
    logFile: mountLogPath(mountpoint), startedAtMs: Date.now(),
  });
  // uptime: from the process start (Node and module loading included) to serving.
  log.info({ device: options.device, mountpoint, role: options.role, epoch: volume.epoch, lsn: volume.tailLsn, uptimeMs: Math.round(process.uptime() * 1000) }, 'mounted');
  notify({ ready: true, epoch: volume.epoch });
  // fuse-native keeps no handle open on the event loop; this keeps the daemon alive.
  const keepAlive = setInterval(() => undefined, 1 << 30);
  let stopping = false;
  const stop = async (signal: string): Promise<void> => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'unmounting');
    try {
      if (await isMounted(mountpoint)) await runUmount(mountpoint);
      await served.close();
      await removeMountRecord(mountpoint);
      log.info({ tailLsn: volume.tailLsn }, 'unmounted cleanly');
      clearInterval(keepAlive);
      process.exit(0);
    } catch (error) {
      log.error({ err: error }, 'unmount failed');
      stopping = false;
    }
  };
  process.on('SIGTERM', () => void stop('SIGTERM'));
  process.on('SIGINT', () => void stop('SIGINT'));
}

function mountFuse(volume: FileSystem, options: MountOptions): Promise<void> {
  // fuse-native drops big_writes/max_write/direct_io and cannot set a timeout of
  // 0; fsname is passed through unescaped, so those ride along in it.
  // use_ino: st_ino is the volume's inode number (else libfuse numbers each
  // path, and two hard links of one file show different inode numbers).
  const common = `lsnfs,big_writes,max_write=${LARGEST_WRITE_BYTES},use_ino`;
  const standby = options.role === 'replica' && options.overlay !== undefined;
  const fuse = new Fuse(options.mountpoint, fuseOps(volume), options.role === 'primary'
    ? {
      // Only this mount changes the tree: the kernel may cache pages and attributes.
      timeout: false, allowOther: options.allowOther, defaultPermissions: true, kernelCache: true,
      attrTimeout: 60, entryTimeout: 60, maxRead: LARGEST_WRITE_BYTES, fsname: common,
    }
    : {
      // Another host changes the tree: every lookup must come to us, and a plain replica's reads too.
      // A standby's mount may use the page cache: outside pg_wal/ its view only moves forward with
      // the standby's own replay (an older cached page is one it could be served anyway), and
      // PostgreSQL reopens a WAL segment after every read that found no new record (each open
      // drops the file's cached pages: no kernel_cache).
      timeout: false, allowOther: options.allowOther, defaultPermissions: true, maxRead: LARGEST_WRITE_BYTES,
      fsname: `${common}${standby ? `,max_readahead=${STANDBY_READAHEAD_BYTES}` : ',direct_io'},attr_timeout=0,entry_timeout=0,negative_timeout=0`,
    });
  return new Promise((resolve, reject) => {
    fuse.mount((error) => (error ? reject(new UserError(`mountpoint ${options.mountpoint}: FUSE mount failed: ${error.message}`)) : resolve()));
  });
}

function runUmount(mountpoint: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn('umount', [mountpoint], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => { stderr += chunk.toString(); });
    child.on('exit', (code) => (code === 0 ? resolve() : reject(new UserError(`mountpoint ${mountpoint}: umount failed: ${stderr.trim()}`))));
  });
}

/**
 * Unmounts: the kernel mount goes first (refused while files are open), then
 * the daemon flushes, checkpoints, releases the device and exits.
 */
export async function umount(mountpoint: string): Promise<void> {
  const record = await readMountRecord(mountpoint);
  const mounted = await isMounted(mountpoint);
  if (!record && !mounted) throw new UserError(`mountpoint ${mountpoint}: nothing is mounted there`);
  const daemonAlive = record !== null && processAlive(record.pid);
  if (mounted) {
    if (daemonAlive) await runUmount(mountpoint);
    else await runUmountLazy(mountpoint); // the daemon died: only the kernel's stale mount is left
  }
  if (record && daemonAlive) {
    process.kill(record.pid, 'SIGTERM');
    const deadline = Date.now() + UMOUNT_WAIT_MS;
    while (processAlive(record.pid)) {
      if (Date.now() > deadline) throw new UserError(`mountpoint ${mountpoint}: daemon pid ${record.pid} did not exit; see ${record.logFile}`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
  await removeMountRecord(mountpoint);
}

function runUmountLazy(mountpoint: string): Promise<void> {
  return new Promise((resolve) => {
    spawn('umount', ['-l', mountpoint], { stdio: 'ignore' }).on('exit', () => resolve());
  });
}

