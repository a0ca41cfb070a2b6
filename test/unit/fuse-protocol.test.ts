import { test } from 'node:test';
import assert from 'node:assert/strict';
import { direntsOut } from '../../src/fuse/protocol';
import { S_IFDIR, S_IFLNK, S_IFREG } from '../../src/volume/state';

/** struct fuse_dirent: u64 ino, u64 off, u32 namelen, u32 type, name, padded to 8 bytes. */
function parseDirents(buffer: Buffer): Array<{ off: number; type: number; name: string }> {
  const out: Array<{ off: number; type: number; name: string }> = [];
  for (let at = 0; at < buffer.length;) {
    const nameBytes = buffer.readUInt32LE(at + 16);
    out.push({ off: Number(buffer.readBigUInt64LE(at + 8)), type: buffer.readUInt32LE(at + 20), name: buffer.toString('utf8', at + 24, at + 24 + nameBytes) });
    at += (24 + nameBytes + 7) & ~7;
  }
  return out;
}

test('READDIR replies carry each entry\'s d_type and the offset to resume from', () => {
  const DT_DIR = 4, DT_REG = 8, DT_LNK = 10;
  const entries = [
    { name: '.', fileType: S_IFDIR }, { name: 'file', fileType: S_IFREG }, { name: 'dir', fileType: S_IFDIR },
    { name: 'link', fileType: S_IFLNK }, { name: 'ünïcode-name', fileType: S_IFREG },
  ];
  assert.deepEqual(parseDirents(direntsOut(entries, 0, 4096)), [
    { off: 1, type: DT_DIR, name: '.' }, { off: 2, type: DT_REG, name: 'file' }, { off: 3, type: DT_DIR, name: 'dir' },
    { off: 4, type: DT_LNK, name: 'link' }, { off: 5, type: DT_REG, name: 'ünïcode-name' },
  ]);
  // Two 32-byte records fit in 70 bytes; the next reply resumes at the offset the last one gave.
  const first = parseDirents(direntsOut(entries, 0, 70));
  assert.deepEqual(first.map((d) => d.name), ['.', 'file']);
  assert.deepEqual(parseDirents(direntsOut(entries, first.at(-1)!.off, 4096)).map((d) => d.name), ['dir', 'link', 'ünïcode-name']);
  assert.equal(direntsOut(entries, entries.length, 4096).length, 0, 'past the end: an empty reply');
});
