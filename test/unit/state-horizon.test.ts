import { test } from 'node:test';
import assert from 'node:assert/strict';
import { RecordHeader, RecordType, encodeDataPayload, recordBytes } from '../../src/log/format';
import { ROOT_INO, S_IFREG, VolumeState, versionLogBytes } from '../../src/volume/state';
import { deserializeState, serializeState } from '../../src/volume/checkpoint';

const PAGE = 4096;

/** Appends records with consecutive LSNs to `state`, as a primary's log would. */
class Log {
  lsn = 4096;
  constructor(readonly state: VolumeState) {}
  private header(type: RecordType, payloadBytes: number): RecordHeader {
    const header = { lsn: this.lsn, epoch: 1, type, flags: 0, payloadBytes, payloadCrc: 0, timeMs: this.lsn, durableLsn: 0, walLsn: 0 };
    this.lsn += recordBytes(payloadBytes);
    return header;
  }
  create(ino: number, name: string): void {
    this.state.applyMeta(this.header(RecordType.Meta, 64), { op: 'create', parent: ROOT_INO, name, ino, mode: S_IFREG | 0o644, uid: 0, gid: 0 });
  }
  unlink(name: string): void {
    this.state.applyMeta(this.header(RecordType.Meta, 64), { op: 'unlink', parent: ROOT_INO, name });
  }
  /** Writes page `pageNo` of `ino` whole (a base version), or `length` bytes at `offset` (a delta). Returns the record's LSN. */
  write(ino: number, pageNo: number, offset = 0, length = PAGE): number {
    const payload = encodeDataPayload({ ino, pageNo, offsetInPage: offset, length, versionLsn: 0 }, Buffer.alloc(length, 1));
    const header = this.header(RecordType.Data, payload.length);
    this.state.applyData(header, payload);
    return header.lsn;
  }
}

function indexedBytes(state: VolumeState): number {
  let bytes = 0;
  for (const inode of state.inodes.values()) for (const versions of inode.pages?.values() ?? []) for (const v of versions) bytes += versionLogBytes(v);
  return bytes;
}

test('moving the horizon drops versions a newer base at or below it hides, even on pages not written again', () => {
  const state = VolumeState.empty(PAGE, 0o755, 0);
  const log = new Log(state);
  log.create(2, 'f');
  state.setHorizon(log.lsn); // a reader holds the view here
  const reader = log.lsn;
  for (let page = 0; page < 3; page++) log.write(2, page);
  const firstRewrite = log.write(2, 0); // page 0 rewritten once
  log.write(2, 1, 100, 10); // page 1 gets a delta on top of its base
  const file = state.inode(2);
  assert.equal(file.pages!.get(0)!.length, 2, 'the reader may still read the old page 0');
  const atReader = [0, 1, 2].map((page) => state.versionsAt(file, page, reader));
  const atTail = [0, 1, 2].map((page) => state.versionsAt(file, page, Infinity));

  // The reader moves to just past the rewrite: page 0's first version is unreachable now.
  state.setHorizon(firstRewrite + 1);
  assert.equal(file.pages!.get(0)!.length, 1, 'page 0 keeps only the version visible at the horizon');
  assert.equal(file.pages!.get(1)!.length, 2, 'page 1 keeps its base and the delta on it');
  assert.deepEqual([0, 1, 2].map((page) => state.versionsAt(file, page, Infinity)), atTail, 'reads at the tail unchanged');
  assert.equal(state.liveBytes, indexedBytes(state), 'liveBytes counts exactly the versions still indexed');
  assert.notDeepEqual(atReader[0], atTail[0]);

  // A truncate while the reader still looks: the pending trims of the covered pages come up after it.
  log.write(2, 2);
  state.applyMeta({ lsn: log.lsn, epoch: 1, type: RecordType.Meta, flags: 0, payloadBytes: 64, payloadCrc: 0, timeMs: log.lsn, durableLsn: 0, walLsn: 0 },
    { op: 'truncate', ino: 2, size: 0 });
  log.lsn += recordBytes(64);
  state.setHorizon(log.lsn + 1);
  // The truncate covered the pages with zeros for older readers; past the horizon only the zeros remain.
  for (const versions of file.pages!.values()) assert.deepEqual(versions.map((v) => v.kind), ['zero']);
  assert.equal(state.liveBytes, indexedBytes(state), 'liveBytes after the truncate and the trims');
  assert.equal(state.liveBytes, 0);
});

