import { test } from 'node:test';
import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PageStore } from '../../src/volume/page-store';

const PAGE = 8192;

/** Seeded, so a failing run repeats (mulberry32). */
function random(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

function randomBytes(next: () => number, bytes: number): Buffer {
  const buffer = Buffer.alloc(bytes);
  for (let i = 0; i < bytes; i++) buffer[i] = Math.floor(next() * 256);
  return buffer;
}

/**
 * A pgbench_accounts heap page as pgbench -i leaves it, then updated: page
 * header, 61 line pointers, 61 tuples of a 23-byte header (frozen xmin, t_hoff
 * 24), aid, bid, abalance (int4) and filler char(84) (a 1-byte varlena header
 * and 84 blanks): 121 bytes, 128 with alignment.
 */
function pgbenchHeapPage(block: number): Buffer {
  const TUPLES = 61;
  const TUPLE_BYTES = 121;
  const ALIGNED_TUPLE_BYTES = 128;
  const next = random(block);
  const page = Buffer.alloc(PAGE);
  page.writeUInt32LE(0x2, 0); // pd_lsn
  page.writeUInt32LE(0x1a2b_3c40 + block * 0x40, 4);
  page.writeUInt16LE(Math.floor(next() * 0x1_0000), 8); // pd_checksum
  page.writeUInt16LE(24 + TUPLES * 4, 12); // pd_lower
  page.writeUInt16LE(PAGE - TUPLES * ALIGNED_TUPLE_BYTES, 14); // pd_upper
  page.writeUInt16LE(PAGE, 16); // pd_special
  page.writeUInt16LE(PAGE | 4, 18); // pd_pagesize_version
  for (let i = 0; i < TUPLES; i++) {
    const offset = PAGE - (i + 1) * ALIGNED_TUPLE_BYTES;
    page.writeUInt32LE((offset | (1 << 15) | (TUPLE_BYTES << 17)) >>> 0, 24 + i * 4); // lp_off, LP_NORMAL, lp_len
    page.writeUInt32LE(1000 + Math.floor(next() * 50_000), offset); // t_xmin
    page.writeUInt16LE(block >>> 16, offset + 12); // t_ctid
    page.writeUInt16LE(block & 0xffff, offset + 14);
    page.writeUInt16LE(i + 1, offset + 16);
    page.writeUInt16LE(4, offset + 18); // t_infomask2: 4 attributes
    page.writeUInt16LE(0x0800 | 0x0300 | 0x0002, offset + 20); // xmax invalid, xmin frozen, varwidth
    page[offset + 22] = 24; // t_hoff
    const aid = block * TUPLES + i + 1;
    page.writeInt32LE(aid, offset + 24);
    page.writeInt32LE(Math.floor((aid - 1) / 100_000) + 1, offset + 28);
    page.writeInt32LE(Math.floor(next() * 10_001) - 5000, offset + 32); // abalance after pgbench's updates
    page[offset + 36] = (85 << 1) | 1; // short varlena header: 85 bytes
    page.fill(0x20, offset + 37, offset + 37 + 84);
  }
  return page;
}

/** A page whose first `noiseBytes` bytes are noise: it deflates to about that many bytes. */
function pageDeflatingTo(next: () => number, noiseBytes: number): Buffer {
  const page = Buffer.alloc(PAGE, 0x20);
  randomBytes(next, noiseBytes).copy(page);
  return page;
}

async function withStore(body: (store: PageStore, dir: string) => Promise<void>): Promise<void> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'lsnfs-page-store-'));
  const store = await PageStore.create(dir, PAGE);
  try {
    await body(store, dir);
  } finally {
    await store.close();
    await fsp.rm(dir, { recursive: true, force: true });
  }
}

async function fileBytes(dir: string): Promise<number> {
  let bytes = 0;
  for (const name of await fsp.readdir(dir)) bytes += (await fsp.stat(path.join(dir, name))).size;
  return bytes;
}

/** Slots the file of a class spans (its last one may be partly written). */
async function slotsIn(dir: string, slotBytes: number): Promise<number> {
  return Math.ceil((await fsp.stat(path.join(dir, `pages-${slotBytes}.bin`))).size / slotBytes);
}

/** Writes `page` under a new handle; returns the handle and the bytes of the slot it took. */
async function writeNew(store: PageStore, page: Buffer): Promise<{ handle: number; slotBytes: number }> {
  const before = store.usedBytes;
  const handle = store.allocate();
  await store.write(handle, page);
  return { handle, slotBytes: store.usedBytes - before };
}

