/**
 * The primary reads the reader slots every 100 ms, so a reader that has just
 * written its slot is not in the horizon yet. Such a reader wrote its slot
 * before it read the log, so its view is at least what the device vouched
 * for as durable when the primary's read of the slots began: the horizon
 * must stay below that, or a base written meanwhile drops the version that
 * view shows (a new standby's tree stays at that view until its L moves).
 * A primary recovering its log has written nothing yet: it keeps what its
 * checkpoint shows, where such a reader starts.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FileDevice } from '../../src/device/file-device';
import { REPLICA_SLOTS_OFFSET } from '../../src/log/format';
import { writeSlot } from '../../src/replica/slots';
import { mkfs } from '../../src/volume/mkfs';
import { S_IFREG } from '../../src/volume/state';
import { Volume } from '../../src/volume/volume';
import { CrashDevice, DelegatingDevice, stopVolumeTimers, tempDevice, tempDir, tempPrimary, untilHorizonAtDurable } from '../support/core';

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

/** A reader that registers just after the primary's recovery read the slots (its slot is written then). */
class ReaderRegistersDuringRecovery extends DelegatingDevice {
  readerViewLsn = 0;
  override async read(offset: number, length: number): Promise<Buffer> {
    const bytes = await this.inner.read(offset, length);
    if (offset === REPLICA_SLOTS_OFFSET && this.readerViewLsn > 0) {
      const viewLsn = this.readerViewLsn;
      this.readerViewLsn = 0;
      await writeSlot(this.inner, 0, { host: 'new-reader', pid: 1, viewLsn, appliedLsn: viewLsn, viewTimeMs: Date.now(), heartbeatAtMs: Date.now() });
    }
    return bytes;
  }
}

test('a primary recovering keeps the versions its checkpoint shows, for a reader that registers meanwhile', async () => {
  const tmp = tempDir('horizon-recovery');
  try {
    const { path, device } = await tempDevice(tmp.dir, 64 * MiB);
    await mkfs(device);
    const crash = new CrashDevice(device);
    const first = await Volume.openPrimary(crash, { host: 'horizon-recovery' });
    const file = await first.create('/rel', S_IFREG | 0o600, 0, 0);
    await first.write(file.ino, 0, Buffer.alloc(PAGE, 1));
    await first.checkpoint();
    const checkpointLsn = first.superblock.checkpointLsn;
    // After the checkpoint, an image over it; then the host loses power (what was synced survives).
    await first.write(file.ino, 0, Buffer.alloc(PAGE, 2));
    await first.sync();
    stopVolumeTimers(first);
    await crash.powerLoss(() => 0, 1);
    await crash.closeInner();

    const hooked = new ReaderRegistersDuringRecovery(await FileDevice.open(path, { readOnly: false }));
    hooked.readerViewLsn = checkpointLsn;
    const primary = await Volume.openPrimary(hooked, { host: 'horizon-recovery' });
    try {
      const rel = primary.state.resolve('/rel');
      const versions = rel.pages!.get(0)!;
      assert.equal(versions.length, 2, 'the image the checkpoint shows is still indexed for the reader that reads from it');
      assert.ok(versions[0]!.versionLsn < checkpointLsn && versions[1]!.versionLsn > checkpointLsn);
      assert.ok((await primary.read(rel.ino, 0, PAGE)).equals(Buffer.alloc(PAGE, 2)), 'the primary reads the newest');
    } finally {
      await primary.close();
    }
  } finally {
    tmp.remove();
  }
});
