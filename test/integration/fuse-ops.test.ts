/**
 * Every filesystem operation PostgreSQL and ordinary tools use, against the
 * real FUSE mount (the CLI's daemon serves it; this process only makes
 * syscalls, so async fs calls here are safe).
 *
 * Each group makes its own volume, runs one subtest per operation, then
 * unmounts, mounts again and re-checks everything that must be durable (each
 * subtest registers those checks with `durable(...)`), and ends with
 * `lsnfs fsck --json` reporting ok.
 *
 * Reads that must come from the filesystem rather than the kernel page cache
 * (the mount uses kernel_cache) are made with O_DIRECT: FUSE sends those to the
 * daemon every time.
 *
 * Known behaviour this documents rather than hides:
 * - A file unlinked while open is kept alive by renaming it to
 *   `.fuse_hidden<ino><n>` in the same directory until the last handle is
 *   released (src/fuse/adapter.ts, as libfuse 2's high-level API did).
 * - The kernel knows a file by its volume inode number (st_ino), so hard
 *   links share one kernel inode, its page cache and its attributes.
 */
import { test, TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { constants as fsc, promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import path from 'node:path';
import {
  TestVolume, crashDaemon, destroyVolume, lsnfs, lsnfsOk, makeVolume, mount, run, sleep, umount,
} from '../support/harness';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
const PAGE = 8 * KiB;
const POSTGRES_UID = 101;
const POSTGRES_GID = 104;
const UMASK = process.umask();

// ---------------------------------------------------------------------------
// Helpers

/** Deterministic pseudo-random bytes (xorshift32), different for each seed. */
function pattern(seed: number, length: number): Buffer {
  const out = Buffer.alloc(length);
  let x = (Math.imul(seed + 1, 2654435761) >>> 0) || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13; x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5; x >>>= 0;
    out[i] = x & 0xff;
  }
  return out;
}

/** What a file should contain: writes and truncates applied in memory. */
class FileModel {
  data = Buffer.alloc(0);
  write(position: number, bytes: Buffer): void {
    if (position + bytes.length > this.data.length) this.resize(position + bytes.length);
    bytes.copy(this.data, position);
  }
  resize(size: number): void {
    const next = Buffer.alloc(size);
    this.data.copy(next, 0, 0, Math.min(size, this.data.length));
    this.data = next;
  }
}

async function readAt(handle: FileHandle, position: number, length: number): Promise<Buffer> {
  const buffer = Buffer.alloc(length);
  let done = 0;
  while (done < length) {
    const { bytesRead } = await handle.read(buffer, done, length - done, position + done);
    if (bytesRead === 0) break;
    done += bytesRead;
  }
  return buffer.subarray(0, done);
}

async function writeAt(handle: FileHandle, position: number, bytes: Buffer): Promise<void> {
  let done = 0;
  while (done < bytes.length) {
    const { bytesWritten } = await handle.write(bytes, done, bytes.length - done, position + done);
    assert.ok(bytesWritten > 0, 'write made no progress');
    done += bytesWritten;
  }
}

/** Reads bypassing the kernel page cache, so the bytes come from the daemon. */
async function readDirect(file: string, position = 0, length?: number): Promise<Buffer> {
  const handle = await fsp.open(file, fsc.O_RDONLY | fsc.O_DIRECT);
  try {
    const size = length ?? (await handle.stat()).size - position;
    return await readAt(handle, position, size);
  } finally {
    await handle.close();
  }
}

async function withHandle<T>(file: string, flags: string | number, body: (handle: FileHandle) => Promise<T>, mode?: number): Promise<T> {
  const handle = await fsp.open(file, flags, mode);
  try {
    return await body(handle);
  } finally {
    await handle.close();
  }
}

/** Asserts that `promise` rejects with the errno `code`. */
async function rejectsWith(promise: Promise<unknown>, code: string, what: string): Promise<void> {
  await assert.rejects(promise, (error: NodeJS.ErrnoException) => {
    assert.equal(error.code, code, `${what}: expected ${code}, got ${error.code} (${error.message})`);
    return true;
  }, `${what}: expected ${code}, but it succeeded`);
}

/** Runs `fn` over `items` with at most `limit` calls in flight. */
async function forEachLimit<T>(items: readonly T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) {
      const item = items[next++]!;
      await fn(item);
    }
  }));
}

async function assertFsckOk(volume: TestVolume): Promise<void> {
  const result = await lsnfs(['fsck', '--device', volume.device, '--json'], volume.env);
  let report: { ok: boolean; problems: unknown[] };
  try {
    report = JSON.parse(result.stdout) as { ok: boolean; problems: unknown[] };
  } catch {
    throw new Error(`fsck printed no JSON (exit ${result.code}):\n${result.stdout}\n${result.stderr}`);
  }
  assert.equal(report.ok, true, `fsck problems: ${JSON.stringify(report.problems, null, 2)}`);
  assert.equal(result.code, 0);
}

/** Names in a directory as getdents returns them (ls -f: unsorted, '.' and '..' included). */
async function rawDirectoryListing(dir: string): Promise<string[]> {
  return (await run('ls', ['-1fa', dir])).split('\n').filter((line) => line.length > 0);
}

async function waitForNoHiddenFiles(dir: string): Promise<void> {
  const deadline = Date.now() + 5000;
  for (;;) {
    const hidden = (await fsp.readdir(dir)).filter((name) => name.startsWith('.fuse_hidden'));
    if (hidden.length === 0) return;
    if (Date.now() > deadline) assert.fail(`libfuse hidden files left in ${dir}: ${hidden.join(', ')}`);
    await sleep(50);
  }
}

interface Group {
  volume: TestVolume;
  mnt: (...parts: string[]) => string;
  /** Registers a check that must still pass after umount + mount. */
  durable: (name: string, check: () => Promise<void>) => void;
  /** Umount, mount, run every durable check, umount, fsck. */
  remountAndVerify: (t: TestContext) => Promise<void>;
}

async function startGroup(t: TestContext, name: string, size = '256M'): Promise<Group> {
  const volume = await makeVolume({ name, size });
  t.after(() => destroyVolume(volume));
  await mount(volume);
  const checks: Array<{ name: string; check: () => Promise<void> }> = [];
  return {
    volume,
    mnt: (...parts) => path.join(volume.mountpoint, ...parts),
    durable: (checkName, check) => { checks.push({ name: checkName, check }); },
    remountAndVerify: async (tt) => {
      // Everything is checked live first, so a failure after remount is a durability bug.
      for (const { name: checkName, check } of checks) await tt.test(`live: ${checkName}`, check);
      await umount(volume);
      await mount(volume);
      for (const { name: checkName, check } of checks) await tt.test(`after remount: ${checkName}`, check);
      await umount(volume);
      await assertFsckOk(volume);
    },
  };
}

// ---------------------------------------------------------------------------
// Namespace operations

