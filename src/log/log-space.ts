import { BlockDevice } from '../device/device';
import { assert } from '../util/errors';
import { FIRST_LSN } from './format';

/**
 * The log's byte range on the device, addressed by LSN. The range is
 * circular: LSN n lives at logOffset + (n mod logBytes), so reads and writes
 * that cross the physical end are split in two.
 */
export class LogSpace {
  constructor(
    readonly device: BlockDevice,
    readonly logOffset: number,
    readonly logBytes: number,
    /** Seeds record header checksums; see encodeRecord. */
    readonly salt: number,
  ) {
    assert(logOffset + logBytes <= device.sizeBytes, 'log extends beyond the device');
  }

  /**
   * The end of the log's first lap: the LSNs below it that are above the
   * tail have never been written on this device (the log starts at FIRST_LSN
   * on a fresh device and wraps to the start after logBytes).
   */
  get firstLapEndLsn(): number {
    return FIRST_LSN + this.logBytes;
  }

  private offsetOf(lsn: number): number {
    return this.logOffset + (lsn % this.logBytes);
  }

  async read(lsn: number, length: number): Promise<Buffer> {
    assert(length <= this.logBytes, `log read of ${length} bytes exceeds the log`);
    const first = Math.min(length, this.logBytes - (lsn % this.logBytes));
    if (first === length) return this.device.read(this.offsetOf(lsn), length);
    const [a, b] = await Promise.all([
      this.device.read(this.offsetOf(lsn), first),
      this.device.read(this.logOffset, length - first),
    ]);
    return Buffer.concat([a, b]);
  }

  async write(lsn: number, data: Buffer): Promise<void> {
    const first = Math.min(data.length, this.logBytes - (lsn % this.logBytes));
    await this.device.write(this.offsetOf(lsn), data.subarray(0, first));
    if (first < data.length) await this.device.write(this.logOffset, data.subarray(first));
  }
}
