/**
 * Appends records at the tail and makes them durable with group commit.
 *
 * append() is synchronous: it assigns the next LSN, encodes the record and
 * queues it, so callers can update their in-memory state in the same tick and
 * nothing interleaves. One loop writes queued records as one sector-aligned
 * batch, and flushes the device when someone waits in sync(); every sync()
 * that arrives while a write or flush is in flight shares the next flush.
 * A record is reported durable only when the whole prefix before it is.
 */
import pino from 'pino';
import { DEVICE_SECTOR_BYTES } from '../device/device';
import { FsError, assert } from '../util/errors';
import {
  RECORD_HEADER_BYTES, RecordHeader, RecordType, alignDown, alignUp, encodeRecord, recordBytes, stampDurableLsn,
} from './format';
import { LogSpace } from './log-space';

/** Above this many unwritten bytes, appenders wait (bounds memory and the crash window). */
export const MAX_UNWRITTEN_BYTES = 8 * 1024 * 1024;
const log = pino({ name: 'lsnfs-log' }, pino.destination(2));

/** Largest single device write. */
export const MAX_BATCH_BYTES = 4 * 1024 * 1024;
/** Written-but-not-durable bytes that force a flush even when nobody waits for one. */
export const MAX_UNFLUSHED_BYTES = 8 * 1024 * 1024;
/**
 * On a device that allocates on write (a regular file), the log's first lap
 * is zero-filled this far ahead of the tail, one chunk after each flush:
 * enough while less than a chunk is written between flushes (fsync-bound
 * loads); a burst of several MiB between flushes overtakes any distance.
 */
const ZERO_FILL_AHEAD_BYTES = 4 * 1024 * 1024;
const ZERO_FILL_CHUNK_BYTES = 1024 * 1024;
const ZEROS = Buffer.alloc(ZERO_FILL_CHUNK_BYTES);

/**
 * The writer's right to write, asked at two points: before each batch goes to
 * the device, and after a flush before any sync is acknowledged. The second
 * matters where fencing is cooperative: a host fenced while its batch was in
 * flight must not acknowledge that batch (the new primary may not have it).
 * Each throws once this host may no longer write.
 */
export interface WriteGuard {
  beforeWrite(): Promise<void>;
  beforeAck(): Promise<void>;
}

/** For logs nobody else can write (a branch's private overlay, tests). */
export const UNGUARDED: WriteGuard = { beforeWrite: async () => undefined, beforeAck: async () => undefined };

interface SyncWaiter { lsn: number; resolve: () => void; reject: (error: Error) => void }

export class LogWriter {
  /** Next LSN to assign. */
  tailLsn: number;
  /** Everything below this is on the device (maybe not durable). */
  writtenLsn: number;
  /** Everything below this is durable. */
  durableLsn: number;
  /**
   * The highest durable prefix that records already on the device vouch for (each header carries the
   * durable prefix at its write): a reader that scans the log from now on applies at least this much.
   * The durable marker, which the volume writes after an idle flush, vouches for the rest (markerWritten).
   */
  vouchedLsn = 0;
  /** Highest PostgreSQL WAL position seen, stamped on each record. */
  walLsn = 0;

  /** Records appended but not yet written, by LSN: reads of fresh data are served from here. */
  private readonly unwritten = new Map<number, Buffer>();
  private queue: Buffer[] = [];
  private queueStartLsn: number;
  private readonly syncWaiters: SyncWaiter[] = [];
  private roomWaiters: Array<() => void> = [];
  private running = false;
  private failure: Error | null = null;
  /** Everything from the tail up to here holds zeros this writer wrote (see fillAhead). */
  private zeroFilledEndLsn: number;
  /** No more zero-filling: the volume is closing (nothing may be written after its last flush), or a fill failed. */
  private fillStopped = false;

  constructor(
    private readonly space: LogSpace,
    readonly epoch: number,
    startLsn: number,
    /** Who may write: asked before every device write and before acknowledging a flush. */
    private readonly guard: WriteGuard,
    /**
     * The bytes between the sector start and `startLsn` (records recovered
     * from the last batch). They are rewritten unchanged with the first batch
     * so that every device write stays whole sectors.
     */
    sectorHead: Buffer,
    /** The tail may never pass this LSN (head + log size): beyond it is live log. */
    private readonly tailLimitLsn: () => number,
    /** Called after a flush that left nothing queued: nothing later will vouch for this prefix. */
    private readonly onIdleDurable: (durableLsn: number) => void = () => undefined,
  ) {
    assert(sectorHead.length === startLsn % DEVICE_SECTOR_BYTES, 'sector head must reach the tail');
    this.tailLsn = this.writtenLsn = this.durableLsn = this.zeroFilledEndLsn = startLsn;
    this.queueStartLsn = startLsn - sectorHead.length;
    if (sectorHead.length > 0) this.queue.push(sectorHead);
  }

