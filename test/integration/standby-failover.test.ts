/**
 * A PostgreSQL hot standby keeps following across a failover of the primary
 * to another standby's host, without a restart: it reads WAL from the shared
 * pg_wal/, finds the new timeline's history file there, switches to it
 * (recovery_target_timeline = latest) and replays the new primary's WAL.
 *
 * node-a is the primary under pgbench (tpcb-like); node-b and node-c are hot
 * standbys on replica mounts. node-a's PostgreSQL and filesystem daemon are
 * SIGKILLed mid-load, node-b's host fails over and its PostgreSQL is promoted
 * (timeline 2), pgbench runs there; node-c answers the consistent-read oracle
 * all along -- before, during and after the failover -- and ends at the new
 * primary's LSN, on timeline 2, with the same rows.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { crashDaemon, lsnfsOk, sleep } from '../support/harness';
import { PgStandby, deviceStatus, makePgVolume, runPgScenario, startConsistencyOracle, startPgStandby } from '../support/pg';
import {
  PGBENCH_TABLES, PgCluster, flushLsn, formatPgLsn, parsePgLsn, pgbenchInit, startPgbench, tableChecksums, tpcbBalances, waitForReplay,
} from '../../src/pg';

/** Small enough that the oracle's scans stay in shared_buffers. */
const SCALE = 2;
/** Seconds of pgbench on the old primary before it is killed, and on the new one after the failover. */
const LOAD_BEFORE_S = 12;
const LOAD_AFTER_S = 12;
const PORT_A = 30000 + (process.pid % 10000) * 3;
const CATCH_UP_TIMEOUT_MS = 60_000;
const MARKER = 'written on node-b after its promotion';

