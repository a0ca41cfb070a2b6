import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { promises as fsp } from 'node:fs';

import { BlockDevice, DEVICE_SECTOR_BYTES } from '../../src/device/device';
import { FIRST_LSN, RecordType, recordBytes, volumeSalt } from '../../src/log/format';
import { LogReader, LogRecord } from '../../src/log/log-reader';
import { LogSpace } from '../../src/log/log-space';
import { LogWriter, UNGUARDED } from '../../src/log/log-writer';
import { FsError } from '../../src/util/errors';
import { DelegatingDevice, Rng, makeRng, seedFrom, tempDevice, tempDir } from '../support/core';

const SEED = seedFrom('LOG_TEST_SEED');
const ctx = `(LOG_TEST_SEED=${SEED})`;
const LOG_OFFSET = 4096;
const EPOCH = 5;

interface Appended { lsn: number; type: RecordType; payload: Buffer }

/** A LogSpace that remembers which LSN ranges were written and which of those a completed flush covered. */
class TrackingSpace extends LogSpace {
  /** Ranges whose write completed, not yet known durable. */
  private completed: Array<[number, number]> = [];
  /** Ranges made durable by a flush that started after their write completed. */
  private durable: Array<[number, number]> = [];
  writes = 0;
  flushes = 0;
  /** Set to delay every flush (ms), or to a promise that gates flushes. */
  flushDelayMs = 0;
  flushGate: Promise<void> | null = null;

  constructor(device: BlockDevice, logBytes: number, salt: number) {
    super(device, LOG_OFFSET, logBytes, salt);
    const flush = device.flush.bind(device);
    device.flush = async () => {
      const covered = this.completed.splice(0);
      this.flushes++;
      if (this.flushGate) await this.flushGate;
      if (this.flushDelayMs) await new Promise((r) => setTimeout(r, this.flushDelayMs));
      await flush();
      this.durable.push(...covered);
    };
  }

  override async write(lsn: number, data: Buffer): Promise<void> {
    await super.write(lsn, data);
    this.writes++;
    this.completed.push([lsn, lsn + data.length]);
  }

  /** The end of the contiguous durable prefix starting at `from`. */
  durableEnd(from: number): number {
    const ranges = [...this.durable].sort((a, b) => a[0] - b[0]);
    let end = from;
    for (const [a, b] of ranges) if (a <= end && b > end) end = b;
    return end;
  }
}

/** A file device the log writer does not zero-fill ahead on. */
class NoFillDevice extends DelegatingDevice {
  override get allocatesOnWrite(): boolean { return false; }
}

async function setup(label: string, logBytes: number, deviceBytes = LOG_OFFSET + logBytes, options: { fillAhead?: boolean } = {}) {
  const tmp = tempDir(label);
  const { device: file } = await tempDevice(tmp.dir, deviceBytes);
  // The zero-fill ahead of the tail has its own test: elsewhere TrackingSpace would count its flushed zeros
  // as durable log and vouch for records a sync acknowledged too early.
  const device = options.fillAhead ? file : new NoFillDevice(file);
  const space = new TrackingSpace(device, logBytes, volumeSalt(randomUUID()));
  // The head, for the writer's tail limit; tests that wrap the log move it.
  const limits = { headLsn: FIRST_LSN };
  const writer = new LogWriter(space, EPOCH, FIRST_LSN, UNGUARDED, Buffer.alloc(0), () => limits.headLsn + logBytes);
  const reader = new LogReader(space);
  return {
    space, writer, reader, device, limits,
    async done() { await device.close(); tmp.remove(); },
  };
}

function appendRandom(writer: LogWriter, rng: Rng, maxBytes: number, out: Appended[]): Appended {
  const payload = rng.bytes(rng.int(maxBytes));
  const type = rng.pick([RecordType.Meta, RecordType.Data, RecordType.Epoch]);
  const header = writer.append(type, payload);
  const rec = { lsn: header.lsn, type, payload };
  out.push(rec);
  return rec;
}

async function scanAll(reader: LogReader, from: number, to?: number): Promise<{ records: LogRecord[]; stop: Awaited<ReturnType<LogReader['scan']>> }> {
  const records: LogRecord[] = [];
  const stop = await reader.scan(from, to === undefined ? {} : { toLsn: to }, ({ header, payload }) => {
    records.push({ header, payload: Buffer.from(payload) });
  });
  return { records, stop };
}

