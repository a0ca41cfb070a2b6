/**
 * Crash safety with the real FUSE mount: a writer process does write+fsync in
 * a loop and reports each operation only after its fsync returned; the test
 * SIGKILLs the filesystem daemon at a random moment, remounts, and checks that
 * every acknowledged operation is there byte for byte. Many rounds on one
 * volume, so state (and cleaner/checkpoint activity) accumulates across kills.
 *
 * LSNFS_CRASH_ROUNDS overrides the number of kill points (default 60; on a
 * slow machine the test stops after ROUND_BUDGET_MS once it has MIN_ROUNDS).
 * LSNFS_CRASH_TIMING=1 prints where each round's time goes.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ChildProcessWithoutNullStreams, spawn } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { processAlive } from '../../src/util/process';
import { daemonPid, destroyVolume, lsnfs, makeVolume, mount, run, runtimeFile, sleep, TestVolume, umount } from '../support/harness';

const ROUNDS = Number(process.env.LSNFS_CRASH_ROUNDS ?? 60);
const MIN_ROUNDS = Math.min(ROUNDS, 50);
const ROUND_BUDGET_MS = 170_000;
const MIN_DELAY_MS = 20;
const MAX_DELAY_MS = 400;

/**
 * The writer. Runs in its own process (sync I/O against the mount must never
 * run in the test process). Protocol on stdout, one line each:
 *   READY                 about to start
 *   B {op}                about to perform op (with its bytes, base64)
 *   A <seq>               op <seq> is done: data fsynced, and the directory fsynced after create/rename/unlink
 *   E <code> <message>    an operation failed (expected once the daemon is gone)
 */
const WRITER_SCRIPT = String.raw`'use strict';
const fs = require('fs');
const path = require('path');
const crypto = require('crypto');
const [dir, stateFile] = process.argv.slice(2);
const init = JSON.parse(fs.readFileSync(stateFile, 'utf8'));
const files = new Map(init.files);
let nextId = init.nextId;
const PAGE = 8192;
const MAX_FILE_BYTES = 96 * 1024;
const MAX_FILES = 40;
const out = (line) => fs.writeSync(1, line + '\n');
const rnd = (n) => Math.floor(Math.random() * n);
const names = () => [...files.keys()];
const pick = (filter) => { const list = names().filter(filter || (() => true)); return list.length ? list[rnd(list.length)] : undefined; };
const fresh = () => 'f' + (nextId++);

function fsyncDir() {
  const fd = fs.openSync(dir, 'r');
  try { fs.fsyncSync(fd); } finally { fs.closeSync(fd); }
}
function writeAt(name, offset, data, flag) {
  const fd = fs.openSync(path.join(dir, name), flag);
  try {
    let done = 0;
    while (done < data.length) done += fs.writeSync(fd, data, done, data.length - done, offset + done);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

function choose() {
  const r = Math.random();
  if (files.size < 3 || (r < 0.12 && files.size < MAX_FILES)) return { op: 'create', name: fresh(), offset: 0, data: crypto.randomBytes(rnd(3 * PAGE)) };
  if (r < 0.40) {
    const name = pick((n) => files.get(n) < MAX_FILE_BYTES);
    if (name !== undefined) return { op: 'write', kind: 'append', name, offset: files.get(name), data: crypto.randomBytes(1 + rnd(2 * PAGE)) };
  }
  if (r < 0.60) {
    const name = pick((n) => files.get(n) < MAX_FILE_BYTES);
    if (name !== undefined) {
      const page = rnd(Math.floor(files.get(name) / PAGE) + 1);
      return { op: 'write', kind: 'page', name, offset: page * PAGE, data: crypto.randomBytes(PAGE) };
    }
  }
  if (r < 0.82) {
    const name = pick((n) => files.get(n) > 0);
    if (name !== undefined) return { op: 'write', kind: 'partial', name, offset: rnd(files.get(name)), data: crypto.randomBytes(1 + rnd(6000)) };
  }
  if ((r < 0.95 && files.size < MAX_FILES) || files.size <= 6) {
    const from = pick();
    const to = Math.random() < 0.3 ? pick((n) => n !== from) : undefined;
    return { op: 'rename', name: from, to: to === undefined ? fresh() : to };
  }
  return { op: 'unlink', name: pick() };
}

function perform(op) {
  switch (op.op) {
    case 'create':
      writeAt(op.name, 0, op.data, 'wx');
      fsyncDir();
      files.set(op.name, op.data.length);
      return;
    case 'write':
      writeAt(op.name, op.offset, op.data, 'r+');
      files.set(op.name, Math.max(files.get(op.name), op.offset + op.data.length));
      return;
    case 'rename':
      fs.renameSync(path.join(dir, op.name), path.join(dir, op.to));
      fsyncDir();
      files.set(op.to, files.get(op.name));
      files.delete(op.name);
      return;
    case 'unlink':
      fs.unlinkSync(path.join(dir, op.name));
      fsyncDir();
      files.delete(op.name);
      return;
  }
}

out('READY');
try {
  for (let seq = 1; ; seq++) {
    const op = choose();
    out('B ' + JSON.stringify({ ...op, seq, data: op.data ? op.data.toString('base64') : undefined }));
    perform(op);
    out('A ' + seq);
  }
} catch (error) {
  out('E ' + (error.code || '?') + ' ' + String(error.message).split('\n')[0]);
  process.exit(3);
}
`;

