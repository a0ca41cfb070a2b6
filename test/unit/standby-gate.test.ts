import { test } from 'node:test';
import assert from 'node:assert/strict';
import { RecordHeader, RecordType, encodeDataPayload } from '../../src/log/format';
import { StandbyGate } from '../../src/replica/standby-gate';
import { MetaOp, encodeMetaOp } from '../../src/volume/meta-ops';
import { ROOT_INO, S_IFDIR, S_IFREG, VolumeState } from '../../src/volume/state';

const PAGE = 8192;
const SEGMENT = 16 * 1024 * 1024;
const SEG_5 = '000000010000000000000005';

/** Feeds records to a state (and optionally a gate) with consecutive LSNs and the given walLsn tags. */
class Feed {
  lsn = 4096;
  constructor(readonly state: VolumeState, readonly gate: StandbyGate | null) {}
  private header(type: RecordType, payloadBytes: number, walLsn: number): RecordHeader {
    const header = { lsn: this.lsn, epoch: 1, type, flags: 0, payloadBytes, payloadCrc: 0, timeMs: 1000 + this.lsn, durableLsn: 0, walLsn };
    this.lsn += 512;
    return header;
  }
  meta(op: MetaOp, walLsn: number): void {
    const payload = encodeMetaOp(op);
    const header = this.header(RecordType.Meta, payload.length, walLsn);
    if (this.gate) this.gate.offer(header, payload);
    else this.state.applyMeta(header, op);
  }
  /** `versionLsn` 0: new bytes; else the cleaner's copy of that version. */
  data(ino: number, pageNo: number, walLsn: number, page: Buffer = Buffer.alloc(PAGE, 7), versionLsn = 0): void {
    const payload = encodeDataPayload({ ino, pageNo, offsetInPage: 0, length: PAGE, versionLsn }, page);
    const header = this.header(RecordType.Data, payload.length, walLsn);
    if (this.gate) this.gate.offer(header, payload);
    else this.state.applyData(header, payload);
  }
}

/** A state holding /pgdata (ino 2) with pg_wal/ (3), base/ (4) and WAL segment 5 (5), and the feed that made it. */
function dataDirectory(): { state: VolumeState; setup: Feed } {
  const state = VolumeState.empty(PAGE, 0o755, 0);
  const setup = new Feed(state, null);
  setup.meta({ op: 'create', parent: ROOT_INO, name: 'pgdata', ino: 2, mode: S_IFDIR | 0o700, uid: 0, gid: 0 }, 0);
  setup.meta({ op: 'create', parent: 2, name: 'pg_wal', ino: 3, mode: S_IFDIR | 0o700, uid: 0, gid: 0 }, 0);
  setup.meta({ op: 'create', parent: 2, name: 'base', ino: 4, mode: S_IFDIR | 0o700, uid: 0, gid: 0 }, 0);
  setup.meta({ op: 'create', parent: 3, name: SEG_5, ino: 5, mode: S_IFREG | 0o600, uid: 0, gid: 0 }, 0);
  return { state, setup };
}

