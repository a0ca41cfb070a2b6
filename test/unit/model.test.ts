/**
 * Property test of the core: random operation sequences against a Volume and
 * an in-memory model, compared tree-and-content after every few operations,
 * across clean remounts and simulated crashes.
 *
 * Crashes. The volume runs on a CrashDevice (test/support/core.ts): a write
 * cache that reaches the file only on flush(). A crash is a power loss: each
 * unflushed sector independently survives or not, the Volume object is
 * abandoned (its device is dead, so it can do no more I/O; its timers are
 * cleared), and a new Volume is opened on a new handle of the same
 * file. The emulated reservation lets that reopen take over without clearing
 * the reservation block: the holder recorded there is this host with this
 * very pid, which acquire() treats as a holder that can no longer be running
 * (pid reuse after a crash). The old Volume is fenced by the new key if it
 * ever tried to write.
 *
 * What a crash may lose: everything after the last completed sync(), and
 * nothing before it. The recovered tree must equal the model as it was after
 * some prefix of the operations since the last sync -- where a write that
 * spans several pages counts page by page, because each page is one record
 * and a power loss can keep a prefix of them.
 *
 * Replay a failure with MODEL_TEST_SEED=<seed> (printed in every failure);
 * MODEL_TEST_SCALE=<factor> scales the operation counts (e.g. 10 for a soak).
 * The abandoned volumes' in-flight cleaning fails against their dead devices
 * and logs "background cleaning failed" on stderr: expected noise.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';

import { FileDevice } from '../../src/device/file-device';
import { FsError } from '../../src/util/errors';
import { mkfs } from '../../src/volume/mkfs';
import { fsck, listRecords, volumeStatus } from '../../src/volume/inspect';
import { Volume } from '../../src/volume/volume';
import { S_IFDIR, S_IFLNK, S_IFMT, S_IFREG } from '../../src/volume/state';
import { CrashDevice, Rng, makeRng, seedFrom, stopVolumeTimers, tempDevice, tempDir } from '../support/core';

const BASE_SEED = seedFrom('MODEL_TEST_SEED');
const HOST = 'model-test-host';
const MiB = 1024 * 1024;

// ---------------------------------------------------------------------------
// The model

type Kind = 'file' | 'dir' | 'symlink';

/** Immutable: a change replaces the node, so a snapshot is a shallow copy of the maps. */
interface MNode { readonly ino: number; readonly kind: Kind; readonly perm: number; readonly content: Buffer; readonly target: string }

class Model {
  constructor(
    /** path -> ino; '/' is the root. */
    readonly paths = new Map<string, number>([['/', 1]]),
    readonly nodes = new Map<number, MNode>([[1, { ino: 1, kind: 'dir', perm: 0o755, content: Buffer.alloc(0), target: '' }]]),
  ) {}

  clone(): Model { return new Model(new Map(this.paths), new Map(this.nodes)); }

  node(path: string): MNode | undefined {
    const ino = this.paths.get(path);
    return ino === undefined ? undefined : this.nodes.get(ino);
  }

  children(dir: string): string[] {
    const prefix = dir === '/' ? '/' : `${dir}/`;
    return [...this.paths.keys()].filter((p) => p !== '/' && p.startsWith(prefix) && !p.slice(prefix.length).includes('/'));
  }

  nlink(path: string): number {
    const node = this.node(path)!;
    if (node.kind === 'dir') return 2 + this.children(path).filter((c) => this.node(c)!.kind === 'dir').length;
    let n = 0;
    for (const ino of this.paths.values()) if (ino === node.ino) n++;
    return n;
  }

  pathsOfKind(kind: Kind): string[] {
    return [...this.paths.keys()].filter((p) => this.node(p)!.kind === kind);
  }

  add(path: string, node: MNode): void {
    this.paths.set(path, node.ino);
    this.nodes.set(node.ino, node);
  }

  removePath(path: string): void {
    const ino = this.paths.get(path)!;
    this.paths.delete(path);
    if (![...this.paths.values()].includes(ino)) this.nodes.delete(ino);
  }

  update(ino: number, change: Partial<MNode>): void {
    this.nodes.set(ino, { ...this.nodes.get(ino)!, ...change });
  }

  /** Moves `from` (and, for a directory, everything under it) to `to`. */
  move(from: string, to: string): void {
    const moved: Array<[string, number]> = [];
    for (const [p, ino] of this.paths) {
      if (p === from || p.startsWith(`${from}/`)) moved.push([p, ino]);
    }
    for (const [p] of moved) this.paths.delete(p);
    for (const [p, ino] of moved) this.paths.set(to + p.slice(from.length), ino);
  }
}

function parentOf(path: string): string {
  const i = path.lastIndexOf('/');
  return i === 0 ? '/' : path.slice(0, i);
}

function join(dir: string, name: string): string {
  return dir === '/' ? `/${name}` : `${dir}/${name}`;
}

function writeInto(content: Buffer, offset: number, data: Buffer): Buffer {
  const out = Buffer.alloc(Math.max(content.length, offset + data.length));
  content.copy(out);
  data.copy(out, offset);
  return out;
}

function resize(content: Buffer, size: number): Buffer {
  if (size <= content.length) return Buffer.from(content.subarray(0, size));
  const out = Buffer.alloc(size);
  content.copy(out);
  return out;
}

// ---------------------------------------------------------------------------
// Digests: one line per path, comparable between model and volume

const sha = (b: Buffer): string => createHash('sha1').update(b).digest('hex').slice(0, 16);

function modelDigest(model: Model): Map<string, string> {
  const out = new Map<string, string>();
  for (const path of [...model.paths.keys()].sort()) {
    const node = model.node(path)!;
    let line = `${node.kind} ino=${node.ino} perm=${node.perm.toString(8)} nlink=${model.nlink(path)}`;
    if (node.kind === 'file') line += ` size=${node.content.length} sha=${sha(node.content)}`;
    if (node.kind === 'symlink') line += ` target=${node.target}`;
    out.set(path, line);
  }
  return out;
}

