/**
 * The filesystem as derived from the log: inodes, directories and the
 * per-page version index. Nothing here touches the device. Every change goes
 * through `apply(record)`, both when the primary makes it and when recovery or
 * a replica replays it, so a replayed state is the live state by construction.
 */
import { FsError, assert } from '../util/errors';
import { DATA_BYTES_OFFSET, DataRecordHead, RECORD_FLAG_SAME_CONTENT, RecordHeader, decodeDataHead, recordBytes } from '../log/format';
import { MetaOp } from './meta-ops';

export const S_IFMT = 0o170000;
export const S_IFDIR = 0o040000;
export const S_IFREG = 0o100000;
export const S_IFLNK = 0o120000;
export const ROOT_INO = 1;

export type VersionKind = 'image' | 'delta' | 'zero';

/** One version of one page: where its bytes are in the log and what they cover. */
export interface PageVersion {
  /** The LSN at which this version became visible (never changes). */
  versionLsn: number;
  /** The LSN of the record holding the bytes (changes when the cleaner moves it). 0 for 'zero'. */
  loc: number;
  kind: VersionKind;
  offsetInPage: number;
  length: number;
  /** The bytes are in a branch's private overlay log, not the shared device's log. */
  overlay?: true;
}

export interface Inode {
  ino: number;
  mode: number;
  uid: number;
  gid: number;
  nlink: number;
  size: number;
  atimeMs: number;
  mtimeMs: number;
  ctimeMs: number;
  /** Symlink target. */
  target?: string;
  /** Directory entries, name -> ino. */
  entries?: Map<string, number>;
  /** Regular file pages, page number -> versions ordered by versionLsn. */
  pages?: Map<number, PageVersion[]>;
}

export function isDir(inode: Inode): boolean { return (inode.mode & S_IFMT) === S_IFDIR; }
export function isSymlink(inode: Inode): boolean { return (inode.mode & S_IFMT) === S_IFLNK; }
export function isRegular(inode: Inode): boolean { return (inode.mode & S_IFMT) === S_IFREG; }

/** A data record that writes its whole page (an image): it replaces every older version of the page. */
export function writesWholePage(head: Pick<DataRecordHead, 'offsetInPage' | 'length'>, pageBytes: number): boolean {
  return head.offsetInPage === 0 && head.length === pageBytes;
}

/** An image, or zeros over the whole page (a truncated page): reading can start here. */
export function isBaseVersion(version: PageVersion, pageBytes: number): boolean {
  return version.kind === 'image' || (version.kind === 'zero' && writesWholePage(version, pageBytes));
}

/** A deleted file kept, with its pages, for readers whose view is older than the deletion. */
export interface Tombstone {
  inode: Inode;
  deletedAtLsn: number;
  /** The last name it had, for reports. */
  name: string;
}

/** Bytes of log a version keeps alive (zero versions live inside a metadata record). */
export function versionLogBytes(version: PageVersion): number {
  return version.kind === 'zero' ? 0 : recordBytes(DATA_BYTES_OFFSET + version.length);
}

export class VolumeState {
  readonly inodes = new Map<number, Inode>();
  /** Deleted files still visible at LSNs at or above the horizon, by inode number. */
  readonly tombstones = new Map<number, Tombstone>();
  nextIno = ROOT_INO + 1;
  /** Log bytes held by page versions still in the index. */
  liveBytes = 0;
  /**
   * The oldest LSN anyone may still read at. Versions hidden behind a newer
   * base at or below it are unreachable and dropped; deletions and truncations
   * at or below it drop their pages. Infinity while nobody reads the past;
   * replicas and retention lower it.
   */
  horizonLsn = Number.POSITIVE_INFINITY;
  /** Files deleted at or after this LSN stay as tombstones whatever the horizon (a standby still shows them). */
  keepDeletedFromLsn = Number.POSITIVE_INFINITY;
  /**
   * Pages that kept older versions because their newest base was at or above
   * the horizon when it was added, from `pendingTrimsHead` on, in log order of
   * that base: once the horizon passes it, the versions before it are
   * unreachable (setHorizon trims them). A page written again while queued
   * keeps its place and is queued anew at its next base after that trim, at
   * the end (trimmed a little late, never early). Without this a page written
   * once while a reader held the horizon kept its old version until its next
   * write. An entry names the page, not its array: arrays are replaced (see
   * addVersion), and a page dropped since is skipped.
   */
  private readonly pendingTrims: Array<{ baseLsn: number; inode: Inode; pageNo: number }> = [];
  private pendingTrimsHead = 0;
  /**
   * The pages in pendingTrims, by their current array (moved to a page's new array when it is
   * replaced): one entry per page, so the queue grows with the pages written while the horizon stands
   * still, not with every write (a long retention window would hold them all).
   */
  private readonly queuedPages = new Set<PageVersion[]>();