test('namespace operations: stat, readdir, mkdir/rmdir, ownership, times, links, rename, unlink, statfs, access', async (t) => {
  const g = await startGroup(t, 'fuse-ns');
  const { mnt, durable } = g;

  await t.test('getattr of the root and of a new file', async () => {
    const root = await fsp.stat(mnt());
    assert.ok(root.isDirectory());
    assert.equal(root.mode & 0o7777, 0o755);
    assert.equal(root.uid, 0);
    assert.equal(root.gid, 0);
    assert.equal(root.nlink, 2);

    const before = Date.now();
    await fsp.writeFile(mnt('hello.txt'), 'hello', { mode: 0o640 });
    const st = await fsp.stat(mnt('hello.txt'));
    assert.ok(st.isFile());
    assert.equal(st.mode, fsc.S_IFREG | (0o640 & ~UMASK));
    assert.equal(st.uid, 0);
    assert.equal(st.gid, 0);
    assert.equal(st.size, 5);
    assert.equal(st.nlink, 1);
    assert.ok(st.blksize > 0);
    assert.ok(st.mtimeMs >= before - 2000 && st.mtimeMs <= Date.now() + 2000, `mtime ${st.mtimeMs} is not now`);
    await rejectsWith(fsp.stat(mnt('missing')), 'ENOENT', 'stat of a missing file');
    await rejectsWith(fsp.stat(mnt('hello.txt', 'x')), 'ENOTDIR', 'stat through a file');
    durable('hello.txt', async () => {
      const again = await fsp.stat(mnt('hello.txt'));
      assert.equal(again.mode, st.mode);
      assert.equal(again.size, 5);
      assert.equal(again.mtimeMs, st.mtimeMs);
      assert.equal(await fsp.readFile(mnt('hello.txt'), 'utf8'), 'hello');
    });
  });

  await t.test('readdir lists every name once, with one . and one ..', async () => {
    await fsp.mkdir(mnt('list'));
    const names = ['a', 'b.txt', 'with space', 'ünïcødé', 'x'.repeat(255)];
    for (const name of names) await fsp.writeFile(mnt('list', name), name);
    await fsp.mkdir(mnt('list', 'subdir'));
    await fsp.symlink('a', mnt('list', 'link'));
    const expected = [...names, 'subdir', 'link'].sort();
    assert.deepEqual((await fsp.readdir(mnt('list'))).sort(), expected);
    const raw = await rawDirectoryListing(mnt('list'));
    assert.equal(raw.filter((n) => n === '.').length, 1, `raw listing: ${raw.join(' | ')}`);
    assert.equal(raw.filter((n) => n === '..').length, 1, `raw listing: ${raw.join(' | ')}`);
    assert.deepEqual(raw.filter((n) => n !== '.' && n !== '..').sort(), expected);
    const typed = new Map((await fsp.readdir(mnt('list'), { withFileTypes: true })).map((d) => [d.name, d]));
    assert.ok(typed.get('a')!.isFile());
    assert.ok(typed.get('subdir')!.isDirectory());
    assert.ok(typed.get('link')!.isSymbolicLink());
    await rejectsWith(fsp.writeFile(mnt('list', 'y'.repeat(256)), ''), 'ENAMETOOLONG', 'a 256-byte name');
    await rejectsWith(fsp.readdir(mnt('missing-dir')), 'ENOENT', 'readdir of a missing directory');
    await rejectsWith(fsp.readdir(mnt('list', 'a')), 'ENOTDIR', 'readdir of a file');
    durable('directory listing', async () => {
      assert.deepEqual((await fsp.readdir(mnt('list'))).sort(), expected);
      for (const name of names) assert.equal(await fsp.readFile(mnt('list', name), 'utf8'), name);
    });
  });

  await t.test('mkdir and rmdir, with nlink of the parent', async () => {
    const rootLinks = (await fsp.stat(mnt())).nlink;
    await fsp.mkdir(mnt('d1'), { mode: 0o750 });
    const d1 = await fsp.stat(mnt('d1'));
    assert.ok(d1.isDirectory());
    assert.equal(d1.mode & 0o7777, 0o750 & ~UMASK);
    assert.equal(d1.nlink, 2);
    assert.equal((await fsp.stat(mnt())).nlink, rootLinks + 1);
    await fsp.mkdir(mnt('d1', 'a', 'b', 'c'), { recursive: true });
    assert.equal((await fsp.stat(mnt('d1'))).nlink, 3);
    assert.ok((await fsp.stat(mnt('d1', 'a', 'b', 'c'))).isDirectory());

    await rejectsWith(fsp.mkdir(mnt('d1')), 'EEXIST', 'mkdir of an existing directory');
    await rejectsWith(fsp.mkdir(mnt('hello.txt')), 'EEXIST', 'mkdir over a file');
    await rejectsWith(fsp.mkdir(mnt('nope', 'child')), 'ENOENT', 'mkdir in a missing directory');
    await rejectsWith(fsp.mkdir(mnt('hello.txt', 'child')), 'ENOTDIR', 'mkdir under a file');
    await rejectsWith(fsp.rmdir(mnt('d1', 'a')), 'ENOTEMPTY', 'rmdir of a non-empty directory');
    await rejectsWith(fsp.rmdir(mnt('hello.txt')), 'ENOTDIR', 'rmdir of a file');
    await rejectsWith(fsp.rmdir(mnt('nope')), 'ENOENT', 'rmdir of a missing directory');

    await fsp.rmdir(mnt('d1', 'a', 'b', 'c'));
    await rejectsWith(fsp.stat(mnt('d1', 'a', 'b', 'c')), 'ENOENT', 'stat after rmdir');
    assert.equal((await fsp.stat(mnt('d1', 'a', 'b'))).nlink, 2);
    await fsp.mkdir(mnt('gone'));
    await fsp.rmdir(mnt('gone'));
    assert.equal((await fsp.stat(mnt())).nlink, rootLinks + 1);
    durable('directories', async () => {
      assert.equal((await fsp.stat(mnt('d1'))).mode & 0o7777, 0o750 & ~UMASK);
      assert.equal((await fsp.stat(mnt('d1'))).nlink, 3);
      assert.deepEqual(await fsp.readdir(mnt('d1', 'a', 'b')), []);
      await rejectsWith(fsp.stat(mnt('gone')), 'ENOENT', 'removed directory');
    });
  });

  await t.test('chmod, chown, and new entries take the owner of their directory', async () => {
    // Let the postgres user reach the mount (mkdtemp made the volume's directory 0700).
    await fsp.chmod(g.volume.dir, 0o755);
    await fsp.writeFile(mnt('owned.txt'), 'x');
    await fsp.chmod(mnt('owned.txt'), 0o600);
    assert.equal((await fsp.stat(mnt('owned.txt'))).mode, fsc.S_IFREG | 0o600);
    await fsp.chmod(mnt('owned.txt'), 0o4755);
    assert.equal((await fsp.stat(mnt('owned.txt'))).mode & 0o7777, 0o4755);
    await fsp.chmod(mnt('owned.txt'), 0o644);
    await fsp.chown(mnt('owned.txt'), POSTGRES_UID, POSTGRES_GID);
    let st = await fsp.stat(mnt('owned.txt'));
    assert.deepEqual([st.uid, st.gid], [POSTGRES_UID, POSTGRES_GID]);
    await fsp.chown(mnt('owned.txt'), 0, -1); // -1: leave the group alone
    st = await fsp.stat(mnt('owned.txt'));
    assert.deepEqual([st.uid, st.gid], [0, POSTGRES_GID]);
    await fsp.chown(mnt('owned.txt'), -1, 0);
    st = await fsp.stat(mnt('owned.txt'));
    assert.deepEqual([st.uid, st.gid], [0, 0]);

    // A PostgreSQL data directory: chown'd to postgres, and what is created inside belongs to postgres.
    await fsp.mkdir(mnt('pgdata'));
    await fsp.chown(mnt('pgdata'), POSTGRES_UID, POSTGRES_GID);
    await fsp.chmod(mnt('pgdata'), 0o700);
    await fsp.writeFile(mnt('pgdata', 'by-root'), 'r');
    await fsp.mkdir(mnt('pgdata', 'base'));
    await fsp.symlink('by-root', mnt('pgdata', 'sym'));
    for (const name of ['by-root', 'base', 'sym']) {
      const s = await fsp.lstat(mnt('pgdata', name));
      assert.deepEqual([s.uid, s.gid], [POSTGRES_UID, POSTGRES_GID], `${name} is owned by postgres`);
    }
    await run('sh', ['-c', 'echo from-postgres > by-postgres && mkdir pg_wal'], { user: 'postgres', cwd: mnt('pgdata') });
    for (const name of ['by-postgres', 'pg_wal']) {
      const s = await fsp.stat(mnt('pgdata', name));
      assert.deepEqual([s.uid, s.gid], [POSTGRES_UID, POSTGRES_GID], `${name} is owned by postgres`);
    }
    // default_permissions: the kernel enforces modes against the caller.
    await assert.rejects(run('sh', ['-c', `echo no >> ${mnt('owned.txt')}`], { user: 'postgres' }), /Permission denied/);
    await assert.rejects(run('touch', [mnt('postgres-may-not')], { user: 'postgres' }), /Permission denied/);
    await run('test', ['-r', mnt('owned.txt')], { user: 'postgres' });
    await rejectsWith(fsp.chmod(mnt('missing'), 0o644), 'ENOENT', 'chmod of a missing file');
    await rejectsWith(fsp.chown(mnt('missing'), 1, 1), 'ENOENT', 'chown of a missing file');
    durable('ownership and modes', async () => {
      const owned = await fsp.stat(mnt('owned.txt'));
      assert.deepEqual([owned.mode, owned.uid, owned.gid], [fsc.S_IFREG | 0o644, 0, 0]);
      const pgdata = await fsp.stat(mnt('pgdata'));
      assert.deepEqual([pgdata.mode & 0o7777, pgdata.uid, pgdata.gid], [0o700, POSTGRES_UID, POSTGRES_GID]);
      for (const name of ['by-root', 'base', 'sym', 'by-postgres', 'pg_wal']) {
        const s = await fsp.lstat(mnt('pgdata', name));
        assert.deepEqual([s.uid, s.gid], [POSTGRES_UID, POSTGRES_GID], `${name} is owned by postgres`);
      }
      assert.equal(await fsp.readFile(mnt('pgdata', 'by-postgres'), 'utf8'), 'from-postgres\n');
    });
  });

  await t.test('utimens sets the times; writes move mtime', async () => {
    const when = new Date(1_600_000_000_000);
    const accessed = new Date(1_600_000_123_000);
    await fsp.writeFile(mnt('times.txt'), 'v1');
    await fsp.utimes(mnt('times.txt'), accessed, when);
    let st = await fsp.stat(mnt('times.txt'));
    assert.equal(st.mtimeMs, when.getTime());
    assert.equal(st.atimeMs, accessed.getTime());
    const ctimeAfterUtimes = st.ctimeMs;
    assert.ok(ctimeAfterUtimes > when.getTime(), 'utimens moved ctime to now');

    await fsp.mkdir(mnt('timed-dir'));
    await fsp.utimes(mnt('timed-dir'), when, when);
    assert.equal((await fsp.stat(mnt('timed-dir'))).mtimeMs, when.getTime());

    const beforeWrite = Date.now();
    await fsp.appendFile(mnt('times.txt'), '+v2');
    st = await fsp.stat(mnt('times.txt'));
    assert.ok(st.mtimeMs >= beforeWrite - 2000, `mtime ${st.mtimeMs} moved forward on write`);
    assert.equal(st.size, 5);

    // Creating an entry moves the directory's mtime.
    await fsp.writeFile(mnt('timed-dir', 'child'), '');
    assert.ok((await fsp.stat(mnt('timed-dir'))).mtimeMs > when.getTime());
    await fsp.utimes(mnt('timed-dir'), when, when);

    await rejectsWith(fsp.utimes(mnt('missing'), when, when), 'ENOENT', 'utimes of a missing file');
    // touch sets both times to now. (libfuse 2 calls utimens only when both
    // times change, so `touch -a` and `touch -m` alone change nothing.)
    await fsp.writeFile(mnt('touched'), '');
    await fsp.utimes(mnt('touched'), when, when);
    const beforeTouch = Date.now();
    await run('touch', [mnt('touched')]);
    const touched = await fsp.stat(mnt('touched'));
    assert.ok(touched.mtimeMs >= beforeTouch - 2000 && touched.mtimeMs <= Date.now() + 2000, `touch set mtime ${touched.mtimeMs}`);
    assert.equal(touched.atimeMs, touched.mtimeMs);
    const written = st.mtimeMs;
    durable('times', async () => {
      assert.equal((await fsp.stat(mnt('times.txt'))).mtimeMs, written);
      assert.equal((await fsp.stat(mnt('timed-dir'))).mtimeMs, when.getTime());
      assert.equal(await fsp.readFile(mnt('times.txt'), 'utf8'), 'v1+v2');
    });
  });

  await t.test('symlink and readlink', async () => {
    await fsp.writeFile(mnt('target.txt'), 'through the link');
    await fsp.symlink('target.txt', mnt('link'));
    await fsp.mkdir(mnt('linkdir'));
    await fsp.symlink('../target.txt', mnt('linkdir', 'up'));
    await fsp.symlink('does-not-exist', mnt('dangling'));
    assert.equal(await fsp.readlink(mnt('link')), 'target.txt');
    const l = await fsp.lstat(mnt('link'));
    assert.ok(l.isSymbolicLink());
    assert.equal(l.size, 'target.txt'.length);
    assert.equal(await fsp.readFile(mnt('link'), 'utf8'), 'through the link');
    assert.equal(await fsp.readFile(mnt('linkdir', 'up'), 'utf8'), 'through the link');
    assert.ok((await fsp.stat(mnt('link'))).isFile());
    assert.ok((await fsp.lstat(mnt('dangling'))).isSymbolicLink());
    await rejectsWith(fsp.stat(mnt('dangling')), 'ENOENT', 'following a dangling symlink');
    await rejectsWith(fsp.symlink('x', mnt('link')), 'EEXIST', 'symlink over an existing name');
    await rejectsWith(fsp.readlink(mnt('target.txt')), 'EINVAL', 'readlink of a regular file');
    await rejectsWith(fsp.readlink(mnt('missing')), 'ENOENT', 'readlink of a missing name');
    // lchown changes the link itself, not its target.
    await fsp.lchown(mnt('linkdir', 'up'), POSTGRES_UID, POSTGRES_GID);
    assert.equal((await fsp.lstat(mnt('linkdir', 'up'))).uid, POSTGRES_UID);
    assert.equal((await fsp.stat(mnt('target.txt'))).uid, 0);
    durable('symlinks', async () => {
      assert.equal(await fsp.readlink(mnt('link')), 'target.txt');
      assert.equal(await fsp.readlink(mnt('linkdir', 'up')), '../target.txt');
      assert.deepEqual([(await fsp.lstat(mnt('linkdir', 'up'))).uid, (await fsp.stat(mnt('target.txt'))).uid], [POSTGRES_UID, 0]);
      assert.equal(await fsp.readFile(mnt('linkdir', 'up'), 'utf8'), 'through the link');
    });
  });

  await t.test('hard links share content; unlinking one name keeps the other', async () => {
    await fsp.writeFile(mnt('h1'), 'original content');
    await fsp.mkdir(mnt('hdir'));
    await fsp.link(mnt('h1'), mnt('hdir', 'h2'));
    const [s1, s2] = [await fsp.stat(mnt('h1')), await fsp.stat(mnt('hdir', 'h2'))];
    assert.equal(s1.nlink, 2);
    assert.equal(s2.nlink, 2);
    assert.equal(s1.ino, s2.ino, 'two names of one file have one inode number');
    assert.equal(await fsp.readFile(mnt('hdir', 'h2'), 'utf8'), 'original content');
    await withHandle(mnt('h1'), 'r+', (h) => writeAt(h, 0, Buffer.from('CHANGED!')));
    // One kernel inode: the other name's cached read sees the write (and the volume has it).
    assert.equal(await fsp.readFile(mnt('hdir', 'h2'), 'utf8'), 'CHANGED! content');
    assert.equal((await readDirect(mnt('hdir', 'h2'))).toString(), 'CHANGED! content');
    await rejectsWith(fsp.link(mnt('h1'), mnt('hdir', 'h2')), 'EEXIST', 'link over an existing name');
    await rejectsWith(fsp.link(mnt('missing'), mnt('h3')), 'ENOENT', 'link of a missing file');
    await rejectsWith(fsp.link(mnt('hdir'), mnt('hdir-link')), 'EPERM', 'link of a directory');
    await fsp.unlink(mnt('h1'));
    await rejectsWith(fsp.stat(mnt('h1')), 'ENOENT', 'stat of the unlinked name');
    assert.equal((await fsp.stat(mnt('hdir', 'h2'))).nlink, 1, 'the other name shows the unlink at once');
    assert.equal((await readDirect(mnt('hdir', 'h2'))).toString(), 'CHANGED! content');

    // rename of one name of a file onto another name of the same file does nothing.
    await fsp.writeFile(mnt('h5'), 'same file');
    await fsp.link(mnt('h5'), mnt('h6'));
    await fsp.rename(mnt('h5'), mnt('h6'));
    assert.equal((await fsp.stat(mnt('h5'))).nlink, 2);
    assert.equal((await fsp.stat(mnt('h6'))).nlink, 2);
    assert.equal((await readDirect(mnt('h5'))).toString(), 'same file');
    durable('hard links', async () => {
      assert.equal((await readDirect(mnt('hdir', 'h2'))).toString(), 'CHANGED! content');
      assert.equal((await fsp.stat(mnt('hdir', 'h2'))).nlink, 1);
      await rejectsWith(fsp.stat(mnt('h1')), 'ENOENT', 'the unlinked name');
      const [a, b] = [await fsp.stat(mnt('h5')), await fsp.stat(mnt('h6'))];
      assert.deepEqual([a.nlink, b.nlink], [2, 2]);
      assert.equal(a.ino, b.ino);
      assert.equal(await fsp.readFile(mnt('h6'), 'utf8'), 'same file');
    });
  });

  await t.test('rename of files and directories', async () => {
    await fsp.writeFile(mnt('r1'), 'one');
    await fsp.rename(mnt('r1'), mnt('r2'));
    await rejectsWith(fsp.stat(mnt('r1')), 'ENOENT', 'the old name');
    assert.equal(await fsp.readFile(mnt('r2'), 'utf8'), 'one');

    // Over an existing file: the target's old content is gone, the source name is gone.
    await fsp.writeFile(mnt('src'), 'new content');
    await fsp.writeFile(mnt('dst'), 'old content that was longer');
    await fsp.rename(mnt('src'), mnt('dst'));
    await rejectsWith(fsp.stat(mnt('src')), 'ENOENT', 'the source name');
    assert.equal(await fsp.readFile(mnt('dst'), 'utf8'), 'new content');
    assert.equal((await readDirect(mnt('dst'))).toString(), 'new content');
    assert.equal((await fsp.stat(mnt('dst'))).nlink, 1);

    // Over a file that is open: the open handle keeps reading the old file.
    await fsp.writeFile(mnt('open-target'), 'old and still open');
    await fsp.writeFile(mnt('replacement'), 'replacement');
    await withHandle(mnt('open-target'), fsc.O_RDONLY | fsc.O_DIRECT, async (h) => {
      await fsp.rename(mnt('replacement'), mnt('open-target'));
      assert.equal((await readAt(h, 0, 100)).toString(), 'old and still open');
      assert.equal((await readDirect(mnt('open-target'))).toString(), 'replacement');
    });
    await waitForNoHiddenFiles(mnt());

    // A directory with contents, into another directory.
    await fsp.mkdir(mnt('dirA', 'sub'), { recursive: true });
    await fsp.writeFile(mnt('dirA', 'sub', 'f'), 'deep');
    await fsp.mkdir(mnt('dirB'));
    const rootLinks = (await fsp.stat(mnt())).nlink;
    await fsp.rename(mnt('dirA'), mnt('dirB', 'moved'));
    await rejectsWith(fsp.stat(mnt('dirA')), 'ENOENT', 'the old directory name');
    assert.equal(await fsp.readFile(mnt('dirB', 'moved', 'sub', 'f'), 'utf8'), 'deep');
    assert.equal((await fsp.stat(mnt())).nlink, rootLinks - 1);
    assert.equal((await fsp.stat(mnt('dirB'))).nlink, 3);

    // A directory over an empty directory replaces it; over a non-empty one fails.
    await fsp.mkdir(mnt('e1'));
    await fsp.writeFile(mnt('e1', 'file'), 'e1');
    await fsp.mkdir(mnt('e2'));
    await fsp.rename(mnt('e1'), mnt('e2'));
    assert.equal(await fsp.readFile(mnt('e2', 'file'), 'utf8'), 'e1');
    await rejectsWith(fsp.stat(mnt('e1')), 'ENOENT', 'the renamed directory');
    await fsp.mkdir(mnt('e3'));
    await fsp.writeFile(mnt('e3', 'keep'), 'e3');
    await rejectsWith(fsp.rename(mnt('e3'), mnt('e2')), 'ENOTEMPTY', 'rename onto a non-empty directory');
    assert.equal(await fsp.readFile(mnt('e2', 'file'), 'utf8'), 'e1');
    assert.equal(await fsp.readFile(mnt('e3', 'keep'), 'utf8'), 'e3');

    await rejectsWith(fsp.rename(mnt('r2'), mnt('e2')), 'EISDIR', 'rename of a file onto a directory');
    await rejectsWith(fsp.rename(mnt('e2'), mnt('r2')), 'ENOTDIR', 'rename of a directory onto a file');
    await rejectsWith(fsp.rename(mnt('missing'), mnt('r3')), 'ENOENT', 'rename of a missing name');
    await rejectsWith(fsp.rename(mnt('r2'), mnt('missing-dir', 'r2')), 'ENOENT', 'rename into a missing directory');
    await rejectsWith(fsp.rename(mnt('dirB'), mnt('dirB', 'moved', 'inside')), 'EINVAL', 'rename of a directory into itself');
    durable('renames', async () => {
      assert.equal(await fsp.readFile(mnt('r2'), 'utf8'), 'one');
      assert.equal(await fsp.readFile(mnt('dst'), 'utf8'), 'new content');
      assert.equal(await fsp.readFile(mnt('open-target'), 'utf8'), 'replacement');
      await rejectsWith(fsp.stat(mnt('replacement')), 'ENOENT', 'the renamed name');
      await rejectsWith(fsp.stat(mnt('src')), 'ENOENT', 'the source name');
      assert.equal(await fsp.readFile(mnt('dirB', 'moved', 'sub', 'f'), 'utf8'), 'deep');
      await rejectsWith(fsp.stat(mnt('dirA')), 'ENOENT', 'the old directory name');
      assert.deepEqual(await fsp.readdir(mnt('e2')), ['file']);
      assert.deepEqual(await fsp.readdir(mnt('e3')), ['keep']);
      assert.equal((await fsp.stat(mnt('dirB'))).nlink, 3);
    });
  });

  await t.test('unlink', async () => {
    await fsp.writeFile(mnt('doomed'), 'bye');
    await fsp.unlink(mnt('doomed'));
    await rejectsWith(fsp.stat(mnt('doomed')), 'ENOENT', 'stat after unlink');
    assert.ok(!(await fsp.readdir(mnt())).includes('doomed'));
    await rejectsWith(fsp.unlink(mnt('doomed')), 'ENOENT', 'unlink of a missing file');
    await rejectsWith(fsp.unlink(mnt('dirB')), 'EISDIR', 'unlink of a directory');
    await rejectsWith(fsp.unlink(mnt('r2', 'x')), 'ENOTDIR', 'unlink through a file');
    await fsp.unlink(mnt('dangling'));
    durable('unlinked names stay gone', async () => {
      await rejectsWith(fsp.stat(mnt('doomed')), 'ENOENT', 'unlinked file');
      await rejectsWith(fsp.lstat(mnt('dangling')), 'ENOENT', 'unlinked symlink');
    });
  });

  await t.test('fsync and fdatasync on a directory handle', async () => {
    for (const dir of [mnt(), mnt('dirB')]) {
      await withHandle(dir, 'r', async (h) => {
        await h.sync();
        await h.datasync();
        assert.ok((await h.stat()).isDirectory());
      });
    }
  });

  await t.test('statfs', async () => {
    const before = await fsp.statfs(mnt());
    assert.ok(before.bsize > 0);
    assert.ok(before.blocks > 0);
    assert.ok(before.blocks >= before.bfree, `blocks ${before.blocks} >= bfree ${before.bfree}`);
    assert.ok(before.bfree >= before.bavail);
    assert.ok(before.files > 0);
    assert.ok(before.blocks * before.bsize <= 256 * MiB, 'no more space than the device holds');
    await withHandle(mnt('space-user'), 'w', async (h) => {
      await writeAt(h, 0, pattern(7, 2 * MiB));
      await h.sync();
    });
    const after = await fsp.statfs(mnt());
    assert.equal(after.blocks, before.blocks);
    assert.ok(before.bfree - after.bfree >= (2 * MiB) / after.bsize,
      `bfree went from ${before.bfree} to ${after.bfree} after writing 2 MiB`);
  });

  await t.test('access', async () => {
    await fsp.access(mnt('hello.txt'));
    await fsp.access(mnt('hello.txt'), fsc.R_OK | fsc.W_OK);
    await fsp.access(mnt('dirB'), fsc.R_OK | fsc.W_OK | fsc.X_OK);
    await rejectsWith(fsp.access(mnt('missing')), 'ENOENT', 'access of a missing file');
    await rejectsWith(fsp.access(mnt('hello.txt', 'x')), 'ENOTDIR', 'access through a file');
    // As another user the kernel checks the mode bits (default_permissions).
    await run('test', ['-r', mnt('target.txt')], { user: 'postgres' });
    await assert.rejects(run('test', ['-w', mnt('target.txt')], { user: 'postgres' }));
    await run('test', ['-w', mnt('pgdata', 'by-root')], { user: 'postgres' });
  });

  await t.test('ordinary tools: cp -a, tar, diff -r, find, rm -rf', async () => {
    // A local tree (not the repository: others rebuild it while tests run).
    const source = path.join(g.volume.dir, 'src');
    await fsp.mkdir(path.join(source, 'a', 'b'), { recursive: true });
    await fsp.mkdir(path.join(source, 'empty'));
    for (const [name, size] of [['zero', 0], ['one', 1], ['page', PAGE], ['a/big', 300 * KiB + 5], ['a/b/odd', 12345]] as const) {
      await fsp.writeFile(path.join(source, name), pattern(size, size));
    }
    await fsp.chmod(path.join(source, 'a', 'b', 'odd'), 0o600);
    await fsp.symlink('../page', path.join(source, 'a', 'to-page'));
    await run('cp', ['-a', source, mnt('cp-copy')]);
    await run('diff', ['-r', source, mnt('cp-copy')]);
    assert.equal((await fsp.stat(mnt('cp-copy', 'a', 'b', 'odd'))).mode & 0o7777, 0o600);
    assert.equal(await fsp.readlink(mnt('cp-copy', 'a', 'to-page')), '../page');
    await run('sh', ['-c', `tar -C ${JSON.stringify(path.dirname(source))} -cf - src | tar -C ${JSON.stringify(mnt())} -xf - --transform s,^src,tar-copy,`]);
    await run('diff', ['-r', source, mnt('tar-copy')]);
    const found = (await run('find', [mnt('tar-copy'), '-type', 'f'])).trim().split('\n');
    assert.equal(found.length, (await run('find', [source, '-type', 'f'])).trim().split('\n').length);
    await run('rm', ['-rf', mnt('tar-copy')]);
    await rejectsWith(fsp.stat(mnt('tar-copy')), 'ENOENT', 'removed tree');
    durable('copied tree', async () => {
      await run('diff', ['-r', source, mnt('cp-copy')]);
      assert.equal((await fsp.stat(mnt('cp-copy', 'a', 'b', 'odd'))).mode & 0o7777, 0o600);
      assert.equal(await fsp.readlink(mnt('cp-copy', 'a', 'to-page')), '../page');
      await rejectsWith(fsp.stat(mnt('tar-copy')), 'ENOENT', 'removed tree');
    });
  });

  await t.test('survives umount + mount, and fsck is clean', (tt) => g.remountAndVerify(tt));
});