  get failed(): Error | null { return this.failure; }

  /** The durable marker now on the device vouches for `durableLsn`. */
  markerWritten(durableLsn: number): void { this.vouchedLsn = Math.max(this.vouchedLsn, durableLsn); }

  private get unwrittenBytes(): number { return this.tailLsn - this.writtenLsn; }

  /** Appends one record; returns its header (with the LSN it was given). */
  append(type: RecordType, payload: Uint8Array, flags = 0): RecordHeader {
    if (this.failure) throw new FsError('EIO', `log is failed: ${this.failure.message}`);
    const header = {
      lsn: this.tailLsn, epoch: this.epoch, type, flags, timeMs: Date.now(),
      durableLsn: this.durableLsn, walLsn: this.walLsn,
    };
    const encoded = encodeRecord(header, payload, this.space.salt);
    assert(this.tailLsn + encoded.length <= this.tailLimitLsn(), `append at LSN ${this.tailLsn} would overwrite the log head`);
    this.queue.push(encoded);
    this.unwritten.set(header.lsn, encoded);
    this.tailLsn += encoded.length;
    this.kick();
    return { ...header, payloadBytes: payload.length, payloadCrc: encoded.readUInt32LE(28) };
  }

  /** Resolves when appenders may go on (the unwritten backlog is below its bound). */
  async waitForRoom(): Promise<void> {
    while (this.unwrittenBytes > MAX_UNWRITTEN_BYTES && !this.failure) {
      await new Promise<void>((resolve) => this.roomWaiters.push(resolve));
    }
  }

  /** The encoded record at `lsn` if it is not on the device yet. */
  unwrittenRecord(lsn: number): Buffer | undefined {
    return this.unwritten.get(lsn);
  }

