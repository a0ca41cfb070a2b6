/**
 * The on-device format, byte for byte. docs/FORMAT.md is the prose twin of
 * this file; change both together and bump FORMAT_VERSION.
 *
 *   0 KiB    superblock copy A (4 KiB)
 *   4 KiB    superblock copy B (4 KiB)
 *   8 KiB    reservation block (512 B): holder, key, epoch, heartbeat (emulated fencing)
 *  12 KiB    durable marker (512 B): the primary's durable LSN, written after idle flushes
 *  16 KiB    replica slots: REPLICA_SLOT_COUNT x REPLICA_SLOT_BYTES
 *   1 MiB    the log: a circular byte range addressed by LSN
 *
 * An LSN is a byte position in the logical, ever-growing log; it lives at
 * device offset LOG_OFFSET + (lsn mod logSize). A record never changes once
 * written; space is reused only after the cleaner moves the head past it.
 */
import { crc32c } from '../util/crc32c';
import { assert } from '../util/errors';

export const FORMAT_VERSION = 1;
export const SUPERBLOCK_MAGIC = Buffer.from('LSNFS-SB', 'ascii');
export const SUPERBLOCK_BYTES = 4096;
export const SUPERBLOCK_OFFSETS = [0, 4096] as const;
export const RESERVATION_OFFSET = 8192;
export const RESERVATION_BYTES = 8192;
/** One sector in the reservation area where the primary says how far its log is durable. */
export const DURABLE_MARKER_OFFSET = 12288;
export const REPLICA_SLOTS_OFFSET = 16384;
export const REPLICA_SLOT_BYTES = 512;
export const REPLICA_SLOT_COUNT = 128;
export const LOG_OFFSET = 1024 * 1024;
/** The first LSN of a new volume; LSN 0 means "none". */
export const FIRST_LSN = 4096;
export const DEFAULT_PAGE_BYTES = 8192;
/** Smallest device worth formatting: the metadata area plus a few MiB of log. */
export const MIN_DEVICE_BYTES = LOG_OFFSET + 8 * 1024 * 1024;

/** Largest LSN we encode (48 bits = 256 TiB of log written over the volume's life). */
const MAX_U48 = 2 ** 48 - 1;

export interface Superblock {
  formatVersion: number;
  pageBytes: number;
  deviceBytes: number;
  logOffset: number;
  logBytes: number;
  uuid: string;
  /** Incremented on every superblock write; the valid copy with the highest wins. */
  generation: number;
  /** Bumped by every primary mount and failover; records of older epochs past the tail are stale. */
  epoch: number;
  /** LSN of the first record of the newest complete checkpoint. */
  checkpointLsn: number;
  /** Oldest LSN still needed; the cleaner advances it. */
  headLsn: number;
  createdAtMs: number;
  /** Versions younger than this stay readable for snapshots (0 = none). */
  retainMs: number;
}

// Superblock field offsets.
const SB = {
  magic: 0, formatVersion: 8, pageBytes: 12, deviceBytes: 16, logOffset: 24, logBytes: 32,
  uuid: 40, generation: 56, epoch: 64, checkpointLsn: 72, headLsn: 80, createdAtMs: 88,
  retainMs: 96, crc: SUPERBLOCK_BYTES - 4,
} as const;

export function encodeSuperblock(sb: Superblock): Buffer {
  const buf = Buffer.alloc(SUPERBLOCK_BYTES);
  SUPERBLOCK_MAGIC.copy(buf, SB.magic);
  buf.writeUInt32LE(sb.formatVersion, SB.formatVersion);
  buf.writeUInt32LE(sb.pageBytes, SB.pageBytes);
  writeU48(buf, SB.deviceBytes, sb.deviceBytes);
  writeU48(buf, SB.logOffset, sb.logOffset);
  writeU48(buf, SB.logBytes, sb.logBytes);
  Buffer.from(sb.uuid.replace(/-/g, ''), 'hex').copy(buf, SB.uuid);
  writeU48(buf, SB.generation, sb.generation);
  writeU48(buf, SB.epoch, sb.epoch);
  writeU48(buf, SB.checkpointLsn, sb.checkpointLsn);
  writeU48(buf, SB.headLsn, sb.headLsn);
  writeU48(buf, SB.createdAtMs, sb.createdAtMs);
  writeU48(buf, SB.retainMs, sb.retainMs);
  buf.writeUInt32LE(crc32c(buf.subarray(0, SB.crc)), SB.crc);
  return buf;
}

export type SuperblockDecodeResult =
  | { ok: true; superblock: Superblock }
  | { ok: false; reason: 'not-lsnfs' | 'checksum' | 'version'; detail: string };

