/**
 * Replica benchmark: how soon a replica shows what the primary acknowledged,
 * and what attached replicas cost the primary.
 *
 * One file device in a temp dir, one primary mount, up to three replica
 * mounts of the same device (distinct --host names), every mount served by
 * its own lsnfs daemon. The load runs in separate child processes of this
 * script (never in a process that serves a mount):
 *
 *  - the writer, on the primary mount, loops write(8 KiB) + fdatasync on one
 *    file; record N goes to page N % 1024 and carries N; right after
 *    fdatasync returns it notes t_ack[N] and publishes N in a small file
 *    outside the volume;
 *  - a reader, on a replica mount, preads single pages (replicas are mounted
 *    direct_io, so every read reaches the replica daemon) and notes t_seen[N]
 *    when a pread shows N (see runReader for how it keeps the number of
 *    preads low: the replica applies the log in order).
 *
 * A replica is another host. By default the primary host (its daemon and
 * the writer) runs on CPU 0 and the replica hosts (their daemons and
 * readers) on the other CPUs, so the throughput runs measure what replicas
 * cost the primary through the shared device; --shared-cpus puts everything
 * on every CPU (what co-locating them on this machine costs).
 *
 * Both stamp with process.hrtime (CLOCK_MONOTONIC: one clock for every
 * process on the machine, immune to wall-clock steps), so lag = t_seen -
 * t_ack needs no calibration.
 *
 * Phases:
 *  1. lag: 1 replica, the writer loops --samples records (after a warm-up)
 *     back to back; p50/p99/max of t_seen - t_ack.
 *  2. throughput: write+fdatasync ops/s over --duration seconds with 0, 1 and
 *     3 replicas attached (replica 1 with a reader measuring the lag under
 *     load, replicas 2 and 3 following the log; --load-reader-interval-ms
 *     gives them readers too), alternated
 *     r0 r1 r3, r1 r3 r0, r3 r0 r1 ... for --rounds rounds; medians; slowdown_r3 =
 *     1 - r3/r0. Replicas are mounted before and unmounted after each run.
 *
 * Usage (as root): scripts/bench-replica [--duration S] [--rounds N] [--samples N]
 *   [--poll-interval-ms MS] [--reader-interval-ms MS] [--load-reader-interval-ms MS]
 *   [--lag-gap-ms MS] [--priority NICE] [--replica-priority NICE] [--shared-cpus] [--size SIZE]
 *   [--dir DIR] [--keep] [--verbose] [--json]
 * --json prints one object on stdout:
 *   {"lag_ms":{"p50":N,"p99":N,"max":N},"primary_ops":{"r0":N,"r1":N,"r3":N},"slowdown_r3":R}
 * Progress, per-run figures and the profile go to stderr: CPU and syscalls
 * per daemon (/proc), machine busy cores, steal time and load average, the reader's
 * pread latency, a lower bound of the lag, and the replica side of the lag
 * from the replicas' slots (publish time - the record's append time, and the
 * gap between publishes).
 */
import { ChildProcess, spawn } from 'node:child_process';
import { closeSync, fdatasyncSync, mkdtempSync, openSync, promises as fsp, readFileSync, readSync, readdirSync, writeFileSync, writeSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Command } from 'commander';
import { daemonPid, hostCpus, log, lsnfsCli, median, round1, round2, round3, positiveInt } from './bench-common';
import { exec, execOk } from '../src/pg/exec';
import { REPLICA_SLOTS_OFFSET, REPLICA_SLOT_BYTES, REPLICA_SLOT_COUNT } from '../src/log/format';
import { decodeSlot } from '../src/replica/slots';
import { runtimeFileIn } from '../src/cli/runtime';

/** Record (and page) size, and the number of pages the records cycle through. */
const RECORD_BYTES = 8192;
const FILE_PAGES = 1024;
const FILE_NAME = 'bench-replica.dat';
const RECORD_MAGIC = 0x4c53_5242; // "LSRB"
/**
 * Records written before the lag samples start: about a second at this machine's rate, while the
 * replica's process, just started, still runs its rounds unoptimized and its page cache fills
 * (instrumented rounds took 8-20 ms in a replica's first second under load, under 1 ms after).
 */
const LAG_WARMUP_RECORDS = 2000;
/** Replicas of the throughput phase. */
const REPLICA_COUNTS = [0, 1, 3] as const;
const MAX_REPLICAS = 3;
/** Readers run this long before the writer starts, and get this long to catch up after it stops. */
const SETTLE_MS = 500;
const READER_DRAIN_MS = 5000;

// ---------------------------------------------------------------------------
// Helpers


/** Milliseconds on CLOCK_MONOTONIC (shared by every process on this machine). */
function nowMs(): number {
  return Number(process.hrtime.bigint()) / 1e6;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

const sleeper = new Int32Array(new SharedArrayBuffer(4));
function sleepSync(ms: number): void {
  if (ms > 0) Atomics.wait(sleeper, 0, 0, ms);
}


/** Nearest-rank percentile of ascending `sorted`. */
function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
}

interface Dist { n: number; min: number; p50: number; p90: number; p99: number; max: number; mean: number }
function dist(values: number[]): Dist {
  const sorted = [...values].sort((a, b) => a - b);
  return {
    n: sorted.length, min: sorted[0] ?? Number.NaN, p50: percentile(sorted, 50), p90: percentile(sorted, 90),
    p99: percentile(sorted, 99), max: sorted[sorted.length - 1] ?? Number.NaN,
    mean: sorted.reduce((a, b) => a + b, 0) / Math.max(1, sorted.length),
  };
}
const fmtDist = (d: Dist): string =>
  `n=${d.n} min ${d.min.toFixed(2)} p50 ${d.p50.toFixed(2)} p90 ${d.p90.toFixed(2)} p99 ${d.p99.toFixed(2)} max ${d.max.toFixed(2)} mean ${d.mean.toFixed(2)} ms`;



