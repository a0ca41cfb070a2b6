/**
 * Checkpoint = the whole VolumeState serialized at one LSN, stored in the log
 * as consecutive Checkpoint records. Layout of the serialized bytes:
 *
 *   u32 jsonBytes | JSON {pageBytes, nextIno, inodes, tombstones, history} | version table
 *
 * The version table is binary because it is by far the largest part:
 *   per file with pages (live or tombstoned): u48 ino, u32 versionCount, then per version
 *   u32 pageNo, u8 kind, u8 0, u16 0, u32 offsetInPage, u32 length, u48 versionLsn, u16 0, u48 loc, u16 0
 */
import { assert } from '../util/errors';
import { readU48, writeU48 } from '../log/format';
import { Inode, PageVersion, VersionKind, VolumeState, versionLogBytes } from './state';

const VERSION_ENTRY_BYTES = 32;
const FILE_ENTRY_BYTES = 12;
const KIND_CODES: VersionKind[] = ['image', 'delta', 'zero'];

interface InodeJson extends Omit<Inode, 'entries' | 'pages'> { entries?: Array<[string, number]>; file?: true }

/** One earlier checkpoint: where it is and when it was taken (retention and --at-time use these). */
export interface CheckpointMark { lsn: number; timeMs: number }

export function serializeState(state: VolumeState, history: CheckpointMark[]): Buffer {
  let versionCount = 0;
  let fileCount = 0;
  const toJson = (inode: Inode): InodeJson => {
    const { entries, pages, ...rest } = inode;
    const json: InodeJson = { ...rest };
    if (entries) json.entries = [...entries];
    if (pages) {
      json.file = true;
      if (pages.size > 0) fileCount++;
      for (const versions of pages.values()) versionCount += versions.length;
    }
    return json;
  };
  const inodes = [...state.inodes.values()].map(toJson);
  const tombstones = [...state.tombstones.values()].map((t) => ({ deletedAtLsn: t.deletedAtLsn, name: t.name, inode: toJson(t.inode) }));
  const json = Buffer.from(JSON.stringify({ pageBytes: state.pageBytes, nextIno: state.nextIno, inodes, tombstones, history }), 'utf8');
  const out = Buffer.alloc(4 + json.length + fileCount * FILE_ENTRY_BYTES + versionCount * VERSION_ENTRY_BYTES);
  out.writeUInt32LE(json.length, 0);
  json.copy(out, 4);
  let at = 4 + json.length;
  for (const inode of [...state.inodes.values(), ...[...state.tombstones.values()].map((t) => t.inode)]) {
    if (!inode.pages || inode.pages.size === 0) continue;
    let count = 0;
    for (const versions of inode.pages.values()) count += versions.length;
    writeU48(out, at, inode.ino);
    out.writeUInt32LE(count, at + 8);
    at += FILE_ENTRY_BYTES;
    for (const [pageNo, versions] of inode.pages) {
      for (const v of versions) {
        out.writeUInt32LE(pageNo, at);
        out.writeUInt8(KIND_CODES.indexOf(v.kind), at + 4);
        out.writeUInt32LE(v.offsetInPage, at + 8);
        out.writeUInt32LE(v.length, at + 12);
        writeU48(out, at + 16, v.versionLsn);
        writeU48(out, at + 24, v.loc);
        at += VERSION_ENTRY_BYTES;
      }
    }
  }
  assert(at === out.length, 'checkpoint size accounting');
  return out;
}

export function deserializeState(bytes: Buffer): { state: VolumeState; history: CheckpointMark[] } {
  const jsonBytes = bytes.readUInt32LE(0);
  const parsed = JSON.parse(bytes.subarray(4, 4 + jsonBytes).toString('utf8')) as {
    pageBytes: number; nextIno: number; inodes: InodeJson[];
    tombstones?: Array<{ deletedAtLsn: number; name: string; inode: InodeJson }>; history?: CheckpointMark[];
  };
  const state = new VolumeState(parsed.pageBytes);
  state.nextIno = parsed.nextIno;
  const fromJson = ({ entries, file, ...rest }: InodeJson): Inode => {
    const inode: Inode = { ...rest };
    if (entries) inode.entries = new Map(entries);
    if (file) inode.pages = new Map();
    return inode;
  };
  for (const json of parsed.inodes) state.inodes.set(json.ino, fromJson(json));
  for (const t of parsed.tombstones ?? []) {
    state.tombstones.set(t.inode.ino, { deletedAtLsn: t.deletedAtLsn, name: t.name, inode: fromJson(t.inode) });
  }
  let at = 4 + jsonBytes;
  while (at < bytes.length) {
    const inode = state.fileInode(readU48(bytes, at));
    const count = bytes.readUInt32LE(at + 8);
    at += FILE_ENTRY_BYTES;
    assert(inode?.pages, 'checkpoint version table names a missing file');
    for (let i = 0; i < count; i++, at += VERSION_ENTRY_BYTES) {
      const pageNo = bytes.readUInt32LE(at);
      const version: PageVersion = {
        kind: KIND_CODES[bytes.readUInt8(at + 4)]!,
        offsetInPage: bytes.readUInt32LE(at + 8),
        length: bytes.readUInt32LE(at + 12),
        versionLsn: readU48(bytes, at + 16),
        loc: readU48(bytes, at + 24),
      };
      const versions = inode.pages.get(pageNo);
      inode.pages.set(pageNo, versions ? versions.concat(version) : [version]); // at its length: see VolumeState.addVersion
      state.liveBytes += versionLogBytes(version);
    }
  }
  state.queueLoadedTrims();
  return { state, history: parsed.history ?? [] };
}
