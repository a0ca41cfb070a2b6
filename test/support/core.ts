/**
 * In-process fixtures for unit tests of the core (no FUSE, no daemon): temp
 * device files, a seeded PRNG, CrashDevice, a BlockDevice wrapper with a
 * volatile write cache that can lose power, and PostgreSQL's pg_control.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, promises as fsp, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { BlockDevice } from '../../src/device/device';
import { FileDevice } from '../../src/device/file-device';
import { readDurableMarker } from '../../src/log/durable-marker';
import { PG_CONTROL_VERSION } from '../../src/pg/control';
import { crc32c } from '../../src/util/crc32c';
import { mkfs } from '../../src/volume/mkfs';
import { Volume } from '../../src/volume/volume';
import type { TestContext } from 'node:test';

export interface TempDir { dir: string; remove(): void }

export function tempDir(label: string): TempDir {
  const dir = mkdtempSync(path.join(os.tmpdir(), `lsnfs-unit-${label}-`));
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

/** Creates a zero-filled (sparse) file of `sizeBytes` and opens it read-write. */
export async function tempDevice(dir: string, sizeBytes: number, name = 'device.img'): Promise<{ path: string; device: FileDevice }> {
  const file = path.join(dir, name);
  const handle = await fsp.open(file, 'w');
  await handle.truncate(sizeBytes);
  await handle.close();
  return { path: file, device: await FileDevice.open(file, { readOnly: false }) };
}

/** A primary Volume on a fresh device file of `sizeBytes` in a temp directory; both go after test `t`. */
export async function tempPrimary(t: TestContext, label: string, sizeBytes: number): Promise<{ dir: string; devicePath: string; device: FileDevice; primary: Volume }> {
  const tmp = tempDir(label);
  t.after(() => tmp.remove());
  const { path: devicePath, device } = await tempDevice(tmp.dir, sizeBytes);
  await mkfs(device);
  const primary = await Volume.openPrimary(device, { host: `${label}-primary` });
  t.after(() => primary.close());
  return { dir: tmp.dir, devicePath, device, primary };
}

/**
 * Reads the slots again until the primary's horizon reaches its durable LSN (without a reader holding it
 * lower): the device vouches for the last flush once the durable marker that follows it is written.
 */
