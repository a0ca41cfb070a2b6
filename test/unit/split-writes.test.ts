/**
 * A page write the kernel split reaches a primary in pieces; in a PostgreSQL
 * relation file the pieces become one image (SplitPageWrites). In process:
 * the pieces are given to Volume.write as the FUSE adapter would.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { HELD_PIECE_MAX_MS } from '../../src/volume/split-writes';
import { Inode, S_IFDIR, S_IFREG } from '../../src/volume/state';
import { Volume } from '../../src/volume/volume';
import { tempPrimary } from '../support/core';

const PAGE = 8192;
const MiB = 1024 * 1024;
const RELATION = '/pgdata/base/5/16384';

function kinds(inode: Inode, pageNo: number): Array<[string, number, number]> {
  return (inode.pages?.get(pageNo) ?? []).map((v) => [v.kind, v.offsetInPage, v.length]);
}

async function relationFile(primary: Volume, path = RELATION): Promise<Inode> {
  for (const dir of ['/pgdata', '/pgdata/base', '/pgdata/base/5']) await primary.mkdir(dir, S_IFDIR | 0o700, 0, 0).catch(() => undefined);
  return primary.create(path, S_IFREG | 0o600, 0, 0);
}

/** `bytes` written as pieces ending at `cuts` (offsets within it), each a write of its own. */
async function writeInPieces(primary: Volume, file: Inode, path: string, position: number, bytes: Buffer, cuts: number[]): Promise<void> {
  let from = 0;
  for (const cut of [...cuts, bytes.length]) {
    assert.equal(await primary.write(file.ino, position + from, bytes.subarray(from, cut), path), cut - from);
    from = cut;
  }
}

test('split writes: the pieces of a relation page become one image; elsewhere they stay deltas', async (t) => {
  const { primary } = await tempPrimary(t, 'split-writes', 64 * MiB);
  const relation = await relationFile(primary);
  const other = await primary.create('/other', S_IFREG | 0o600, 0, 0);
  const page = Buffer.alloc(PAGE, 3);
  await writeInPieces(primary, relation, RELATION, PAGE, page, [4992]);
  await writeInPieces(primary, other, '/other', PAGE, page, [4992]);
  assert.deepEqual(kinds(relation, 1), [['image', 0, PAGE]]);
  assert.deepEqual(kinds(other, 1), [['delta', 0, 4992], ['delta', 4992, PAGE - 4992]]);
  // Three pieces (the source faulted twice), and a write of two pages whose second is split.
  await writeInPieces(primary, relation, RELATION, 2 * PAGE, Buffer.alloc(PAGE, 4), [896, 4992]);
  await writeInPieces(primary, relation, RELATION, 3 * PAGE, Buffer.alloc(2 * PAGE, 5), [PAGE + 4992]);
  assert.deepEqual([2, 3, 4].map((pageNo) => kinds(relation, pageNo)), [[['image', 0, PAGE]], [['image', 0, PAGE]], [['image', 0, PAGE]]]);
  assert.equal(primary.splitWrites.joinedPages, 3);
  assert.ok((await primary.read(relation.ino, 0, 5 * PAGE)).subarray(PAGE).equals(Buffer.concat([page, Buffer.alloc(PAGE, 4), Buffer.alloc(2 * PAGE, 5)])));
});

test('split writes: a held piece is appended as it is before anything could see it missing, or after a while', async (t) => {
  const { primary } = await tempPrimary(t, 'split-writes-held', 64 * MiB);
  const relation = await relationFile(primary);
  // A read of the file first: the piece goes as a delta, and the read sees it.
  await primary.write(relation.ino, 0, Buffer.alloc(4992, 6), RELATION);
  assert.deepEqual(kinds(relation, 0), [], 'held');
  assert.ok((await primary.read(relation.ino, 0, 4992)).equals(Buffer.alloc(4992, 6)));
  assert.deepEqual(kinds(relation, 0), [['delta', 0, 4992]]);
  // A stat counts it in the size; a read of another page and an fsync of another file (a commit's, of
  // WAL) leave it held; an fsync of its file appends it.
  const wal = await primary.create('/pgdata/wal', S_IFREG | 0o600, 0, 0);
  await primary.write(relation.ino, 2 * PAGE, Buffer.alloc(100, 8), RELATION);
  assert.equal(primary.stat(relation).size, 2 * PAGE + 100);
  assert.ok((await primary.read(relation.ino, 0, PAGE)).subarray(0, 4992).equals(Buffer.alloc(4992, 6)));
  await primary.write(wal.ino, 0, Buffer.alloc(100, 1), '/pgdata/wal');
  await primary.sync(wal.ino);
  assert.deepEqual(kinds(relation, 2), [], 'held');
  await primary.sync(relation.ino);
  assert.deepEqual(kinds(relation, 2), [['delta', 0, 100]]);
  // A write elsewhere in the file, a metadata change, or the time limit.
  await primary.write(relation.ino, 3 * PAGE, Buffer.alloc(100, 9), RELATION);
  await primary.write(relation.ino, 5 * PAGE, Buffer.alloc(PAGE, 9), RELATION);
  assert.deepEqual(kinds(relation, 3), [['delta', 0, 100]]);
  await primary.write(relation.ino, 6 * PAGE, Buffer.alloc(100, 10), RELATION);
  await primary.truncate(relation.ino, 7 * PAGE);
  assert.deepEqual(kinds(relation, 6), [['delta', 0, 100]]);
  await primary.write(relation.ino, 7 * PAGE, Buffer.alloc(100, 11), RELATION);
  await new Promise((resolve) => setTimeout(resolve, HELD_PIECE_MAX_MS + 50));
  assert.deepEqual(kinds(relation, 7), [['delta', 0, 100]]);
});
