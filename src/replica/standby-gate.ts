/**
 * What a PostgreSQL hot standby's replica mount applies, and when
 * (DESIGN.md section 6; the invariant is stated in docs/ARCHITECTURE.md).
 *
 * - Records of the `pg_wal/` subtree (WAL segments, archive_status) are
 *   applied as soon as the tailer has them: the standby reads WAL at the log
 *   tail. Unlinks of WAL segments are deferred until the standby no longer
 *   needs the segment (its restart point and its minRecoveryPoint are past
 *   the segment's end).
 * - Every other record is applied only once its walLsn tag is at or below
 *   the view L (the standby's minRecoveryPoint). Tags are monotonic in log
 *   order, so the applied non-WAL records are always a log prefix: the rest of
 *   the tree is exactly the filesystem at one log LSN, the last whose tag is
 *   at or below L.
 *
 * This works on one VolumeState because the two streams never touch the same
 * inode: a create carries its inode number, so applying WAL creates early
 * cannot shift the numbers of held-back creates, and PostgreSQL never moves
 * files into or out of pg_wal/.
 *
 * What the primary must keep for the standby (keepVersionsFromLsn): a held
 * image of a page (a whole-page write) makes the primary drop the tree's
 * version of that page once its horizon passes the record. L moves only when the
 * standby writes a buffer past it (in practice, during its restart points),
 * so holding the horizon at the tree kept every page the primary wrote for a
 * checkpoint cycle. Instead, the standby keeps the tree's version of each
 * such page itself (a PageKeeper: KeptPages, deflated on local disk), and
 * the horizon it holds moves on past the images whose pages are kept, and
 * past truncates whose cut pages are (publishFurther has the rules);
 * deletions it passes are covered by keepDeletedFromLsn.
 */
import pino from 'pino';
import { DATA_BYTES_OFFSET, DataRecordHead, RecordHeader, RecordType, decodeDataHead } from '../log/format';
import { MetaOp, decodeMetaOp } from '../volume/meta-ops';
import { Inode, ROOT_INO, VolumeState, isDir, writesWholePage } from '../volume/state';
import { assert } from '../util/errors';
import { PAGE_LSN_BYTES, isWalSegmentName, pageLsnAt, walSegmentStartLsn } from '../pg/control';
import { DEFAULT_WAL_SEGMENT_BYTES } from '../volume/wal-position';

const log = pino({ name: 'lsnfs-standby-gate' }, pino.destination(2));

const WAL_DIR_NAME = 'pg_wal';
/** How deep below the root pg_wal directories are looked for at mount. */
const WAL_DIR_SEARCH_DEPTH = 5;
/**
 * Held records applied per turn of the event loop once L moved. L moves when
 * the standby writes pg_control, often by seconds of the primary's writes at
 * once; applying them all inside that write stalled it, and the standby's
 * replay (which waits for pg_control's lock and reads pages through this
 * mount) with it: hundreds of milliseconds of replay lag.
 */
const APPLY_SLICE_RECORDS = 256;
/**
 * How long an image is held before the tree's version of its page is copied (see
 * StandbyGate.requestDueCopies). During a restart point the standby writes pg_control about once a second,
 * so most images the primary's checkpoint writes meanwhile are applied within a second or two and need no
 * copy; bench-standby's three standbys each made ~1100 copies a second then (a device read and a deflate
 * each), a quarter of their daemons' busy time, in the seconds that set the replay lag's p99. The price:
 * the primary keeps the versions those images replace for up to this long more.
 */
export const KEEP_COPY_DELAY_MS = 2000;
/**
 * Most held images waiting out that delay: past it the oldest are copied at once. It bounds what the delay
 * costs the device (1024 pgbench pages: 8 MiB) when the primary writes fast, as during its checkpoints.
 */
export const MAX_IMAGES_AWAITING_COPY = 1024;

export interface CopyDelay { delayMs: number; maxImagesWaiting: number }
const DEFAULT_COPY_DELAY: CopyDelay = { delayMs: KEEP_COPY_DELAY_MS, maxImagesWaiting: MAX_IMAGES_AWAITING_COPY };

/**
 * A data record of new bytes (the cleaner's copies are not held: see offer) keeps only its head, as bytes
 * to apply and decoded (versions point at their record; the bytes stay on the device), and the page LSN
 * it writes; a metadata record keeps its decoded op. Neither pins the tailer's read chunk while it waits.
 */
