import { test } from 'node:test';
import assert from 'node:assert/strict';

import { FileDevice } from '../../src/device/file-device';
import { RECORD_HEADER_BYTES } from '../../src/log/format';
import { readSuperblock } from '../../src/log/superblock';
import { readDurableMarker } from '../../src/log/durable-marker';
import { mkfs } from '../../src/volume/mkfs';
import { fsck, listRecords, volumeStatus } from '../../src/volume/inspect';
import { Volume } from '../../src/volume/volume';
import { S_IFREG } from '../../src/volume/state';
import { makeRng, seedFrom, stopVolumeTimers, tempDevice, tempDir } from '../support/core';

const SEED = seedFrom('FSCK_TEST_SEED');
const ctx = `(FSCK_TEST_SEED=${SEED})`;
const MiB = 1024 * 1024;
const HOST = 'fsck-test-host';

/** A volume with a few directories and files, written in several synced rounds. */
async function populate(volume: Volume, rounds: number): Promise<void> {
  const rng = makeRng(SEED);
  await volume.mkdir('/d', 0o755, 0, 0);
  const inos: number[] = [];
  for (let i = 0; i < 6; i++) inos.push((await volume.create(`/d/f${i}`, S_IFREG | 0o644, 0, 0)).ino);
  await volume.symlink('d/f0', '/link', 0, 0);
  await volume.link('/d/f1', '/hard');
  for (let round = 0; round < rounds; round++) {
    for (const ino of inos) {
      await volume.write(ino, rng.int(64 * 1024), rng.bytes(rng.range(1, 20_000)));
    }
    await volume.sync();
  }
}

/** Stops an open volume without closing it (as if its process died after the last sync). */
async function abandon(volume: Volume): Promise<void> {
  await volume.sync();
  stopVolumeTimers(volume);
  await volume.device.close();
}

async function withDevice<T>(path: string, fn: (device: FileDevice) => Promise<T>): Promise<T> {
  const device = await FileDevice.open(path, { readOnly: true });
  try {
    return await fn(device);
  } finally {
    await device.close();
  }
}

async function flipByte(path: string, offset: number, mask = 0x20): Promise<void> {
  const device = await FileDevice.open(path, { readOnly: false });
  try {
    const byte = await device.read(offset, 1);
    await device.write(offset, Buffer.from([byte[0]! ^ mask]));
    await device.flush();
  } finally {
    await device.close();
  }
}

test('fsck of a healthy volume is ok (mounted, and after a clean unmount); status agrees', async () => {
  const tmp = tempDir('fsck-healthy');
  try {
    const { path, device } = await tempDevice(tmp.dir, 32 * MiB);
    await mkfs(device);
    // A fresh volume.
    let report = await withDevice(path, fsck);
    assert.ok(report.ok, JSON.stringify(report.problems));
    assert.equal(report.recordsByType.Checkpoint, 1);

    const volume = await Volume.openPrimary(device, { host: HOST });
    await populate(volume, 5);
    // While mounted (read-only view of a live primary).
    report = await withDevice(path, fsck);
    assert.ok(report.ok, `mounted: ${JSON.stringify(report.problems)} ${ctx}`);
    assert.ok(report.records > 10);
    assert.ok((report.recordsByType.Data ?? 0) > 0 && (report.recordsByType.Meta ?? 0) > 0 && (report.recordsByType.Epoch ?? 0) === 1);
    assert.ok(report.versionsChecked > 0);
    assert.equal(report.inodes, 1 + 1 + 6 + 1); // root, /d, 6 files, symlink (the hard link shares f1)
    const status = await withDevice(path, volumeStatus);
    assert.equal(status.epoch, 2);
    assert.equal(status.holder?.host, HOST);
    assert.equal(status.holder?.pid, process.pid);
    assert.equal(status.tailLsn, volume.durableLsn);
    assert.equal(status.files, report.inodes);
    assert.ok(status.liveBytes > 0 && status.usedBytes >= status.liveBytes);

    await volume.close();
    report = await withDevice(path, fsck);
    assert.ok(report.ok, `after close: ${JSON.stringify(report.problems)} ${ctx}`);
    const after = await withDevice(path, volumeStatus);
    assert.equal(after.holder, null, 'a clean unmount releases the reservation');
    assert.equal(after.checkpointLsn, (await withDevice(path, readSuperblock)).checkpointLsn);
    assert.ok(after.checkpointLsn > status.checkpointLsn, 'close wrote a checkpoint');
  } finally {
    tmp.remove();
  }
});

