/**
 * The replica tailer's device reads: an idle round is one small read, a
 * round that catches up grows its reads instead of reading the backlog in
 * small pieces, and what it applies is what the primary wrote. A primary and
 * a replica Volume in this process, on two handles of one device file; the
 * replica's device counts the reads it serves (the bytes come from the file).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { BlockDevice } from '../../src/device/device';
import { FileDevice } from '../../src/device/file-device';
import { readDurableMarker } from '../../src/log/durable-marker';
import { DURABLE_MARKER_OFFSET, LOG_OFFSET, REPLICA_SLOTS_OFFSET, REPLICA_SLOT_BYTES, REPLICA_SLOT_COUNT } from '../../src/log/format';
import { readSlots } from '../../src/replica/slots';
import { mkfs } from '../../src/volume/mkfs';
import { S_IFREG } from '../../src/volume/state';
import { Volume } from '../../src/volume/volume';
import { DelegatingDevice, makeRng, seedFrom, tempDevice, tempDir } from '../support/core';

const SEED = seedFrom('TAILER_TEST_SEED');
const ctx = `(TAILER_TEST_SEED=${SEED})`;
const MiB = 1024 * 1024;
const PAGE = 8192;
/** The tailer's first read after an idle round (src/replica/tailer.ts IDLE_READ_BYTES). */
const IDLE_READ_BYTES = 8 * 1024;

/** A device that notes the size of every log read and counts durable-marker reads. */
class ReadCountingDevice extends DelegatingDevice {
  logReads: number[] = [];
  markerReads = 0;
  override read(offset: number, length: number): Promise<Buffer> {
    if (offset >= LOG_OFFSET) this.logReads.push(length);
    else if (offset === DURABLE_MARKER_OFFSET) this.markerReads++;
    return this.inner.read(offset, length);
  }
  reset(): void { this.logReads = []; this.markerReads = 0; }
}

/** A device whose slot writes wait while `closed`: a slot write stuck behind another host's writes. */
class SlowSlotDevice extends DelegatingDevice {
  closed = false;
  slotWritesWaiting = 0;
  private waiters: Array<() => void> = [];
  override async write(offset: number, data: Uint8Array): Promise<void> {
    const isSlot = offset >= REPLICA_SLOTS_OFFSET && offset < REPLICA_SLOTS_OFFSET + REPLICA_SLOT_COUNT * REPLICA_SLOT_BYTES;
    if (isSlot && this.closed) {
      this.slotWritesWaiting++;
      await new Promise<void>((resolve) => this.waiters.push(resolve));
      this.slotWritesWaiting--;
    }
    return this.inner.write(offset, data);
  }
  /** Lets the waiting writes go, the last first: a slot write issued after another must not land before it. */
  open(): void { this.closed = false; for (const wake of this.waiters.splice(0).reverse()) wake(); }
}

/** `promise`, or 'pending' if it has not settled within `ms`. */
function within<T>(promise: Promise<T>, ms: number): Promise<T | 'pending'> {
  return Promise.race([promise, new Promise<'pending'>((resolve) => setTimeout(() => resolve('pending'), ms))]);
}

