/**
 * A PostgreSQL hot standby's mount: a replica of the shared volume with a
 * private overlay on local disk (DESIGN.md section 6).
 *
 * Reads see a union: what the standby wrote itself (the overlay), else the
 * shared tree. The shared tree is a replica whose StandbyGate keeps pg_wal/
 * at the log tail and everything else at view L = the standby's
 * minRecoveryPoint, which this class learns from every pg_control the
 * standby writes. Nothing is ever written to the device except the reader
 * slot.
 *
 * The overlay is keyed by path, at page granularity: a file the standby
 * writes gets an overlay node (its own size and attributes); pages it wrote
 * come from the page store, the others fall through to the shared file the
 * node overlays. Files the standby deletes are hidden by shared inode number
 * (numbers are never reused, so a file the primary creates later at the same
 * path is a different file and shows). Overlay pages of relation files are
 * dropped once the shared file holds, at L, a page whose LSN (pd_lsn) is at
 * least the overlay page's: that page is a state the standby's own replay
 * passed through, so serving it is correct, and the overlay stays bounded.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { setImmediate as nextTurn } from 'node:timers/promises';
import PQueue from 'p-queue';
import pino from 'pino';
import { BlockDevice } from '../device/device';
import { FsError, UserError } from '../util/errors';
import { CONTROL_FILE_SUFFIX, isRelationFilePath, isTimelineHistoryName, isVisibilityMapPath, isWalSegmentName, pageLsnAt, parseControlFile } from '../pg/control';
import { CopyDelay, StandbyGate } from '../replica/standby-gate';
import { AttrChange, DirEntry, FileSystem, ReadOrigin, readPages } from './file-system';
import { KeptPages, MAX_KEPT_PAGES } from './kept-pages';
import { PageStore } from './page-store';
import { Inode, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG, isDir, isRegular, splitPath } from './state';
import { Stat, StatFs, Volume } from './volume';

const log = pino({ name: 'lsnfs-standby' }, pino.destination(2));

/** Overlay inode numbers start here, far above any shared inode number. */
const OVERLAY_INO_BASE = 0x8000_0000;
/** How often overlay pages are compared with the shared store (to drop the ones it caught up with). */
export const OVERLAY_SWEEP_INTERVAL_MS = 1000;
/**
 * Longest a read of the WAL tail waits for new WAL (see StandbyVolume.read). PostgreSQL polls every
 * wal_retrieve_retry_interval (5 ms); holding its unchanged re-read turns 200 polls a second into
 * at most 10 on an idle standby, and one that waits is answered the moment WAL arrives.
 */
export const WAL_TAIL_WAIT_MS = 100;
/**
 * A WAL read looks like PostgreSQL's poll when it is the first read through a newly opened file, of a
 * page read through another since WAL was last applied, within WAL_POLL_GAP_MS of the last WAL read's
 * answer. (A poll rereads the page where WAL ends, and first the segment's first page when that is
 * another.) The first WAL_POLLS_SERVED of them in a row are served at once: a new standby's startup
 * looks the same once or twice (\`lsnfs pg standby\` and pg_waldump find the end of WAL, then PostgreSQL
 * reads its checkpoint record's page and reopens it to redo), and holding those cost it 300 ms.
 */
export const WAL_POLLS_SERVED = 2;
export const WAL_POLL_GAP_MS = 50;
/**
 * How long the kernel may trust the names PostgreSQL's WAL poll looks up each time (StandbyVolume.nameValidMs):
 * pg_wal/ itself and its WAL segments. A standby's mount otherwise trusts no name: each poll cost seven
 * requests, four of them lookups (bench-standby: ~620 a second per standby under load).
 */
export const WAL_NAME_VALID_MS = 10_000;
/**
 * How long it may trust that a timeline history file is missing from pg_wal/. PostgreSQL looks for the
 * next timeline's at every poll (recovery_target_timeline = latest); one that appears is seen up to this
 * much later (by a standby following a failover onto the new timeline); at a poll every 5 ms, one lookup
 * in twenty is sent.
 */
export const MISSING_HISTORY_VALID_MS = 100;
/** Shared pages read per sweep, so a sweep never floods the device. */
const SWEEP_PAGE_READS = 512;
/**
 * Overlay pages moved per sweep, to shrink the page store's files once pages were dropped (PageStore.compact).
 * Each move is a local read and write of a slot: ~0.65 MB a second of 640-byte pgbench pages, a few percent
 * of the event loop that serves FUSE. Enough to keep up: over 12-minute bench-standby runs three standbys'
 * files held 84 MB on average for 77 MB of pages with the primary checkpointing every 2.2 min (198 MB for
 * 101 MB before compaction), and 13 MB for 11 MB with its 30 s checkpoints.
 */
const COMPACT_MOVES_PER_SWEEP = 1024;
/**
 * Relation files whose pages' pd_lsn orders their states: a page with a newer pd_lsn holds every change
 * of an older one. Not the visibility map (_vm): PostgreSQL clears its bits without setting the page's
 * LSN, so a standby's copy can hold clears the primary's copy with the same pd_lsn lacks (dropping it
 * would bring back "all visible" bits, and index-only scans would return deleted rows). Its pages stay
 * in the overlay.
 */
