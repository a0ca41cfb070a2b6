/**
 * pgbench: initialize, run, parse its summary, and count the transactions
 * its per-transaction log (-l) says were committed. A line is written only
 * after the client has the COMMIT's result, so the log is exactly the set of
 * acknowledged commits (a client whose server dies mid-transaction aborts
 * without logging that transaction).
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { ChildProcess } from 'node:child_process';
import { execOk, startCommand, ExecResult } from './exec';
import { pgProgram } from './binaries';
import { PgCluster, osIds } from './cluster';

export type BuiltinScript = 'tpcb-like' | 'simple-update' | 'select-only';

export interface PgbenchRunOptions {
  builtin?: BuiltinScript;
  clients?: number;
  threads?: number;
  durationS: number;
  db?: string;
  /** -n: skip the vacuum (and the truncation of pgbench_history) before the run. */
  noVacuum?: boolean;
  /** -l into this directory (given to the OS user); count with countLoggedCommits(). */
  logDir?: string;
  /** Log file name prefix inside logDir (default pgbench_log). */
  logPrefix?: string;
  extraArgs?: string[];
}

export interface PgbenchResult {
  exitCode: number | null;
  signal: NodeJS.Signals | null;
  /** "tps = …" (excluding connection time); null when pgbench printed none. */
  tps: number | null;
  /** "number of transactions actually processed". */
  processed: number | null;
  failed: number | null;
  /** Clients that aborted (e.g. the server went away). */
  aborted: boolean;
  stdout: string;
  stderr: string;
}

export function parsePgbenchOutput(result: ExecResult): PgbenchResult {
  const out = result.stdout + '\n' + result.stderr;
  const number = (re: RegExp): number | null => {
    const match = re.exec(out);
    return match ? Number(match[1]) : null;
  };
  return {
    exitCode: result.code,
    signal: result.signal,
    tps: number(/^tps = ([\d.]+) \(without initial connection time\)/m) ?? number(/^tps = ([\d.]+)/m),
    processed: number(/^number of transactions actually processed: (\d+)/m),
    failed: number(/^number of failed transactions: (\d+)/m),
    aborted: /client \d+ aborted|Run was aborted/.test(out),
    stdout: result.stdout,
    stderr: result.stderr,
  };
}

async function giveDirTo(dir: string, cluster: PgCluster): Promise<void> {
  await fsp.mkdir(dir, { recursive: true });
  const { uid, gid } = await osIds(cluster.osUser);
  await fsp.chown(dir, uid, gid);
}

/** pgbench -i -s SCALE; returns the elapsed seconds. */
export async function pgbenchInit(cluster: PgCluster, scale: number, options: { db?: string; extraArgs?: string[] } = {}): Promise<number> {
  const started = Date.now();
  await execOk(await pgProgram('pgbench'),
    [...cluster.connectionArgs(), '-i', '-s', String(scale), '-q', ...(options.extraArgs ?? []), options.db ?? 'postgres'],
    { user: cluster.osUser });
  return (Date.now() - started) / 1000;
}

export interface RunningPgbench {
  child: ChildProcess;
  result: Promise<PgbenchResult>;
  kill(signal: NodeJS.Signals): void;
}

/** Starts pgbench; `result` resolves when it exits, whatever the exit code (check `aborted`). */
export async function startPgbench(cluster: PgCluster, options: PgbenchRunOptions): Promise<RunningPgbench> {
  const clients = options.clients ?? 4;
  const args = [
    ...cluster.connectionArgs(), '-b', options.builtin ?? 'tpcb-like', '-c', String(clients),
    '-j', String(options.threads ?? Math.min(clients, 2)), '-T', String(options.durationS),
  ];
  if (options.noVacuum) args.push('-n');
  if (options.logDir) {
    await giveDirTo(options.logDir, cluster);
    args.push('-l', `--log-prefix=${path.join(path.resolve(options.logDir), options.logPrefix ?? 'pgbench_log')}`);
  }
  args.push(...(options.extraArgs ?? []), options.db ?? 'postgres');
  const running = startCommand(await pgProgram('pgbench'), args, { user: cluster.osUser, cwd: options.logDir ? path.resolve(options.logDir) : '/' });
  return { child: running.child, result: running.result.then(parsePgbenchOutput), kill: running.kill };
}

/** Runs pgbench to the end; throws unless it exits 0. */
export async function runPgbench(cluster: PgCluster, options: PgbenchRunOptions): Promise<PgbenchResult> {
  const result = await (await startPgbench(cluster, options)).result;
  if (result.exitCode !== 0 || result.tps === null) {
    throw new Error(`pgbench failed (${result.signal ?? `exit ${result.exitCode}`}):\n${(result.stderr || result.stdout).trim().split('\n').slice(-10).join('\n')}`);
  }
  return result;
}

/**
 * Committed transactions in pgbench -l files of `logDir` whose names start
 * with `prefix`: lines "client_id transaction_no time script_no epoch_s us …"
 * whose time is a number ("skipped" and "failed" lines are not commits).
 */
export async function countLoggedCommits(logDir: string, prefix = 'pgbench_log'): Promise<number> {
  const files = (await fsp.readdir(logDir)).filter((name) => name === prefix || name.startsWith(`${prefix}.`));
  let committed = 0;
  for (const name of files) {
    const text = await fsp.readFile(path.join(logDir, name), 'utf8');
    for (const line of text.split('\n')) {
      const fields = line.trim().split(/\s+/);
      if (fields.length >= 6 && fields.slice(0, 6).every((f) => /^\d+$/.test(f))) committed++;
    }
  }
  return committed;
}

/**
 * The tpcb-like invariant: every transaction adds the same delta to one
 * account, teller and branch and logs it in pgbench_history, so the four
 * sums agree exactly when every transaction is all-or-nothing. Holds only
 * if every run since `pgbench -i` used noVacuum (the vacuum step truncates
 * pgbench_history but leaves the balances).
 */
export async function tpcbBalances(cluster: PgCluster, db = 'postgres'): Promise<{ history: number; accounts: number; tellers: number; branches: number; historyRows: number; consistent: boolean }> {
  const row = await cluster.psql(
    'SELECT (SELECT coalesce(sum(delta),0) FROM pgbench_history), (SELECT sum(abalance) FROM pgbench_accounts), ' +
      '(SELECT sum(tbalance) FROM pgbench_tellers), (SELECT sum(bbalance) FROM pgbench_branches), (SELECT count(*) FROM pgbench_history)',
    { db },
  );
  const [history, accounts, tellers, branches, historyRows] = row.split('|').map(Number) as [number, number, number, number, number];
  return { history, accounts, tellers, branches, historyRows, consistent: history === accounts && accounts === tellers && tellers === branches };
}
