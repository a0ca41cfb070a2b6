import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { closeSync, constants as fsConstants, openSync, promises as fsp, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { FileDevice } from '../../src/device/file-device';
import { nativeAddon } from '../../src/util/native';

const KIB = 1024;
const { preadNoWait } = nativeAddon<{ preadNoWait(fd: number, buffer: Uint8Array, offset: number): number }>(['preadNoWait']);

/**
 * A device file written with O_DIRECT (dd oflag=direct), so none of it is in
 * the page cache: reads of it must go to the disk, which preadNoWait refuses.
 */
async function uncachedDevice(t: { after(fn: () => Promise<void>): void }): Promise<{ file: string; content: Buffer }> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'lsnfs-file-device-'));
  t.after(() => fsp.rm(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'dev');
  execFileSync('dd', ['if=/dev/urandom', `of=${file}`, 'bs=64K', 'count=16', 'oflag=direct', 'status=none']);
  // Read back with O_DIRECT too: the expected bytes, without caching them.
  const content = Buffer.from(execFileSync('dd', [`if=${file}`, 'bs=64K', 'iflag=direct', 'status=none'], { maxBuffer: 2 * 1024 * KIB }));
  assert.equal(content.length, 1024 * KIB);
  return { file, content };
}

test('preadNoWait copies what the page cache holds and refuses to wait for the rest', async (t) => {
  const { file, content } = await uncachedDevice(t);
  const fd = openSync(file, fsConstants.O_RDONLY);
  t.after(() => closeSync(fd));
  const buffer = Buffer.alloc(64 * KIB);
  assert.equal(preadNoWait(fd, buffer, 0), -os.constants.errno.EAGAIN, 'an uncached range is refused, not read');
  readFileSync(file); // now all of it is cached
  assert.equal(preadNoWait(fd, buffer, 128 * KIB), 64 * KIB);
  assert.deepEqual(buffer, content.subarray(128 * KIB, 192 * KIB));
  assert.equal(preadNoWait(fd, buffer, 1024 * KIB), 0, 'end of file');
  assert.throws(() => preadNoWait(fd, Buffer.alloc(1), -1), /preadNoWait\(fd: number, buffer: Uint8Array, offset: number\)/);
});

test('FileDevice reads uncached, cached and half-cached ranges exactly', async (t) => {
  const { file, content } = await uncachedDevice(t);
  const device = await FileDevice.open(file, { readOnly: true });
  t.after(() => device.close());
  // Uncached: through the thread pool. Then cached: in place.
  assert.deepEqual(await device.read(0, 64 * KIB), content.subarray(0, 64 * KIB));
  assert.deepEqual(await device.read(0, 64 * KIB), content.subarray(0, 64 * KIB));
  // The first half is cached now and the second is not: part in place, the rest through the pool.
  assert.deepEqual(await device.read(32 * KIB + 512, 96 * KIB), content.subarray(32 * KIB + 512, 128 * KIB + 512));
  // Unaligned and tiny reads anywhere.
  for (const [offset, length] of [[1, 1], [4095, 2], [500 * KIB + 7, 13 * KIB], [1024 * KIB - 3, 3]] as const) {
    assert.deepEqual(await device.read(offset, length), content.subarray(offset, offset + length), `read [${offset}, +${length})`);
  }
});
