/**
 * `lsnfs pg primary` and `lsnfs pg standby`: PostgreSQL on lsnfs in one
 * command each. The primary runs on the read-write mount; every standby runs
 * on its own replica mount with a private overlay and reads WAL straight from
 * the shared pg_wal/ (no replication connection, slot or WAL shipping, and no
 * copy of the data).
 */
import os from 'node:os';
import path from 'node:path';
import { Command } from 'commander';
import { UserError } from '../util/errors';
import {
  PG_OS_USER, Settings, binariesMajorVersion, formatPgLsn, osIds, primarySettingRefusal, standbySettingRefusal, startPrimary, startStandby,
} from '../pg';
import { mountInBackground, umount } from './mount';
import { METRICS_FLAGS, METRICS_HELP, MetricsAddress, parseMetricsAddress } from '../metrics/address';
import { isMounted, readMountRecord } from './runtime';

interface PgCommandOptions {
  device: string;
  mountpoint: string;
  port: number;
  pgdata: string;
  runDir?: string;
  host?: string;
  overlay?: string;
  pollIntervalMs: number;
  setting?: string[];
  metrics?: MetricsAddress;
}

/**
 * A name=value the shell and postgres -c pass through unquoted: a size, a time, a number, a word, a path.
 * PostgreSQL's setting names (custom ones too: ext.name) start with a letter.
 */
const SETTING_ARGUMENT = /^([A-Za-z][A-Za-z0-9_.]*)=([A-Za-z0-9_.:/+-]+)$/;

/** `-c name=value` arguments as settings; refuses a malformed one and those lsnfs must set itself, by name. */
function parseSettings(texts: string[], refusal: (name: string, value: string) => string | null): Settings {
  const settings: Settings = {};
  for (const text of texts) {
    const match = SETTING_ARGUMENT.exec(text);
    if (!match) {
      throw new UserError(`-c ${text}: expected NAME=VALUE with a plain value (e.g. -c shared_buffers=2GB); put other values in postgresql.conf`);
    }
    const name = match[1]!.toLowerCase();
    const why = refusal(name, match[2]!);
    if (why !== null) throw new UserError(`-c ${text}: ${name} cannot be set here (${why})`);
    settings[name] = match[2]!;
  }
  return settings;
}

function parsePort(text: string): number {
  const port = Number(text);
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new UserError(`--port: "${text}" is not a TCP port number`);
  return port;
}

/**
 * Runs `start` on the mount `ensureMounted` provides; if it fails, a mount made here is unmounted again
 * (nothing runs on it), so a refused start leaves the host as it was.
 */
async function onMount<T>(options: PgCommandOptions, role: 'primary' | 'replica', host: string, start: () => Promise<T>): Promise<T> {
  const mountedHere = await ensureMounted(options, role, host);
  try {
    return await start();
  } catch (error) {
    if (mountedHere) {
      await umount(options.mountpoint).catch((umountError: Error) => {
        if (error instanceof Error) error.message += `\n(the mount at ${options.mountpoint} stays: ${umountError.message})`;
      });
    }
    throw error;
  }
}

/**
 * Mounts unless `mountpoint` already serves this device in the role wanted; refuses a mount that cannot
 * host the server. True when it mounted.
 */
async function ensureMounted(options: PgCommandOptions, role: 'primary' | 'replica', host: string): Promise<boolean> {
  if (await isMounted(options.mountpoint)) {
    const record = await readMountRecord(options.mountpoint);
    if (role === 'replica' && record?.role === 'replica' && record.overlay === undefined) {
      throw new UserError(`mountpoint ${options.mountpoint} is a read-only replica mount (mounted without --overlay): a standby must write its ` +
        'postmaster.pid, pg_control and pages somewhere; unmount it and run lsnfs pg standby with --overlay DIR');
    }
    if (record?.role !== role) {
      throw new UserError(`mountpoint ${options.mountpoint} is mounted ${record ? `as a ${record.role}` : 'by something else'}, not as a ${role === 'primary' ? 'primary' : 'standby\'s replica'}`);
    }
    if (options.metrics !== undefined) {
      throw new UserError(`--metrics applies to a mount this command makes, and ${options.mountpoint} is mounted already: give --metrics to the lsnfs mount that made it`);
    }
    return false;
  }
  if (role === 'replica' && options.overlay === undefined) {
    throw new UserError('lsnfs pg standby needs --overlay DIR: a local directory for what the standby writes (the shared device is never written)');
  }
  await mountInBackground({
    device: options.device, mountpoint: options.mountpoint, host, allowOther: true, foreground: false, role, pollIntervalMs: options.pollIntervalMs,
    ...(role === 'replica' ? { overlay: path.resolve(options.overlay!) } : {}),
    ...(options.metrics !== undefined ? { metrics: options.metrics } : {}),
  });
  return true;
}