test('page store: compressible, incompressible and all-zero pages read back as written', async (t) => {
  await withStore(async (store, dir) => {
    const heap = await writeNew(store, pgbenchHeapPage(1234));
    const noise = await writeNew(store, randomBytes(random(1), PAGE));
    const zeros = await writeNew(store, Buffer.alloc(PAGE));
    assert.equal(noise.slotBytes, PAGE);
    assert.equal((await fsp.stat(path.join(dir, `pages-${PAGE}.bin`))).size, PAGE, 'a page that does not deflate is stored raw');
    assert.equal(zeros.slotBytes, PAGE / 64, 'zeros take the smallest slot');
    assert.ok(heap.slotBytes <= PAGE / 4, `a pgbench heap page takes ${heap.slotBytes} bytes`);
    t.diagnostic(`pgbench heap page (61 tuples): ${heap.slotBytes}-byte slot, ratio ${(PAGE / heap.slotBytes).toFixed(1)}`);
    assert.equal(store.usedBytes, heap.slotBytes + noise.slotBytes + zeros.slotBytes);
    assert.ok(await fileBytes(dir) <= store.usedBytes, 'each file holds one slot');

    const reads = await Promise.all([heap, noise, zeros].map((w) => store.read(w.handle)));
    assert.deepEqual(reads, [pgbenchHeapPage(1234), randomBytes(random(1), PAGE), Buffer.alloc(PAGE)]);
    assert.deepEqual(await store.read(heap.handle), pgbenchHeapPage(1234), 'reads again');
  });
});

test('page store: overwriting a handle with a page of another size moves it to another class', async () => {
  await withStore(async (store, dir) => {
    const zeros = Buffer.alloc(PAGE);
    const noise = randomBytes(random(2), PAGE);
    const { handle, slotBytes: zeroSlotBytes } = await writeNew(store, zeros);
    await store.write(handle, noise);
    assert.equal(store.usedBytes, PAGE, 'the small slot was released');
    assert.deepEqual(await store.read(handle), noise);
    await store.write(handle, zeros);
    assert.equal(store.usedBytes, zeroSlotBytes);
    assert.deepEqual(await store.read(handle), zeros);
    assert.equal(await slotsIn(dir, zeroSlotBytes), 1, 'the zeros went back to the slot they left');
    assert.equal(await slotsIn(dir, PAGE), 1);
  });
});

test('page store: released slots are reused, and files stay near the bytes in use under churn', async (t) => {
  await withStore(async (store, dir) => {
    const first = await writeNew(store, pgbenchHeapPage(1));
    store.release(first.handle);
    assert.equal(store.usedBytes, 0);
    assert.throws(() => store.release(first.handle), /not allocated/);
    await assert.rejects(store.read(first.handle), /holds no page/);
    const second = await writeNew(store, pgbenchHeapPage(2));
    assert.equal(second.slotBytes, first.slotBytes);
    assert.equal(await slotsIn(dir, second.slotBytes), 1, 'the freed slot was reused');
    store.release(second.handle);

    // Pages of every size, written, rewritten and released at random on 500 handles.
    const HANDLES = 500;
    const CYCLES = 10_000;
    const next = random(3);
    const live: ({ handle: number; page: Buffer } | null)[] = new Array(HANDLES).fill(null);
    let worstRatio = 0;
    for (let cycle = 0; cycle < CYCLES; cycle++) {
      const i = Math.floor(next() * HANDLES);
      const entry = live[i];
      if (entry && next() < 0.5) {
        store.release(entry.handle);
        live[i] = null;
        continue;
      }
      const page = pageDeflatingTo(next, Math.floor(next() * PAGE));
      const handle = entry?.handle ?? store.allocate();
      await store.write(handle, page);
      live[i] = { handle, page };
      if (cycle % 500 === 499) worstRatio = Math.max(worstRatio, (await fileBytes(dir)) / store.usedBytes);
    }
    t.diagnostic(`churn: files at most ${worstRatio.toFixed(2)} x the bytes in use`);
    assert.ok(worstRatio < 1.5, `files grew to ${worstRatio.toFixed(2)} x the bytes in use`);
    for (const entry of live) if (entry) assert.deepEqual(await store.read(entry.handle), entry.page);
  });
});

test('page store: a slot released during a read is reused only once no read begun before the release can read it', async () => {
  await withStore(async (store, dir) => {
    const pageA = pgbenchHeapPage(10);
    const pageB = pgbenchHeapPage(11);
    const a = await writeNew(store, pageA);
    const other = await writeNew(store, Buffer.alloc(PAGE));

    const reading = store.read(a.handle);
    store.release(a.handle);
    const b = await writeNew(store, pageB);
    assert.equal(b.slotBytes, a.slotBytes, 'both pages in one class');
    assert.deepEqual(await reading, pageA, 'the read saw the page it began on');
    assert.equal(await slotsIn(dir, a.slotBytes), 2, 'a new slot, not the one being read');
    const refill = await writeNew(store, pgbenchHeapPage(12));
    assert.equal(await slotsIn(dir, a.slotBytes), 2, 'the read has ended: its slot is reused');

    // Reads that overlap one another, as a busy standby's do: the released
    // slot is reused once the reads begun before its release have ended.
    let inFlight = store.read(other.handle);
    store.release(b.handle);
    for (let i = 0; i < 3; i++) {
      const following = store.read(other.handle);
      await inFlight;
      inFlight = following;
    }
    const c = await writeNew(store, pageA);
    await inFlight;
    assert.equal(await slotsIn(dir, a.slotBytes), 2, 'the released slot was reused while later reads were in flight');
    assert.deepEqual(await store.read(c.handle), pageA);
    assert.deepEqual(await store.read(refill.handle), pgbenchHeapPage(12));
  });
});

