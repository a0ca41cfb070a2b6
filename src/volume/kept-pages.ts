/**
 * A standby's own copies of page versions its shared tree shows and the
 * primary may reclaim: the StandbyGate's PageKeeper (the why is in the gate's
 * header and in docs/ARCHITECTURE.md, "What a standby holds on the device").
 *
 * A copy is the page as the tree shows it when the copy is made, read once
 * from the device while the slot still holds that version there; reads of the
 * page take it from here until the tree's version changes (the gate applies a
 * record of the page, a truncate cuts it, the file goes). Copies live in the
 * standby's page store, deflated: a pgbench heap page takes ~640 bytes of
 * local disk where its version held 8 KiB of the device.
 */
import PQueue from 'p-queue';
import pino from 'pino';
import { PageKeeper } from '../replica/standby-gate';
import { assert } from '../util/errors';
import { PageStore } from './page-store';
import type { Volume } from './volume';

const log = pino({ name: 'lsnfs-kept-pages' }, pino.destination(2));

/** Device reads in flight for copies: they share libuv's thread pool with the reads FUSE requests wait for. */
const MAX_READS_IN_FLIGHT = 2;
/** Copies being written to the page store at once (each a deflate on the event loop and a pwrite). */
const MAX_STORES_IN_FLIGHT = 2;
/**
 * Most copies kept or being made at once: 1 GiB of 8 KiB versions, about 80 MB of local disk for pgbench's
 * pages. Past it a request waits for releases, and the horizon the standby holds stops at its page, as
 * it always did before copies were kept.
 */
export const MAX_KEPT_PAGES = 131_072;

/** A copy being made; its identity is the token release() withdraws (the read is then dropped). */
interface Copying {
  /** Settles when the copy is made or dropped; never if it failed (what waits for it waits for the gate to apply past it). */
  done: Promise<void>;
}

interface KeptPage {
  /** Its handle in the page store. */
  slot: number;
  /** The bytes until the store holds them (reads are served from here meanwhile, and for good if storing failed). */
  unstored: Buffer | null;
  /** Settles (never rejects) once the store has them, failed to, or the copy was released first. */
  stored: Promise<void>;
}

export class KeptPages implements PageKeeper {
  /** Copies by file, then page number. */
  private readonly kept = new Map<number, Map<number, KeptPage>>();
  private keptCount = 0;
  /** Copies being read from the device. */
  private readonly reading = new Map<number, Map<number, Copying>>();
  private readingCount = 0;
  private readonly reads = new PQueue({ concurrency: MAX_READS_IN_FLIGHT });
  private readonly stores = new PQueue({ concurrency: MAX_STORES_IN_FLIGHT });
  private readonly storing = new Set<Promise<void>>();
  private storeFailed = false;
  /** Called when a copy is made (the gate publishes further). */
  onKept: () => void = () => undefined;

  constructor(private readonly shared: Volume, private readonly store: PageStore, private readonly maxKeptPages = MAX_KEPT_PAGES) {}

  /** Copies held now. */
  get count(): number { return this.keptCount; }

  covers(ino: number, pageNo: number): boolean {
    return this.kept.get(ino)?.has(pageNo) === true || !this.shared.state.inodes.get(ino)?.pages?.get(pageNo)?.length;
  }

  request(ino: number, pageNo: number): Promise<void> | null {
    const copying = this.reading.get(ino)?.get(pageNo);
    if (copying) return copying.done;
    if (this.covers(ino, pageNo)) return null;
    if (this.keptCount + this.readingCount >= this.maxKeptPages) return unsettled();
    return this.copy(ino, pageNo);
  }

  requestFrom(ino: number, firstPageNo: number): Promise<void> | null {
    const pageNos = [...this.shared.state.inodes.get(ino)?.pages?.keys() ?? []].filter((pageNo) => pageNo >= firstPageNo && !this.covers(ino, pageNo));
    if (pageNos.length === 0) return null;
    // All or none: copies that cannot all be made would hold the limit for nothing.
    if (this.keptCount + this.readingCount + pageNos.length > this.maxKeptPages) return unsettled();
    return Promise.all(pageNos.map((pageNo) => this.request(ino, pageNo))).then(() => undefined);
  }

