/**
 * PostgreSQL hot standbys on lsnfs replica mounts (issue 4): no data copy,
 * WAL read from the shared pg_wal/, each standby with its own overlay.
 *
 * One primary under pgbench (tpcb-like) for 60 s, two standbys answering the
 * consistent-read oracle throughout (the four tpcb sums, in one statement,
 * must agree: a page from the standby's future or past breaks them), DDL with
 * one standby paused so that the files and WAL segments the primary drops are
 * gone before it replays them, then catch-up, checksums and pg_amcheck; a
 * standby killed with its mount comes back on a fresh overlay; bad input.
 *
 * The device is small enough that the primary reclaims its whole log more
 * than once during the run, its cleaner copying live versions forward while
 * the standbys read them; standby a's shared_buffers are smaller than the
 * database, so its oracle reads pages through its mount all the time (a
 * standby that kept reading a version where the cleaner had moved it from
 * failed here with "base/5/PG_VERSION does not contain valid data").
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { isMounted } from '../../src/cli/runtime';
import { TestVolume, crashDaemon, freePort, lsnfs, lsnfsOk, sleep } from '../support/harness';
import { PgStandby, deviceStatus, makePgVolume, runPgScenario, startConsistencyOracle, startPgStandby } from '../support/pg';
import { scrape, value } from '../support/metrics';
import {
  PGBENCH_TABLES, PgCluster, flushLsn, formatPgLsn, parsePgLsn, pgbenchInit, startPgbench, tableChecksums, tpcbBalances, waitForReplay,
} from '../../src/pg';

/** Small enough that the oracle's scans stay in shared_buffers (a bigger table is read through a ring buffer, from FUSE, every time). */
const SCALE = 2;
const LOAD_S = 60;
const PRIMARY_PORT = 20000 + (process.pid % 10000) * 2;
const CATCH_UP_TIMEOUT_MS = 60_000;
/** The primary writes ~0.8 GB of log in the run, ~100 MB of it live at the end. */
const DEVICE_SIZE = '256M';
/** Standby a's: below the database's ~30 MB, and a quarter of it below pgbench_accounts' ~26 MB (scanned through a ring buffer). */
const READ_THROUGH_SHARED_BUFFERS = 'shared_buffers=16MB';

