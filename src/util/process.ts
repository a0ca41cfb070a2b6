import { readFileSync } from 'node:fs';

/**
 * True while a process with this pid exists and has not exited (EPERM: it
 * exists but is not ours). A zombie has exited: it holds no open files and
 * writes nothing, it only waits for its parent (or an init that may reap
 * late, or never, in a container) to collect its exit status.
 */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  return !isZombie(pid);
}

function isZombie(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // "pid (comm) state ...": comm may contain spaces and parentheses.
    return stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z');
  } catch {
    return false;
  }
}