function assertSameRecords(scanned: LogRecord[], expected: Appended[], label: string): void {
  const real = scanned.filter((r) => r.header.type !== RecordType.Pad);
  assert.equal(real.length, expected.length, `${label}: record count ${ctx}`);
  for (let i = 0; i < expected.length; i++) {
    const got = real[i]!;
    const want = expected[i]!;
    assert.equal(got.header.lsn, want.lsn, `${label}: record ${i} lsn ${ctx}`);
    assert.equal(got.header.type, want.type, `${label}: record ${i} type`);
    assert.equal(got.header.epoch, EPOCH);
    assert.ok(got.payload.equals(want.payload), `${label}: record ${i} payload ${ctx}`);
  }
  // LSNs are contiguous: each record starts where the previous one ended.
  for (let i = 1; i < scanned.length; i++) {
    const prev = scanned[i - 1]!.header;
    assert.equal(scanned[i]!.header.lsn, prev.lsn + recordBytes(prev.payloadBytes), `${label}: contiguity at ${i}`);
  }
}

test('append many records, sync, scan them back in order', async () => {
  const rng = makeRng(SEED);
  const t = await setup('log-basic', 8 * 1024 * 1024);
  try {
    const appended: Appended[] = [];
    for (let round = 0; round < 20; round++) {
      const n = rng.range(1, 60);
      for (let i = 0; i < n; i++) appendRandom(t.writer, rng, rng.chance(0.1) ? 20_000 : 600, appended);
      if (rng.chance(0.7)) await t.writer.sync();
      else await new Promise((r) => setImmediate(r));
    }
    await t.writer.sync();
    assert.equal(t.writer.durableLsn, t.writer.tailLsn);
    assert.equal(t.writer.writtenLsn, t.writer.tailLsn);
    assert.equal(t.writer.tailLsn % DEVICE_SECTOR_BYTES, 0, 'batches end on sectors');
    const bounded = await scanAll(t.reader, FIRST_LSN, t.writer.tailLsn);
    assert.equal(bounded.stop.stop, 'end-of-range');
    assert.equal(bounded.stop.stopLsn, t.writer.tailLsn);
    assert.equal(bounded.stop.lastEpoch, EPOCH);
    assertSameRecords(bounded.records, appended, 'bounded scan');
    // Unbounded: stops at the tail, where the (zeroed) device holds no record.
    const open = await scanAll(t.reader, FIRST_LSN);
    assert.equal(open.stop.stop, 'no-record');
    assert.equal(open.stop.stopLsn, t.writer.tailLsn);
    // Single-record reads agree with the scan.
    for (const rec of appended.filter((_, i) => i % 7 === 0)) {
      const got = await t.reader.readRecord(rec.lsn);
      assert.ok(got && got.payload.equals(rec.payload), `readRecord ${rec.lsn}`);
    }
    // A read at an LSN that is not a record start is null.
    assert.equal(await t.reader.readRecord(appended[3]!.lsn + 8), null);
    // Scans may start at any record boundary.
    const mid = appended[Math.floor(appended.length / 2)]!;
    const tail = await scanAll(t.reader, mid.lsn, t.writer.tailLsn);
    assertSameRecords(tail.records, appended.slice(appended.indexOf(mid)), 'scan from the middle');
  } finally {
    await t.done();
  }
});