  /** Resolves once every record below `lsn` is durable (default: everything appended so far). */
  sync(lsn = this.tailLsn): Promise<void> {
    if (this.failure) return Promise.reject(new FsError('EIO', `log is failed: ${this.failure.message}`));
    if (lsn <= this.durableLsn) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      this.syncWaiters.push({ lsn, resolve, reject });
      this.kick();
    });
  }

  /** Stops for good: pending and future syncs fail with EIO. */
  fail(error: Error): void {
    if (this.failure) return;
    this.failure = error;
    log.error({ err: error }, 'writes stopped for good; pending and later fsyncs fail with EIO');
    for (const waiter of this.syncWaiters.splice(0)) waiter.reject(new FsError('EIO', error.message));
    for (const wake of this.roomWaiters.splice(0)) wake();
  }

  private kick(): void {
    if (this.running || this.failure) return;
    this.running = true;
    setImmediate(() => {
      this.run().catch((error: Error) => this.fail(error)).finally(() => { this.running = false; this.rekickIfNeeded(); });
    });
  }

  private rekickIfNeeded(): void {
    if (this.failure) return;
    if (this.queue.length > 0 || this.syncWaiters.some((w) => w.lsn > this.durableLsn)) this.kick();
  }

  private async run(): Promise<void> {
    for (;;) {
      // A failed (fenced) writer stops for good: not even already-queued batches reach the device.
      if (this.failure) return;
      // Flush as soon as a waiter's records are written, even while more keep
      // arriving (else a steady stream of appends starves every sync), and
      // whenever too much is written but not durable: that bounds both what a
      // power loss takes and how far recovery must look past a damaged record
      // for proof that it had been durable (see LogReader.findDurableSuccessor).
      const mustFlush = this.writtenLsn > this.durableLsn &&
        (this.syncWaiters.some((w) => w.lsn <= this.writtenLsn) || this.writtenLsn - this.durableLsn >= MAX_UNFLUSHED_BYTES);
      if (this.queue.length > 0 && !mustFlush) {
        await this.writeQueuedBatch();
        continue;
      }
      if (!mustFlush) return;
      const target = this.writtenLsn;
      await this.space.device.flush();
      await this.guard.beforeAck();
      this.durableLsn = target;
      for (let i = this.syncWaiters.length - 1; i >= 0; i--) {
        const waiter = this.syncWaiters[i]!;
        if (waiter.lsn <= target) { this.syncWaiters.splice(i, 1); waiter.resolve(); }
      }
      if (this.queue.length === 0) this.onIdleDurable(target);
      assert(this.queue.length > 0 || this.syncWaiters.every((w) => w.lsn <= this.durableLsn), 'sync waiter beyond the tail');
      await this.fillAhead();
    }
  }

  /**
   * Writes up to MAX_BATCH_BYTES of the queue as one device write of whole
   * sectors. Records may span two writes; only the write that reaches the
   * tail ends with a Pad record. Each record is stamped, as its header goes
   * out, with the durable prefix at that moment.
   */
  private async writeQueuedBatch(): Promise<void> {
    const startLsn = this.queueStartLsn;
    const parts: Buffer[] = [];
    let bytes = 0;
    while (this.queue.length > 0 && bytes < MAX_BATCH_BYTES) {
      const part = this.queue.shift()!;
      parts.push(part);
      bytes += part.length;
    }
    if (this.queue.length === 0) {
      this.padQueueToSector();
      for (const pad of this.queue.splice(0)) { parts.push(pad); bytes += pad.length; }
    } else {
      // Stop at the last sector boundary; the bytes after it go back to the queue.
      let over = bytes - alignDown(startLsn + bytes, DEVICE_SECTOR_BYTES) + startLsn;
      bytes -= over;
      while (over > 0) {
        const last = parts.pop()!;
        const keep = Math.max(0, last.length - over);
        if (keep > 0) parts.push(last.subarray(0, keep));
        this.queue.unshift(last.subarray(keep));
        over -= last.length - keep;
      }
    }
    const endLsn = startLsn + bytes;
    const stampedLsn = this.durableLsn;
    let stamped = false;
    for (const [lsn, record] of this.unwritten) {
      if (lsn >= endLsn) break;
      if (lsn < startLsn) continue;
      stampDurableLsn(record, stampedLsn, this.space.salt);
      stamped = true;
    }
    this.queueStartLsn = endLsn;
    await this.guard.beforeWrite();
    await this.space.write(startLsn, parts.length === 1 ? parts[0]! : Buffer.concat(parts, bytes));
    this.writtenLsn = endLsn;
    if (stamped) this.vouchedLsn = Math.max(this.vouchedLsn, stampedLsn);
    for (const [lsn, record] of this.unwritten) {
      if (lsn + record.length > endLsn) break;
      this.unwritten.delete(lsn);
    }
    if (this.unwrittenBytes <= MAX_UNWRITTEN_BYTES) for (const wake of this.roomWaiters.splice(0)) wake();
  }

  /**
   * Writes zeros ahead of the tail on the log's first lap, where the device
   * is a regular file that has never held those bytes (PostgreSQL's
   * wal_init_zero, for the same reason). A write there makes the host
   * filesystem allocate blocks, so the fdatasync after it commits the
   * filesystem's journal as well: measured on this machine (ext4, Debian 12),
   * write+fdatasync of 8 KiB ran ~3200/s into fresh blocks and ~5000/s into
   * written ones, and into fresh blocks fell to ~1900/s while other processes
   * kept the other CPU busy (the journal thread waits for a CPU); into written
   * blocks it did not slow at all. A flush then finds at most one chunk's
   * allocation to commit, once per chunk instead of once per flush.
   *
   * Safe: only bytes at or beyond the tail are written, which no reader may
   * use (recovery and tailing stop at the first invalid record, and zeros are
   * one), never past the first lap (beyond it is the live log), and in this
   * loop, so a batch for those LSNs is written only after the zeros.
   */
  private async fillAhead(): Promise<void> {
    if (!this.space.device.allocatesOnWrite || this.fillStopped || this.failure) return;
    const startLsn = Math.max(this.zeroFilledEndLsn, alignUp(this.tailLsn, DEVICE_SECTOR_BYTES));
    const endLsn = Math.min(startLsn + ZERO_FILL_CHUNK_BYTES, this.space.firstLapEndLsn, this.tailLimitLsn());
    if (startLsn - this.tailLsn >= ZERO_FILL_AHEAD_BYTES || endLsn <= startLsn) return;
    // A refusal (this host is fenced) fails the writer, as it does before a batch.
    await this.guard.beforeWrite();
    if (this.failure) return;
    try {
      await this.space.write(startLsn, ZEROS.subarray(0, endLsn - startLsn));
    } catch (error) {
      // Only a speed-up: a fill the host filesystem refuses (full, say) must not stop the log. The records'
      // own writes will say whether the device is at fault.
      this.fillStopped = true;
      log.warn({ err: error, lsn: startLsn }, 'zero-filling the log ahead of its tail failed; going on without it');
      return;
    }
    this.zeroFilledEndLsn = endLsn;
  }

  /** No more zero-filling: call before the last flush of a clean close, after which nothing may be written. */
  stopFillingAhead(): void {
    this.fillStopped = true;
  }

  /** Batches end on a sector boundary so that the next batch never rewrites a written sector. */
  private padQueueToSector(): void {
    let gap = alignUp(this.tailLsn, DEVICE_SECTOR_BYTES) - this.tailLsn;
    if (gap === 0) return;
    if (gap < RECORD_HEADER_BYTES) gap += DEVICE_SECTOR_BYTES;
    const payloadBytes = gap - RECORD_HEADER_BYTES;
    assert(recordBytes(payloadBytes) === gap, 'pad record size');
    this.append(RecordType.Pad, Buffer.alloc(payloadBytes));
  }
}
