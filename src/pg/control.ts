/**
 * PostgreSQL's global/pg_control (ControlFileData of PostgreSQL 15,
 * src/include/catalog/pg_control.h, pg_control_version 1300) and WAL segment
 * file names. Pure functions on bytes: the volume uses them to follow the
 * database LSN, `lsnfs pg standby` to set the standby's minRecoveryPoint.
 *
 * Offsets (x86-64 alignment, checked against pg_controldata of a PG 15 initdb):
 * system_identifier 0, pg_control_version 8, state 16, checkPoint 32,
 * checkPointCopy 40 (redo 40, ThisTimeLineID 48), minRecoveryPoint 136,
 * minRecoveryPointTLI 144, MaxConnections 180, max_worker_processes 184, max_wal_senders 188,
 * max_prepared_xacts 192, max_locks_per_xact 196, xlog_seg_size 228, crc 288 (CRC-32C of bytes 0..287).
 */
import { crc32c } from '../util/crc32c';

/** pg_control_version of PostgreSQL 13, 14 and 15 (the layout above). */
export const PG_CONTROL_VERSION = 1300;
/** Where pg_control lies in a data directory. */
export const CONTROL_FILE_SUFFIX = '/global/pg_control';

const OFF = {
  version: 8, state: 16, checkPoint: 32, redo: 40, timeline: 48,
  minRecoveryPoint: 136, minRecoveryPointTli: 144, xlogSegSize: 228, crc: 288,
} as const;

/**
 * Settings the primary records in pg_control (PostgreSQL's XLogReportParameters): a hot standby
 * refuses to start, or pauses replay, with a lower value of any of them. By setting name, the offset.
 */
const HOT_STANDBY_MINIMUM_OFFSETS = {
  max_connections: 180, max_worker_processes: 184, max_wal_senders: 188, max_prepared_transactions: 192, max_locks_per_transaction: 196,
} as const;
export type HotStandbyMinimums = Record<keyof typeof HOT_STANDBY_MINIMUM_OFFSETS, number>;

/** pg_control's DBState once a server has finished recovery (or promotion) and accepts writes. */
export const DB_IN_PRODUCTION = 6;

export interface ControlFile {
  pgControlVersion: number;
  /** DBState: 6 (DB_IN_PRODUCTION) once recovery or promotion is over. */
  state: number;
  /** The newest checkpoint record's LSN and its REDO point: recovery starts at the REDO point. */
  checkPointLsn: number;
  redoLsn: number;
  timeline: number;
  /** A standby may serve reads (and crash-restart) only once replay has passed this. */
  minRecoveryPoint: number;
  /** The timeline minRecoveryPoint is on (PostgreSQL refuses one whose timeline history does not contain it). */
  minRecoveryPointTimeline: number;
  walSegmentBytes: number;
  /** The primary's values of the settings a hot standby must match or exceed. */
  hotStandbyMinimums: HotStandbyMinimums;
}

function readLsn(bytes: Buffer, offset: number): number {
  return Number(bytes.readBigUInt64LE(offset));
}

/** Parses pg_control; null when it is not a PostgreSQL 13-15 control file with a valid CRC. */
export function parseControlFile(bytes: Buffer): ControlFile | null {
  if (bytes.length < OFF.crc + 4) return null;
  if (bytes.readUInt32LE(OFF.version) !== PG_CONTROL_VERSION) return null;
  if ((crc32c(bytes.subarray(0, OFF.crc)) >>> 0) !== bytes.readUInt32LE(OFF.crc)) return null;
  return {
    pgControlVersion: bytes.readUInt32LE(OFF.version),
    state: bytes.readUInt32LE(OFF.state),
    checkPointLsn: readLsn(bytes, OFF.checkPoint),
    redoLsn: readLsn(bytes, OFF.redo),
    timeline: bytes.readUInt32LE(OFF.timeline),
    minRecoveryPoint: readLsn(bytes, OFF.minRecoveryPoint),
    minRecoveryPointTimeline: bytes.readUInt32LE(OFF.minRecoveryPointTli),
    walSegmentBytes: bytes.readUInt32LE(OFF.xlogSegSize),
    hotStandbyMinimums: Object.fromEntries(Object.entries(HOT_STANDBY_MINIMUM_OFFSETS)
      .map(([name, offset]) => [name, bytes.readInt32LE(offset)])) as HotStandbyMinimums,
  };
}

