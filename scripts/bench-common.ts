/** Small helpers shared by the benchmarks in scripts/. */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { execOk } from '../src/pg';

const REPO_ROOT = path.resolve(__dirname, '..', '..');
export const LSNFS_BIN = path.join(REPO_ROOT, 'bin', 'lsnfs');

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
    return execOk(process.execPath, [LSNFS_BIN, ...args], { env: this.env });
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
