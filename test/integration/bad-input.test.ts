/**
 * Bad input and hostile conditions: every refusal is a clear one-line error
 * that names the device (and the LSN, the holder, the sizes), never a stack
 * trace, and nothing acknowledged is lost because of it.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { promises as fsp, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  CliResult, crashDaemon, destroyVolume, lsnfs, lsnfsOk, makeVolume, mount, run, TestVolume, umount,
} from '../support/harness';

const MiB = 1024 * 1024;
const LOG_OFFSET = MiB;
const RECORD_HEADER_BYTES = 64;

/** A refusal: non-zero exit, a message on stderr, no stack trace. */
function assertRefused(result: CliResult, what: string): void {
  assert.notEqual(result.code, 0, `${what} should fail, but exited 0: ${result.stdout}`);
  assert.ok(result.stderr.trim().length > 0, `${what}: no error message`);
  assert.doesNotMatch(result.stderr, /^\s+at /m, `${what}: stack trace on stderr:\n${result.stderr}`);
}

function isMounted(mountpoint: string): boolean {
  return readFileSync('/proc/self/mounts', 'utf8').split('\n').some((line) => line.split(' ')[1] === path.resolve(mountpoint));
}

async function sha256(file: string, start = 0, end?: number): Promise<string> {
  const handle = await fsp.open(file, 'r');
  try {
    const hash = createHash('sha256');
    const stop = end ?? (await handle.stat()).size;
    const buf = Buffer.alloc(4 * MiB);
    for (let at = start; at < stop;) {
      const { bytesRead } = await handle.read(buf, 0, Math.min(buf.length, stop - at), at);
      if (bytesRead === 0) break;
      hash.update(buf.subarray(0, bytesRead));
      at += bytesRead;
    }
    return hash.digest('hex');
  } finally {
    await handle.close();
  }
}

/** The log and both superblocks: everything but the reservation block and replica slots. */
async function logAndSuperblocks(device: string): Promise<string> {
  return `${await sha256(device, 0, 8192)}/${await sha256(device, LOG_OFFSET)}`;
}

async function flipByte(file: string, offset: number): Promise<void> {
  const handle = await fsp.open(file, 'r+');
  try {
    const buf = Buffer.alloc(1);
    await handle.read(buf, 0, 1, offset);
    buf[0] = buf[0]! ^ 0xff;
    await handle.write(buf, 0, 1, offset);
  } finally {
    await handle.close();
  }
}

/** Writes a file through the mount and fsyncs it (and its directory). */
async function writeDurably(file: string, data: Buffer): Promise<void> {
  const handle = await fsp.open(file, 'wx');
  try {
    await handle.writeFile(data);
    await handle.sync();
  } finally {
    await handle.close();
  }
  const dir = await fsp.open(path.dirname(file), 'r');
  try { await dir.sync(); } finally { await dir.close(); }
}

async function assertFiles(mountpoint: string, files: Map<string, Buffer>, what: string): Promise<void> {
  for (const [name, expected] of files) {
    const actual = await fsp.readFile(path.join(mountpoint, name));
    assert.ok(actual.equals(expected), `${what}: ${name} differs (${actual.length} bytes, expected ${expected.length})`);
  }
}

async function fsckJson(volume: TestVolume): Promise<{ code: number; report: { ok: boolean; problems: Array<{ lsn?: number; message: string }> } | null; result: CliResult }> {
  const result = await lsnfs(['fsck', '--device', volume.device, '--json'], volume.env);
  let report = null;
  try { report = JSON.parse(result.stdout) as { ok: boolean; problems: Array<{ lsn?: number; message: string }> }; } catch { /* none */ }
  return { code: result.code, report, result };
}

async function assertFsckClean(volume: TestVolume, when: string): Promise<void> {
  const { code, report, result } = await fsckJson(volume);
  assert.ok(code === 0 && report?.ok === true, `fsck ${when}: exit ${code}\n${result.stdout}${result.stderr}`);
}