async function volumeDigest(volume: Volume): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  const visit = async (path: string): Promise<void> => {
    const inode = volume.resolve(path);
    const st = volume.stat(inode);
    const fmt = st.mode & S_IFMT;
    const kind = fmt === S_IFDIR ? 'dir' : fmt === S_IFLNK ? 'symlink' : fmt === S_IFREG ? 'file' : `mode-${fmt.toString(8)}`;
    let line = `${kind} ino=${st.ino} perm=${(st.mode & 0o7777).toString(8)} nlink=${st.nlink}`;
    if (kind === 'file') {
      const content = await volume.read(st.ino, 0, st.size + 4096);
      const after = volume.stat(inode).size;
      if (after !== st.size) throw new Error(`${path}: reading the file changed its size from ${st.size} to ${after}`);
      line += ` size=${content.length === st.size ? st.size : `${st.size}/read ${content.length}`} sha=${sha(content)}`;
    }
    if (kind === 'symlink') line += ` target=${volume.readlink(path)}`;
    out.set(path, line);
    if (kind === 'dir') {
      const entries = volume.readdir(path).sort((x, y) => (x.name < y.name ? -1 : x.name > y.name ? 1 : 0));
      for (const { name, fileType } of entries) {
        const childType = volume.stat(volume.resolve(join(path, name))).mode & S_IFMT;
        if (fileType !== childType) throw new Error(`${join(path, name)}: readdir says type ${fileType.toString(8)}, stat ${childType.toString(8)}`);
        await visit(join(path, name));
      }
    }
  };
  await visit('/');
  return new Map([...out].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
}

function digestDiff(want: Map<string, string>, got: Map<string, string>, limit = 12): string[] {
  const diffs: string[] = [];
  for (const path of new Set([...want.keys(), ...got.keys()])) {
    const a = want.get(path);
    const b = got.get(path);
    if (a !== b) diffs.push(`${path}\n      model:  ${a ?? '(absent)'}\n      volume: ${b ?? '(absent)'}`);
  }
  return diffs.slice(0, limit);
}

const digestString = (d: Map<string, string>): string => [...d].map(([p, l]) => `${p} ${l}`).join('\n');

// ---------------------------------------------------------------------------
// The run

interface RunConfig {
  name: string;
  /** MODEL_TEST_SEED: replaying it replays every variant. */
  baseSeed: number;
  /** This variant's PRNG seed, derived from baseSeed. */
  seed: number;
  ops: number;
  deviceBytes: number;
  pageBytes?: number;
  /** Largest file size the generator produces. */
  maxFileBytes: number;
  /** At most this many regular files (creates turn into unlinks beyond). */
  maxFiles: number;
  /** Longest write, in pages. */
  maxWritePages: number;
  compareEvery: number;
  /** Relative weights of operations. */
  weights: Record<OpName, number>;
}

type OpName =
  | 'create' | 'mkdir' | 'symlink' | 'write' | 'hot-write' | 'truncate' | 'rename' | 'unlink' | 'rmdir' | 'link'
  | 'chmod' | 'read' | 'sync' | 'burst' | 'remount' | 'crash-after-sync' | 'crash-window' | 'bad';

const NAMES = ['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j', 'k', 'l', 'm', 'n', 'o', 'p'];

interface RunStats {
  ops: Record<string, number>;
  failedAsExpected: number;
  compares: number;
  remounts: number;
  crashes: number;
  /** Crash-window recoveries by how many steps since the last sync survived (of how many). */
  windowOutcomes: string[];
  bytesWritten: number;
  headAdvances: number;
  epochs: number;
  finalHeadLsn: number;
  finalTailLsn: number;
  logBytes: number;
  ms: number;
}

class Run {
  readonly rng: Rng;
  model = new Model();
  /** Model states since the last completed sync, oldest first: what a crash may recover. */
  window: Model[] = [];
  volume!: Volume;
  device!: CrashDevice;
  readonly history: string[] = [];
  readonly stats: RunStats;
  private devicePath = '';
  private hotIno = 0;
  private lastHead = 0;
  private opIndex = 0;

  constructor(readonly config: RunConfig) {
    this.rng = makeRng(config.seed);
    this.stats = {
      ops: {}, failedAsExpected: 0, compares: 0, remounts: 0, crashes: 0, windowOutcomes: [], bytesWritten: 0,
      headAdvances: 0, epochs: 0, finalHeadLsn: 0, finalTailLsn: 0, logBytes: 0, ms: 0,
    };
  }

  get pageBytes(): number { return this.config.pageBytes ?? 8192; }

  context(): string {
    return `[${this.config.name}] MODEL_TEST_SEED=${this.config.baseSeed} op #${this.opIndex}\n  last ops:\n    ${this.history.slice(-25).join('\n    ')}`;
  }

  note(text: string): void {
    this.history.push(`#${this.opIndex} ${text}`);
    if (this.history.length > 200) this.history.splice(0, 100);
  }

  /** After one record-sized step of an operation: the model as a crash might recover it. */
  step(): void {
    this.window.push(this.model.clone());
  }

  async open(): Promise<void> {
    this.device = new CrashDevice(await FileDevice.open(this.devicePath, { readOnly: false }));
    this.volume = await Volume.openPrimary(this.device, { host: HOST });
    this.stats.epochs++;
    this.lastHead = this.volume.superblock.headLsn;
  }

