/**
 * A standby's WAL poll waits for WAL (StandbyVolume.read): in process, a
 * primary Volume and a standby on the same device file, the standby's tailer
 * polled by hand.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { FileDevice } from '../../src/device/file-device';
import type { ReadOrigin } from '../../src/volume/file-system';
import { WAL_POLLS_SERVED, WAL_TAIL_WAIT_MS, openStandby } from '../../src/volume/standby';
import { S_IFDIR, S_IFREG } from '../../src/volume/state';
import { makeRng, tempPrimary, untilShipped } from '../support/core';

const PAGE = 8192;
const MiB = 1024 * 1024;
const SEGMENT_PATH = '/pgdata/pg_wal/000000010000000000000001';

/** A promise's state after the event loop has turned once (timers of 100 ms cannot have fired). */
async function settledYet(promise: Promise<unknown>): Promise<boolean> {
  let settled = false;
  void promise.then(() => { settled = true; }, () => { settled = true; });
  await nextTurn();
  return settled;
}

/** A read through open file `handle` (PostgreSQL's poll reopens the segment each time). */
function through(handle: number, onInterrupt: (callback: () => void) => void = () => undefined): ReadOrigin {
  return { handle, onInterrupt };
}

test('standby: a WAL poll (the segment reopened and reread, nothing new) waits until WAL arrives, an interrupt or the time limit; other reads never wait', async (t) => {
  const { dir: tmpDir, devicePath, device, primary } = await tempPrimary(t, 'standby-wal-wait', 64 * MiB);
  const rng = makeRng(20261122);
  await primary.mkdir('/pgdata', S_IFDIR | 0o700, 0, 0);
  await primary.mkdir('/pgdata/pg_wal', S_IFDIR | 0o700, 0, 0);
  const segment = await primary.create(SEGMENT_PATH, S_IFREG | 0o600, 0, 0);
  // Page 0 complete, page 1 where WAL ends.
  const wal = Buffer.alloc(2 * PAGE);
  rng.bytes(PAGE + 100).copy(wal);
  await primary.write(segment.ino, 0, wal);
  const shipped = (): Promise<void> => untilShipped(primary, device);
  await shipped();

  const standby = await openStandby(await FileDevice.open(devicePath, { readOnly: false }), {
    host: 'wal-standby', overlayDir: path.join(tmpDir, 'overlay'), pollIntervalMs: 3_600_000, // rounds run when the test polls
  });
  t.after(() => standby.close());
  const ino = standby.lookupIno(SEGMENT_PATH);

  // A reader that keeps one file open is served at once, rereads included (PostgreSQL's startup and
  // pg_waldump reread pages).
  for (let i = 0; i < 3; i++) {
    assert.deepEqual(await standby.read(ino, 0, PAGE, through(1)), wal.subarray(0, PAGE));
    assert.deepEqual(await standby.read(ino, PAGE, PAGE, through(1)), wal.subarray(PAGE));
  }
  // PostgreSQL's poll: it reopens the segment, reads its first page and then the page where WAL ends.
  let handle = 2;
  const retry = (onInterrupt?: (callback: () => void) => void): { first: Promise<Buffer>; tail: Promise<Buffer> } => {
    const origin = through(handle++, onInterrupt);
    const first = standby.read(ino, 0, PAGE, origin);
    return { first, tail: first.then(() => standby.read(ino, PAGE, PAGE, origin)) };
  };

  // The primary writes WAL; the standby has not applied it yet (its next round does). The first polls
  // are served at once; the next one waits; the round applies the WAL: it answers, and the poll reads it.
  const applied = Buffer.from(wal.subarray(PAGE));
  const more = rng.bytes(300);
  more.copy(wal, PAGE + 100);
  await primary.write(segment.ino, PAGE + 100, more);
  await shipped();
  for (let i = 0; i < WAL_POLLS_SERVED; i++) {
    const served = retry();
    assert.equal(await settledYet(served.first), true, `poll ${i + 1} is served at once`);
    assert.deepEqual(await served.tail, applied);
  }
  const waiting = retry();
  assert.equal(await settledYet(waiting.first), false, 'the next poll waits');
  assert.ok(await standby.shared.tailer!.poll() > 0, 'the standby applied the new WAL');
  assert.deepEqual(await waiting.tail, wal.subarray(PAGE), 'the waiting poll went on with the new WAL');

  // Nothing new since: the next poll waits; an interrupt (a signal for the reader) answers it at once.
  let interrupt: (() => void) | undefined;
  const interrupted = retry((callback) => { interrupt = callback; });
  assert.equal(await settledYet(interrupted.first), false, 'waits until interrupted');
  assert.ok(interrupt, 'the waiting read registered for the interrupt');
  interrupt!();
  assert.deepEqual(await interrupted.tail, wal.subarray(PAGE));

  // Nothing happens: it answers after WAL_TAIL_WAIT_MS with the same bytes.
  const startedMs = Date.now();
  assert.deepEqual(await retry().tail, wal.subarray(PAGE));
  assert.ok(Date.now() - startedMs >= WAL_TAIL_WAIT_MS - 5, 'it waited for the time limit');
});