test('on a regular file the writer zero-fills the log\'s first lap ahead of its tail, and never past it', async () => {
  const rng = makeRng(SEED ^ 0x2222);
  // A 3 MiB log in a device with 2 MiB after it: the fill must stop at the end of the lap (beyond it is the
  // live log's start) and never reach the bytes after the log.
  const logBytes = 3 * 1024 * 1024;
  const t = await setup('log-fill-ahead', logBytes, LOG_OFFSET + logBytes + 2 * 1024 * 1024, { fillAhead: true });
  try {
    assert.equal(t.device.allocatesOnWrite, true, 'a temp file device allocates on write');
    const allocatedBytes = async (): Promise<number> => (await fsp.stat(t.device.name)).blocks * 512;
    /** The fill follows the flush that acknowledged a sync: wait for it. */
    const allocatedAtLeast = async (bytes: number): Promise<number> => {
      for (let i = 0; i < 200 && await allocatedBytes() < bytes; i++) await new Promise((r) => setTimeout(r, 10));
      return allocatedBytes();
    };
    assert.ok(await allocatedBytes() < 64 * 1024, 'a fresh device file is sparse');
    const appended: Appended[] = [];
    appendRandom(t.writer, rng, 600, appended);
    await t.writer.sync();
    // One chunk after the flush: allocated well beyond the few records written.
    const afterOne = await allocatedAtLeast(1024 * 1024);
    assert.ok(afterOne >= 1024 * 1024, `one flush zero-fills a chunk ahead (allocated ${afterOne} bytes)`);
    for (let i = 0; i < 6; i++) {
      appendRandom(t.writer, rng, 600, appended);
      await t.writer.sync();
    }
    const allocated = await allocatedAtLeast(logBytes);
    assert.ok(allocated >= logBytes, `the whole first lap is allocated (${allocated} of ${logBytes} bytes)`);
    assert.ok(allocated <= LOG_OFFSET + logBytes + 64 * 1024, `nothing past the log is written (${allocated} bytes allocated)`);
    // The records are intact (the fill never wrapped onto the log's start) and the scan stops at the tail.
    const scan = await scanAll(t.reader, FIRST_LSN);
    assert.equal(scan.stop.stop, 'no-record');
    assert.equal(scan.stop.stopLsn, t.writer.tailLsn);
    assertSameRecords(scan.records, appended, 'records after the fill');
  } finally {
    await t.done();
  }
});

test('wrap-around of the circular log: a 64 KiB log carries 3 MiB of records', async () => {
  const rng = makeRng(SEED ^ 0x1111);
  const logBytes = 64 * 1024;
  const t = await setup('log-wrap', logBytes);
  try {
    // The head is the oldest record still wanted; appends never let the tail
    // (plus a batch's worst-case padding) get more than logBytes ahead of it,
    // as the cleaner guarantees in a volume.
    const window: Appended[] = [];
    let head = FIRST_LSN;
    let straddled = 0;
    let laps = 0;
    while (t.writer.tailLsn < 3 * 1024 * 1024) {
      const n = rng.range(1, 12);
      for (let i = 0; i < n; i++) {
        const size = rng.int(rng.chance(0.2) ? 6000 : 300);
        while (t.writer.tailLsn + recordBytes(size) + 2 * DEVICE_SECTOR_BYTES - head > logBytes) {
          const dropped = window.shift()!;
          head = window[0]?.lsn ?? t.writer.tailLsn;
          t.limits.headLsn = head;
          assert.ok(dropped);
        }
        const payload = rng.bytes(size);
        const header = t.writer.append(RecordType.Data, payload);
        window.push({ lsn: header.lsn, type: RecordType.Data, payload });
        if ((header.lsn % logBytes) + recordBytes(size) > logBytes) straddled++;
      }
      await t.writer.sync();
      laps = Math.floor(t.writer.tailLsn / logBytes);
      if (rng.chance(0.3)) {
        const scanned = await scanAll(t.reader, head, t.writer.tailLsn);
        assert.equal(scanned.stop.stop, 'end-of-range', ctx);
        assertSameRecords(scanned.records, window, `window at tail ${t.writer.tailLsn}`);
      }
    }
    assert.ok(laps >= 40, `wrapped ${laps} times`);
    assert.ok(straddled > 0, 'some record crossed the physical end of the log');
    // An open scan from the head stops exactly at the tail: past it lie
    // records of the previous lap, whose LSNs do not match their position.
    const open = await scanAll(t.reader, head);
    assert.equal(open.stop.stop, 'no-record');
    assert.equal(open.stop.stopLsn, t.writer.tailLsn);
    // A record from the previous lap is not readable at its old LSN.
    assert.equal(await t.reader.readRecord(head - logBytes), null);
    // The writer refuses an append that would run over the head.
    const room = head + logBytes - t.writer.tailLsn;
    assert.throws(() => t.writer.append(RecordType.Data, Buffer.alloc(room)), /overwrite the log head/);
    assert.equal(t.writer.tailLsn, head + logBytes - room, 'a refused append does not move the tail');
  } finally {
    await t.done();
  }
});

