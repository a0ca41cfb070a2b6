/**
 * A standby's private page store: pages kept deflated in slots of 64
 * size classes, one local file per class, each with a free list.
 * Asynchronous I/O only (it serves FUSE requests).
 *
 * Why not SQLite (better-sqlite3): its API is synchronous and would block the
 * daemon's event loop on every page the standby writes. Why not the branch's
 * overlay log: a standby rewrites the same pages over and over and drops them
 * again as the shared store catches up; a log would need a cleaner, slots are
 * reused in place. The store is scratch space: a standby mount starts with an
 * empty one (its PostgreSQL starts from the shared state), so nothing here has
 * to survive a crash and it is never fsynced.
 *
 * Why compressed: the overlay is where a standby's disk goes (200-290 MB per
 * standby on a 1.1 GB pgbench database), and its pages are mostly heap pages
 * of blank-padded tuples, which deflate to about a fifteenth of a page, and
 * btree pages, to about a third. Why size classes: a freed slot fits any later
 * page of its class, so a file grows only while its class has no free slot, a
 * page loses less than one class step to rounding, and compact() can move any
 * page into any free slot of its class without searching for room;
 * variable-length extents would fragment under the standby's churn. A page's
 * size is known only when it is written, so the number the caller keeps is a
 * handle that maps to the class and slot its bytes went to.
 */
import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';

/**
 * Slot sizes are 1/64 .. 64/64 of a page: 128 B steps for PostgreSQL's 8 KiB
 * pages; steps relative to the page keep the files 64 at any page size lsnfs
 * allows (4-64 KiB). Why that fine: the pages a pgbench standby writes deflate
 * to a narrow band just above a sixteenth of a page (512-575 of 8192 bytes,
 * 536 on average, in bench-standby's overlays of 2026-11-22), so with 1/16
 * steps nearly every one took a 1024-byte slot, 1.91 x its bytes; with 1/64
 * steps it takes 640, 1.19 x.
 */
const CLASS_COUNT = 64;
/**
 * Before a class's file grows, a page takes a free slot up to this many
 * classes larger (an eighth of a page): the files' sizes are what the overlay
 * costs, and each class's file otherwise grows to its own peak. Measured with
 * 10k random writes and releases on 500 handles, pages of every size: the
 * files ended 1.45 x the deflated bytes in use with 64 classes and this spill,
 * 1.66 x with a spill of 2 classes, and 1.46 x with the earlier 16 classes
 * (spill 2); with pages of 400-650 deflated bytes, 1.22 x against 1.72 x.
 */
const SPILL_CLASSES = CLASS_COUNT / 8;
/** Fast: the standby writes every page it evicts through here, and level 6 saved only 1.4 % more on pgbench heap pages. */
const DEFLATE_OPTIONS: zlib.ZlibOptions = { level: 1 };
/**
 * compact() takes on a class's file once at least this many of its slots,
 * and at least 1/COMPACT_FREE_SHARE_DIVISOR of them, are free: below that, the
 * free slots are what the next writes take anyway.
 */
const COMPACT_MIN_FREE_SLOTS = 64;
const COMPACT_FREE_SHARE_DIVISOR = 4;
/** Moves in flight at once: each is a read and a write in libuv's thread pool, which FUSE requests' reads share. */
const COMPACT_MOVES_IN_FLIGHT = 2;
/** This store's files, in this or an earlier layout (pages.bin: one file of whole pages). */
const STORE_FILE = /^pages(-\d+)?\.bin$/;

interface SlotClass {
  readonly slotBytes: number;
  readonly file: fsp.FileHandle;
  /** The file's length in slots: grows only when no slot of the class is free, shrinks when compact() cuts its free end. */
  slotCount: number;
  readonly freeSlots: number[];
  /** A cut of the file in flight (see compact): a write past the cut waits for it, or the cut could drop it. */
  cutting: Promise<void> | null;
}

/** Where the bytes of a written page live. */
interface Place {
  readonly slotClass: SlotClass;
  readonly slot: number;
  /** The deflated length, or pageBytes for a page stored raw. */
  readonly storedBytes: number;
}

/** A page to copy from the end of its file to a lower free slot of the same class. */
interface Move { readonly handle: number; readonly from: Place; to: number }