export async function untilHorizonAtDurable(primary: Volume): Promise<void> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    await primary.updateHorizon();
    if (primary.state.horizonLsn >= primary.durableLsn) return;
    assert.ok(Date.now() < deadline, `the horizon stays at ${primary.state.horizonLsn}, below the durable LSN ${primary.durableLsn}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

// ---------------------------------------------------------------------------
// Seeded PRNG

export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export interface Rng {
  seed: number;
  next(): number;
  /** Uniform integer in [0, maxInclusive]. */
  int(maxInclusive: number): number;
  /** Uniform integer in [min, maxInclusive]. */
  range(min: number, maxInclusive: number): number;
  chance(p: number): boolean;
  pick<T>(items: readonly T[]): T;
  bytes(n: number): Buffer;
}

export function makeRng(seed: number): Rng {
  const next = mulberry32(seed);
  const rng: Rng = {
    seed,
    next,
    int: (maxInclusive) => Math.floor(next() * (maxInclusive + 1)),
    range: (min, maxInclusive) => min + Math.floor(next() * (maxInclusive - min + 1)),
    chance: (p) => next() < p,
    pick: (items) => items[Math.floor(next() * items.length)]!,
    bytes: (n) => {
      // Compressible-ish but position-dependent content: a random byte run pattern.
      const b = Buffer.allocUnsafe(n);
      let i = 0;
      while (i < n) {
        const run = 1 + Math.floor(next() * 64);
        const value = Math.floor(next() * 256);
        const end = Math.min(n, i + run);
        if (next() < 0.5) b.fill(value, i, end);
        else for (let j = i; j < end; j++) b[j] = Math.floor(next() * 256);
        i = end;
      }
      return b;
    },
  };
  return rng;
}

/** A seed from `envName` if set (to replay a failure), else a random one. */
export function seedFrom(envName: string): number {
  const fromEnv = process.env[envName];
  return fromEnv ? Number(fromEnv) >>> 0 : randomBytes(4).readUInt32LE(0);
}

// ---------------------------------------------------------------------------
// A device with a volatile write cache

const SECTOR = 512;

/** Passes every call on to `inner`: tests extend it to count, hold back or damage some of a device's I/O. */
export class DelegatingDevice implements BlockDevice {
  constructor(protected readonly inner: BlockDevice) {}
  get name(): string { return this.inner.name; }
  get sizeBytes(): number { return this.inner.sizeBytes; }
  get readOnly(): boolean { return this.inner.readOnly; }
  get allocatesOnWrite(): boolean { return this.inner.allocatesOnWrite; }
  read(offset: number, length: number): Promise<Buffer> { return this.inner.read(offset, length); }
  write(offset: number, data: Uint8Array): Promise<void> { return this.inner.write(offset, data); }
  flush(): Promise<void> { return this.inner.flush(); }
  close(): Promise<void> { return this.inner.close(); }
}

/**
 * Wraps a BlockDevice with a volatile write cache of 512-byte sectors, as a
 * disk with its write cache enabled: writes land in the cache (and reads see
 * them) and reach the underlying device only on flush(). powerLoss() makes a
 * random subset of the cached sectors reach the device -- in any order, as a
 * real disk may -- drops the rest, and kills this object: every later call
 * fails, so an abandoned Volume using it can do no more I/O.
 */
export class CrashDevice extends DelegatingDevice {
  private cache = new Map<number, Buffer>();
  private dead = false;
  flushes = 0;
  writes = 0;

  /** A disk's sectors exist before they are written (and a 1 MiB zero-fill would fill the cache with 2048 sectors). */
  override get allocatesOnWrite(): boolean { return false; }

  private alive(): void {
    if (this.dead) throw new Error('CrashDevice: power is off');
  }

  override async read(offset: number, length: number): Promise<Buffer> {
    this.alive();
    const buf = await this.inner.read(offset, length);
    this.alive();
    if (this.cache.size === 0) return buf;
    const first = Math.floor(offset / SECTOR);
    const last = Math.floor((offset + length - 1) / SECTOR);
    if (last - first + 1 <= this.cache.size) {
      for (let s = first; s <= last; s++) this.patch(buf, offset, s);
    } else {
      for (const s of this.cache.keys()) if (s >= first && s <= last) this.patch(buf, offset, s);
    }
    return buf;
  }

  private patch(buf: Buffer, offset: number, sector: number): void {
    const data = this.cache.get(sector);
    if (!data) return;
    const start = Math.max(offset, sector * SECTOR);
    const end = Math.min(offset + buf.length, (sector + 1) * SECTOR);
    data.copy(buf, start - offset, start - sector * SECTOR, end - sector * SECTOR);
  }

  override async write(offset: number, data: Uint8Array): Promise<void> {
    this.alive();
    this.writes++;
    const bytes = Buffer.from(data.buffer, data.byteOffset, data.length);
    const first = Math.floor(offset / SECTOR);
    const last = Math.floor((offset + bytes.length - 1) / SECTOR);
    // Partial sectors need their old content first (read before touching the cache).
    const partial = new Map<number, Buffer>();
    for (const s of new Set([first, last])) {
      if (s * SECTOR < offset || (s + 1) * SECTOR > offset + bytes.length) {
        partial.set(s, this.cache.get(s) ? Buffer.from(this.cache.get(s)!) : await this.inner.read(s * SECTOR, SECTOR));
      }
    }
    this.alive();
    for (let s = first; s <= last; s++) {
      const sector = partial.get(s) ?? Buffer.alloc(SECTOR);
      const start = Math.max(offset, s * SECTOR);
      const end = Math.min(offset + bytes.length, (s + 1) * SECTOR);
      bytes.copy(sector, start - s * SECTOR, start - offset, end - offset);
      this.cache.set(s, sector);
    }
  }

  override async flush(): Promise<void> {
    this.alive();
    this.flushes++;
    const entries = [...this.cache];
    for (const [s, data] of entries) await this.inner.write(s * SECTOR, data);
    await this.inner.flush();
    this.alive();
    for (const [s, data] of entries) if (this.cache.get(s) === data) this.cache.delete(s);
  }

  /** Sectors written but not yet flushed. */
  get cachedSectors(): number { return this.cache.size; }

  /**
   * The power goes out: each cached sector independently reaches the device
   * with probability `keep` (0 = lose everything unflushed), then this
   * object dies. Returns how many sectors were kept and lost.
   */
  async powerLoss(random: () => number, keep: number): Promise<{ kept: number; lost: number }> {
    return this.powerLossKeeping(() => random() < keep);
  }

  /** A power loss that keeps exactly the cached sectors for whose device offset `keep` is true. */
  async powerLossKeeping(keep: (deviceOffset: number) => boolean): Promise<{ kept: number; lost: number }> {
    this.dead = true;
    let kept = 0;
    let lost = 0;
    for (const [s, data] of this.cache) {
      if (keep(s * SECTOR)) { await this.inner.write(s * SECTOR, data); kept++; } else lost++;
    }
    this.cache.clear();
    await this.inner.flush();
    return { kept, lost };
  }

  override async close(): Promise<void> {
    if (this.dead) return;
    await this.flush();
    this.dead = true;
    await this.inner.close();
  }

  /** Closes the underlying device after a power loss (the abandoned handle). */
  async closeInner(): Promise<void> {
    await this.inner.close();
  }
}

/**
 * Stops a Volume's background timers (heartbeat, horizon poll, background
 * flush) without closing it: the test-only half of "the process died". The
 * fields are private; this reaches in by name and tolerates either layout.
 */
export function stopVolumeTimers(volume: object): void {
  const v = volume as { timers?: NodeJS.Timeout[]; heartbeatTimer?: NodeJS.Timeout | null };
  for (const timer of v.timers ?? []) clearInterval(timer);
  if (v.heartbeatTimer) clearInterval(v.heartbeatTimer);
}

/** Syncs the primary and waits until its durable marker says so: what a replica tailing `device` may apply. */
export async function untilShipped(primary: Volume, device: BlockDevice): Promise<void> {
  await primary.sync();
  while (((await readDurableMarker(device))?.durableLsn ?? 0) < primary.durableLsn) await new Promise((resolve) => setTimeout(resolve, 1));
}

/** A PostgreSQL 15 pg_control with the fields lsnfs reads (layout as in src/pg/control.ts). */
export function controlFile(fields: { redo: number; walSegmentBytes: number; minRecoveryPoint?: number }): Buffer {
  const bytes = Buffer.alloc(8192);
  bytes.writeUInt32LE(PG_CONTROL_VERSION, 8);
  bytes.writeBigUInt64LE(BigInt(fields.redo), 32);
  bytes.writeBigUInt64LE(BigInt(fields.redo), 40);
  bytes.writeUInt32LE(1, 48);
  bytes.writeBigUInt64LE(BigInt(fields.minRecoveryPoint ?? 0), 136);
  bytes.writeUInt32LE(fields.walSegmentBytes, 228);
  bytes.writeUInt32LE(crc32c(bytes.subarray(0, 288)) >>> 0, 288);
  return bytes;
}
