/**
 * fuse-native ops -> Volume calls. Translation only: paths and handles in,
 * errno out. Every decision about the filesystem lives in the Volume.
 *
 * fuse-native does not tell us the calling process's uid/gid, so a new file
 * or directory takes the owner of its parent directory (chown a directory to
 * give its future contents an owner, as PostgreSQL's data directory is).
 * fuse-native 2.2.6 also passes atime as mtime to utimens; both get the value.
 */
import Fuse, { FuseOps, FuseStat } from 'fuse-native';
import pino from 'pino';
import { FsError } from '../util/errors';
import { Stat } from '../volume/volume';
import { FileSystem } from '../volume/file-system';
import { S_IFREG } from '../volume/state';

const log = pino({ name: 'lsnfs-fuse' }, pino.destination(2));
const UID_UNCHANGED = 0xffffffff;

function toFuseStat(stat: Stat): FuseStat {
  return {
    mode: stat.mode, uid: stat.uid, gid: stat.gid, size: stat.size, nlink: stat.nlink, ino: stat.ino,
    atime: stat.atimeMs, mtime: stat.mtimeMs, ctime: stat.ctimeMs, blocks: stat.blocks, blksize: stat.blksize,
  };
}

function errnoOf(error: unknown, op: string, path: string): number {
  if (error instanceof FsError) return Fuse[error.errno] ?? -5;
  log.error({ err: error, op, path }, 'unexpected error in filesystem operation');
  return Fuse.EIO!;
}

export function fuseOps(volume: FileSystem): FuseOps {
  const openFiles = new Map<number, number>(); // handle -> ino
  let nextHandle = 1;
  const inoOf = (fd: number, path: string): number => openFiles.get(fd) ?? volume.lookupIno(path);

  /** Runs an op and answers the kernel: 0 or the value on success, a negative errno on failure. */
  function run<T>(op: string, path: string, cb: (errno: number, value?: T) => void, body: () => T | Promise<T>): void {
    let result: T | Promise<T>;
    try {
      result = body();
    } catch (error) {
      cb(errnoOf(error, op, path));
      return;
    }
    if (result instanceof Promise) result.then((value) => cb(0, value), (error) => cb(errnoOf(error, op, path)));
    else cb(0, result);
  }
  const ownerOfParent = (path: string): { uid: number; gid: number } => {
    const parent = volume.getattr(path.slice(0, path.lastIndexOf('/')) || '/');
    return { uid: parent.uid, gid: parent.gid };
  };
  const openHandle = (ino: number): number => { const fd = nextHandle++; openFiles.set(fd, ino); return fd; };

  return {
    init: (cb) => cb(0),
    statfs: (path, cb) => run('statfs', path, cb, () => {
      const s = volume.statfs();
      return {
        bsize: s.blockBytes, frsize: s.blockBytes, blocks: s.totalBlocks, bfree: s.freeBlocks, bavail: s.freeBlocks,
        files: s.files, ffree: s.freeFiles, favail: s.freeFiles, fsid: 0, flag: 0, namemax: s.nameMax,
      };
    }),
    getattr: (path, cb) => run('getattr', path, cb, () => toFuseStat(volume.getattr(path))),
    fgetattr: (path, fd, cb) => run('fgetattr', path, cb, () => toFuseStat(volume.fgetattr(inoOf(fd, path), path))),
    access: (path, _mode, cb) => run('access', path, cb, () => { volume.lookupIno(path); }),
    readdir: (path, cb) => {
      try {
        cb(0, ['.', '..', ...volume.readdir(path)]);
      } catch (error) {
        cb(errnoOf(error, 'readdir', path));
      }
    },
    opendir: (path, _flags, cb) => run('opendir', path, cb, () => { volume.lookupIno(path); return 0; }),
    releasedir: (_path, _fd, cb) => cb(0),
    open: (path, _flags, cb) => run('open', path, cb, () => openHandle(volume.lookupIno(path))),
    create: (path, mode, cb) => run('create', path, cb, async () => {
      const { uid, gid } = ownerOfParent(path);
      const inode = await volume.create(path, S_IFREG | (mode & 0o7777), uid, gid);
      return openHandle(inode.ino);
    }),
    mknod: (path, mode, _dev, cb) => run('mknod', path, cb, async () => {
      if ((mode & 0o170000) !== S_IFREG) throw new FsError('EPERM', `${path}: only regular files can be created with mknod`);
      const { uid, gid } = ownerOfParent(path);
      await volume.create(path, mode, uid, gid);
    }),
    release: (_path, fd, cb) => { openFiles.delete(fd); cb(0); },
    read: (path, fd, buf, len, pos, cb) => {
      volume.read(inoOf(fd, path), pos, len).then(
        (data) => { data.copy(buf); cb(data.length); },
        (error) => cb(errnoOf(error, 'read', path)),
      );
    },
    write: (path, fd, buf, len, pos, cb) => {
      let ino: number;
      try {
        ino = inoOf(fd, path);
      } catch (error) {
        cb(errnoOf(error, 'write', path));
        return;
      }
      volume.write(ino, pos, buf.subarray(0, len), path).then(cb, (error) => cb(errnoOf(error, 'write', path)));
    },
    flush: (_path, _fd, cb) => cb(0),
    fsync: (path, _datasync, _fd, cb) => run('fsync', path, cb, () => volume.sync()),
    fsyncdir: (path, _datasync, _fd, cb) => run('fsyncdir', path, cb, () => volume.sync()),
    truncate: (path, size, cb) => run('truncate', path, cb, () => volume.truncate(volume.lookupIno(path), size, path)),
    ftruncate: (path, fd, size, cb) => run('ftruncate', path, cb, () => volume.truncate(inoOf(fd, path), size, path)),
    readlink: (path, cb) => run('readlink', path, cb, () => volume.readlink(path)),
    chown: (path, uid, gid, cb) => run('chown', path, cb, () => volume.setattr(path, {
      ...(uid !== UID_UNCHANGED ? { uid } : {}), ...(gid !== UID_UNCHANGED ? { gid } : {}),
    })),
    chmod: (path, mode, cb) => run('chmod', path, cb, () => volume.setattr(path, { mode })),
    utimens: (path, atime, mtime, cb) => run('utimens', path, cb, () => volume.setattr(path, { atimeMs: atime, mtimeMs: mtime })),
    unlink: (path, cb) => run('unlink', path, cb, () => volume.unlink(path)),
    rename: (src, dest, cb) => run('rename', src, cb, () => volume.rename(src, dest)),
    link: (src, dest, cb) => run('link', src, cb, () => volume.link(src, dest)),
    symlink: (target, path, cb) => run('symlink', path, cb, async () => {
      const { uid, gid } = ownerOfParent(path);
      await volume.symlink(target, path, uid, gid);
    }),
    mkdir: (path, mode, cb) => run('mkdir', path, cb, async () => {
      const { uid, gid } = ownerOfParent(path);
      await volume.mkdir(path, mode, uid, gid);
    }),
    rmdir: (path, cb) => run('rmdir', path, cb, () => volume.rmdir(path)),
  };
}