export class PageStore {
  /** By handle: its page's place; null while allocated and not written yet, undefined while free. */
  private readonly places: (Place | null | undefined)[] = [];
  private readonly freeHandles: number[] = [];
  /** Handles with a write in flight: releasing one would let its write map a page to a handle now someone else's. */
  private readonly writing = new Set<number>();
  /** Sequence numbers of the reads in flight, oldest first (a Set iterates in insertion order). */
  private readonly readsInFlight = new Set<number>();
  private readsBegun = 0;
  /**
   * Places released while reads were in flight, in release order, each with
   * the number of reads begun before its release: it is reused once all of
   * those have ended. Reads begun later cannot reach it (they look the handle
   * up when they begin), so steady reads never hold space back for long.
   */
  private readonly released: { place: Place; readsBegun: number }[] = [];
  private usedSlotBytes = 0;
  private compacting = false;
  /** A page deflated to more than this is stored raw: it would save no space, yet cost an inflate on every read. */
  private readonly rawAboveBytes: number;

  private constructor(private readonly classes: SlotClass[], readonly pageBytes: number) {
    this.rawAboveBytes = classes[CLASS_COUNT - 2]!.slotBytes;
  }

  /** Creates (or empties) the store in `dir`. */
  static async create(dir: string, pageBytes: number): Promise<PageStore> {
    assert.ok(pageBytes > 0 && pageBytes % CLASS_COUNT === 0, `page size ${pageBytes}: not a multiple of ${CLASS_COUNT}`);
    await fsp.mkdir(dir, { recursive: true });
    // An earlier mount's files (another page size, an earlier layout) would hold disk for nothing.
    for (const name of await fsp.readdir(dir)) if (STORE_FILE.test(name)) await fsp.rm(path.join(dir, name));
    const classes: SlotClass[] = [];
    try {
      for (let i = 1; i <= CLASS_COUNT; i++) {
        const slotBytes = (pageBytes / CLASS_COUNT) * i;
        classes.push({ slotBytes, file: await fsp.open(path.join(dir, `pages-${slotBytes}.bin`), 'w+'), slotCount: 0, freeSlots: [], cutting: null });
      }
    } catch (error) {
      await Promise.all(classes.map((slotClass) => slotClass.file.close()));
      throw error;
    }
    return new PageStore(classes, pageBytes);
  }

  /** Bytes of the slots holding pages (a deflated page takes a whole slot). */
  get usedBytes(): number { return this.usedSlotBytes; }

  /** Bytes of the store's files: every slot up to each file's last, in use or free. */
  get fileBytes(): number {
    return this.classes.reduce((bytes, slotClass) => bytes + slotClass.slotCount * slotClass.slotBytes, 0);
  }

  /** A handle for a page; it holds one once written, and may be written again. */
  allocate(): number {
    const handle = this.freeHandles.pop() ?? this.places.length;
    assert.equal(this.places[handle], undefined, `handle ${handle} handed out twice`);
    this.places[handle] = null;
    return handle;
  }

  /** Frees a handle and its page's slot; not while the handle is being written. */
  release(handle: number): void {
    const place = this.places[handle];
    assert.notEqual(place, undefined, `handle ${handle} is not allocated`);
    assert.ok(!this.writing.has(handle), `handle ${handle} released while it is being written`);
    this.places[handle] = undefined;
    this.freeHandles.push(handle);
    if (place) this.releasePlace(place);
  }

  /**
   * Stores `page` under `handle` (a page it held before is released once the
   * new one is written, so reads in flight meanwhile read the old one).
   *
   * Deflates (and read() inflates) synchronously, on the event loop that
   * serves FUSE: on a busy 2-core host an 8 KiB pgbench heap page took 47-74
   * µs to deflate and 10-16 µs to inflate that way. zlib's callback API took
   * as much of the event loop for a deflate (43-83 µs: it builds a stream per
   * call and hands the work to the thread pool and back) and 2-3 times as
   * much for an inflate (17-58 µs), each page waited 2-3 times as long, and
   * its work would queue in the thread pool with the file I/O that FUSE
   * requests wait for.
   */
  async write(handle: number, page: Buffer): Promise<void> {
    assert.equal(page.length, this.pageBytes, 'a page store holds whole pages');
    assert.notEqual(this.places[handle], undefined, `handle ${handle} is not allocated`);
    assert.ok(!this.writing.has(handle), `handle ${handle} written twice at once`);
    const deflated = zlib.deflateRawSync(page, DEFLATE_OPTIONS);
    const bytes = deflated.length <= this.rawAboveBytes ? deflated : page;
    const place = this.take(bytes.length);
    this.writing.add(handle);
    try {
      if (place.slotClass.cutting) await place.slotClass.cutting;
      const { bytesWritten } = await place.slotClass.file.write(bytes, 0, bytes.length, place.slot * place.slotClass.slotBytes);
      assert.equal(bytesWritten, bytes.length, `short write to ${place.slotClass.slotBytes}-byte slot ${place.slot}`);
    } catch (error) {
      // No handle maps to the place yet, so no read can be reading it.
      this.usedSlotBytes -= place.slotClass.slotBytes;
      place.slotClass.freeSlots.push(place.slot);
      throw error;
    } finally {
      this.writing.delete(handle);
    }
    const old = this.places[handle];
    this.places[handle] = place;
    if (old) this.releasePlace(old);
  }

