import { test } from 'node:test';
import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { daemonPid, destroyVolume, lsnfsOk, makeVolume, mount, processExists, umount } from '../support/harness';
import { execOk } from '../../src/pg/exec';

test('a file written on the mount survives umount and remount', async (t) => {
  const volume = await makeVolume({ name: 'smoke' });
  t.after(() => destroyVolume(volume));
  await mount(volume);
  const file = path.join(volume.mountpoint, 'hello.txt');
  await fsp.writeFile(file, 'hello lsnfs\n');
  await umount(volume);
  await mount(volume);
  assert.equal(await fsp.readFile(file, 'utf8'), 'hello lsnfs\n');
  await umount(volume);
  const status = JSON.parse(await lsnfsOk(['status', '--device', volume.device, '--json'], volume.env)) as { epoch: number; tailLsn: number };
  assert.equal(status.epoch, 3);
  assert.ok(status.tailLsn > 4096);
});

test('an idle primary checkpoints, so the next mount replays little of the log', async (t) => {
  const volume = await makeVolume({ name: 'idle-checkpoint' });
  t.after(() => destroyVolume(volume));
  await mount(volume);
  const status = async (): Promise<{ tailLsn: number; checkpointLsn: number }> =>
    JSON.parse(await lsnfsOk(['status', '--device', volume.device, '--json'], volume.env)) as { tailLsn: number; checkpointLsn: number };
  const before = await status();
  // 4 MiB written and made durable: less than the 64 MiB after which a busy primary checkpoints.
  const handle = await fsp.open(path.join(volume.mountpoint, 'burst.bin'), 'w');
  await handle.write(Buffer.alloc(4 * 1024 * 1024, 7));
  await handle.sync();
  await handle.close();
  const afterBurst = await status();
  assert.ok(afterBurst.tailLsn - afterBurst.checkpointLsn >= 4 * 1024 * 1024, 'the burst is log past the checkpoint');
  let now = afterBurst;
  for (let waitedMs = 0; now.checkpointLsn === before.checkpointLsn && waitedMs < 10_000; waitedMs += 250) {
    await new Promise((resolve) => setTimeout(resolve, 250));
    now = await status();
  }
  assert.ok(now.checkpointLsn >= afterBurst.tailLsn, `a checkpoint after the burst (checkpoint LSN ${now.checkpointLsn}, burst ended at ${afterBurst.tailLsn})`);
  // Nothing new to cover: no further checkpoints while it stays idle.
  await new Promise((resolve) => setTimeout(resolve, 2500));
  assert.equal((await status()).checkpointLsn, now.checkpointLsn, 'an idle primary with nothing new does not checkpoint again');
  await umount(volume);
});

test('a plain umount (no lsnfs umount) ends the daemon cleanly: it checkpoints and releases the device', async (t) => {
  const volume = await makeVolume({ name: 'plain-umount' });
  t.after(() => destroyVolume(volume));
  await mount(volume);
  const pid = daemonPid(volume);
  await fsp.writeFile(path.join(volume.mountpoint, 'kept.txt'), 'kept\n');
  await execOk('umount', [volume.mountpoint]);
  for (let waitedMs = 0; processExists(pid) && waitedMs < 10_000; waitedMs += 50) await new Promise((resolve) => setTimeout(resolve, 50));
  assert.equal(processExists(pid), false, 'the daemon exited after its mount went away');
  const status = JSON.parse(await lsnfsOk(['status', '--device', volume.device, '--json'], volume.env)) as { holder: unknown; checkpointLsn: number; tailLsn: number };
  assert.equal(status.holder, null, 'the device was released');
  await mount(volume);
  assert.equal(await fsp.readFile(path.join(volume.mountpoint, 'kept.txt'), 'utf8'), 'kept\n');
  await umount(volume);
});
