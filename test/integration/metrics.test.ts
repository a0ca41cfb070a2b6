/**
 * The metrics endpoint (`--metrics`): a primary and a replica of one device
 * file, each daemon serving its figures for Prometheus. What they report must
 * follow what the mounts do: a write and an fsync move the primary's LSNs and
 * are counted as FUSE requests; the replica's view reaches the primary's
 * durable LSN, and the primary reports that view under the replica's name; a
 * failed lookup is counted with its errno. Bad input: an address in use (the
 * mount is refused before it takes anything), a malformed address, another
 * path than /metrics.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { isMounted } from '../../src/cli/runtime';
import { freePort, lsnfs, lsnfsOk, makeVolumeWithSecondMount, mount, sleep } from '../support/harness';
import { Samples, httpGet, sampleKey, scrape, value } from '../support/metrics';

const CATCH_UP_TIMEOUT_MS = 10_000;

test('metrics endpoint: a primary and a replica report their LSNs, their readers and their FUSE requests', { timeout: 120_000 }, async (t) => {
  const { volume, secondMountpoint: replicaMountpoint } = await makeVolumeWithSecondMount(t, 'metrics', 'mnt-replica');
  const primaryPort = await freePort();
  await mount(volume, ['--host', 'p1', '--metrics', String(primaryPort)]);
  const replicaPort = await freePort();
  await lsnfsOk(['mount', '--device', volume.device, '--mountpoint', replicaMountpoint, '--role', 'replica', '--host', 'r1',
    '--metrics', `127.0.0.1:${replicaPort}`], volume.env);

  const before = await scrape(primaryPort);
  assert.equal(value(before, 'lsnfs_mount_info', { role: 'primary', host: 'p1', device: volume.device }), 1);
  assert.ok(value(before, 'lsnfs_log_capacity_bytes') > 200 * 1024 * 1024);
  assert.ok(before.has('lsnfs_process_resident_memory_bytes'), 'the process\'s own figures are there');

  // A write and an fsync through the primary.
  const data = Buffer.alloc(64 * 1024, 7);
  const file = await fsp.open(path.join(volume.mountpoint, 'data'), 'w');
  await file.write(data, 0, data.length, 0);
  await file.sync();
  await file.close();
  const after = await scrape(primaryPort);
  const durableLsn = value(after, 'lsnfs_log_durable_lsn');
  assert.ok(durableLsn >= value(before, 'lsnfs_log_tail_lsn') + data.length, `durable LSN ${durableLsn} does not cover the 64 KiB written`);
  assert.ok(value(after, 'lsnfs_log_tail_lsn') >= durableLsn);
  assert.ok(value(after, 'lsnfs_live_bytes') > value(before, 'lsnfs_live_bytes'));
  const count = (samples: Samples, op: string): number => samples.get(sampleKey('lsnfs_fuse_request_duration_seconds_count', { op })) ?? 0;
  assert.ok(count(after, 'fsync') >= count(before, 'fsync') + 1, 'the fsync was counted');
  assert.ok(count(after, 'write') >= count(before, 'write') + 1, 'the write was counted');
  assert.equal(value(after, 'lsnfs_fuse_request_duration_seconds_bucket', { op: 'fsync', le: '+Inf' }), count(after, 'fsync'));

  // The replica's view reaches what the primary made durable, and the primary reports it under the replica's name.
  let replica = await scrape(replicaPort);
  for (const started = Date.now(); value(replica, 'lsnfs_reader_view_lsn') < durableLsn; replica = await scrape(replicaPort)) {
    assert.ok(Date.now() - started < CATCH_UP_TIMEOUT_MS, `replica's view ${value(replica, 'lsnfs_reader_view_lsn')} stays behind ${durableLsn}`);
    await sleep(20);
  }
  assert.equal(value(replica, 'lsnfs_mount_info', { role: 'replica', host: 'r1', device: volume.device }), 1);
  assert.ok(value(replica, 'lsnfs_reader_applied_lsn') >= value(replica, 'lsnfs_reader_view_lsn'));
  assert.ok(!replica.has('lsnfs_log_durable_lsn'), 'a replica reports no writer\'s LSNs');
  let primary = await scrape(primaryPort);
  for (const started = Date.now(); (primary.get(sampleKey('lsnfs_reader_slot_view_lsn', { host: 'r1' })) ?? 0) < durableLsn; primary = await scrape(primaryPort)) {
    assert.ok(Date.now() - started < CATCH_UP_TIMEOUT_MS, 'the primary does not report the replica\'s view');
    await sleep(50);
  }

  // Reads on the replica, and a failed lookup, are counted there.
  assert.deepEqual(await fsp.readFile(path.join(replicaMountpoint, 'data')), data);
  await assert.rejects(fsp.stat(path.join(replicaMountpoint, 'missing')), { code: 'ENOENT' });
  replica = await scrape(replicaPort);
  assert.ok(count(replica, 'read') >= 1);
  assert.ok(value(replica, 'lsnfs_fuse_request_errors_total', { op: 'lookup', errno: 'ENOENT' }) >= 1);

  // Bad input.
  const notFound = await httpGet(primaryPort, '/');
  assert.equal(notFound.status, 404);
  assert.match(notFound.body, /GET \/metrics/);
  const secondMountpoint = path.join(volume.dir, 'mnt-second');
  await fsp.mkdir(secondMountpoint);
  const inUse = await lsnfs(['mount', '--device', volume.device, '--mountpoint', secondMountpoint, '--role', 'replica', '--host', 'r2',
    '--metrics', String(primaryPort)], volume.env);
  assert.notEqual(inUse.code, 0);
  assert.match(inUse.stderr, new RegExp(`--metrics 127\\.0\\.0\\.1:${primaryPort}: cannot listen there \\(EADDRINUSE\\)`));
  assert.ok(!(await isMounted(secondMountpoint)), 'a refused mount was left');
  const malformed = await lsnfs(['mount', '--device', volume.device, '--mountpoint', secondMountpoint, '--role', 'replica', '--metrics', 'localhost:99999'], volume.env);
  assert.notEqual(malformed.code, 0);
  assert.match(malformed.stderr, /--metrics localhost:99999: expected PORT or HOST:PORT with a port from 1 to 65535/);
});

