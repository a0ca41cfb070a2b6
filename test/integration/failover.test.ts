/**
 * Fencing and failover with real mounts, on a plain file (emulated,
 * cooperative fencing) and on a real iSCSI target (tgt: SCSI-3 persistent
 * reservations, enforced by the target).
 *
 * Hosts are names on this machine: alpha starts as primary, beta is the
 * replica that gets promoted, delta is another replica that must keep
 * following across the failover.
 */
import assert from 'node:assert/strict';
import { ChildProcessWithoutNullStreams, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, promises as fsp, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { TgtTarget, TGT_TARGET_IQN, startTgt } from '../support/tgt';
import { daemonPidAt, freePort, lsnfs, lsnfsOk, processExists, run, runtimeFile, sleep } from '../support/harness';
import { processAlive } from '../../src/util/process';

const RECORD_BYTES = 4096;

/** Appends numbered 4 KiB records with write + fdatasync and prints "ack N" after each; stops at the first error. */
const WRITER_SCRIPT = `
const fs = require('fs');
const fd = fs.openSync(process.argv[2], 'a');
for (let i = 0; ; i++) {
  const record = Buffer.alloc(${RECORD_BYTES}, i % 251);
  record.writeUInt32LE(i, 0);
  try {
    fs.writeSync(fd, record);
    fs.fdatasyncSync(fd);
  } catch (error) {
    console.log('error ' + error.code);
    process.exit(0);
  }
  console.log('ack ' + i);
}
`;

interface Cluster {
  dir: string;
  device: string;
  env: NodeJS.ProcessEnv;
  mnt: Record<'alpha' | 'beta' | 'delta', string>;
}

function mountLog(cluster: Cluster, mountpoint: string): string {
  return readFileSync(runtimeFile(cluster.env, mountpoint, 'log'), 'utf8');
}

async function status(cluster: Cluster): Promise<{ epoch: number; tailLsn: number; holder: { host: string; epoch: number } | null }> {
  return JSON.parse(await lsnfsOk(['status', '--device', cluster.device, '--json'], cluster.env)) as
    { epoch: number; tailLsn: number; holder: { host: string; epoch: number } | null };
}

async function makeCluster(device: string | null): Promise<Cluster> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'lsnfs-failover-'));
  const cluster: Cluster = {
    dir, device: device ?? path.join(dir, 'device.img'), env: { LSNFS_RUNTIME_DIR: path.join(dir, 'run') },
    mnt: { alpha: path.join(dir, 'alpha'), beta: path.join(dir, 'beta'), delta: path.join(dir, 'delta') },
  };
  for (const mountpoint of Object.values(cluster.mnt)) await fsp.mkdir(mountpoint);
  await lsnfsOk(['mkfs', '--device', cluster.device, ...(device ? [] : ['--size', '256M'])], cluster.env);
  await lsnfsOk(['mount', '--device', cluster.device, '--mountpoint', cluster.mnt.alpha, '--host', 'alpha'], cluster.env);
  for (const host of ['beta', 'delta'] as const) {
    await lsnfsOk(['mount', '--device', cluster.device, '--mountpoint', cluster.mnt[host], '--host', host, '--role', 'replica'], cluster.env);
  }
  return cluster;
}

/** Unmounts everything (a fenced daemon is killed: it cannot checkpoint) and removes the directory. */
async function destroyCluster(cluster: Cluster | undefined): Promise<void> {
  if (!cluster) return;
  for (const mountpoint of Object.values(cluster.mnt)) {
    if (!readFileSync('/proc/self/mounts', 'utf8').includes(` ${mountpoint} `)) continue;
    const result = await lsnfs(['umount', '--mountpoint', mountpoint], cluster.env);
    if (result.code !== 0) {
      try { process.kill(daemonPidAt(cluster.env, mountpoint), 'SIGKILL'); } catch { /* gone */ }
      await run('umount', ['-l', mountpoint]).catch(() => undefined);
    }
  }
  if (existsSync(cluster.dir)) await fsp.rm(cluster.dir, { recursive: true, force: true });
}

interface Writer { child: ChildProcessWithoutNullStreams; acked: () => number; done: Promise<string> }

