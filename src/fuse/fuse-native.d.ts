// Types for the parts of fuse-native 2.2.6 lsnfs uses (the package ships none).
declare module 'fuse-native' {
  type Callback<T = void> = T extends void ? (errno: number) => void : (errno: number, value?: T) => void;
  export interface FuseStat {
    mode: number; uid: number; gid: number; size: number; nlink: number; ino: number;
    atime: number; mtime: number; ctime: number; blocks: number; blksize: number; dev?: number; rdev?: number;
  }
  export interface FuseStatFs {
    bsize: number; frsize: number; blocks: number; bfree: number; bavail: number;
    files: number; ffree: number; favail: number; fsid: number; flag: number; namemax: number;
  }
  export interface FuseOps {
    init?(cb: Callback): void;
    statfs?(path: string, cb: Callback<FuseStatFs>): void;
    getattr?(path: string, cb: Callback<FuseStat>): void;
    fgetattr?(path: string, fd: number, cb: Callback<FuseStat>): void;
    access?(path: string, mode: number, cb: Callback): void;
    open?(path: string, flags: number, cb: Callback<number>): void;
    opendir?(path: string, flags: number, cb: Callback<number>): void;
    create?(path: string, mode: number, cb: Callback<number>): void;
    utimens?(path: string, atime: number, mtime: number, cb: Callback): void;
    release?(path: string, fd: number, cb: Callback): void;
    releasedir?(path: string, fd: number, cb: Callback): void;
    read?(path: string, fd: number, buf: Buffer, len: number, pos: number, cb: (bytes: number) => void): void;
    write?(path: string, fd: number, buf: Buffer, len: number, pos: number, cb: (bytes: number) => void): void;
    readdir?(path: string, cb: (errno: number, names?: string[], stats?: FuseStat[]) => void): void;
    flush?(path: string, fd: number, cb: Callback): void;
    fsync?(path: string, datasync: boolean, fd: number, cb: Callback): void;
    fsyncdir?(path: string, datasync: boolean, fd: number, cb: Callback): void;
    truncate?(path: string, size: number, cb: Callback): void;
    ftruncate?(path: string, fd: number, size: number, cb: Callback): void;
    readlink?(path: string, cb: Callback<string>): void;
    chown?(path: string, uid: number, gid: number, cb: Callback): void;
    chmod?(path: string, mode: number, cb: Callback): void;
    mknod?(path: string, mode: number, dev: number, cb: Callback): void;
    unlink?(path: string, cb: Callback): void;
    rename?(src: string, dest: string, cb: Callback): void;
    link?(src: string, dest: string, cb: Callback): void;
    symlink?(target: string, path: string, cb: Callback): void;
    mkdir?(path: string, mode: number, cb: Callback): void;
    rmdir?(path: string, cb: Callback): void;
  }
  export interface FuseOptions {
    timeout?: number | false; allowOther?: boolean; defaultPermissions?: boolean; kernelCache?: boolean;
    autoCache?: boolean; attrTimeout?: number; entryTimeout?: number; maxRead?: number; fsname?: string;
    subtype?: string; force?: boolean; mkdir?: boolean; debug?: boolean;
  }
  class Fuse {
    constructor(mountpoint: string, ops: FuseOps, options?: FuseOptions);
    mount(cb: (error: Error | null) => void): void;
    static [errno: string]: number;
  }
  export default Fuse;
}