  constructor(readonly pageBytes: number) {}

  static empty(pageBytes: number, rootMode: number, nowMs: number): VolumeState {
    const state = new VolumeState(pageBytes);
    state.inodes.set(ROOT_INO, {
      ino: ROOT_INO, mode: S_IFDIR | rootMode, uid: 0, gid: 0, nlink: 2, size: 0,
      atimeMs: nowMs, mtimeMs: nowMs, ctimeMs: nowMs, entries: new Map(),
    });
    return state;
  }

  /** A file by inode number, live or tombstoned (data records and relocations name either). */
  fileInode(ino: number): Inode | undefined {
    return this.inodes.get(ino) ?? this.tombstones.get(ino)?.inode;
  }

  inode(ino: number): Inode {
    const inode = this.inodes.get(ino);
    if (!inode) throw new FsError('ENOENT', `inode ${ino} does not exist`);
    return inode;
  }

  /** Resolves an absolute path without following a final symlink. */
  resolve(path: string): Inode {
    let inode = this.inode(ROOT_INO);
    for (const name of splitPath(path)) {
      if (!inode.entries) throw new FsError('ENOTDIR', path);
      const child = inode.entries.get(name);
      if (child === undefined) throw new FsError('ENOENT', path);
      inode = this.inode(child);
    }
    return inode;
  }

  /** Resolves the directory that holds `path` and the final name. */
  resolveParent(path: string): { parent: Inode; name: string } {
    const parts = splitPath(path);
    const name = parts.pop();
    if (name === undefined) throw new FsError('EINVAL', 'the root has no parent');
    const parent = this.resolve('/' + parts.join('/'));
    if (!parent.entries) throw new FsError('ENOTDIR', path);
    return { parent, name };
  }

  // -------------------------------------------------------------------------
  // Applying records

  /** `overlay`: the record is in a branch's private log (its LSNs are of that log). */
  applyData(header: RecordHeader, payload: Buffer, overlay = false): void {
    const head = decodeDataHead(payload);
    const inode = this.fileInode(head.ino);
    if (head.versionLsn !== 0) {
      this.applyRelocation(head, header.lsn);
      return;
    }
    assert(inode?.pages, `data record at LSN ${header.lsn} for missing file inode ${head.ino}`);
    const kind: VersionKind = writesWholePage(head, this.pageBytes) ? 'image' : 'delta';
    this.addVersion(inode, head.pageNo, {
      versionLsn: header.lsn, loc: header.lsn, kind, offsetInPage: head.offsetInPage, length: head.length,
      ...(overlay ? { overlay: true as const } : {}),
    });
    if (header.flags & RECORD_FLAG_SAME_CONTENT) return;
    inode.size = Math.max(inode.size, head.pageNo * this.pageBytes + head.offsetInPage + head.length);
    inode.mtimeMs = header.timeMs;
    inode.ctimeMs = header.timeMs;
  }