export function decodeSuperblock(buf: Buffer): SuperblockDecodeResult {
  if (!buf.subarray(SB.magic, SB.magic + 8).equals(SUPERBLOCK_MAGIC)) {
    return { ok: false, reason: 'not-lsnfs', detail: 'no lsnfs superblock magic' };
  }
  if (buf.readUInt32LE(SB.crc) !== crc32c(buf.subarray(0, SB.crc))) {
    return { ok: false, reason: 'checksum', detail: 'superblock checksum mismatch' };
  }
  const formatVersion = buf.readUInt32LE(SB.formatVersion);
  if (formatVersion !== FORMAT_VERSION) {
    return { ok: false, reason: 'version', detail: `format version ${formatVersion}, this lsnfs reads ${FORMAT_VERSION}` };
  }
  const hex = buf.subarray(SB.uuid, SB.uuid + 16).toString('hex');
  return {
    ok: true,
    superblock: {
      formatVersion,
      pageBytes: buf.readUInt32LE(SB.pageBytes),
      deviceBytes: readU48(buf, SB.deviceBytes),
      logOffset: readU48(buf, SB.logOffset),
      logBytes: readU48(buf, SB.logBytes),
      uuid: `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`,
      generation: readU48(buf, SB.generation),
      epoch: readU48(buf, SB.epoch),
      checkpointLsn: readU48(buf, SB.checkpointLsn),
      headLsn: readU48(buf, SB.headLsn),
      createdAtMs: readU48(buf, SB.createdAtMs),
      retainMs: readU48(buf, SB.retainMs),
    },
  };
}

// ---------------------------------------------------------------------------
// Records

export const RECORD_MAGIC = 0x4e52534c; // "LSRN" little-endian
export const RECORD_HEADER_BYTES = 64;
/** Records start on 8-byte boundaries; batches start on device sectors. */
export const RECORD_ALIGN_BYTES = 8;

export enum RecordType {
  /** Fills a batch to the sector boundary; carries nothing. */
  Pad = 1,
  /** First record of every primary mount: the epoch and the host that owns it. */
  Epoch = 2,
  /** One chunk of a serialized checkpoint; flag CHECKPOINT_LAST marks the end. */
  Checkpoint = 3,
  /** Bytes of one page of one file: an image (whole page) or a delta. */
  Data = 4,
  /** A namespace or attribute change (create, unlink, rename, ...), JSON payload. */
  Meta = 5,
}

export const RECORD_FLAG_CHECKPOINT_LAST = 1;
/**
 * On a Data record: the bytes are the page's current content rewritten as one
 * image (a fold of a delta chain). Replay must not change size or times.
 */
export const RECORD_FLAG_SAME_CONTENT = 2;
/**
 * More records of the same operation follow (the pages of one write). Readers
 * on other hosts apply an operation's records together, never a part of it.
 */
export const RECORD_FLAG_CONTINUES = 4;

export interface RecordHeader {
  lsn: number;
  epoch: number;
  type: RecordType;
  flags: number;
  payloadBytes: number;
  payloadCrc: number;
  timeMs: number;
  /** The log prefix that was durable when this record's header was written to the device. */
  durableLsn: number;
  /** The highest PostgreSQL WAL position written when this record was created (0 = unknown). */
  walLsn: number;
}

// Record header field offsets.
const RH = {
  magic: 0, headerCrc: 4, lsn: 8, epoch: 16, type: 20, flags: 22, payloadBytes: 24,
  payloadCrc: 28, timeMs: 32, durableLsn: 40, walLsn: 48,
} as const;

export function recordBytes(payloadBytes: number): number {
  return alignUp(RECORD_HEADER_BYTES + payloadBytes, RECORD_ALIGN_BYTES);
}

/**
 * Encodes header + payload (+ zero padding to RECORD_ALIGN_BYTES) into one buffer.
 * `salt` (from the volume uuid) seeds the header checksum, so records left on
 * the device by an earlier volume never pass as records of this one.
 */
export function encodeRecord(header: Omit<RecordHeader, 'payloadBytes' | 'payloadCrc'>, payload: Uint8Array, salt: number): Buffer {
  const total = recordBytes(payload.length);
  const buf = Buffer.alloc(total);
  buf.writeUInt32LE(RECORD_MAGIC, RH.magic);
  writeU48(buf, RH.lsn, header.lsn);
  buf.writeUInt32LE(header.epoch, RH.epoch);
  buf.writeUInt16LE(header.type, RH.type);
  buf.writeUInt16LE(header.flags, RH.flags);
  buf.writeUInt32LE(payload.length, RH.payloadBytes);
  buf.writeUInt32LE(crc32c(payload), RH.payloadCrc);
  writeU48(buf, RH.timeMs, header.timeMs);
  writeU48(buf, RH.durableLsn, header.durableLsn);
  writeU48(buf, RH.walLsn, header.walLsn);
  buf.writeUInt32LE(crc32c(buf.subarray(RH.lsn, RECORD_HEADER_BYTES), salt), RH.headerCrc);
  buf.set(payload, RECORD_HEADER_BYTES);
  return buf;
}

