/**
 * Reader slots read while their owners rewrite them: a read that races a
 * write can see a slot half written (its checksum fails). Such a slot must
 * never pass for a free one: the horizon would leave its reader out and let
 * the primary reclaim what it reads, and a new reader could take its slot.
 * The device here damages the slot area's bytes in the reads it serves, as a
 * racing read would see them; the bytes on the device stay whole.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { REPLICA_SLOTS_OFFSET, REPLICA_SLOT_BYTES } from '../../src/log/format';
import { claimSlot, describeDamagedSlots, readSlotArea, readSlots, writeSlot } from '../../src/replica/slots';
import { readHorizon } from '../../src/volume/horizon';
import { mkfs } from '../../src/volume/mkfs';
import { S_IFREG } from '../../src/volume/state';
import { Volume } from '../../src/volume/volume';
import { DelegatingDevice, tempDevice, tempDir, untilHorizonAtDurable } from '../support/core';

const MiB = 1024 * 1024;

/** Flips a byte of slot `slot` in the next `reads` reads of the slot area it serves. */
class TornSlotReads extends DelegatingDevice {
  slot = 0;
  reads = 0;
  slotAreaReads = 0;
  override async read(offset: number, length: number): Promise<Buffer> {
    const buf = await this.inner.read(offset, length);
    const at = REPLICA_SLOTS_OFFSET + this.slot * REPLICA_SLOT_BYTES + 100 - offset;
    if (offset === REPLICA_SLOTS_OFFSET) this.slotAreaReads++;
    if (this.reads > 0 && at >= 0 && at < length) {
      this.reads--;
      buf[at]! ^= 0xff;
    }
    return buf;
  }
}

const reader = (host: string, viewLsn: number) => ({
  host, pid: 1, viewLsn, appliedLsn: viewLsn, viewTimeMs: Date.now(), heartbeatAtMs: Date.now(),
});

test('a slot read half written is read again; one that stays damaged holds the horizon and the cleaner, is named, and is never taken', async () => {
  const tmp = tempDir('slots');
  const { device: file } = await tempDevice(tmp.dir, 4 * MiB);
  const device = new TornSlotReads(file);
  try {
    await writeSlot(device, 0, reader('lagging', 5000));
    await writeSlot(device, 1, reader('recent', 90_000));

    // A torn read or two: the next reads see the slot whole.
    device.reads = 2;
    const slots = await readSlots(device);
    assert.deepEqual(slots.map((slot) => [slot.host, slot.viewLsn]), [['lagging', 5000], ['recent', 90_000]]);
    assert.equal(device.slotAreaReads, 3, 'two rereads');
    device.reads = 3;
    assert.deepEqual(await readHorizon(device, [], 0), { lsn: 5000, keepDeletedFromLsn: Number.POSITIVE_INFINITY }, 'the horizon holds for the slot read torn');

    // Damaged in every read: no horizon (the primary keeps the one it had) but the slot that stops it, and a
    // cleaner would wait.
    device.reads = 1000;
    assert.deepEqual(await readHorizon(device, [], 0), { damaged: [0] });
    device.reads = 1000;
    assert.match(describeDamagedSlots(device, (await readSlotArea(device)).damaged), /device .*device\.img: replica slot 0 \(byte 16384\) failed its checksum/);
    // Where slots only name hosts, the damaged one is left out ...
    device.reads = 1000;
    assert.deepEqual((await readSlots(device)).map((slot) => slot.host), ['recent']);
    // ... and a new reader never takes it.
    device.reads = 1000;
    assert.equal(await claimSlot(device, 'newcomer', 10_000), 2);
  } finally {
    await file.close();
    tmp.remove();
  }
});

test('the primary keeps its horizon while a slot is damaged, and lets it go once damaged longer than the reader timeout', async () => {
  const tmp = tempDir('slots-primary');
  const { device: file } = await tempDevice(tmp.dir, 64 * MiB);
  await mkfs(file);
  const device = new TornSlotReads(file);
  const timeoutMs = 400;
  const primary = await Volume.openPrimary(device, { host: 'slots-primary', replicaTimeoutMs: timeoutMs });
  try {
    const viewLsn = primary.durableLsn;
    await writeSlot(device, 0, reader('lagging', viewLsn));
    await primary.updateHorizon();
    assert.equal(primary.state.horizonLsn, viewLsn, 'a live reader holds the horizon');
    // Its slot now reads damaged every time (its owner gone mid-write, a bad sector).
    device.reads = Number.MAX_SAFE_INTEGER;
    await primary.updateHorizon();
    assert.equal(primary.state.horizonLsn, viewLsn, 'the horizon stays while the damaged slot may be a live reader\'s');
    assert.equal(await primary.readerBehind(viewLsn + 1), true, 'the cleaner waits for it');
    // A live reader would have rewritten it by now: it is a dead reader's slot. (The horizon follows the
    // durable log without readers: something is written past the reader's view.)
    await new Promise((resolve) => setTimeout(resolve, timeoutMs + 100));
    await primary.create('/after', S_IFREG | 0o644, 0, 0);
    await primary.sync();
    await untilHorizonAtDurable(primary);
    assert.ok(primary.state.horizonLsn > viewLsn, `the horizon moved on (${primary.state.horizonLsn})`);
    assert.equal(await primary.readerBehind(viewLsn + 1), false, 'the cleaner no longer waits');
  } finally {
    device.reads = 0;
    await primary.close();
    await file.close().catch(() => undefined);
    tmp.remove();
  }
});