  async read(handle: number): Promise<Buffer> {
    const place = this.places[handle];
    assert.ok(place, `handle ${handle} holds no page`);
    const stored = place.storedBytes === this.pageBytes ? Buffer.alloc(this.pageBytes) : Buffer.allocUnsafe(place.storedBytes);
    const sequence = this.readsBegun++;
    this.readsInFlight.add(sequence);
    try {
      const { bytesRead } = await place.slotClass.file.read(stored, 0, stored.length, place.slot * place.slotClass.slotBytes);
      assert.equal(bytesRead, stored.length, `short read of ${place.slotClass.slotBytes}-byte slot ${place.slot}`);
    } finally {
      this.readsInFlight.delete(sequence);
      this.reuseReleased();
    }
    if (stored.length === this.pageBytes) return stored;
    const page = zlib.inflateRawSync(stored);
    assert.equal(page.length, this.pageBytes, `${place.slotClass.slotBytes}-byte slot ${place.slot} inflated to ${page.length} bytes`);
    return page;
  }

  /**
   * Gives back the disk of slots freed since the files grew. A standby's
   * overlay swells when its restart point writes every dirty buffer and
   * shrinks when the primary's next checkpoint catches up with those pages,
   * but a file only grows: without this the overlay's disk stays at its peak.
   * For each class whose file is mostly free: cuts the file after its last
   * slot in use, and moves up to `maxMoves` pages (in all) from the file's end
   * into its lowest free slots, whose space the next call cuts. A moved page
   * keeps its handle; a move whose handle was written or released meanwhile
   * is abandoned.
   */
  async compact(maxMoves: number): Promise<void> {
    assert.ok(!this.compacting, 'one compaction at a time');
    const wasteful = this.classes.filter((c) => c.freeSlots.length >= COMPACT_MIN_FREE_SLOTS && c.freeSlots.length * COMPACT_FREE_SHARE_DIVISOR >= c.slotCount);
    if (wasteful.length === 0) return;
    this.compacting = true;
    try {
      const owners = new Map<SlotClass, Map<number, number>>(wasteful.map((c) => [c, new Map()]));
      this.places.forEach((place, handle) => { if (place) owners.get(place.slotClass)?.set(place.slot, handle); });
      const moves: Move[] = [];
      const cuts: Promise<void>[] = [];
      for (const slotClass of wasteful) {
        const cut = this.cutFreeTail(slotClass);
        if (cut) cuts.push(cut);
        this.planMoves(slotClass, owners.get(slotClass)!, maxMoves, moves);
      }
      let next = 0;
      const mover = async (): Promise<void> => {
        while (next < moves.length) await this.move(moves[next++]!);
      };
      await Promise.all([...cuts, ...Array.from({ length: COMPACT_MOVES_IN_FLIGHT }, mover)]);
    } finally {
      this.compacting = false;
    }
  }

  async close(): Promise<void> {
    await Promise.all(this.classes.map((slotClass) => slotClass.file.close()));
  }

  /**
   * A free slot of the smallest class that holds `storedBytes`, else of one
   * up to SPILL_CLASSES larger, else a new slot at the end of its class's file.
   */
  private take(storedBytes: number): Place {
    const fit = Math.ceil(storedBytes / this.classes[0]!.slotBytes) - 1;
    assert.ok(fit >= 0 && fit < CLASS_COUNT, `${storedBytes} bytes fit no slot`);
    const slotClass = this.classes.slice(fit, fit + SPILL_CLASSES + 1).find((candidate) => candidate.freeSlots.length > 0) ?? this.classes[fit]!;
    const slot = slotClass.freeSlots.pop() ?? slotClass.slotCount++;
    this.usedSlotBytes += slotClass.slotBytes;
    return { slotClass, slot, storedBytes };
  }