for (const kind of ['random bytes', 'zeros'] as const) {
  test(`a device of ${kind} is refused as not an lsnfs volume`, async (t) => {
    const volume = await makeVolume({ name: 'notlsnfs', size: '16M' });
    t.after(() => destroyVolume(volume));
    await fsp.writeFile(volume.device, kind === 'zeros' ? Buffer.alloc(16 * MiB) : randomBytes(16 * MiB));
    const before = await sha256(volume.device);

    const mounted = await lsnfs(['mount', '--device', volume.device, '--mountpoint', volume.mountpoint], volume.env);
    assertRefused(mounted, 'mount');
    assert.ok(mounted.stderr.includes(volume.device), `mount error does not name the device: ${mounted.stderr}`);
    assert.match(mounted.stderr, /not an lsnfs volume/);
    assert.ok(!isMounted(volume.mountpoint), 'the mountpoint is mounted after a refused mount');

    for (const command of ['status', 'fsck', 'inspect']) {
      const result = await lsnfs([command, '--device', volume.device], volume.env);
      assertRefused(result, command);
      assert.ok(result.stderr.includes(volume.device) && /not an lsnfs volume/.test(result.stderr), `${command}: ${result.stderr}`);
    }
    assert.equal(await sha256(volume.device), before, 'a refused command wrote to the device');
  });
}

test('a truncated device is refused with the device and both sizes named; nothing is written to it', async (t) => {
  const volume = await makeVolume({ name: 'truncated', size: '256M' });
  t.after(() => destroyVolume(volume));
  await mount(volume);
  const files = new Map([['a', randomBytes(300_000)], ['b', randomBytes(8192)]]);
  for (const [name, data] of files) await writeDurably(path.join(volume.mountpoint, name), data);
  await umount(volume);
  await fsp.truncate(volume.device, 100 * MiB);
  const before = await sha256(volume.device);

  const mounted = await lsnfs(['mount', '--device', volume.device, '--mountpoint', volume.mountpoint], volume.env);
  assertRefused(mounted, 'mount');
  assert.ok(mounted.stderr.includes(volume.device), `mount error does not name the device: ${mounted.stderr}`);
  assert.match(mounted.stderr, /truncated/);
  assert.match(mounted.stderr, /268435456/, 'the formatted size');
  assert.match(mounted.stderr, /104857600/, 'the present size');
  assert.ok(!isMounted(volume.mountpoint));

  for (const args of [['fsck'], ['fsck', '--json'], ['status'], ['status', '--json']]) {
    const result = await lsnfs([...args, '--device', volume.device], volume.env);
    assertRefused(result, args.join(' '));
    assert.ok(result.stderr.includes(volume.device) && /truncated/.test(result.stderr) && /104857600/.test(result.stderr), `${args.join(' ')}: ${result.stderr}`);
  }
  assert.equal(await sha256(volume.device), before, 'a refused command wrote to the device');

  // Give the device its size back (the LUN was resized by mistake): everything is there.
  await fsp.truncate(volume.device, 256 * MiB);
  await mount(volume);
  await assertFiles(volume.mountpoint, files, 'after restoring the size');
  await umount(volume);
  await assertFsckClean(volume, 'after restoring the size');
});

interface RecordSummary { lsn: number; type: string; bytes: number; ino?: number }

for (const where of ['payload', 'header'] as const) {
  test(`a flipped byte in the ${where} of a record in the middle of the log is refused, naming its LSN`, async (t) => {
    const volume = await makeVolume({ name: `flip-${where}`, size: '256M' });
    t.after(() => destroyVolume(volume));
    await mount(volume);
    const files = new Map<string, Buffer>();
    for (let i = 0; i < 12; i++) {
      const data = randomBytes(5 * 8192 + 1000 * i);
      files.set(`f${i}`, data);
      await writeDurably(path.join(volume.mountpoint, `f${i}`), data);
    }
    // A crash: no checkpoint covers these records, recovery must replay them.
    await crashDaemon(volume);

    const status = JSON.parse(await lsnfsOk(['status', '--device', volume.device, '--json'], volume.env)) as { logBytes: number; checkpointLsn: number };
    const records = JSON.parse(await lsnfsOk(['inspect', '--device', volume.device, '--json', '--limit', '100000'], volume.env)) as RecordSummary[];
    const data = records.filter((r) => r.type === 'Data' && r.lsn > status.checkpointLsn);
    assert.ok(data.length >= 60, `only ${data.length} data records`);
    const victim = data[Math.floor(data.length / 2)]!;
    const recordOffset = LOG_OFFSET + (victim.lsn % status.logBytes);
    // Payload: a byte inside the page bytes (after the 32-byte data head). Header: a byte of its time stamp.
    const flipAt = where === 'payload' ? recordOffset + RECORD_HEADER_BYTES + 32 + 100 : recordOffset + 33;
    await flipByte(volume.device, flipAt);
    const damaged = await logAndSuperblocks(volume.device);
    const lsnPattern = new RegExp(`\\bLSN ${victim.lsn}\\b`);

    const mounted = await lsnfs(['mount', '--device', volume.device, '--mountpoint', volume.mountpoint], volume.env);
    assertRefused(mounted, 'mount');
    assert.match(mounted.stderr, lsnPattern, `mount error does not name LSN ${victim.lsn}: ${mounted.stderr}`);
    assert.ok(mounted.stderr.includes(volume.device), `mount error does not name the device: ${mounted.stderr}`);
    assert.ok(!isMounted(volume.mountpoint));
    assert.equal(await logAndSuperblocks(volume.device), damaged, 'the refused mount wrote to the log or a superblock');

    const text = await lsnfs(['fsck', '--device', volume.device], volume.env);
    assert.notEqual(text.code, 0, `fsck passed a damaged log:\n${text.stdout}`);
    assert.match(text.stdout + text.stderr, lsnPattern, `fsck does not name LSN ${victim.lsn}:\n${text.stdout}${text.stderr}`);
    assert.doesNotMatch(text.stderr, /^\s+at /m);
    const { code, report, result } = await fsckJson(volume);
    assert.notEqual(code, 0);
    assert.ok(report && !report.ok && report.problems.some((p) => p.lsn === victim.lsn), `fsck --json: ${result.stdout}${result.stderr}`);
    assert.equal(await logAndSuperblocks(volume.device), damaged, 'fsck wrote to the log or a superblock');

    // Repair the byte: nothing was lost.
    await flipByte(volume.device, flipAt);
    await mount(volume);
    await assertFiles(volume.mountpoint, files, 'after repairing the byte');
    await umount(volume);
    await assertFsckClean(volume, 'after repairing the byte');
  });
}