function isLsnOrderedFile(path: string): boolean {
  return isRelationFilePath(path) && !isVisibilityMapPath(path);
}

/**
 * Bytes of pages the standby wrote that are not in the page store yet. A write is acknowledged once its
 * page is in memory (see putPage); past this much, a write waits until its page is stored.
 */
const MAX_UNSTORED_BYTES = 32 * 1024 * 1024;
/**
 * Background stores in flight at once. Each is a pwrite in libuv's thread pool (4 threads), which the
 * device reads that FUSE requests wait for share: a burst of evictions (a restart point writes every
 * dirty buffer) must not queue ahead of them all.
 */
const MAX_STORES_IN_FLIGHT = 2;

interface OverlayPage {
  /** Its handle in the page store. */
  slot: number;
  /** PostgreSQL page LSN (pd_lsn, the page's first 8 bytes); 0 for files whose pages have none. */
  pdLsn: number;
  /** Newest shared versionLsn already compared with this page (0: never). */
  comparedVersionLsn: number;
  /** The page's bytes until the store holds them (reads are served from here meanwhile). */
  unstored: Buffer | null;
  /** Settles (never rejects) once the page is stored, or was found caught up, replaced or dropped first. */
  stored: Promise<void>;
}

interface OverlayNode {
  ino: number;
  path: string;
  mode: number; uid: number; gid: number; nlink: number; size: number;
  atimeMs: number; mtimeMs: number; ctimeMs: number;
  target?: string;
  /** The shared file this node overlays (pages fall through to it), or null. */
  sharedIno: number | null;
  /** A file the standby created binds to a shared file that appears at its path with a number at or above this. */
  bindFromIno: number;
  /** Pages below this, not in the overlay, read from the shared file (its size when copied up, cut by truncates). */
  fallThroughPages: number;
  /** Pages dropped from the overlay because the shared file caught up: read from it again. */
  sharedPages: Set<number>;
  pages: Map<number, OverlayPage>;
  /** Page changes of this file run one after another (a partial write reads, patches and stores the page). */
  chain: Promise<void>;
}

function parentPath(path: string): string {
  const parts = splitPath(path);
  parts.pop();
  return '/' + parts.join('/');
}

function baseName(path: string): string {
  return splitPath(path).pop() ?? '';
}

function normalize(path: string): string {
  return '/' + splitPath(path).join('/');
}

export class StandbyVolume implements FileSystem {
  private readonly nodes = new Map<string, OverlayNode>();
  private readonly nodesByIno = new Map<number, OverlayNode>();
  /** Overlay children by directory path (names), for readdir. */
  private readonly children = new Map<string, Set<string>>();
  /** Files the standby created that overlay the shared file the primary created at their path, by that file's number. */
  private readonly boundNodes = new Map<number, OverlayNode>();
  /** Shared inodes the standby deleted or renamed away. */
  private readonly hidden = new Set<number>();
  private nextIno = OVERLAY_INO_BASE;
  private sweepTimer: NodeJS.Timeout | null = null;
  /** The sweep in flight (dropping caught-up pages, then compacting the page store): close() waits for it. */
  private sweepRun: Promise<void> | null = null;
  /**
   * WAL reads since WAL was last applied (`gate.walGeneration`): each page (`ino:page`) with the open
   * file that read it last; the open file of the last read and when it was answered; polls in a row.
   */
  private walReads = { walGeneration: -1, pages: new Map<string, number>(), lastHandle: -1, answeredMs: 0, polls: 0 };
  /** Reads of the WAL tail waiting for WAL: each is called (once) when WAL arrives, or at close. */
  private readonly walWaiters = new Set<() => void>();
  /** Overlay pages dropped because the shared store caught up (logged). */
  private droppedPages = 0;
  private unstoredBytes = 0;
  /** Pages being stored in the background (close waits for them). */
  private readonly storing = new Set<Promise<void>>();
  private readonly storeQueue = new PQueue({ concurrency: MAX_STORES_IN_FLIGHT });
  /** Why storing a page failed (the local disk): later writes fail with it; pages not stored stay in memory. */
  private storeFailure: NodeJS.ErrnoException | null = null;
  /** The shared tree's versions of pages the primary wrote again, kept here so that the device need not keep them. */
  private readonly kept: KeptPages;

  constructor(
    readonly shared: Volume, readonly gate: StandbyGate, private readonly store: PageStore,
    sweepIntervalMs = OVERLAY_SWEEP_INTERVAL_MS, maxKeptPages = MAX_KEPT_PAGES,
  ) {
    gate.onWalData = () => this.wakeWalWaiters();
    gate.onSharedPage = (ino, pageNo, versionLsn, sharedPageLsn) => this.sharedPageApplied(ino, pageNo, versionLsn, sharedPageLsn);
    this.kept = new KeptPages(shared, store, maxKeptPages);
    this.kept.onKept = () => gate.publishFurther();
    gate.pages = this.kept;
    const tailer = shared.tailer!;
    tailer.slotExtras = () => ({
      viewWalLsn: gate.viewWalLsn, overlayBytes: this.overlayBytes, keepDeletedFromLsn: gate.keepDeletedFromLsn(),
      keepVersionsFromLsn: gate.keepVersionsFromLsn(tailer.appliedLsn),
    });
    this.sweepTimer = setInterval(() => {
      if (this.sweepRun) return;
      this.sweepRun = this.dropCaughtUpPages().then(() => this.store.compact(COMPACT_MOVES_PER_SWEEP))
        .catch((error: Error) => log.error({ err: error }, 'overlay sweep failed'))
        .finally(() => { this.sweepRun = null; });
    }, sweepIntervalMs);
    this.sweepTimer.unref();
  }

