/**
 * A standby's overlay copy of a relation page leaves the overlay as soon as
 * the shared tree (at L) takes a version of that page whose page LSN is at
 * least the copy's, and is not stored at all when the shared tree already has
 * one: in process, a primary Volume and a standby on the same
 * device file, the standby's tailer polled by hand and its background sweep
 * off, so only the applied record can drop the copy.
 */
import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { FileDevice } from '../../src/device/file-device';
import { execOk } from '../../src/pg/exec';
import { FsError } from '../../src/util/errors';
import { mkfs } from '../../src/volume/mkfs';
import { StandbyVolume, openStandby } from '../../src/volume/standby';
import { S_IFDIR, S_IFREG } from '../../src/volume/state';
import { Volume } from '../../src/volume/volume';
import { tempDevice, tempDir, tempPrimary, untilShipped } from '../support/core';

const PAGE = 8192;
const MiB = 1024 * 1024;
const RELATION_PATH = '/pgdata/base/5/16384';
const NEVER_MS = 3_600_000;

/** A relation page whose pd_lsn (xlogid u32, xrecoff u32 at its start) is `lsn`, the rest filled with `fill`. */
function relationPage(lsn: number, fill: number): Buffer {
  const page = Buffer.alloc(PAGE, fill);
  page.writeUInt32LE(Math.floor(lsn / 0x1_0000_0000), 0);
  page.writeUInt32LE(lsn % 0x1_0000_0000, 4);
  return page;
}

test('standby: an overlay page leaves the overlay when the shared page it gets at L is as new (page LSN), and only then; one written over such a page is not stored', async (t) => {
  const { dir: tmpDir, devicePath, device, primary } = await tempPrimary(t, 'standby-overlay', 64 * MiB);
  for (const dir of ['/pgdata', '/pgdata/pg_wal', '/pgdata/base', '/pgdata/base/5']) await primary.mkdir(dir, S_IFDIR | 0o700, 0, 0);
  const relation = await primary.create(RELATION_PATH, S_IFREG | 0o600, 0, 0);
  const primaryWrites = async (page: Buffer, ino = relation.ino, path = RELATION_PATH): Promise<void> => {
    await primary.write(ino, 0, page, path);
    await untilShipped(primary, device);
  };
  await primaryWrites(relationPage(0x1000, 1));

  const standby = await openStandby(await FileDevice.open(devicePath, { readOnly: false }), {
    host: 'overlay-standby', overlayDir: path.join(tmpDir, 'overlay'), pollIntervalMs: NEVER_MS, overlaySweepIntervalMs: NEVER_MS,
  });
  t.after(() => standby.close());
  const ino = standby.lookupIno(RELATION_PATH);
  const applyNewRecords = async (): Promise<void> => {
    assert.ok((await standby.shared.tailer!.poll()) > 0, 'the standby applies the primary\'s write');
    await nextTurn(); // the drop runs in the file's chain
  };

  // The standby's replay wrote the page further (LSN 0x3000) and evicted it: its copy is in the overlay.
  const own = relationPage(0x3000, 3);
  await standby.write(ino, 0, own, RELATION_PATH);
  assert.deepEqual(await standby.read(ino, 0, PAGE), own, 'read back before it is stored');
  await standby.overlaySettled();
  const overlayWithPage = standby.overlayBytes;
  assert.ok(overlayWithPage > 0);

  // The primary writes an older state of the page (LSN 0x2000): the standby keeps its own copy.
  await primaryWrites(relationPage(0x2000, 2));
  await applyNewRecords();
  assert.equal(standby.overlayBytes, overlayWithPage, 'a shared page older than the copy leaves it in the overlay');
  assert.deepEqual(await standby.read(ino, 0, PAGE), own);

  // The primary writes the page at the copy's LSN: the copy goes, and the shared page is read.
  const caughtUp = relationPage(0x3000, 4);
  await primaryWrites(caughtUp);
  await applyNewRecords();
  assert.equal(standby.overlayBytes, 0, 'the copy left the overlay without a sweep');
  assert.deepEqual(await standby.read(ino, 0, PAGE), caughtUp);

  // The standby evicts the page at that same LSN (hint bits aside, the state the primary wrote): not stored.
  await standby.write(ino, 0, relationPage(0x3000, 5), RELATION_PATH);
  await standby.overlaySettled();
  assert.equal(standby.overlayBytes, 0, 'a page the shared store already holds as new is not stored');
  assert.deepEqual(await standby.read(ino, 0, PAGE), caughtUp);
  // Replayed further: stored.
  const further = relationPage(0x4000, 6);
  await standby.write(ino, 0, further, RELATION_PATH);
  await standby.overlaySettled();
  assert.ok(standby.overlayBytes > 0);
  assert.deepEqual(await standby.read(ino, 0, PAGE), further);
  const withRelationPage = standby.overlayBytes;

  // The visibility map is exempt: PostgreSQL clears its bits without a new page LSN, so a standby's copy
  // at the shared page's LSN may differ from it in bits that matter. It is stored, and read back as written.
  const vm = await primary.create(`${RELATION_PATH}_vm`, S_IFREG | 0o600, 0, 0);
  await primaryWrites(relationPage(0x5000, 7), vm.ino, `${RELATION_PATH}_vm`);
  await applyNewRecords();
  const vmIno = standby.lookupIno(`${RELATION_PATH}_vm`);
  const cleared = relationPage(0x5000, 8);
  await standby.write(vmIno, 0, cleared, `${RELATION_PATH}_vm`);
  await standby.overlaySettled();
  assert.ok(standby.overlayBytes > withRelationPage, 'a visibility map page at the shared page\'s LSN is stored');
  assert.deepEqual(await standby.read(vmIno, 0, PAGE), cleared);
});

