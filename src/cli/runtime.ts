/**
 * Where running mounts are recorded, so that `lsnfs umount` finds the
 * process that serves a mountpoint. One JSON file per mountpoint.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import type { MountRole } from '../volume/volume';

export interface MountRecord {
  pid: number;
  device: string;
  mountpoint: string;
  host: string;
  role: MountRole;
  /** The private overlay directory of a branch or a standby's replica mount. */
  overlay?: string;
  logFile: string;
  startedAtMs: number;
}

export function runtimeDir(): string {
  return process.env.LSNFS_RUNTIME_DIR ?? '/run/lsnfs';
}

/** A mount's file in runtime directory `dir`: its record (`json`) or its daemon's log (`log`). */
export function runtimeFileIn(dir: string, mountpoint: string, kind: 'json' | 'log'): string {
  return path.join(dir, `${path.resolve(mountpoint).replace(/[^A-Za-z0-9._-]+/g, '_')}.${kind}`);
}

export function mountRecordPath(mountpoint: string): string {
  return runtimeFileIn(runtimeDir(), mountpoint, 'json');
}

export function mountLogPath(mountpoint: string): string {
  return runtimeFileIn(runtimeDir(), mountpoint, 'log');
}

export async function writeMountRecord(record: MountRecord): Promise<void> {
  await fsp.mkdir(runtimeDir(), { recursive: true });
  await fsp.writeFile(mountRecordPath(record.mountpoint), JSON.stringify(record, null, 2));
}

export async function readMountRecord(mountpoint: string): Promise<MountRecord | null> {
  try {
    return JSON.parse(await fsp.readFile(mountRecordPath(mountpoint), 'utf8')) as MountRecord;
  } catch {
    return null;
  }
}

export async function removeMountRecord(mountpoint: string): Promise<void> {
  await fsp.rm(mountRecordPath(mountpoint), { force: true });
}

/**
 * True when the kernel lists `mountpoint` as a mount (from /proc/self/mounts,
 * which names mounts by their canonical path, with space, tab, newline and
 * backslash escaped in octal). A path through a symlink is not resolved here.
 */
export async function isMounted(mountpoint: string): Promise<boolean> {
  const target = path.resolve(mountpoint);
  const mounts = await fsp.readFile('/proc/self/mounts', 'utf8');
  return mounts.split('\n').some((line) => line.split(' ')[1]?.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8))) === target);
}