  /** Bytes of the overlay's page store: the standby's own pages and the kept copies. */
  get overlayBytes(): number { return this.store.usedBytes; }

  /** Page versions of the shared tree kept here because the primary may reclaim them (KeptPages). */
  get keptPageCount(): number { return this.kept.count; }

  // -------------------------------------------------------------------------
  // Lookups

  /** The shared inode at `path`, unless it or a directory above it is hidden. */
  private sharedAt(path: string): Inode | null {
    let inode = this.shared.state.inodes.get(1)!;
    for (const name of splitPath(path)) {
      const child = inode.entries?.get(name);
      if (child === undefined || this.hidden.has(child)) return null;
      const next = this.shared.state.inodes.get(child);
      if (!next) return null;
      inode = next;
    }
    return inode;
  }

  private nodeStat(node: OverlayNode): Stat {
    const pages = node.pages.size + node.sharedPages.size;
    return {
      ino: node.ino, mode: node.mode, uid: node.uid, gid: node.gid, nlink: node.nlink, size: node.size,
      atimeMs: node.atimeMs, mtimeMs: node.mtimeMs, ctimeMs: node.ctimeMs,
      blocks: (Math.max(pages, Math.min(node.fallThroughPages, Math.ceil(node.size / this.pageBytes))) * this.pageBytes) / 512,
      blksize: this.pageBytes,
    };
  }

  private get pageBytes(): number { return this.shared.pageBytes; }

  getattr(path: string): Stat {
    const key = normalize(path);
    const node = this.nodes.get(key);
    if (node) return this.nodeStat(node);
    // sharedAt resolves every directory on the way and none may be hidden: the parent shows too.
    const inode = this.sharedAt(key);
    if (!inode) throw new FsError('ENOENT', path);
    return this.shared.stat(inode);
  }

  fgetattr(ino: number, path: string): Stat {
    const node = this.nodesByIno.get(ino);
    if (node) return this.nodeStat(node);
    const inode = this.shared.state.inodes.get(ino);
    if (inode && !this.hidden.has(ino)) return this.shared.stat(inode);
    return this.getattr(path);
  }

  lookupIno(path: string): number { return this.getattr(path).ino; }

  /**
   * WAL segments: PostgreSQL reopens the segment after every read that found
   * no new record (every open drops its cached pages), and kernel readahead
   * would fetch a page past the end of WAL at every retry.
   */
  bypassesPageCache(ino: number): boolean { return !this.nodesByIno.has(ino) && this.gate.isWalFile(ino); }

  /**
   * The names a WAL poll looks up may be trusted for a while: pg_wal/ never changes, a segment keeps its
   * name (PostgreSQL makes one by a rename to its name, and only a rename or unlink the standby has passed
   * takes the name away: the gate defers those), and a missing timeline history file is looked for again
   * MISSING_HISTORY_VALID_MS later. The shared tree's names only: the standby's own go through this mount.
   */
  nameValidMs(parentIno: number, name: string, ino: number | null): number | undefined {
    if (ino !== null && this.nodesByIno.has(ino)) return undefined;
    if (name === 'pg_wal') return ino !== null && this.gate.isWalDir(ino) ? WAL_NAME_VALID_MS : undefined;
    if (!this.gate.isWalDir(parentIno)) return undefined;
    if (ino === null) return isTimelineHistoryName(name) ? MISSING_HISTORY_VALID_MS : undefined;
    return this.gate.isWalFile(ino) && isWalSegmentName(name) ? WAL_NAME_VALID_MS : undefined;
  }

  statfs(): StatFs { return this.shared.statfs(); }

  readdir(path: string): DirEntry[] {
    const key = normalize(path);
    const node = this.nodes.get(key);
    const inode = this.sharedAt(key);
    if (node && (node.mode & S_IFMT) !== S_IFDIR) throw new FsError('ENOTDIR', path);
    if (!node && !inode) throw new FsError('ENOENT', path);
    // The overlay's own entries hide shared ones of the same name.
    const fileTypes = new Map<string, number>();
    if (inode?.entries) {
      for (const [name, ino] of inode.entries) if (!this.hidden.has(ino)) fileTypes.set(name, this.shared.state.inode(ino).mode & S_IFMT);
    }
    for (const name of this.children.get(key) ?? []) fileTypes.set(name, this.nodes.get(normalize(`${key}/${name}`))!.mode & S_IFMT);
    return [...fileTypes].map(([name, fileType]) => ({ name, fileType }));
  }

  readlink(path: string): string {
    const node = this.nodes.get(normalize(path));
    if (node) {
      if (node.target === undefined) throw new FsError('EINVAL', path);
      return node.target;
    }
    if (!this.sharedAt(normalize(path))) throw new FsError('ENOENT', path);
    return this.shared.readlink(path);
  }