// ---------------------------------------------------------------------------
// File data

/**
 * pwrite(2)s `length` bytes at `position` of `file` straight from anonymous memory no process has touched
 * yet, 3200 bytes into its mapping (zeros; python3's mmap and os.pwrite pass the mapping itself).
 */
async function writeFromUntouchedMemory(file: string, position: number, length: number): Promise<void> {
  await run('python3', ['-c', [
    'import mmap, os, sys',
    'memory = mmap.mmap(-1, 4 * mmap.PAGESIZE)',
    'fd = os.open(sys.argv[1], os.O_WRONLY)',
    'assert os.pwrite(fd, memoryview(memory)[3200:3200 + int(sys.argv[3])], int(sys.argv[2])) == int(sys.argv[3])',
    'os.fsync(fd)',
  ].join('\n'), file, String(position), String(length)]);
}

test('file data: read/write at offsets, truncate, fsync, O_APPEND, unlink while open', async (t) => {
  const g = await startGroup(t, 'fuse-data');
  const { mnt, durable } = g;
  const models = new Map<string, FileModel>();
  const modelOf = (name: string): FileModel => {
    let model = models.get(name);
    if (!model) { model = new FileModel(); models.set(name, model); }
    return model;
  };
  const assertContent = async (name: string, how: 'direct' | 'cached' = 'direct'): Promise<void> => {
    const expected = modelOf(name).data;
    assert.equal((await fsp.stat(mnt(name))).size, expected.length, `${name}: size`);
    const actual = how === 'direct' ? await readDirect(mnt(name)) : await fsp.readFile(mnt(name));
    assert.ok(actual.equals(expected), `${name}: content differs (first difference at ${firstDifference(actual, expected)})`);
  };
  const durableContent = (name: string): void => durable(`content of ${name}`, async () => {
    await assertContent(name, 'direct');
    await assertContent(name, 'cached');
  });

  await t.test('open/create, write and read at offsets: partial page, straddling, whole pages, 128 KiB', async () => {
    const model = modelOf('data');
    await withHandle(mnt('data'), 'w+', async (h) => {
      const writes: Array<[number, Buffer]> = [
        [100, pattern(1, 50)], // partial page, leaves a hole before it
        [PAGE - 200, pattern(2, 400)], // straddles pages 0 and 1
        [3 * PAGE, pattern(3, PAGE)], // one whole page
        [4 * PAGE, pattern(4, 2 * PAGE)], // two whole pages in one write
        [8 * PAGE, pattern(5, 128 * KiB)], // 128 KiB, page-aligned
        [40 * PAGE + 12345, pattern(6, 128 * KiB)], // 128 KiB, unaligned
        [PAGE + 7, pattern(7, 3)], // inside data written before
        [0, pattern(8, 1)], // first byte
      ];
      for (const [position, bytes] of writes) {
        await writeAt(h, position, bytes);
        model.write(position, bytes);
        const back = await readAt(h, position, bytes.length);
        assert.ok(back.equals(bytes), `read back at ${position}`);
      }
      const fst = await h.stat();
      assert.equal(fst.size, model.data.length, 'fstat size');
      assert.ok(fst.isFile());
      // Reads at offsets, through the open handle: across the hole, across pages, past EOF.
      assert.ok((await readAt(h, 0, 200)).equals(model.data.subarray(0, 200)));
      assert.ok((await readAt(h, PAGE - 300, 1000)).equals(model.data.subarray(PAGE - 300, PAGE + 700)));
      assert.equal((await readAt(h, model.data.length - 10, 100)).length, 10, 'a read past EOF is short');
      assert.equal((await readAt(h, model.data.length + PAGE, 100)).length, 0, 'a read beyond EOF is empty');
    });
    await assertContent('data', 'direct');
    await assertContent('data', 'cached');
    // A whole-page write is one image record: PostgreSQL pages are written atomically.
    const versions = JSON.parse(await lsnfsOk(['inspect', '--device', g.volume.device, '--path', '/data', '--page', '3', '--json'], g.volume.env)) as
      { versions: Array<{ kind: string; offset: number; length: number }> };
    assert.deepEqual(versions.versions.map((v) => [v.kind, v.offset, v.length]), [['image', 0, PAGE]]);
    durableContent('data');
  });

  await t.test('many 8 KiB page writes at random pages, then rewrites', async () => {
    const model = modelOf('relation');
    await withHandle(mnt('relation'), 'w+', async (h) => {
      const order = Array.from({ length: 64 }, (_, i) => (i * 37) % 64);
      for (const pageNo of order) {
        const bytes = pattern(100 + pageNo, PAGE);
        await writeAt(h, pageNo * PAGE, bytes);
        model.write(pageNo * PAGE, bytes);
      }
      for (let round = 0; round < 3; round++) {
        for (const pageNo of [0, 5, 63]) {
          const bytes = pattern(1000 * round + pageNo, PAGE);
          await writeAt(h, pageNo * PAGE, bytes);
          model.write(pageNo * PAGE, bytes);
        }
        // Small deltas on top of an image (a hint-bit style update).
        const delta = pattern(5000 + round, 24);
        await writeAt(h, 5 * PAGE + 100 * round, delta);
        model.write(5 * PAGE + 100 * round, delta);
      }
      await h.datasync();
    });
    await assertContent('relation');
    durableContent('relation');
  });

  await t.test('a page written from a buffer that faults midway is one image in a PostgreSQL relation file', async () => {
    // Zeros over a page of pattern, from fresh anonymous memory 3200 bytes into a mapping, as a
    // checkpointer writes a shared buffer it has never touched: the kernel copies a buffered write page
    // by page and sends what it has when the source faults, here [0, 4992) then [4992, 8192).
    await fsp.mkdir(mnt('pgdata', 'base', '5'), { recursive: true });
    const pagesOf = async (name: string): Promise<Array<[string, number, number]>> => {
      const inVolume = `/${path.relative(g.volume.mountpoint, mnt(name))}`;
      const report = JSON.parse(await lsnfsOk(['inspect', '--device', g.volume.device, '--path', inVolume, '--page', '1', '--json'], g.volume.env)) as
        { versions: Array<{ kind: string; offset: number; length: number }> };
      return report.versions.map((v) => [v.kind, v.offset, v.length]);
    };
    for (const name of ['split-elsewhere', 'pgdata/base/5/16384']) {
      const model = modelOf(name);
      await withHandle(mnt(name), 'w+', async (h) => {
        await writeAt(h, 0, pattern(7, 2 * PAGE));
        await h.sync();
      });
      model.write(0, pattern(7, 2 * PAGE));
      await writeFromUntouchedMemory(mnt(name), PAGE, PAGE);
      model.write(PAGE, Buffer.alloc(PAGE));
      await assertContent(name);
      durableContent(name);
    }
    // Elsewhere the page cache stays, and the write is split: what makes the check below mean something.
    // (The first image may be gone already: the horizon passes it once the write over it is durable.)
    assert.deepEqual((await pagesOf('split-elsewhere')).slice(-2), [['delta', 0, 4992], ['delta', 4992, PAGE - 4992]],
      'a write from untouched memory no longer reaches FUSE in two parts on this kernel: this test checks nothing');
    assert.deepEqual((await pagesOf('pgdata/base/5/16384')).slice(-1), [['image', 0, PAGE]], 'the relation page is written whole');
  });

  await t.test('a long chain of small writes to one page reads right (and is folded into an image)', async () => {
    const model = modelOf('chain');
    const base = pattern(90, 3 * PAGE + 100);
    await fsp.writeFile(mnt('chain'), base);
    model.write(0, base);
    await withHandle(mnt('chain'), fsc.O_RDWR | fsc.O_DIRECT, async (h) => {
      for (let round = 0; round < 3; round++) {
        // 40 deltas on page 1 (interior) and on page 3 (the partial last page).
        for (let i = 0; i < 40; i++) {
          for (const pageNo of [1, 3]) {
            const position = pageNo * PAGE + ((i * 53 + round * 7) % (pageNo === 3 ? 90 : PAGE - 10));
            const bytes = pattern(1000 + round * 100 + i, 7);
            await writeAt(h, position, bytes);
            model.write(position, bytes);
          }
        }
        const back = await readAt(h, 0, model.data.length + 100);
        assert.ok(back.equals(model.data), `round ${round}: differs at ${firstDifference(back, model.data)}`);
        assert.equal((await h.stat()).size, model.data.length, 'a read does not change the size');
      }
    });
    await assertContent('chain');
    durableContent('chain');
  });

  await t.test('a read that folds a delta chain changes neither mtime nor size, also after remount', async () => {
    await fsp.writeFile(mnt('fold-times'), pattern(95, PAGE + 100));
    let before = 0;
    await withHandle(mnt('fold-times'), fsc.O_RDWR | fsc.O_DIRECT, async (h) => {
      for (let i = 0; i < 20; i++) await writeAt(h, PAGE + 10 * (i % 10), Buffer.from([i]));
      before = (await fsp.stat(mnt('fold-times'))).mtimeMs;
      await sleep(20);
      await readAt(h, 0, 2 * PAGE);
      const after = await h.stat();
      assert.equal(after.mtimeMs, before);
      assert.equal(after.size, PAGE + 100);
    });
    durable('fold-times', async () => {
      const st = await fsp.stat(mnt('fold-times'));
      assert.equal(st.mtimeMs, before);
      assert.equal(st.size, PAGE + 100);
    });
  });

  await t.test('concurrent writers on separate handles with interleaved fdatasync', async () => {
    const files = ['c0', 'c1', 'c2', 'c3'];
    await Promise.all(files.map(async (name, f) => {
      const model = modelOf(name);
      await withHandle(mnt(name), 'w+', async (h) => {
        for (let i = 0; i < 32; i++) {
          const pageNo = (i * 11) % 32;
          const bytes = pattern(2000 + f * 100 + i, PAGE);
          await writeAt(h, pageNo * PAGE, bytes);
          model.write(pageNo * PAGE, bytes);
          if (i % 4 === 3) await h.datasync();
        }
        // A shared file too: each writer owns its own pages.
        const shared = modelOf('c-shared');
        await withHandle(mnt('c-shared'), fsc.O_RDWR | fsc.O_CREAT, async (s) => {
          for (let i = 0; i < 8; i++) {
            const bytes = pattern(3000 + f * 10 + i, PAGE);
            await writeAt(s, (i * files.length + f) * PAGE, bytes);
            shared.write((i * files.length + f) * PAGE, bytes);
          }
          await s.sync();
        }, 0o644);
      });
    }));
    for (const name of [...files, 'c-shared']) {
      await assertContent(name);
      durableContent(name);
    }
  });

  await t.test('mtime and ctime move on write; fstat on an open handle', async () => {
    const old = new Date(1_500_000_000_000);
    await fsp.writeFile(mnt('stamped'), 'x');
    await fsp.utimes(mnt('stamped'), old, old);
    await withHandle(mnt('stamped'), 'r+', async (h) => {
      assert.equal((await h.stat()).mtimeMs, old.getTime());
      const before = Date.now();
      await writeAt(h, 1, Buffer.from('yz'));
      const byHandle = await h.stat();
      const byPath = await fsp.stat(mnt('stamped'));
      for (const st of [byHandle, byPath]) {
        assert.ok(st.mtimeMs >= before - 2000, `mtime ${st.mtimeMs} moved to now (${before})`);
        assert.ok(st.ctimeMs >= before - 2000, 'ctime moved');
        assert.equal(st.size, 3);
      }
    });
    modelOf('stamped').write(0, Buffer.from('xyz'));
    durableContent('stamped');
  });

  await t.test('truncate by path: shrink mid-page then extend reads zeros; grow', async () => {
    const model = modelOf('trunc');
    const initial = pattern(20, 3 * PAGE);
    await fsp.writeFile(mnt('trunc'), initial);
    model.write(0, initial);
    // Read it once through the page cache so the kernel has the old tail cached.
    assert.ok((await fsp.readFile(mnt('trunc'))).equals(initial));
    await fsp.truncate(mnt('trunc'), PAGE + 1000);
    model.resize(PAGE + 1000);
    assert.equal((await fsp.stat(mnt('trunc'))).size, PAGE + 1000);
    await assertContent('trunc');
    await fsp.truncate(mnt('trunc'), 4 * PAGE);
    model.resize(4 * PAGE);
    const tail = await readDirect(mnt('trunc'), PAGE + 1000, 3 * PAGE - 1000);
    assert.ok(tail.equals(Buffer.alloc(tail.length)), 'the cut-off tail reads as zeros after growing again');
    await assertContent('trunc', 'direct');
    await assertContent('trunc', 'cached');
    // Shrink to a page boundary and to zero, then grow from empty.
    await fsp.truncate(mnt('trunc'), 2 * PAGE);
    model.resize(2 * PAGE);
    await assertContent('trunc');
    const more = pattern(21, 500);
    await withHandle(mnt('trunc'), 'r+', (h) => writeAt(h, 3 * PAGE, more));
    model.write(3 * PAGE, more);
    await assertContent('trunc');
    await rejectsWith(fsp.truncate(mnt('missing'), 10), 'ENOENT', 'truncate of a missing file');
    await rejectsWith(fsp.truncate(mnt(), 10), 'EISDIR', 'truncate of a directory');
    durableContent('trunc');
  });

  await t.test('ftruncate through an open handle: shrink mid-page, extend, grow, to zero', async () => {
    const model = modelOf('ftrunc');
    await withHandle(mnt('ftrunc'), 'w+', async (h) => {
      const initial = pattern(30, 2 * PAGE + 300);
      await writeAt(h, 0, initial);
      model.write(0, initial);
      await h.truncate(777);
      model.resize(777);
      assert.equal((await h.stat()).size, 777);
      await h.truncate(3 * PAGE);
      model.resize(3 * PAGE);
      const back = await readAt(h, 0, 3 * PAGE);
      assert.ok(back.equals(model.data), `handle read after shrink+extend differs at ${firstDifference(back, model.data)}`);
      await h.truncate(0);
      model.resize(0);
      assert.equal((await h.stat()).size, 0);
      await h.truncate(20000);
      model.resize(20000);
      const grown = await readAt(h, 0, 20000);
      assert.ok(grown.equals(Buffer.alloc(20000)), 'growing an empty file gives zeros');
      const last = pattern(31, 10);
      await writeAt(h, 19990, last);
      model.write(19990, last);
    });
    await assertContent('ftrunc');
    // O_TRUNC on open is a truncate too.
    await fsp.writeFile(mnt('otrunc'), pattern(32, 5000));
    await fsp.writeFile(mnt('otrunc'), 'short');
    modelOf('otrunc').write(0, Buffer.from('short'));
    await assertContent('otrunc');
    durableContent('ftrunc');
    durableContent('otrunc');
  });

  await t.test('O_APPEND writes land at the end, from two handles', async () => {
    const expected = Buffer.concat([Buffer.from('start;'), Buffer.from('one;'), Buffer.from('two;'), pattern(40, 9000), Buffer.from('end;')]);
    await fsp.writeFile(mnt('appended'), 'start;');
    const a = await fsp.open(mnt('appended'), 'a');
    const b = await fsp.open(mnt('appended'), 'a');
    try {
      await a.write('one;');
      await b.write('two;');
      await a.write(pattern(40, 9000));
      await b.write('end;');
    } finally {
      await a.close();
      await b.close();
    }
    await fsp.appendFile(mnt('appended'), 'more');
    modelOf('appended').write(0, Buffer.concat([expected, Buffer.from('more')]));
    await assertContent('appended', 'direct');
    await assertContent('appended', 'cached');
    durableContent('appended');
  });

  await t.test('a file unlinked while open stays readable and writable through the handle', async () => {
    await fsp.mkdir(mnt('tmpdir'));
    const file = mnt('tmpdir', 'open-unlinked');
    const first = pattern(50, 20000);
    const second = pattern(51, 10000);
    // O_DIRECT so the reads below come from the daemon, not the page cache.
    const h = await fsp.open(file, fsc.O_RDWR | fsc.O_CREAT | fsc.O_DIRECT, 0o644);
    try {
      await writeAt(h, 0, first);
      await fsp.unlink(file);
      await rejectsWith(fsp.stat(file), 'ENOENT', 'stat of the unlinked name');
      assert.ok(!(await fsp.readdir(mnt('tmpdir'))).includes('open-unlinked'));
      assert.ok((await readAt(h, 0, first.length)).equals(first));
      await writeAt(h, first.length, second);
      assert.ok((await readAt(h, 0, 30000)).equals(Buffer.concat([first, second])));
      const st = await h.stat();
      assert.equal(st.size, 30000);
      await h.sync();
    } finally {
      await h.close();
    }
    await waitForNoHiddenFiles(mnt('tmpdir'));
    await fsp.rmdir(mnt('tmpdir'));
    durable('the unlinked file is gone', async () => {
      await rejectsWith(fsp.stat(mnt('tmpdir')), 'ENOENT', 'removed directory');
      assert.deepEqual((await fsp.readdir(mnt())).filter((n) => n.startsWith('.fuse_hidden')), []);
    });
  });

  await t.test('an open racing with an unlink of the name fails with ENOENT or reads the whole file', async () => {
    // pg_ctl reads postmaster.pid while the postmaster removes it: the kernel may look the name up, the
    // unlink may then run, and the open come after it. An open that succeeds must read the file as it was.
    const file = mnt('raced');
    const content = '4242\n/var/lib/data\n';
    const ROUNDS = 2000;
    const churn = `const fs = require('fs'); for (let i = 0; i < ${ROUNDS}; i++) { fs.writeFileSync(${JSON.stringify(file)}, ${JSON.stringify(content)}); fs.unlinkSync(${JSON.stringify(file)}); }`;
    const probe = `const fs = require('fs'); const seen = { opened: 0, gone: 0, bad: [] };
      const end = Date.now() + 60000;
      while (!fs.existsSync(${JSON.stringify(mnt('raced.done'))}) && Date.now() < end) {
        let fd;
        try { fd = fs.openSync(${JSON.stringify(file)}, 'r'); } catch (e) { if (e.code !== 'ENOENT') seen.bad.push('open: ' + e.code); seen.gone++; continue; }
        seen.opened++;
        try { const text = fs.readFileSync(fd, 'utf8'); if (text !== '' && text !== ${JSON.stringify(content)}) seen.bad.push('read: ' + JSON.stringify(text)); }
        catch (e) { seen.bad.push('read: ' + e.code); }
        finally { fs.closeSync(fd); }
      }
      process.stdout.write(JSON.stringify(seen));`;
    const probing = run(process.execPath, ['-e', probe]);
    await run(process.execPath, ['-e', churn]);
    await fsp.writeFile(mnt('raced.done'), '');
    const seen = JSON.parse(await probing) as { opened: number; gone: number; bad: string[] };
    await fsp.unlink(mnt('raced.done'));
    assert.deepEqual(seen.bad, [], `${seen.opened} opens succeeded, ${seen.gone} found no file`);
    assert.ok(seen.opened > 0 && seen.gone > 0, `the race ran both ways: ${seen.opened} opened, ${seen.gone} gone`);
  });

  await t.test('fsync and fdatasync make data durable across a daemon crash', async () => {
    const synced = pattern(60, 3 * PAGE + 17);
    const datasynced = pattern(61, 128 * KiB);
    await withHandle(mnt('fsynced'), 'w', async (h) => {
      await writeAt(h, 0, synced);
      await h.sync();
    });
    await withHandle(mnt('fdatasynced'), 'w', async (h) => {
      await writeAt(h, 0, datasynced);
      await h.datasync();
    });
    modelOf('fsynced').write(0, synced);
    modelOf('fdatasynced').write(0, datasynced);
    await crashDaemon(g.volume);
    await mount(g.volume);
    await assertContent('fsynced');
    await assertContent('fdatasynced');
    // Earlier files are in the log prefix the fsync made durable.
    await assertContent('data');
    durableContent('fsynced');
    durableContent('fdatasynced');
  });

  await t.test('errors: ENOENT, EEXIST, EISDIR, ENOTDIR', async () => {
    await fsp.mkdir(mnt('adir'));
    await rejectsWith(fsp.open(mnt('missing'), 'r'), 'ENOENT', 'open of a missing file');
    await rejectsWith(fsp.open(mnt('data'), 'wx'), 'EEXIST', 'exclusive create of an existing file');
    await rejectsWith(fsp.readFile(mnt('adir')), 'EISDIR', 'read of a directory');
    await rejectsWith(fsp.open(mnt('adir'), 'w'), 'EISDIR', 'open of a directory for writing');
    await rejectsWith(fsp.open(mnt('data', 'x'), 'r'), 'ENOTDIR', 'open through a file');
    await rejectsWith(fsp.writeFile(mnt('missing-dir', 'x'), ''), 'ENOENT', 'create in a missing directory');
    // The failed exclusive create changed nothing.
    await assertContent('data');
  });

  await t.test('survives umount + mount, and fsck is clean', (tt) => g.remountAndVerify(tt));
});