test('group commit: concurrent syncs share flushes and resolve only when durable', async () => {
  const rng = makeRng(SEED ^ 0x2222);
  const t = await setup('log-group', 8 * 1024 * 1024);
  try {
    // 1. A burst: 200 appends, each followed by its own sync, in one tick.
    const violations: string[] = [];
    const syncs: Array<Promise<void>> = [];
    for (let i = 0; i < 200; i++) {
      const payload = rng.bytes(rng.int(400));
      t.writer.append(RecordType.Meta, payload);
      const want = t.writer.tailLsn;
      syncs.push(t.writer.sync().then(() => {
        if (t.space.durableEnd(FIRST_LSN) < want) violations.push(`sync to ${want} resolved at durable ${t.space.durableEnd(FIRST_LSN)}`);
      }));
    }
    await Promise.all(syncs);
    assert.equal(violations.length, 0, violations.join('\n'));
    assert.ok(t.space.flushes <= 2, `200 syncs in one tick took ${t.space.flushes} flushes`);
    assert.ok(t.space.writes <= 2, `200 appends in one tick took ${t.space.writes} batch writes`);

    // 2. Staggered: slow flushes (5 ms), syncs arriving over ~150 ms from many
    // "clients"; each sync must still see its own record durable.
    t.space.flushDelayMs = 5;
    const flushesBefore = t.space.flushes;
    const clients = Array.from({ length: 40 }, async (_, c) => {
      const local = makeRng(SEED + c);
      for (let i = 0; i < 10; i++) {
        await new Promise((r) => setTimeout(r, local.int(15)));
        t.writer.append(RecordType.Data, local.bytes(local.int(3000)));
        const want = t.writer.tailLsn;
        await t.writer.sync();
        if (t.space.durableEnd(FIRST_LSN) < want) violations.push(`client ${c}: sync to ${want} resolved at ${t.space.durableEnd(FIRST_LSN)}`);
        if (t.writer.durableLsn < want) violations.push(`client ${c}: writer.durableLsn ${t.writer.durableLsn} < ${want}`);
      }
    });
    await Promise.all(clients);
    const flushes = t.space.flushes - flushesBefore;
    assert.equal(violations.length, 0, `${violations.join('\n')} ${ctx}`);
    assert.ok(flushes < 400 / 4, `400 staggered syncs took ${flushes} flushes`);
    // Every flush had something to make durable: no flush without a sync waiter.
    assert.ok(flushes >= 1);
    // sync() with nothing new resolves without a flush.
    const before = t.space.flushes;
    await t.writer.sync();
    await t.writer.sync(FIRST_LSN);
    assert.equal(t.space.flushes, before);
  } finally {
    await t.done();
  }
});

test('a sync resolves while other records keep being appended (no flush starvation)', async () => {
  const t = await setup('log-starve', 32 * 1024 * 1024);
  try {
    let appending = true;
    let appended = 0;
    const pump = () => {
      if (!appending) return;
      // Keep the writer's queue non-empty: a few records every tick, the log's head following the tail.
      for (let i = 0; i < 4; i++) { t.writer.append(RecordType.Meta, Buffer.alloc(200)); appended++; }
      t.limits.headLsn = Math.max(t.limits.headLsn, t.writer.writtenLsn - 16 * 1024 * 1024);
      setImmediate(pump);
    };
    pump();
    t.writer.append(RecordType.Data, Buffer.from('must become durable'));
    const want = t.writer.tailLsn;
    const started = Date.now();
    const timeout = setTimeout(() => { appending = false; }, 3000);
    await t.writer.sync();
    const waited = Date.now() - started;
    const stillAppending = appending;
    appending = false;
    clearTimeout(timeout);
    assert.ok(t.writer.durableLsn >= want);
    assert.ok(stillAppending, `sync resolved only after the appends stopped (${waited} ms, ${appended} records appended meanwhile)`);
    assert.ok(waited < 1000, `sync took ${waited} ms under load`);
    await t.writer.sync();
  } finally {
    await t.done();
  }
});