  // -------------------------------------------------------------------------
  // Namespace changes (all in the overlay)

  private addNode(node: OverlayNode): OverlayNode {
    this.nodes.set(node.path, node);
    this.nodesByIno.set(node.ino, node);
    const parent = parentPath(node.path);
    let names = this.children.get(parent);
    if (!names) this.children.set(parent, names = new Set());
    names.add(baseName(node.path));
    return node;
  }

  /** Takes the node out of the namespace, keeping its pages (a rename puts it back). */
  private detachNode(node: OverlayNode): void {
    this.nodes.delete(node.path);
    if (this.nodesByIno.get(node.ino) === node) this.nodesByIno.delete(node.ino);
    this.children.get(parentPath(node.path))?.delete(baseName(node.path));
  }

  private removeNode(node: OverlayNode): void {
    this.detachNode(node);
    if (node.sharedIno !== null && this.boundNodes.get(node.sharedIno) === node) this.boundNodes.delete(node.sharedIno);
    for (const page of node.pages.values()) this.releasePage(page);
    node.pages.clear();
  }

  private newNode(path: string, mode: number, uid: number, gid: number, fields: Partial<OverlayNode> = {}): OverlayNode {
    const now = Date.now();
    return {
      ino: this.nextIno++, path, mode, uid, gid, nlink: (mode & S_IFMT) === S_IFDIR ? 2 : 1, size: 0,
      atimeMs: now, mtimeMs: now, ctimeMs: now, sharedIno: null, bindFromIno: this.shared.state.nextIno,
      fallThroughPages: 0, sharedPages: new Set(), pages: new Map(), chain: Promise.resolve(), ...fields,
    };
  }

  private requireNew(path: string): string {
    const key = normalize(path);
    if (this.exists(key)) throw new FsError('EEXIST', path);
    const parent = this.getattr(parentPath(key));
    if ((parent.mode & S_IFMT) !== S_IFDIR) throw new FsError('ENOTDIR', path);
    return key;
  }

  private exists(key: string): boolean {
    try {
      this.getattr(key);
      return true;
    } catch {
      return false;
    }
  }

  async create(path: string, mode: number, uid: number, gid: number): Promise<{ ino: number }> {
    const key = this.requireNew(path);
    return this.addNode(this.newNode(key, S_IFREG | (mode & 0o7777), uid, gid));
  }

  async mkdir(path: string, mode: number, uid: number, gid: number): Promise<unknown> {
    const key = this.requireNew(path);
    return this.addNode(this.newNode(key, S_IFDIR | (mode & 0o7777), uid, gid));
  }

  async symlink(target: string, path: string, uid: number, gid: number): Promise<unknown> {
    const key = this.requireNew(path);
    return this.addNode(this.newNode(key, S_IFLNK | 0o777, uid, gid, { target, size: Buffer.byteLength(target) }));
  }

  async link(existingPath: string): Promise<void> {
    throw new FsError('EPERM', `${existingPath}: hard links are not supported on a standby's overlay`);
  }

  /** Removes `key` from the standby's view: its overlay node, and the shared file there (hidden). */
  private remove(key: string): void {
    const node = this.nodes.get(key);
    const shared = this.sharedAt(key);
    if (!node && !shared) throw new FsError('ENOENT', key);
    if (node) {
      this.removeNode(node);
      if (node.sharedIno !== null) this.hidden.add(node.sharedIno);
    }
    if (shared) this.hidden.add(shared.ino);
  }

  async unlink(path: string): Promise<void> {
    const key = normalize(path);
    if ((this.getattr(key).mode & S_IFMT) === S_IFDIR) throw new FsError('EISDIR', path);
    this.remove(key);
  }

  async rmdir(path: string): Promise<void> {
    const key = normalize(path);
    if ((this.getattr(key).mode & S_IFMT) !== S_IFDIR) throw new FsError('ENOTDIR', path);
    if (this.readdir(key).length > 0) throw new FsError('ENOTEMPTY', path);
    this.remove(key);
  }

  async rename(from: string, to: string): Promise<void> {
    const source = normalize(from);
    const target = normalize(to);
    const stat = this.getattr(source);
    if (source === target) return;
    if ((stat.mode & S_IFMT) === S_IFDIR) {
      // PostgreSQL renames files only; a directory would need its whole shared subtree copied up.
      throw new FsError('EXDEV', `${from}: renaming directories is not supported on a standby's overlay`);
    }
    if (this.exists(target)) {
      if ((this.getattr(target).mode & S_IFMT) === S_IFDIR) throw new FsError('EISDIR', to);
      this.remove(target);
    }
    // The node moves with its pages; the shared file it overlays no longer shows at the old path.
    const node = this.nodes.get(source) ?? this.copyUp(stat.ino, source);
    this.detachNode(node);
    if (node.sharedIno !== null) this.hidden.add(node.sharedIno);
    const sharedAtSource = this.sharedAt(source);
    if (sharedAtSource) this.hidden.add(sharedAtSource.ino);
    node.path = target;
    node.ctimeMs = Date.now();
    this.addNode(node);
  }

