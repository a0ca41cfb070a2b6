/**
 * The `lsnfs` command. Each subcommand parses its flags, calls one module,
 * and prints; a UserError becomes a one-line message and exit code 1.
 */
import { existsSync, promises as fsp } from 'node:fs';
import os from 'node:os';
import { Command, Option } from 'commander';
import { openDevice } from '../device/open';
import { BlockDevice } from '../device/device';
import { UserError } from '../util/errors';
import { formatBytes, parseSizeBytes } from '../util/units';
import { mkfs, refuseExistingVolume } from '../volume/mkfs';
import { fsck, listRecords, pageVersions, volumeStatus } from '../volume/inspect';
import { mountInBackground, runMountDaemon, umount } from './mount';

async function withDevice<T>(spec: string, readOnly: boolean, body: (device: BlockDevice) => Promise<T>): Promise<T> {
  const device = await openDevice(spec, { readOnly });
  try {
    return await body(device);
  } finally {
    await device.close();
  }
}

function printJson(value: unknown): void {
  process.stdout.write(JSON.stringify(value, null, 2) + '\n');
}

function parseInteger(what: string) {
  return (text: string): number => {
    const value = Number(text);
    if (!Number.isSafeInteger(value) || value < 0) throw new UserError(`${what}: "${text}" is not a non-negative integer`);
    return value;
  };
}

