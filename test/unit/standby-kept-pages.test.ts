/**
 * A standby keeps its view's version of each page the primary writes whole
 * again or truncates away, so that its slot holds the primary's horizon at
 * the first record it cannot do without rather than at its view. In process:
 * a primary Volume and a standby on one small device file, the log wrapped
 * underneath the standby so that the versions the primary reclaimed are
 * overwritten on the device, and the standby's view L moved by writing its
 * pg_control as PostgreSQL would. At its limit of copies, the slot waits at
 * the page that has none. An image L covers within the copy delay costs no
 * copy.
 */
import { TestContext, test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { FileDevice } from '../../src/device/file-device';
import { CONTROL_FILE_SUFFIX } from '../../src/pg/control';
import { readSlots } from '../../src/replica/slots';
import { CopyDelay } from '../../src/replica/standby-gate';
import { FsError } from '../../src/util/errors';
import { StandbyVolume, openStandby } from '../../src/volume/standby';
import { Inode, S_IFDIR, S_IFREG } from '../../src/volume/state';
import { Volume } from '../../src/volume/volume';
import { controlFile, tempPrimary, untilShipped } from '../support/core';

const PAGE = 8192;
const MiB = 1024 * 1024;
const SEGMENT = 16 * MiB;
const WAL_PATH = '/pgdata/pg_wal/000000010000000000000001';
const RELATION_PATH = '/pgdata/base/5/16384';
const DROPPED_PATH = '/pgdata/base/5/16385';
const TRUNCATED_PATH = '/pgdata/base/5/16386';
const CONTROL_PATH = `/pgdata${CONTROL_FILE_SUFFIX}`;
const NEVER_MS = 3_600_000;

async function until(what: string, condition: () => boolean | Promise<boolean>, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    assert.ok(Date.now() < deadline, `timed out waiting until ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

/** The versionLsns the primary's index holds for page 0 of `inode`. */
function versionLsns(inode: Inode): number[] {
  return (inode.pages?.get(0) ?? []).map((version) => version.versionLsn);
}

/** /pgdata with pg_wal/ (one segment), global/pg_control and base/5/ on the primary. */
async function pgDataDirectory(primary: Volume): Promise<{ writeWal(walPage: number): Promise<number> }> {
  for (const dir of ['/pgdata', '/pgdata/pg_wal', '/pgdata/global', '/pgdata/base', '/pgdata/base/5']) await primary.mkdir(dir, S_IFDIR | 0o700, 0, 0);
  const wal = await primary.create(WAL_PATH, S_IFREG | 0o600, 0, 0);
  const control = await primary.create(CONTROL_PATH, S_IFREG | 0o600, 0, 0);
  await primary.write(control.ino, 0, controlFile({ redo: SEGMENT, walSegmentBytes: SEGMENT }), CONTROL_PATH);
  return {
    /** PostgreSQL writes WAL page `walPage` of segment 1: the records after it are tagged with its end. */
    writeWal: (walPage) => primary.write(wal.ino, walPage * PAGE, Buffer.alloc(PAGE, walPage & 0xff), WAL_PATH),
  };
}

interface TestStandby {
  standby: StandbyVolume;
  /** What its slot says now. */
  slot(): Promise<{ keepVersionsFromLsn: number; keepDeletedFromLsn: number; viewLsn: number }>;
  /** The standby replayed to `walLsn`: it writes its pg_control with minRecoveryPoint there, as PostgreSQL does. */
  replayedTo(walLsn: number): Promise<void>;
}

/**
 * A standby of `primary` on the device file, its tailer polling every 5 ms, its background sweep off, and
 * copies asked for as soon as an image is held unless `copyDelay` says otherwise.
 */
async function openTestStandby(
  t: TestContext, primary: Volume, devicePath: string, overlayDir: string, limits: { maxKeptPages?: number; copyDelay?: CopyDelay } = {},
): Promise<TestStandby> {
  const host = `${path.basename(overlayDir)}-standby`;
  const standby = await openStandby(await FileDevice.open(devicePath, { readOnly: false }), {
    host, overlayDir, pollIntervalMs: 5, overlaySweepIntervalMs: NEVER_MS, copyDelay: { delayMs: 0, maxImagesWaiting: 0 }, ...limits,
  });
  t.after(() => standby.close());
  await primary.updateHorizon(); // the primary knows the standby's slot (it reads the slots every 100 ms)
  return {
    standby,
    slot: async () => {
      const own = (await readSlots(primary.device)).find((s) => s.host === host)!;
      return { keepVersionsFromLsn: own.keepVersionsFromLsn ?? 0, keepDeletedFromLsn: own.keepDeletedFromLsn ?? 0, viewLsn: own.viewLsn };
    },
    replayedTo: async (walLsn) => {
      const bytes = controlFile({ redo: SEGMENT, walSegmentBytes: SEGMENT, minRecoveryPoint: walLsn });
      await standby.write(standby.lookupIno(CONTROL_PATH), 0, bytes, CONTROL_PATH);
    },
  };
}

test('standby: the view\'s version of a page the primary writes again or cuts is kept locally, the primary reclaims it on the device, and the standby still reads it', async (t) => {
  const { dir: tmpDir, devicePath, device, primary } = await tempPrimary(t, 'standby-kept', 10 * MiB);
  const { writeWal } = await pgDataDirectory(primary);
  const relation = await primary.create(RELATION_PATH, S_IFREG | 0o600, 0, 0);
  const dropped = await primary.create(DROPPED_PATH, S_IFREG | 0o600, 0, 0);
  const truncated = await primary.create(TRUNCATED_PATH, S_IFREG | 0o600, 0, 0);
  const v1 = Buffer.alloc(PAGE, 1);
  const x1 = Buffer.alloc(PAGE, 0x11);
  await primary.write(relation.ino, 0, v1, RELATION_PATH);
  await primary.write(relation.ino, 2 * PAGE, x1, RELATION_PATH);
  const droppedPage = Buffer.alloc(PAGE, 9);
  await primary.write(dropped.ino, 0, droppedPage, DROPPED_PATH);
  const cutPage = Buffer.alloc(PAGE, 0x21);
  await primary.write(truncated.ino, 0, Buffer.alloc(2 * PAGE, 0x20), TRUNCATED_PATH);
  await primary.write(truncated.ino, PAGE, cutPage, TRUNCATED_PATH);
  await untilShipped(primary, device);

  const { standby, slot, replayedTo: standbyReplayedTo } = await openTestStandby(t, primary, devicePath, path.join(tmpDir, 'kept'));
  const standbyIno = standby.lookupIno(RELATION_PATH);
  const droppedIno = standby.lookupIno(DROPPED_PATH);
  const truncatedIno = standby.lookupIno(TRUNCATED_PATH);

  // After more WAL, the primary writes page 0 whole again, page 2 as two deltas (a page write the kernel
  // split, whose first piece a read of the file sent alone), deletes one file and truncates another: the
  // standby's L (0) holds all of it back.
  const walAfterV2 = SEGMENT + 9 * PAGE;
  await writeWal(8);
  const v2 = Buffer.alloc(PAGE, 2);
  await primary.write(relation.ino, 0, v2, RELATION_PATH);
  const x2 = Buffer.alloc(PAGE, 0x12);
  await primary.write(relation.ino, 2 * PAGE, x2.subarray(0, 4992), RELATION_PATH);
  await primary.read(relation.ino, 2 * PAGE, 1);
  await primary.write(relation.ino, 2 * PAGE + 4992, x2.subarray(4992), RELATION_PATH);
  const v1Lsn = versionLsns(relation)[0]!;
  const v2Lsn = versionLsns(relation)[1]!;
  const unlinkLsn = primary.tailLsn;
  await primary.unlink(DROPPED_PATH);
  const cutPageLsn = truncated.pages!.get(1)!.at(-1)!.versionLsn;
  await primary.truncate(truncated.ino, PAGE);
  await untilShipped(primary, device);
  const afterTruncate = primary.tailLsn;
  await until('the standby\'s slot passes the image, the deltas, the deletion and the truncate', async () => (await slot()).keepVersionsFromLsn >= afterTruncate);
  const published = await slot();
  assert.ok(published.viewLsn <= v2Lsn, `the view itself stays before them (view ${published.viewLsn}, image ${v2Lsn})`);
  assert.equal(published.keepDeletedFromLsn, unlinkLsn, 'the deletion it passed is kept by keepDeletedFromLsn');
  assert.equal(standby.keptPageCount, 2, 'two copies kept: v1 (the image replaces it) and the page the truncate cuts; none for the deltas');
  await standby.overlaySettled();
  assert.ok(standby.overlayBytes > 0, 'the kept copy is in the standby\'s page store');

  // The primary reclaims v1 (its horizon passed v2) and the log wraps over it, rewriting WAL pages 0-7.
  await primary.updateHorizon();
  assert.deepEqual(versionLsns(relation), [v2Lsn], 'the primary dropped the version the standby keeps');
  assert.ok(!(truncated.pages!.get(1) ?? []).some((version) => version.versionLsn === cutPageLsn), 'and the page the truncate cut');
  const logBytes = primary.superblock.logBytes;
  for (let i = 0; primary.tailLsn <= v1Lsn + logBytes + 2 * PAGE; i++) {
    await writeWal(i % 8);
    if (i % 64 === 63) await primary.sync();
    assert.ok(i < 40 * logBytes / PAGE, 'the log wraps over the reclaimed version');
  }
  assert.ok(primary.state.tombstones.has(dropped.ino), 'the deleted file is kept for the standby');
  assert.deepEqual(await standby.read(standbyIno, 0, PAGE), v1, 'the standby reads its view\'s version, kept locally');
  assert.deepEqual(await standby.read(truncatedIno, PAGE, PAGE), cutPage, 'and the page the truncate cut');
  assert.deepEqual(await standby.read(standbyIno, 2 * PAGE, PAGE), x1, 'and the page written as deltas (the primary keeps its older version)');
  assert.deepEqual(await standby.read(droppedIno, 0, PAGE), droppedPage, 'and the file the primary deleted');

  // A second write of the page: its first (v2) must then stay on the device, so the slot stops there.
  await writeWal(16);
  const v3 = Buffer.alloc(PAGE, 3);
  await primary.write(relation.ino, 0, v3, RELATION_PATH);
  await untilShipped(primary, device);
  const v3Lsn = versionLsns(relation).at(-1)!;
  await until('the standby consumed the second rewrite', () => standby.shared.tailer!.appliedLsn > v3Lsn);
  await until('the slot shows it', async () => (await slot()).keepVersionsFromLsn === v3Lsn);
  await primary.updateHorizon();
  assert.deepEqual(versionLsns(relation), [v2Lsn, v3Lsn], 'the primary keeps v2 for the standby');

  // The standby replays past v2, the deletion and the truncate, not v3: it reads v2 from the device, keeps
  // it, and the slot moves on; the copies of v1 and of the cut page are released.
  await standbyReplayedTo(walAfterV2);
  await until('the slot passes v3', async () => (await slot()).keepVersionsFromLsn > v3Lsn);
  assert.equal(standby.keptPageCount, 1, 'one copy kept: v2, read once v1 was released');
  assert.equal((await slot()).keepDeletedFromLsn, 0, 'the deletion applied: nothing deleted is kept for the standby');
  assert.deepEqual(await standby.read(standbyIno, 0, PAGE), v2);
  assert.deepEqual(await standby.read(standbyIno, 2 * PAGE, PAGE), x2);
  assert.equal(standby.getattr(TRUNCATED_PATH).size, PAGE);
  await assert.rejects(standby.read(droppedIno, 0, PAGE), (error: FsError) => error.errno === 'ENOENT');
  await primary.updateHorizon();
  assert.deepEqual(versionLsns(relation), [v3Lsn]);

  // Past everything: no copy is kept.
  await standbyReplayedTo(SEGMENT + 32 * PAGE);
  await until('the standby applied v3', async () => (await standby.read(standbyIno, 0, PAGE)).equals(v3));
  assert.equal(standby.keptPageCount, 0, 'no copy is kept once the view has passed every rewrite');
});

test('standby: at its limit of kept copies the slot waits at the page that has none, and moves on once a copy is released', async (t) => {
  const { dir: tmpDir, devicePath, device, primary } = await tempPrimary(t, 'standby-kept-limit', 16 * MiB);
  const { writeWal } = await pgDataDirectory(primary);
  const relation = await primary.create(RELATION_PATH, S_IFREG | 0o600, 0, 0);
  const [v1, w1, v2, w2] = [1, 2, 3, 4].map((fill) => Buffer.alloc(PAGE, fill));
  await primary.write(relation.ino, 0, Buffer.concat([v1!, w1!]), RELATION_PATH);
  await untilShipped(primary, device);
  const { standby, slot, replayedTo } = await openTestStandby(t, primary, devicePath, path.join(tmpDir, 'limit'), { maxKeptPages: 1 });
  const ino = standby.lookupIno(RELATION_PATH);

  // Both pages written whole again, after different WAL: the first image takes the one copy allowed.
  await writeWal(8);
  await primary.write(relation.ino, 0, v2!, RELATION_PATH);
  await writeWal(10);
  await primary.write(relation.ino, PAGE, w2!, RELATION_PATH);
  await untilShipped(primary, device);
  const w2Lsn = relation.pages!.get(1)!.at(-1)!.versionLsn;
  await until('the standby consumed both', () => standby.shared.tailer!.appliedLsn > w2Lsn);
  await until('the slot waits at the second image', async () => (await slot()).keepVersionsFromLsn === w2Lsn);
  assert.equal(standby.keptPageCount, 1);
  await primary.updateHorizon();
  assert.equal(relation.pages!.get(1)!.length, 2, 'the primary keeps the version of the page that has no copy');

  // The standby replays the first image: its copy goes, and the second page gets the copy.
  await replayedTo(SEGMENT + 9 * PAGE);
  const tail = primary.tailLsn;
  await until('the slot passes the second image', async () => (await slot()).keepVersionsFromLsn >= tail);
  assert.equal(standby.keptPageCount, 1);
  assert.deepEqual(await standby.read(ino, 0, 2 * PAGE), Buffer.concat([v2!, w1!]), 'the view: the first image applied, the second not');
});

test('standby: an image L covers within the copy delay is applied without a copy; one held longer gets its copy then', async (t) => {
  const delayMs = 1000;
  const { dir: tmpDir, devicePath, device, primary } = await tempPrimary(t, 'standby-kept-delay', 16 * MiB);
  const { writeWal } = await pgDataDirectory(primary);
  const relation = await primary.create(RELATION_PATH, S_IFREG | 0o600, 0, 0);
  const [v1, v2, v3] = [1, 2, 3].map((fill) => Buffer.alloc(PAGE, fill));
  await primary.write(relation.ino, 0, v1!, RELATION_PATH);
  await untilShipped(primary, device);
  const { standby, slot, replayedTo } = await openTestStandby(t, primary, devicePath, path.join(tmpDir, 'delay'), { copyDelay: { delayMs, maxImagesWaiting: 16 } });
  const ino = standby.lookupIno(RELATION_PATH);

  // The page written whole again: while the image is younger than the delay, no copy, and the slot stops at it.
  await writeWal(8);
  await primary.write(relation.ino, 0, v2!, RELATION_PATH);
  await untilShipped(primary, device);
  const [v1Lsn, v2Lsn] = versionLsns(relation);
  await until('the standby consumed the image', () => standby.shared.tailer!.appliedLsn > v2Lsn!);
  await until('the slot shows it', async () => (await slot()).keepVersionsFromLsn === v2Lsn);
  assert.equal(standby.keptPageCount, 0, 'no copy while the image is young');
  await primary.updateHorizon();
  assert.deepEqual(versionLsns(relation), [v1Lsn, v2Lsn], 'the primary keeps the view\'s version meanwhile');

  // L covers it within the delay: applied, and no copy is ever made.
  await replayedTo(SEGMENT + 9 * PAGE);
  await until('the slot passes the image', async () => (await slot()).keepVersionsFromLsn > v2Lsn!);
  await new Promise((resolve) => setTimeout(resolve, delayMs + 200));
  assert.equal(standby.keptPageCount, 0, 'the image was applied without a copy');
  assert.deepEqual(await standby.read(ino, 0, PAGE), v2);

  // Another image that L does not cover: copied once it has been held for the delay, then the slot moves on.
  await writeWal(10);
  await primary.write(relation.ino, 0, v3!, RELATION_PATH);
  await untilShipped(primary, device);
  const v3Lsn = versionLsns(relation).at(-1)!;
  await until('the standby consumed the second image', () => standby.shared.tailer!.appliedLsn > v3Lsn);
  assert.equal(standby.keptPageCount, 0, 'no copy yet');
  const tail = primary.tailLsn;
  await until('the slot passes the second image', async () => (await slot()).keepVersionsFromLsn >= tail);
  assert.equal(standby.keptPageCount, 1, 'the view\'s version (v2) is kept');
  await primary.updateHorizon();
  assert.deepEqual(versionLsns(relation), [v3Lsn], 'and the primary dropped it on the device');
  assert.deepEqual(await standby.read(ino, 0, PAGE), v2, 'the standby reads its view\'s version from its copy');
});

test('standby: past the most images that may wait for their copy, the oldest are copied at once', async (t) => {
  const { dir: tmpDir, devicePath, device, primary } = await tempPrimary(t, 'standby-kept-waiting', 16 * MiB);
  const { writeWal } = await pgDataDirectory(primary);
  const relation = await primary.create(RELATION_PATH, S_IFREG | 0o600, 0, 0);
  const pages = 5;
  await primary.write(relation.ino, 0, Buffer.alloc(pages * PAGE, 1), RELATION_PATH);
  await untilShipped(primary, device);
  const { standby, slot } = await openTestStandby(t, primary, devicePath, path.join(tmpDir, 'waiting'), { copyDelay: { delayMs: NEVER_MS, maxImagesWaiting: 2 } });

  // Five pages written whole again, L before all of them, the delay never over: all but the two newest are copied.
  await writeWal(8);
  for (let pageNo = 0; pageNo < pages; pageNo++) await primary.write(relation.ino, pageNo * PAGE, Buffer.alloc(PAGE, 2), RELATION_PATH);
  const imageLsns = [...Array(pages).keys()].map((pageNo) => relation.pages!.get(pageNo)!.at(-1)!.versionLsn);
  await untilShipped(primary, device);
  await until('the standby consumed the images', () => standby.shared.tailer!.appliedLsn > imageLsns.at(-1)!);
  await until('the slot waits at the first image still waiting out the delay', async () => (await slot()).keepVersionsFromLsn === imageLsns[3]);
  assert.equal(standby.keptPageCount, 3);
});