  async setattr(path: string, change: AttrChange): Promise<void> {
    const key = normalize(path);
    const node = this.nodes.get(key) ?? this.copyUp(this.getattr(key).ino, key);
    if (change.mode !== undefined) node.mode = (node.mode & S_IFMT) | (change.mode & 0o7777);
    if (change.uid !== undefined) node.uid = change.uid;
    if (change.gid !== undefined) node.gid = change.gid;
    if (change.atimeMs !== undefined) node.atimeMs = change.atimeMs;
    if (change.mtimeMs !== undefined) node.mtimeMs = change.mtimeMs;
    node.ctimeMs = Date.now();
  }

  /** The overlay node for an open file, copying up the shared file's attributes the first time (no pages). */
  private copyUp(ino: number, path: string | undefined): OverlayNode {
    const existing = this.nodesByIno.get(ino);
    if (existing) return existing;
    const inode = this.shared.state.inodes.get(ino);
    if (!inode || this.hidden.has(ino) || path === undefined) throw new FsError('ENOENT', `inode ${ino}${path ? ` (${path})` : ''}`);
    const key = normalize(path);
    if (this.nodes.has(key)) throw new FsError('EIO', `${path}: the standby replaced this file while it was open`);
    return this.addNode({
      ino, path: key, mode: inode.mode, uid: inode.uid, gid: inode.gid, nlink: inode.nlink, size: inode.size,
      atimeMs: inode.atimeMs, mtimeMs: inode.mtimeMs, ctimeMs: inode.ctimeMs,
      ...(inode.target !== undefined ? { target: inode.target } : {}),
      sharedIno: isRegular(inode) ? ino : null, bindFromIno: Number.POSITIVE_INFINITY,
      fallThroughPages: Math.ceil(inode.size / this.pageBytes), sharedPages: new Set(), pages: new Map(), chain: Promise.resolve(),
    });
  }

  // -------------------------------------------------------------------------
  // File data

  private fallsThrough(node: OverlayNode, pageNo: number): boolean {
    return node.sharedIno !== null && (pageNo < node.fallThroughPages || node.sharedPages.has(pageNo));
  }

  /** Page `pageNo` as the standby sees it: its own copy, else the shared page, else zeros. */
  private async nodePage(node: OverlayNode, pageNo: number): Promise<Buffer> {
    const own = node.pages.get(pageNo);
    if (own) return own.unstored ? Buffer.from(own.unstored) : this.store.read(own.slot);
    if (this.fallsThrough(node, pageNo)) {
      const inode = this.shared.state.inodes.get(node.sharedIno!);
      if (inode && isRegular(inode)) return this.sharedPage(inode, pageNo);
    }
    return Buffer.alloc(this.pageBytes);
  }

  /** A page of the shared tree (at L): its kept copy, else from the device. */
  private sharedPage(inode: Inode, pageNo: number): Promise<Buffer> {
    return this.kept.page(inode.ino, pageNo) ?? this.shared.readPage(inode, pageNo);
  }

  /**
   * A standby polls for WAL: every wal_retrieve_retry_interval (5 ms) it reopens the segment and
   * rereads the page where WAL ends (see WAL_POLLS_SERVED for how a poll is told). Past the first few
   * polls in a row, one would return the same bytes again: it waits until WAL arrives, WAL_TAIL_WAIT_MS
   * pass, or the kernel interrupts it (a signal for the reader: shutdown, promote). Every other read
   * is served at once. Which page holds the end of WAL cannot be told from the file: a segment may
   * have been zero-filled, or written ahead at its last byte, when it was created.
   */
  async read(ino: number, position: number, length: number, origin?: ReadOrigin): Promise<Buffer> {
    if (this.gate.failure) throw new FsError('EIO', this.gate.failure);
    const node = this.nodesByIno.get(ino);
    if (!node) {
      if (this.hidden.has(ino)) throw new FsError('ENOENT', `inode ${ino}`);
      if (this.gate.isWalFile(ino)) await this.waitIfPolling(`${ino}:${Math.floor(position / this.pageBytes)}`, origin);
      const inode = this.shared.state.inode(ino);
      if (isDir(inode)) throw new FsError('EISDIR', `inode ${ino}`);
      return readPages(inode.size, position, length, this.pageBytes, (pageNo) => this.sharedPage(inode, pageNo));
    }
    if ((node.mode & S_IFMT) === S_IFDIR) throw new FsError('EISDIR', node.path);
    return readPages(node.size, position, length, this.pageBytes, (pageNo) => this.nodePage(node, pageNo));
  }