type HeldRecord = ({ header: RecordHeader; dataHead: Buffer; head: DataRecordHead; pageLsn: number } | { header: RecordHeader; op: MetaOp }) & {
  /** When the gate took it (performance.now()). */
  heldAtMs: number;
};

/**
 * The page LSN a data record writes: pd_lsn from its bytes when it writes the start of the page, else 0
 * (unknown). Meaningful for relation files only; the listener knows which files those are.
 */
function writtenPageLsn(head: DataRecordHead, payload: Buffer): number {
  return head.offsetInPage === 0 && head.length >= PAGE_LSN_BYTES ? pageLsnAt(payload, DATA_BYTES_OFFSET) : 0;
}
/**
 * Keeps, off the device, the tree's version of pages that held records write again (a standby's
 * KeptPages). The gate asks for a page when it holds an image of it, and releases it when it applies a
 * record of it.
 */
export interface PageKeeper {
  /** The tree's version of the page needs nothing from the device: it is kept, or the tree has no such page. */
  covers(ino: number, pageNo: number): boolean;
  /**
   * Starts keeping the tree's version of the page, if it is not kept or on its way; publishFurther() runs
   * once it is. Null: kept already; else settles once made or dropped (never while it cannot be made).
   */
  request(ino: number, pageNo: number): Promise<void> | null;
  /** The same for every page of the file from `firstPageNo` on (a truncate cuts them), all or none. */
  requestFrom(ino: number, firstPageNo: number): Promise<void> | null;
  /** The tree's version of pages [firstPageNo, endPageNo) of the file changed or went: copies kept of the ones before are no longer read. */
  release(ino: number, firstPageNo: number, endPageNo?: number): void;
}

/** Published records of one page not applied yet: one image, or deltas only. */
interface PublishedPage { image: boolean; records: number }

/** `segment`: the WAL segment whose name the op removes (applied once the standby passed it); null: an op queued behind one. */
interface DeferredUnlink { header: RecordHeader; op: MetaOp; segment: string | null }

export class StandbyGate {
  /** Directories of the WAL subtree (pg_wal and its subdirectories). */
  private readonly walDirs = new Set<number>();
  /** Files and symlinks inside the WAL subtree. */
  private readonly walFiles = new Set<number>();
  /** Non-WAL records waiting for L to reach their tag, in log order, from `heldHead` on (the ones before are applied). */
  private readonly held: HeldRecord[] = [];
  /** The newest cleaner copy of each held data record it copied, by the record's LSN: applied with it. */
  private readonly heldVersionMoves = new Map<number, { header: RecordHeader; dataHead: Buffer }>();
  private heldHead = 0;
  /** A drain of the held records L covers is scheduled (setImmediate). */
  private draining = false;
  /**
   * Held records from heldHead up to this index no longer hold the horizon (see keepVersionsFromLsn):
   * their pages' versions in the tree are kept locally.
   */
  private publishedIndex = 0;
  /** The pages of the data records among those, by file and page number. */
  private readonly publishedPages = new Map<number, Map<number, PublishedPage>>();
  /** The LSNs of the deletions (unlink, rename) among those, in log order: keepDeletedFromLsn covers them. */
  private readonly publishedDeletions: number[] = [];
  /** Held records from heldHead up to this index have had their images' copies asked for (see requestDueCopies). */
  private copyRequestIndex = 0;
  /** Images among the held records from copyRequestIndex on: their copies are not asked for yet. */
  private imagesAwaitingCopy = 0;
  /** Runs requestDueCopies when the next held image comes due. */
  private copyTimer: NodeJS.Timeout | null = null;
  /** The truncate publishFurther waits at: for copies of the pages it cuts, or for the next drain. */
  private truncateWaiting: HeldRecord | null = null;
  /** Keeps the tree's versions of the pages held records write (none: the horizon stays at the tree). */
  pages: PageKeeper | null = null;
  /** WAL segment unlinks waiting for the standby to pass the segment, in log order. */
  private readonly deferred: DeferredUnlink[] = [];
  /** Names in pg_wal/ that deferred ops touch: later ops on them wait behind (the FUSE adapter renames a file still open to .fuse_hidden* instead of unlinking it). */
  private readonly deferredNames = new Set<string>();
  /** View L: non-WAL records tagged at or below it are applied. */
  viewWalLsn: number;
  /** The standby no longer reads WAL below this (min of its restart point and L). */
  private passedWalLsn = 0;
  /** Record time of the last non-WAL record applied (the view's time). */
  viewTimeMs = 0;
  /** Set when the view can no longer be kept (the primary reclaimed log it needed): reads fail with this. */
  failure: string | null = null;