function nonNegativeNumber(what: string) {
  return (text: string): number => {
    const value = Number(text);
    if (!Number.isFinite(value) || value < 0) throw new Error(`${what}: "${text}" is not a non-negative number`);
    return value;
  };
}

function niceValue(text: string): number {
  const value = Number(text);
  if (!Number.isSafeInteger(value) || value < -20 || value > 19) throw new Error(`"${text}" is not a nice value (-20 to 19)`);
  return value;
}

function loadavg(): string {
  return readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
}

// ---------------------------------------------------------------------------
// Child processes: the writer and the readers

/**
 * The writer publishes the newest acknowledged sequence number in a small
 * file outside the volume (8 bytes, page cache only), so that readers know
 * what to look for.
 */
interface WriterArgs { file: string; ackFile: string; firstSeq: number; count?: number; durationMs?: number; gapMs: number; resultFile: string }
interface WriterResult {
  firstSeq: number;
  /** t_ack per record, from firstSeq on. */
  acks: number[];
  /** Duration of each write() and each fdatasync(). */
  writeMs: number[];
  syncMs: number[];
  elapsedMs: number;
  cpuMs: number;
}

function encodeRecord(buf: Buffer, seq: number, stampMs: number): void {
  buf.writeUInt32LE(RECORD_MAGIC, 0);
  buf.writeDoubleLE(seq, 8);
  buf.writeDoubleLE(stampMs, 16);
  // The rest varies with seq too, so that no two versions of a page are alike.
  buf.fill(seq & 0xff, 24);
}

function seqAt(buf: Buffer, pageIndex: number): number {
  const at = pageIndex * RECORD_BYTES;
  if (buf.readUInt32LE(at) !== RECORD_MAGIC) return Number.NaN;
  return buf.readDoubleLE(at + 8);
}

function runWriter(args: WriterArgs): void {
  const fd = openSync(args.file, 'r+');
  const ackFd = openSync(args.ackFile, 'r+');
  const buf = Buffer.alloc(RECORD_BYTES);
  const ack = Buffer.alloc(8);
  const result: WriterResult = { firstSeq: args.firstSeq, acks: [], writeMs: [], syncMs: [], elapsedMs: 0, cpuMs: 0 };
  const cpu0 = process.cpuUsage();
  const start = nowMs();
  for (let seq = args.firstSeq; ; seq++) {
    if (args.count !== undefined && seq >= args.firstSeq + args.count) break;
    if (args.durationMs !== undefined && nowMs() - start >= args.durationMs) break;
    const t0 = nowMs();
    encodeRecord(buf, seq, t0);
    writeSync(fd, buf, 0, RECORD_BYTES, (seq % FILE_PAGES) * RECORD_BYTES);
    const t1 = nowMs();
    fdatasyncSync(fd);
    const acked = nowMs();
    ack.writeDoubleLE(seq, 0);
    writeSync(ackFd, ack, 0, 8, 0);
    result.acks.push(acked);
    result.writeMs.push(t1 - t0);
    result.syncMs.push(acked - t1);
    sleepSync(args.gapMs);
  }
  result.elapsedMs = nowMs() - start;
  const cpu = process.cpuUsage(cpu0);
  result.cpuMs = (cpu.user + cpu.system) / 1000;
  closeSync(fd);
  closeSync(ackFd);
  writeFileSync(args.resultFile, JSON.stringify(result));
}

interface ReaderArgs { file: string; ackFile: string; firstSeq: number; lastSeq?: number; intervalMs: number; resultFile: string }
interface ReaderResult {
  firstSeq: number;
  /** t_seen per record from firstSeq on: when a pread first showed it, or a later record (null: never). */
  seen: Array<number | null>;
  /** Start of the last pread of the record's page that did not show it yet (a lower bound on visibility). */
  missedAt: Array<number | null>;
  /** Start time, duration, record looked for and outcome of every pread. */
  readStarts: number[];
  readMs: number[];
  readSeqs: number[];
  readHits: boolean[];
  reads: number;
  /** Pages found overwritten by a record FILE_PAGES later (the reader fell that far behind). */
  lapped: number;
  cpuMs: number;
}

/**
 * Follows the writer on a replica. A replica applies the log in order, so
 * once it shows record A it shows every record before A. Each round reads
 * the newest acknowledged A from the ack file, then preads (one page, one
 * FUSE read each) the page of the oldest record not yet seen: if that is not
 * there, nothing newer is. If it is, A's page: if that shows A, every record
 * up to A is seen now; if not, the replica applied part of what was
 * acknowledged, and a binary search over single-page preads finds how far
 * (log2 of the records outstanding, so a backlog never makes the reader
 * itself fall behind). Then it sleeps `intervalMs`. A record's t_seen is the end of the first pread that proved
 * it visible.
 */