  async run(): Promise<RunStats> {
    const started = Date.now();
    const tmp = tempDir(`model-${this.config.name}`);
    try {
      const { path, device } = await tempDevice(tmp.dir, this.config.deviceBytes);
      this.devicePath = path;
      await mkfs(device, { pageBytes: this.pageBytes });
      await device.close();
      await this.open();
      this.stats.logBytes = this.volume.superblock.logBytes;
      this.window = [this.model.clone()];
      for (this.opIndex = 0; this.opIndex < this.config.ops; this.opIndex++) {
        await this.oneOp();
        this.trackHead();
        if (this.opIndex % this.config.compareEvery === this.config.compareEvery - 1) await this.compare('periodic');
        if (this.window.length > 300) await this.doSync();
      }
      await this.compare('final');
      this.stats.finalHeadLsn = this.volume.superblock.headLsn;
      this.stats.finalTailLsn = this.volume.tailLsn;
      await this.volume.close();
      // The cleanly closed volume passes fsck, and a last reopen still matches.
      const ro = await FileDevice.open(this.devicePath, { readOnly: true });
      try {
        const report = await fsck(ro);
        assert.ok(report.ok, `fsck after close: ${JSON.stringify(report.problems.slice(0, 5))}\n${this.context()}`);
      } finally {
        await ro.close();
      }
      await this.open();
      await this.compare('after final reopen');
      await this.volume.close();
    } catch (error) {
      if (error instanceof Error && !error.message.includes('MODEL_TEST_SEED')) error.message += `\n${this.context()}`;
      throw error;
    } finally {
      tmp.remove();
    }
    this.stats.ms = Date.now() - started;
    return this.stats;
  }

  private trackHead(): void {
    const head = this.volume.superblock.headLsn;
    if (head !== this.lastHead) { this.stats.headAdvances++; this.lastHead = head; }
  }

  async compare(why: string): Promise<void> {
    this.stats.compares++;
    const want = modelDigest(this.model);
    const got = await volumeDigest(this.volume);
    const diffs = digestDiff(want, got);
    if (diffs.length > 0) {
      assert.fail(`tree differs from the model (${why}):\n    ${diffs.join('\n    ')}\n${this.context()}`);
    }
  }

  private pickOp(): OpName {
    const entries = Object.entries(this.config.weights) as Array<[OpName, number]>;
    const total = entries.reduce((s, [, w]) => s + w, 0);
    let x = this.rng.next() * total;
    for (const [name, w] of entries) { x -= w; if (x < 0) return name; }
    return entries[entries.length - 1]![0];
  }

  /** A directory at most 4 levels deep (renames can still nest deeper ones). */
  private randomDir(): string {
    const dirs = this.model.pathsOfKind('dir').filter((p) => p.split('/').length <= 5);
    return this.rng.pick(dirs.length > 0 ? dirs : ['/']);
  }
  private randomNewPath(): string { return join(this.randomDir(), this.rng.pick(NAMES)); }
  private randomExisting(): string | undefined {
    const all = [...this.model.paths.keys()].filter((p) => p !== '/');
    return all.length ? this.rng.pick(all) : undefined;
  }

  /** Runs `action` expecting FsError `errno`; the model must not change. */
  private async expectError(errno: string, what: string, action: () => Promise<unknown>): Promise<void> {
    this.note(`${what} -> expect ${errno}`);
    await assert.rejects(action, (e: unknown) => {
      if (e instanceof FsError && e.errno === errno) return true;
      throw new Error(`${what}: expected ${errno}, got ${e instanceof FsError ? e.errno : String(e)}`);
    }, what);
    this.stats.failedAsExpected++;
  }