  /** WAL data records applied so far: a WAL read that saw this number unchanged would see nothing new. */
  walGeneration = 0;
  /** Called after each WAL data record is applied. */
  onWalData: () => void = () => undefined;
  /**
   * Called after a non-WAL data record (not a cleaner copy) is applied, with the page LSN it wrote (0:
   * unknown): the page the standby now reads from the shared tree at L.
   */
  onSharedPage: (ino: number, pageNo: number, versionLsn: number, pageLsn: number) => void = () => undefined;

  /** From the standby's pg_control (PostgreSQL's default until it has written one). */
  walSegmentBytes = DEFAULT_WAL_SEGMENT_BYTES;

  /** A file of the WAL subtree (served at the log tail). */
  isWalFile(ino: number): boolean { return this.walFiles.has(ino); }

  /** A directory of the WAL subtree: pg_wal/ or one below it. */
  isWalDir(ino: number): boolean { return this.walDirs.has(ino); }

  /** `copyDelay`: how long an image is held before its page's copy is asked for, and how many may wait so. */
  constructor(private readonly state: VolumeState, viewWalLsn: number, private readonly copyDelay: CopyDelay = DEFAULT_COPY_DELAY) {
    this.viewWalLsn = viewWalLsn;
    this.indexWalSubtree();
  }

  /**
   * The log LSN at which the non-WAL tree is served (state after every record
   * below it): the primary must keep every version visible there (the slot's
   * viewLsn). The deferred WAL unlinks do not hold it: see keepDeletedFromLsn.
   */
  viewLsn(consumedLsn: number): number {
    return Math.min(consumedLsn, this.held[this.heldHead]?.header.lsn ?? Infinity);
  }

  /**
   * The first deferred WAL unlink's LSN, or of a held deletion keepVersionsFromLsn passed (0: none):
   * the primary keeps every file deleted at or after it (the slot's keepDeletedFromLsn), so the segments
   * and files the standby still shows stay readable. Holding the view there instead kept every page
   * version the primary wrote until the standby's next restart point (bench-standby: ~90 of the 137 MB
   * three standbys cost the device).
   */
  keepDeletedFromLsn(): number {
    const first = Math.min(this.deferred[0]?.header.lsn ?? Infinity, this.publishedDeletions[0] ?? Infinity);
    return Number.isFinite(first) ? first : 0;
  }

  /**
   * The first held record whose page versions the primary must still keep for this standby, or
   * `consumedLsn` when there is none (the slot's keepVersionsFromLsn). At or past viewLsn.
   */
  keepVersionsFromLsn(consumedLsn: number): number {
    return this.held[this.publishedIndex]?.header.lsn ?? consumedLsn;
  }

  /**
   * Moves keepVersionsFromLsn on past the held records that let it, and stops at the first that does
   * not. The primary drops a page's versions once its horizon passes a newer image of the page (a
   * base), so for a data record:
   * - an image, the page's first published record: the tree's version of the page must be kept
   *   (else it stops; the copy is asked for once the image has been held KEEP_COPY_DELAY_MS);
   * - a delta, with only deltas of the page published: it frees nothing (the kernel now and then
   *   sends one page write as two requests, and so as two deltas in a row: [0, 4992) and
   *   [4992, 8192) of pgbench_accounts pages in bench-standby);
   * - any other: stops until the page's published records are applied (an image after them would
   *   free a version the standby needs from the device once L covers it).
   * A truncate waits for its cut pages the same way (cutPagesKept); other metadata ops pass. Runs
   * when records are held or applied, and when a page is kept.
   */
  publishFurther(): void {
    for (; this.publishedIndex < this.held.length; this.publishedIndex++) {
      const record = this.held[this.publishedIndex]!;
      if ('op' in record) {
        if (record.op.op === 'truncate' && !this.cutPagesKept(record, record.op.ino, record.op.size)) return;
        if (record.op.op === 'unlink' || record.op.op === 'rename') this.publishedDeletions.push(record.header.lsn);
        continue;
      }
      const { head } = record;
      if (!this.pages) return;
      const image = writesWholePage(head, this.state.pageBytes);
      let pages = this.publishedPages.get(head.ino);
      const published = pages?.get(head.pageNo);
      if (published) {
        if (image || published.image) return;
        published.records++;
        continue;
      }
      if (image && !this.pages.covers(head.ino, head.pageNo)) {
        // requestDueCopies asks for it once it is due; again here if it was asked for and went since (the
        // gate applied a record of the page, and the tree's version is now another).
        if (this.copyRequestIndex > this.publishedIndex) this.pages.request(head.ino, head.pageNo);
        return;
      }
      if (!pages) this.publishedPages.set(head.ino, pages = new Map());
      pages.set(head.pageNo, { image, records: 1 });
    }
  }