async function runReader(args: ReaderArgs): Promise<void> {
  let stopping = false;
  process.on('message', (message: { stop?: boolean }) => { if (message.stop) stopping = true; });
  process.on('disconnect', () => { stopping = true; });
  // The file reaches the replica once the primary's create is durable and polled.
  let fd = -1;
  for (const deadline = Date.now() + 30_000; fd < 0;) {
    try {
      fd = openSync(args.file, 'r');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT' || Date.now() > deadline) throw error;
      await sleep(10);
    }
  }
  const ackFd = openSync(args.ackFile, 'r');
  if (process.send) process.send({ ready: true });
  const page = Buffer.alloc(RECORD_BYTES);
  const ack = Buffer.alloc(8);
  const result: ReaderResult = { firstSeq: args.firstSeq, seen: [], missedAt: [], readStarts: [], readMs: [], readSeqs: [], readHits: [], reads: 0, lapped: 0, cpuMs: 0 };
  const cpu0 = process.cpuUsage();
  let expect = args.firstSeq;
  /** Preads the page of `seq`: true if it shows `seq` (or a later record: then it was lapped). */
  const probe = (seq: number): boolean => {
    const start = nowMs();
    readSync(fd, page, 0, RECORD_BYTES, (seq % FILE_PAGES) * RECORD_BYTES);
    const end = nowMs();
    result.readStarts.push(start);
    result.readMs.push(end - start);
    result.reads++;
    const found = seqAt(page, 0);
    result.readSeqs.push(seq);
    result.readHits.push(found >= seq);
    if (found >= seq) {
      if (found > seq) result.lapped++;
      for (; expect <= seq; expect++) result.seen[expect - args.firstSeq] = end;
      return true;
    }
    result.missedAt[seq - args.firstSeq] = start;
    return false;
  };
  const done = (): boolean => stopping || (args.lastSeq !== undefined && expect > args.lastSeq);
  while (!done()) {
    readSync(ackFd, ack, 0, 8, 0);
    const acked = ack.readDoubleLE(0);
    // The oldest record not yet seen first: it has the largest lag, and if it is not there, nothing newer is.
    if (acked >= expect && probe(expect) && acked >= expect && !probe(acked)) {
      // What is visible is a prefix: binary search for its end between the last seen and `acked`.
      let hi = acked;
      for (let lo = expect - 1; hi - lo > 1;) {
        const mid = Math.floor((lo + hi) / 2);
        if (probe(mid)) lo = mid; else hi = mid;
      }
    }
    if (!done()) await sleep(args.intervalMs);
  }
  const cpu = process.cpuUsage(cpu0);
  result.cpuMs = (cpu.user + cpu.system) / 1000;
  for (let i = 0; i < result.seen.length; i++) {
    if (result.seen[i] === undefined) result.seen[i] = null;
    if (result.missedAt[i] === undefined) result.missedAt[i] = null;
  }
  closeSync(fd);
  closeSync(ackFd);
  writeFileSync(args.resultFile, JSON.stringify(result));
}

/** A child process running this script in writer or reader mode. */
class Child<R> {
  readonly proc: ChildProcess;
  readonly exited: Promise<number | null>;
  readonly ready: Promise<void>;
  constructor(readonly name: string, mode: '__writer' | '__reader', args: WriterArgs | ReaderArgs, private readonly resultFile: string, host: Host) {
    // nice(1) and taskset(1) exec node, so every thread of the child runs at the host's priority, on its CPUs.
    let argv = [process.execPath, __filename, mode, JSON.stringify(args)];
    if (host.nice !== 0) argv = ['nice', '-n', String(host.nice), ...argv];
    if (host.cpus !== null) argv = ['taskset', '-c', host.cpus, ...argv];
    this.proc = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
    this.exited = new Promise((resolve) => this.proc.on('exit', (code, signal) => resolve(signal ? -1 : code)));
    this.ready = new Promise((resolve, reject) => {
      this.proc.on('message', (message: { ready?: boolean }) => { if (message.ready) resolve(); });
      void this.exited.then((code) => reject(new Error(`${this.name} exited (${code}) before it was ready`)));
    });
    this.ready.catch(() => undefined);
  }
  get alive(): boolean { return this.proc.exitCode === null && this.proc.signalCode === null; }
  /** Asks a reader to stop (it writes its result and exits). */
  stop(): void {
    if (this.alive && this.proc.connected) this.proc.send({ stop: true });
  }
  async result(timeoutMs: number): Promise<R> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<'timeout'>((resolve) => { timer = setTimeout(() => resolve('timeout'), timeoutMs); });
    const code = await Promise.race([this.exited, timeout]).finally(() => clearTimeout(timer));
    if (code === 'timeout') { this.kill(); throw new Error(`${this.name} did not finish within ${timeoutMs} ms`); }
    if (code !== 0) throw new Error(`${this.name} failed (exit ${code})`);
    return JSON.parse(await fsp.readFile(this.resultFile, 'utf8')) as R;
  }
  kill(): void {
    if (this.alive) this.proc.kill('SIGKILL');
  }
}

// ---------------------------------------------------------------------------
// Profiling: CPU and I/O of the daemons, and of the whole machine

interface ProcSample { cpuTicks: number; syscr: number; syscw: number; rchar: number; wchar: number; runNs: number; waitNs: number }
function sampleProc(pid: number): ProcSample | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const io = Object.fromEntries(readFileSync(`/proc/${pid}/io`, 'utf8').trim().split('\n').map((line) => {
      const [key, value] = line.split(':');
      return [key!.trim(), Number(value)];
    })) as Record<string, number>;
    // The main thread's (the event loop's) time on a CPU and time runnable but waiting for one.
    const [runNs, waitNs] = readFileSync(`/proc/${pid}/schedstat`, 'utf8').trim().split(' ').map(Number);
    // utime, stime: fields 14 and 15 of stat (11 and 12 after pid, comm, state).
    return {
      cpuTicks: Number(fields[11]) + Number(fields[12]), syscr: io.syscr!, syscw: io.syscw!, rchar: io.rchar!, wchar: io.wchar!,
      runNs: runNs!, waitNs: waitNs!,
    };
  } catch {
    return null;
  }
}

/**
 * The machine's CPU time (/proc/stat, all CPUs): busy, and stolen -- time the hypervisor ran someone
 * else while a vCPU of ours wanted to run. A run with much steal measured the host's other tenants.
 */
function machineTicks(): { busy: number; steal: number; total: number } {
  const line = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  const idle = line[3]! + (line[4] ?? 0);
  const steal = line[7] ?? 0;
  const total = line.reduce((a, b) => a + b, 0);
  return { busy: total - idle - steal, steal, total };
}

const CLK_TCK = 100;