test('standby: when the overlay\'s local disk is full, pages not stored stay readable and later writes fail with ENOSPC', async (t) => {
  const tmp = tempDir('standby-overlay-full');
  const overlayDir = path.join(tmp.dir, 'overlay');
  let primary: Volume | null = null;
  let standby: StandbyVolume | null = null;
  let overlayMounted = false;
  // One cleanup, in order: the overlay's files are closed before its tmpfs goes, and that before the directory.
  t.after(async () => {
    await standby?.close();
    if (overlayMounted) await execOk('umount', [overlayDir]);
    await primary?.close();
    tmp.remove();
  });
  const { path: devicePath, device } = await tempDevice(tmp.dir, 64 * MiB);
  await mkfs(device);
  primary = await Volume.openPrimary(device, { host: 'full-primary' });
  for (const dir of ['/pgdata', '/pgdata/pg_wal', '/pgdata/base', '/pgdata/base/5']) await primary.mkdir(dir, S_IFDIR | 0o700, 0, 0);
  await primary.create(RELATION_PATH, S_IFREG | 0o600, 0, 0);
  await primary.sync();
  // A real full disk: the overlay on a 64 KiB tmpfs (the tests run as root, for FUSE).
  await fsp.mkdir(overlayDir);
  await execOk('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', overlayDir]);
  overlayMounted = true;
  const mounted = await openStandby(await FileDevice.open(devicePath, { readOnly: false }), {
    host: 'full-standby', overlayDir, pollIntervalMs: NEVER_MS, overlaySweepIntervalMs: NEVER_MS,
  });
  standby = mounted;
  const ino = mounted.lookupIno(RELATION_PATH);
  // Pages that do not deflate (random bytes), stored raw: 64 KiB holds at most 8 of them.
  const pages = Array.from({ length: 12 }, (_, i) => Buffer.concat([relationPage(0x1000 + i, 0).subarray(0, 8), randomBytes(PAGE - 8)]));
  let refused: FsError | null = null;
  for (let i = 0; i < pages.length && !refused; i++) {
    await mounted.write(ino, i * PAGE, pages[i]!, RELATION_PATH).catch((error: FsError) => { refused = error; });
    await mounted.overlaySettled();
  }
  assert.ok(refused, 'a write after the store failed is refused');
  assert.equal((refused as FsError).errno, 'ENOSPC', `refused with ${String(refused)}`);
  assert.match((refused as FsError).message, /overlay/, 'the error names the overlay');
  for (let i = 0; i < pages.length; i++) {
    const read = await mounted.read(ino, i * PAGE, PAGE);
    if (read.length === 0) break; // not written: the writes stopped at the refusal
    assert.deepEqual(read, pages[i], `page ${i} reads back as written`);
  }
});