/** Sets an encoded record's durableLsn (when its header is written) and re-checksums the header. */
export function stampDurableLsn(record: Buffer, durableLsn: number, salt: number): void {
  writeU48(record, RH.durableLsn, durableLsn);
  record.writeUInt32LE(crc32c(record.subarray(RH.lsn, RECORD_HEADER_BYTES), salt), RH.headerCrc);
}

/** Decodes a header; null when the bytes are not a whole, checksummed header. */
export function decodeRecordHeader(buf: Buffer, offset: number, salt: number): RecordHeader | null {
  if (buf.length - offset < RECORD_HEADER_BYTES) return null;
  if (buf.readUInt32LE(offset + RH.magic) !== RECORD_MAGIC) return null;
  const crc = crc32c(buf.subarray(offset + RH.lsn, offset + RECORD_HEADER_BYTES), salt);
  if (crc !== buf.readUInt32LE(offset + RH.headerCrc)) return null;
  return {
    lsn: readU48(buf, offset + RH.lsn),
    epoch: buf.readUInt32LE(offset + RH.epoch),
    type: buf.readUInt16LE(offset + RH.type),
    flags: buf.readUInt16LE(offset + RH.flags),
    payloadBytes: buf.readUInt32LE(offset + RH.payloadBytes),
    payloadCrc: buf.readUInt32LE(offset + RH.payloadCrc),
    timeMs: readU48(buf, offset + RH.timeMs),
    durableLsn: readU48(buf, offset + RH.durableLsn),
    walLsn: readU48(buf, offset + RH.walLsn),
  };
}

export function payloadChecksumOk(header: RecordHeader, payload: Uint8Array): boolean {
  return payload.length === header.payloadBytes && crc32c(payload) === header.payloadCrc;
}

// ---------------------------------------------------------------------------
// Data record payload: which bytes of which page.

/** Bytes before the page bytes inside a data payload. */
export const DATA_BYTES_OFFSET = 32;

export interface DataRecordHead {
  ino: number;
  pageNo: number;
  offsetInPage: number;
  length: number;
  /**
   * The LSN at which these bytes became visible. Equal to the record's own LSN
   * except for copies the cleaner made when it moved a live version forward.
   */
  versionLsn: number;
}

// Data payload field offsets; the page bytes follow at DATA_BYTES_OFFSET.
const DP = { ino: 0, versionLsn: 8, pageNo: 16, offsetInPage: 20, length: 24 } as const;

export function encodeDataPayload(head: DataRecordHead, bytes: Uint8Array): Buffer {
  assert(bytes.length === head.length, 'data payload length mismatch');
  const buf = Buffer.alloc(DATA_BYTES_OFFSET + bytes.length);
  writeU48(buf, DP.ino, head.ino);
  writeU48(buf, DP.versionLsn, head.versionLsn);
  buf.writeUInt32LE(head.pageNo, DP.pageNo);
  buf.writeUInt32LE(head.offsetInPage, DP.offsetInPage);
  buf.writeUInt32LE(head.length, DP.length);
  buf.set(bytes, DATA_BYTES_OFFSET);
  return buf;
}

export function decodeDataHead(payload: Buffer): DataRecordHead {
  return {
    ino: readU48(payload, DP.ino),
    versionLsn: readU48(payload, DP.versionLsn),
    pageNo: payload.readUInt32LE(DP.pageNo),
    offsetInPage: payload.readUInt32LE(DP.offsetInPage),
    length: payload.readUInt32LE(DP.length),
  };
}

// ---------------------------------------------------------------------------

/** The record checksum salt of a volume. */
export function volumeSalt(uuid: string): number {
  return crc32c(Buffer.from(uuid.replace(/-/g, ''), 'hex'));
}

export function alignUp(value: number, alignment: number): number {
  return Math.ceil(value / alignment) * alignment;
}

export function alignDown(value: number, alignment: number): number {
  return Math.floor(value / alignment) * alignment;
}

export function writeU48(buf: Buffer, offset: number, value: number): void {
  assert(Number.isInteger(value) && value >= 0 && value <= MAX_U48, `u48 out of range: ${value}`);
  buf.writeUIntLE(value, offset, 6);
  buf.writeUInt16LE(0, offset + 6);
}

export function readU48(buf: Buffer, offset: number): number {
  return buf.readUIntLE(offset, 6);
}