test('a full device gives ENOSPC (not EIO), nothing written is lost, and deleting files makes room again', { timeout: 120_000 }, async (t) => {
  const volume = await makeVolume({ name: 'full', size: '64M' });
  t.after(() => destroyVolume(volume));
  await mount(volume);
  const FILE_BYTES = MiB;
  const CHUNK = 128 * 1024;
  const files = new Map<string, Buffer>();
  let failure: NodeJS.ErrnoException | null = null;
  for (let i = 0; failure === null && i < 200; i++) {
    const name = `f${String(i).padStart(3, '0')}`;
    const content = randomBytes(FILE_BYTES);
    const handle = await fsp.open(path.join(volume.mountpoint, name), 'wx');
    let written = 0;
    try {
      while (written < content.length) {
        const { bytesWritten } = await handle.write(content, written, Math.min(CHUNK, content.length - written), written);
        written += bytesWritten;
      }
    } catch (error) {
      failure = error as NodeJS.ErrnoException;
    }
    // fsync what was written, even on a full device.
    await handle.sync();
    await handle.close();
    files.set(name, content.subarray(0, written));
  }
  assert.ok(failure, 'never ran out of space');
  assert.equal(failure.code, 'ENOSPC', `the write failed with ${failure.code}: ${failure.message}`);
  const written = [...files.values()].reduce((sum, b) => sum + b.length, 0);
  assert.ok(written > 40 * MiB, `only ${written} bytes fit on a 64 MiB device`);
  t.diagnostic(`ENOSPC after ${written} bytes in ${files.size} files`);
  await assertFiles(volume.mountpoint, files, 'on the full device');

  // Free half the files; the cleaner must make their space usable again.
  const names = [...files.keys()];
  for (const name of names.filter((_, i) => i % 2 === 0)) {
    await fsp.unlink(path.join(volume.mountpoint, name));
    files.delete(name);
  }
  for (let i = 0; i < 10; i++) {
    const name = `g${i}`;
    const content = randomBytes(FILE_BYTES);
    await writeDurably(path.join(volume.mountpoint, name), content);
    files.set(name, content);
  }
  await assertFiles(volume.mountpoint, files, 'after freeing space');
  await umount(volume);
  await mount(volume);
  await assertFiles(volume.mountpoint, files, 'after remount');
  await umount(volume);
  await assertFsckClean(volume, 'after filling and freeing');
});

