/**
 * A standby's mount (a replica with --overlay) trusts no name the primary may
 * change, except the ones PostgreSQL's WAL poll looks up every few
 * milliseconds: pg_wal/, its WAL segments, and the timeline history file that
 * is not there yet. The kernel keeps those, so repeated lookups of them stop
 * reaching the daemon, and a history file the primary writes later is still
 * seen. Counted through the standby daemon's metrics endpoint, on a real
 * mount; the test process only stats paths (the daemons are children).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { freePort, lsnfsOk, makeVolumeWithSecondMount, mount, sleep } from '../support/harness';
import { Samples, sampleKey, scrape } from '../support/metrics';

const SEGMENT = '000000010000000000000001';
const NEXT_HISTORY = '00000002.history';
const STATS = 50;
const SEEN_TIMEOUT_MS = 10_000;

/** Writes `bytes` to `file` on the primary and fsyncs it, so a replica may apply it. */
async function writeDurably(file: string, bytes: Buffer): Promise<void> {
  const handle = await fsp.open(file, 'w');
  await handle.write(bytes, 0, bytes.length, 0);
  await handle.sync();
  await handle.close();
}

test('standby mount: the kernel keeps pg_wal/, its segments and a missing timeline history file; other names are asked for each time', { timeout: 120_000 }, async (t) => {
  const { volume, secondMountpoint: standbyMountpoint } = await makeVolumeWithSecondMount(t, 'standby-names', 'mnt-standby');
  await mount(volume, ['--host', 'p1']);
  for (const dir of ['pgdata', 'pgdata/pg_wal', 'pgdata/base']) await fsp.mkdir(path.join(volume.mountpoint, dir));
  await writeDurably(path.join(volume.mountpoint, 'pgdata/pg_wal', SEGMENT), Buffer.alloc(8192, 1));
  await writeDurably(path.join(volume.mountpoint, 'pgdata/base/1'), Buffer.alloc(8192, 2));
  const port = await freePort();
  await lsnfsOk(['mount', '--device', volume.device, '--mountpoint', standbyMountpoint, '--role', 'replica', '--host', 's1',
    '--overlay', path.join(volume.dir, 'overlay'), '--metrics', String(port)], volume.env);

  const lookups = (samples: Samples): number => samples.get(sampleKey('lsnfs_fuse_request_duration_seconds_count', { op: 'lookup' })) ?? 0;
  /** LOOKUP requests the daemon got while `path` (under the standby's mount) was stat'ed STATS times. */
  const lookupsFor = async (relative: string, exists: boolean): Promise<number> => {
    const before = lookups(await scrape(port));
    for (let i = 0; i < STATS; i++) {
      if (exists) await fsp.stat(path.join(standbyMountpoint, relative));
      else await assert.rejects(fsp.stat(path.join(standbyMountpoint, relative)), { code: 'ENOENT' });
    }
    return lookups(await scrape(port)) - before;
  };

  // Every stat walks pgdata/ (asked for each time); base/ and the file too, where the WAL names are kept.
  const other = await lookupsFor('pgdata/base/1', true);
  assert.ok(other >= 3 * STATS, `${other} lookups for ${STATS} stats of pgdata/base/1: the standby trusts no other name`);
  const segment = await lookupsFor(`pgdata/pg_wal/${SEGMENT}`, true);
  assert.ok(segment <= STATS + 2, `${segment} lookups for ${STATS} stats of a WAL segment: pg_wal/ and the segment were asked for again`);
  const history = await lookupsFor(`pgdata/pg_wal/${NEXT_HISTORY}`, false);
  assert.ok(history <= STATS + 2, `${history} lookups for ${STATS} stats of a missing history file: its absence was asked for again`);

  // The primary writes the history file (a promotion would): the standby sees it once its absence expires.
  await writeDurably(path.join(volume.mountpoint, 'pgdata/pg_wal', NEXT_HISTORY), Buffer.from('1\t0/3000000\tno recovery target specified\n'));
  const started = Date.now();
  for (;;) {
    const seen = await fsp.stat(path.join(standbyMountpoint, 'pgdata/pg_wal', NEXT_HISTORY)).then(() => true, () => false);
    if (seen) break;
    assert.ok(Date.now() - started < SEEN_TIMEOUT_MS, `the standby does not see ${NEXT_HISTORY} ${SEEN_TIMEOUT_MS} ms after the primary wrote it`);
    await sleep(50);
  }
});