  /**
   * Whether the pages the held truncate `record` cuts are kept; if not, asks for them and runs
   * publishFurther again once they are (or once something was dropped meanwhile: it checks again).
   * Not while a record of a cut page is published: the truncate writes that page again.
   */
  private cutPagesKept(record: HeldRecord, ino: number, size: number): boolean {
    if (this.truncateWaiting === record || !this.pages) return false;
    const firstCut = Math.ceil(size / this.state.pageBytes);
    // A cut page with a published record: that record's version is needed from the device once L covers
    // it. Checked again after the next drain (which may apply it), not at every record held meanwhile.
    for (const pageNo of this.publishedPages.get(ino)?.keys() ?? []) {
      if (pageNo < firstCut) continue;
      this.truncateWaiting = record;
      return false;
    }
    const copies = this.pages.requestFrom(ino, firstCut);
    if (copies === null) return true;
    this.truncateWaiting = record;
    void copies.then(() => {
      if (this.truncateWaiting !== record) return;
      this.truncateWaiting = null;
      this.publishFurther();
    });
    return false;
  }

  /** A published record is applied: it no longer counts among them. */
  private unpublish(record: HeldRecord): void {
    if ('op' in record) {
      if (record.op.op === 'unlink' || record.op.op === 'rename') {
        assert(this.publishedDeletions.shift() === record.header.lsn, 'published deletions leave in log order');
      }
      return;
    }
    const { head } = record;
    const pages = this.publishedPages.get(head.ino)!;
    const published = pages.get(head.pageNo)!;
    if (--published.records > 0) return;
    pages.delete(head.pageNo);
    if (pages.size === 0) this.publishedPages.delete(head.ino);
  }

  private indexWalSubtree(): void {
    this.walDirs.clear();
    this.walFiles.clear();
    const addSubtree = (dir: Inode): void => {
      this.walDirs.add(dir.ino);
      for (const ino of dir.entries!.values()) {
        const child = this.state.inodes.get(ino);
        if (!child) continue;
        if (isDir(child)) addSubtree(child);
        else this.walFiles.add(ino);
      }
    };
    const search = (dir: Inode, depth: number): void => {
      for (const [name, ino] of dir.entries!) {
        const child = this.state.inodes.get(ino);
        if (!child || !isDir(child)) continue;
        if (name === WAL_DIR_NAME) addSubtree(child);
        else if (depth < WAL_DIR_SEARCH_DEPTH) search(child, depth + 1);
      }
    };
    search(this.state.inode(ROOT_INO), 0);
  }

  /** Takes one durable record from the tailer, in log order: applies, holds or defers it. */
  offer(header: RecordHeader, payload: Buffer): void {
    if (header.type === RecordType.Data) {
      const head = decodeDataHead(payload);
      if (head.versionLsn !== 0) {
        // A cleaner copy: the version's new place. The primary may reuse its old place once this standby
        // reports having consumed the copy, so a version in the tree moves now, and a held one moves as
        // it is applied (the copy's own tag is later than the version's: holding the copy too left the
        // tree reading the old place until L reached that tag).
        if (this.heldCount() > 0 && !this.walFiles.has(head.ino) && head.versionLsn >= this.held[this.heldHead]!.header.lsn) {
          this.heldVersionMoves.set(head.versionLsn, { header, dataHead: Buffer.from(payload.subarray(0, DATA_BYTES_OFFSET)) });
        } else this.state.applyData(header, payload);
        return;
      }
      if (this.walFiles.has(head.ino)) {
        this.state.applyData(header, payload);
        this.walGeneration++;
        this.onWalData();
      } else this.hold({ header, dataHead: Buffer.from(payload.subarray(0, DATA_BYTES_OFFSET)), head, pageLsn: writtenPageLsn(head, payload), heldAtMs: performance.now() });
      return;
    }
    if (header.type !== RecordType.Meta) return;
    const op = decodeMetaOp(payload, header.lsn);
    if (!this.isWalOp(op)) {
      this.hold({ header, op, heldAtMs: performance.now() });
      return;
    }
    const segment = this.removedSegment(op);
    const behind = this.opNames(op).some((name) => this.deferredNames.has(name));
    if ((segment !== null && (this.deferred.length > 0 || this.segmentEnd(segment) > this.passedWalLsn)) || behind) {
      this.deferred.push({ header, op, segment });
      for (const name of this.opNames(op)) this.deferredNames.add(name);
      return;
    }
    this.applyWalOp(header, op);
  }