  /**
   * The cleaner copied a live version forward: only its location changes, and only forward. A
   * standby's gate applies a copy at once, or with its held record when that drains; a version copied
   * twice must never go back to the first copy's place, which the cleaner has freed.
   */
  private applyRelocation(head: DataRecordHead, newLoc: number): void {
    const version = this.fileInode(head.ino)?.pages?.get(head.pageNo)?.find((v) => v.versionLsn === head.versionLsn && !v.overlay);
    if (version && newLoc > version.loc) version.loc = newLoc;
  }

  applyMeta(header: RecordHeader, op: MetaOp): void {
    const t = header.timeMs;
    const lsn = header.lsn;
    switch (op.op) {
      case 'create': {
        const parent = this.inode(op.parent);
        const inode: Inode = {
          ino: op.ino, mode: op.mode, uid: op.uid, gid: op.gid, nlink: 1, size: 0,
          atimeMs: t, mtimeMs: t, ctimeMs: t,
        };
        if (isDir(inode)) { inode.entries = new Map(); inode.nlink = 2; parent.nlink++; }
        else if (isSymlink(inode)) { inode.target = op.target ?? ''; inode.size = Buffer.byteLength(inode.target); }
        else inode.pages = new Map();
        this.inodes.set(op.ino, inode);
        this.nextIno = Math.max(this.nextIno, op.ino + 1);
        this.linkEntry(parent, op.name, op.ino, t);
        return;
      }
      case 'link': {
        const inode = this.inode(op.ino);
        inode.nlink++;
        inode.ctimeMs = t;
        this.linkEntry(this.inode(op.parent), op.name, op.ino, t);
        return;
      }
      case 'unlink': {
        this.removeEntry(this.inode(op.parent), op.name, t, lsn);
        return;
      }
      case 'rename': {
        const from = this.inode(op.parent);
        const to = this.inode(op.newParent);
        const ino = from.entries!.get(op.name);
        assert(ino !== undefined, `rename of missing entry ${op.name}`);
        if (to.entries!.get(op.newName) === ino) return;
        if (to.entries!.has(op.newName)) this.removeEntry(to, op.newName, t, lsn);
        from.entries!.delete(op.name);
        to.entries!.set(op.newName, ino);
        const moved = this.inode(ino);
        if (isDir(moved) && from !== to) { from.nlink--; to.nlink++; }
        moved.ctimeMs = t;
        from.mtimeMs = from.ctimeMs = to.mtimeMs = to.ctimeMs = t;
        return;
      }
      case 'setattr': {
        const inode = this.inode(op.ino);
        if (op.mode !== undefined) inode.mode = (inode.mode & S_IFMT) | (op.mode & 0o7777);
        if (op.uid !== undefined) inode.uid = op.uid;
        if (op.gid !== undefined) inode.gid = op.gid;
        if (op.atimeMs !== undefined) inode.atimeMs = op.atimeMs;
        if (op.mtimeMs !== undefined) inode.mtimeMs = op.mtimeMs;
        inode.ctimeMs = t;
        return;
      }
      case 'truncate': {
        this.truncate(this.inode(op.ino), op.size, header.lsn);
        const inode = this.inode(op.ino);
        inode.mtimeMs = inode.ctimeMs = t;
        return;
      }
    }
  }

  private linkEntry(parent: Inode, name: string, ino: number, t: number): void {
    assert(parent.entries && !parent.entries.has(name), `link over existing entry ${name}`);
    parent.entries.set(name, ino);
    parent.mtimeMs = parent.ctimeMs = t;
  }

  private removeEntry(parent: Inode, name: string, t: number, lsn: number): void {
    const ino = parent.entries!.get(name);
    assert(ino !== undefined, `unlink of missing entry ${name}`);
    parent.entries!.delete(name);
    parent.mtimeMs = parent.ctimeMs = t;
    const inode = this.inode(ino);
    inode.ctimeMs = t;
    if (isDir(inode)) {
      parent.nlink--;
      this.inodes.delete(ino);
      return;
    }
    inode.nlink--;
    if (inode.nlink > 0) return;
    this.inodes.delete(ino);
    if (!this.keepsDeletion(lsn)) this.dropPages(inode, 0);
    else this.tombstones.set(ino, { inode, deletedAtLsn: lsn, name });
  }

