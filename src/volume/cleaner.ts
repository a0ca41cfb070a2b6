/**
 * The cleaner reclaims log space at the head. For each chunk of records at
 * the head it copies the still-live page versions to the tail (keeping their
 * versionLsn, so readers at any LSN see the same bytes), makes sure a
 * checkpoint exists past the chunk (so replay never needs the chunk's
 * metadata records), and then advances the superblock's head past it.
 */
import pino from 'pino';
import { DATA_BYTES_OFFSET, RecordType, decodeDataHead, recordBytes } from '../log/format';
import { LogWriter } from '../log/log-writer';
import { UserError } from '../util/errors';
import type { Volume } from './volume';
import { retentionFloorLsn } from './snapshot';

const MAX_CLEAN_CHUNK_BYTES = 4 * 1024 * 1024;
/** Background cleaning starts when the log is this full ... */
const BACKGROUND_START_FRACTION = 0.5;
/** ... and stops when it is this full. */
const BACKGROUND_STOP_FRACTION = 0.4;

/** How often the cleaner re-reads the slots while it waits for readers to consume its copies. */
const READER_WAIT_POLL_MS = 10;

const log = pino({ name: 'lsnfs-cleaner' }, pino.destination(2));

export class Cleaner {
  private running: Promise<void> = Promise.resolve();
  private backgroundActive = false;
  private stopped = false;

  constructor(private readonly volume: Volume, private readonly writer: LogWriter) {}

  private chunkBytes(): number {
    return Math.min(MAX_CLEAN_CHUNK_BYTES, Math.floor(this.volume.superblock.logBytes / 16));
  }

  /** Log bytes ordinary writes may not use: room for the cleaner to copy and checkpoint. */
  reserveBytes(): number {
    return 2 * this.chunkBytes() + 2 * this.volume.checkpointBytes + 256 * 1024;
  }

  private usedFraction(): number {
    return (this.writer.tailLsn - this.volume.superblock.headLsn) / this.volume.superblock.logBytes;
  }

  maybeStartBackground(): void {
    if (this.backgroundActive || this.stopped || this.usedFraction() < BACKGROUND_START_FRACTION) return;
    this.backgroundActive = true;
    this.cleanUntil(() => this.usedFraction() <= BACKGROUND_STOP_FRACTION || this.stopped)
      .catch((error: Error) => log.error({ err: error }, 'background cleaning failed'))
      .finally(() => { this.backgroundActive = false; });
  }

  /** Cleans chunk after chunk until `done()` or no chunk frees anything. One run at a time. */
  cleanUntil(done: () => boolean): Promise<void> {
    const run = this.running.then(async () => {
      const maxPasses = Math.ceil(this.volume.superblock.logBytes / this.chunkBytes()) + 2;
      for (let pass = 0; pass < maxPasses && !done() && !this.stopped; pass++) {
        const used = this.writer.tailLsn - this.volume.superblock.headLsn;
        const freed = await this.cleanOneChunk();
        if (!freed || this.writer.tailLsn - this.volume.superblock.headLsn >= used) break;
      }
    });
    this.running = run.catch(() => undefined);
    return run;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.running;
  }

  /** Returns false when there was nothing to clean or no room to copy into. */
  private async cleanOneChunk(): Promise<boolean> {
    await this.writer.sync();
    const volume = this.volume;
    const headLsn = volume.superblock.headLsn;
    // The retention window's oldest checkpoint stays: snapshots replay from it.
    const retainedLsn = retentionFloorLsn(volume.checkpoints, volume.superblock.retainMs, Date.now());
    const endLsn = Math.min(headLsn + this.chunkBytes(), this.writer.writtenLsn, retainedLsn);
    if (endLsn <= headLsn) return false;
    let cleanedTo = headLsn;
    let outOfRoom = false;
    const scan = await volume.reader.scan(headLsn, { toLsn: endLsn }, ({ header, payload }) => {
      if (outOfRoom) return;
      if (header.type === RecordType.Data) {
        const head = decodeDataHead(payload);
        const versionLsn = head.versionLsn || header.lsn;
        const inode = volume.state.fileInode(head.ino);
        // Versions the horizon has passed since they were written are garbage now.
        const versions = inode ? volume.state.trimPage(inode, head.pageNo) : undefined;
        const version = versions?.find((v) => v.versionLsn === versionLsn);
        if (version && version.loc === header.lsn) {
          // Copies must leave room for the checkpoint this chunk needs before the head can move.
          if (!volume.canAppendNow('cleaner', recordBytes(payload.length) + volume.checkpointBytes + 64 * 1024)) { outOfRoom = true; return; }
          volume.appendData(head.ino, head.pageNo, head.offsetInPage, payload.subarray(DATA_BYTES_OFFSET), versionLsn);
        }
      }
      cleanedTo = header.lsn + recordBytes(header.payloadBytes);
    });
    if (scan.stop !== 'end-of-range' && scan.stopLsn < endLsn && !outOfRoom) {
      throw new UserError(`device ${volume.device.name}: log record at LSN ${scan.stopLsn} is damaged (found while cleaning); run 'lsnfs fsck'`);
    }
    if (cleanedTo === headLsn) return false;
    // A checkpoint already in flight may predate this chunk: wait for one that starts past it.
    while (volume.superblock.checkpointLsn < cleanedTo) await volume.checkpoint();
    await this.writer.sync();
    // Readers on other hosts still address the copied versions at their old
    // places until they have consumed the copies: wait for them (a reader
    // whose heartbeat stops is no longer waited for).
    const copiesEndLsn = this.writer.tailLsn;
    for (;;) {
      if (!(await volume.readerBehind(copiesEndLsn))) break;
      if (this.stopped) return false;
      await new Promise((resolve) => setTimeout(resolve, READER_WAIT_POLL_MS));
    }
    await volume.updateSuperblock({ headLsn: cleanedTo });
    return true;
  }
}