test('a page written again while its trim waits in the queue is trimmed when the horizon passes, down to one version', () => {
  const state = VolumeState.empty(PAGE, 0o755, 0);
  const log = new Log(state);
  log.create(2, 'f');
  state.setHorizon(log.lsn); // a reader holds the view here
  log.write(2, 0);
  const second = log.write(2, 0); // queued: the horizon passing it makes the first version unreachable
  const third = log.write(2, 0); // written again while queued (the page's array is a new one each time)
  const delta = log.write(2, 0, 100, 10);
  const file = state.inode(2);
  assert.equal(file.pages!.get(0)!.length, 4);
  state.setHorizon(second + 1);
  assert.deepEqual(file.pages!.get(0)!.map((v) => v.versionLsn), [second, third, delta], 'the queued trim still found the page');
  state.setHorizon(third + 1);
  assert.deepEqual(file.pages!.get(0)!.map((v) => v.versionLsn), [third, delta], 'and it was queued again at its next base');
  assert.equal(state.liveBytes, indexedBytes(state));
});

test('versions a checkpoint kept for a reader are dropped once the horizon passes them after a reload', () => {
  const state = VolumeState.empty(PAGE, 0o755, 0);
  const log = new Log(state);
  log.create(2, 'f');
  state.setHorizon(log.lsn);
  log.write(2, 0);
  const rewrite = log.write(2, 0);
  const loaded = deserializeState(serializeState(state, [])).state;
  loaded.setHorizon(state.horizonLsn);
  assert.equal(loaded.inode(2).pages!.get(0)!.length, 2, 'the reader still holds the old version after the reload');
  loaded.setHorizon(rewrite + 1);
  assert.equal(loaded.inode(2).pages!.get(0)!.length, 1, 'dropped once the horizon passed the rewrite');
  assert.equal(loaded.liveBytes, indexedBytes(loaded));
});

test('a file deleted at or after keepDeletedFromLsn stays a tombstone after the horizon passed its deletion, until that moves on', () => {
  const state = VolumeState.empty(PAGE, 0o755, 0);
  const log = new Log(state);
  log.create(2, 'kept');
  log.write(2, 0);
  log.create(3, 'dropped');
  log.write(3, 0);
  state.setHorizon(log.lsn); // a reader holds the view here
  const deleteDropped = log.lsn;
  log.unlink('dropped');
  const deleteKept = log.lsn;
  log.unlink('kept');
  assert.deepEqual([...state.tombstones.keys()].sort(), [2, 3], 'both deleted while the reader\'s view is older');
  // The reader's view moves past both deletions, but it still shows files deleted from deleteKept on.
  state.setHorizon(log.lsn, deleteKept);
  assert.deepEqual([...state.tombstones.keys()], [2], 'the one deleted before keepDeletedFromLsn goes');
  assert.ok(deleteDropped < deleteKept);
  assert.equal(state.tombstones.get(2)!.inode.pages!.get(0)!.length, 1, 'its page is still there to read');
  // Deleted after the horizon moved on, still kept.
  log.create(4, 'later');
  log.write(4, 0);
  log.unlink('later');
  assert.equal(state.tombstones.has(4), true, 'a deletion at or after keepDeletedFromLsn makes a tombstone');
  state.setHorizon(log.lsn);
  assert.equal(state.tombstones.size, 0, 'all gone once nobody asks for them');
  assert.equal(state.liveBytes, indexedBytes(state));
});

test('a relocation applied again after a later one (a standby draining held records) leaves the version at the later copy', () => {
  const state = VolumeState.empty(PAGE, 0o755, 0);
  const log = new Log(state);
  log.create(2, 'moved');
  const original = log.write(2, 0);
  /** Applies the cleaner's copy of the version, as a record at `lsn`. */
  const applyCopyAt = (lsn: number): void => {
    const payload = encodeDataPayload({ ino: 2, pageNo: 0, offsetInPage: 0, length: PAGE, versionLsn: original }, Buffer.alloc(PAGE, 1));
    state.applyData({ lsn, epoch: 1, type: RecordType.Data, flags: 0, payloadBytes: payload.length, payloadCrc: 0, timeMs: lsn, durableLsn: 0, walLsn: 0 }, payload);
  };
  const firstCopy = log.lsn;
  const secondCopy = firstCopy + 16 * 1024;
  applyCopyAt(firstCopy);
  applyCopyAt(secondCopy);
  assert.equal(state.inode(2).pages!.get(0)![0]!.loc, secondCopy);
  applyCopyAt(firstCopy); // applied again: the cleaner has freed its place since the second copy
  assert.equal(state.inode(2).pages!.get(0)![0]!.loc, secondCopy, 'the location only moves forward');
});