test('standby gate: pg_wal/ follows the tail, the rest waits for L, removed segments stay until the standby passed them', () => {
  const { state, setup } = dataDirectory();

  const gate = new StandbyGate(state, 5 * SEGMENT);
  const feed = new Feed(state, gate);
  feed.lsn = setup.lsn;
  // WAL is written at the tail; a relation file created and written after it waits for L.
  feed.data(5, 0, 5 * SEGMENT + PAGE);
  feed.meta({ op: 'create', parent: 4, name: '16384', ino: 6, mode: S_IFREG | 0o600, uid: 0, gid: 0 }, 5 * SEGMENT + PAGE);
  const heldFrom = feed.lsn - 512;
  feed.data(6, 0, 5 * SEGMENT + 2 * PAGE);
  feed.meta({ op: 'create', parent: 3, name: 'xlogtemp.7', ino: 7, mode: S_IFREG | 0o600, uid: 0, gid: 0 }, 6 * SEGMENT);
  feed.meta({ op: 'rename', parent: 3, name: 'xlogtemp.7', newParent: 3, newName: '000000010000000000000006' }, 6 * SEGMENT);
  // The primary removes segment 5 while it is open: libfuse renames it away, then unlinks the hidden name.
  feed.meta({ op: 'rename', parent: 3, name: SEG_5, newParent: 3, newName: '.fuse_hidden0001' }, 6 * SEGMENT + PAGE);
  feed.meta({ op: 'unlink', parent: 3, name: '.fuse_hidden0001' }, 6 * SEGMENT + PAGE);

  assert.equal(state.inode(5).pages!.get(0)!.length, 1, 'the WAL page is applied at once');
  assert.deepEqual([...state.inode(3).entries!.keys()].sort(), [SEG_5, '000000010000000000000006'].sort(), 'segment 5 still visible');
  assert.equal(state.inode(4).entries!.has('16384'), false, 'the relation file waits for L');
  assert.equal(gate.viewLsn(feed.lsn), heldFrom, 'the view is the first held record');
  assert.equal(gate.keepDeletedFromLsn(), feed.lsn - 1024, 'files deleted from the deferred rename on are kept for it');

  // The standby replayed past the relation file's tags, but its restart point is still in segment 5.
  gate.advance(5 * SEGMENT + 2 * PAGE, 5 * SEGMENT + 3 * PAGE);
  assert.equal(state.inode(4).entries!.has('16384'), true);
  assert.equal(state.inode(6).pages!.size, 1);
  assert.equal(state.inode(3).entries!.has(SEG_5), true, 'segment 5 kept: the standby may read it again');
  // Past segment 5: the rename and the unlink behind it apply, in order.
  gate.advance(6 * SEGMENT + PAGE, 6 * SEGMENT);
  assert.deepEqual([...state.inode(3).entries!.keys()], ['000000010000000000000006']);
  assert.equal(state.inodes.has(5), false);
  assert.equal(gate.viewLsn(feed.lsn), feed.lsn, 'nothing held any more');
  assert.equal(gate.keepDeletedFromLsn(), 0, 'nothing deferred any more');
});

test('standby gate: a removed segment the standby still shows does not hold its view; the pages L brings in are reported with their page LSN', () => {
  const { state, setup } = dataDirectory();
  setup.meta({ op: 'create', parent: 4, name: '16384', ino: 6, mode: S_IFREG | 0o600, uid: 0, gid: 0 }, 0);

  const gate = new StandbyGate(state, 6 * SEGMENT);
  const reported: Array<[number, number, number, number]> = [];
  gate.onSharedPage = (ino, pageNo, versionLsn, pageLsn) => reported.push([ino, pageNo, versionLsn, pageLsn]);
  const feed = new Feed(state, gate);
  feed.lsn = setup.lsn;
  feed.meta({ op: 'unlink', parent: 3, name: SEG_5 }, 6 * SEGMENT);
  const unlinkLsn = feed.lsn - 512;
  // Page 0 of the relation file, pd_lsn 6/0x2000 + 0x10, written while L covers it; page 1 after L.
  feed.data(6, 0, 6 * SEGMENT, pageWithLsn(6 * SEGMENT + 0x10));
  const secondLsn = feed.lsn;
  feed.data(6, 1, 6 * SEGMENT + PAGE, pageWithLsn(6 * SEGMENT + PAGE));
  assert.equal(state.inode(3).entries!.has(SEG_5), true, 'segment 5 still shown: the restart point is before it');
  assert.equal(gate.keepDeletedFromLsn(), unlinkLsn);
  assert.equal(gate.viewLsn(feed.lsn), secondLsn, 'the view is the first held record, past the deferred unlink');
  assert.deepEqual(reported, [[6, 0, secondLsn - 512, 6 * SEGMENT + 0x10]], 'page 0 reported when applied');
  gate.advance(6 * SEGMENT + PAGE, 0);
  assert.deepEqual(reported[1], [6, 1, secondLsn, 6 * SEGMENT + PAGE], 'page 1 reported once L covers it');
  assert.equal(gate.viewLsn(feed.lsn), feed.lsn);
  assert.equal(gate.keepDeletedFromLsn(), unlinkLsn, 'the unlink still waits for the restart point');
});