function firstDifference(a: Buffer, b: Buffer): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : n;
}

// ---------------------------------------------------------------------------
// Sparse and large files

test('sparse and large files: holes read as zeros, sizes beyond 1 GiB and 2^32', async (t) => {
  const g = await startGroup(t, 'fuse-sparse');
  const { mnt, durable } = g;

  await t.test('1 byte at 100 MiB: size, zero hole, few blocks', async () => {
    const at = 100 * MiB;
    await withHandle(mnt('sparse'), 'w', (h) => writeAt(h, at, Buffer.from([0xab])));
    const check = async (): Promise<void> => {
      const st = await fsp.stat(mnt('sparse'));
      assert.equal(st.size, at + 1);
      assert.ok(st.blocks <= 64, `a 1-byte write at 100 MiB holds ${st.blocks} blocks`);
      for (const position of [0, 50 * MiB + 3, at - PAGE]) {
        const hole = await readDirect(mnt('sparse'), position, PAGE);
        assert.ok(hole.equals(Buffer.alloc(PAGE)), `hole at ${position} reads zeros`);
      }
      const end = await readDirect(mnt('sparse'), at - 10, 100);
      assert.equal(end.length, 11);
      assert.ok(end.equals(Buffer.concat([Buffer.alloc(10), Buffer.from([0xab])])));
      const cached = await withHandle(mnt('sparse'), 'r', (h) => readAt(h, at - 4 * PAGE, 5 * PAGE));
      assert.ok(cached.equals(Buffer.concat([Buffer.alloc(4 * PAGE), Buffer.from([0xab])])));
    };
    await check();
    durable('sparse file', check);
  });

  await t.test('a write at 1.5 GiB reads back', async () => {
    const at = 1.5 * GiB;
    const bytes = pattern(70, PAGE + 100);
    await withHandle(mnt('big'), 'w+', async (h) => {
      await writeAt(h, at, bytes);
      assert.ok((await readAt(h, at, bytes.length)).equals(bytes));
    });
    const check = async (): Promise<void> => {
      const st = await fsp.stat(mnt('big'));
      assert.equal(st.size, at + bytes.length);
      assert.ok(st.blocks <= 64);
      assert.ok((await readDirect(mnt('big'), at, bytes.length)).equals(bytes));
      assert.ok((await readDirect(mnt('big'), at - PAGE, PAGE)).equals(Buffer.alloc(PAGE)));
      assert.ok((await readDirect(mnt('big'), GiB, PAGE)).equals(Buffer.alloc(PAGE)));
    };
    await check();
    durable('file beyond 1 GiB', check);
  });

  await t.test('sizes and offsets above 2^32: writes, truncate down and up', async () => {
    const two32 = 2 ** 32;
    const across32 = pattern(80, 8); // straddles byte 2^32
    const across5g = pattern(81, 100); // straddles the page boundary at 5 GiB
    await withHandle(mnt('huge'), 'w+', async (h) => {
      await writeAt(h, two32 - 4, across32);
      await writeAt(h, 5 * GiB - 50, across5g);
      assert.equal((await h.stat()).size, 5 * GiB + 50);
      assert.ok((await readAt(h, two32 - 4, 8)).equals(across32));
      assert.ok((await readAt(h, 5 * GiB - 50, 100)).equals(across5g));
      await h.truncate(two32 + 5000);
      assert.equal((await h.stat()).size, two32 + 5000);
    });
    assert.equal((await fsp.stat(mnt('huge'))).size, two32 + 5000);
    await fsp.truncate(mnt('huge'), 6 * GiB);
    const check = async (): Promise<void> => {
      const st = await fsp.stat(mnt('huge'));
      assert.equal(st.size, 6 * GiB);
      assert.ok(st.blocks <= 64, `${st.blocks} blocks`);
      assert.ok((await readDirect(mnt('huge'), two32 - 4, 8)).equals(across32));
      // Cut off by the truncate to 2^32 + 5000, so zeros after growing to 6 GiB.
      assert.ok((await readDirect(mnt('huge'), 5 * GiB - 50, 100)).equals(Buffer.alloc(100)));
      const tail = await readDirect(mnt('huge'), 6 * GiB - 10, 100);
      assert.ok(tail.equals(Buffer.alloc(10)), 'a read at the end of a 6 GiB file is short and zero');
    };
    await check();
    durable('file beyond 2^32', check);
  });

  await t.test('survives umount + mount, and fsck is clean', (tt) => g.remountAndVerify(tt));
});