  private async oneOp(): Promise<void> {
    let op = this.pickOp();
    const files = this.model.pathsOfKind('file');
    if (op === 'create' && files.length >= this.config.maxFiles) op = 'unlink';
    if (['write', 'hot-write', 'truncate', 'read', 'burst'].includes(op) && files.length === 0) op = 'create';
    this.stats.ops[op] = (this.stats.ops[op] ?? 0) + 1;
    const rng = this.rng;
    const v = this.volume;
    switch (op) {
      case 'create':
      case 'mkdir':
      case 'symlink': {
        const path = this.randomNewPath();
        const existing = this.model.node(path);
        const perm = rng.pick([0o644, 0o600, 0o755, 0o640]);
        const target = `../t${rng.int(999)}/${'x'.repeat(rng.int(40))}`;
        const call = () => op === 'create' ? v.create(path, S_IFREG | perm, 0, 0)
          : op === 'mkdir' ? v.mkdir(path, perm, 0, 0) : v.symlink(target, path, 0, 0);
        if (existing) return this.expectError('EEXIST', `${op} ${path}`, call);
        this.note(`${op} ${path}`);
        const inode = await call();
        const kind: Kind = op === 'create' ? 'file' : op === 'mkdir' ? 'dir' : 'symlink';
        this.model.add(path, { ino: inode.ino, kind, perm: kind === 'symlink' ? 0o777 : perm, content: Buffer.alloc(0), target: kind === 'symlink' ? target : '' });
        this.step();
        return;
      }
      case 'write':
      case 'hot-write': {
        let path = rng.pick(files);
        if (op === 'hot-write') {
          // Many small writes to one page of one file: long delta chains, folded on read.
          const hot = files.find((p) => this.model.node(p)!.ino === this.hotIno);
          if (hot) path = hot; else this.hotIno = this.model.node(path)!.ino;
        }
        const node = this.model.node(path)!;
        const { offset, length } = op === 'hot-write' ? this.hotRange(node.content.length) : this.writeRange(node.content.length);
        const data = rng.bytes(length);
        this.note(`write ${path} (ino ${node.ino}) @${offset} +${length} (size ${node.content.length})`);
        const written = await v.write(node.ino, offset, data);
        assert.equal(written, length);
        this.stats.bytesWritten += length;
        // One record per page touched: a crash can keep any prefix of them.
        for (let at = offset; at < offset + length;) {
          const end = Math.min(offset + length, (Math.floor(at / this.pageBytes) + 1) * this.pageBytes);
          const current = this.model.nodes.get(node.ino)!;
          this.model.update(node.ino, { content: writeInto(current.content, at, data.subarray(at - offset, end - offset)) });
          this.step();
          at = end;
        }
        return;
      }
      case 'truncate': {
        const path = rng.pick(files);
        const node = this.model.node(path)!;
        const size = rng.chance(0.6)
          ? rng.int(node.content.length)
          : rng.chance(0.3) ? Math.floor(rng.int(this.config.maxFileBytes) / this.pageBytes) * this.pageBytes
            : Math.min(this.config.maxFileBytes, node.content.length + rng.int(2 * this.pageBytes));
        this.note(`truncate ${path} (ino ${node.ino}) ${node.content.length} -> ${size}`);
        await v.truncate(node.ino, size);
        this.model.update(node.ino, { content: resize(node.content, size) });
        this.step();
        return;
      }
      case 'rename': return this.rename();
      case 'unlink': {
        const candidates = [...this.model.paths.keys()].filter((p) => p !== '/' && this.model.node(p)!.kind !== 'dir');
        if (candidates.length === 0 || rng.chance(0.05)) {
          const path = this.randomNewPath();
          if (this.model.node(path)) return;
          return this.expectError('ENOENT', `unlink ${path}`, () => v.unlink(path));
        }
        const path = rng.pick(candidates);
        this.note(`unlink ${path}`);
        await v.unlink(path);
        this.model.removePath(path);
        this.step();
        return;
      }
      case 'rmdir': {
        const dirs = this.model.pathsOfKind('dir').filter((p) => p !== '/');
        if (dirs.length === 0) return;
        const path = rng.pick(dirs);
        if (this.model.children(path).length > 0) return this.expectError('ENOTEMPTY', `rmdir ${path}`, () => v.rmdir(path));
        this.note(`rmdir ${path}`);
        await v.rmdir(path);
        this.model.removePath(path);
        this.step();
        return;
      }
      case 'link': {
        const source = this.randomExisting();
        if (!source) return;
        const target = this.randomNewPath();
        const node = this.model.node(source)!;
        if (node.kind === 'dir') return this.expectError('EPERM', `link ${source} ${target}`, () => v.link(source, target));
        if (this.model.node(target)) return this.expectError('EEXIST', `link ${source} ${target}`, () => v.link(source, target));
        this.note(`link ${source} -> ${target}`);
        await v.link(source, target);
        this.model.paths.set(target, node.ino);
        this.step();
        return;
      }
      case 'chmod': {
        const candidates = [...this.model.paths.keys()].filter((p) => this.model.node(p)!.kind !== 'symlink');
        const path = rng.pick(candidates);
        const perm = rng.int(0o7777);
        this.note(`chmod ${path} ${perm.toString(8)}`);
        await v.setattr(path, { mode: perm });
        this.model.update(this.model.node(path)!.ino, { perm });
        this.step();
        return;
      }
      case 'read': {
        const path = rng.pick(files);
        const node = this.model.node(path)!;
        const offset = rng.int(node.content.length + this.pageBytes);
        const length = rng.int(3 * this.pageBytes);
        this.note(`read ${path} @${offset} +${length}`);
        const got = await v.read(node.ino, offset, length);
        const want = node.content.subarray(Math.min(offset, node.content.length), Math.min(offset + length, node.content.length));
        assert.ok(got.equals(want), `read ${path} @${offset} +${length}: got ${got.length} bytes, want ${want.length}; content differs`);
        return;
      }
      case 'sync': return this.doSync();
      case 'burst': {
        // Concurrent writes to distinct files, then a sync (so the crash
        // window never holds a set of concurrently ordered records).
        const chosen = [...new Set(Array.from({ length: rng.range(2, 6) }, () => rng.pick(files)).map((p) => this.model.node(p)!.ino))];
        const writes = chosen.map((ino) => {
          const node = this.model.nodes.get(ino)!;
          const { offset, length } = this.writeRange(node.content.length);
          return { ino, offset, data: rng.bytes(length) };
        });
        // Reads of the other files run concurrently (with the cleaner, when the writes trigger it).
        const readers = files.map((p) => this.model.node(p)!).filter((n) => !chosen.includes(n.ino)).slice(0, 4);
        this.note(`burst ${writes.map((w) => `ino ${w.ino} @${w.offset} +${w.data.length}`).join(', ')}; reading ${readers.map((n) => n.ino).join(', ')}`);
        await Promise.all([
          ...writes.map((w) => v.write(w.ino, w.offset, w.data)),
          ...readers.map(async (n) => {
            const got = await v.read(n.ino, 0, n.content.length + 1);
            assert.ok(got.equals(n.content), `concurrent read of ino ${n.ino} during a burst`);
          }),
        ]);
        for (const w of writes) {
          this.model.update(w.ino, { content: writeInto(this.model.nodes.get(w.ino)!.content, w.offset, w.data) });
          this.stats.bytesWritten += w.data.length;
        }
        return this.doSync();
      }
      case 'remount': {
        this.note('remount (clean close + open)');
        await v.close();
        await this.open();
        this.stats.remounts++;
        this.window = [this.model.clone()];
        return this.compare('after remount');
      }
      case 'crash-after-sync': {
        await this.doSync();
        return this.crash('crash right after sync', rng.next());
      }
      case 'crash-window': return this.crash('crash with unsynced operations', rng.pick([0, 1, 0.5, rng.next()]));
      case 'bad': return this.badOp();
    }
  }

  private async doSync(): Promise<void> {
    this.note('sync');
    await this.volume.sync();
    this.window = [this.model.clone()];
  }

  private writeRange(size: number): { offset: number; length: number } {
    const rng = this.rng;
    const page = this.pageBytes;
    const max = this.config.maxFileBytes;
    const maxPages = Math.floor(max / page);
    let offset: number;
    let length: number;
    switch (rng.int(6)) {
      case 0: offset = page * rng.int(maxPages - 1); length = page * rng.range(1, this.config.maxWritePages); break; // whole pages
      case 1: offset = rng.int(max - 1); length = rng.range(1, page - (offset % page)); break; // inside one page
      case 2: offset = rng.int(max - 1); length = rng.range(1, this.config.maxWritePages * page); break; // unaligned, multi-page
      case 3: offset = size; length = rng.range(1, 2 * page); break; // append
      case 4: offset = rng.int(Math.max(0, size - 1)); length = rng.range(1, 64); break; // small delta in the file
      case 5: offset = size + rng.range(1, 2 * page); length = rng.range(1, page); break; // past EOF: a hole
      default: offset = Math.max(0, size - rng.int(page)); length = rng.range(page, 2 * page); break; // across EOF
    }
    offset = Math.min(offset, max - 1);
    length = Math.max(1, Math.min(length, max - offset));
    return { offset, length };
  }

