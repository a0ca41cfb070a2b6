/**
 * The mount daemon: opens the device, mounts FUSE over the volume (or a
 * standby's overlay), tells its starter (mount.ts) it is live, and serves
 * until SIGTERM/SIGINT or a plain umount, then closes the volume cleanly.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import Fuse from 'fuse-native';
import pino from 'pino';
import { openDevice } from '../device/open';
import { fuseOps } from '../fuse/adapter';
import { UserError } from '../util/errors';
import { Volume } from '../volume/volume';
import { FileSystem } from '../volume/file-system';
import { openStandby } from '../volume/standby';
import { MountOptions, checkMountpoint, runUmount } from './mount';
import { isMounted, mountLogPath, removeMountRecord, writeMountRecord } from './runtime';

const LARGEST_WRITE_BYTES = 128 * 1024;
/**
 * Kernel readahead on a standby's mount: PostgreSQL's replay reads pages at random, and each
 * readahead page is a page lsnfs reconstructs for nothing.
 */
const STANDBY_READAHEAD_BYTES = 8192;
/** How often the daemon checks that its kernel mount is still there. */
const MOUNT_WATCH_INTERVAL_MS = 1000;

/** The daemon: serves the mount until SIGTERM/SIGINT or until its kernel mount is gone, then closes the volume cleanly. */
export async function runMountDaemon(options: MountOptions): Promise<void> {
  const log = pino({ name: 'lsnfs-mount' }, pino.destination(2));
  const notify = (message: object): void => { if (process.send) process.send(message); };
  let volume: Volume;
  let served: FileSystem & { close(): Promise<void> };
  /** The mountpoint as the kernel lists it (symlinks resolved), for the watch below. */
  let kernelMountpoint: string;
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
    kernelMountpoint = await fsp.realpath(options.mountpoint);
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
  let stopping = false;
  // A plain `umount` (root; there is no fusermount here) ends the kernel mount without telling the daemon:
  // it notices within a second and closes the volume as `lsnfs umount` would have (checkpoint, release).
  // This timer also keeps the daemon alive: fuse-native holds no handle on the event loop.
  const watchMount = setInterval(() => {
    if (stopping) return;
    isMounted(kernelMountpoint).then((mounted) => { if (!mounted) void stop('the kernel mount is gone', { mountGone: true }); }, () => undefined);
  }, MOUNT_WATCH_INTERVAL_MS);
  const stop = async (reason: string, how: { mountGone: boolean } = { mountGone: false }): Promise<void> => {
    if (stopping) return;
    stopping = true;
    log.info({ reason }, 'unmounting');
    try {
      // Once its own mount is gone, whatever is mounted there now is someone else's (a failover's new primary).
      if (!how.mountGone && await isMounted(kernelMountpoint)) await runUmount(mountpoint);
      await served.close();
      await removeMountRecord(mountpoint);
      log.info({ tailLsn: volume.tailLsn }, 'unmounted cleanly');
      clearInterval(watchMount);
      process.exit(0);
    } catch (error) {
      log.error({ err: error }, 'unmount failed');
      // A signal may try again (the mount may have been busy); with the mount gone there is nothing left to serve.
      if (how.mountGone) process.exit(1);
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