interface ProcDelta {
  cpuPct: number; readsPerS: number; writesPerS: number; readMBps: number; writeMBps: number;
  /** Event-loop thread: ms per second on a CPU, and ms per second runnable but waiting for a CPU. */
  loopRunMsPerS: number; loopWaitMsPerS: number;
}
function procDelta(a: ProcSample | null, b: ProcSample | null, seconds: number): ProcDelta | null {
  if (!a || !b) return null;
  return {
    cpuPct: ((b.cpuTicks - a.cpuTicks) / CLK_TCK / seconds) * 100,
    readsPerS: (b.syscr - a.syscr) / seconds, writesPerS: (b.syscw - a.syscw) / seconds,
    readMBps: (b.rchar - a.rchar) / seconds / 1e6, writeMBps: (b.wchar - a.wchar) / seconds / 1e6,
    loopRunMsPerS: (b.runNs - a.runNs) / 1e6 / seconds, loopWaitMsPerS: (b.waitNs - a.waitNs) / 1e6 / seconds,
  };
}
const fmtProc = (d: ProcDelta | null): string => d
  ? `cpu ${d.cpuPct.toFixed(0)}% (event loop: on cpu ${d.loopRunMsPerS.toFixed(0)} ms/s, waiting for a cpu ${d.loopWaitMsPerS.toFixed(0)} ms/s), ` +
    `${d.readsPerS.toFixed(0)} read syscalls/s (${d.readMBps.toFixed(1)} MB/s), ${d.writesPerS.toFixed(0)} write syscalls/s (${d.writeMBps.toFixed(1)} MB/s)`
  : 'gone';

/** Samples the daemons and the machine around a measured interval. */
class Profiler {
  private readonly before: Map<string, ProcSample | null>;
  private readonly machine0 = machineTicks();
  private readonly t0 = nowMs();
  constructor(private readonly pids: Map<string, number>) {
    this.before = new Map([...pids].map(([name, pid]) => [name, sampleProc(pid)]));
  }
  finish(): { seconds: number; procs: Map<string, ProcDelta | null>; machineBusyCores: number; machineStealPct: number } {
    const seconds = (nowMs() - this.t0) / 1000;
    const machine = machineTicks();
    const procs = new Map([...this.pids].map(([name, pid]) => [name, procDelta(this.before.get(name)!, sampleProc(pid), seconds)]));
    const cores = os.cpus().length;
    const ticks = Math.max(1, machine.total - this.machine0.total);
    const machineBusyCores = ((machine.busy - this.machine0.busy) / ticks) * cores;
    const machineStealPct = ((machine.steal - this.machine0.steal) / ticks) * 100;
    return { seconds, procs, machineBusyCores, machineStealPct };
  }
}

/**
 * Watches the replicas' slots on the device (as the primary does, but every
 * millisecond). A replica rewrites its slot when its view moved, at most
 * every 20 ms (src/replica/tailer.ts): heartbeatAtMs is then the publish time
 * (the replica's clock, at or after the apply) and viewTimeMs the primary's
 * append time of the newest record applied. So heartbeat - viewTime bounds
 * from above the replica-side lag of the newest record published,
 * heartbeat - (previous viewTime) that of the oldest, and the gap between
 * heartbeats is the replica's publish period while busy (not its poll period).
 */
class SlotSampler {
  private stopped = false;
  private readonly done: Promise<void>;
  readonly applies = new Map<string, Array<{ heartbeatAtMs: number; viewTimeMs: number; prevViewTimeMs: number; prevHeartbeatAtMs: number }>>();
  constructor(device: string) {
    this.done = this.run(device);
  }
  private async run(device: string): Promise<void> {
    const handle = await fsp.open(device, 'r');
    const slots = Math.min(8, REPLICA_SLOT_COUNT);
    const buf = Buffer.alloc(slots * REPLICA_SLOT_BYTES);
    const last = new Map<string, { appliedLsn: number; viewTimeMs: number; heartbeatAtMs: number }>();
    try {
      while (!this.stopped) {
        await handle.read(buf, 0, buf.length, REPLICA_SLOTS_OFFSET);
        for (let index = 0; index < slots; index++) {
          const slot = decodeSlot(buf.subarray(index * REPLICA_SLOT_BYTES, (index + 1) * REPLICA_SLOT_BYTES), index);
          if (!slot || slot === 'damaged') continue; // free, or caught mid-write: the next sample has it
          const before = last.get(slot.host);
          if (before && slot.appliedLsn > before.appliedLsn) {
            if (!this.applies.has(slot.host)) this.applies.set(slot.host, []);
            this.applies.get(slot.host)!.push({
              heartbeatAtMs: slot.heartbeatAtMs, viewTimeMs: slot.viewTimeMs, prevViewTimeMs: before.viewTimeMs, prevHeartbeatAtMs: before.heartbeatAtMs,
            });
          }
          last.set(slot.host, { appliedLsn: slot.appliedLsn, viewTimeMs: slot.viewTimeMs, heartbeatAtMs: slot.heartbeatAtMs });
        }
        await sleep(1);
      }
    } finally {
      await handle.close();
    }
  }
  async stop(): Promise<void> {
    this.stopped = true;
    await this.done;
  }
  /** Per replica: newest-record lag, oldest-record bound, and gaps between applying polls (ms, the machine's wall clock). */
  summary(host: string): { newest: Dist; oldest: Dist; gap: Dist } | null {
    // The first apply's predecessor is from before the run (e.g. the settle pause): not a batch bound.
    const applies = (this.applies.get(host) ?? []).slice(1);
    if (applies.length === 0) return null;
    return {
      newest: dist(applies.map((a) => a.heartbeatAtMs - a.viewTimeMs)),
      oldest: dist(applies.map((a) => a.heartbeatAtMs - a.prevViewTimeMs)),
      gap: dist(applies.map((a) => a.heartbeatAtMs - a.prevHeartbeatAtMs)),
    };
  }
}

// ---------------------------------------------------------------------------
// The volume and its mounts

/**
 * Where one simulated host's processes run: a nice value and, unless the
 * bench runs with --shared-cpus, a CPU list (taskset syntax).
 */
interface Host { nice: number; cpus: string | null }

