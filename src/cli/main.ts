/**
 * The `lsnfs` command. Each subcommand parses its flags, calls one module,
 * and prints; a UserError becomes a one-line message and exit code 1.
 */
import { existsSync, promises as fsp } from 'node:fs';
import os from 'node:os';
import { Command, Option } from 'commander';
import { UserError } from '../util/errors';
import { formatBytes, parseDurationMs, parseSizeBytes } from '../util/units';
import { mountInBackground, umount } from './mount';
import type { MountRole } from '../volume/volume';
import { METRICS_FLAGS, METRICS_HELP, MetricsAddress, parseMetricsAddress } from '../metrics/address';
import { registerDrill } from './drill-command';
import { registerPg } from './pg';
import { formatPgLsn } from '../pg/control';

// A command loads the modules it runs when it runs (`await import`): the volume, inspection, fencing and
// the drill take ~50 ms to load, which a command that needs none of them (lsnfs pg standby starts a
// mount daemon and PostgreSQL) would otherwise pay; the daemon itself loads no drill, inspection or fencing.

function printJson(value: unknown): void {
  process.stdout.write(JSON.stringify(value, null, 2) + '\n');
}

function parseTime(text: string): number {
  const ms = Date.parse(text);
  if (Number.isNaN(ms)) throw new UserError(`--at-time: "${text}" is not a date and time (example: 2026-11-21T20:30:00Z)`);
  return ms;
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
    .option('--retain <duration>', 'keep every state of this age readable as a snapshot, e.g. 1h, 30m', '0')
    .option('--force', 'overwrite an existing lsnfs volume', false)
    .action(async (options: { device: string; size?: string; pageSize: number; force: boolean; retain: string }) => {
      const [{ withDevice }, { mkfs, refuseExistingVolume }] = await Promise.all([import('../device/open'), import('../volume/mkfs')]);
      const retainMs = parseDurationMs(options.retain, '--retain');
      if (options.size) {
        const sizeBytes = parseSizeBytes(options.size, '--size');
        if (!options.force && existsSync(options.device)) await withDevice(options.device, { readOnly: true }, refuseExistingVolume);
        await sizeFileDevice(options.device, sizeBytes);
      }
      const superblock = await withDevice(options.device, { readOnly: false }, (device) => mkfs(device, { pageBytes: options.pageSize, force: options.force, retainMs }));
      process.stdout.write(`formatted ${options.device}: ${formatBytes(superblock.deviceBytes)}, page size ${superblock.pageBytes}, uuid ${superblock.uuid}\n`);
    });

  program.command('mount')
    .description('mount a volume: primary (read-write), replica (follows the primary) or snapshot (one past LSN); returns once the mount is live')
    .requiredOption('--device <path>', 'lsnfs device')
    .requiredOption('--mountpoint <dir>', 'directory to mount on')
    .option('--host <name>', 'this host\'s name in the reservation, slots and logs', os.hostname())
    .addOption(new Option('--role <role>', 'mount role').choices(['primary', 'replica', 'snapshot']).default('primary'))
    .option('--at-lsn <lsn>', 'snapshot: serve the state at this LSN (as status prints tailLsn)', parseInteger('--at-lsn'))
    .option('--at-time <iso>', 'snapshot: serve the state at this time (ISO 8601)')
    .option('--overlay <dir>', 'snapshot: make it writable; its changes stay in this local directory (a branch). replica: a PostgreSQL standby\'s mount; its own writes stay in this local directory')
    .option('--poll-interval-ms <ms>', 'replica: how often to look for new records', parseInteger('--poll-interval-ms'), 5)
    .option('--replica-timeout <duration>', 'primary: a replica or snapshot whose heartbeat is older than this no longer holds back space reclaim, e.g. 2s (default 10s)')
    .option('--allow-other', 'let users other than root use the mount (needed for PostgreSQL)', false)
    .option('--foreground', 'serve the mount in this process until SIGTERM/SIGINT', false)
    .option(METRICS_FLAGS, METRICS_HELP, parseMetricsAddress)
    // lsnfs failover's own: the daemon opens the device, then waits for the word to mount.
    .addOption(new Option('--held').hideHelp())
    .action(async (options: {
      device: string; mountpoint: string; host: string; role: MountRole; atLsn?: number; atTime?: string; overlay?: string;
      pollIntervalMs: number; replicaTimeout?: string; allowOther: boolean; foreground: boolean; held?: boolean; metrics?: MetricsAddress;
    }) => {
      const atTimeMs = options.atTime !== undefined ? parseTime(options.atTime) : undefined;
      const replicaTimeoutMs = options.replicaTimeout !== undefined ? parseDurationMs(options.replicaTimeout, '--replica-timeout') : undefined;
      if (options.role !== 'primary' && replicaTimeoutMs !== undefined) throw new UserError('--replica-timeout applies to --role primary only');
      if (options.role === 'snapshot' && options.atLsn !== undefined && atTimeMs !== undefined) {
        throw new UserError('--role snapshot takes one of --at-lsn or --at-time, not both');
      }
      if (options.role === 'snapshot' && options.atLsn === undefined && atTimeMs === undefined && options.overlay === undefined) {
        throw new UserError('--role snapshot needs --at-lsn or --at-time (or --overlay naming an existing branch)');
      }
      if (options.role === 'primary' && options.overlay !== undefined) {
        throw new UserError('--overlay applies to --role snapshot (a branch) or --role replica (a PostgreSQL standby\'s mount), not to a primary');
      }
      if (options.role !== 'snapshot' && (options.atLsn !== undefined || atTimeMs !== undefined)) {
        throw new UserError('--at-lsn and --at-time apply to --role snapshot only');
      }
      const mountOptions = { ...options, ...(atTimeMs !== undefined ? { atTimeMs } : {}), ...(replicaTimeoutMs !== undefined ? { replicaTimeoutMs } : {}) };
      if (options.foreground) {
        servingMount = true;
        const { runMountDaemon } = await import('./mount-daemon');
        await runMountDaemon(mountOptions);
        return;
      }
      const { pid, logFile } = await mountInBackground(mountOptions);
      const what = options.role === 'primary' ? 'read-write'
        : options.role === 'replica' ? (options.overlay !== undefined ? `as a standby's replica (own writes in ${options.overlay})` : 'as a read-only replica')
        : options.overlay !== undefined ? `as a writable branch (changes in ${options.overlay})` : 'as a read-only snapshot';
      process.stdout.write(`mounted ${options.device} ${what} at ${options.mountpoint} (pid ${pid}, log ${logFile})\n`);
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
    .option('--replica-timeout <duration>', 'a replica whose heartbeat is older than this counts as gone (use the primary\'s --replica-timeout)', '10s')
    .action(async (options: { device: string; json: boolean; replicaTimeout: string }) => {
      const replicaTimeoutMs = parseDurationMs(options.replicaTimeout, '--replica-timeout');
      const [{ withDevice }, { volumeStatus }] = await Promise.all([import('../device/open'), import('../volume/inspect')]);
      const status = await withDevice(options.device, { readOnly: true }, (device) => volumeStatus(device, replicaTimeoutMs));
      if (options.json) { printJson(status); return; }
      const rows: Array<[string, string]> = [
        ['device', status.device], ['uuid', status.uuid], ['format version', String(status.formatVersion)],
        ['page size', String(status.pageSize)], ['size', formatBytes(status.sizeBytes)],
        ['log used', `${formatBytes(status.usedBytes)} of ${formatBytes(status.logBytes)} (live data ${formatBytes(status.liveBytes)}, of which a read at the tail needs ${formatBytes(status.tailBytes)})`],
        ['epoch', String(status.epoch)], ['head LSN', String(status.headLsn)], ['tail LSN', `${status.tailLsn} (database LSN ${status.walLsnText})`],
        ['checkpoint LSN', String(status.checkpointLsn)], ['files', String(status.files)],
        ['holder', status.holder ? `${status.holder.host} (pid ${status.holder.pid}, epoch ${status.holder.epoch})` : 'none'],
        ['retention', status.retainMs > 0 ? `${status.retainMs / 1000} s (oldest LSN ${status.oldestLsn})` : `none (oldest LSN ${status.oldestLsn})`],
        ['GC horizon', status.horizonLsn === null ? 'none (nobody reads the past)' : `LSN ${status.horizonLsn}`],
      ];
      for (const [name, value] of rows) process.stdout.write(`${name.padEnd(16)}${value}\n`);
      process.stdout.write(`replicas        ${status.replicas.length === 0 ? 'none' : ''}\n`);
      for (const r of status.replicas) {
        process.stdout.write(`  ${r.host.padEnd(14)} view LSN ${r.viewLsn}, lag ${formatBytes(r.lagBytes)} / ${r.lagMs} ms, heartbeat ${r.heartbeatAt}${r.live ? '' : ' (timed out)'}\n`);
        if (r.viewWalLsn > 0 || r.overlayBytes > 0) {
          const keeps = (r.keepVersionsFromLsn > r.viewLsn ? `, needs page versions from LSN ${r.keepVersionsFromLsn} (keeps older ones itself)` : '') +
            (r.keepDeletedFromLsn > 0 ? `, keeps files deleted from LSN ${r.keepDeletedFromLsn} (WAL segments and files it may still read)` : '');
          process.stdout.write(`  ${''.padEnd(14)} PostgreSQL standby: database LSN ${formatPgLsn(r.viewWalLsn)}, overlay ${formatBytes(r.overlayBytes)}${keeps}\n`);
        }
      }
      process.stdout.write(`tombstones      ${status.tombstones.length === 0 ? 'none' : ''}\n`);
      for (const t of status.tombstones) {
        process.stdout.write(`  ${t.name} (inode ${t.ino}) deleted at LSN ${t.deletedAtLsn}, ${formatBytes(t.bytes)}, held by ${t.heldBy.join(', ') || 'nobody (reclaimed soon)'}\n`);
      }
    });

  program.command('fsck')
    .description('verify every record checksum, the page index and the directory tree')
    .requiredOption('--device <path>', 'lsnfs device')
    .option('--json', 'machine-readable output', false)
    .action(async (options: { device: string; json: boolean }) => {
      const [{ withDevice }, { fsck }] = await Promise.all([import('../device/open'), import('../volume/inspect')]);
      const report = await withDevice(options.device, { readOnly: true }, fsck);
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
    .option('--history <path>', 'what happened at this path (creates, renames, deletes, writes) over the retained log')
    .option('--json', 'machine-readable output', false)
    .action(async (options: { device: string; from?: number; limit: number; path?: string; page?: number; history?: string; json: boolean }) => {
      const [{ withDevice }, { listRecords, pageVersions, pathHistory }] = await Promise.all([import('../device/open'), import('../volume/inspect')]);
      if (options.history !== undefined) {
        const history = await withDevice(options.device, { readOnly: true }, (device) => pathHistory(device, options.history!));
        if (options.json) { printJson(history); return; }
        process.stdout.write(`${history.path}: ${history.events.length} event(s) since LSN ${history.fromLsn}\n`);
        for (const e of history.events) process.stdout.write(`  ${Number.isNaN(e.lsn) ? '(to now)'.padEnd(14) : `LSN ${e.lsn}`.padEnd(14)} ${e.time}  ${e.op}  (${e.detail})\n`);
        return;
      }
      if (options.path !== undefined) {
        if (options.page === undefined) throw new UserError('--path needs --page');
        const report = await withDevice(options.device, { readOnly: true }, (device) => pageVersions(device, options.path!, options.page!));
        if (options.json) { printJson(report); return; }
        process.stdout.write(`${report.path} (inode ${report.ino}) page ${report.page}: ${report.versions.length} version(s)\n`);
        for (const v of report.versions) process.stdout.write(`  LSN ${v.versionLsn} ${v.kind} [${v.offset}, +${v.length}) at LSN ${v.loc}\n`);
        return;
      }
      const records = await withDevice(options.device, { readOnly: true }, (device) => listRecords(device, { ...(options.from !== undefined ? { fromLsn: options.from } : {}), limit: options.limit }));
      if (options.json) { printJson(records); return; }
      process.stdout.write('LSN            EPOCH TYPE        BYTES  DETAIL\n');
      for (const r of records) {
        const detail = r.ino !== undefined ? `ino ${r.ino} page ${r.page} [${r.offset}, +${r.length})${r.versionLsn !== r.lsn ? ` copy of ${r.versionLsn}` : ''}`
          : r.op !== undefined ? JSON.stringify(r.op) : '';
        // "+": the operation continues in the next record (one FUSE request's pages are applied together).
        const continues = r.continues ? ' +' : '';
        process.stdout.write(`${String(r.lsn).padEnd(15)}${String(r.epoch).padEnd(6)}${r.type.padEnd(12)}${String(r.bytes).padEnd(7)}${detail}${continues}\n`);
      }
    });

  program.command('fence')
    .description('cut a host off the device: PREEMPT its reservation key (iSCSI, enforced by the target) or clear it from the holder block (file, cooperative)')
    .requiredOption('--device <path>', 'lsnfs device')
    .requiredOption('--host <name>', 'the host to fence (the primary)')
    .option('--as <name>', 'the fencing host\'s name (its reservation key holds the device until the next primary takes it)', `fence@${os.hostname()}`)
    .option('--json', 'machine-readable output', false)
    .action(async (options: { device: string; host: string; as: string; json: boolean }) => {
      const [{ withDevice }, { fenceHost }] = await Promise.all([import('../device/open'), import('../fence/fence')]);
      const result = await withDevice(options.device, { readOnly: false, host: options.as }, (device) => fenceHost(device, options.host, options.as));
      if (options.json) { printJson(result); return; }
      const how = result.backend === 'scsi' ? `SCSI-3 PREEMPT of key ${result.preemptedKey}, enforced by the target`
        : `holder block cleared; ${result.killedPid !== undefined ? `its daemon (pid ${result.killedPid}) on this machine killed` : 'emulated fencing of another machine is cooperative'}`;
      process.stdout.write(`fenced host '${result.victim}' off ${result.device} (${how})` +
        `${result.victimHolder ? `; it was the primary of epoch ${result.victimHolder.epoch}` : ''}\n`);
    });

  program.command('failover')
    .description('fence the current primary and make HOST the primary: its replica mount at --mountpoint is replaced by a fresh read-write mount (log recovered to its end, epoch bumped)')
    .requiredOption('--device <path>', 'lsnfs device')
    .requiredOption('--host <name>', 'the host that becomes primary (it must have a live replica mount of the device)')
    .requiredOption('--mountpoint <dir>', 'where the new primary is mounted: the replica mount of --host (unmounted first; stop its standby before) or a free directory')
    .option('--force', 'fence the old primary even though it still heartbeats', false)
    .option('--allow-other', 'let users other than root use the mount (needed for PostgreSQL)', false)
    .option('--replica-timeout <duration>', 'the new primary\'s --replica-timeout')
    .option('--json', 'machine-readable output', false)
    .action(async (options: { device: string; host: string; mountpoint: string; force: boolean; allowOther: boolean; replicaTimeout?: string; json: boolean }) => {
      const { failover } = await import('./failover');
      const report = await failover({
        device: options.device, host: options.host, mountpoint: options.mountpoint, force: options.force, allowOther: options.allowOther,
        ...(options.replicaTimeout !== undefined ? { replicaTimeoutMs: parseDurationMs(options.replicaTimeout, '--replica-timeout') } : {}),
      });
      if (options.json) { printJson(report); return; }
      process.stdout.write(`failover of ${report.device}: ${report.oldPrimary === null ? 'nobody held it' : `'${report.oldPrimary}' fenced`}; ` +
        `'${report.newPrimary}' is primary of epoch ${report.epoch} at ${options.mountpoint} (pid ${report.pid}); ` +
        `${report.phases.map((phase) => `${phase.name} ${phase.ms} ms`).join(', ')}\n`);
    });

  registerDrill(program);
  registerPg(program);
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

/** Set by `mount --foreground`: this process goes on serving the mount after the command returns. */
let servingMount = false;

export async function main(argv: string[]): Promise<void> {
  try {
    await buildProgram().parseAsync(argv);
  } catch (error) {
    if (!(error instanceof UserError)) throw error;
    process.stderr.write(`lsnfs: ${error.message}\n`);
    process.exitCode = 1;
  }
  // A command is done when its action is: exit now rather than wait for Node to drain V8's platform
  // tasks, which was seen to hang forever (a `status` stuck in NodePlatform::DrainTasks after its work).
  // stdout and stderr are synchronous for files, pipes and terminals on Linux, so nothing printed is lost.
  if (!servingMount) process.exit();
}
