/**
 * A standby's private page store: one local file of fixed-size page slots
 * with a free list. Asynchronous I/O only (it serves FUSE requests).
 *
 * Why not SQLite (better-sqlite3): its API is synchronous and would block the
 * daemon's event loop on every page the standby writes. Why not the branch's
 * overlay log: a standby rewrites the same pages over and over and drops them
 * again as the shared store catches up; a log would need a cleaner, slots are
 * reused in place. The store is scratch space: a standby mount starts with an
 * empty one (its PostgreSQL starts from the shared state), so nothing here has
 * to survive a crash and it is never fsynced.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';

export class PageStore {
  private freeSlots: number[] = [];
  /** Released while reads were in flight: reused only once no read can still be reading them. */
  private releasedSlots: number[] = [];
  private readsInFlight = 0;
  private slotCount = 0;

  private constructor(private readonly handle: fsp.FileHandle, readonly file: string, readonly pageBytes: number) {}

  /** Creates (or empties) the store in `dir`. */
  static async create(dir: string, pageBytes: number): Promise<PageStore> {
    await fsp.mkdir(dir, { recursive: true });
    const file = path.join(dir, 'pages.bin');
    return new PageStore(await fsp.open(file, 'w+'), file, pageBytes);
  }

  /** Slots in use, in bytes. */
  get usedBytes(): number { return (this.slotCount - this.freeSlots.length - this.releasedSlots.length) * this.pageBytes; }

  allocate(): number {
    return this.freeSlots.pop() ?? this.slotCount++;
  }

  release(slot: number): void {
    if (this.readsInFlight === 0) this.freeSlots.push(slot);
    else this.releasedSlots.push(slot);
  }

  async write(slot: number, page: Buffer): Promise<void> {
    await this.handle.write(page, 0, this.pageBytes, slot * this.pageBytes);
  }

  async read(slot: number): Promise<Buffer> {
    const page = Buffer.alloc(this.pageBytes);
    this.readsInFlight++;
    try {
      await this.handle.read(page, 0, this.pageBytes, slot * this.pageBytes);
    } finally {
      if (--this.readsInFlight === 0 && this.releasedSlots.length > 0) this.freeSlots.push(...this.releasedSlots.splice(0));
    }
    return page;
  }

  async close(): Promise<void> {
    await this.handle.close();
  }
}