  private truncate(inode: Inode, size: number, lsn: number): void {
    assert(inode.pages, `truncate of non-file inode ${inode.ino}`);
    const keepPages = Math.ceil(size / this.pageBytes);
    if (lsn < this.horizonLsn) this.dropPages(inode, keepPages);
    else {
      // Readers older than this truncate still see the pages: cover them with zeros instead.
      for (const pageNo of [...inode.pages.keys()]) {
        if (pageNo < keepPages) continue;
        this.addVersion(inode, pageNo, { versionLsn: lsn, loc: 0, kind: 'zero', offsetInPage: 0, length: this.pageBytes });
      }
    }
    const cut = size % this.pageBytes;
    if (cut !== 0 && inode.pages.has(keepPages - 1) && size < inode.size) {
      // The tail of the boundary page must read as zeros if the file grows again.
      this.addVersion(inode, keepPages - 1, {
        versionLsn: lsn, loc: 0, kind: 'zero', offsetInPage: cut, length: this.pageBytes - cut,
      });
    }
    inode.size = size;
  }

  private dropPages(inode: Inode, firstDroppedPage: number): void {
    for (const [pageNo, versions] of inode.pages ?? []) {
      if (pageNo < firstDroppedPage) continue;
      for (const version of versions) this.liveBytes -= versionLogBytes(version);
      this.queuedPages.delete(versions);
      inode.pages!.delete(pageNo);
    }
  }

  private addVersion(inode: Inode, pageNo: number, version: PageVersion): void {
    // A page's array is always made at its length, never pushed to or spliced: V8 gives an array 17 slots
    // when a push outgrows it and keeps them after a splice, which was a third of a daemon's heap (a 1 GB
    // database's index: 131k pages, 46 MB live after a mark-compact, 30.5 MB with exact arrays; its
    // checkpoint loads ~30 ms sooner), and ~140 more bytes for every page written again.
    const previous = inode.pages!.get(pageNo);
    if (previous) this.replaceVersions(inode, pageNo, previous, previous.concat(version));
    else inode.pages!.set(pageNo, [version]);
    this.liveBytes += versionLogBytes(version);
    if (!isBaseVersion(version, this.pageBytes)) return;
    this.trimPage(inode, pageNo);
    this.queueTrim(inode, pageNo);
  }

  /** Makes `next` the page's array of versions in place of `previous`, keeping the page's place in the trim queue. */
  private replaceVersions(inode: Inode, pageNo: number, previous: PageVersion[], next: PageVersion[]): void {
    inode.pages!.set(pageNo, next);
    if (this.queuedPages.delete(previous)) this.queuedPages.add(next);
  }

  /**
   * Queues a page that keeps versions before a later base: the first such base is where the horizon
   * next makes some of them unreachable.
   */
  private queueTrim(inode: Inode, pageNo: number): void {
    const versions = inode.pages?.get(pageNo);
    if (!versions || this.queuedPages.has(versions)) return; // queued: trimmed, then queued again at its next base, when its turn comes
    for (let i = 1; i < versions.length; i++) {
      if (!isBaseVersion(versions[i]!, this.pageBytes)) continue;
      this.pendingTrims.push({ baseLsn: versions[i]!.versionLsn, inode, pageNo });
      this.queuedPages.add(versions);
      return;
    }
  }

  /**
   * After loading a checkpoint: its pages that still hold older versions wait for the horizon like
   * pages written since (in the order of their newest base, before anything the log adds later).
   */
  queueLoadedTrims(): void {
    assert(this.pendingTrims.length === 0, 'trims are queued from a checkpoint before any record is applied');
    const files = [...this.inodes.values(), ...[...this.tombstones.values()].map((t) => t.inode)];
    for (const inode of files) for (const pageNo of inode.pages?.keys() ?? []) this.queueTrim(inode, pageNo);
    this.pendingTrims.sort((a, b) => a.baseLsn - b.baseLsn);
  }

