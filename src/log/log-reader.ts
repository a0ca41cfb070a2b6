/**
 * Reading the log: single records (page reads), sequential scans (recovery,
 * replicas, fsck) and the torn-tail-or-corruption decision.
 */
import {
  RECORD_ALIGN_BYTES, RECORD_HEADER_BYTES, RECORD_MAGIC, RecordHeader, alignUp, decodeRecordHeader, payloadChecksumOk, recordBytes,
} from './format';
import { LogSpace } from './log-space';
import { MAX_BATCH_BYTES, MAX_UNFLUSHED_BYTES } from './log-writer';

export interface LogRecord { header: RecordHeader; payload: Buffer }

/** Why a scan stopped at `stopLsn`. */
export type ScanStop =
  | 'end-of-range'        // reached the LSN the caller asked for
  | 'no-record'           // bytes that are not a record header (zeros, torn, another lap)
  | 'payload-checksum'    // a whole header whose payload does not match its CRC
  | 'stale-epoch';        // a valid record of an epoch older than the log before it

export interface ScanResult { stopLsn: number; stop: ScanStop; lastEpoch: number }

/** Bytes read per device request during a scan. */
const SCAN_CHUNK_BYTES = 4 * 1024 * 1024;

/**
 * How far past a damaged-but-durable record the first record stamped with a
 * newer durable LSN can be: the writer flushes once MAX_UNFLUSHED_BYTES are
 * written and not durable, and the next write after that flush (at most one
 * batch further) stamps the new prefix on the records it carries.
 */
const CORRUPTION_SCAN_BYTES = MAX_UNFLUSHED_BYTES + 2 * MAX_BATCH_BYTES + SCAN_CHUNK_BYTES;

export class LogReader {
  constructor(readonly space: LogSpace) {}

  /** Reads the record at `lsn`, or null when the bytes there are not that record (moved or damaged). */
  async readRecord(lsn: number, expectedBytes?: number): Promise<LogRecord | null> {
    const guess = expectedBytes ?? 16 * 1024;
    let buf = await this.space.read(lsn, Math.min(guess, this.space.logBytes));
    const header = decodeRecordHeader(buf, 0, this.space.salt);
    if (!header || header.lsn !== lsn) return null;
    const total = recordBytes(header.payloadBytes);
    if (buf.length < total) buf = await this.space.read(lsn, total);
    const payload = buf.subarray(RECORD_HEADER_BYTES, RECORD_HEADER_BYTES + header.payloadBytes);
    return payloadChecksumOk(header, payload) ? { header, payload } : null;
  }

  /**
   * Visits records from `fromLsn` in order until `toLsn` or the first record
   * that is missing, damaged, or of an older epoch than `minEpoch`/its
   * predecessor. `maxEpoch` rejects records from the future (a bad device).
   */
  async scan(
    fromLsn: number,
    options: {
      toLsn?: number; minEpoch?: number; maxEpoch?: number;
      /**
       * Size of the first device read (default SCAN_CHUNK_BYTES). Each further read doubles, up
       * to `maxChunkBytes` (default: no growth): a tailer that usually finds little or nothing new
       * starts small and still catches up with few large reads.
       */
      firstChunkBytes?: number; maxChunkBytes?: number;
    },
    /** Return false to stop after this record. */
    visit: (record: LogRecord) => void | boolean | Promise<void | boolean>,
  ): Promise<ScanResult> {
    const toLsn = options.toLsn ?? Number.POSITIVE_INFINITY;
    const limitLsn = Math.min(toLsn, fromLsn + this.space.logBytes);
    let lastEpoch = options.minEpoch ?? 0;
    let chunk: Buffer = Buffer.alloc(0);
    let chunkLsn = fromLsn;
    let lsn = fromLsn;
    let chunkBytes = options.firstChunkBytes ?? SCAN_CHUNK_BYTES;
    const maxChunkBytes = Math.max(chunkBytes, options.maxChunkBytes ?? chunkBytes);
    const ensure = async (bytes: number): Promise<boolean> => {
      if (lsn + bytes > fromLsn + this.space.logBytes) return false;
      if (lsn >= chunkLsn && lsn + bytes <= chunkLsn + chunk.length) return true;
      const readBytes = Math.min(Math.max(bytes, chunkBytes), fromLsn + this.space.logBytes - lsn);
      chunk = await this.space.read(lsn, readBytes);
      chunkLsn = lsn;
      chunkBytes = Math.min(chunkBytes * 2, maxChunkBytes);
      return true;
    };
    while (lsn < limitLsn) {
      if (!(await ensure(RECORD_HEADER_BYTES))) return { stopLsn: lsn, stop: 'no-record', lastEpoch };
      const header = decodeRecordHeader(chunk, lsn - chunkLsn, this.space.salt);
      if (!header || header.lsn !== lsn || (options.maxEpoch !== undefined && header.epoch > options.maxEpoch)) {
        return { stopLsn: lsn, stop: 'no-record', lastEpoch };
      }
      if (header.epoch < lastEpoch) return { stopLsn: lsn, stop: 'stale-epoch', lastEpoch };
      const total = recordBytes(header.payloadBytes);
      if (!(await ensure(total))) return { stopLsn: lsn, stop: 'no-record', lastEpoch };
      const start = lsn - chunkLsn + RECORD_HEADER_BYTES;
      const payload = chunk.subarray(start, start + header.payloadBytes);
      if (!payloadChecksumOk(header, payload)) return { stopLsn: lsn, stop: 'payload-checksum', lastEpoch };
      lastEpoch = header.epoch;
      const goOn = await visit({ header, payload });
      lsn += total;
      if (goOn === false) return { stopLsn: lsn, stop: 'end-of-range', lastEpoch };
    }
    return { stopLsn: lsn, stop: 'end-of-range', lastEpoch };
  }

  /**
   * After a scan stopped at `stopLsn`: is there a record further on that was
   * written after `stopLsn` had been made durable? Then the bad bytes at
   * `stopLsn` were acknowledged data, damaged later: corruption, not a torn
   * tail. Records start on 8-byte boundaries and may begin anywhere in a
   * write, so every 8-byte position is a candidate (the magic is checked first).
   */
  async findDurableSuccessor(stopLsn: number, minEpoch: number, headLsn: number): Promise<RecordHeader | null> {
    const first = alignUp(stopLsn + 1, RECORD_ALIGN_BYTES);
    const end = Math.min(first + CORRUPTION_SCAN_BYTES, headLsn + this.space.logBytes);
    if (end <= first) return null;
    const window = await this.space.read(first, end - first);
    for (let offset = 0; offset + RECORD_HEADER_BYTES <= window.length; offset += RECORD_ALIGN_BYTES) {
      if (window.readUInt32LE(offset) !== RECORD_MAGIC) continue;
      const header = decodeRecordHeader(window, offset, this.space.salt);
      if (header && header.lsn === first + offset && header.epoch >= minEpoch && header.durableLsn > stopLsn) return header;
    }
    return null;
  }
}