  private hold(record: HeldRecord): void {
    if (this.heldCount() === 0 && record.header.walLsn <= this.viewWalLsn) {
      this.applyHeld(record);
      return;
    }
    this.held.push(record);
    if (this.isCopiedImage(record)) this.imagesAwaitingCopy++;
    this.requestDueCopies();
    this.publishFurther();
  }

  /**
   * Asks for the copies of the pages that held images write, for each image held KEEP_COPY_DELAY_MS by
   * now or older than the MAX_IMAGES_AWAITING_COPY newest, and sets a timer for the next one. Asked for in
   * log order ahead of publishFurther (which stops at the first image whose copy is not made yet), so the
   * device reads overlap. An image L covers before then is applied without one: the tree then shows the
   * image itself.
   */
  private requestDueCopies(): void {
    if (!this.pages) return;
    assert(this.imagesAwaitingCopy >= 0, `${this.imagesAwaitingCopy} images awaiting their copy`);
    const nowMs = performance.now();
    for (; this.copyRequestIndex < this.held.length; this.copyRequestIndex++) {
      const record = this.held[this.copyRequestIndex]!;
      const dueMs = record.heldAtMs + this.copyDelay.delayMs;
      if (dueMs > nowMs && this.imagesAwaitingCopy <= this.copyDelay.maxImagesWaiting) {
        this.copyTimer ??= setTimeout(() => {
          this.copyTimer = null;
          this.requestDueCopies();
          this.publishFurther();
        }, dueMs - nowMs).unref();
        return;
      }
      if (!this.isCopiedImage(record)) continue;
      this.imagesAwaitingCopy--;
      this.pages.request(record.head.ino, record.head.pageNo);
    }
  }

  /** A held image of a page (not a cleaner copy): the tree's version of its page is copied before the slot passes it. */
  private isCopiedImage(record: HeldRecord): record is HeldRecord & { head: DataRecordHead } {
    return !('op' in record) && writesWholePage(record.head, this.state.pageBytes);
  }

  /** Stops asking for copies (the standby is closing). */
  close(): void {
    if (this.copyTimer) clearTimeout(this.copyTimer);
    this.copyTimer = null;
    this.pages = null;
  }

  private heldCount(): number {
    return this.held.length - this.heldHead;
  }

  /**
   * Applies, in log order, up to APPLY_SLICE_RECORDS held records that L
   * covers, and schedules the next slice while more are covered. Applying
   * later than L allows is safe: L only permits; the tree stays a log prefix
   * (viewLsn is the first record still held) and older than the standby's
   * replay position.
   */
  private drainHeld(): void {
    const end = Math.min(this.held.length, this.heldHead + APPLY_SLICE_RECORDS);
    while (this.heldHead < end && this.held[this.heldHead]!.header.walLsn <= this.viewWalLsn) {
      const record = this.held[this.heldHead]!;
      if (this.heldHead < this.publishedIndex) this.unpublish(record);
      if (this.heldHead >= this.copyRequestIndex && this.isCopiedImage(record)) this.imagesAwaitingCopy--;
      this.applyHeld(record);
      this.heldHead++;
    }
    this.publishedIndex = Math.max(this.publishedIndex, this.heldHead);
    this.copyRequestIndex = Math.max(this.copyRequestIndex, this.heldHead);
    this.truncateWaiting = null; // what it waited for may be applied now: publishFurther looks again
    if (this.heldHead === this.held.length || this.heldHead > 4 * APPLY_SLICE_RECORDS) {
      this.held.splice(0, this.heldHead);
      this.publishedIndex -= this.heldHead;
      this.copyRequestIndex = Math.max(0, this.copyRequestIndex - this.heldHead);
      this.heldHead = 0;
    }
    // A page whose record was applied may let its next one be published now.
    this.publishFurther();
    if (this.draining || this.heldCount() === 0 || this.held[this.heldHead]!.header.walLsn > this.viewWalLsn) return;
    this.draining = true;
    setImmediate(() => {
      this.draining = false;
      this.drainHeld();
    });
  }

