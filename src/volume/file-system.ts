/**
 * What the FUSE adapter needs from a mounted filesystem: a Volume (primary,
 * replica, snapshot, branch) or a StandbyVolume (a replica with a private
 * overlay for a PostgreSQL standby). Paths are absolute inside the volume;
 * inode numbers come from lookupIno/create and stay valid while a file is open.
 */
import type { Stat, StatFs } from './volume';

/** A directory entry: its name and its file type (the S_IFMT bits of its mode). */
export interface DirEntry { name: string; fileType: number }

/** Where a read comes from, for a filesystem that serves some reads differently (StandbyVolume.read). */
export interface ReadOrigin {
  /** The open file (FUSE file handle) the read comes through: a new one per open(2). */
  handle: number;
  /**
   * Lets a read that waits hear that the kernel interrupted it (a signal reached the reading process),
   * so that it answers at once.
   */
  onInterrupt(callback: () => void): void;
}

/** Bytes [position, position + length) of a file of `size` bytes, put together from its pages (`pageAt`). */
export async function readPages(size: number, position: number, length: number, pageBytes: number, pageAt: (pageNo: number) => Promise<Buffer>): Promise<Buffer> {
  const end = Math.min(size, position + length);
  if (end <= position) return Buffer.alloc(0);
  const firstPage = Math.floor(position / pageBytes);
  const lastPage = Math.floor((end - 1) / pageBytes);
  const pages = await Promise.all(Array.from({ length: lastPage - firstPage + 1 }, (_, i) => pageAt(firstPage + i)));
  const whole = pages.length === 1 ? pages[0]! : Buffer.concat(pages);
  return whole.subarray(position - firstPage * pageBytes, end - firstPage * pageBytes);
}

export type AttrChange = { mode?: number; uid?: number; gid?: number; atimeMs?: number; mtimeMs?: number };

export interface FileSystem {
  statfs(): StatFs;
  getattr(path: string): Stat;
  /** Attributes of an open file (by the inode number it was opened as). */
  fgetattr(ino: number, path: string): Stat;
  lookupIno(path: string): number;
  readdir(path: string): DirEntry[];
  readlink(path: string): string;
  create(path: string, mode: number, uid: number, gid: number): Promise<{ ino: number }>;
  mkdir(path: string, mode: number, uid: number, gid: number): Promise<unknown>;
  symlink(target: string, path: string, uid: number, gid: number): Promise<unknown>;
  link(existingPath: string, newPath: string): Promise<void>;
  unlink(path: string): Promise<void>;
  rmdir(path: string): Promise<void>;
  rename(from: string, to: string): Promise<void>;
  setattr(path: string, change: AttrChange): Promise<void>;
  truncate(ino: number, size: number, path?: string): Promise<void>;
  read(ino: number, position: number, length: number, origin?: ReadOrigin): Promise<Buffer>;
  write(ino: number, position: number, data: Buffer, path?: string): Promise<number>;
  /** fsync of anything: the whole log prefix becomes durable. `ino`: the file or directory fsync'd. */
  sync(ino?: number): Promise<void>;
  /**
   * Whether reads of this file should bypass the kernel's page cache (FUSE
   * direct I/O) even where the mount otherwise uses it: a file another host
   * keeps appending to, whose cached pages every open would drop anyway.
   */
  bypassesPageCache?(ino: number): boolean;
  /**
   * How long the kernel may trust that the name `name` in directory `parentIno` leads to `ino` (null: to
   * nothing), and that file's attributes, where that is longer than the mount's timeouts; undefined: the
   * mount's. A name another host changes may still be one this mount's reader never sees change.
   */
  nameValidMs?(parentIno: number, name: string, ino: number | null): number | undefined;
}
