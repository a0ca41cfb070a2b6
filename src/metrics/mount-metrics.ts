/**
 * What a mount reports on its metrics endpoint. Gauges are read from the
 * volume when scraped (nothing is counted on the hot path for them); FUSE
 * requests are timed by the channel from arrival to reply, only while an
 * endpoint is registered.
 *
 * LSNs are byte positions in the log, so a difference of two is bytes: a
 * replica's lag is the primary's lsnfs_log_durable_lsn minus the replica's
 * lsnfs_reader_view_lsn, or minus lsnfs_reader_slot_view_lsn{host} on the
 * primary alone.
 */
import { constants as os } from 'node:os';
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import { FuseChannel } from '../fuse/channel';
import { Opcode } from '../fuse/protocol';
import type { StandbyVolume } from '../volume/standby';
import type { Volume } from '../volume/volume';

export interface MountForMetrics {
  volume: Volume;
  /** A PostgreSQL standby's mount (a replica with an overlay). */
  standby: StandbyVolume | null;
  channel: FuseChannel;
  host: string;
  device: string;
}

/** From 50 µs (a read answered from memory) to 2.5 s (an fsync behind a stalled device). */
const FUSE_SECONDS_BUCKETS = [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5];
const ERRNO_NAMES = new Map(Object.entries(os.errno).map(([name, errno]) => [errno, name]));

export function registerMountMetrics(registry: Registry, mount: MountForMetrics): void {
  const { volume, standby } = mount;
  const registers = [registry];
  const gauge = (name: string, help: string, value: () => number): void => {
    new Gauge({ name, help, registers, collect() { this.set(value()); } });
  };
  new Gauge({ name: 'lsnfs_mount_info', help: 'This mount: its role (primary, replica, snapshot, standby), host name and device', labelNames: ['role', 'host', 'device'], registers })
    .set({ role: standby ? 'standby' : volume.role, host: mount.host, device: mount.device }, 1);
  gauge('lsnfs_epoch', 'The writer epoch this mount serves', () => volume.epoch);
  gauge('lsnfs_log_capacity_bytes', 'The log\'s size on the device', () => volume.superblock.logBytes);

  if (volume.role === 'primary') {
    gauge('lsnfs_log_head_lsn', 'The oldest LSN still in the log (the space before it is reclaimed)', () => volume.superblock.headLsn);
    gauge('lsnfs_log_tail_lsn', 'Where the next record goes', () => volume.tailLsn);
    gauge('lsnfs_log_durable_lsn', 'The log is on the device up to here: fsyncs acknowledged so far are all below it', () => volume.durableLsn);
    gauge('lsnfs_live_bytes', 'Log bytes of versions still readable, at the tail or by a reader, retention or tombstone', () => volume.state.liveBytes);
    gauge('lsnfs_horizon_lsn', 'Versions visible at or after this LSN are kept (the tail when no reader or retention holds older ones)',
      () => (Number.isFinite(volume.state.horizonLsn) ? volume.state.horizonLsn : volume.tailLsn));
    gauge('lsnfs_database_lsn', 'The highest PostgreSQL WAL position written to the volume (0: no WAL seen)', () => volume.walLsn);
    new Gauge({
      name: 'lsnfs_reader_slot_view_lsn', help: 'Each live reader\'s view, as the primary last read its slot', labelNames: ['host'], registers,
      collect() {
        this.reset();
        for (const reader of volume.liveReaders) this.set({ host: reader.host }, reader.viewLsn);
      },
    });
  } else {
    const tailer = volume.tailer!;
    gauge('lsnfs_reader_view_lsn', 'The LSN this reader serves (a standby\'s mount: outside pg_wal/, held at its replay position)', () => tailer.viewLsn);
    gauge('lsnfs_reader_applied_lsn', 'How far this reader has consumed the primary\'s log (a standby\'s pg_wal/ is served here)', () => tailer.appliedLsn);
    gauge('lsnfs_reader_view_record_time_seconds', 'The primary\'s clock on the newest record in the view (Unix time)', () => tailer.viewTimeMs / 1000);
  }
  if (standby) {
    gauge('lsnfs_standby_database_lsn', 'The database LSN the standby\'s non-WAL files are served at (its minRecoveryPoint)', () => standby.gate.viewWalLsn);
    gauge('lsnfs_standby_overlay_bytes', 'Bytes in the standby\'s private overlay: its own pages and kept copies', () => standby.overlayBytes);
    gauge('lsnfs_standby_kept_pages', 'Page versions of the standby\'s view kept in its overlay because the primary wrote the page again', () => standby.keptPageCount);
  }

  const seconds = new Histogram({
    name: 'lsnfs_fuse_request_duration_seconds', help: 'FUSE requests by operation, from arrival to reply', labelNames: ['op'],
    buckets: FUSE_SECONDS_BUCKETS, registers,
  });
  const errors = new Counter({ name: 'lsnfs_fuse_request_errors_total', help: 'FUSE requests answered with an error, by operation and errno', labelNames: ['op', 'errno'], registers });
  // One histogram child per operation, made on its first request: a request then allocates nothing here.
  const byOpcode = new Map<number, { op: string; seconds: { observe(value: number): void } }>();
  mount.channel.observer = (opcode, errno, elapsedSeconds) => {
    let timed = byOpcode.get(opcode);
    if (!timed) {
      const op = (Opcode[opcode] ?? String(opcode)).toLowerCase();
      byOpcode.set(opcode, timed = { op, seconds: seconds.labels({ op }) });
    }
    timed.seconds.observe(elapsedSeconds);
    if (errno !== 0) errors.inc({ op: timed.op, errno: ERRNO_NAMES.get(errno) ?? String(errno) });
  };
}
