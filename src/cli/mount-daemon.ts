/**
 * The mount daemon: opens the device, mounts FUSE over the volume (or a
 * standby's overlay), tells its starter (mount.ts) it is live, and serves
 * until SIGTERM/SIGINT or a plain umount, then closes the volume cleanly.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import pino from 'pino';
import { openDevice } from '../device/open';
import { serveFuse } from '../fuse/adapter';
import { FuseChannel } from '../fuse/channel';
import { UserError } from '../util/errors';
import { Volume } from '../volume/volume';
import { FileSystem } from '../volume/file-system';
import { StandbyVolume, openStandby } from '../volume/standby';
import type { MetricsServer } from '../metrics/server';
import { MountOptions, checkMountpoint, runUmount } from './mount';
import { isMounted, mountLogPath, removeMountRecord, writeMountRecord } from './runtime';

const LARGEST_WRITE_BYTES = 128 * 1024;
/**
 * Kernel readahead on a standby's mount: PostgreSQL's replay reads pages at random, and each
 * readahead page is a page lsnfs reconstructs for nothing.
 */
const STANDBY_READAHEAD_BYTES = 8192;
/**
 * How long a standby's kernel trusts attributes. PostgreSQL's WAL retry
 * (every 5 ms) walks pgdata/pg_wal/<segment> and the next history file's
 * path, and opens the segment; with 0 each walk asks for both directories'
 * attributes and each open for the segment's again, right after the lookup
 * that returned them. A standby never depends on a directory's times, size
 * or link count, and modes change only by a chmod (seen a second later); a
 * file's attributes stay fresh to the millisecond.
 */
const STANDBY_DIR_ATTR_VALID_MS = 1000;
const STANDBY_FILE_ATTR_VALID_MS = 1;
/** A primary's kernel: only this mount changes the tree. */
const PRIMARY_CACHE_VALID_MS = 60_000;

/** The daemon: serves the mount until SIGTERM/SIGINT or until its kernel mount is gone, then closes the volume cleanly. */
export async function runMountDaemon(options: MountOptions): Promise<void> {
  const log = pino({ name: 'lsnfs-mount' }, pino.destination(2));
  const notify = (message: object): void => { if (process.send) process.send(message); };
  let volume: Volume;
  let served: FileSystem & { close(): Promise<void> };
  /** The mountpoint as the kernel lists it (symlinks resolved). */
  let kernelMountpoint: string;
  let channel: FuseChannel;
  let metrics: MetricsServer | null = null;
  try {
    // Listening first: an address in use fails the mount before it takes the device (or a slot).
    if (options.metrics !== undefined) metrics = await (await import('../metrics/server')).startMetricsServer(options.metrics);
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
    let standby: StandbyVolume | null = null;
    if (options.role === 'replica' && options.overlay !== undefined) {
      standby = await openStandby(device, { host: options.host, overlayDir: path.resolve(options.overlay), pollIntervalMs: options.pollIntervalMs });
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
    channel = mountFuse(served, options);
    if (metrics) {
      const { registerMountMetrics } = await import('../metrics/mount-metrics');
      registerMountMetrics(metrics.registry, { volume, standby, channel, host: options.host, device: options.device });
    }
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
  // A plain `umount` (root; there is no fusermount here) ends the kernel mount without telling the daemon
  // anything but that: its channel reads ENODEV, and it closes the volume as `lsnfs umount` would have
  // (checkpoint, release).
  channel.onceUnmounted(() => void stop('the kernel mount is gone', { mountGone: true }));
  const stop = async (reason: string, how: { mountGone: boolean } = { mountGone: false }): Promise<void> => {
    if (stopping) return;
    stopping = true;
    log.info({ reason }, 'unmounting');
    try {
      // Once its own mount is gone, whatever is mounted there now is someone else's (a failover's new primary).
      if (!how.mountGone && await isMounted(kernelMountpoint)) await runUmount(mountpoint);
      channel.stop();
      await metrics?.close();
      await served.close();
      await removeMountRecord(mountpoint);
      log.info({ tailLsn: volume.tailLsn }, 'unmounted cleanly');
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

function mountFuse(volume: FileSystem, options: MountOptions): FuseChannel {
  const common = { maxWriteBytes: LARGEST_WRITE_BYTES, allowOther: options.allowOther };
  const standby = options.role === 'replica' && options.overlay !== undefined;
  try {
    if (options.role === 'primary') {
      // Only this mount changes the tree: the kernel may cache pages, names and attributes.
      return serveFuse(volume, options.mountpoint, {
        ...common, entryValidMs: PRIMARY_CACHE_VALID_MS, fileAttrValidMs: PRIMARY_CACHE_VALID_MS, dirAttrValidMs: PRIMARY_CACHE_VALID_MS,
        keepCache: true, directIo: false, maxReadaheadBytes: 0, verifyPaths: false,
      });
    }
    // Another host changes the tree: every lookup must come to us, and a plain replica's reads too.
    // A standby's mount may use the page cache outside pg_wal/: its view there only moves forward
    // with the standby's own replay (an older cached page is one it could be served anyway). WAL
    // segments bypass it (StandbyVolume.bypassesPageCache).
    return serveFuse(volume, options.mountpoint, {
      ...common, entryValidMs: 0, fileAttrValidMs: standby ? STANDBY_FILE_ATTR_VALID_MS : 0, dirAttrValidMs: standby ? STANDBY_DIR_ATTR_VALID_MS : 0,
      keepCache: false, directIo: !standby,
      maxReadaheadBytes: standby ? STANDBY_READAHEAD_BYTES : 0, verifyPaths: true,
    });
  } catch (error) {
    throw new UserError(`mountpoint ${options.mountpoint}: FUSE mount failed: ${(error as Error).message}`);
  }
}