function commonOptions(command: Command): Command {
  return command
    .requiredOption('--device <path>', 'lsnfs device')
    .requiredOption('--mountpoint <dir>', 'where to mount it (or where it is mounted already)')
    .requiredOption('--port <port>', 'PostgreSQL port (it listens on a Unix socket in --run-dir)', parsePort)
    .option('--pgdata <path>', 'the data directory, inside the volume', 'pgdata')
    .option('--run-dir <dir>', 'local directory for the socket and the server log')
    .option('--host <name>', 'this mount\'s name in the reader slots and logs')
    .option('--poll-interval-ms <ms>', 'replica: how often to look for new records', (text) => Number(text), 5)
    .option(METRICS_FLAGS, METRICS_HELP, parseMetricsAddress)
    .option('-c, --setting <name=value>', 'a PostgreSQL setting for this server (repeatable), e.g. -c shared_buffers=2GB',
      (text: string, earlier: string[] | undefined) => [...(earlier ?? []), text]);
}

export function registerPg(program: Command): void {
  const pg = program.command('pg').description('PostgreSQL on lsnfs: a primary on the read-write mount, hot standbys on replica mounts');

  commonOptions(pg.command('primary'))
    .description('mount read-write and start PostgreSQL (initdb first if the data directory does not exist); returns once it accepts connections')
    .action(async (options: PgCommandOptions) => {
      const host = options.host ?? os.hostname();
      const settings = parseSettings(options.setting ?? [], primarySettingRefusal);
      const runDir = path.resolve(options.runDir ?? path.join(os.tmpdir(), `lsnfs-pg-${options.port}`));
      // Absolute: PostgreSQL's programs run as another user, from another directory.
      const { initialized } = await onMount(options, 'primary', host,
        () => startPrimary({ dataDir: path.resolve(options.mountpoint, options.pgdata), runDir, port: options.port, settings }));
      process.stdout.write(`PostgreSQL primary ${initialized ? 'initialized and ' : ''}running on ${path.join(options.mountpoint, options.pgdata)} ` +
        `(port ${options.port}, socket and log in ${runDir})\n`);
    });

  commonOptions(pg.command('standby'))
    .description('mount a replica with a private overlay and start a PostgreSQL hot standby reading WAL from the shared pg_wal/; returns once it accepts read-only connections')
    .option('--overlay <dir>', 'local directory for what the standby writes (emptied at mount)')
    .action(async (options: PgCommandOptions) => {
      const host = options.host ?? `${os.hostname()}-standby-${options.port}`;
      const settings = parseSettings(options.setting ?? [], standbySettingRefusal);
      // What does not need the mount is asked while it comes up (both answers are kept for the start).
      const early = Promise.all([binariesMajorVersion(), osIds(PG_OS_USER)]);
      early.catch(() => undefined); // asked again, and reported, by startStandby
      const runDir = path.resolve(options.runDir ?? path.join(os.tmpdir(), `lsnfs-pg-${options.port}`));
      const { minRecoveryPoint } = await onMount(options, 'replica', host,
        () => startStandby({ dataDir: path.resolve(options.mountpoint, options.pgdata), runDir, port: options.port, settings }));
      process.stdout.write(`PostgreSQL hot standby running on ${path.join(options.mountpoint, options.pgdata)} (port ${options.port}, ` +
        `socket and log in ${runDir}); consistent from WAL position ${formatPgLsn(minRecoveryPoint)}\n`);
    });
}