export function buildProgram(): Command {
  const program = new Command('lsnfs')
    .description('Log-structured, LSN-versioned shared-storage filesystem for PostgreSQL')
    .showHelpAfterError();

  program.command('mkfs')
    .description('format a device (a file or block device) as an lsnfs volume')
    .requiredOption('--device <path>', 'device to format (a regular file is created or resized to --size)')
    .option('--size <size>', 'size for a file device, e.g. 512M, 4G')
    .option('--page-size <bytes>', 'page size in bytes', parseInteger('--page-size'), 8192)
    .option('--force', 'overwrite an existing lsnfs volume', false)
    .action(async (options: { device: string; size?: string; pageSize: number; force: boolean }) => {
      if (options.size) {
        const sizeBytes = parseSizeBytes(options.size, '--size');
        if (!options.force && existsSync(options.device)) await withDevice(options.device, true, refuseExistingVolume);
        await sizeFileDevice(options.device, sizeBytes);
      }
      const superblock = await withDevice(options.device, false, (device) => mkfs(device, { pageBytes: options.pageSize, force: options.force }));
      process.stdout.write(`formatted ${options.device}: ${formatBytes(superblock.deviceBytes)}, page size ${superblock.pageBytes}, uuid ${superblock.uuid}\n`);
    });

  program.command('mount')
    .description('mount a volume read-write (returns once the mount is live)')
    .requiredOption('--device <path>', 'lsnfs device')
    .requiredOption('--mountpoint <dir>', 'directory to mount on')
    .option('--host <name>', 'this host\'s name in the reservation and logs', os.hostname())
    .option('--allow-other', 'let users other than root use the mount (needed for PostgreSQL)', false)
    .option('--foreground', 'serve the mount in this process until SIGTERM/SIGINT', false)
    .addOption(new Option('--role <role>', 'mount role').choices(['primary']).default('primary'))
    .action(async (options: { device: string; mountpoint: string; host: string; allowOther: boolean; foreground: boolean }) => {
      if (options.foreground) {
        await runMountDaemon(options);
        return;
      }
      const args = ['mount', '--device', options.device, '--mountpoint', options.mountpoint, '--host', options.host];
      if (options.allowOther) args.push('--allow-other');
      const { pid, logFile } = await mountInBackground(options, args);
      process.stdout.write(`mounted ${options.device} read-write at ${options.mountpoint} (pid ${pid}, log ${logFile})\n`);
    });

  program.command('umount')
    .description('flush, checkpoint and unmount a mounted volume')
    .requiredOption('--mountpoint <dir>', 'mounted directory')
    .action(async (options: { mountpoint: string }) => {
      await umount(options.mountpoint);
      process.stdout.write(`unmounted ${options.mountpoint}\n`);
    });

  program.command('status')
    .description('show format, space, epoch and log positions (works while mounted)')
    .requiredOption('--device <path>', 'lsnfs device')
    .option('--json', 'machine-readable output', false)
    .action(async (options: { device: string; json: boolean }) => {
      const status = await withDevice(options.device, true, volumeStatus);
      if (options.json) { printJson(status); return; }
      const rows: Array<[string, string]> = [
        ['device', status.device], ['uuid', status.uuid], ['format version', String(status.formatVersion)],
        ['page size', String(status.pageSize)], ['size', formatBytes(status.sizeBytes)],
        ['log used', `${formatBytes(status.usedBytes)} of ${formatBytes(status.logBytes)} (live data ${formatBytes(status.liveBytes)})`],
        ['epoch', String(status.epoch)], ['head LSN', String(status.headLsn)], ['tail LSN', String(status.tailLsn)],
        ['checkpoint LSN', String(status.checkpointLsn)], ['files', String(status.files)],
        ['holder', status.holder ? `${status.holder.host} (pid ${status.holder.pid}, epoch ${status.holder.epoch})` : 'none'],
      ];
      for (const [name, value] of rows) process.stdout.write(`${name.padEnd(16)}${value}\n`);
    });

  program.command('fsck')
    .description('verify every record checksum, the page index and the directory tree')
    .requiredOption('--device <path>', 'lsnfs device')
    .option('--json', 'machine-readable output', false)
    .action(async (options: { device: string; json: boolean }) => {
      const report = await withDevice(options.device, true, fsck);
      if (options.json) printJson(report);
      else {
        process.stdout.write(`fsck ${report.device}: ${report.records} records from LSN ${report.headLsn} to ${report.tailLsn}, ` +
          `${report.versionsChecked} page versions, ${report.inodes} inodes\n`);
        for (const problem of report.problems) process.stdout.write(`  PROBLEM${problem.lsn !== undefined ? ` at LSN ${problem.lsn}` : ''}: ${problem.message}\n`);
        process.stdout.write(report.ok ? 'clean\n' : `${report.problems.length} problem(s) found\n`);
      }
      if (!report.ok) process.exitCode = 1;
    });

  program.command('inspect')
    .description('list log records, or the versions of one page of a file')
    .requiredOption('--device <path>', 'lsnfs device')
    .option('--from <lsn>', 'first LSN to list (default: the log head)', parseInteger('--from'))
    .option('--limit <n>', 'records to list', parseInteger('--limit'), 100)
    .option('--path <path>', 'file inside the volume (with --page: its versions)')
    .option('--page <n>', 'page number within --path', parseInteger('--page'))
    .option('--json', 'machine-readable output', false)
    .action(async (options: { device: string; from?: number; limit: number; path?: string; page?: number; json: boolean }) => {
      if (options.path !== undefined) {
        if (options.page === undefined) throw new UserError('--path needs --page');
        const report = await withDevice(options.device, true, (device) => pageVersions(device, options.path!, options.page!));
        if (options.json) { printJson(report); return; }
        process.stdout.write(`${report.path} (inode ${report.ino}) page ${report.page}: ${report.versions.length} version(s)\n`);
        for (const v of report.versions) process.stdout.write(`  LSN ${v.versionLsn} ${v.kind} [${v.offset}, +${v.length}) at LSN ${v.loc}\n`);
        return;
      }
      const records = await withDevice(options.device, true, (device) => listRecords(device, { ...(options.from !== undefined ? { fromLsn: options.from } : {}), limit: options.limit }));
      if (options.json) { printJson(records); return; }
      process.stdout.write('LSN            EPOCH TYPE        BYTES  DETAIL\n');
      for (const r of records) {
        const detail = r.ino !== undefined ? `ino ${r.ino} page ${r.page} [${r.offset}, +${r.length})${r.versionLsn !== r.lsn ? ` copy of ${r.versionLsn}` : ''}`
          : r.op !== undefined ? JSON.stringify(r.op) : '';
        process.stdout.write(`${String(r.lsn).padEnd(15)}${String(r.epoch).padEnd(6)}${r.type.padEnd(12)}${String(r.bytes).padEnd(7)}${detail}\n`);
      }
    });

  return program;
}

async function sizeFileDevice(path: string, sizeBytes: number): Promise<void> {
  const stat = await fsp.stat(path).catch(() => null);
  if (stat && !stat.isFile()) throw new UserError(`--size applies to file devices only; ${path} is not a regular file`);
  const handle = await fsp.open(path, stat ? 'r+' : 'w');
  try {
    await handle.truncate(sizeBytes);
  } finally {
    await handle.close();
  }
}

export async function main(argv: string[]): Promise<void> {
  try {
    await buildProgram().parseAsync(argv);
  } catch (error) {
    if (error instanceof UserError) {
      process.stderr.write(`lsnfs: ${error.message}\n`);
      process.exitCode = 1;
      return;
    }
    throw error;
  }
}