interface Op {
  seq: number;
  op: 'create' | 'write' | 'rename' | 'unlink';
  kind?: string;
  name: string;
  to?: string;
  offset?: number;
  data?: Buffer;
}

/** Acknowledged content of every file, by name. */
type Model = Map<string, Buffer>;

function applyOp(model: Model, op: Op): void {
  switch (op.op) {
    case 'create':
      model.set(op.name, op.data!);
      return;
    case 'write': {
      const old = model.get(op.name);
      assert.ok(old, `writer wrote to ${op.name}, which the model does not have`);
      const next = Buffer.alloc(Math.max(old.length, op.offset! + op.data!.length));
      old.copy(next);
      op.data!.copy(next, op.offset!);
      model.set(op.name, next);
      return;
    }
    case 'rename':
      model.set(op.to!, model.get(op.name)!);
      model.delete(op.name);
      return;
    case 'unlink':
      model.delete(op.name);
      return;
  }
}

function firstDifference(a: Buffer, b: Buffer): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return n;
}

function assertSameBytes(actual: Buffer, expected: Buffer, what: string): void {
  if (actual.equals(expected)) return;
  assert.fail(`${what}: ${actual.length} bytes, expected ${expected.length}; first difference at offset ${firstDifference(actual, expected)}`);
}

/**
 * harness crashDaemon, with two differences. It is done once the daemon has
 * exited: it waits for processAlive, which counts a zombie as dead, because
 * the init of some machines and containers reaps orphans seconds late (or
 * never). And `whileDead` runs before the stale kernel mount is detached:
 * after `umount -l` the mountpoint path is the empty directory underneath,
 * where a still-running writer would get ENOENT or, worse, create files and
 * fsync them on the host filesystem.
 */
async function crashDaemon(volume: TestVolume, whileDead: () => Promise<void>): Promise<void> {
  const pid = daemonPid(volume);
  process.kill(pid, 'SIGKILL');
  while (processAlive(pid)) await sleep(5);
  await whileDead();
  await run('umount', ['-l', volume.mountpoint]).catch(() => undefined);
  await fsp.rm(runtimeFile(volume.env, volume.mountpoint, 'json'), { force: true });
}

interface RoundResult { acked: Op[]; pending: Op | null; lines: number; error: string | null }