test('fsck names the LSN of a damaged mid-log record, before and after the checkpoint', async () => {
  const tmp = tempDir('fsck-damage');
  try {
    const { path, device } = await tempDevice(tmp.dir, 32 * MiB);
    await mkfs(device);
    const volume = await Volume.openPrimary(device, { host: HOST });
    await populate(volume, 8);
    await abandon(volume);
    const superblock = await withDevice(path, readSuperblock);
    const records = await withDevice(path, (d) => listRecords(d, { limit: 100_000 }));
    const data = records.filter((r) => r.type === 'Data');
    assert.ok(data.length > 20);
    const offsetOf = (lsn: number) => superblock.logOffset + (lsn % superblock.logBytes);

    // (1) After the newest checkpoint: recovery itself refuses the log
    // (durable records follow the damage), and fsck names the LSN.
    assert.ok(data[Math.floor(data.length / 2)]!.lsn > superblock.checkpointLsn, 'the middle of the log is past the checkpoint');
    const victim = data[Math.floor(data.length / 2)]!;
    await flipByte(path, offsetOf(victim.lsn) + RECORD_HEADER_BYTES + 40);
    let report = await withDevice(path, fsck);
    assert.equal(report.ok, false);
    assert.ok(report.problems.some((p) => p.lsn === victim.lsn), `problems name LSN ${victim.lsn}: ${JSON.stringify(report.problems)}`);
    assert.ok(report.problems.some((p) => p.message.includes(String(victim.lsn))));
    // A mount refuses it too, rather than dropping acknowledged data.
    await withDevice(path, async (d) => {
      await assert.rejects(volumeStatus(d), new RegExp(`LSN ${victim.lsn} is damaged`));
    });
    await flipByte(path, offsetOf(victim.lsn) + RECORD_HEADER_BYTES + 40);
    report = await withDevice(path, fsck);
    assert.ok(report.ok, `repaired: ${JSON.stringify(report.problems)}`);

    // (2) A header byte of another record.
    const victim2 = records[Math.floor(records.length * 0.7)]!;
    await flipByte(path, offsetOf(victim2.lsn) + 10, 0x01);
    report = await withDevice(path, fsck);
    assert.equal(report.ok, false);
    assert.ok(report.problems.some((p) => p.lsn === victim2.lsn), `problems name LSN ${victim2.lsn}: ${JSON.stringify(report.problems)}`);
    await flipByte(path, offsetOf(victim2.lsn) + 10, 0x01);

    // (3) Before the checkpoint: remount and close, so the newest checkpoint is
    // past everything; recovery no longer reads the old records, the head-to-tail scan still does.
    const device2 = await FileDevice.open(path, { readOnly: false });
    const volume2 = await Volume.openPrimary(device2, { host: HOST });
    await volume2.close();
    const superblock2 = await withDevice(path, readSuperblock);
    assert.ok(superblock2.checkpointLsn > victim.lsn);
    await flipByte(path, offsetOf(victim.lsn) + RECORD_HEADER_BYTES + 40);
    report = await withDevice(path, fsck);
    assert.equal(report.ok, false);
    assert.ok(report.problems.some((p) => p.lsn === victim.lsn), `old record: problems name LSN ${victim.lsn}: ${JSON.stringify(report.problems)}`);
    // The volume itself still mounts: the damaged record is below its checkpoint.
    await withDevice(path, async (d) => { await volumeStatus(d); });
  } finally {
    tmp.remove();
  }
});

/** Zeroes one record on the device, as if it never reached it or the medium lost it. */
async function zeroRecord(path: string, record: { lsn: number; bytes: number }): Promise<void> {
  const superblock = await withDevice(path, readSuperblock);
  const device = await FileDevice.open(path, { readOnly: false });
  await device.write(superblock.logOffset + (record.lsn % superblock.logBytes), Buffer.alloc(record.bytes));
  await device.close();
}

async function lastDataRecord(path: string): Promise<{ lsn: number; bytes: number }> {
  const records = await withDevice(path, (d) => listRecords(d, { limit: 100_000 }));
  return records.filter((r) => r.type === 'Data').pop()!;
}

test('fsck: a torn tail (an unsynced last batch is lost) is not a problem', async () => {
  const tmp = tempDir('fsck-torn');
  try {
    const { path, device } = await tempDevice(tmp.dir, 32 * MiB);
    await mkfs(device);
    const volume = await Volume.openPrimary(device, { host: HOST });
    await populate(volume, 3);
    // No background flush from here on: it would make the next write durable (and vouched for by the marker).
    stopVolumeTimers(volume);
    // One more write, never synced: the writer puts it on the device without a flush.
    await volume.write(volume.resolve('/d/f2').ino, 0, Buffer.alloc(3000, 9));
    await new Promise((resolve) => setTimeout(resolve, 50));
    await volume.device.close();
    const last = await lastDataRecord(path);
    await zeroRecord(path, last);
    const report = await withDevice(path, fsck);
    assert.ok(report.ok, JSON.stringify(report.problems));
    assert.equal(report.tailLsn, last.lsn);
  } finally {
    tmp.remove();
  }
});

test('fsck and mount: damage to the last synced batch is corruption (the durable marker vouches for it)', async () => {
  const tmp = tempDir('fsck-last-synced');
  try {
    const { path, device } = await tempDevice(tmp.dir, 32 * MiB);
    await mkfs(device);
    const volume = await Volume.openPrimary(device, { host: HOST });
    await populate(volume, 3);
    const durableLsn = volume.durableLsn;
    // The marker is written after the idle flush; wait until it is on the device.
    for (let i = 0; i < 200; i++) {
      const marker = await withDevice(path, readDurableMarker);
      if (marker && marker.durableLsn >= durableLsn) break;
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    await abandon(volume);
    const last = await lastDataRecord(path);
    assert.ok(last.lsn < durableLsn, 'the damaged record was synced');
    await zeroRecord(path, last);
    const report = await withDevice(path, fsck);
    assert.equal(report.ok, false);
    assert.ok(report.problems.some((p) => p.lsn === last.lsn && /durable up to LSN/.test(p.message)), JSON.stringify(report.problems));
    const reopened = await FileDevice.open(path, { readOnly: false });
    await assert.rejects(Volume.openPrimary(reopened, { host: HOST }), new RegExp(`LSN ${last.lsn} is damaged`));
    await reopened.close();
  } finally {
    tmp.remove();
  }
});