  /**
   * Makes `page` the node's copy of page `pageNo` at once and stores it in
   * the background: the write that brought it is acknowledged without waiting
   * for the page store. The overlay is scratch (a standby mount starts from
   * the shared state), so nothing in it must be durable first, and a
   * standby's replay waits for every page it evicts: with the store in the
   * write's path, 41 % of a loaded standby's startup process went to pwrite
   * (strace, 1.1 ms each). `wholeWrite`: the standby wrote the whole page (an
   * eviction), so it need not be stored if the shared page at L is as new.
   */
  private putPage(node: OverlayNode, pageNo: number, page: Buffer, wholeWrite: boolean): Promise<void> {
    // Removed while this change waited in the file's chain (an unlink of a path with no file open):
    // nothing could reach the page again.
    if (!this.attached(node)) return Promise.resolve();
    const entry: OverlayPage = {
      slot: this.store.allocate(), pdLsn: isLsnOrderedFile(node.path) ? pageLsnAt(page) : 0, comparedVersionLsn: 0,
      unstored: page, stored: Promise.resolve(),
    };
    const old = node.pages.get(pageNo);
    if (old) this.releasePage(old);
    node.pages.set(pageNo, entry);
    node.sharedPages.delete(pageNo);
    this.unstoredBytes += page.length;
    const stored = this.storeInBackground(node, pageNo, entry, wholeWrite);
    entry.stored = stored;
    this.storing.add(stored);
    void stored.then(() => this.storing.delete(stored));
    return stored;
  }

  /** The node is in the namespace (removing it released its pages; a rename re-attaches it). */
  private attached(node: OverlayNode): boolean {
    return this.nodes.get(node.path) === node;
  }

  private async storeInBackground(node: OverlayNode, pageNo: number, entry: OverlayPage, wholeWrite: boolean): Promise<void> {
    try {
      await nextTurn(); // the write's reply first
      await this.storeQueue.add(() => this.storeIfCurrent(node, pageNo, entry, wholeWrite));
    } catch (error) {
      this.storeFailure ??= error as NodeJS.ErrnoException;
      log.error({ err: error, path: node.path, pageNo }, 'storing an overlay page failed; it stays in memory, and further writes fail');
    } finally {
      this.unstoredBytes -= this.pageBytes;
    }
  }

  /** Stores `entry` unless it is no longer the node's copy of the page (replaced, dropped) or the shared page caught up. */
  private async storeIfCurrent(node: OverlayNode, pageNo: number, entry: OverlayPage, wholeWrite: boolean): Promise<void> {
    const current = (): boolean => node.pages.get(pageNo) === entry && this.attached(node);
    if (!current()) return;
    if (wholeWrite && (await this.sharedCaughtUp(node, pageNo, entry.pdLsn))) {
      if (current()) this.fallThrough(node, pageNo);
      return;
    }
    if (!current()) return;
    await this.store.write(entry.slot, entry.unstored!);
    entry.unstored = null;
  }

  /** Frees an overlay copy's handle, once a store of it in flight has settled. */
  private releasePage(page: OverlayPage): void {
    if (page.unstored === null) this.store.release(page.slot);
    else void page.stored.then(() => this.store.release(page.slot));
  }

  /**
   * Whether the shared file's page at L is at least as new as `pdLsn`, the page LSN of a page the
   * standby writes whole (0: a page without one, never caught up): the primary wrote it before the standby evicted it, and it is a state the
   * standby's replay passed through (invariant 4), so the page need not be stored. Checked with one
   * read of the shared page before it is stored, rather than left to the sweep, which fell behind:
   * about half of a pgbench standby's evictions are such pages.
   */
  private async sharedCaughtUp(node: OverlayNode, pageNo: number, pdLsn: number): Promise<boolean> {
    const inode = node.sharedIno !== null ? this.shared.state.inodes.get(node.sharedIno) : undefined;
    if (pdLsn === 0 || !inode?.pages?.has(pageNo)) return false;
    // A shared page that cannot be read now (a device error) only means the page is stored.
    const shared = await this.sharedPage(inode, pageNo).catch(() => null);
    return shared !== null && pageLsnAt(shared) >= pdLsn;
  }

  /** Page `pageNo` of the node reads from the shared file again (its overlay copy, if any, goes). */
  private fallThrough(node: OverlayNode, pageNo: number): void {
    const own = node.pages.get(pageNo);
    if (own) {
      node.pages.delete(pageNo);
      this.releasePage(own);
    }
    node.sharedPages.add(pageNo);
    this.droppedPages++;
  }

  private onNode<T>(node: OverlayNode, change: () => Promise<T>): Promise<T> {
    const run = node.chain.then(change);
    node.chain = run.then(() => undefined, () => undefined);
    return run;
  }

  async write(ino: number, position: number, data: Buffer, path?: string): Promise<number> {
    if (this.storeFailure) throw new FsError(this.storeFailure.code === 'ENOSPC' ? 'ENOSPC' : 'EIO', `overlay: ${this.storeFailure.message}`);
    const node = this.copyUp(ino, path);
    if ((node.mode & S_IFMT) !== S_IFREG) throw new FsError('EISDIR', node.path);
    const pageBytes = this.pageBytes;
    await this.onNode(node, async () => {
      const firstPage = Math.floor(position / pageBytes);
      const lastPage = Math.floor((position + data.length - 1) / pageBytes);
      await Promise.all(Array.from({ length: lastPage - firstPage + 1 }, async (_, i) => {
        const pageNo = firstPage + i;
        const start = Math.max(position, pageNo * pageBytes);
        const end = Math.min(position + data.length, (pageNo + 1) * pageBytes);
        const whole = end - start === pageBytes;
        const page = whole ? Buffer.from(data.subarray(start - position, end - position)) : await this.nodePage(node, pageNo);
        if (!whole) data.copy(page, start - pageNo * pageBytes, start - position, end - position);
        const stored = this.putPage(node, pageNo, page, whole);
        if (this.unstoredBytes > MAX_UNSTORED_BYTES) await stored;
      }));
      node.size = Math.max(node.size, position + data.length);
      node.mtimeMs = node.ctimeMs = Date.now();
    });
    if (position === 0 && node.path.endsWith(CONTROL_FILE_SUFFIX)) this.learnFromControlFile(data);
    return data.length;
  }

