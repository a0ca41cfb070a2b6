/**
 * PostgreSQL 15 on an lsnfs mount: initdb, pgbench, pg_amcheck, and a crash
 * of PostgreSQL and the lsnfs daemon together in the middle of a pgbench run.
 * Every transaction pgbench saw committed (its -l log) must be in
 * pgbench_history afterwards.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { crashDaemon, destroyVolume, lsnfsOk, makeVolume, mount, sleep, umount } from '../support/harness';
import {
  LSNFS_SETTINGS, PgCluster, countLoggedCommits, pgbenchInit, runPgbench, startPgbench, tpcbBalances,
} from '../../src/pg';

const SCALE = 10;
const CLIENTS = 4;
const FIRST_RUN_S = 20;
/** The socket lives in a private directory, so the port only has to be free there. */
const PORT = 20000 + (process.pid % 20000);

test('PostgreSQL on lsnfs keeps every acknowledged commit across a crash of PostgreSQL and the daemon', { timeout: 300_000 }, async (t) => {
  const volume = await makeVolume({ name: 'pg', size: '4G' });
  await fsp.chmod(volume.dir, 0o755); // PostgreSQL runs as postgres and must reach the mount and its run dir
  const cluster = new PgCluster({
    dataDir: path.join(volume.mountpoint, 'pgdata'),
    runDir: path.join(volume.dir, 'pg-run'),
    port: PORT,
    settings: { ...LSNFS_SETTINGS, full_page_writes: false },
  });
  t.after(async () => {
    await cluster.stopQuietly('immediate');
    await destroyVolume(volume);
  });

  await mount(volume);
  await cluster.initdb({ dataChecksums: true });
  await cluster.start();
  const initSeconds = await pgbenchInit(cluster, SCALE);
  t.diagnostic(`pgbench -i -s ${SCALE}: ${initSeconds.toFixed(1)} s`);

  // Run 1: to the end. Every logged commit is a row, and nothing else is.
  const logDir1 = path.join(volume.dir, 'pgbench-1');
  const run1 = await runPgbench(cluster, { clients: CLIENTS, threads: 2, durationS: FIRST_RUN_S, noVacuum: true, logDir: logDir1 });
  const committed1 = await countLoggedCommits(logDir1);
  t.diagnostic(`run 1: ${run1.tps} tps, ${committed1} commits logged`);
  assert.equal(committed1, run1.processed, 'pgbench -l lines = transactions pgbench reported');
  assert.ok(committed1 > 0);
  const afterRun1 = await tpcbBalances(cluster);
  assert.equal(afterRun1.historyRows, committed1, 'pgbench_history rows = committed transactions');
  assert.ok(afterRun1.consistent, `balances disagree: ${JSON.stringify(afterRun1)}`);
  const check1 = await cluster.amcheck();
  assert.ok(check1.clean, `pg_amcheck after run 1:\n${check1.output}`);

  // Run 2: SIGKILL the postmaster and the lsnfs daemon in the middle of it.
  const logDir2 = path.join(volume.dir, 'pgbench-2');
  const run2 = await startPgbench(cluster, { clients: CLIENTS, threads: 2, durationS: 120, noVacuum: true, logDir: logDir2 });
  await sleep(8000);
  const killedAt = Date.now();
  const crashed = await cluster.crash();
  await crashDaemon(volume);
  // Backends notice the postmaster is gone and exit, except those waiting for a lock whose
  // holder died (one that PANICked on the dead mount's fsync): those wait forever, so kill them.
  const hung = await PgCluster.killLeftovers(crashed, 10_000);
  if (hung.length > 0) t.diagnostic(`${hung.length} backend(s) still waiting on a lock 10 s after the crash were SIGKILLed`);
  const run2Result = await run2.result;
  assert.ok(run2Result.aborted || run2Result.exitCode !== 0, 'pgbench noticed the crash');

  const remountAt = Date.now();
  await mount(volume);
  const mountedAt = Date.now();
  await cluster.start();
  const startedAt = Date.now();
  await cluster.psql('CREATE TABLE IF NOT EXISTS after_crash (at timestamptz); INSERT INTO after_crash VALUES (now())');
  t.diagnostic(`recovery: processes gone ${remountAt - killedAt} ms, remount ${mountedAt - remountAt} ms, ` +
    `PostgreSQL crash recovery ${startedAt - mountedAt} ms; kill to first commit ${Date.now() - killedAt} ms`);

  const committed2 = await countLoggedCommits(logDir2);
  const acknowledged = committed1 + committed2;
  const afterCrash = await tpcbBalances(cluster);
  t.diagnostic(`run 2: ${committed2} commits logged before the kill; rows ${afterCrash.historyRows}, acknowledged ${acknowledged}`);
  assert.ok(committed2 > 0, 'run 2 committed something before the kill');
  assert.ok(afterCrash.historyRows >= acknowledged, `lost commits: ${acknowledged - afterCrash.historyRows}`);
  assert.ok(afterCrash.historyRows - acknowledged <= CLIENTS, 'at most one in-flight transaction per client may have committed unacknowledged');
  assert.ok(afterCrash.consistent, `balances disagree after recovery: ${JSON.stringify(afterCrash)}`);
  const check2 = await cluster.amcheck();
  assert.ok(check2.clean, `pg_amcheck after crash recovery:\n${check2.output}`);

  const problems = (await cluster.logProblems()).filter((line) => !/terminating connection because of crash|Transport endpoint|Software caused connection abort|postmaster exit/.test(line));
  if (problems.length > 0) t.diagnostic(`server log:\n${problems.slice(0, 20).join('\n')}`);

  await cluster.stop('fast');
  await umount(volume);
  const fsck = JSON.parse(await lsnfsOk(['fsck', '--device', volume.device, '--json'], volume.env)) as { ok: boolean; problems: unknown[] };
  assert.ok(fsck.ok, `fsck: ${JSON.stringify(fsck.problems)}`);
});
