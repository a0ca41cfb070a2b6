import { test } from 'node:test';
import assert from 'node:assert/strict';
import { formatPgLsn, parseControlFile, parsePgLsn, walSegmentStartLsn, withMinRecoveryPoint } from '../../src/pg/control';
import { WalPositionTracker, walSegmentPath } from '../../src/volume/wal-position';
import { controlFile } from '../support/core';

test('pg_control: fields parse, a bad CRC or another version is refused, minRecoveryPoint is raised with a valid CRC', () => {
  const bytes = controlFile({ redo: 0x1500718, walSegmentBytes: 64 * 1024 * 1024 });
  const control = parseControlFile(bytes)!;
  assert.equal(control.redoLsn, 0x1500718);
  assert.equal(control.walSegmentBytes, 64 * 1024 * 1024);
  assert.equal(control.minRecoveryPoint, 0);
  const raised = parseControlFile(withMinRecoveryPoint(bytes, 0x2000000, 3))!;
  assert.equal(raised.minRecoveryPoint, 0x2000000);
  assert.equal(raised.minRecoveryPointTimeline, 3, 'the timeline of the end of WAL, not of the checkpoint');
  assert.equal(parseControlFile(withMinRecoveryPoint(withMinRecoveryPoint(bytes, 0x3000000, 1), 0x2000000, 1))!.minRecoveryPoint, 0x3000000, 'never lowered');
  const damaged = Buffer.from(bytes);
  damaged[100] ^= 1;
  assert.equal(parseControlFile(damaged), null);
  const other = Buffer.from(bytes);
  other.writeUInt32LE(1700, 8);
  assert.equal(parseControlFile(other), null);
});

test('WAL positions: segment names, PostgreSQL LSN text, and the tracker follows writes to pg_wal only', () => {
  assert.equal(walSegmentStartLsn('000000010000000000000003', 16 * 1024 * 1024), 3 * 16 * 1024 * 1024);
  assert.equal(walSegmentStartLsn('000000010000000100000002', 16 * 1024 * 1024), 0x1_0000_0000 + 2 * 16 * 1024 * 1024);
  assert.equal(walSegmentStartLsn('000000010000000100000002', 64 * 1024 * 1024), 0x1_0000_0000 + 2 * 64 * 1024 * 1024);
  assert.equal(formatPgLsn(0x1_0150_0718), '1/1500718');
  assert.equal(parsePgLsn('1/1500718'), 0x1_0150_0718);
  assert.deepEqual(walSegmentPath('/pgdata/pg_wal/000000010000000000000003'), { dataDir: '/pgdata', segment: '000000010000000000000003' });
  assert.equal(walSegmentPath('/pgdata/pg_wal/xlogtemp.123'), null);
  assert.equal(walSegmentPath('/pgdata/base/000000010000000000000003'), null);

  const tracker = new WalPositionTracker();
  const page = Buffer.alloc(8192);
  assert.equal(tracker.observeWrite('/d/pg_wal/000000010000000000000002', 8192, page), 2 * 16 * 1024 * 1024 + 16384, 'default 16 MiB segments');
  assert.equal(tracker.observeWrite('/d/base/1/1259', 0, page), null);
  // pg_control written by PostgreSQL teaches the segment size of its data directory only.
  assert.equal(tracker.observeWrite('/d/global/pg_control', 0, controlFile({ redo: 0, walSegmentBytes: 1024 * 1024 })), null);
  assert.equal(tracker.observeWrite('/d/pg_wal/000000010000000000000002', 0, page), 2 * 1024 * 1024 + 8192);
  assert.equal(tracker.observeWrite('/e/pg_wal/000000010000000000000002', 0, page), 2 * 16 * 1024 * 1024 + 8192);
});