  /**
   * Drops the free slots at the end of the class's file from its free list and
   * cuts the file there. Only free slots go: a slot being written, or released
   * while a read may still read it, is not on the free list. Leaves the free
   * list lowest slot last, so take() fills the file from its start.
   */
  private cutFreeTail(slotClass: SlotClass): Promise<void> | null {
    const free = Int32Array.from(slotClass.freeSlots).sort();
    let end = free.length;
    while (end > 0 && free[end - 1] === slotClass.slotCount - 1) {
      end--;
      slotClass.slotCount--;
    }
    slotClass.freeSlots.length = 0;
    for (let i = end - 1; i >= 0; i--) slotClass.freeSlots.push(free[i]!);
    if (end === free.length) return null;
    // Cuts run one after another: an earlier, longer cut must not land after a write past a later one.
    // A cut that fails leaves the file longer than its slots, which costs disk and nothing else.
    const length = slotClass.slotCount * slotClass.slotBytes;
    const cutting: Promise<void> = (slotClass.cutting ?? Promise.resolve())
      .then(() => slotClass.file.truncate(length))
      .catch(() => undefined)
      .finally(() => { if (slotClass.cutting === cutting) slotClass.cutting = null; });
    slotClass.cutting = cutting;
    return cutting;
  }

  /**
   * Pairs the class's last pages (by slot) with its lowest free slots, which
   * leave the free list. Skips slots that are free, and pages being written
   * or released (their slots are about to change anyway).
   */
  private planMoves(slotClass: SlotClass, owners: Map<number, number>, maxMoves: number, moves: Move[]): void {
    const free = slotClass.freeSlots; // highest first, lowest last (cutFreeTail)
    let highestFree = 0;
    for (let slot = slotClass.slotCount - 1; moves.length < maxMoves && slot >= 0; slot--) {
      if (free[highestFree] === slot) {
        highestFree++;
        continue;
      }
      const lowest = free[free.length - 1];
      if (lowest === undefined || lowest >= slot) return;
      const handle = owners.get(slot);
      if (handle === undefined || this.writing.has(handle)) continue;
      free.pop();
      moves.push({ handle, from: this.places[handle]!, to: lowest });
    }
  }

  /** Copies a page's stored bytes to its new slot and maps its handle there, unless the handle changed meanwhile. */
  private async move({ handle, from, to }: Move): Promise<void> {
    const { slotClass, storedBytes } = from;
    const current = (): boolean => this.places[handle] === from && !this.writing.has(handle);
    let moved = false;
    try {
      if (!current()) return;
      // Not counted as a read in flight: if the handle changes meanwhile, the bytes read are not used.
      const bytes = Buffer.allocUnsafe(storedBytes);
      const { bytesRead } = await slotClass.file.read(bytes, 0, storedBytes, from.slot * slotClass.slotBytes);
      assert.equal(bytesRead, storedBytes, `short read of ${slotClass.slotBytes}-byte slot ${from.slot}`);
      if (!current()) return;
      const { bytesWritten } = await slotClass.file.write(bytes, 0, storedBytes, to * slotClass.slotBytes);
      assert.equal(bytesWritten, storedBytes, `short write to ${slotClass.slotBytes}-byte slot ${to}`);
      if (!current()) return;
      this.places[handle] = { slotClass, slot: to, storedBytes };
      this.usedSlotBytes += slotClass.slotBytes;
      this.releasePlace(from);
      moved = true;
    } finally {
      if (!moved) slotClass.freeSlots.push(to);
    }
  }

  private releasePlace(place: Place): void {
    this.usedSlotBytes -= place.slotClass.slotBytes;
    if (this.readsInFlight.size === 0) place.slotClass.freeSlots.push(place.slot);
    else this.released.push({ place, readsBegun: this.readsBegun });
  }

  private reuseReleased(): void {
    if (this.released.length === 0) return;
    const oldestRead = this.readsInFlight.values().next().value ?? this.readsBegun;
    let reusable = 0;
    while (reusable < this.released.length && this.released[reusable]!.readsBegun <= oldestRead) reusable++;
    for (const { place } of this.released.splice(0, reusable)) place.slotClass.freeSlots.push(place.slot);
  }
}