test('page store: close, and create empties what an earlier store left', async () => {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'lsnfs-page-store-'));
  try {
    await fsp.writeFile(path.join(dir, 'pages.bin'), Buffer.alloc(PAGE)); // the single-file layout
    const store = await PageStore.create(dir, PAGE);
    assert.ok(!(await fsp.readdir(dir)).includes('pages.bin'));
    const { handle } = await writeNew(store, pgbenchHeapPage(5));
    await store.close();
    await assert.rejects(store.read(handle), { code: 'EBADF' });
    assert.ok(await fileBytes(dir) > 0, 'close leaves the files (scratch, emptied by the next create)');

    const again = await PageStore.create(dir, PAGE);
    assert.equal(await fileBytes(dir), 0);
    assert.equal(again.usedBytes, 0);
    await again.close();
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

test('page store: compact cuts the files back to the pages in use, which read back as written under their handles', async () => {
  await withStore(async (store, dir) => {
    // Pages of one size class, as a pgbench standby's are (see CLASS_COUNT).
    const pageOf = (block: number): Buffer => pageDeflatingTo(random(block), 520);
    const pages = new Map<number, Buffer>();
    for (let block = 0; block < 600; block++) pages.set((await writeNew(store, pageOf(block))).handle, pageOf(block));
    const grown = store.fileBytes;
    assert.ok(await fileBytes(dir) <= grown, 'a file\'s last slot may be written in part');
    // What a primary's checkpoint does to a standby's overlay: most pages dropped, a few scattered ones stay.
    for (const handle of [...pages.keys()]) {
      if (handle % 10 === 0) continue;
      store.release(handle);
      pages.delete(handle);
    }
    assert.equal(store.fileBytes, grown, 'releases alone leave the files at their peak');
    await store.compact(1_000);
    await store.compact(1_000);
    assert.equal(store.fileBytes, store.usedBytes, 'the files hold just the pages in use');
    assert.ok(await fileBytes(dir) <= store.usedBytes, 'and the files were cut');
    for (const [handle, page] of pages) assert.deepEqual(await store.read(handle), page, `handle ${handle}`);
    // The cut files grow again from their ends.
    const later = await writeNew(store, pageOf(9_999));
    assert.deepEqual(await store.read(later.handle), pageOf(9_999));
    assert.ok(await fileBytes(dir) <= store.usedBytes);
  });
});

test('page store: compaction racing writes, rewrites, releases and reads loses no page', async (t) => {
  await withStore(async (store, dir) => {
    const HANDLES = 1_000;
    const next = random(7);
    const live: ({ handle: number; page: Buffer; writing: boolean } | null)[] = new Array(HANDLES).fill(null);
    let compactions = 0;
    let compacting: Promise<void> = Promise.resolve();
    for (let round = 0; round < 20; round++) {
      // A burst of writes (a restart point), then most pages dropped (the primary caught up), with
      // compactions, reads and rewrites in flight at the same time.
      const work: Promise<void>[] = [];
      for (let op = 0; op < 1_200; op++) {
        const i = Math.floor(next() * HANDLES);
        const entry = live[i];
        const roll = next();
        // As the standby's overlay does: a handle being written is neither read nor released nor written again.
        if (entry?.writing) continue;
        if (entry && roll < (round % 2 === 0 ? 0.6 : 0.1)) {
          store.release(entry.handle);
          live[i] = null;
        } else if (entry && roll < 0.8) {
          work.push(store.read(entry.handle).then((read) => assert.deepEqual(read, entry.page, `handle ${entry.handle} read in flight`)));
        } else {
          const page = pageDeflatingTo(next, 440 + Math.floor(next() * 200)); // two or three classes: compaction has work
          const handle = entry?.handle ?? store.allocate();
          const written = { handle, page, writing: true };
          live[i] = written;
          work.push(store.write(handle, page).then(() => { written.writing = false; }));
        }
        if (op % 25 === 0) {
          compacting = compacting.then(() => { compactions++; return store.compact(64); });
          work.push(compacting);
        }
        if (op % 5 === 0) await new Promise((resolve) => setImmediate(resolve)); // let I/O in flight move on
      }
      await Promise.all(work);
    }
    await compacting;
    for (const entry of live) if (entry) assert.deepEqual(await store.read(entry.handle), entry.page, `handle ${entry.handle}`);
    for (let i = 0; i < 50 && store.fileBytes > store.usedBytes; i++) await store.compact(1_000);
    t.diagnostic(`${compactions} compactions in flight with the churn; files ${await fileBytes(dir)} bytes for ${store.usedBytes} in use`);
    assert.ok(store.fileBytes <= store.usedBytes * 1.25 + 64 * PAGE, `files ${store.fileBytes} bytes for ${store.usedBytes} in use`);
    assert.ok(await fileBytes(dir) <= store.fileBytes);
    for (const entry of live) if (entry) assert.deepEqual(await store.read(entry.handle), entry.page, `handle ${entry.handle} after compaction`);
  });
});