test('a hot standby keeps following the new primary across a failover (new timeline), consistent throughout', { timeout: 300_000 }, async (t) => {
  const { volume, runDir, primary: nodeA } = await makePgVolume('standby-failover', 'node-a', PORT_A);
  const standbys: PgStandby[] = [];

  await runPgScenario(t, volume, nodeA, standbys, scenario);

  async function scenario(): Promise<void> {
    await lsnfsOk(['pg', 'primary', '--device', volume.device, '--mountpoint', volume.mountpoint, '--port', String(PORT_A),
      '--run-dir', runDir('node-a'), '--host', 'node-a'], volume.env);
    await pgbenchInit(nodeA, SCALE);
    await nodeA.psql('CHECKPOINT');
    for (const [i, name] of ['node-b', 'node-c'].entries()) {
      standbys.push(await startPgStandby(volume, {
        name, mountpoint: path.join(volume.dir, `mnt-${name}`), overlay: path.join(volume.dir, `overlay-${name}`), port: PORT_A + 1 + i, runDir: runDir(name),
      }));
    }
    const [nodeB, nodeC] = standbys as [PgStandby, PgStandby];

    // Load on node-a; node-c checks consistency from here to the end of the test.
    const oracle = startConsistencyOracle(nodeC);
    const loadA = await startPgbench(nodeA, { clients: 4, threads: 2, durationS: LOAD_BEFORE_S + 600, noVacuum: true });
    await sleep(LOAD_BEFORE_S * 1000);

    // node-a's host dies mid-load: its PostgreSQL, then its filesystem daemon.
    const checksBefore = oracle.checks;
    const failedAt = Date.now();
    const crashed = await nodeA.crash({ killChildren: true });
    await crashDaemon(volume);
    await PgCluster.killLeftovers(crashed, 5_000);
    const loadAResult = await loadA.result;
    assert.ok(loadAResult.aborted, `pgbench on node-a noticed the crash: ${loadAResult.stderr}`);

    // node-b's host takes over: its standby makes way, lsnfs fails over (fence, fresh primary mount,
    // new epoch), PostgreSQL replays the shared WAL and is promoted onto timeline 2.
    await nodeB.cluster.stop('immediate');
    const epochBefore = (await deviceStatus(volume)).epoch;
    await lsnfsOk(['failover', '--device', volume.device, '--host', 'node-b', '--mountpoint', nodeB.mountpoint, '--force', '--allow-other'], volume.env);
    await nodeB.cluster.startAsPromotedStandby();
    const promotedAt = Date.now();
    const checksDuring = oracle.checks - checksBefore;
    // The history file names the point where timeline 2 forks off timeline 1: "1<TAB>0/5A3B2C8<TAB>reason".
    const history = await fsp.readFile(path.join(nodeB.cluster.dataDir, 'pg_wal', '00000002.history'), 'utf8');
    const forkLsn = parsePgLsn(/^1\t([0-9A-F]+\/[0-9A-F]+)\t/m.exec(history)?.[1] ?? assert.fail(`00000002.history: ${history}`));
    t.diagnostic(`node-a killed; node-b promoted onto timeline 2 (forked at ${formatPgLsn(forkLsn)}) ${promotedAt - failedAt} ms later; ` +
      `node-c oracle checks: ${checksBefore} before the failure, ${checksDuring} during the failover`);

    // node-c switches timelines by itself: its replay passes the fork point.
    const switchMs = await waitForReplay(nodeC.cluster, forkLsn + 1, CATCH_UP_TIMEOUT_MS);
    t.diagnostic(`node-c replayed past the fork point onto timeline 2 ${Date.now() - promotedAt} ms after the promotion (${switchMs} ms of waiting)`);

    // Load on the new primary, then a marker written after the promotion (a new relation) and a checkpoint on timeline 2.
    const checksAfterPromotion = oracle.checks;
    const loadB = await startPgbench(nodeB.cluster, { clients: 4, threads: 2, durationS: LOAD_AFTER_S, noVacuum: true });
    const loadBResult = await loadB.result;
    assert.equal(loadBResult.exitCode, 0, `pgbench on node-b: ${loadBResult.stderr}`);
    await nodeB.cluster.psql(`CREATE TABLE failover_marker AS SELECT '${MARKER}'::text AS note`);
    await nodeB.cluster.psql('CHECKPOINT');
    const finalLsn = await flushLsn(nodeB.cluster);
    const catchUpMs = await waitForReplay(nodeC.cluster, finalLsn, CATCH_UP_TIMEOUT_MS);
    const checksAfter = oracle.checks - checksAfterPromotion;
    const checksTotal = await oracle.stop();
    t.diagnostic(`pgbench on node-b ${LOAD_AFTER_S} s: ${loadBResult.tps} tps; node-c reached node-b's ${formatPgLsn(finalLsn)} ${catchUpMs} ms after the marker; ` +
      `oracle checks: ${checksBefore} before, ${checksDuring} during, ${checksAfter} after the failover (${checksTotal} in all)`);
    assert.ok(checksBefore > 0 && checksDuring > 0 && checksAfter > 0, 'node-c answered the oracle before, during and after the failover');

    // node-c follows node-b: the marker, the same rows, timeline 2 (a restart point on it records the timeline in pg_control).
    assert.equal(await nodeC.cluster.psql('SELECT note FROM failover_marker'), MARKER);
    const tables = { ...PGBENCH_TABLES, failover_marker: 'note' };
    assert.deepEqual(await tableChecksums(nodeC.cluster, tables), await tableChecksums(nodeB.cluster, tables), 'node-c holds node-b\'s rows');
    assert.ok((await tpcbBalances(nodeB.cluster)).consistent, 'the tpcb sums agree on the new primary');
    assert.equal(await nodeB.cluster.psql('SELECT timeline_id FROM pg_control_checkpoint()'), '2');
    assert.match(await fsp.readFile(nodeC.cluster.logFile, 'utf8'), /new target timeline is 2/);
    await nodeC.cluster.psql('CHECKPOINT');
    assert.equal(await nodeC.cluster.psql('SELECT timeline_id FROM pg_control_checkpoint()'), '2');
    assert.equal(await nodeC.cluster.psql('SELECT pg_is_in_recovery()'), 't');
    // Nothing went wrong on node-c's side either (its one warning is the startup note that it polls pg_wal/ on its own).
    assert.deepEqual((await nodeC.cluster.logProblems()).filter((line) => !/specified neither primary_conninfo nor restore_command/.test(line)), []);

    const status = await deviceStatus(volume);
    assert.equal(status.holder?.host, 'node-b');
    assert.ok(status.epoch > epochBefore, `epoch ${status.epoch} after ${epochBefore}`);
    const slot = status.replicas.find((r) => r.host === 'node-c');
    assert.ok(slot?.live, 'node-c\'s replica slot is live');
    assert.ok(slot.viewWalLsn > forkLsn, `node-c is served past the fork point (at ${formatPgLsn(slot.viewWalLsn)})`);

    for (const standby of [nodeC, nodeB]) {
      await standby.cluster.stop('fast');
      await lsnfsOk(['umount', '--mountpoint', standby.mountpoint], volume.env);
    }
    standbys.length = 0;
    const fsck = JSON.parse(await lsnfsOk(['fsck', '--device', volume.device, '--json'], volume.env)) as { ok: boolean; problems: unknown[] };
    assert.ok(fsck.ok, `fsck: ${JSON.stringify(fsck.problems)}`);
  }
});