/** Where each simulated host's processes run (see hostCpus): the primary host, or a replica host. */
function hostsOf(options: BenchOptions): { primary: Host; replica: Host } {
  const cpus = hostCpus(options.sharedCpus);
  return {
    primary: { nice: options.priority, cpus: cpus?.primary ?? null },
    replica: { nice: options.replicaPriority ?? options.priority, cpus: cpus?.followers ?? null },
  };
}

class Mounts {
  readonly device: string;
  readonly env: NodeJS.ProcessEnv;
  /** Mountpoints currently mounted (primary first). */
  private readonly mounted: string[] = [];
  constructor(readonly dir: string, private readonly pollIntervalMs: number, private readonly hosts: { primary: Host; replica: Host }) {
    this.device = path.join(dir, 'device.img');
    this.env = { LSNFS_RUNTIME_DIR: path.join(dir, 'run') };
  }
  get primary(): string { return path.join(this.dir, 'primary'); }
  replica(index: number): string { return path.join(this.dir, `replica-${index}`); }

  private cli(args: string[]): Promise<string> {
    return lsnfsCli(args, this.env);
  }
  async create(size: string): Promise<void> {
    await fsp.mkdir(this.primary, { recursive: true });
    for (let i = 1; i <= MAX_REPLICAS; i++) await fsp.mkdir(this.replica(i), { recursive: true });
    await this.cli(['mkfs', '--device', this.device, '--size', size]);
  }
  async mountPrimary(): Promise<void> {
    await this.cli(['mount', '--device', this.device, '--mountpoint', this.primary, '--role', 'primary', '--host', 'bench-primary']);
    this.mounted.push(this.primary);
    await this.place(this.primary, this.hosts.primary);
  }
  async mountReplica(index: number): Promise<void> {
    await this.cli(['mount', '--device', this.device, '--mountpoint', this.replica(index), '--role', 'replica',
      '--host', `bench-replica-${index}`, '--poll-interval-ms', String(this.pollIntervalMs)]);
    this.mounted.push(this.replica(index));
    await this.place(this.replica(index), this.hosts.replica);
  }
  /** Moves the daemon (all its threads: libuv's pool does the device I/O) to its host's priority and CPUs. */
  private async place(mountpoint: string, host: Host): Promise<void> {
    const pid = this.daemonPid(mountpoint);
    if (pid === null) return;
    if (host.nice !== 0) for (const tid of readdirSync(`/proc/${pid}/task`)) os.setPriority(Number(tid), host.nice);
    if (host.cpus !== null) await execOk('taskset', ['-a', '-cp', host.cpus, String(pid)]);
  }
  async umount(mountpoint: string): Promise<void> {
    const at = this.mounted.indexOf(mountpoint);
    if (at < 0) return;
    this.mounted.splice(at, 1);
    try {
      await this.cli(['umount', '--mountpoint', mountpoint]);
    } catch (error) {
      log(`bench: umount ${mountpoint} failed (${(error as Error).message.split('\n')[0]}); detaching it and stopping its daemon`);
      const pid = this.daemonPid(mountpoint);
      await exec('umount', ['-l', mountpoint]);
      if (pid !== null) { try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ } }
    }
  }
  /** Unmounts everything, replicas first (also a mount whose `lsnfs mount` was interrupted before it returned). */
  async umountAll(): Promise<void> {
    const kernelMounts = readFileSync('/proc/self/mounts', 'utf8');
    for (let i = MAX_REPLICAS; i >= 1; i--) {
      const mountpoint = this.replica(i);
      if (!this.mounted.includes(mountpoint) && kernelMounts.includes(` ${mountpoint} `)) this.mounted.push(mountpoint);
    }
    if (!this.mounted.includes(this.primary) && kernelMounts.includes(` ${this.primary} `)) this.mounted.unshift(this.primary);
    for (const mountpoint of [...this.mounted].reverse()) await this.umount(mountpoint);
  }
  daemonPid(mountpoint: string): number | null {
    return daemonPid(this.env, mountpoint);
  }
  logFile(mountpoint: string): string {
    return runtimeFileIn(this.env.LSNFS_RUNTIME_DIR!, mountpoint, 'log');
  }
}

// ---------------------------------------------------------------------------
// The benchmark

interface BenchOptions {
  duration: number; rounds: number; samples: number; pollIntervalMs: number; readerIntervalMs: number;
  loadReaderIntervalMs?: number; lagGapMs: number; priority: number; replicaPriority?: number; sharedCpus: boolean; size: string; dir?: string;
  keep: boolean; json: boolean; verbose: boolean;
}

interface LagFigures {
  lags: number[];
  /** Lower bounds: from the last pread that did not show the record yet (where one covered its page). */
  lows: number[];
  missed: number; reads: number; lapped: number;
  readMs: Dist;
  /** Time between the starts of consecutive preads (the reader's own pace: interval + read + scheduling). */
  readGapMs: Dist;
}

/** t_seen - t_ack for every record both know, from `fromSeq` on. */
function lagsOf(writer: WriterResult, reader: ReaderResult, fromSeq: number): LagFigures {
  const lags: number[] = [];
  const lows: number[] = [];
  let missed = 0;
  for (let i = 0; i < writer.acks.length; i++) {
    const seq = writer.firstSeq + i;
    if (seq < fromSeq) continue;
    const seen = reader.seen[seq - reader.firstSeq];
    if (seen === undefined || seen === null) { missed++; continue; }
    lags.push(seen - writer.acks[i]!);
    const missedAt = reader.missedAt[seq - reader.firstSeq];
    if (missedAt !== undefined && missedAt !== null) lows.push(Math.max(0, missedAt - writer.acks[i]!));
  }
  const gaps = reader.readStarts.slice(1).map((t, i) => t - reader.readStarts[i]!);
  return { lags, lows, missed, reads: reader.reads, lapped: reader.lapped, readMs: dist(reader.readMs), readGapMs: dist(gaps) };
}