  /**
   * The standby wrote its pg_control: its minRecoveryPoint is the view L
   * (every page it may read from the shared tree is then no newer than what it
   * has replayed), and its restart point bounds the WAL it may still read.
   */
  private learnFromControlFile(bytes: Buffer): void {
    const control = parseControlFile(bytes);
    if (!control) return;
    this.gate.walSegmentBytes = control.walSegmentBytes;
    const before = this.gate.viewWalLsn;
    this.gate.advance(control.minRecoveryPoint, Math.min(control.redoLsn, control.minRecoveryPoint));
    this.shared.tailer!.followGate();
    if (this.gate.viewWalLsn !== before) log.debug({ viewWalLsn: this.gate.viewWalLsn }, 'standby view advanced');
  }

  async truncate(ino: number, size: number, path?: string): Promise<void> {
    const node = this.copyUp(ino, path);
    if ((node.mode & S_IFMT) !== S_IFREG) throw new FsError('EISDIR', node.path);
    const pageBytes = this.pageBytes;
    await this.onNode(node, async () => {
      const keepPages = Math.ceil(size / pageBytes);
      const cut = size % pageBytes;
      if (cut !== 0 && size < node.size) {
        // The rest of the boundary page must read as zeros if the file grows again.
        const page = await this.nodePage(node, keepPages - 1);
        page.fill(0, cut);
        void this.putPage(node, keepPages - 1, page, false);
      }
      for (const [pageNo, page] of [...node.pages]) {
        if (pageNo < keepPages) continue;
        this.releasePage(page);
        node.pages.delete(pageNo);
      }
      for (const pageNo of [...node.sharedPages]) if (pageNo >= keepPages) node.sharedPages.delete(pageNo);
      node.fallThroughPages = Math.min(node.fallThroughPages, Math.floor(size / pageBytes));
      node.size = size;
      node.mtimeMs = node.ctimeMs = Date.now();
    });
  }

  /** The overlay is scratch space (a restarted standby starts from the shared state): nothing to make durable. */
  async sync(): Promise<void> {}

  // -------------------------------------------------------------------------
  // Keeping the overlay bounded

  /**
   * Drops overlay pages of relation files whose shared version (at L) has a
   * page LSN at least as new. Runs in the background; each drop runs in the
   * file's chain, so it never races the standby's own writes of that page.
   */
  async dropCaughtUpPages(): Promise<void> {
    const droppedBefore = this.droppedPages;
    try {
      await this.sweep();
    } finally {
      if (this.droppedPages > droppedBefore) {
        log.debug({ dropped: this.droppedPages - droppedBefore, overlayBytes: this.overlayBytes }, 'overlay pages dropped: the shared store caught up');
      }
    }
  }

  private async sweep(): Promise<void> {
    let reads = 0;
    for (const node of [...this.nodes.values()]) {
      if (!isLsnOrderedFile(node.path)) continue;
      this.bindCreatedFile(node);
      if (node.sharedIno === null) continue;
      const inode = this.shared.state.inodes.get(node.sharedIno);
      if (!inode?.pages) continue;
      for (const [pageNo, page] of [...node.pages]) {
        if (reads >= SWEEP_PAGE_READS) return;
        if (page.pdLsn === 0) continue;
        const versions = inode.pages.get(pageNo);
        const newest = versions?.[versions.length - 1]?.versionLsn ?? 0;
        if (newest === 0 || newest === page.comparedVersionLsn) continue;
        reads++;
        await this.onNode(node, async () => {
          if (node.pages.get(pageNo) !== page) return;
          const sharedBytes = await this.sharedPage(inode, pageNo);
          if (node.pages.get(pageNo) !== page) return;
          page.comparedVersionLsn = newest;
          this.dropIfCaughtUp(node, pageNo, pageLsnAt(sharedBytes));
        });
      }
    }
  }

  /**
   * The shared tree (at L) now holds a version of page `pageNo` of shared file `ino` that writes page
   * LSN `sharedPageLsn` (0: unknown). The standby's own copy of that page leaves the overlay if it is no
   * newer, as soon as L covers the primary's write: the sweep alone, with its bounded reads, fell behind
   * a standby that evicts pages faster than it compares them.
   */
  private sharedPageApplied(ino: number, pageNo: number, versionLsn: number, sharedPageLsn: number): void {
    const node = this.nodesByIno.get(ino) ?? this.boundNodes.get(ino);
    const page = node?.pages.get(pageNo);
    if (!node || !page || node.sharedIno !== ino || page.pdLsn === 0 || sharedPageLsn === 0) return;
    page.comparedVersionLsn = versionLsn;
    if (sharedPageLsn < page.pdLsn) return;
    // In the file's chain: a write of this page in flight finishes first, and its copy is the one judged.
    void this.onNode(node, async () => this.dropIfCaughtUp(node, pageNo, sharedPageLsn));
  }