test('torn tail: a lost last batch, or the lost end of it, stops the scan at the right LSN', async () => {
  const rng = makeRng(SEED ^ 0x3333);
  const t = await setup('log-torn', 8 * 1024 * 1024);
  try {
    const batches: Appended[][] = [];
    const batchStart: number[] = [];
    for (let b = 0; b < 5; b++) {
      batchStart.push(t.writer.tailLsn);
      const recs: Appended[] = [];
      for (let i = 0; i < 30; i++) appendRandom(t.writer, rng, 700, recs);
      batches.push(recs);
      await t.writer.sync();
    }
    const tail = t.writer.tailLsn;
    const last = batches[4]!;
    const deviceOffset = (lsn: number) => LOG_OFFSET + (lsn % t.space.logBytes);

    // (a) The end of the last batch is lost from a sector boundary inside it.
    const cut = batchStart[4]! + 3 * DEVICE_SECTOR_BYTES;
    await t.device.write(deviceOffset(cut), Buffer.alloc(tail - cut));
    const firstTorn = last.find((r) => r.lsn + recordBytes(r.payload.length) > cut)!;
    let scan = await scanAll(t.reader, FIRST_LSN);
    assert.equal(scan.stop.stopLsn, firstTorn.lsn, 'stops at the first record reaching the lost sector');
    assert.ok(scan.stop.stop === 'no-record' || scan.stop.stop === 'payload-checksum', scan.stop.stop);
    assertSameRecords(scan.records, [...batches.slice(0, 4).flat(), ...last.slice(0, last.indexOf(firstTorn))], 'partial batch');
    // A torn tail has no durable successor: nothing after it was acknowledged.
    assert.equal(await t.reader.findDurableSuccessor(scan.stop.stopLsn, EPOCH, FIRST_LSN), null);

    // (b) The whole last batch is lost.
    await t.device.write(deviceOffset(batchStart[4]!), Buffer.alloc(tail - batchStart[4]!));
    scan = await scanAll(t.reader, FIRST_LSN);
    assert.equal(scan.stop.stop, 'no-record');
    assert.equal(scan.stop.stopLsn, batchStart[4]);
    assertSameRecords(scan.records, batches.slice(0, 4).flat(), 'lost batch');
    assert.equal(await t.reader.findDurableSuccessor(scan.stop.stopLsn, EPOCH, FIRST_LSN), null);

    // (c) Garbage instead of zeros (a half-written sector of random bytes).
    await t.device.write(deviceOffset(batchStart[4]!), rng.bytes(DEVICE_SECTOR_BYTES));
    scan = await scanAll(t.reader, FIRST_LSN);
    assert.equal(scan.stop.stopLsn, batchStart[4]);
  } finally {
    await t.done();
  }
});

test('a damaged record followed by durable records is corruption: findDurableSuccessor finds them', async () => {
  const rng = makeRng(SEED ^ 0x4444);
  const t = await setup('log-corrupt', 8 * 1024 * 1024);
  try {
    const all: Appended[] = [];
    // Group 1 is synced; group 2 is appended as one unsynced group whose
    // records were created before any of them was durable; then group 3 with
    // a sync per record.
    for (let i = 0; i < 10; i++) appendRandom(t.writer, rng, 500, all);
    await t.writer.sync();
    const group2: Appended[] = [];
    for (let i = 0; i < 10; i++) appendRandom(t.writer, rng, 500, group2);
    await t.writer.sync();
    const group3: Appended[] = [];
    for (let i = 0; i < 10; i++) { appendRandom(t.writer, rng, 500, group3); await t.writer.sync(); }
    const offsetOf = (lsn: number) => LOG_OFFSET + (lsn % t.space.logBytes);

    // Damage the payload of a record of group 2: its successors in group 3
    // were created after it was durable.
    const victim = group2[4]!;
    const payloadByte = offsetOf(victim.lsn) + 64 + Math.floor(victim.payload.length / 2);
    const original = await t.device.read(payloadByte, 1);
    if (victim.payload.length > 0) {
      await t.device.write(payloadByte, Buffer.from([original[0]! ^ 0x40]));
      const scan = await scanAll(t.reader, FIRST_LSN);
      assert.equal(scan.stop.stop, 'payload-checksum');
      assert.equal(scan.stop.stopLsn, victim.lsn);
      const successor = await t.reader.findDurableSuccessor(victim.lsn, EPOCH, FIRST_LSN);
      assert.ok(successor, `a durable successor of ${victim.lsn} exists ${ctx}`);
      assert.ok(successor.lsn > victim.lsn && successor.durableLsn > victim.lsn);
      assert.ok(group3.some((r) => r.lsn === successor.lsn), 'the successor is a group-3 record');
      await t.device.write(payloadByte, original);
    }

    // Damage a header byte (the LSN field) of the same record: 'no-record', same successor logic.
    const headerByte = offsetOf(victim.lsn) + 9;
    const h = await t.device.read(headerByte, 1);
    await t.device.write(headerByte, Buffer.from([h[0]! ^ 0x01]));
    let scan = await scanAll(t.reader, FIRST_LSN);
    assert.equal(scan.stop.stop, 'no-record');
    assert.equal(scan.stop.stopLsn, victim.lsn);
    assert.ok(await t.reader.findDurableSuccessor(victim.lsn, EPOCH, FIRST_LSN));
    // With a minimum epoch above the log's, nothing counts as a successor.
    assert.equal(await t.reader.findDurableSuccessor(victim.lsn, EPOCH + 1, FIRST_LSN), null);
    await t.device.write(headerByte, h);

    // Damage the last record of group 3: nothing durable follows it (torn-tail shape).
    const lastRec = group3[group3.length - 1]!;
    const lastByte = offsetOf(lastRec.lsn) + 12;
    const l = await t.device.read(lastByte, 1);
    await t.device.write(lastByte, Buffer.from([l[0]! ^ 0x80]));
    scan = await scanAll(t.reader, FIRST_LSN);
    assert.equal(scan.stop.stopLsn, lastRec.lsn);
    assert.equal(await t.reader.findDurableSuccessor(lastRec.lsn, EPOCH, FIRST_LSN), null);
  } finally {
    await t.done();
  }
});