/**
 * A copy of pg_control with minRecoveryPoint raised to `lsn` on `timeline` and the CRC redone. After a
 * failover the end of WAL is on a newer timeline than the last checkpoint until the new primary's first
 * checkpoint completes: the timeline comes from the WAL, not from the checkpoint.
 */
export function withMinRecoveryPoint(bytes: Buffer, lsn: number, timeline: number): Buffer {
  const control = parseControlFile(bytes);
  if (!control) throw new Error('pg_control: not a PostgreSQL 15 control file (version or CRC mismatch)');
  const copy = Buffer.from(bytes);
  if (lsn > control.minRecoveryPoint) {
    copy.writeBigUInt64LE(BigInt(lsn), OFF.minRecoveryPoint);
    copy.writeUInt32LE(timeline, OFF.minRecoveryPointTli);
  }
  copy.writeUInt32LE(crc32c(copy.subarray(0, OFF.crc)) >>> 0, OFF.crc);
  return copy;
}

/** "0/1500718": PostgreSQL's text form of an LSN. */
/** Bytes of a page's LSN (pd_lsn) at the start of every PostgreSQL page. */
export const PAGE_LSN_BYTES = 8;

/** A PostgreSQL page's LSN (pd_lsn: xlogid u32, then xrecoff u32) from the page starting at `offset` of `bytes`. */
export function pageLsnAt(bytes: Buffer, offset = 0): number {
  return bytes.readUInt32LE(offset) * 0x1_0000_0000 + bytes.readUInt32LE(offset + 4);
}

export function formatPgLsn(lsn: number): string {
  return `${Math.floor(lsn / 0x1_0000_0000).toString(16).toUpperCase()}/${(lsn % 0x1_0000_0000).toString(16).toUpperCase()}`;
}

export function parsePgLsn(text: string): number {
  const match = /^([0-9A-Fa-f]{1,8})\/([0-9A-Fa-f]{1,8})$/.exec(text.trim());
  if (!match) throw new Error(`"${text}" is not a PostgreSQL LSN`);
  return parseInt(match[1]!, 16) * 0x1_0000_0000 + parseInt(match[2]!, 16);
}

const SEGMENT_NAME = /^[0-9A-F]{24}$/;

export function isWalSegmentName(name: string): boolean {
  return SEGMENT_NAME.test(name);
}

/** base/<db>/<relfilenode>[_fork][.segment], global/…, and the same in tablespaces (pg_tblspc/<oid>/<version>/<db>/…). */
const RELATION_FILE_PATH = /\/(global|base\/\d+|pg_tblspc\/\d+\/[^/]+\/\d+)\/\d+(_(fsm|vm|init))?(\.\d+)?$/;
const VISIBILITY_MAP_PATH = /_vm(\.\d+)?$/;

/** A relation file of a data directory, any fork and segment: PostgreSQL writes it in whole pages. */
export function isRelationFilePath(path: string): boolean {
  return RELATION_FILE_PATH.test(path);
}

/** A relation's visibility map fork (_vm). */
export function isVisibilityMapPath(path: string): boolean {
  return VISIBILITY_MAP_PATH.test(path);
}

const TIMELINE_HISTORY_NAME = /^[0-9A-F]{8}\.history$/;

/** A timeline's history file in pg_wal/ (TTTTTTTT.history), written when a server is promoted. */
export function isTimelineHistoryName(name: string): boolean {
  return TIMELINE_HISTORY_NAME.test(name);
}

/**
 * The WAL position where segment `name` starts: TTTTTTTTXXXXXXXXYYYYYYYY is
 * timeline, then the segment number split as (logical file, segment within it),
 * with 2^32 / segmentBytes segments per logical file.
 */
export function walSegmentStartLsn(name: string, segmentBytes: number): number {
  const high = parseInt(name.slice(8, 16), 16);
  const low = parseInt(name.slice(16, 24), 16);
  return (high * (0x1_0000_0000 / segmentBytes) + low) * segmentBytes;
}
