/**
 * PostgreSQL hot standbys in tests: started with `lsnfs pg standby` as a
 * user would, the device's status as `lsnfs status --json` reports it, the
 * consistent-read oracle, and what the daemons and servers said when a test
 * failed.
 */
import assert from 'node:assert/strict';
import { TestContext } from 'node:test';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { TestVolume, destroyVolume, lsnfs, lsnfsOk, makeVolume, run } from './harness';
import { PgCluster, tpcbBalances } from '../../src/pg';

export interface PgStandby { name: string; mountpoint: string; overlay: string; port: number; cluster: PgCluster }

/**
 * `lsnfs pg standby` on a fresh replica mount of `volume` at `mountpoint`
 * (host `name`); resolves once the standby accepts read-only connections.
 */
export async function startPgStandby(volume: TestVolume,
  options: { name: string; mountpoint: string; overlay: string; port: number; runDir: string; settings?: string[]; metricsPort?: number }): Promise<PgStandby> {
  const { name, mountpoint, overlay, port, runDir } = options;
  await fsp.mkdir(mountpoint, { recursive: true });
  await lsnfsOk(['pg', 'standby', '--device', volume.device, '--mountpoint', mountpoint, '--overlay', overlay,
    '--port', String(port), '--run-dir', runDir, '--host', name, ...(options.settings ?? []).flatMap((setting) => ['-c', setting]),
    ...(options.metricsPort !== undefined ? ['--metrics', String(options.metricsPort)] : [])], volume.env);
  return { name, mountpoint, overlay, port, cluster: new PgCluster({ dataDir: path.join(mountpoint, 'pgdata'), runDir, port }) };
}

/** For `after` hooks: stops the server at `mountpoint` if one runs, then unmounts (lazily if lsnfs refuses). Never throws. */
export async function stopAndUnmountQuietly(volume: TestVolume, cluster: PgCluster, mountpoint: string): Promise<void> {
  await cluster.stopQuietly('immediate');
  const result = await lsnfs(['umount', '--mountpoint', mountpoint], volume.env);
  if (result.code !== 0) await run('umount', ['-l', mountpoint]).catch(() => undefined);
}

export interface DeviceStatus {
  epoch: number;
  walLsn: number;
  /** The log: the oldest LSN still in it, where the next record goes, and its capacity (an LSN is a byte position). */
  headLsn: number;
  tailLsn: number;
  logBytes: number;
  holder: { host: string; epoch: number } | null;
  replicas: Array<{ host: string; viewWalLsn: number; overlayBytes: number; live: boolean }>;
}

export async function deviceStatus(volume: TestVolume): Promise<DeviceStatus> {
  return JSON.parse(await lsnfsOk(['status', '--device', volume.device, '--json'], volume.env)) as DeviceStatus;
}

export interface ConsistencyOracle {
  /** Checks passed so far. */
  readonly checks: number;
  /** Stops after the check under way; resolves to the checks passed, or rejects with the first failure (an error counts). */
  stop(): Promise<number>;
}

/**
 * Runs the tpcb consistency check on `standby` back to back until stopped:
 * the four tpcb sums, read in one statement, must agree, so a page from the
 * standby's future or past breaks them. The first failure ends the loop.
 */
export function startConsistencyOracle(standby: PgStandby): ConsistencyOracle {
  let running = true;
  let checks = 0;
  const loop = (async () => {
    while (running) {
      const sums = await tpcbBalances(standby.cluster);
      assert.ok(sums.consistent, `standby ${standby.name} saw inconsistent sums after ${checks} checks: ${JSON.stringify(sums)}`);
      checks++;
    }
    return checks;
  })();
  // The failure is reported by stop(); until then it must not count as unhandled.
  loop.catch(() => undefined);
  return {
    get checks() { return checks; },
    stop: () => { running = false; return loop; },
  };
}

/** Test diagnostics after a failure: the end of each daemon's log (warnings and worse) and of each server's log. */
export async function reportLogs(t: TestContext, volume: TestVolume, clusters: PgCluster[]): Promise<void> {
  const runDir = volume.env.LSNFS_RUNTIME_DIR!;
  for (const file of (await fsp.readdir(runDir).catch(() => [])).filter((f) => f.endsWith('.log'))) {
    const text = await fsp.readFile(path.join(runDir, file), 'utf8');
    t.diagnostic(`${file}:\n${text.split('\n').filter((l) => !/"level":30/.test(l)).slice(-15).join('\n')}`);
  }
  for (const cluster of clusters) {
    t.diagnostic(`server log of port ${cluster.port}:\n${(await cluster.logTail(400)).split('\n').filter((l) => !/waiting for WAL|invalid record length/.test(l)).slice(-15).join('\n')}`);
  }
}

/**
 * Runs a PostgreSQL scenario on `volume`, then stops `primary` and the
 * standbys (those in `standbys` by then) and destroys the volume. On a
 * failure the daemons' and servers' logs are reported first, and
 * LSNFS_TEST_KEEP=1 leaves everything in place for a look.
 */
export async function runPgScenario(
  t: TestContext, volume: TestVolume, primary: PgCluster, standbys: PgStandby[], scenario: () => Promise<void>,
): Promise<void> {
  let failed = false;
  t.after(async () => {
    if (failed && process.env.LSNFS_TEST_KEEP) { t.diagnostic(`kept ${volume.dir}`); return; }
    for (const standby of standbys) await stopAndUnmountQuietly(volume, standby.cluster, standby.mountpoint);
    await primary.stopQuietly('immediate');
    await destroyVolume(volume);
  });
  try {
    await scenario();
  } catch (error) {
    failed = true;
    // Before the after hook removes their directory.
    await reportLogs(t, volume, [primary, ...standbys.map((s) => s.cluster)]);
    throw error;
  }
}

/**
 * A test volume of `size` (4 GiB unless given) that PostgreSQL (user postgres) can reach, `runDir(name)` for
 * each server's socket and log, and the primary's cluster on the volume's mount (`pgdata`), run dir `primaryName`.
 */
export async function makePgVolume(
  name: string, primaryName: string, port: number, size = '4G',
): Promise<{ volume: TestVolume; runDir(name: string): string; primary: PgCluster }> {
  const volume = await makeVolume({ name, size });
  await fsp.chmod(volume.dir, 0o755);
  const runDir = (server: string): string => path.join(volume.dir, `run-${server}`);
  return { volume, runDir, primary: new PgCluster({ dataDir: path.join(volume.mountpoint, 'pgdata'), runDir: runDir(primaryName), port }) };
}