function startWriter(file: string, scriptPath: string): Writer {
  const child = spawn(process.execPath, [scriptPath, file], { stdio: ['pipe', 'pipe', 'pipe'] });
  let acked = 0;
  let buffered = '';
  let ending = '';
  child.stdout.on('data', (chunk: Buffer) => {
    buffered += chunk.toString();
    const lines = buffered.split('\n');
    buffered = lines.pop()!;
    for (const line of lines) {
      if (line.startsWith('ack ')) acked = Number(line.slice(4)) + 1;
      else ending = line;
    }
  });
  const done = new Promise<string>((resolve) => child.on('exit', () => resolve(ending)));
  return { child, acked: () => acked, done };
}

/** The first `count` records are intact in `bytes` (every acknowledged write survived). */
function assertRecords(bytes: Buffer, count: number, where: string): void {
  assert.ok(bytes.length >= count * RECORD_BYTES, `${where}: ${bytes.length / RECORD_BYTES} records, ${count} acknowledged`);
  assert.equal(bytes.length % RECORD_BYTES, 0, `${where}: a torn record`);
  for (let i = 0; i < bytes.length / RECORD_BYTES; i++) {
    const record = bytes.subarray(i * RECORD_BYTES, (i + 1) * RECORD_BYTES);
    assert.equal(record.readUInt32LE(0), i, `${where}: record ${i} has number ${record.readUInt32LE(0)}`);
    assert.equal(record[RECORD_BYTES - 1], i % 251, `${where}: record ${i} has wrong content`);
  }
}