  /** Small writes inside the last page of the file, below its size when it has a partial last page. */
  private hotRange(size: number): { offset: number; length: number } {
    const page = this.pageBytes;
    if (size === 0) return { offset: 0, length: this.rng.range(100, page - 100) };
    const lastPage = Math.floor((size - 1) / page);
    const inPage = size - lastPage * page;
    const offset = lastPage * page + this.rng.int(inPage - 1);
    return { offset, length: this.rng.range(1, Math.min(48, size - offset)) };
  }

  private async rename(): Promise<void> {
    const rng = this.rng;
    const v = this.volume;
    const m = this.model;
    const from = this.randomExisting();
    if (!from) return;
    // Often onto an existing entry, sometimes onto itself.
    const to = rng.chance(0.05) ? from : rng.chance(0.4) ? (this.randomExisting() ?? this.randomNewPath()) : this.randomNewPath();
    const what = `rename ${from} -> ${to}`;
    const moving = m.node(from)!;
    const existing = m.node(to);
    if (existing && existing.ino === moving.ino) {
      // POSIX: the same file under both names (or the very same name): success, nothing changes.
      this.note(what + ' (same file)');
      await v.rename(from, to);
      return;
    }
    if (existing) {
      if (existing.kind === 'dir' && moving.kind !== 'dir') return this.expectError('EISDIR', what, () => v.rename(from, to));
      if (existing.kind !== 'dir' && moving.kind === 'dir') return this.expectError('ENOTDIR', what, () => v.rename(from, to));
      if (existing.kind === 'dir' && m.children(to).length > 0) return this.expectError('ENOTEMPTY', what, () => v.rename(from, to));
    }
    if (moving.kind === 'dir' && (parentOf(to) === from || parentOf(to).startsWith(`${from}/`))) {
      return this.expectError('EINVAL', what, () => v.rename(from, to));
    }
    this.note(what + (existing ? ` (replacing ${existing.kind} ino ${existing.ino})` : ''));
    await v.rename(from, to);
    if (existing) m.removePath(to);
    m.move(from, to);
    this.step();
  }

  /** Operations that must fail without changing anything. */
  private async badOp(): Promise<void> {
    const v = this.volume;
    const rng = this.rng;
    const file = rng.pick([...this.model.paths.keys()].filter((p) => this.model.node(p)!.kind === 'file').concat(['']));
    switch (rng.int(5)) {
      case 0: {
        const dir = this.randomDir();
        if (dir === '/') return;
        return this.expectError('EISDIR', `unlink dir ${dir}`, () => v.unlink(dir));
      }
      case 1:
        if (!file) return;
        return this.expectError('ENOTDIR', `rmdir file ${file}`, () => v.rmdir(file));
      case 2:
        if (!file) return;
        return this.expectError('ENOTDIR', `create under file ${file}`, () => v.create(`${file}/x`, S_IFREG | 0o644, 0, 0));
      case 3: {
        const dir = this.randomDir();
        return this.expectError('EISDIR', `write to dir ${dir}`, () => v.write(this.model.node(dir)!.ino, 0, Buffer.from('x')));
      }
      default:
        return this.expectError('ENAMETOOLONG', 'create with a 256-byte name', () => v.create(`/${'n'.repeat(256)}`, S_IFREG | 0o644, 0, 0));
    }
  }

  /** Power loss, abandon the Volume, reopen, compare with the states a crash may leave. */
  private async crash(why: string, keep: number): Promise<void> {
    this.stats.crashes++;
    const old = this.volume;
    const oldDevice = this.device;
    stopVolumeTimers(old);
    const cached = oldDevice.cachedSectors;
    const { kept, lost } = await oldDevice.powerLoss(this.rng.next, keep);
    this.note(`${why}: power loss (${cached} unflushed sectors: kept ${kept}, lost ${lost}; window of ${this.window.length} states)`);
    // Let the abandoned volume's in-flight work fail against the dead device, then close its handle.
    await new Promise((r) => setTimeout(r, 5));
    await oldDevice.closeInner();
    // The crashed image is consistent as it is: fsck finds nothing wrong.
    if (this.stats.crashes % 3 === 1) {
      const ro = await FileDevice.open(this.devicePath, { readOnly: true });
      try {
        const report = await fsck(ro);
        assert.ok(report.ok, `fsck of the crashed image: ${JSON.stringify(report.problems.slice(0, 5))}`);
      } finally {
        await ro.close();
      }
    }
    await this.open();
    const got = digestString(await volumeDigest(this.volume));
    let match = -1;
    for (let i = this.window.length - 1; i >= 0; i--) {
      if (digestString(modelDigest(this.window[i]!)) === got) { match = i; break; }
    }
    if (match < 0) {
      const diffs = digestDiff(modelDigest(this.window[0]!), await volumeDigest(this.volume));
      assert.fail(
        `after ${why}, the recovered tree matches none of the ${this.window.length} states since the last sync; ` +
          `vs. the state at the last sync:\n    ${diffs.join('\n    ')}\n${this.context()}`,
      );
    }
    this.stats.windowOutcomes.push(`${match}/${this.window.length - 1}`);
    this.model = this.window[match]!;
    this.window = [this.model.clone()];
    this.note(`recovered the state after ${match} of ${this.window.length - 1} steps since the last sync`);
  }
}