function logLagDetail(prefix: string, lag: LagFigures, slots: SlotSampler, replicas: number): void {
  log(`${prefix}reader: pread ${fmtDist(lag.readMs)}`);
  log(`${prefix}reader: gap between preads ${fmtDist(lag.readGapMs)}`);
  log(`${prefix}lag lower bound (last pread that missed; ${lag.lows.length} of ${lag.lags.length} records): ${fmtDist(dist(lag.lows))}`);
  for (let i = 1; i <= replicas; i++) {
    const summary = slots.summary(`bench-replica-${i}`);
    if (!summary) continue;
    log(`${prefix}replica-${i} slot: publish - append, newest published ${fmtDist(summary.newest)}`);
    log(`${prefix}replica-${i} slot: publish - append, oldest published (bound) ${fmtDist(summary.oldest)}`);
    log(`${prefix}replica-${i} slot: gap between publishes ${fmtDist(summary.gap)}`);
  }
}

interface RunRecord {
  round: number; replicas: number; ops: number; opsPerS: number; syncMs: Dist; writeMs: Dist; writerCpuPct: number;
  lag: Dist | null; readersCpuPct: number; readerReadsPerS: number; profile: ReturnType<Profiler['finish']>;
}

async function bench(options: BenchOptions): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('bench-replica mounts lsnfs (FUSE): run it as root');
  const dir = options.dir ? path.resolve(options.dir) : mkdtempSync(path.join(os.tmpdir(), 'lsnfs-bench-replica-'));
  await fsp.mkdir(dir, { recursive: true });
  const hosts = hostsOf(options);
  const mounts = new Mounts(dir, options.pollIntervalMs, hosts);
  const children = new Set<Child<unknown>>();
  const resultsDir = path.join(dir, 'results');
  let resultCount = 0;
  const resultFile = (name: string): string => path.join(resultsDir, `${++resultCount}-${name}.json`);
  const file = (mountpoint: string): string => path.join(mountpoint, FILE_NAME);
  /** Where the writer publishes its newest acknowledged sequence number (outside the volume). */
  const ackFile = path.join(resultsDir, 'acked.bin');
  let nextSeq = 1;

  const startWriter = (args: Omit<WriterArgs, 'file' | 'ackFile' | 'firstSeq' | 'resultFile' | 'gapMs'> & { gapMs?: number }): Child<WriterResult> => {
    const out = resultFile('writer');
    const child = new Child<WriterResult>('writer', '__writer', { file: file(mounts.primary), ackFile, firstSeq: nextSeq, gapMs: 0, ...args, resultFile: out }, out, hosts.primary);
    children.add(child);
    return child;
  };
  const startReader = async (replica: number, intervalMs: number, lastSeq?: number): Promise<Child<ReaderResult>> => {
    const out = resultFile(`reader-${replica}`);
    const child = new Child<ReaderResult>(`reader on replica ${replica}`, '__reader',
      { file: file(mounts.replica(replica)), ackFile, firstSeq: nextSeq, intervalMs, resultFile: out, ...(lastSeq !== undefined ? { lastSeq } : {}) }, out, hosts.replica);
    children.add(child);
    await child.ready;
    return child;
  };
  const daemonPids = (replicas: number): Map<string, number> => {
    const pids = new Map<string, number>();
    const primaryPid = mounts.daemonPid(mounts.primary);
    if (primaryPid !== null) pids.set('primary', primaryPid);
    for (let i = 1; i <= replicas; i++) {
      const pid = mounts.daemonPid(mounts.replica(i));
      if (pid !== null) pids.set(`replica-${i}`, pid);
    }
    return pids;
  };

  let cleaning: Promise<void> | null = null;
  const cleanup = (): Promise<void> => {
    cleaning ??= (async () => {
      for (const child of children) child.kill();
      await Promise.all([...children].map((child) => child.exited));
      await mounts.umountAll();
      if (!options.keep && !options.dir) await fsp.rm(dir, { recursive: true, force: true });
      else log(`bench: kept ${dir}`);
    })();
    return cleaning;
  };
  const onSignal = (signal: NodeJS.Signals): void => {
    log(`bench: ${signal}: cleaning up`);
    void cleanup().finally(() => process.exit(130));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  try {
    const loadStart = loadavg();
    log(`bench: in ${dir}; ${os.cpus().length} CPUs, load average ${loadStart}; ` +
      (hosts.primary.cpus === null ? 'every process on every CPU (--shared-cpus)' : `primary host on CPU ${hosts.primary.cpus}, replica hosts on CPUs ${hosts.replica.cpus}`));
    await fsp.mkdir(resultsDir, { recursive: true });
    await fsp.writeFile(ackFile, Buffer.alloc(8));
    await mounts.create(options.size);
    await mounts.mountPrimary();
    // The file: FILE_PAGES pages of sequence number 0, durable before any replica mounts.
    const handle = await fsp.open(file(mounts.primary), 'w');
    const page = Buffer.alloc(RECORD_BYTES);
    encodeRecord(page, 0, 0);
    const whole = Buffer.concat(Array.from({ length: FILE_PAGES }, () => page));
    await handle.write(whole, 0, whole.length, 0);
    await handle.datasync();
    await handle.close();

    // Phase 1: visibility lag with one replica.
    await mounts.mountReplica(1);
    const lagWarmup = LAG_WARMUP_RECORDS;
    const lastSeq = nextSeq + lagWarmup + options.samples - 1;
    const lagReader = await startReader(1, options.readerIntervalMs, lastSeq);
    await sleep(SETTLE_MS);
    log(`bench: lag: 1 replica (poll ${options.pollIntervalMs} ms), reader probes every ${options.readerIntervalMs} ms; ` +
      `${options.samples} records after ${lagWarmup} warm-up${options.lagGapMs > 0 ? `, ${options.lagGapMs} ms between records` : ', back to back'}`);
    const lagProfiler = new Profiler(daemonPids(1));
    const lagSlots = new SlotSampler(mounts.device);
    const lagWriter = startWriter({ count: lagWarmup + options.samples, gapMs: options.lagGapMs });
    const lagWriterResult = await lagWriter.result(600_000);
    const lagReaderResult = await lagReader.result(READER_DRAIN_MS).catch((error: Error) => {
      lagReader.stop();
      throw error;
    });
    const lagProfile = lagProfiler.finish();
    await lagSlots.stop();
    const lag = lagsOf(lagWriterResult, lagReaderResult, nextSeq + lagWarmup);
    nextSeq += lagWriterResult.acks.length;
    await mounts.umount(mounts.replica(1));
    const lagDist = dist(lag.lags);
    const lagOpsPerS = lagWriterResult.acks.length / (lagWriterResult.elapsedMs / 1000);
    log(`bench: lag: ${fmtDist(lagDist)}; ${lag.missed} missed, ${lag.lapped} lapped; writer ${lagOpsPerS.toFixed(0)} ops/s, ` +
      `fdatasync ${fmtDist(dist(lagWriterResult.syncMs))}`);
    log(`bench: lag: reader ${lag.reads} preads (${(lag.reads / lagProfile.seconds).toFixed(0)}/s), cpu ${((lagReaderResult.cpuMs / 1000 / lagProfile.seconds) * 100).toFixed(0)}%; ` +
      `writer cpu ${((lagWriterResult.cpuMs / lagWriterResult.elapsedMs) * 100).toFixed(0)}%; machine busy ${lagProfile.machineBusyCores.toFixed(2)} of ${os.cpus().length} cores, steal ${lagProfile.machineStealPct.toFixed(1)}%`);
    for (const [name, delta] of lagProfile.procs) log(`bench: lag:   ${name.padEnd(9)} ${fmtProc(delta)}`);
    logLagDetail('bench: lag:   ', lag, lagSlots, 1);

    // Phase 2: primary throughput with 0, 1 and 3 replicas, alternated.
    const runs: RunRecord[] = [];
    for (let round = 1; round <= options.rounds; round++) {
      // The order rotates from round to round (r0 r1 r3, r1 r3 r0, r3 r0 r1): no replica count always runs
      // first, or right after the others' mounts and unmounts.
      const order = REPLICA_COUNTS.map((_, i) => REPLICA_COUNTS[(i + round - 1) % REPLICA_COUNTS.length]!);
      for (const replicas of order) {
        for (let i = 1; i <= replicas; i++) await mounts.mountReplica(i);
        const readers: Array<Child<ReaderResult>> = [];
        // Replica 1's reader measures the lag under load; replicas 2 and 3 only follow the log unless
        // --load-reader-interval-ms gives them readers too.
        for (let i = 1; i <= replicas; i++) {
          if (i === 1) readers.push(await startReader(i, options.readerIntervalMs));
          else if (options.loadReaderIntervalMs !== undefined) readers.push(await startReader(i, options.loadReaderIntervalMs));
        }
        await sleep(SETTLE_MS);
        const profiler = new Profiler(daemonPids(replicas));
        const slots = new SlotSampler(mounts.device);
        const writer = startWriter({ durationMs: options.duration * 1000 });
        const result = await writer.result(options.duration * 1000 + 120_000);
        const profile = profiler.finish();
        await slots.stop();
        // Let the readers see the last records, then stop them.
        const endSeq = nextSeq + result.acks.length;
        await sleep(200);
        for (const reader of readers) reader.stop();
        const readerResults = await Promise.all(readers.map((reader) => reader.result(READER_DRAIN_MS)));
        for (let i = replicas; i >= 1; i--) await mounts.umount(mounts.replica(i));
        const lagRun = readerResults[0] ? lagsOf(result, readerResults[0], nextSeq) : null;
        nextSeq = endSeq;
        const run: RunRecord = {
          round, replicas, ops: result.acks.length, opsPerS: result.acks.length / (result.elapsedMs / 1000),
          syncMs: dist(result.syncMs), writeMs: dist(result.writeMs), writerCpuPct: (result.cpuMs / result.elapsedMs) * 100,
          lag: lagRun ? dist(lagRun.lags) : null,
          readersCpuPct: readerResults.reduce((sum, r) => sum + r.cpuMs, 0) / 1000 / profile.seconds * 100,
          readerReadsPerS: readerResults.reduce((sum, r) => sum + r.reads, 0) / profile.seconds,
          profile,
        };
        runs.push(run);
        const replicaCpu = [...profile.procs].filter(([name]) => name.startsWith('replica')).reduce((sum, [, d]) => sum + (d?.cpuPct ?? 0), 0);
        log(`bench: round ${round} r${replicas}: ${run.opsPerS.toFixed(1)} ops/s; fdatasync p50 ${run.syncMs.p50.toFixed(2)} p99 ${run.syncMs.p99.toFixed(2)} ms, ` +
          `write p50 ${run.writeMs.p50.toFixed(2)} ms; cpu: primary ${profile.procs.get('primary')?.cpuPct.toFixed(0) ?? '?'}%, writer ${run.writerCpuPct.toFixed(0)}%, ` +
          `replicas ${replicaCpu.toFixed(0)}%, readers ${run.readersCpuPct.toFixed(0)}% (${run.readerReadsPerS.toFixed(0)} preads/s); ` +
          `machine busy ${profile.machineBusyCores.toFixed(2)} cores, steal ${profile.machineStealPct.toFixed(1)}%; load ${loadavg()}` +
          (run.lag ? `; replica-1 lag p50 ${run.lag.p50.toFixed(2)} p99 ${run.lag.p99.toFixed(2)} max ${run.lag.max.toFixed(2)} ms` : ''));
        for (const [name, delta] of profile.procs) log(`bench:   ${name.padEnd(9)} ${fmtProc(delta)}`);
        if (lagRun && options.verbose) logLagDetail('bench:   ', lagRun, slots, replicas);
      }
    }

    const medianOps = (replicas: number): number => median(runs.filter((r) => r.replicas === replicas).map((r) => r.opsPerS));
    const summary = {
      lag_ms: { p50: round2(lagDist.p50), p99: round2(lagDist.p99), max: round2(lagDist.max) },
      primary_ops: { r0: round1(medianOps(0)), r1: round1(medianOps(1)), r3: round1(medianOps(3)) },
      slowdown_r3: round3(1 - medianOps(3) / medianOps(0)),
    };
    const loadEnd = loadavg();
    log(`bench: load average at start ${loadStart}, at end ${loadEnd}`);

    if (options.json) {
      process.stdout.write(JSON.stringify(summary) + '\n');
    } else {
      const lines = [
        '',
        `visibility lag, 1 replica (poll ${options.pollIntervalMs} ms, reader probe ${options.readerIntervalMs} ms), ${lagDist.n} samples` +
          `${lag.missed > 0 ? ` (${lag.missed} missed)` : ''}:`,
        `  p50 ${lagDist.p50.toFixed(2)} ms   p99 ${lagDist.p99.toFixed(2)} ms   max ${lagDist.max.toFixed(2)} ms   (min ${lagDist.min.toFixed(2)}, writer ${lagOpsPerS.toFixed(0)} ops/s)`,
        '',
        `primary write+fdatasync (8 KiB), ${options.duration} s per run:`,
        'round  replicas     ops/s  fsync p50  fsync p99  lag p99  busy cores  steal %',
      ];
      for (const run of runs) {
        lines.push(`${String(run.round).padStart(5)}  ${String(run.replicas).padStart(8)}  ${run.opsPerS.toFixed(1).padStart(8)}  ` +
          `${run.syncMs.p50.toFixed(2).padStart(9)}  ${run.syncMs.p99.toFixed(2).padStart(9)}  ${(run.lag ? run.lag.p99.toFixed(2) : '-').padStart(7)}  ` +
          `${run.profile.machineBusyCores.toFixed(2).padStart(10)}  ${run.profile.machineStealPct.toFixed(1).padStart(7)}`);
      }
      lines.push(
        '',
        `median ops/s: r0 ${summary.primary_ops.r0}, r1 ${summary.primary_ops.r1}, r3 ${summary.primary_ops.r3}; ` +
          `slowdown with 3 replicas ${(summary.slowdown_r3 * 100).toFixed(1)}%`,
        `load average: ${loadStart} at start, ${loadEnd} at end (${os.cpus().length} CPUs)`,
        `targets: p99 lag <= 10 ms: ${summary.lag_ms.p99 <= 10 ? 'met' : 'MISSED'}; slowdown with 3 replicas <= 5%: ${summary.slowdown_r3 <= 0.05 ? 'met' : 'MISSED'}`,
      );
      process.stdout.write(lines.join('\n') + '\n');
    }
  } catch (error) {
    const logs = [mounts.primary, ...[1, 2, 3].map((i) => mounts.replica(i))].map((m) => mounts.logFile(m));
    log(`bench: failed; mount logs: ${logs.join(' ')}${options.keep || options.dir ? '' : ' (use --keep to keep them)'}`);
    throw error;
  } finally {
    await cleanup();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

// ---------------------------------------------------------------------------

function main(): void {
  const mode = process.argv[2];
  if (mode === '__writer') {
    runWriter(JSON.parse(process.argv[3]!) as WriterArgs);
    return;
  }
  if (mode === '__reader') {
    runReader(JSON.parse(process.argv[3]!) as ReaderArgs).then(() => process.exit(0), (error: Error) => {
      process.stderr.write(`bench-replica reader: ${error.stack ?? error.message}\n`);
      process.exit(1);
    });
    return;
  }
  const program = new Command('bench-replica')
    .description('replica visibility lag, and primary write+fdatasync throughput with 0, 1 and 3 replicas')
    .option('--duration <seconds>', 'seconds per throughput run', positiveInt('--duration'), 10)
    // Rounds paired in time differ by up to +-20 % on this 2-core machine: fewer than 6 cannot tell a 5 % slowdown.
    .option('--rounds <n>', 'rounds of r0, r1, r3 (alternated, the order rotating)', positiveInt('--rounds'), 6)
    .option('--samples <n>', 'records measured for the visibility lag', positiveInt('--samples'), 3000)
    .option('--poll-interval-ms <ms>', 'replica mounts: --poll-interval-ms', nonNegativeNumber('--poll-interval-ms'), 5)
    .option('--reader-interval-ms <ms>', 'pause between probes of the reader that measures lag (replica 1)', nonNegativeNumber('--reader-interval-ms'), 1)
    .option('--load-reader-interval-ms <ms>', 'give replicas 2 and 3 readers too, with this pause between probes (default: they only follow the log)', nonNegativeNumber('--load-reader-interval-ms'))
    .option('--lag-gap-ms <ms>', 'lag phase: pause after each acknowledged record (0: back to back)', nonNegativeNumber('--lag-gap-ms'), 0)
    .option('--priority <nice>', 'nice value for every daemon, the writer and the readers (e.g. -10 to shield them from other load)', niceValue, 0)
    .option('--replica-priority <nice>', 'nice value for the replica daemons and their readers only (default: --priority)', niceValue)
    .option('--shared-cpus', 'run the replica hosts on the primary\'s CPUs too (default: the primary on CPU 0, the replicas on the others)', false)
    .option('--verbose', 'per-run detail on stderr (reader and replica-side lag) for the throughput runs too', false)
    .option('--size <size>', 'device size', '4G')
    .option('--dir <dir>', 'working directory (default: a temp dir, removed afterwards)')
    .option('--keep', 'keep the working directory (device, mount logs, raw results)', false)
    .option('--json', 'print only the summary, as one JSON object', false)
    .action(bench);
  program.parseAsync(process.argv).catch((error: Error) => {
    process.stderr.write(`bench-replica: ${error.message}\n`);
    process.exitCode = 1;
  });
}

main();