  /** Whether a file deleted at `lsn` must stay readable: a reader's view or a standby's deferred WAL unlink is at or before it. */
  private keepsDeletion(lsn: number): boolean {
    return lsn >= this.horizonLsn || lsn >= this.keepDeletedFromLsn;
  }

  /** Moves the horizon: drops the versions and tombstones no reader can see any more. */
  setHorizon(horizonLsn: number, keepDeletedFromLsn = Number.POSITIVE_INFINITY): void {
    this.horizonLsn = horizonLsn;
    this.keepDeletedFromLsn = keepDeletedFromLsn;
    while (this.pendingTrimsHead < this.pendingTrims.length && this.pendingTrims[this.pendingTrimsHead]!.baseLsn < horizonLsn) {
      const { inode, pageNo } = this.pendingTrims[this.pendingTrimsHead++]!;
      const versions = inode.pages?.get(pageNo);
      if (!versions) continue; // dropped since
      this.queuedPages.delete(versions);
      this.trimPage(inode, pageNo);
      this.queueTrim(inode, pageNo); // a later base the horizon has not passed yet
    }
    if (this.pendingTrimsHead > 1024 && this.pendingTrimsHead * 2 > this.pendingTrims.length) {
      this.pendingTrims.splice(0, this.pendingTrimsHead);
      this.pendingTrimsHead = 0;
    }
    this.sweepTombstones();
  }

  /** Drops the page's versions hidden behind its newest base at or below the horizon; returns its versions then. */
  trimPage(inode: Inode, pageNo: number): PageVersion[] | undefined {
    const versions = inode.pages?.get(pageNo);
    if (!versions) return undefined;
    let keepFrom = -1;
    for (let i = versions.length - 1; i >= 0; i--) {
      if (isBaseVersion(versions[i]!, this.pageBytes) && versions[i]!.versionLsn < this.horizonLsn) { keepFrom = i; break; }
    }
    if (keepFrom <= 0) return versions;
    for (let i = 0; i < keepFrom; i++) this.liveBytes -= versionLogBytes(versions[i]!);
    const kept = versions.slice(keepFrom);
    this.replaceVersions(inode, pageNo, versions, kept);
    return kept;
  }

  /** After the horizon moved: drop the tombstones nobody can read any more. */
  private sweepTombstones(): void {
    for (const [ino, tombstone] of this.tombstones) {
      if (this.keepsDeletion(tombstone.deletedAtLsn)) continue;
      this.dropPages(tombstone.inode, 0);
      this.tombstones.delete(ino);
    }
  }

  /**
   * Log bytes a read at the tail needs: for every page of every file not
   * deleted, its newest base and the deltas after it. What the volume would
   * hold if no reader or retention kept older versions (the least it can hold).
   */
  tailVisibleBytes(): number {
    let bytes = 0;
    for (const inode of this.inodes.values()) {
      for (const pageNo of inode.pages?.keys() ?? []) {
        for (const version of this.versionsAt(inode, pageNo, Number.POSITIVE_INFINITY)) bytes += versionLogBytes(version);
      }
    }
    return bytes;
  }

  /** The versions a read at `atLsn` must combine (state after every record below it): newest base, then later deltas. */
  versionsAt(inode: Inode, pageNo: number, atLsn: number): PageVersion[] {
    const versions = inode.pages?.get(pageNo);
    if (!versions) return [];
    let end = versions.length;
    while (end > 0 && versions[end - 1]!.versionLsn >= atLsn) end--;
    let start = end - 1;
    while (start > 0 && !isBaseVersion(versions[start]!, this.pageBytes)) start--;
    return versions.slice(Math.max(start, 0), end);
  }
}

export function splitPath(path: string): string[] {
  return path.split('/').filter((part) => part.length > 0);
}
