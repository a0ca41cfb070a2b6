/** Small helpers shared by the benchmarks in scripts/. */
import { mkdtempSync, promises as fsp, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Command } from 'commander';
import { cliArgv } from '../src/cli/invocation';
import { runtimeFileIn } from '../src/cli/runtime';
import { childPids, execOk } from '../src/pg';

export const REPO_ROOT = path.resolve(__dirname, '..', '..');

/** Runs the lsnfs CLI (never in a process that serves a mount); resolves with its stdout. */
export function lsnfsCli(args: string[], env: NodeJS.ProcessEnv): Promise<string> {
  return execOk(process.execPath, cliArgv(args), { env });
}

/** An lsnfs file device with its mountpoint and private runtime directory, driven through the CLI. */
export class LsnfsVolume {
  readonly device: string;
  readonly mountpoint: string;
  readonly env: NodeJS.ProcessEnv;
  constructor(dir: string) {
    this.device = path.join(dir, 'device.img');
    this.mountpoint = path.join(dir, 'mnt');
    this.env = { LSNFS_RUNTIME_DIR: path.join(dir, 'run') };
  }
  cli(args: string[]): Promise<string> {
    return lsnfsCli(args, this.env);
  }
  async create(size: string): Promise<void> {
    await fsp.mkdir(this.mountpoint, { recursive: true });
    await this.cli(['mkfs', '--device', this.device, '--size', size]);
  }
  mount(): Promise<string> { return this.cli(['mount', '--device', this.device, '--mountpoint', this.mountpoint, '--allow-other']); }
  umount(mountpoint = this.mountpoint): Promise<string> { return this.cli(['umount', '--mountpoint', mountpoint]); }
}

/** Progress and per-run figures go to stderr; stdout is kept for the report (--json). */
export function log(message: string): void {
  process.stderr.write(`${message}\n`);
}

export function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

export const round1 = (value: number): number => Math.round(value * 10) / 10;
export const round2 = (value: number): number => Math.round(value * 100) / 100;
export const round3 = (value: number): number => Math.round(value * 1000) / 1000;

/** A commander argument parser for a positive integer option. */
export function positiveInt(what: string) {
  return (text: string): number => {
    const value = Number(text);
    if (!Number.isSafeInteger(value) || value < 1) throw new Error(`${what}: "${text}" is not a positive integer`);
    return value;
  };
}

export interface WorkDirOptions { dir?: string; keep: boolean }

/** The benchmark's working directory (--dir, else a new temp dir), readable by the PostgreSQL OS user. */
export async function makeWorkDir(options: WorkDirOptions, prefix: string): Promise<string> {
  const dir = options.dir ? path.resolve(options.dir) : mkdtempSync(path.join(os.tmpdir(), prefix));
  await fsp.mkdir(dir, { recursive: true });
  await fsp.chmod(dir, 0o755);
  return dir;
}

/** Removes a temp working directory unless --keep or --dir was given. */
export async function removeWorkDir(options: WorkDirOptions, dir: string): Promise<void> {
  if (!options.keep && !options.dir) await fsp.rm(dir, { recursive: true, force: true });
}

/** Adds --dir/--keep/--json to a benchmark's command, runs it, and prints a failure as one line. */
export function runBenchProgram<T>(program: Command, action: (options: T) => Promise<void>): void {
  program
    .option('--dir <dir>', 'working directory (default: a temp dir)')
    .option('--keep', 'keep the working directory', false)
    .option('--json', 'print only the summary, as one JSON object', false)
    .action(action);
  program.parseAsync(process.argv).catch((error: Error) => {
    process.stderr.write(`${program.name()}: ${error.message}\n`);
    process.exitCode = 1;
  });
}

/** The pid of the daemon serving `mountpoint`, from its mount record in the runtime directory of `env`. */
export function daemonPid(env: NodeJS.ProcessEnv, mountpoint: string): number | null {
  try {
    return (JSON.parse(readFileSync(runtimeFileIn(env.LSNFS_RUNTIME_DIR!, mountpoint, 'json'), 'utf8')) as { pid: number }).pid;
  } catch {
    return null;
  }
}

/**
 * CPUs of the simulated hosts of a benchmark: a primary and the hosts that
 * follow it (replicas, standbys) are different machines, so by default the
 * primary gets CPU 0 and the others the rest; null (--shared-cpus, or one
 * CPU) runs everything everywhere.
 */
export function hostCpus(sharedCpus: boolean): { primary: string; followers: string } | null {
  const cpuCount = os.cpus().length;
  return sharedCpus || cpuCount < 2 ? null : { primary: '0', followers: `1-${cpuCount - 1}` };
}

/** Moves `pid`, its threads and its descendants to `cpus` (taskset syntax); processes they start later inherit it. */
export async function pinProcessTree(pid: number, cpus: string): Promise<void> {
  const tree = [pid];
  for (let i = 0; i < tree.length; i++) tree.push(...await childPids(tree[i]!));
  for (const member of tree) await execOk('taskset', ['-a', '-cp', cpus, String(member)]).catch(() => undefined); // gone meanwhile
}
