/**
 * LSN awareness without patching PostgreSQL (DESIGN.md section 6): the
 * primary watches writes to `<datadir>/pg_wal/<24-hex segment>` and learns
 * the highest WAL position written so far. Every log record is stamped with
 * it (LogWriter.walLsn). PostgreSQL flushes WAL before the data pages it
 * covers, so a record's tag is an upper bound of the LSN of any page state it
 * carries, and tags never decrease in log order.
 *
 * Segment size comes from `<datadir>/global/pg_control`: read once at mount
 * for every data directory already on the volume, and re-read from every
 * write PostgreSQL makes to pg_control (initdb writes its first WAL before
 * pg_control exists; until then PostgreSQL's default of 16 MiB is assumed).
 */
import pino from 'pino';
import { CONTROL_FILE_SUFFIX, isWalSegmentName, parseControlFile, walSegmentStartLsn } from '../pg/control';

const log = pino({ name: 'lsnfs-wal' }, pino.destination(2));

/** PostgreSQL's default --wal-segsize. */
export const DEFAULT_WAL_SEGMENT_BYTES = 16 * 1024 * 1024;
const WAL_DIR = 'pg_wal';

/** `/a/b/pg_wal/000000010000000000000003` -> { dataDir: '/a/b', segment: '0000…03' }; null for anything else. */
export function walSegmentPath(path: string): { dataDir: string; segment: string } | null {
  const slash = path.lastIndexOf('/');
  const segment = path.slice(slash + 1);
  const dir = path.slice(0, slash);
  if (!isWalSegmentName(segment) || !dir.endsWith(`/${WAL_DIR}`)) return null;
  return { dataDir: dir.slice(0, -WAL_DIR.length - 1) || '/', segment };
}

export class WalPositionTracker {
  private readonly segmentBytes = new Map<string, number>();

  /** Learns a data directory's segment size from pg_control's bytes (ignored unless they parse). */
  learnControlFile(dataDir: string, bytes: Buffer): void {
    const control = parseControlFile(bytes);
    if (!control) return;
    if (this.segmentBytes.get(dataDir) !== control.walSegmentBytes) {
      log.info({ dataDir, walSegmentBytes: control.walSegmentBytes }, 'WAL segment size learned from pg_control');
    }
    this.segmentBytes.set(dataDir, control.walSegmentBytes);
  }

  /**
   * Called for every write on the primary, before its records are appended.
   * Returns the WAL end position the write reaches (a write to a segment), or
   * null. A whole-file write of pg_control teaches the segment size.
   */
  observeWrite(path: string, position: number, data: Buffer): number | null {
    if (path.endsWith(CONTROL_FILE_SUFFIX)) {
      if (position === 0) this.learnControlFile(path.slice(0, -CONTROL_FILE_SUFFIX.length) || '/', data);
      return null;
    }
    const wal = walSegmentPath(path);
    if (!wal) return null;
    const segmentBytes = this.segmentBytes.get(wal.dataDir) ?? DEFAULT_WAL_SEGMENT_BYTES;
    return walSegmentStartLsn(wal.segment, segmentBytes) + position + data.length;
  }
}
