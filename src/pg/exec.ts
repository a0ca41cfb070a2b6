/**
 * Runs PostgreSQL's programs as the PostgreSQL OS user, asynchronously.
 * As root, commands go through `runuser -u USER --`; as anyone else they run
 * as the current user (who then must own the data directory).
 */
import { ChildProcess, spawn } from 'node:child_process';

export interface ExecOptions {
  /** OS user to run as (only applied when running as root). */
  user?: string;
  env?: NodeJS.ProcessEnv;
  /** Working directory; '/' by default, which every user can enter. */
  cwd?: string;
  /** SIGKILL the command after this long (the result then has signal SIGKILL). */
  timeoutMs?: number;
}

export interface ExecResult {
  command: string;
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export class CommandError extends Error {
  constructor(readonly result: ExecResult) {
    const output = (result.stderr.trim() || result.stdout.trim()).split('\n').slice(-15).join('\n');
    super(`${result.command} failed (${result.signal ?? `exit ${result.code}`})${output ? `:\n${output}` : ''}`);
    this.name = 'CommandError';
  }
}

export interface RunningCommand {
  child: ChildProcess;
  result: Promise<ExecResult>;
  /** Signals the command's whole process group (runuser and what it runs). */
  kill(signal: NodeJS.Signals): void;
}

function argvFor(command: string, args: string[], user?: string): [string, string[]] {
  if (user && process.getuid?.() === 0) return ['runuser', ['-u', user, '--', command, ...args]];
  return [command, args];
}

/** Starts a command; `result` resolves when it exits (never rejects for a non-zero exit). */
export function startCommand(command: string, args: string[], options: ExecOptions = {}): RunningCommand {
  const [file, argv] = argvFor(command, args, options.user);
  // Its own process group, so that kill() reaches the program behind runuser too.
  const child = spawn(file, argv, { env: { ...process.env, ...options.env }, cwd: options.cwd ?? '/', stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  const kill = (signal: NodeJS.Signals): void => {
    try {
      if (child.pid !== undefined) process.kill(-child.pid, signal);
    } catch {
      // already gone
    }
  };
  const label = [command, ...args].join(' ');
  const result = new Promise<ExecResult>((resolve, reject) => {
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (chunk: Buffer) => { stdout += chunk.toString(); });
    child.stderr!.on('data', (chunk: Buffer) => { stderr += chunk.toString(); });
    const timer = options.timeoutMs ? setTimeout(() => kill('SIGKILL'), options.timeoutMs) : null;
    child.on('error', (error) => { if (timer) clearTimeout(timer); reject(error); });
    child.on('close', (code, signal) => {
      if (timer) clearTimeout(timer);
      resolve({ command: label, code, signal, stdout, stderr });
    });
  });
  return { child, result, kill };
}

export function exec(command: string, args: string[], options: ExecOptions = {}): Promise<ExecResult> {
  return startCommand(command, args, options).result;
}

/** Runs a command and returns its stdout; throws CommandError unless it exits 0. */
export async function execOk(command: string, args: string[], options: ExecOptions = {}): Promise<string> {
  const result = await exec(command, args, options);
  if (result.code !== 0) throw new CommandError(result);
  return result.stdout;
}