function summary(stats: RunStats): string {
  const ops = Object.values(stats.ops).reduce((a, b) => a + b, 0);
  const laps = (stats.finalTailLsn / stats.logBytes).toFixed(1);
  const partial = stats.windowOutcomes.filter((o) => { const [a, b] = o.split('/').map(Number); return a! > 0 && a! < b!; }).length;
  return `${ops} ops in ${stats.ms} ms; ${stats.compares} compares, ${stats.remounts} remounts, ${stats.crashes} crashes ` +
    `(${partial} recovered a strict middle of the window), ${stats.failedAsExpected} expected errors; ` +
    `${(stats.bytesWritten / MiB).toFixed(1)} MiB written, log ${(stats.logBytes / MiB).toFixed(1)} MiB, tail at ${laps} laps, ` +
    `head advanced ${stats.headAdvances} times (head ${stats.finalHeadLsn}); ops ${JSON.stringify(stats.ops)}`;
}

const STANDARD_WEIGHTS: Record<OpName, number> = {
  create: 8, mkdir: 4, symlink: 2, write: 30, 'hot-write': 6, truncate: 7, rename: 8, unlink: 5, rmdir: 3, link: 4, chmod: 3,
  read: 6, sync: 5, burst: 1.5, remount: 0.6, 'crash-after-sync': 0.6, 'crash-window': 1.2, bad: 2,
};

const CHURN_WEIGHTS: Record<OpName, number> = {
  create: 6, mkdir: 1, symlink: 1, write: 50, 'hot-write': 4, truncate: 8, rename: 4, unlink: 7, rmdir: 1, link: 2, chmod: 1,
  read: 3, sync: 4, burst: 2, remount: 0.4, 'crash-after-sync': 0.4, 'crash-window': 0.8, bad: 1,
};

const scale = Number(process.env.MODEL_TEST_SCALE ?? '1');

test('model: random operations, remounts and crashes (64 MiB device, 8 KiB pages)', async () => {
  const stats = await new Run({
    name: 'standard', baseSeed: BASE_SEED, seed: BASE_SEED, ops: Math.round(4000 * scale), deviceBytes: 64 * MiB, maxFileBytes: 160 * 1024,
    maxFiles: 40, maxWritePages: 3, compareEvery: 40, weights: STANDARD_WEIGHTS,
  }).run();
  console.log(`# model standard: ${summary(stats)}`);
  assert.ok(stats.crashes > 0 && stats.remounts > 0);
});

test('model: 4 KiB pages', async () => {
  const stats = await new Run({
    name: 'page4k', baseSeed: BASE_SEED, seed: (BASE_SEED ^ 0x4096) >>> 0, ops: Math.round(2500 * scale), deviceBytes: 48 * MiB, pageBytes: 4096,
    maxFileBytes: 96 * 1024, maxFiles: 30, maxWritePages: 4, compareEvery: 40, weights: STANDARD_WEIGHTS,
  }).run();
  console.log(`# model page4k: ${summary(stats)}`);
});

test('model: small device with heavy churn, so the cleaner runs many times (24 MiB)', async () => {
  const stats = await new Run({
    name: 'churn', baseSeed: BASE_SEED, seed: (BASE_SEED ^ 0xc1ea) >>> 0, ops: Math.round(7500 * scale), deviceBytes: 24 * MiB,
    maxFileBytes: 192 * 1024, maxFiles: 12, maxWritePages: 12, compareEvery: 50, weights: CHURN_WEIGHTS,
  }).run();
  console.log(`# model churn: ${summary(stats)}`);
  if (scale >= 1) {
    assert.ok(stats.finalTailLsn > 1.5 * stats.logBytes, `the log wrapped (tail ${stats.finalTailLsn}, log ${stats.logBytes})`);
    assert.ok(stats.finalHeadLsn > stats.logBytes, `the head passed a whole log's length (head ${stats.finalHeadLsn})`);
    assert.ok(stats.headAdvances >= 10, `the cleaner advanced the head ${stats.headAdvances} times`);
  }
});

// ---------------------------------------------------------------------------
// Space and fencing, outside the random runs

test('a full log is ENOSPC, never corruption; deleting makes room again', async () => {
  const tmp = tempDir('model-enospc');
  try {
    const { path, device } = await tempDevice(tmp.dir, 10 * MiB);
    await mkfs(device);
    const rng = makeRng(BASE_SEED ^ 0xe05);
    let volume = await Volume.openPrimary(new CrashDevice(device), { host: HOST });
    const files: Array<{ ino: number; path: string; content: Buffer }> = [];
    let enospc: FsError | null = null;
    for (let f = 0; f < 100 && !enospc; f++) {
      const p = `/fill${f}`;
      const inode = await volume.create(p, S_IFREG | 0o644, 0, 0);
      const entry = { ino: inode.ino, path: p, content: Buffer.alloc(0) };
      files.push(entry);
      for (let i = 0; i < 16; i++) {
        const chunk = rng.bytes(64 * 1024);
        try {
          await volume.write(inode.ino, entry.content.length, chunk);
        } catch (error) {
          if (!(error instanceof FsError) || error.errno !== 'ENOSPC') throw error;
          enospc = error;
          break;
        }
        entry.content = Buffer.concat([entry.content, chunk]);
        // Overwrite some earlier data too: garbage for the cleaner.
        if (i % 4 === 3) await volume.write(inode.ino, 0, entry.content.subarray(0, 64 * 1024));
      }
      await volume.sync();
    }
    assert.ok(enospc, `the volume never filled up (seed ${BASE_SEED})`);
    const live = files.reduce((s, f) => s + f.content.length, 0);
    assert.ok(live > 4 * MiB, `ENOSPC came with only ${live} bytes of live data in a 9 MiB log`);
    console.log(`# ENOSPC after ${(live / MiB).toFixed(2)} MiB of live file data in a ${(volume.superblock.logBytes / MiB).toFixed(0)} MiB log (${files.length} files); live ${volume.state.liveBytes}, reserve ${volume.cleaner!.reserveBytes()}`);
    const check = async () => {
      for (const f of files) {
        const got = await volume.read(f.ino, 0, f.content.length + 1);
        assert.ok(got.equals(f.content), `${f.path} content after ENOSPC`);
      }
    };
    await check();
    // Metadata operations still work when data writes do not (they have their own reserve).
    await volume.mkdir('/still-works', 0o755, 0, 0);
    await volume.close();
    const ro = await FileDevice.open(path, { readOnly: true });
    const report = await fsck(ro);
    await ro.close();
    assert.ok(report.ok, JSON.stringify(report.problems));
    volume = await Volume.openPrimary(new CrashDevice(await FileDevice.open(path, { readOnly: false })), { host: HOST });
    await check();
    // Delete half of the files: writes succeed again.
    for (const f of files.splice(0, Math.ceil(files.length / 2))) await volume.unlink(f.path);
    const more = rng.bytes(512 * 1024);
    const again = await volume.create('/again', S_IFREG | 0o644, 0, 0);
    for (let i = 0; i < 4; i++) await volume.write(again.ino, i * more.length, more);
    await volume.sync();
    await check();
    assert.ok((await volume.read(again.ino, 3 * more.length, more.length)).equals(more));
    await volume.close();
  } finally {
    tmp.remove();
  }
});