  /** Reads the tree's version of the page, while the slot still holds it on the device, and keeps it. */
  private copy(ino: number, pageNo: number): Promise<void> {
    const copying: Copying = { done: Promise.resolve() };
    setIn(this.reading, ino, pageNo, copying);
    this.readingCount++;
    const current = (): boolean => this.reading.get(ino)?.get(pageNo) === copying;
    copying.done = this.reads.add(async () => {
      const inode = this.shared.state.inodes.get(ino);
      const page = current() && inode ? await this.shared.readPage(inode, pageNo) : null;
      if (!current()) return;
      this.stopReading(ino, pageNo);
      if (page) this.keep(ino, pageNo, page);
      this.onKept();
    }).catch((error: Error) => {
      // The gate asks again when it next publishes; until then its horizon stays at this page.
      if (current()) this.stopReading(ino, pageNo);
      log.error({ err: error, ino, pageNo }, 'reading a page version to keep failed');
      return unsettled();
    });
    return copying.done;
  }

  release(ino: number, firstPageNo: number, endPageNo = firstPageNo + 1): void {
    const reading = this.reading.get(ino);
    for (const pageNo of inRange(reading, firstPageNo, endPageNo)) this.stopReading(ino, pageNo);
    const pages = this.kept.get(ino);
    for (const pageNo of inRange(pages, firstPageNo, endPageNo)) {
      const page = pages!.get(pageNo)!;
      pages!.delete(pageNo);
      this.keptCount--;
      if (page.unstored === null) this.store.release(page.slot);
      else void page.stored.then(() => this.store.release(page.slot));
    }
    if (pages?.size === 0) this.kept.delete(ino);
  }

  /** The kept copy of the page, or null: the tree's version is read from the device. */
  page(ino: number, pageNo: number): Promise<Buffer> | null {
    const page = this.kept.get(ino)?.get(pageNo);
    if (!page) return null;
    return page.unstored ? Promise.resolve(Buffer.from(page.unstored)) : this.store.read(page.slot);
  }

  /** Resolves once every copy made so far is stored (or failed to be): the store's size is then final. */
  async settled(): Promise<void> {
    while (this.storing.size > 0) await Promise.all([...this.storing]);
  }

  private stopReading(ino: number, pageNo: number): void {
    const pages = this.reading.get(ino)!;
    assert(pages.delete(pageNo), `page ${pageNo} of inode ${ino} was not being read`);
    this.readingCount--;
    if (pages.size === 0) this.reading.delete(ino);
  }

  private keep(ino: number, pageNo: number, bytes: Buffer): void {
    const page: KeptPage = { slot: this.store.allocate(), unstored: bytes, stored: Promise.resolve() };
    setIn(this.kept, ino, pageNo, page);
    this.keptCount++;
    const stored = this.stores.add(async () => {
      if (this.kept.get(ino)?.get(pageNo) !== page) return; // released before its turn
      await this.store.write(page.slot, bytes);
      page.unstored = null;
    }).catch((error: Error) => {
      if (!this.storeFailed) log.error({ err: error }, 'storing a kept page version failed; such copies stay in memory');
      this.storeFailed = true;
    });
    page.stored = stored;
    this.storing.add(stored);
    void stored.then(() => this.storing.delete(stored));
  }
}

/** A wait that ends only by being dropped: for copies that will not be made (the limit, a failed read). */
function unsettled(): Promise<void> {
  return new Promise(() => undefined);
}

function setIn<T>(byFile: Map<number, Map<number, T>>, ino: number, pageNo: number, value: T): void {
  let pages = byFile.get(ino);
  if (!pages) byFile.set(ino, pages = new Map());
  pages.set(pageNo, value);
}

/** The page numbers of `pages` in [first, end), listed before any is removed. */
function inRange(pages: Map<number, unknown> | undefined, first: number, end: number): number[] {
  if (!pages) return [];
  if (end === first + 1) return pages.has(first) ? [first] : [];
  return [...pages.keys()].filter((pageNo) => pageNo >= first && pageNo < end);
}
