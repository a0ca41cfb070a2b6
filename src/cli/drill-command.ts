/**
 * `lsnfs drill`: its flags. The drill itself (drill.ts: PostgreSQL, mounts,
 * fencing) is loaded only when it runs, so that every other command starts
 * without it.
 */
import { Command, Option } from 'commander';
import { UserError } from '../util/errors';
import type { DrillOptions } from './drill';

function parseCount(what: string, min: number) {
  return (text: string): number => {
    const value = Number(text);
    if (!Number.isSafeInteger(value) || value < min) throw new UserError(`${what}: "${text}" must be an integer >= ${min}`);
    return value;
  };
}

export function registerDrill(program: Command): void {
  program.command('drill')
    .description('failover drill: PostgreSQL + pgbench on a fresh volume, kill or freeze the primary host, fail over to the replica host, verify every acknowledged commit (RPO), the fence, and time it (RTO)')
    .option('--dir <dir>', 'empty directory for the device file, mountpoints and logs (default: a temp dir, removed if the drill passes)')
    .option('--device <spec>', 'run on this device instead of a file in --dir, e.g. iscsi://127.0.0.1:3260/IQN/1 (formatted!)')
    .option('--size <size>', 'size of the file device', '4G')
    .option('--rounds <n>', 'failover rounds (each fails over the other way)', parseCount('--rounds', 1), 1)
    .option('--scale <n>', 'pgbench scale factor', parseCount('--scale', 1), 10)
    .option('--clients <n>', 'pgbench clients', parseCount('--clients', 1), 4)
    .option('--kill-after <seconds>', 'fail the primary at a random moment this many seconds into the load (MIN-MAX)', '3-15')
    .addOption(new Option('--failure <mode>', 'how the primary host fails: kill (SIGKILL), freeze (SIGSTOP, resumed after the fence), alternate').choices(['kill', 'freeze', 'alternate']).default('alternate'))
    .option('--port <port>', 'PostgreSQL port of node-a (node-b uses the next one); sockets are in private directories', parseCount('--port', 1024), 54329)
    .addOption(new Option('--full-page-writes <on|off>', 'PostgreSQL full_page_writes (off is safe on lsnfs)').choices(['on', 'off']).default('off'))
    .option('--force', 'format --device even if it holds an lsnfs volume', false)
    .option('--keep', 'keep the drill directory even if the drill passes', false)
    .option('--json', 'print the report as JSON', false)
    .action(async (options: DrillOptions) => {
      const { formatReport, runDrill } = await import('./drill');
      const report = await runDrill(options, (message) => process.stderr.write(`${message}\n`));
      process.stdout.write(options.json ? JSON.stringify(report, null, 2) + '\n' : formatReport(report));
      if (!report.ok) process.exitCode = 2;
    });
}
