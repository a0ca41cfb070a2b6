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
import { readDurableMarker } from '../../src/log/durable-marker';
import type { ReadOrigin } from '../../src/volume/file-system';
import { mkfs } from '../../src/volume/mkfs';
import { WAL_POLLS_SERVED, WAL_TAIL_WAIT_MS, openStandby } from '../../src/volume/standby';
import { S_IFDIR, S_IFREG } from '../../src/volume/state';
import { Volume } from '../../src/volume/volume';
import { makeRng, tempDevice, tempDir } from '../support/core';

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

test('standby: a WAL poll (the same page, reopened, nothing new) waits until WAL arrives, an interrupt or the time limit; other reads never wait', async (t) => {
  const tmp = tempDir('standby-wal-wait');
  t.after(() => tmp.remove());
  const { path: devicePath, device } = await tempDevice(tmp.dir, 64 * MiB);
  await mkfs(device);
  const primary = await Volume.openPrimary(device, { host: 'wal-primary' });
  t.after(() => primary.close());
  const rng = makeRng(20261122);
  await primary.mkdir('/pgdata', S_IFDIR | 0o700, 0, 0);
  await primary.mkdir('/pgdata/pg_wal', S_IFDIR | 0o700, 0, 0);
  const segment = await primary.create(SEGMENT_PATH, S_IFREG | 0o600, 0, 0);
  // Page 0 complete, page 1 where WAL ends.
  const wal = Buffer.alloc(2 * PAGE);
  rng.bytes(PAGE + 100).copy(wal);
  await primary.write(segment.ino, 0, wal);
  const shipped = async (): Promise<void> => {
    await primary.sync();
    while (((await readDurableMarker(device))?.durableLsn ?? 0) < primary.durableLsn) await new Promise((resolve) => setTimeout(resolve, 1));
  };
  await shipped();

  const standby = await openStandby(await FileDevice.open(devicePath, { readOnly: false }), {
    host: 'wal-standby', overlayDir: path.join(tmp.dir, 'overlay'), pollIntervalMs: 3_600_000, // rounds run when the test polls
  });
  t.after(() => standby.close());
  const ino = standby.lookupIno(SEGMENT_PATH);

  // Reads through one open file are served at once, rereads of a page included (PostgreSQL's startup
  // and pg_waldump reread a page); so is another page through a new open file.
  for (let i = 0; i < 3; i++) {
    assert.deepEqual(await standby.read(ino, 0, PAGE, through(1)), wal.subarray(0, PAGE));
    assert.deepEqual(await standby.read(ino, PAGE, PAGE, through(1)), wal.subarray(PAGE));
  }
  assert.equal(await settledYet(standby.read(ino, PAGE, PAGE, through(1))), true, 'a reread through the same open file');
  assert.equal(await settledYet(standby.read(ino, 0, PAGE, through(2))), true, 'another page through a new open file');

  // The primary writes WAL; the standby has not applied it yet (its next round does). Another page than the
  // last read is served at once, as applied, and so are the first polls (the same page reopened, nothing
  // new here). The next poll waits; the round applies the WAL: it answers with the new bytes.
  const applied = Buffer.from(wal.subarray(PAGE));
  const more = rng.bytes(300);
  more.copy(wal, PAGE + 100);
  await primary.write(segment.ino, PAGE + 100, more);
  await shipped();
  let handle = 3;
  const poll = (onInterrupt?: (callback: () => void) => void): Promise<Buffer> => standby.read(ino, PAGE, PAGE, through(handle++, onInterrupt));
  assert.deepEqual(await poll(), applied);
  for (let i = 0; i < WAL_POLLS_SERVED; i++) assert.equal(await settledYet(poll()), true, `poll ${i + 1} is served at once`);
  const waiting = poll();
  assert.equal(await settledYet(waiting), false, 'the poll waits');
  assert.ok(await standby.shared.tailer!.poll() > 0, 'the standby applied the new WAL');
  assert.deepEqual(await waiting, wal.subarray(PAGE), 'the waiting poll answered with the new WAL');

  // Nothing new since that answer: the next poll waits (the first polls were served already); an
  // interrupt (a signal for the reader) answers it at once.
  let interrupt: (() => void) | undefined;
  const interrupted = poll((callback) => { interrupt = callback; });
  assert.equal(await settledYet(interrupted), false, 'waits until interrupted');
  assert.ok(interrupt, 'the waiting read registered for the interrupt');
  interrupt!();
  assert.deepEqual(await interrupted, wal.subarray(PAGE));

  // Nothing happens: it answers after WAL_TAIL_WAIT_MS with the same bytes.
  const startedMs = Date.now();
  assert.deepEqual(await poll(), wal.subarray(PAGE));
  assert.ok(Date.now() - startedMs >= WAL_TAIL_WAIT_MS - 5, 'it waited for the time limit');
});
