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