  /** Drops the overlay copy of a relation page when the shared page at L has a page LSN at least as new (invariant 4). */
  private dropIfCaughtUp(node: OverlayNode, pageNo: number, sharedPageLsn: number): void {
    const page = node.pages.get(pageNo);
    if (page && page.pdLsn !== 0 && sharedPageLsn >= page.pdLsn) this.fallThrough(node, pageNo);
  }

  /** A relation file the standby created itself (replaying its creation) is the file the primary created at that path. */
  private bindCreatedFile(node: OverlayNode): void {
    if (node.sharedIno !== null) return;
    const inode = this.sharedAt(node.path);
    if (!inode || !isRegular(inode) || inode.ino < node.bindFromIno) return;
    node.sharedIno = inode.ino;
    this.boundNodes.set(inode.ino, node);
  }

  /** Notes a WAL read of page `key`; if it is a poll past the first WAL_POLLS_SERVED in a row, waits for WAL first. */
  private async waitIfPolling(key: string, origin: ReadOrigin | undefined): Promise<void> {
    const reads = this.walReads;
    this.forgetWalReadsIfWalArrived();
    const handle = origin?.handle ?? -1;
    const reopened = handle !== reads.lastHandle;
    const earlier = reads.pages.get(key);
    const poll = reopened && earlier !== undefined && earlier !== handle && Date.now() - reads.answeredMs <= WAL_POLL_GAP_MS;
    if (reopened) reads.polls = poll ? reads.polls + 1 : 0;
    reads.lastHandle = handle;
    if (poll && reads.polls > WAL_POLLS_SERVED) await this.waitForWal(origin);
    this.forgetWalReadsIfWalArrived(); // it is answered with that WAL
    reads.pages.set(key, handle);
    reads.answeredMs = Date.now();
  }

  /** The pages read since WAL was last applied are all walReads remembers. */
  private forgetWalReadsIfWalArrived(): void {
    if (this.walReads.walGeneration === this.gate.walGeneration) return;
    this.walReads.walGeneration = this.gate.walGeneration;
    this.walReads.pages.clear();
  }

  /** Resolves when WAL arrives, after WAL_TAIL_WAIT_MS, on an interrupt, or at close. Registers for the interrupt at once. */
  private waitForWal(origin: ReadOrigin | undefined): Promise<void> {
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        this.walWaiters.delete(done);
        resolve();
      };
      const timer = setTimeout(done, WAL_TAIL_WAIT_MS);
      this.walWaiters.add(done);
      origin?.onInterrupt(done);
    });
  }

  private wakeWalWaiters(): void {
    for (const wake of [...this.walWaiters]) wake();
  }

  /** Resolves once every page written or kept so far is stored (or dropped): the overlay's size is then final. */
  async overlaySettled(): Promise<void> {
    while (this.storing.size > 0) await Promise.all([...this.storing]);
    await this.kept.settled();
  }

  async close(): Promise<void> {
    this.wakeWalWaiters();
    this.gate.close();
    if (this.sweepTimer) clearInterval(this.sweepTimer);
    await this.sweepRun;
    await this.overlaySettled();
    await this.shared.close();
    await this.store.close();
  }
}

export interface StandbyOpenOptions {
  host: string;
  /** Local directory for the private overlay (emptied: a standby mount starts from the shared state). */
  overlayDir: string;
  pollIntervalMs: number;
  /** How often the background sweep compares overlay pages with the shared store (default OVERLAY_SWEEP_INTERVAL_MS). */
  overlaySweepIntervalMs?: number;
  /** Most copies of the view's page versions kept at once (default MAX_KEPT_PAGES). */
  maxKeptPages?: number;
  /** How long the gate holds an image before it copies the page's version, and how many may wait so (KEEP_COPY_DELAY_MS, MAX_IMAGES_AWAITING_COPY). */
  copyDelay?: CopyDelay;
}

/**
 * Mounts a replica for a PostgreSQL standby: catch up with the log like any
 * replica, then put the gate in front of the tailer. The view starts at L = 0:
 * nothing new outside pg_wal/ is applied until the standby's pg_control says
 * how far it has replayed (`lsnfs pg standby` writes the first one).
 */
export async function openStandby(device: BlockDevice, options: StandbyOpenOptions): Promise<StandbyVolume> {
  if (existsSync(path.join(options.overlayDir, 'branch.json'))) {
    throw new UserError(`overlay ${options.overlayDir}: it holds a branch (a writable snapshot); give a standby its own directory`);
  }
  const shared = await Volume.openReader(device, { host: options.host, role: 'replica', pollIntervalMs: options.pollIntervalMs });
  try {
    const tailer = shared.tailer!;
    const gate = await tailer.betweenPolls(async () => {
      tailer.gate = new StandbyGate(shared.state, 0, options.copyDelay);
      tailer.followGate();
      return tailer.gate;
    });
    const store = await PageStore.create(options.overlayDir, shared.pageBytes);
    return new StandbyVolume(shared, gate, store, options.overlaySweepIntervalMs, options.maxKeptPages);
  } catch (error) {
    await shared.close().catch(() => undefined);
    throw error;
  }
}
