/**
 * Test fixtures that run lsnfs the way a user does: the real CLI, the real
 * FUSE mount served by its own daemon process, a device file in a temp dir.
 * Tests never serve a mount from their own process (a FUSE op runs on the
 * serving process's event loop, so sync I/O against it would deadlock).
 */
import { execFile, spawn } from 'node:child_process';
import { cliArgv } from '../../src/cli/invocation';
import { isMounted, runtimeFileIn } from '../../src/cli/runtime';
import { existsSync, mkdtempSync, promises as fsp, readFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import type { TestContext } from 'node:test';

export const REPO_ROOT = path.resolve(__dirname, '..', '..', '..');

export interface CliResult { code: number; stdout: string; stderr: string }

/** Runs `lsnfs ARGS`; never throws on a non-zero exit (tests assert on it). */
export function lsnfs(args: string[], env: NodeJS.ProcessEnv = {}): Promise<CliResult> {
  return new Promise((resolve) => {
    execFile(process.execPath, cliArgv(args), { env: { ...process.env, ...env }, maxBuffer: 64 * 1024 * 1024 }, (error, stdout, stderr) => {
      const code = error ? (typeof error.code === 'number' ? error.code : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

/** Like lsnfs() but throws with the command's output when it fails. */
export async function lsnfsOk(args: string[], env: NodeJS.ProcessEnv = {}): Promise<string> {
  const result = await lsnfs(args, env);
  if (result.code !== 0) throw new Error(`lsnfs ${args.join(' ')} exited ${result.code}\n${result.stdout}\n${result.stderr}`);
  return result.stdout;
}

export interface TestVolume {
  dir: string;
  device: string;
  mountpoint: string;
  /** Environment for every lsnfs call on this volume (private runtime dir). */
  env: NodeJS.ProcessEnv;
}

export async function makeVolume(options: { size?: string; name?: string; pageSize?: number } = {}): Promise<TestVolume> {
  const dir = mkdtempSync(path.join(os.tmpdir(), `lsnfs-${options.name ?? 'test'}-`));
  const volume: TestVolume = {
    dir,
    device: path.join(dir, 'device.img'),
    mountpoint: path.join(dir, 'mnt'),
    env: { LSNFS_RUNTIME_DIR: path.join(dir, 'run') },
  };
  await fsp.mkdir(volume.mountpoint);
  const args = ['mkfs', '--device', volume.device, '--size', options.size ?? '256M'];
  if (options.pageSize) args.push('--page-size', String(options.pageSize));
  await lsnfsOk(args, volume.env);
  return volume;
}

export async function mount(volume: TestVolume, extra: string[] = []): Promise<void> {
  await lsnfsOk(['mount', '--device', volume.device, '--mountpoint', volume.mountpoint, '--allow-other', ...extra], volume.env);
}

export async function umount(volume: TestVolume): Promise<void> {
  await lsnfsOk(['umount', '--mountpoint', volume.mountpoint], volume.env);
}

/** A mount's file in the runtime directory: its record (`json`) or its daemon's log (`log`). */
export function runtimeFile(env: NodeJS.ProcessEnv, mountpoint: string, kind: 'json' | 'log'): string {
  return runtimeFileIn(env.LSNFS_RUNTIME_DIR!, mountpoint, kind);
}

/** The pid of the daemon serving `mountpoint`. */
export function daemonPidAt(env: NodeJS.ProcessEnv, mountpoint: string): number {
  return (JSON.parse(readFileSync(runtimeFile(env, mountpoint, 'json'), 'utf8')) as { pid: number }).pid;
}

/** The pid of the daemon serving the volume's mountpoint. */
export function daemonPid(volume: TestVolume): number {
  return daemonPidAt(volume.env, volume.mountpoint);
}

/** SIGKILLs the daemon (a crash), waits for it to die, and clears the stale kernel mount. */
export async function crashDaemon(volume: TestVolume): Promise<void> {
  const pid = daemonPid(volume);
  process.kill(pid, 'SIGKILL');
  while (processExists(pid)) await sleep(10);
  await run('umount', ['-l', volume.mountpoint]).catch(() => undefined);
  await fsp.rm(runtimeFile(volume.env, volume.mountpoint, 'json'), { force: true });
}

/** Unmounts if mounted and removes the volume's directory. Safe in `after` hooks. */
export async function destroyVolume(volume: TestVolume): Promise<void> {
  const mounts = readFileSync('/proc/self/mounts', 'utf8');
  if (mounts.includes(` ${volume.mountpoint} `)) {
    const result = await lsnfs(['umount', '--mountpoint', volume.mountpoint], volume.env);
    if (result.code !== 0) await run('umount', ['-l', volume.mountpoint]).catch(() => undefined);
  }
  if (existsSync(volume.dir)) await fsp.rm(volume.dir, { recursive: true, force: true });
}

/** A volume for a test that mounts it a second time (a replica, a standby) at `secondMountpoint`, made; both mounts are gone after `t`. */
export async function makeVolumeWithSecondMount(t: TestContext, name: string, mountDirName: string): Promise<{ volume: TestVolume; secondMountpoint: string }> {
  const volume = await makeVolume({ name });
  const secondMountpoint = path.join(volume.dir, mountDirName);
  t.after(async () => {
    if (await isMounted(secondMountpoint)) await lsnfs(['umount', '--mountpoint', secondMountpoint], volume.env);
    await destroyVolume(volume);
  });
  await fsp.mkdir(secondMountpoint);
  return { volume, secondMountpoint };
}

export function run(command: string, args: string[], options: { env?: NodeJS.ProcessEnv; cwd?: string; user?: string } = {}): Promise<string> {
  const [file, argv] = options.user ? ['runuser', ['-u', options.user, '--', command, ...args]] : [command, args];
  return new Promise((resolve, reject) => {
    const child = spawn(file, argv, { env: { ...process.env, ...options.env }, cwd: options.cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => { stdout += chunk.toString(); });
    child.stderr.on('data', (chunk: Buffer) => { stderr += chunk.toString(); });
    child.on('error', reject);
    child.on('exit', (code, signal) => {
      if (code === 0) resolve(stdout);
      else reject(new Error(`${command} ${args.join(' ')} failed (${signal ?? `exit ${code}`}): ${stderr || stdout}`));
    });
  });
}

export function processExists(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** A TCP port on 127.0.0.1 that nobody listens on now (the kernel's pick). */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const port = (server.address() as net.AddressInfo).port;
      server.close(() => resolve(port));
    });
  });
}
