/**
 * The Linux FUSE kernel protocol (7.x, <linux/fuse.h>): the byte layout of
 * the requests lsnfs serves and of their replies. Bytes only; what a request
 * means for the filesystem is adapter.ts's business.
 */
import type { DirEntry } from '../volume/file-system';
import type { Stat, StatFs } from '../volume/volume';

export const FUSE_KERNEL_VERSION = 7;
/** The newest minor version whose structures this file knows. */
export const FUSE_KERNEL_MINOR_VERSION = 38;
export const FUSE_ROOT_ID = 1;

export enum Opcode {
  LOOKUP = 1, FORGET = 2, GETATTR = 3, SETATTR = 4, READLINK = 5, SYMLINK = 6, MKNOD = 8, MKDIR = 9,
  UNLINK = 10, RMDIR = 11, RENAME = 12, LINK = 13, OPEN = 14, READ = 15, WRITE = 16, STATFS = 17,
  RELEASE = 18, FSYNC = 20, SETXATTR = 21, GETXATTR = 22, LISTXATTR = 23, REMOVEXATTR = 24, FLUSH = 25,
  INIT = 26, OPENDIR = 27, READDIR = 28, RELEASEDIR = 29, FSYNCDIR = 30, ACCESS = 34, CREATE = 35,
  INTERRUPT = 36, DESTROY = 38, BATCH_FORGET = 42, FALLOCATE = 43, RENAME2 = 45, LSEEK = 46,
}

/** INIT flags (fuse_init_in/out.flags). */
export const InitFlag = {
  ASYNC_READ: 1 << 0,
  BIG_WRITES: 1 << 5,
  PARALLEL_DIROPS: 1 << 18,
  MAX_PAGES: 1 << 22,
} as const;

/** OPEN/CREATE reply flags (fuse_open_out.open_flags). */
export const OpenReplyFlag = { DIRECT_IO: 1 << 0, KEEP_CACHE: 1 << 1, NOFLUSH: 1 << 5 } as const;

/** SETATTR: which fields are valid (fuse_setattr_in.valid). */
export const SetattrValid = {
  MODE: 1 << 0, UID: 1 << 1, GID: 1 << 2, SIZE: 1 << 3, ATIME: 1 << 4, MTIME: 1 << 5,
  ATIME_NOW: 1 << 7, MTIME_NOW: 1 << 8,
} as const;

export const IN_HEADER_BYTES = 40;
export const OUT_HEADER_BYTES = 16;
const ATTR_BYTES = 88;
const ENTRY_OUT_BYTES = 40 + ATTR_BYTES;
const ATTR_OUT_BYTES = 16 + ATTR_BYTES;
const OPEN_OUT_BYTES = 16;
const KSTATFS_BYTES = 80;
const INIT_OUT_BYTES = 64;
const DIRENT_HEADER_BYTES = 24;
/** fuse_dirent.ino when the entry's inode number is not at hand (libfuse's FUSE_UNKNOWN_INO). */
const UNKNOWN_INO = 0xffffffff;

/** fuse_in_header plus the request's own bytes (a copy: the adapter may keep it past the read). */
export interface Request {
  opcode: number;
  unique: bigint;
  nodeid: number;
  uid: number;
  gid: number;
  pid: number;
  /** Everything after fuse_in_header. */
  body: Buffer;
  /** When the channel read it (performance.now(), ms) while it times replies; else 0. */
  receivedMs: number;
}

export function decodeRequest(bytes: Buffer): Request {
  const length = bytes.readUInt32LE(0);
  if (length !== bytes.length) throw new Error(`FUSE request of ${bytes.length} bytes says it has ${length}`);
  return {
    opcode: bytes.readUInt32LE(4),
    unique: bytes.readBigUInt64LE(8),
    nodeid: readU64(bytes, 16),
    uid: bytes.readUInt32LE(24),
    gid: bytes.readUInt32LE(28),
    pid: bytes.readUInt32LE(32),
    body: Buffer.from(bytes.subarray(IN_HEADER_BYTES)),
    receivedMs: 0,
  };
}

/** A u64 the kernel uses as a number (node ids, handles, offsets, sizes): all below 2^53 here. */
export function readU64(bytes: Buffer, offset: number): number {
  return bytes.readUInt32LE(offset + 4) * 0x1_0000_0000 + bytes.readUInt32LE(offset);
}