test('fail(): pending syncs reject with EIO, later appends and syncs too, no writes after', async () => {
  const rng = makeRng(SEED ^ 0x5555);
  const t = await setup('log-fail', 8 * 1024 * 1024);
  try {
    let release!: () => void;
    t.space.flushGate = new Promise<void>((r) => { release = r; });
    t.writer.append(RecordType.Meta, rng.bytes(100));
    const pending = [t.writer.sync(), t.writer.sync()];
    // Let the writer reach the (gated) flush, then append more behind it.
    while (t.space.flushes === 0) await new Promise((r) => setImmediate(r));
    // A record of exactly one sector: the queued batch needs no pad record.
    assert.equal(t.writer.tailLsn % DEVICE_SECTOR_BYTES, 0);
    t.writer.append(RecordType.Meta, rng.bytes(DEVICE_SECTOR_BYTES - 64));
    pending.push(t.writer.sync());
    const writesBefore = t.space.writes;
    t.writer.fail(new Error('reservation lost'));
    for (const p of pending) {
      await assert.rejects(p, (e: unknown) => e instanceof FsError && e.errno === 'EIO' && /reservation lost/.test(e.message));
    }
    assert.equal(t.writer.failed?.message, 'reservation lost');
    await assert.rejects(t.writer.sync(), (e: unknown) => e instanceof FsError && e.errno === 'EIO');
    assert.throws(() => t.writer.append(RecordType.Meta, Buffer.alloc(1)), (e: unknown) => e instanceof FsError && e.errno === 'EIO');
    await t.writer.waitForRoom(); // returns at once on a failed writer
    release();
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(t.space.writes, writesBefore, 'a failed writer wrote a queued batch to the device');
  } finally {
    await t.done();
  }
});

test('a failing device write or a refused beforeWrite check fails the writer', async () => {
  const tmp = tempDir('log-fail2');
  const { device } = await tempDevice(tmp.dir, LOG_OFFSET + 1024 * 1024);
  try {
    const space = new LogSpace(device, LOG_OFFSET, 1024 * 1024, 1);
    let allowed = true;
    const writer = new LogWriter(space, 1, FIRST_LSN, { beforeWrite: async () => { if (!allowed) throw new Error('fenced'); }, beforeAck: async () => undefined }, Buffer.alloc(0), () => FIRST_LSN + 1024 * 1024);
    writer.append(RecordType.Meta, Buffer.from('a'));
    await writer.sync();
    allowed = false;
    writer.append(RecordType.Meta, Buffer.from('b'));
    await assert.rejects(writer.sync(), (e: unknown) => e instanceof FsError && e.errno === 'EIO' && /fenced/.test(e.message));
    assert.equal(writer.failed?.message, 'fenced');
    const scan = await new LogReader(space).scan(FIRST_LSN, {}, () => undefined);
    assert.equal(scan.stopLsn, writer.durableLsn, 'nothing past the last sync reached the device');
  } finally {
    await device.close();
    tmp.remove();
  }
});