// ---------------------------------------------------------------------------
// Many files in one directory

test('10 000 files in one directory: create, list, stat, remove', async (t) => {
  const g = await startGroup(t, 'fuse-many');
  const { mnt } = g;
  const COUNT = 10_000;
  const names = Array.from({ length: COUNT }, (_, i) => `file-${String(i).padStart(5, '0')}`);
  const contentOf = (name: string): string => `${name}\n`;
  await fsp.mkdir(mnt('many'));

  await t.test('create 10 000 files, 32 at a time', async () => {
    await forEachLimit(names, 32, (name) => fsp.writeFile(mnt('many', name), contentOf(name)));
  });

  const checkAll = async (): Promise<void> => {
    const listed = await fsp.readdir(mnt('many'));
    assert.equal(listed.length, COUNT);
    assert.deepEqual(listed.sort(), names);
    for (const name of [names[0]!, names[1234]!, names[5000]!, names[COUNT - 1]!]) {
      const st = await fsp.stat(mnt('many', name));
      assert.ok(st.isFile());
      assert.equal(st.size, contentOf(name).length);
      assert.equal(await fsp.readFile(mnt('many', name), 'utf8'), contentOf(name));
    }
    assert.equal((await rawDirectoryListing(mnt('many'))).length, COUNT + 2);
  };
  await t.test('readdir returns all 10 000; stat and read a few', checkAll);
  await t.test('all 10 000 survive umount + mount', async () => {
    await umount(g.volume);
    await mount(g.volume);
    await checkAll();
  });

  await t.test('remove all 10 000', async () => {
    await forEachLimit(names, 32, (name) => fsp.unlink(mnt('many', name)));
    assert.deepEqual(await fsp.readdir(mnt('many')), []);
    await fsp.rmdir(mnt('many'));
  });
  g.durable('the directory is gone', async () => {
    await rejectsWith(fsp.stat(mnt('many')), 'ENOENT', 'removed directory');
    assert.deepEqual(await fsp.readdir(mnt()), []);
    const st = await fsp.statfs(mnt());
    assert.ok(st.blocks >= st.bfree);
  });

  await t.test('survives umount + mount, and fsck is clean', (tt) => g.remountAndVerify(tt));
});
