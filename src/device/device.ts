/**
 * The storage under the log: a fixed-size array of bytes that one host may
 * write and many may read. Every backend (file, block device, iSCSI) offers
 * exactly this; the log never needs more.
 */
export interface BlockDevice {
  /** Where the device lives, for error messages ("/dev/sdb", "/var/lib/x.img"). */
  readonly name: string;
  readonly sizeBytes: number;
  readonly readOnly: boolean;
  /**
   * A write to a range never written before makes the host allocate space for
   * it (a regular file on a filesystem): the flush after it must then commit
   * the filesystem's journal too. The log writer zero-fills ahead of its tail
   * on such devices (see LogWriter).
   */
  readonly allocatesOnWrite: boolean;
  /** Reads exactly `length` bytes at `offset`; short reads are errors. */
  read(offset: number, length: number): Promise<Buffer>;
  /** Writes all of `data` at `offset`. Not durable until `flush()` resolves. */
  write(offset: number, data: Uint8Array): Promise<void>;
  /** Makes every completed write durable (fdatasync / SYNCHRONIZE CACHE). */
  flush(): Promise<void>;
  close(): Promise<void>;
}

/** Alignment of every log write: the largest sector size we support. */
export const DEVICE_SECTOR_BYTES = 512;