test('a second read-write mount of the same device is refused, naming the holder host', async (t) => {
  const volume = await makeVolume({ name: 'twice', size: '64M' });
  const second = path.join(volume.dir, 'mnt2');
  await fsp.mkdir(second);
  t.after(async () => {
    if (isMounted(second)) {
      const result = await lsnfs(['umount', '--mountpoint', second], volume.env);
      if (result.code !== 0) await run('umount', ['-l', second]).catch(() => undefined);
    }
    await destroyVolume(volume);
  });
  await mount(volume, ['--host', 'alpha-host']);
  const data = randomBytes(20_000);
  await writeDurably(path.join(volume.mountpoint, 'kept'), data);

  for (const host of ['beta-host', 'alpha-host', os.hostname()]) {
    const result = await lsnfs(['mount', '--device', volume.device, '--mountpoint', second, '--host', host], volume.env);
    assertRefused(result, `second mount as ${host}`);
    assert.match(result.stderr, /'alpha-host'/, `the error does not name the holder: ${result.stderr}`);
    assert.ok(result.stderr.includes(volume.device), `the error does not name the device: ${result.stderr}`);
    assert.ok(!isMounted(second), `a second mount as ${host} is live`);
  }

  // The first mount is untouched and still writes.
  assert.ok((await fsp.readFile(path.join(volume.mountpoint, 'kept'))).equals(data));
  await writeDurably(path.join(volume.mountpoint, 'after'), data);
  const status = JSON.parse(await lsnfsOk(['status', '--device', volume.device, '--json'], volume.env)) as { holder: { host: string } | null };
  assert.equal(status.holder?.host, 'alpha-host');
  await umount(volume);

  // Released by the clean unmount: another host may mount now.
  await lsnfsOk(['mount', '--device', volume.device, '--mountpoint', second, '--host', 'beta-host'], volume.env);
  assert.ok((await fsp.readFile(path.join(second, 'kept'))).equals(data));
  assert.ok((await fsp.readFile(path.join(second, 'after'))).equals(data));
  await lsnfsOk(['umount', '--mountpoint', second], volume.env);
  await assertFsckClean(volume, 'after two hosts');
});

test('mkfs over an existing volume needs --force; a missing device is a clear error', async (t) => {
  const volume = await makeVolume({ name: 'mkfs', size: '64M' });
  t.after(() => destroyVolume(volume));
  await mount(volume);
  const data = randomBytes(50_000);
  await writeDurably(path.join(volume.mountpoint, 'precious'), data);
  await umount(volume);
  const before = await sha256(volume.device);

  for (const extra of [[], ['--size', '64M'], ['--size', '128M']]) {
    const result = await lsnfs(['mkfs', '--device', volume.device, ...extra], volume.env);
    assertRefused(result, `mkfs ${extra.join(' ')}`);
    assert.ok(result.stderr.includes(volume.device) && /already holds an lsnfs volume/.test(result.stderr) && /--force/.test(result.stderr), result.stderr);
  }
  assert.equal(await sha256(volume.device), before, 'a refused mkfs changed the device');
  await mount(volume);
  assert.ok((await fsp.readFile(path.join(volume.mountpoint, 'precious'))).equals(data));
  await umount(volume);

  // Superblock copy A wiped (a stray dd): the volume still mounts from copy B, so mkfs must still refuse.
  const handle = await fsp.open(volume.device, 'r+');
  try { await handle.write(Buffer.alloc(4096), 0, 4096, 0); } finally { await handle.close(); }
  const wiped = await sha256(volume.device);
  for (const extra of [[], ['--size', '64M']]) {
    const result = await lsnfs(['mkfs', '--device', volume.device, ...extra], volume.env);
    assertRefused(result, `mkfs ${extra.join(' ')} with superblock copy A wiped`);
    assert.match(result.stderr, /already holds an lsnfs volume/);
  }
  assert.equal(await sha256(volume.device), wiped, 'a refused mkfs changed the device');
  await mount(volume);
  assert.ok((await fsp.readFile(path.join(volume.mountpoint, 'precious'))).equals(data));
  await umount(volume);

  const missing = path.join(volume.dir, 'no-such-device.img');
  for (const args of [['status'], ['status', '--json'], ['fsck'], ['inspect']]) {
    const result = await lsnfs([...args, '--device', missing], volume.env);
    assertRefused(result, `${args.join(' ')} on a missing device`);
    assert.ok(result.stderr.includes(missing), `${args.join(' ')}: the error does not name the device: ${result.stderr}`);
    assert.match(result.stderr, /ENOENT|does not exist|no such/i);
  }
  const mounted = await lsnfs(['mount', '--device', missing, '--mountpoint', volume.mountpoint], volume.env);
  assertRefused(mounted, 'mount of a missing device');
  assert.ok(mounted.stderr.includes(missing), mounted.stderr);

  // --force does format it.
  await lsnfsOk(['mkfs', '--device', volume.device, '--force'], volume.env);
  await mount(volume);
  assert.deepEqual(await fsp.readdir(volume.mountpoint), []);
  await umount(volume);
});