async function waitFor(what: string, condition: () => boolean | Promise<boolean>, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

for (const backend of ['file', 'iscsi'] as const) {
  describe(`fencing and failover (${backend === 'file' ? 'file device, emulated reservation' : 'iSCSI on tgt, SCSI-3 PR'})`, () => {
    let tgt: TgtTarget | undefined;
    let cluster: Cluster | undefined;

    before(async () => {
      if (backend === 'iscsi') tgt = await startTgt({ sizeBytes: 256 * 1024 * 1024 });
      cluster = await makeCluster(tgt?.url ?? null);
    });
    after(async () => {
      await destroyCluster(cluster);
      await tgt?.stop();
    });

    test('refusals name the thing at fault and change nothing', async () => {
      const c = cluster!;
      const before = await status(c);
      assert.equal(before.holder?.host, 'alpha');
      const gammaMnt = path.join(c.dir, 'gamma');
      await fsp.mkdir(gammaMnt);

      const second = await lsnfs(['mount', '--device', c.device, '--mountpoint', gammaMnt, '--host', 'gamma'], c.env);
      assert.notEqual(second.code, 0);
      assert.match(second.stderr, /already mounted read-write by host 'alpha' \(pid \d+, epoch \d+/);

      const unknown = await lsnfs(['failover', '--device', c.device, '--host', 'gamma', '--mountpoint', gammaMnt, '--force'], c.env);
      assert.notEqual(unknown.code, 0);
      assert.match(unknown.stderr, /host 'gamma' is unknown there: it has no live replica mount \(replicas: (beta, delta|delta, beta)\)/);

      const alive = await lsnfs(['failover', '--device', c.device, '--host', 'beta', '--mountpoint', c.mnt.beta], c.env);
      assert.notEqual(alive.code, 0);
      assert.match(alive.stderr, /the primary host 'alpha' .* still heartbeats, so it may be alive; stop it, or pass --force/);

      const notHolder = await lsnfs(['fence', '--device', c.device, '--host', 'zeta'], c.env);
      assert.notEqual(notHolder.code, 0);
      assert.match(notHolder.stderr, backend === 'file' ? /host 'zeta' does not hold it \(the primary is host 'alpha'/
        : /host 'zeta' is not registered \(key 0x[0-9a-f]{16}\); registered: .*primary 'alpha'.*; nothing fenced/);

      const port = await freePort(); // nothing listens there
      for (const args of [['fence', '--host', 'alpha'], ['failover', '--host', 'beta', '--mountpoint', gammaMnt, '--force'], ['status']]) {
        const url = `iscsi://127.0.0.1:${port}/${TGT_TARGET_IQN}/1`;
        const unreachable = await lsnfs([args[0]!, '--device', url, ...args.slice(1)], c.env);
        assert.notEqual(unreachable.code, 0);
        assert.match(unreachable.stderr, new RegExp(`^lsnfs: .*${url.replace(/[.]/g, '\\.')}`), `${args[0]}: ${unreachable.stderr}`);
        assert.doesNotMatch(unreachable.stderr, /\n\s+at /, 'no stack trace for a user mistake');
      }

      // Nothing changed: alpha still holds the device in the same epoch and still writes.
      const after = await status(c);
      assert.equal(after.holder?.host, 'alpha');
      assert.equal(after.epoch, before.epoch);
      await fsp.writeFile(path.join(c.mnt.alpha, 'still-primary'), 'yes');
      const handle = await fsp.open(path.join(c.mnt.alpha, 'still-primary'), 'r+');
      await handle.sync();
      await handle.close();
      assert.ok(!existsSync(path.join(gammaMnt, 'still-primary')), 'the refused mount mounted nothing');
    });

    test('freeze the primary mid-burst, fail over, resume it: nothing it writes lands, acknowledged writes survive, delta keeps following', async () => {
      const c = cluster!;
      const script = path.join(c.dir, 'writer.js');
      await fsp.writeFile(script, WRITER_SCRIPT);
      const file = path.join(c.mnt.alpha, 'burst');
      const writer = startWriter(file, script);
      await waitFor('the writer to get going', () => writer.acked() >= 200);
      const alphaPid = daemonPidAt(c.env, c.mnt.alpha);
      const oldEpoch = (await status(c)).epoch;

      process.kill(alphaPid, 'SIGSTOP');
      // A failed assertion must not leave a frozen FUSE daemon behind: every later stat of its mount would hang.
      const thaw = setTimeout(() => { try { process.kill(alphaPid, 'SIGCONT'); } catch { /* gone */ } }, 60_000);
      thaw.unref();
      await sleep(200); // an acknowledgement already in the writer's pipe when the daemon stopped
      const ackedAtFreeze = writer.acked();
      const promoted = JSON.parse(await lsnfsOk(['failover', '--device', c.device, '--host', 'beta', '--mountpoint', c.mnt.beta, '--force', '--json'], c.env)) as
        { oldPrimary: string; epoch: number; fence: { backend: string } };
      assert.equal(promoted.oldPrimary, 'alpha');
      assert.equal(promoted.fence.backend, backend === 'file' ? 'emulated' : 'scsi');
      assert.ok(promoted.epoch > oldEpoch, `epoch ${promoted.epoch} after ${oldEpoch}`);
      assert.equal(writer.acked(), ackedAtFreeze, 'a frozen primary acknowledged nothing');

      // Every write alpha acknowledged is on the new primary.
      const promotedBytes = await fsp.readFile(path.join(c.mnt.beta, 'burst'));
      assertRecords(promotedBytes, ackedAtFreeze, 'new primary after failover');

      // Resume alpha: whatever it had in flight or tries now must fail and must not land. On a file
      // device the failover killed it (it ran on this machine); over iSCSI it runs on and the target refuses it.
      if (backend === 'iscsi') process.kill(alphaPid, 'SIGCONT');
      else assert.ok(!processAlive(alphaPid), 'fencing a holder on this machine kills its daemon');
      const ending = await Promise.race([writer.done, sleep(30_000).then(() => 'still running')]);
      assert.match(ending, backend === 'iscsi' ? /^error EIO$/ : /^error (ENOTCONN|ECONNABORTED)$/, 'the old primary\'s writer fails');
      // A write whose flush completed before the fence may be acknowledged on resume; nothing later may.
      assertRecords(promotedBytes, writer.acked(), 'new primary, counting what the resumed primary acknowledged');
      if (backend === 'iscsi') {
        // The daemon's log is written asynchronously (pino's destination), so its line about the fence can land
        // after the writer has seen EIO: wait for it a little, then match (a failed match prints the log).
        const fencedLine = /host 'alpha' (was fenced \(unit attention 2A\/03 reservations preempted|\(epoch \d+\) lost the reservation)|RESERVATION_CONFLICT/;
        await waitFor('alpha to log its fencing', () => fencedLine.test(mountLog(c, c.mnt.alpha)), 5000).catch(() => undefined);
        assert.match(mountLog(c, c.mnt.alpha), fencedLine);
      }
      const failedWrite = await lsnfs(['status', '--device', c.device, '--json'], c.env);
      assert.equal((JSON.parse(failedWrite.stdout) as { holder: { host: string } }).holder.host, 'beta');

      // The new primary writes on; delta follows it; alpha's file is as the failover left it.
      const after = path.join(c.mnt.beta, 'after-failover');
      await fsp.writeFile(after, Buffer.alloc(64 * 1024, 7));
      const handle = await fsp.open(after, 'r+');
      await handle.sync();
      await handle.close();
      await waitFor('delta to see the new primary\'s file', async () =>
        (await fsp.readFile(path.join(c.mnt.delta, 'after-failover')).catch(() => Buffer.alloc(0))).equals(Buffer.alloc(64 * 1024, 7)));
      assert.deepEqual(await fsp.readFile(path.join(c.mnt.delta, 'burst')), promotedBytes, 'delta sees the burst as the failover left it');
      assert.deepEqual(await fsp.readFile(path.join(c.mnt.beta, 'burst')), promotedBytes, 'nothing alpha did after its fence landed');

      // Kill the fenced daemon (it cannot checkpoint), unmount the rest, remount beta: everything acknowledged is there; fsck clean.
      if (processExists(alphaPid)) process.kill(alphaPid, 'SIGKILL');
      await waitFor('the fenced daemon to exit', () => !processExists(alphaPid));
      await run('umount', ['-l', c.mnt.alpha]);
      await lsnfsOk(['umount', '--mountpoint', c.mnt.delta], c.env);
      await lsnfsOk(['umount', '--mountpoint', c.mnt.beta], c.env);
      const fsck = JSON.parse((await lsnfs(['fsck', '--device', c.device, '--json'], c.env)).stdout) as { ok: boolean; problems: unknown[] };
      assert.ok(fsck.ok, `fsck: ${JSON.stringify(fsck.problems)}`);
      await lsnfsOk(['mount', '--device', c.device, '--mountpoint', c.mnt.beta, '--host', 'beta'], c.env);
      assertRecords(await fsp.readFile(path.join(c.mnt.beta, 'burst')), ackedAtFreeze, 'after remount');
      assert.deepEqual(await fsp.readFile(path.join(c.mnt.beta, 'burst')), promotedBytes);
      assert.deepEqual(await fsp.readFile(after), Buffer.alloc(64 * 1024, 7));
    });

    test('lsnfs fence cuts the primary off; the next primary takes the device over', async () => {
      const c = cluster!;
      // beta is the primary now (previous test). Fence it by hand.
      const pid = daemonPidAt(c.env, c.mnt.beta);
      const fenced = await lsnfsOk(['fence', '--device', c.device, '--host', 'beta', '--as', 'operator'], c.env);
      assert.match(fenced, backend === 'file' ? new RegExp(`fenced host 'beta' .*its daemon \\(pid ${pid}\\) on this machine killed`)
        : /fenced host 'beta' .*SCSI-3 PREEMPT of key 0x[0-9a-f]{16}, enforced by the target/);
      if (backend === 'iscsi') await waitFor('beta to notice', () => /writes stopped for good/.test(mountLog(c, c.mnt.beta)), 5000);
      else assert.ok(!processAlive(pid), 'fencing a holder on this machine kills its daemon');
      const attempt = await fsp.writeFile(path.join(c.mnt.beta, 'after-fence'), 'x').then(async () => {
        const handle = await fsp.open(path.join(c.mnt.beta, 'after-fence'), 'r+');
        try { await handle.sync(); } finally { await handle.close(); }
      }).then(() => 'ok', (error: NodeJS.ErrnoException) => error.code ?? String(error));
      assert.match(attempt, backend === 'iscsi' ? /^EIO$/ : /^(ENOTCONN|ECONNABORTED)$/);
      assert.equal((await status(c)).holder, null);
      // Another host mounts read-write: it takes the reservation from the fencer.
      if (processExists(pid)) process.kill(pid, 'SIGKILL');
      await waitFor('beta to exit', () => !processExists(pid));
      await run('umount', ['-l', c.mnt.beta]);
      await fsp.rm(runtimeFile(c.env, c.mnt.beta, 'json'), { force: true });
      await lsnfsOk(['mount', '--device', c.device, '--mountpoint', c.mnt.alpha, '--host', 'alpha'], c.env);
      await fsp.writeFile(path.join(c.mnt.alpha, 'alpha-again'), 'back');
      const handle = await fsp.open(path.join(c.mnt.alpha, 'alpha-again'), 'r+');
      await handle.sync();
      await handle.close();
      assert.equal((await status(c)).holder?.host, 'alpha');
      assertRecords(await fsp.readFile(path.join(c.mnt.alpha, 'burst')), 200, 'after the second takeover');
    });
  });
}
