import { promises as fsp, constants as fsConstants } from 'node:fs';
import PQueue from 'p-queue';
import { BlockDevice } from './device';
import { UserError, assert } from '../util/errors';
import { nativeAddon } from '../util/native';

interface NativeFileIo {
  /** Bytes read into `buffer` (from its start), or -errno; -EAGAIN where the read would have waited. */
  preadNoWait(fd: number, buffer: Uint8Array, offset: number): number;
}

const fileIo = nativeAddon<NativeFileIo>(['preadNoWait']);

/** How many device reads/writes may be in flight at once (libuv has 4 threads). */
const FILE_DEVICE_MAX_IN_FLIGHT = 8;

/**
 * A regular file or a block device node, accessed with positioned async I/O.
 * Durability comes from fdatasync, which for a block device flushes the
 * device's volatile cache as well.
 */
export class FileDevice implements BlockDevice {
  private readonly queue = new PQueue({ concurrency: FILE_DEVICE_MAX_IN_FLIGHT });

  private constructor(
    readonly name: string,
    private readonly handle: fsp.FileHandle,
    readonly sizeBytes: number,
    readonly readOnly: boolean,
    readonly allocatesOnWrite: boolean,
  ) {}

  static async open(path: string, options: { readOnly: boolean }): Promise<FileDevice> {
    const access = options.readOnly ? fsConstants.O_RDONLY : fsConstants.O_RDWR;
    let handle: fsp.FileHandle;
    try {
      // O_NOATIME: a device file is read all the time (a replica polls its tail every few ms) while the
      // primary writes it, so with relatime nearly every read would dirty the inode for a new atime: a
      // journal update per poll on the host filesystem, which a replica must not write and whose journal
      // the primary's fdatasync shares. Only the file's owner (or root) may ask for it.
      handle = await fsp.open(path, access | fsConstants.O_NOATIME).catch((error: NodeJS.ErrnoException) => {
        if (error.code === 'EPERM') return fsp.open(path, access);
        throw error;
      });
    } catch (error) {
      throw new UserError(`device ${path}: cannot open (${(error as NodeJS.ErrnoException).code ?? error})`);
    }
    const stat = await handle.stat();
    let sizeBytes = stat.size;
    if (stat.isBlockDevice()) {
      // stat() reports 0 for block devices; the end offset is their size.
      const probe = await fsp.open(path, fsConstants.O_RDONLY);
      try {
        sizeBytes = await blockDeviceSize(probe);
      } finally {
        await probe.close();
      }
    } else if (!stat.isFile()) {
      await handle.close();
      throw new UserError(`device ${path}: not a regular file or block device`);
    }
    return new FileDevice(path, handle, sizeBytes, options.readOnly, stat.isFile());
  }

  /**
   * What the page cache holds is copied in place, without waiting (RWF_NOWAIT); only the rest goes
   * through the thread pool. A replica's poll of the log tail and the primary's holder-block check
   * after every flush read what was just written: in place they cost ~2 us of CPU instead of ~20 us
   * and two thread wake-ups (native/file-io.c).
   */
  async read(offset: number, length: number): Promise<Buffer> {
    assert(offset >= 0 && offset + length <= this.sizeBytes, `read [${offset}, +${length}) beyond ${this.name}`);
    const buffer = Buffer.allocUnsafe(length);
    const inPlaceBytes = Math.max(0, fileIo.preadNoWait(this.handle.fd, buffer, offset));
    if (inPlaceBytes === length) return buffer;
    return this.queue.add(async () => {
      let done = inPlaceBytes;
      while (done < length) {
        const { bytesRead } = await this.handle.read(buffer, done, length - done, offset + done);
        if (bytesRead === 0) throw new Error(`device ${this.name}: short read at offset ${offset + done}`);
        done += bytesRead;
      }
      return buffer;
    });
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    assert(!this.readOnly, `write to read-only device ${this.name}`);
    assert(offset >= 0 && offset + data.length <= this.sizeBytes, `write [${offset}, +${data.length}) beyond ${this.name}`);
    await this.queue.add(async () => {
      let done = 0;
      while (done < data.length) {
        const { bytesWritten } = await this.handle.write(data, done, data.length - done, offset + done);
        done += bytesWritten;
      }
    });
  }

  async flush(): Promise<void> {
    if (this.readOnly) return;
    await this.handle.datasync();
  }

  async close(): Promise<void> {
    await this.queue.onIdle();
    await this.handle.close();
  }
}

/** Finds a block device's size by binary search on readable offsets (no ioctl from JS). */
async function blockDeviceSize(handle: fsp.FileHandle): Promise<number> {
  const probe = Buffer.alloc(1);
  let low = 0;
  let high = 1;
  while ((await handle.read(probe, 0, 1, high)).bytesRead === 1) { low = high; high *= 2; }
  while (high - low > 1) {
    const middle = Math.floor((low + high) / 2);
    if ((await handle.read(probe, 0, 1, middle)).bytesRead === 1) low = middle; else high = middle;
  }
  return high;
}