  private applyHeld(record: HeldRecord): void {
    this.viewTimeMs = record.header.timeMs;
    if ('op' in record) {
      const { op } = record;
      const replaced = op.op === 'unlink' ? this.entryIno(op.parent, op.name) : op.op === 'rename' ? this.entryIno(op.newParent, op.newName) : undefined;
      this.state.applyMeta(record.header, op);
      // Copies kept of versions the op cut (a truncate) or dropped (a file's last link) would never be read again.
      if (op.op === 'truncate') this.pages?.release(op.ino, Math.floor(op.size / this.state.pageBytes), Infinity);
      else if (replaced !== undefined && !this.state.inodes.has(replaced)) this.pages?.release(replaced, 0, Infinity);
      return;
    }
    this.state.applyData(record.header, record.dataHead);
    const move = this.heldVersionMoves.get(record.header.lsn);
    if (move) {
      this.heldVersionMoves.delete(record.header.lsn);
      this.state.applyData(move.header, move.dataHead);
    }
    const { head } = record;
    this.pages?.release(head.ino, head.pageNo);
    this.onSharedPage(head.ino, head.pageNo, record.header.lsn, record.pageLsn);
  }

  private entryIno(dirIno: number, name: string): number | undefined {
    return this.state.inodes.get(dirIno)?.entries?.get(name);
  }

  private isWalOp(op: MetaOp): boolean {
    switch (op.op) {
      case 'create': case 'link': case 'unlink': return this.walDirs.has(op.parent);
      case 'rename': {
        const from = this.walDirs.has(op.parent);
        if (from !== this.walDirs.has(op.newParent)) log.error({ op }, 'a rename across the pg_wal boundary: applied with the non-WAL tree');
        return from && this.walDirs.has(op.newParent);
      }
      case 'setattr': case 'truncate': return this.walFiles.has(op.ino) || this.walDirs.has(op.ino);
    }
  }

  /**
   * The WAL segment name `op` makes disappear: an unlink, or a rename away
   * from it (the FUSE adapter hides a file that is still open by renaming it to
   * .fuse_hidden*; PostgreSQL's own renames within pg_wal/ go *to* segment names).
   */
  private removedSegment(op: MetaOp): string | null {
    if (op.op === 'unlink' && isWalSegmentName(op.name)) return op.name;
    if (op.op === 'rename' && isWalSegmentName(op.name) && op.newName !== op.name) return op.name;
    return null;
  }

  private opNames(op: MetaOp): string[] {
    switch (op.op) {
      case 'create': case 'link': case 'unlink': return [op.name];
      case 'rename': return [op.name, op.newName];
      default: return [];
    }
  }

  /** The WAL position where segment `name` ends. */
  private segmentEnd(name: string): number {
    return walSegmentStartLsn(name, this.walSegmentBytes) + this.walSegmentBytes;
  }

  private applyWalOp(header: RecordHeader, op: MetaOp): void {
    const removed = op.op === 'unlink' ? this.state.inode(op.parent).entries!.get(op.name) : undefined;
    this.state.applyMeta(header, op);
    if (op.op === 'create') {
      const inode = this.state.inode(op.ino);
      if (isDir(inode)) this.walDirs.add(op.ino);
      else this.walFiles.add(op.ino);
    } else if (removed !== undefined && !this.state.inodes.has(removed)) {
      this.walDirs.delete(removed);
      this.walFiles.delete(removed);
    }
  }

  /**
   * The standby reported progress (from the pg_control it wrote): apply the
   * held records its view now covers and the WAL unlinks it has passed.
   * `passedWalLsn`: the standby will never read WAL below this again.
   */
  advance(viewWalLsn: number, passedWalLsn: number): void {
    if (viewWalLsn > this.viewWalLsn) this.viewWalLsn = viewWalLsn;
    if (passedWalLsn > this.passedWalLsn) this.passedWalLsn = passedWalLsn;
    if (!this.draining) this.drainHeld();
    let unlinked = 0;
    for (; unlinked < this.deferred.length; unlinked++) {
      const { header, op, segment } = this.deferred[unlinked]!;
      if (segment !== null && this.segmentEnd(segment) > this.passedWalLsn) break;
      this.applyWalOp(header, op);
    }
    this.deferred.splice(0, unlinked);
    if (this.deferred.length === 0) this.deferredNames.clear();
  }

}