function writeU64(bytes: Buffer, value: number, offset: number): void {
  bytes.writeUInt32LE(value % 0x1_0000_0000, offset);
  bytes.writeUInt32LE(Math.floor(value / 0x1_0000_0000), offset + 4);
}

/** The NUL-terminated names at the start of `bytes` (LOOKUP, MKDIR, RENAME, SYMLINK, ...). */
export function names(bytes: Buffer, count: number): string[] {
  const result: string[] = [];
  let start = 0;
  for (let i = 0; i < count; i++) {
    const end = bytes.indexOf(0, start);
    if (end < 0) throw new Error('FUSE request name is not NUL-terminated');
    result.push(bytes.toString('utf8', start, end));
    start = end + 1;
  }
  return result;
}

export function outHeader(unique: bigint, error: number, bodyBytes: number): Buffer {
  const header = Buffer.allocUnsafe(OUT_HEADER_BYTES);
  header.writeUInt32LE(OUT_HEADER_BYTES + bodyBytes, 0);
  header.writeInt32LE(error, 4);
  header.writeBigUInt64LE(unique, 8);
  return header;
}

function writeTime(bytes: Buffer, ms: number, secondsOffset: number, nanosOffset: number): void {
  const seconds = Math.floor(ms / 1000);
  writeU64(bytes, Math.max(0, seconds), secondsOffset);
  bytes.writeUInt32LE(Math.min(999_999_999, Math.max(0, Math.round((ms - seconds * 1000) * 1e6))), nanosOffset);
}

function writeAttr(bytes: Buffer, offset: number, stat: Stat): void {
  writeU64(bytes, stat.ino, offset);
  writeU64(bytes, stat.size, offset + 8);
  writeU64(bytes, stat.blocks, offset + 16);
  writeTime(bytes, stat.atimeMs, offset + 24, offset + 48);
  writeTime(bytes, stat.mtimeMs, offset + 32, offset + 52);
  writeTime(bytes, stat.ctimeMs, offset + 40, offset + 56);
  bytes.writeUInt32LE(stat.mode, offset + 60);
  bytes.writeUInt32LE(stat.nlink, offset + 64);
  bytes.writeUInt32LE(stat.uid, offset + 68);
  bytes.writeUInt32LE(stat.gid, offset + 72);
  bytes.writeUInt32LE(0, offset + 76); // rdev
  bytes.writeUInt32LE(stat.blksize, offset + 80);
  bytes.writeUInt32LE(0, offset + 84); // flags
}

function writeValidity(bytes: Buffer, validMs: number, secondsOffset: number, nanosOffset: number): void {
  const seconds = Math.floor(validMs / 1000);
  writeU64(bytes, seconds, secondsOffset);
  bytes.writeUInt32LE(Math.round((validMs - seconds * 1000) * 1e6), nanosOffset);
}

/** fuse_entry_out: the node the kernel will know `stat.ino` by, and how long it may trust the name and the attributes. */
export function entryOut(stat: Stat, entryValidMs: number, attrValidMs: number): Buffer {
  const bytes = Buffer.alloc(ENTRY_OUT_BYTES);
  writeU64(bytes, stat.ino, 0);
  // generation (8) stays 0: inode numbers are never reused.
  writeValidity(bytes, entryValidMs, 16, 32);
  writeValidity(bytes, attrValidMs, 24, 36);
  writeAttr(bytes, 40, stat);
  return bytes;
}

/** fuse_entry_out for a name that leads nowhere: node 0, which the kernel caches as a negative entry for `entryValidMs`. */
export function negativeEntryOut(entryValidMs: number): Buffer {
  const bytes = Buffer.alloc(ENTRY_OUT_BYTES);
  writeValidity(bytes, entryValidMs, 16, 32);
  return bytes;
}

export function attrOut(stat: Stat, validMs: number): Buffer {
  const bytes = Buffer.alloc(ATTR_OUT_BYTES);
  writeValidity(bytes, validMs, 0, 8);
  writeAttr(bytes, 16, stat);
  return bytes;
}

export function openOut(handle: number, openFlags: number): Buffer {
  const bytes = Buffer.alloc(OPEN_OUT_BYTES);
  writeU64(bytes, handle, 0);
  bytes.writeUInt32LE(openFlags, 8);
  return bytes;
}