test('another host takes over: the reservation refuses it while held; once cleared, the old volume is fenced', async () => {
  const tmp = tempDir('model-fence');
  try {
    const { path, device } = await tempDevice(tmp.dir, 16 * MiB);
    await mkfs(device);
    const first = await Volume.openPrimary(device, { host: 'host-a' });
    const file = await first.create('/f', S_IFREG | 0o644, 0, 0);
    await first.write(file.ino, 0, Buffer.from('acknowledged'));
    await first.sync();
    // A second host is refused while host-a holds the reservation.
    const second = await FileDevice.open(path, { readOnly: false });
    await assert.rejects(Volume.openPrimary(second, { host: 'host-b' }), /already mounted read-write by host 'host-a'/);
    // Host-a "dies" in a way the emulated reservation cannot see (another
    // machine): the operator clears the reservation block (device offset
    // 8192, 512 bytes), as a fence of an emulated reservation does.
    await second.write(8192, Buffer.alloc(512));
    await second.flush();
    const taken = await Volume.openPrimary(second, { host: 'host-b' });
    assert.equal(taken.epoch, first.epoch + 1);
    assert.ok((await taken.read(taken.resolve('/f').ino, 0, 100)).equals(Buffer.from('acknowledged')));
    // Host-a's next write is refused: its next batch finds the key gone, and the writer fails for good.
    await first.write(file.ino, 0, Buffer.from('LATE'));
    await assert.rejects(first.sync(), (e: unknown) => e instanceof FsError && e.errno === 'EIO');
    await assert.rejects(first.write(file.ino, 0, Buffer.from('x')), (e: unknown) => e instanceof FsError && e.errno === 'EIO');
    // Host-b's view is untouched by the late write.
    await taken.sync();
    stopVolumeTimers(first);
    await taken.close();
    const check = await Volume.openPrimary(await FileDevice.open(path, { readOnly: false }), { host: 'host-b' });
    assert.ok((await check.read(check.resolve('/f').ino, 0, 100)).equals(Buffer.from('acknowledged')));
    await check.close();
    await device.close();
  } finally {
    tmp.remove();
  }
});

/** Waits until the volume's writer has written (not flushed) everything appended. */
async function waitWritten(volume: Volume): Promise<void> {
  const writer = (volume as unknown as { writer: { writtenLsn: number; tailLsn: number } }).writer;
  while (writer.writtenLsn < writer.tailLsn) await new Promise((r) => setImmediate(r));
}

function stopHeartbeat(volume: Volume): void {
  stopVolumeTimers(volume);
}

test('records of an older epoch after a recovered tail are never replayed (stale epoch)', async () => {
  const tmp = tempDir('model-epoch');
  try {
    const { path, device } = await tempDevice(tmp.dir, 16 * MiB);
    await mkfs(device);
    let crash = new CrashDevice(device);
    let volume = await Volume.openPrimary(crash, { host: HOST });
    const keep = await volume.create('/kept', S_IFREG | 0o644, 0, 0);
    await volume.write(keep.ino, 0, Buffer.from('durable'));
    await volume.sync();
    const { logOffset, logBytes } = volume.superblock;
    const offsetOf = (lsn: number) => logOffset + (lsn % logBytes);
    // Batch B1: one sector holding a create. Batch B2: data for that file.
    const b1 = volume.tailLsn;
    const created = await volume.create('/lost', S_IFREG | 0o644, 0, 0);
    await waitWritten(volume);
    const b2 = volume.tailLsn;
    assert.equal(b2 - b1, 512, 'B1 is one sector');
    await volume.write(created.ino, 0, Buffer.alloc(8192, 7));
    await waitWritten(volume);
    // Power loss: B2 reached the platter, B1 did not (a disk may reorder cached writes).
    stopHeartbeat(volume);
    await crash.powerLossKeeping((at) => at < offsetOf(b1) || at >= offsetOf(b2));
    await crash.closeInner();

    // Epoch 3 recovers to B1 (B2's records were never acknowledged: no successor
    // counts as durable) and writes its one-sector Epoch batch exactly over B1.
    crash = new CrashDevice(await FileDevice.open(path, { readOnly: false }));
    volume = await Volume.openPrimary(crash, { host: HOST });
    assert.equal(volume.epoch, 3);
    assert.equal(volume.tailLsn, b2, 'the epoch-3 Epoch batch ends where B2 begins');
    assert.throws(() => volume.resolve('/lost'), (e: unknown) => e instanceof FsError && e.errno === 'ENOENT');
    stopHeartbeat(volume);
    await crash.powerLoss(() => 0, 1);
    await crash.closeInner();

    // Epoch 4: the scan reaches B2's epoch-2 records with matching LSNs right
    // after the epoch-3 record; they must stop the replay (applying them would
    // write data into a file that does not exist).
    const ro = await FileDevice.open(path, { readOnly: true });
    const status = await volumeStatus(ro);
    const report = await fsck(ro);
    await ro.close();
    assert.equal(status.tailLsn, b2);
    assert.ok(report.ok, JSON.stringify(report.problems));
    volume = await Volume.openPrimary(await FileDevice.open(path, { readOnly: false }), { host: HOST });
    assert.equal(volume.epoch, 4);
    assert.throws(() => volume.resolve('/lost'), (e: unknown) => e instanceof FsError && e.errno === 'ENOENT');
    assert.ok((await volume.read(volume.resolve('/kept').ino, 0, 100)).equals(Buffer.from('durable')));
    // And the new epoch goes on writing over the stale records.
    const again = await volume.create('/after', S_IFREG | 0o644, 0, 0);
    await volume.write(again.ino, 0, Buffer.alloc(20_000, 9));
    await volume.close();
    const ro2 = await FileDevice.open(path, { readOnly: true });
    const report2 = await fsck(ro2);
    await ro2.close();
    assert.ok(report2.ok, JSON.stringify(report2.problems));
  } finally {
    tmp.remove();
  }
});