test('PostgreSQL hot standbys on replica mounts: consistent reads under pgbench, DDL, catch-up, restart, bad input', { timeout: 600_000 }, async (t) => {
  const { volume, runDir, primary } = await makePgVolume('standby', 'primary', PRIMARY_PORT, DEVICE_SIZE);
  const standbys: PgStandby[] = [];
  const mountpointOf = (name: string): string => path.join(volume.dir, `mnt-${name}`);
  const withMountpoint = (mountpoint: string): TestVolume => ({ ...volume, mountpoint });

  async function startStandby(name: string, port: number, overlay: string, settings: string[] = [], metricsPort?: number): Promise<PgStandby> {
    const started = Date.now();
    const standby = await startPgStandby(volume, {
      name, mountpoint: mountpointOf(name), overlay, port, runDir: runDir(name), settings, ...(metricsPort !== undefined ? { metricsPort } : {}),
    });
    t.diagnostic(`standby ${name}: mounted and accepting read-only connections in ${Date.now() - started} ms`);
    standbys.push(standby);
    return standby;
  }
  const status = () => deviceStatus(volume);

  await runPgScenario(t, volume, primary, standbys, scenario);

  async function scenario(): Promise<void> {
    // The primary, through the one command a user types.
    // With more connections than lsnfs writes to postgresql.conf (-c, this start only): pg_control records
    // it, and every standby below must run with at least as many or PostgreSQL refuses to start it.
    await lsnfsOk(['pg', 'primary', '--device', volume.device, '--mountpoint', volume.mountpoint, '--port', String(PRIMARY_PORT),
      '--run-dir', runDir('primary'), '-c', 'max_connections=60'], volume.env);
    assert.equal(await primary.psql('SHOW max_connections'), '60');
    // lsnfs pg primary's checkpoints every 30 s: the primary removes WAL segments and the standbys make
    // restart points within the run.
    assert.equal(await primary.psql('SHOW checkpoint_timeout'), '30s');

    // A standby of a freshly initialised, idle primary, whose checkpoint created WAL segments ahead of need
    // (all zeros): the end of WAL is found in the segment before them.
    await primary.psql('CHECKPOINT');
    const currentSegment = await primary.psql('SELECT pg_walfile_name(pg_current_wal_lsn())');
    const ahead = (await fsp.readdir(path.join(volume.mountpoint, 'pgdata', 'pg_wal'))).filter((name) => /^[0-9A-F]{24}$/.test(name) && name > currentSegment);
    assert.ok(ahead.length >= 2, `segments created ahead of ${currentSegment}: ${ahead.join(', ')}`);
    // With a setting of its own (-c): the command line wins over what lsnfs writes to postgresql.conf.
    const fresh = await startStandby('standby-fresh', PRIMARY_PORT + 3, path.join(volume.dir, 'overlay-fresh'), ['shared_buffers=48MB']);
    assert.equal(await fresh.cluster.psql('SELECT pg_is_in_recovery()'), 't');
    assert.equal(await fresh.cluster.psql('SHOW shared_buffers'), '48MB');
    assert.equal(await fresh.cluster.psql('SHOW max_connections'), '60');
    await fresh.cluster.stop('fast');
    await lsnfsOk(['umount', '--mountpoint', fresh.mountpoint], volume.env);
    standbys.splice(standbys.indexOf(fresh), 1);

    await pgbenchInit(primary, SCALE);
    await primary.psql('CREATE EXTENSION amcheck');
    // A data directory of another major version, for the bad-input check at the end.
    await fsp.mkdir(path.join(volume.mountpoint, 'pg14data'));
    await fsp.writeFile(path.join(volume.mountpoint, 'pg14data', 'PG_VERSION'), '14\n');

    // LSN awareness: the database LSN in status is where the WAL written so far ends (PostgreSQL writes whole 8 KiB WAL pages).
    await primary.psql('CHECKPOINT');
    const flushedBefore = await flushLsn(primary);
    const { walLsn } = await status();
    const insertAfter = parsePgLsn(await primary.psql('SELECT pg_current_wal_insert_lsn()'));
    assert.ok(walLsn >= flushedBefore, `database LSN ${formatPgLsn(walLsn)} is behind the flushed WAL ${formatPgLsn(flushedBefore)}`);
    assert.ok(walLsn <= Math.ceil(insertAfter / 8192) * 8192, `database LSN ${formatPgLsn(walLsn)} is ahead of the WAL ${formatPgLsn(insertAfter)}`);
    const statusText = await lsnfsOk(['status', '--device', volume.device], volume.env);
    assert.match(statusText, /database LSN [0-9A-F]+\/[0-9A-F]+/);

    const a = await startStandby('standby-a', PRIMARY_PORT + 1, path.join(volume.dir, 'overlay-a'), [READ_THROUGH_SHARED_BUFFERS]);
    const bMetricsPort = await freePort();
    const b = await startStandby('standby-b', PRIMARY_PORT + 2, path.join(volume.dir, 'overlay-b'), [], bMetricsPort);
    assert.equal(await a.cluster.psql('SELECT pg_is_in_recovery()'), 't');

    // Load, with the oracle running on both standbys all the time.
    const pgbench = await startPgbench(primary, { clients: 4, threads: 2, durationS: LOAD_S, noVacuum: true });
    const oracles = [startConsistencyOracle(a), startConsistencyOracle(b)];

    // DDL while standby b is paused: its files and the WAL segments behind them are dropped on the primary before b replays them.
    await sleep(10_000);
    await b.cluster.psql('SELECT pg_wal_replay_pause()');
    const pausedAt = parsePgLsn(await b.cluster.psql('SELECT pg_last_wal_replay_lsn()'));
    await primary.psql('CREATE TABLE ddl_kept AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 20000) g');
    await primary.psql('CREATE INDEX ddl_kept_v ON ddl_kept (v)');
    await primary.psql('CREATE TABLE ddl_dropped AS SELECT g AS id FROM generate_series(1, 50000) g');
    await primary.psql('CREATE TABLE ddl_truncated AS SELECT g AS id FROM generate_series(1, 10000) g');
    await primary.psql('DELETE FROM ddl_kept WHERE id % 2 = 0');
    await primary.psql('VACUUM FULL ddl_kept');
    await primary.psql('TRUNCATE ddl_truncated');
    await primary.psql('INSERT INTO ddl_truncated SELECT g FROM generate_series(1, 100) g');
    await primary.psql('DROP TABLE ddl_dropped');
    for (let i = 0; i < 3; i++) await primary.psql('SELECT pg_switch_wal(); CHECKPOINT');
    const oldestKept = await primary.psql("SELECT min(name) FROM pg_ls_waldir() WHERE name ~ '^[0-9A-F]{24}$'");
    assert.ok(await primary.psql(`SELECT pg_walfile_name('${formatPgLsn(pausedAt)}') < '${oldestKept}'`) === 't',
      `the primary removed the WAL segment standby-b paused in (${formatPgLsn(pausedAt)}; oldest kept ${oldestKept})`);
    await b.cluster.psql('SELECT pg_wal_replay_resume()');

    const load = await pgbench.result;
    const checks = await Promise.all(oracles.map((oracle) => oracle.stop()));
    assert.equal(load.exitCode, 0, `pgbench: ${load.stderr}`);
    t.diagnostic(`pgbench ${LOAD_S} s: ${load.tps} tps; oracle checks: ${checks.join(', ')}`);
    assert.ok(checks.every((n) => n > 0));

    // Catch-up: every standby reaches the primary's final LSN and holds the same rows.
    const finalLsn = await flushLsn(primary);
    const tables = { ...PGBENCH_TABLES, ddl_kept: 'id', ddl_truncated: 'id' };
    const expected = await tableChecksums(primary, tables);
    for (const standby of [a, b]) {
      const ms = await waitForReplay(standby.cluster, finalLsn, CATCH_UP_TIMEOUT_MS);
      t.diagnostic(`${standby.name} replayed to ${formatPgLsn(finalLsn)} ${ms} ms after the load stopped`);
      assert.deepEqual(await tableChecksums(standby.cluster, tables), expected, `${standby.name}: table checksums differ from the primary's`);
      assert.equal(await standby.cluster.psql("SELECT count(*) FROM pg_class WHERE relname = 'ddl_dropped'"), '0');
      assert.equal(await standby.cluster.psql("SELECT count(*) FROM ddl_kept WHERE v = md5('3')"), '1', 'the index built on the primary answers on the standby');
    }
    const check = await a.cluster.amcheck('postgres', { readOnly: true });
    assert.ok(check.clean, `pg_amcheck on standby-a:\n${check.output}`);

    // Status: each standby reports the database LSN it is served at and its overlay's size.
    const afterLoad = await status();
    // Every byte of the log's space was reclaimed and written again during the run.
    assert.ok(afterLoad.headLsn > afterLoad.logBytes,
      `the log did not wrap: head ${afterLoad.headLsn}, tail ${afterLoad.tailLsn}, capacity ${afterLoad.logBytes} bytes`);
    t.diagnostic(`log: ${(afterLoad.tailLsn / afterLoad.logBytes).toFixed(1)} capacities written, head at ${afterLoad.headLsn}`);
    for (const standby of [a, b]) {
      const slot = afterLoad.replicas.find((r) => r.host === standby.name);
      assert.ok(slot?.live, `${standby.name} has a live slot`);
      assert.ok(slot.viewWalLsn > 0, `${standby.name} reports its database LSN`);
      assert.ok(slot.overlayBytes > 0, `${standby.name} reports its overlay size`);
      t.diagnostic(`${standby.name}: served at ${formatPgLsn(slot.viewWalLsn)}, overlay ${slot.overlayBytes} bytes`);
    }
    // Standby b's metrics endpoint (lsnfs pg standby --metrics) says the same of it.
    const bMetrics = await scrape(bMetricsPort);
    assert.equal(value(bMetrics, 'lsnfs_mount_info', { role: 'standby', host: 'standby-b', device: volume.device }), 1);
    assert.ok(value(bMetrics, 'lsnfs_standby_database_lsn') >= afterLoad.replicas.find((r) => r.host === 'standby-b')!.viewWalLsn);
    assert.ok(value(bMetrics, 'lsnfs_standby_overlay_bytes') > 0);
    assert.ok(bMetrics.has('lsnfs_standby_kept_pages'));
    assert.ok(value(bMetrics, 'lsnfs_reader_view_lsn') > 0);

    // The overlay stays bounded: once the primary's checkpoint has put newer pages on the shared store and the
    // standby's restart point has moved its view past them, the pages it had evicted leave its overlay.
    const overlayOf = async (standby: PgStandby): Promise<number> => (await status()).replicas.find((r) => r.host === standby.name)!.overlayBytes;
    const overlayBefore = await overlayOf(a);
    await primary.psql('CHECKPOINT');
    await waitForReplay(a.cluster, await flushLsn(primary), CATCH_UP_TIMEOUT_MS);
    await a.cluster.psql('CHECKPOINT');
    let overlayAfter = await overlayOf(a);
    for (let polls = 0; overlayAfter >= overlayBefore && polls < 100; polls++) {
      await sleep(200);
      overlayAfter = await overlayOf(a);
    }
    t.diagnostic(`standby-a overlay: ${overlayBefore} bytes after the load, ${overlayAfter} after a checkpoint and a restart point`);
    assert.ok(overlayAfter < overlayBefore, `standby-a's overlay did not shrink (${overlayBefore} -> ${overlayAfter} bytes)`);

    // Restart: kill -9 standby b's PostgreSQL and its mount, come back on a fresh overlay, catch up.
    const crashed = await b.cluster.crash({ killChildren: true });
    await crashDaemon(withMountpoint(b.mountpoint));
    await PgCluster.killLeftovers(crashed, 5_000);
    standbys.splice(standbys.indexOf(b), 1);
    await primary.psql('CREATE TABLE after_restart AS SELECT g AS id FROM generate_series(1, 1000) g');
    const b2 = await startStandby('standby-b', b.port, path.join(volume.dir, 'overlay-b2'));
    const restartLsn = await flushLsn(primary);
    await waitForReplay(b2.cluster, restartLsn, CATCH_UP_TIMEOUT_MS);
    assert.equal(await b2.cluster.psql('SELECT count(*) FROM after_restart'), '1000');
    assert.ok((await tpcbBalances(b2.cluster)).consistent);

    // Bad input: a standby on a replica mount without an overlay; a data directory of another major version.
    const plainReplica = mountpointOf('plain');
    await fsp.mkdir(plainReplica);
    await lsnfsOk(['mount', '--device', volume.device, '--mountpoint', plainReplica, '--role', 'replica', '--host', 'plain', '--allow-other'], volume.env);
    const readOnly = await lsnfs(['pg', 'standby', '--device', volume.device, '--mountpoint', plainReplica, '--port', String(PRIMARY_PORT + 3)], volume.env);
    await lsnfsOk(['umount', '--mountpoint', plainReplica], volume.env);
    assert.notEqual(readOnly.code, 0);
    assert.match(readOnly.stderr, /read-only replica mount \(mounted without --overlay\)/);
    const wrongMajor = await lsnfs(['pg', 'standby', '--device', volume.device, '--mountpoint', a.mountpoint, '--pgdata', 'pg14data',
      '--port', String(PRIMARY_PORT + 4)], volume.env);
    assert.notEqual(wrongMajor.code, 0);
    assert.match(wrongMajor.stderr, /data directory is PostgreSQL 14, but this host's PostgreSQL binaries .* are version 15/);
    // Settings refused, each naming why (lsnfs sets it, it would stop the standby following, it is no plain
    // value, it is less than the primary's), and no mount is left behind.
    const settingsMountpoint = mountpointOf('settings');
    await fsp.mkdir(settingsMountpoint);
    const refused = async (role: 'primary' | 'standby', setting: string, message: RegExp): Promise<void> => {
      const result = await lsnfs(['pg', role, '--device', volume.device, '--mountpoint', settingsMountpoint, '--port', String(PRIMARY_PORT + 4),
        ...(role === 'standby' ? ['--overlay', path.join(volume.dir, 'overlay-settings')] : []), '-c', setting], volume.env);
      assert.notEqual(result.code, 0, `-c ${setting} was taken`);
      assert.match(result.stderr, message);
    };
    await refused('standby', 'restore_command=true',
      /-c restore_command=true: restore_command cannot be set here \(a standby on lsnfs reads WAL from the shared pg_wal\/, not from an archive\)/);
    await refused('standby', 'recovery_target_lsn=0/1', /-c recovery_target_lsn=0\/1: recovery_target_lsn cannot be set here \(a standby on lsnfs follows the primary/);
    await refused('standby', 'search_path=a, b', /-c search_path=a, b: expected NAME=VALUE with a plain value/);
    // Fewer connections than the primary's pg_control records: refused once the data directory is read, and the mount made for it goes.
    await refused('standby', 'max_connections=20',
      /-c max_connections=20: the primary runs with max_connections = 60 \(its pg_control says so\); a hot standby needs at least that/);
    await refused('primary', 'Port=1', /-c Port=1: port cannot be set here \(set by --port\)/);
    await refused('primary', 'wal_level=minimal', /-c wal_level=minimal: wal_level cannot be set here \(standbys need replica or logical\)/);
    assert.ok(!(await isMounted(settingsMountpoint)), 'a refused command left a mount');

    for (const standby of [...standbys]) {
      await standby.cluster.stop('fast');
      await lsnfsOk(['umount', '--mountpoint', standby.mountpoint], volume.env);
    }
    standbys.length = 0;
    await primary.stop('fast');
    await lsnfsOk(['umount', '--mountpoint', volume.mountpoint], volume.env);
    const fsck = JSON.parse(await lsnfsOk(['fsck', '--device', volume.device, '--json'], volume.env)) as { ok: boolean; problems: unknown[] };
    assert.ok(fsck.ok, `fsck: ${JSON.stringify(fsck.problems)}`);
  }
});