export function statfsOut(s: StatFs): Buffer {
  const bytes = Buffer.alloc(KSTATFS_BYTES);
  writeU64(bytes, s.totalBlocks, 0);
  writeU64(bytes, s.freeBlocks, 8);
  writeU64(bytes, s.freeBlocks, 16);
  writeU64(bytes, s.files, 24);
  writeU64(bytes, s.freeFiles, 32);
  bytes.writeUInt32LE(s.blockBytes, 40);
  bytes.writeUInt32LE(s.nameMax, 44);
  bytes.writeUInt32LE(s.blockBytes, 48);
  return bytes;
}

export function writeOut(bytesWritten: number): Buffer {
  const bytes = Buffer.alloc(8);
  bytes.writeUInt32LE(bytesWritten, 0);
  return bytes;
}

export interface InitRequest { major: number; minor: number; maxReadaheadBytes: number; flags: number }

export function decodeInit(body: Buffer): InitRequest {
  return { major: body.readUInt32LE(0), minor: body.readUInt32LE(4), maxReadaheadBytes: body.readUInt32LE(8), flags: body.readUInt32LE(12) };
}

export interface InitReply {
  minor: number; maxReadaheadBytes: number; flags: number; maxBackground: number; congestionThreshold: number;
  maxWriteBytes: number; maxPages: number;
}

export function initOut(reply: InitReply): Buffer {
  const bytes = Buffer.alloc(INIT_OUT_BYTES);
  bytes.writeUInt32LE(FUSE_KERNEL_VERSION, 0);
  bytes.writeUInt32LE(reply.minor, 4);
  bytes.writeUInt32LE(reply.maxReadaheadBytes, 8);
  bytes.writeUInt32LE(reply.flags, 12);
  bytes.writeUInt16LE(reply.maxBackground, 16);
  bytes.writeUInt16LE(reply.congestionThreshold, 18);
  bytes.writeUInt32LE(reply.maxWriteBytes, 20);
  bytes.writeUInt32LE(1, 24); // time_gran: nanoseconds
  bytes.writeUInt16LE(reply.maxPages, 28);
  return bytes;
}

/** fuse_read_in / fuse_write_in (their first fields agree), OPENDIR/READDIR included. */
export function decodeIo(body: Buffer): { handle: number; offset: number; size: number } {
  return { handle: readU64(body, 0), offset: readU64(body, 8), size: body.readUInt32LE(16) };
}

export const WRITE_IN_BYTES = 40;

export interface SetattrRequest {
  valid: number; handle: number; size: number; atimeMs: number; mtimeMs: number; mode: number; uid: number; gid: number;
}

export function decodeSetattr(body: Buffer): SetattrRequest {
  return {
    valid: body.readUInt32LE(0),
    handle: readU64(body, 8),
    size: readU64(body, 16),
    atimeMs: readU64(body, 32) * 1000 + body.readUInt32LE(56) / 1e6,
    mtimeMs: readU64(body, 40) * 1000 + body.readUInt32LE(60) / 1e6,
    mode: body.readUInt32LE(68),
    uid: body.readUInt32LE(76),
    gid: body.readUInt32LE(80),
  };
}

/**
 * Directory entries from `entries[first..]` that fit in `maxBytes`, each with
 * the offset of the next (so a later READDIR at that offset resumes there).
 */
export function direntsOut(entries: readonly DirEntry[], first: number, maxBytes: number): Buffer {
  const parts: Buffer[] = [];
  let total = 0;
  for (let i = first; i < entries.length; i++) {
    const name = Buffer.from(entries[i]!.name, 'utf8');
    const recordBytes = (DIRENT_HEADER_BYTES + name.length + 7) & ~7;
    if (total + recordBytes > maxBytes) break;
    const record = Buffer.alloc(recordBytes);
    writeU64(record, UNKNOWN_INO, 0);
    writeU64(record, i + 1, 8);
    record.writeUInt32LE(name.length, 16);
    // d_type: DT_* is the S_IFMT bits shifted down. With it a directory walk (PostgreSQL's at startup,
    // find, du) need not stat each entry to learn what it is.
    record.writeUInt32LE(entries[i]!.fileType >> 12, 20);
    name.copy(record, DIRENT_HEADER_BYTES);
    parts.push(record);
    total += recordBytes;
  }
  return Buffer.concat(parts, total);
}