test('a checkpoint of several chunks (> 1 MiB) is written and recovered', async () => {
  const tmp = tempDir('model-bigcp');
  try {
    const { path, device } = await tempDevice(tmp.dir, 64 * MiB);
    await mkfs(device);
    let crash = new CrashDevice(device);
    let volume = await Volume.openPrimary(crash, { host: HOST });
    const rng = makeRng(BASE_SEED ^ 0xb16);
    // 32,000 one-byte writes to random pages of a sparse file: ~30,000
    // versions of 32 bytes each in the checkpoint's version table, plus
    // 2,000 inodes in its JSON part.
    const sparse = await volume.create('/sparse', S_IFREG | 0o644, 0, 0);
    const bytes = new Map<number, number>();
    for (let i = 0; i < 32_000; i++) {
      const page = rng.int(200_000);
      const value = 1 + rng.int(254);
      bytes.set(page, value);
      await volume.write(sparse.ino, page * 8192 + 100, Buffer.from([value]));
    }
    await volume.mkdir('/many', 0o755, 0, 0);
    for (let i = 0; i < 2000; i++) await volume.create(`/many/file-with-a-longish-name-${i}`, S_IFREG | 0o600, 1000, 1000);
    const check = async (v: Volume, label: string) => {
      assert.equal(v.readdir('/many').length, 2000, label);
      const ino = v.resolve('/sparse').ino;
      let n = 0;
      for (const [page, value] of bytes) {
        if (n++ % 50 !== 0) continue;
        // (the byte after it is past EOF on the last page)
        const got = await v.read(ino, page * 8192 + 99, 2);
        assert.deepEqual([...got], [0, value], `${label}: page ${page}`);
      }
      assert.equal(v.stat(v.resolve('/sparse')).size, Math.max(...bytes.keys()) * 8192 + 101, label);
    };
    await volume.checkpoint();
    const cpLsn = volume.superblock.checkpointLsn;
    // Crash right after the checkpoint: recovery loads the multi-chunk checkpoint.
    await volume.sync();
    stopHeartbeat(volume);
    await crash.powerLoss(() => 0, 0);
    await crash.closeInner();
    crash = new CrashDevice(await FileDevice.open(path, { readOnly: false }));
    volume = await Volume.openPrimary(crash, { host: HOST });
    assert.equal(volume.superblock.checkpointLsn, cpLsn);
    const records = await listRecords(crash, { fromLsn: cpLsn, limit: 10 });
    const chunks = records.findIndex((r) => r.type !== 'Checkpoint');
    assert.ok(chunks >= 2, `the checkpoint has ${chunks} chunks`);
    await check(volume, 'after crash');
    await volume.close();
    volume = await Volume.openPrimary(new CrashDevice(await FileDevice.open(path, { readOnly: false })), { host: HOST });
    await check(volume, 'after clean remount');
    await volume.close();
  } finally {
    tmp.remove();
  }
});

test('a log filled with data and then metadata stays writable for deletes, and can be emptied', async () => {
  // Metadata grows the next checkpoint; the reserve must follow, or the
  // checkpoint (needed to move the head, and at unmount) no longer fits.
  const tmp = tempDir('model-metafill');
  try {
    const { path, device } = await tempDevice(tmp.dir, 10 * MiB);
    await mkfs(device);
    const rng = makeRng(BASE_SEED ^ 0x3e7a);
    let volume = await Volume.openPrimary(device, { host: HOST });
    const big = await volume.create('/big', S_IFREG | 0o644, 0, 0);
    const isEnospc = (e: unknown) => e instanceof FsError && e.errno === 'ENOSPC';
    let size = 0;
    for (;;) {
      try { await volume.write(big.ino, size, rng.bytes(64 * 1024)); } catch (e) { if (isEnospc(e)) break; throw e; }
      size += 64 * 1024;
    }
    let created = 0;
    for (;;) {
      try { await volume.create(`/m${created}-${'x'.repeat(200)}`, S_IFREG | 0o644, 0, 0); } catch (e) { if (isEnospc(e)) break; throw e; }
      created++;
    }
    assert.ok(created > 100, `only ${created} creates fit`);
    const writer = (volume as unknown as { writer: { failed: Error | null } }).writer;
    assert.equal(writer.failed, null, 'running out of space must not fence the volume');
    await volume.close(); // writes its checkpoint (or skips it), never asserts
    const ro = await FileDevice.open(path, { readOnly: true });
    const report = await fsck(ro);
    await ro.close();
    assert.ok(report.ok, JSON.stringify(report.problems));
    volume = await Volume.openPrimary(await FileDevice.open(path, { readOnly: false }), { host: HOST });
    assert.equal(volume.readdir('/').length, created + 1);
    assert.equal(volume.stat(volume.resolve('/big')).size, size);
    // Deletes always fit, and free the space for new data.
    for (const { name } of volume.readdir('/')) await volume.unlink(`/${name}`);
    const again = await volume.create('/again', S_IFREG | 0o644, 0, 0);
    const data = rng.bytes(4 * MiB);
    await volume.write(again.ino, 0, data);
    await volume.sync();
    assert.ok((await volume.read(again.ino, 0, data.length)).equals(data));
    await volume.close();
  } finally {
    tmp.remove();
  }
});
