/**
 * `lsnfs mount` and `lsnfs umount`. A mount runs as its own process (the
 * daemon, mount-daemon.ts) because FUSE ops run on that process's event loop;
 * the command a user types starts the daemon, waits until the mount is live,
 * and returns. This side loads none of the volume code: a command that only
 * starts a mount (lsnfs pg standby) starts faster.
 */
import { spawn } from 'node:child_process';
import { openSync, promises as fsp } from 'node:fs';
import { UserError, assert } from '../util/errors';
import { processAlive } from '../util/process';
import type { MountRole } from '../volume/volume';
import { MetricsAddress, formatMetricsAddress } from '../metrics/address';
import { DAEMON_NODE_FLAGS, LSNFS_BIN } from './invocation';
import { isMounted, mountLogPath, readMountRecord, removeMountRecord, runtimeDir } from './runtime';

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
  /** Serve the mount's figures for Prometheus here. */
  metrics?: MetricsAddress;
}

const READY_TIMEOUT_MS = 120_000;
const UMOUNT_WAIT_MS = 120_000;

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
  if (options.metrics !== undefined) args.push('--metrics', formatMetricsAddress(options.metrics));
  return [...args, '--foreground'];
}

/** What the daemon tells its starter: held (device open), ready (mounted, at this epoch), or why it failed. */
interface DaemonMessage { ready?: boolean; held?: boolean; epoch?: number; error?: string }

/** Spawns the daemon; `next(kind)` resolves on its next message of that kind, and throws (killing it) on an error or its exit. */
async function spawnDaemon(options: MountOptions): Promise<{ pid: number; logFile: string; next(kind: 'held' | 'ready'): Promise<DaemonMessage>; send(message: object): void; release(): void }> {
  await fsp.mkdir(runtimeDir(), { recursive: true });
  const logFile = mountLogPath(options.mountpoint);
  const logFd = openSync(logFile, 'a');
  const child = spawn(process.execPath, [...DAEMON_NODE_FLAGS, LSNFS_BIN, ...daemonArgs(options)], {
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

export async function checkMountpoint(mountpoint: string): Promise<void> {
  const stat = await fsp.stat(mountpoint).catch(() => null);
  if (!stat?.isDirectory()) throw new UserError(`mountpoint ${mountpoint}: not a directory`);
  if (await isMounted(mountpoint)) throw new UserError(`mountpoint ${mountpoint}: something is already mounted there`);
}

export function runUmount(mountpoint: string): Promise<void> {
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
    // It may have seen its mount go and be exiting already.
    try { process.kill(record.pid, 'SIGTERM'); } catch (error) { if ((error as NodeJS.ErrnoException).code !== 'ESRCH') throw error; }
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