/** Starts the writer, kills the daemon after a random delay, kills the writer, and returns what it acknowledged. */
async function crashRound(volume: TestVolume, model: Model, nextId: number, script: string): Promise<RoundResult> {
  const stateFile = path.join(volume.dir, 'writer-state.json');
  await fsp.writeFile(stateFile, JSON.stringify({ files: [...model].map(([name, bytes]) => [name, bytes.length]), nextId }));
  const child: ChildProcessWithoutNullStreams = spawn(process.execPath, [script, volume.mountpoint, stateFile], { stdio: ['pipe', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  let ready: () => void = () => undefined;
  const readyPromise = new Promise<void>((resolve) => { ready = resolve; });
  child.stdout.on('data', (chunk: Buffer) => {
    stdout += chunk.toString('utf8');
    if (stdout.startsWith('READY\n')) ready();
  });
  child.stderr.on('data', (chunk: Buffer) => { stderr += chunk.toString('utf8'); });
  const closed = new Promise<void>((resolve) => child.on('close', () => resolve()));
  const started = await Promise.race([readyPromise.then(() => true), closed.then(() => false), sleep(20_000).then(() => false)]);
  assert.ok(started, `writer did not start: ${stdout}${stderr}`);
  await sleep(MIN_DELAY_MS + Math.random() * (MAX_DELAY_MS - MIN_DELAY_MS));
  await crashDaemon(volume, async () => {
    child.kill('SIGKILL');
    await closed;
  });

  // Only whole lines count; a line cut by the kill is an unacknowledged op.
  const lines = stdout.split('\n').slice(0, -1);
  const acked: Op[] = [];
  let pending: Op | null = null;
  let error: string | null = null;
  for (const line of lines.slice(1)) {
    if (line.startsWith('B ')) {
      assert.equal(pending, null, 'writer began an op before the previous one was acknowledged');
      const raw = JSON.parse(line.slice(2)) as Omit<Op, 'data'> & { data?: string };
      pending = { ...raw, ...(raw.data !== undefined ? { data: Buffer.from(raw.data, 'base64') } : {}) } as Op;
    } else if (line.startsWith('A ')) {
      assert.ok(pending && pending.seq === Number(line.slice(2)), `acknowledgement without its op: ${line}`);
      acked.push(pending);
      pending = null;
    } else if (line.startsWith('E ')) {
      error = line.slice(2);
    } else {
      assert.fail(`unexpected writer output: ${line}`);
    }
  }
  return { acked, pending, lines: lines.length, error };
}

/**
 * After a remount: every acknowledged byte is there; the one op in flight at
 * the kill (`pending`) may have landed in full, in part, or not at all.
 * Then the model adopts what is actually there (the recovered, now durable state).
 */
async function verifyAndAdopt(volume: TestVolume, model: Model, pending: Op | null, round: number): Promise<void> {
  const mnt = volume.mountpoint;
  const where = `round ${round}${pending ? ` (op in flight: ${pending.op} ${pending.name}${pending.to ? ` -> ${pending.to}` : ''})` : ''}`;
  const names = new Set(await fsp.readdir(mnt));
  const read = (name: string): Promise<Buffer> => fsp.readFile(path.join(mnt, name));
  const touched = new Set(pending ? [pending.name, ...(pending.to ? [pending.to] : [])] : []);

  for (const [name, expected] of model) {
    if (touched.has(name)) continue;
    assert.ok(names.has(name), `${where}: acknowledged file ${name} is missing`);
    assertSameBytes(await read(name), expected, `${where}: ${name}`);
  }

  if (pending) {
    const { name } = pending;
    switch (pending.op) {
      case 'create': {
        if (names.has(name)) {
          const actual = await read(name);
          // One write call: its page records replay as a prefix.
          assert.ok(actual.length <= pending.data!.length, `${where}: ${name} is longer than anything written`);
          assertSameBytes(actual, pending.data!.subarray(0, actual.length), `${where}: ${name} (partly created)`);
          model.set(name, actual);
        }
        break;
      }
      case 'write': {
        assert.ok(names.has(name), `${where}: acknowledged file ${name} is missing`);
        const acked = model.get(name)!;
        const actual = await read(name);
        const end = pending.offset! + pending.data!.length;
        assert.ok(actual.length >= acked.length, `${where}: ${name} shrank from ${acked.length} to ${actual.length} bytes`);
        assert.ok(actual.length <= Math.max(acked.length, end), `${where}: ${name} grew past anything written`);
        for (let i = 0; i < actual.length; i++) {
          const fromWrite = i >= pending.offset! && i < end && actual[i] === pending.data![i - pending.offset!];
          if (i < acked.length && actual[i] !== acked[i] && !fromWrite) {
            assert.fail(`${where}: ${name} byte ${i} is ${actual[i]}, acknowledged ${acked[i]}`);
          }
          if (i >= acked.length && !fromWrite) assert.fail(`${where}: ${name} byte ${i} (past the acknowledged size) was never written`);
        }
        model.set(name, actual);
        break;
      }
      case 'rename': {
        const to = pending.to!;
        const source = model.get(name)!;
        if (names.has(name)) {
          assertSameBytes(await read(name), source, `${where}: ${name} (not renamed)`);
          const target = model.get(to);
          if (target) {
            assert.ok(names.has(to), `${where}: acknowledged file ${to} is missing`);
            assertSameBytes(await read(to), target, `${where}: ${to}`);
          } else {
            assert.ok(!names.has(to), `${where}: ${to} exists although ${name} was not renamed`);
          }
        } else {
          assert.ok(names.has(to), `${where}: ${name} and ${to} are both missing`);
          assertSameBytes(await read(to), source, `${where}: ${to} (renamed from ${name})`);
          model.set(to, source);
          model.delete(name);
        }
        break;
      }
      case 'unlink': {
        if (names.has(name)) assertSameBytes(await read(name), model.get(name)!, `${where}: ${name} (not unlinked)`);
        else model.delete(name);
        break;
      }
    }
  }

  const unexpected = [...names].filter((name) => !model.has(name) && !touched.has(name));
  assert.deepEqual(unexpected, [], `${where}: files nobody created`);
  const missing = [...model.keys()].filter((name) => !names.has(name));
  assert.deepEqual(missing, [], `${where}: files missing after adopting the recovered state`);
}

async function fsckOk(volume: TestVolume, when: string): Promise<void> {
  const result = await lsnfs(['fsck', '--device', volume.device, '--json'], volume.env);
  let report: { ok?: boolean; problems?: unknown[] } = {};
  try { report = JSON.parse(result.stdout) as typeof report; } catch { /* reported below */ }
  assert.ok(result.code === 0 && report.ok === true, `fsck ${when} failed (exit ${result.code}): ${result.stdout}${result.stderr}`);
}

test(`every fsync acknowledged before a daemon SIGKILL survives (${MIN_ROUNDS}-${ROUNDS} kill points)`, { timeout: 4 * 60_000 }, async (t) => {
  const started = Date.now();
  // Small, so that the log wraps and the cleaner and checkpoints run (and get killed) many times.
  const volume = await makeVolume({ name: 'crash', size: '24M' });
  t.after(() => destroyVolume(volume));
  const script = path.join(volume.dir, 'writer.js');
  await fsp.writeFile(script, WRITER_SCRIPT);

  const model: Model = new Map();
  let nextId = 0;
  let ackedOps = 0;
  let roundsWithPending = 0;
  const opCounts: Record<string, number> = {};
  await mount(volume);
  let kills = 0;
  for (let round = 1; round <= ROUNDS; round++) {
    if (round > MIN_ROUNDS && Date.now() - started > ROUND_BUDGET_MS) break;
    kills = round;
    const t0 = Date.now();
    const result = await crashRound(volume, model, nextId, script);
    const t1 = Date.now();
    for (const op of result.acked) {
      applyOp(model, op);
      const key = op.kind ?? op.op;
      opCounts[key] = (opCounts[key] ?? 0) + 1;
    }
    ackedOps += result.acked.length;
    // The writer stops at the first error; only losing the daemon may cause it.
    assert.ok(result.error === null || /^(ENOTCONN|ECONNABORTED|EIO) /.test(result.error), `round ${round}: writer failed: ${result.error}`);
    if (result.pending) roundsWithPending++;
    for (const op of [...result.acked, ...(result.pending ? [result.pending] : [])]) {
      for (const name of [op.name, op.to]) {
        const id = name ? Number(/^f(\d+)$/.exec(name)?.[1] ?? -1) : -1;
        nextId = Math.max(nextId, id + 1);
      }
    }
    await fsckOk(volume, `after kill ${round}`);
    const t2 = Date.now();
    await mount(volume);
    const t3 = Date.now();
    await verifyAndAdopt(volume, model, result.pending, round);
    if (process.env.LSNFS_CRASH_TIMING) t.diagnostic(`round ${round}: crash ${t1 - t0} fsck ${t2 - t1} mount ${t3 - t2} verify ${Date.now() - t3} ms, ${result.acked.length} acked, error ${result.error}`);
  }
  // A clean unmount (checkpoint) and one more mount: the same content.
  await umount(volume);
  await fsckOk(volume, 'after the final clean unmount');
  await mount(volume);
  await verifyAndAdopt(volume, model, null, kills + 1);
  await umount(volume);

  const liveBytes = [...model.values()].reduce((sum, b) => sum + b.length, 0);
  const status = JSON.parse((await lsnfs(['status', '--device', volume.device, '--json'], volume.env)).stdout) as
    { headLsn: number; tailLsn: number; checkpointLsn: number; logBytes: number; epoch: number };
  t.diagnostic(`log: head ${status.headLsn}, checkpoint ${status.checkpointLsn}, tail ${status.tailLsn} ` +
    `(${(status.tailLsn / status.logBytes).toFixed(2)} laps of ${status.logBytes}), epoch ${status.epoch}`);
  t.diagnostic(`${kills} kill points, ${ackedOps} acknowledged ops ${JSON.stringify(opCounts)}, ` +
    `${roundsWithPending} kills with an op in flight, ${model.size} files / ${liveBytes} bytes at the end, ${((Date.now() - started) / 1000).toFixed(1)} s`);
  assert.ok(kills >= MIN_ROUNDS, `only ${kills} kill points`);
  assert.ok(ackedOps >= kills, `the writer acknowledged only ${ackedOps} ops in ${kills} rounds`);
});
