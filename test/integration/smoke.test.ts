import { test } from 'node:test';
import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { destroyVolume, lsnfsOk, makeVolume, mount, umount } from '../support/harness';

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