/** A page whose pd_lsn (first 8 bytes: xlogid, xrecoff) is `lsn`. */
function pageWithLsn(lsn: number): Buffer {
  const page = Buffer.alloc(PAGE, 7);
  page.writeUInt32LE(Math.floor(lsn / 0x1_0000_0000), 0);
  page.writeUInt32LE(lsn % 0x1_0000_0000, 4);
  return page;
}

test('standby gate: a big move of L is applied in slices across turns of the event loop, in log order, the view a log prefix throughout', async () => {
  const state = VolumeState.empty(PAGE, 0o755, 0);
  const setup = new Feed(state, null);
  setup.meta({ op: 'create', parent: ROOT_INO, name: 'pgdata', ino: 2, mode: S_IFDIR | 0o700, uid: 0, gid: 0 }, 0);
  setup.meta({ op: 'create', parent: 2, name: 'pg_wal', ino: 3, mode: S_IFDIR | 0o700, uid: 0, gid: 0 }, 0);
  setup.meta({ op: 'create', parent: 2, name: 'rel', ino: 4, mode: S_IFREG | 0o600, uid: 0, gid: 0 }, 0);
  const gate = new StandbyGate(state, PAGE);
  const feed = new Feed(state, gate);
  feed.lsn = setup.lsn;
  const firstLsn = feed.lsn;
  const pages = 2000;
  for (let pageNo = 0; pageNo < pages; pageNo++) feed.data(4, pageNo, 2 * PAGE + pageNo);
  assert.equal(state.inode(4).pages!.size, 0, 'everything waits for L');

  gate.advance(2 * PAGE + pages, 0);
  const firstSlice = state.inode(4).pages!.size;
  assert.ok(firstSlice > 0 && firstSlice < pages, `the first slice applied ${firstSlice} of ${pages} records, not all in the write that moved L`);
  assert.deepEqual([...state.inode(4).pages!.keys()], Array.from({ length: firstSlice }, (_, i) => i), 'a log prefix');
  assert.equal(gate.viewLsn(feed.lsn), firstLsn + firstSlice * 512, 'the view is the first record still held');
  // A record arriving meanwhile (covered by L too) waits behind the ones still held.
  feed.data(4, pages, 2 * PAGE + pages);
  assert.equal(state.inode(4).pages!.has(pages), false);

  while (gate.viewLsn(feed.lsn) < feed.lsn) {
    const before = state.inode(4).pages!.size;
    await new Promise((resolve) => setImmediate(resolve));
    assert.ok(state.inode(4).pages!.size > before, 'each turn applies a slice');
    assert.deepEqual([...state.inode(4).pages!.keys()].length, Math.max(...state.inode(4).pages!.keys()) + 1, 'still a log prefix');
  }
  assert.equal(state.inode(4).pages!.size, pages + 1);
});

test('standby gate: a held version the cleaner moves is applied at its new place, not at the place the cleaner freed', () => {
  const { state, setup } = dataDirectory();
  setup.meta({ op: 'create', parent: 4, name: '16384', ino: 6, mode: S_IFREG | 0o600, uid: 0, gid: 0 }, 0);
  const gate = new StandbyGate(state, 6 * SEGMENT);
  const feed = new Feed(state, gate);
  feed.lsn = setup.lsn;
  const imageLsn = feed.lsn;
  feed.data(6, 0, 6 * SEGMENT + PAGE);
  feed.data(6, 1, 6 * SEGMENT + 3 * PAGE);
  // The cleaner copies the held image forward; once this standby has read the copy, the primary may
  // reuse the image's first place. The copy is tagged with the WAL position of its own time.
  const copyLsn = feed.lsn;
  feed.data(6, 0, 6 * SEGMENT + 4 * PAGE, undefined, imageLsn);
  assert.equal(state.inode(6).pages!.size, 0, 'both images wait for L');

  gate.advance(6 * SEGMENT + 2 * PAGE, 0);
  const versions = state.inode(6).pages!.get(0)!;
  assert.deepEqual(versions.map((v) => [v.versionLsn, v.loc]), [[imageLsn, copyLsn]], 'the image is read where the cleaner copied it');
  assert.equal(state.inode(6).pages!.has(1), false, 'page 1 still waits for L');
});
