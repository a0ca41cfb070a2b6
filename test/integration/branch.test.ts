import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { destroyVolume, lsnfs, lsnfsOk, makeVolume, mount, umount } from '../support/harness';
import { REPLICA_SLOTS_OFFSET, REPLICA_SLOT_BYTES, REPLICA_SLOT_COUNT } from '../../src/log/format';

/** Hash of the whole device except the reader slots (the only bytes a branch may write). */
async function deviceHashOutsideSlots(device: string): Promise<string> {
  const bytes = await fsp.readFile(device);
  const slotsEnd = REPLICA_SLOTS_OFFSET + REPLICA_SLOT_COUNT * REPLICA_SLOT_BYTES;
  return createHash('sha256').update(bytes.subarray(0, REPLICA_SLOTS_OFFSET)).update(bytes.subarray(slotsEnd)).digest('hex');
}

async function tailLsn(volume: { device: string; env: NodeJS.ProcessEnv }): Promise<number> {
  return (JSON.parse(await lsnfsOk(['status', '--device', volume.device, '--json'], volume.env)) as { tailLsn: number }).tailLsn;
}

test('a writable snapshot (branch) keeps its changes private and never writes the shared log', async (t) => {
  const volume = await makeVolume({ name: 'branch', size: '128M' });
  t.after(() => destroyVolume(volume));
  await lsnfsOk(['mkfs', '--device', volume.device, '--size', '128M', '--retain', '1h', '--force'], volume.env);
  await mount(volume);
  const mnt = (...parts: string[]): string => path.join(volume.mountpoint, ...parts);
  await fsp.mkdir(mnt('dir'));
  await fsp.writeFile(mnt('dir', 'kept.txt'), 'state one\n');
  await fsp.writeFile(mnt('big.bin'), Buffer.alloc(3 * 8192 + 100, 7));
  const dir = await fsp.open(mnt('dir'), 'r');
  await dir.sync();
  await dir.close();
  const lsnOne = await tailLsn(volume);
  await fsp.writeFile(mnt('dir', 'kept.txt'), 'state two\n');
  await fsp.rm(mnt('big.bin'));
  await umount(volume);
  const before = await deviceHashOutsideSlots(volume.device);

  const branch = path.join(volume.dir, 'branch-a');
  const branchDir = path.join(volume.dir, 'overlay-a');
  await fsp.mkdir(branch);
  const mountBranch = (extra: string[]): Promise<string> => lsnfsOk(['mount', '--role', 'snapshot', '--device', volume.device,
    '--mountpoint', branch, '--host', 'branch-a', '--overlay', branchDir, ...extra], volume.env);
  await mountBranch(['--at-lsn', String(lsnOne)]);
  const b = (...parts: string[]): string => path.join(branch, ...parts);
  assert.equal(await fsp.readFile(b('dir', 'kept.txt'), 'utf8'), 'state one\n', 'the branch starts from the snapshot');
  assert.equal((await fsp.stat(b('big.bin'))).size, 3 * 8192 + 100);
  await fsp.writeFile(b('dir', 'kept.txt'), 'branch change\n');
  await fsp.appendFile(b('big.bin'), 'tail');
  await fsp.writeFile(b('dir', 'new.txt'), 'only in the branch\n');
  await fsp.rename(b('dir', 'new.txt'), b('moved.txt'));
  const handle = await fsp.open(b('moved.txt'), 'r+');
  await handle.sync();
  await handle.close();
  await lsnfsOk(['umount', '--mountpoint', branch], volume.env);
  assert.equal(await deviceHashOutsideSlots(volume.device), before, 'the shared device is unchanged outside the reader slots');

  // Remount without --at-lsn: the overlay remembers its LSN and its changes.
  await mountBranch([]);
  assert.equal(await fsp.readFile(b('dir', 'kept.txt'), 'utf8'), 'branch change\n');
  assert.equal(await fsp.readFile(b('moved.txt'), 'utf8'), 'only in the branch\n');
  const big = await fsp.readFile(b('big.bin'));
  assert.equal(big.length, 3 * 8192 + 104);
  assert.ok(big.subarray(0, 3 * 8192 + 100).every((byte) => byte === 7));
  assert.equal(big.subarray(3 * 8192 + 100).toString(), 'tail');
  await lsnfsOk(['umount', '--mountpoint', branch], volume.env);

  // A second branch at the same LSN sees the snapshot, not the first branch.
  const other = path.join(volume.dir, 'branch-b');
  await fsp.mkdir(other);
  await lsnfsOk(['mount', '--role', 'snapshot', '--device', volume.device, '--mountpoint', other, '--host', 'branch-b',
    '--overlay', path.join(volume.dir, 'overlay-b'), '--at-lsn', String(lsnOne)], volume.env);
  assert.equal(await fsp.readFile(path.join(other, 'dir', 'kept.txt'), 'utf8'), 'state one\n');
  await assert.rejects(fsp.stat(path.join(other, 'moved.txt')), { code: 'ENOENT' });
  await lsnfsOk(['umount', '--mountpoint', other], volume.env);
  assert.equal(await deviceHashOutsideSlots(volume.device), before);

  // The primary never saw any of it.
  await mount(volume);
  assert.equal(await fsp.readFile(mnt('dir', 'kept.txt'), 'utf8'), 'state two\n');
  await assert.rejects(fsp.stat(mnt('moved.txt')), { code: 'ENOENT' });
  await umount(volume);

  // Bad input: a branch at another LSN than its overlay's, a branch's overlay given to a replica (a standby's mount).
  const wrongLsn = await lsnfs(['mount', '--role', 'snapshot', '--device', volume.device, '--mountpoint', branch, '--host', 'branch-a',
    '--overlay', branchDir, '--at-lsn', String(lsnOne + 512)], volume.env);
  assert.notEqual(wrongLsn.code, 0);
  assert.match(wrongLsn.stderr, new RegExp(`made at LSN ${lsnOne}`));
  const onReplica = await lsnfs(['mount', '--role', 'replica', '--device', volume.device, '--mountpoint', branch, '--host', 'r',
    '--overlay', branchDir], volume.env);
  assert.notEqual(onReplica.code, 0);
  assert.match(onReplica.stderr, /holds a branch/);
});
