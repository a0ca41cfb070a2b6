/**
 * The primary reads the reader slots every 100 ms, so a reader that has just
 * written its slot is not in the horizon yet. Such a reader wrote its slot
 * before it read the log, so its view is at least what the device vouched
 * for as durable when the primary's read of the slots began: the horizon
 * must stay below that, or a base written meanwhile drops the version that
 * view shows (a new standby's tree stays at that view until its L moves).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { S_IFREG } from '../../src/volume/state';
import { tempPrimary, untilHorizonAtDurable } from '../support/core';

const PAGE = 8192;
const MiB = 1024 * 1024;

test('without readers the primary keeps, until its next read of the slots, the versions a reader starting now could show', async (t) => {
  const { primary } = await tempPrimary(t, 'horizon-new-reader', 64 * MiB);
  const file = await primary.create('/rel', S_IFREG | 0o600, 0, 0);
  await primary.write(file.ino, 0, Buffer.alloc(PAGE, 1));
  await primary.sync();
  await untilHorizonAtDurable(primary);
  const [first] = file.pages!.get(0)!;

  // A reader that writes its slot now and reads the log sees the first image; a second one written
  // before the primary reads the slots again must not drop it.
  await primary.write(file.ino, 0, Buffer.alloc(PAGE, 2));
  assert.deepEqual(file.pages!.get(0)!.map((v) => v.versionLsn).slice(0, 1), [first!.versionLsn], 'the first image is still indexed');
  assert.equal(file.pages!.get(0)!.length, 2);

  // Once the second image is durable and the slots read with no reader in them, the first goes.
  await primary.sync();
  await untilHorizonAtDurable(primary);
  assert.equal(file.pages!.get(0)!.length, 1, 'only the newest image is left');
  assert.notEqual(file.pages!.get(0)![0]!.versionLsn, first!.versionLsn);
});