/** Waits until the primary's durable marker on the device covers `lsn` (it is written just after the flush). */
async function markerCovers(device: BlockDevice, lsn: number): Promise<void> {
  for (let i = 0; i < 5000; i++) {
    const marker = await readDurableMarker(device);
    if (marker && marker.durableLsn >= lsn) return;
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
  assert.fail(`the durable marker never reached LSN ${lsn}`);
}

test('tailer: an idle round reads one small chunk and no marker; catching up grows the reads and applies everything', async (t) => {
  const tmp = tempDir('tailer');
  try {
    const { path, device } = await tempDevice(tmp.dir, 64 * MiB);
    await mkfs(device);
    const primary = await Volume.openPrimary(device, { host: 'tailer-primary' });
    const rng = makeRng(SEED);
    const inode = await primary.create('/f', S_IFREG | 0o644, 0, 0);
    await primary.write(inode.ino, 0, rng.bytes(4 * PAGE));
    await primary.sync();
    await markerCovers(device, primary.durableLsn);

    const counting = new ReadCountingDevice(await FileDevice.open(path, { readOnly: false }));
    // Rounds run only when the test calls poll().
    const replica = await Volume.openReader(counting, { host: 'tailer-replica', role: 'replica', pollIntervalMs: 3_600_000 });
    try {
      assert.equal(replica.tailLsn, primary.durableLsn, `the replica caught up at mount ${ctx}`);

      counting.reset();
      for (let i = 0; i < 5; i++) assert.equal(await replica.tailer!.poll(), 0, 'nothing new');
      assert.equal(counting.markerReads, 0, 'idle rounds read the durable marker');
      assert.ok(counting.logReads.length === 5 && counting.logReads.every((bytes) => bytes <= IDLE_READ_BYTES),
        `idle rounds read ${JSON.stringify(counting.logReads)} log bytes`);

      // A backlog of 3 MiB in 8 KiB page records: one round reads it in a few growing reads.
      const backlog = rng.bytes(3 * MiB);
      for (let at = 0; at < backlog.length; at += 16 * PAGE) await primary.write(inode.ino, at, backlog.subarray(at, at + 16 * PAGE));
      await primary.sync();
      const written = primary.durableLsn - replica.tailLsn;
      await markerCovers(device, primary.durableLsn);
      counting.reset();
      assert.ok(await replica.tailer!.poll() > 0, 'the round applied the backlog');
      assert.equal(replica.tailLsn, primary.durableLsn, 'one round caught up');
      const readBytes = counting.logReads.reduce((a, b) => a + b, 0);
      assert.ok(counting.logReads.length <= 12 && readBytes <= 3 * written,
        `catching up ${written} bytes took ${counting.logReads.length} reads of ${readBytes} bytes: ${JSON.stringify(counting.logReads)}`);
      t.diagnostic(`catching up ${written} bytes: ${counting.logReads.length} reads, ${readBytes} bytes`);
      assert.equal(counting.markerReads, 1, 'one marker read for the round that found records');
      const got = await replica.read(replica.resolve('/f').ino, 0, backlog.length);
      assert.ok(got.equals(backlog), `the replica reads what the primary wrote ${ctx}`);

      // Idle again: one round may start as large as the backlog was; the one after is small again.
      await replica.tailer!.poll();
      counting.reset();
      assert.equal(await replica.tailer!.poll(), 0);
      assert.ok(counting.logReads.every((bytes) => bytes <= IDLE_READ_BYTES), `idle again: ${JSON.stringify(counting.logReads)}`);
    } finally {
      await replica.close();
      await primary.close();
    }
  } finally {
    tmp.remove();
  }
});

test('tailer: rounds go on while a slot write waits; closing waits for it, then frees the slot', async () => {
  const tmp = tempDir('tailer-slot');
  try {
    const { path, device } = await tempDevice(tmp.dir, 64 * MiB);
    await mkfs(device);
    const primary = await Volume.openPrimary(device, { host: 'tailer-primary' });
    const rng = makeRng(SEED ^ 0x77);
    const inode = await primary.create('/f', S_IFREG | 0o644, 0, 0);
    const slow = new SlowSlotDevice(await FileDevice.open(path, { readOnly: false }));
    const replica = await Volume.openReader(slow, { host: 'tailer-slot-replica', role: 'replica', pollIntervalMs: 3_600_000 });
    let closed = false;
    try {
      slow.closed = true;
      for (let round = 0; round < 3; round++) {
        const data = rng.bytes(PAGE);
        await primary.write(inode.ino, round * PAGE, data);
        await primary.sync();
        await markerCovers(device, primary.durableLsn);
        // Past the slot's minimum publish interval, so that this round publishes its view.
        await new Promise((resolve) => setTimeout(resolve, 30));
        const applied = await within(replica.tailer!.poll(), 2000);
        assert.ok(applied !== 'pending' && applied > 0, `round ${round} waited for its slot write ${ctx}`);
        assert.ok((await replica.read(inode.ino, round * PAGE, PAGE)).equals(data), `round ${round} applied the write`);
        assert.equal(slow.slotWritesWaiting, 1, 'one slot write in flight at a time');
      }
      const closing = replica.close();
      assert.equal(await within(closing, 200), 'pending', 'close went on while a slot write was in flight');
      slow.open();
      await closing;
      closed = true;
      const slots = await readSlots(device);
      assert.ok(!slots.some((slot) => slot.host === 'tailer-slot-replica'), `the closed replica's slot is free: ${JSON.stringify(slots)}`);
    } finally {
      slow.open();
      if (!closed) await replica.close();
      await primary.close();
    }
  } finally {
    tmp.remove();
  }
});
