/**
 * iSCSI against a REAL target: a private tgtd on loopback (test/support/tgt.ts)
 * and the libiscsi session in native/iscsi.c. Fencing here is enforced by
 * the target: these tests check what tgt actually does.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import { FileDevice } from '../../src/device/file-device';
import { openDevice } from '../../src/device/open';
import {
  IscsiDevice, IscsiError, IscsiSession, PrType, UnitAttention, isIscsiError, isReservationConflict,
} from '../../src/device/iscsi-device';
import { ScsiReservation, hostForKey, reservationKeyForHost } from '../../src/fence/scsi-reservation';
import { mkfs } from '../../src/volume/mkfs';
import { readSuperblock } from '../../src/log/superblock';
import { UserError } from '../../src/util/errors';
import { freePort } from '../support/harness';
import { TgtTarget, startTgt } from '../support/tgt';

const LUN_BYTES = 64 * 1024 * 1024;

async function expectConflict(operation: Promise<unknown>, what: string): Promise<IscsiError> {
  const error = await operation.then(() => undefined, (e: unknown) => e);
  assert.ok(isReservationConflict(error), `${what}: expected RESERVATION_CONFLICT, got ${error === undefined ? 'success' : String(error)}`);
  return error;
}

/** Records the unit attentions a session reports. */
function watch(device: IscsiDevice): UnitAttention[] {
  const seen: UnitAttention[] = [];
  device.session.on('unitAttention', (ua: UnitAttention) => seen.push(ua));
  return seen;
}

describe('iSCSI on tgt', () => {
  let tgt: TgtTarget;
  const open: IscsiDevice[] = [];
  const connect = async (host: string) => {
    const device = await IscsiDevice.open(tgt.url, { readOnly: false, host });
    open.push(device);
    return device;
  };

  before(async () => { tgt = await startTgt({ sizeBytes: LUN_BYTES }); });
  after(async () => {
    await Promise.all(open.map((device) => device.close().catch(() => undefined)));
    await tgt?.stop();
  });

  test('IscsiDevice reads and writes at odd offsets and sizes', async () => {
    const device = await connect('io');
    assert.equal(device.sizeBytes, LUN_BYTES);
    assert.equal(device.blockSize, 512);
    const model = Buffer.alloc(LUN_BYTES);
    const put = async (offset: number, length: number) => {
      const data = randomBytes(length);
      await device.write(offset, data);
      data.copy(model, offset);
    };
    await put(0, 512);
    await put(4096 * 3, 4096);
    await put(512 * 7, 512 * 13);
    await put(3 * 1024 * 1024 - 512 * 5, 1536 * 1024 + 512 * 3); // several 1 MiB transfers, unaligned to them
    await put(LUN_BYTES - 512, 512);
    // Many writes in flight at once on the one session.
    await Promise.all(Array.from({ length: 64 }, (_, i) => put(8 * 1024 * 1024 + i * 4096, 4096)));
    await device.flush();

    const ranges: Array<[number, number]> = [
      [0, 1], [1, 1], [511, 2], [1000, 5000], [512 * 7 - 3, 512 * 13 + 6], [4096 * 3 + 17, 4000],
      [3 * 1024 * 1024 - 700, 1536 * 1024 + 1400], [8 * 1024 * 1024 + 100, 64 * 4096 - 200],
      [LUN_BYTES - 1, 1], [LUN_BYTES - 513, 513], [12345, 0],
    ];
    for (const [offset, length] of ranges) {
      const got = await device.read(offset, length);
      assert.equal(got.length, length, `read(${offset}, ${length}) length`);
      assert.ok(got.equals(model.subarray(offset, offset + length)), `read(${offset}, ${length}) content`);
    }
    // The LUN's backing file holds the same bytes.
    const file = await FileDevice.open(tgt.backingFile, { readOnly: true });
    try {
      assert.ok((await file.read(0, 4 * 1024 * 1024)).equals(model.subarray(0, 4 * 1024 * 1024)));
    } finally {
      await file.close();
    }
    await assert.rejects(device.write(100, Buffer.alloc(512)), /not aligned to its 512-byte blocks/);
    await assert.rejects(device.write(512, Buffer.alloc(100)), /not aligned/);
    await assert.rejects(device.read(LUN_BYTES - 10, 11), /beyond/);
  });

  test('mkfs on an iSCSI device gives an lsnfs volume (read back over iSCSI and from the file)', async () => {
    const device = await openDevice(tgt.url, { readOnly: false, host: 'mkfs' });
    assert.ok(device instanceof IscsiDevice);
    open.push(device);
    const written = await mkfs(device, { force: true });
    const viaIscsi = await readSuperblock(device);
    assert.equal(viaIscsi.uuid, written.uuid);
    assert.equal(viaIscsi.deviceBytes, LUN_BYTES);
    // A second session (another host) sees it too, and so does the backing file.
    const reader = await openDevice(tgt.url, { readOnly: true, host: 'mkfs-reader' });
    open.push(reader as IscsiDevice);
    assert.equal((await readSuperblock(reader)).uuid, written.uuid);
    const file = await FileDevice.open(tgt.backingFile, { readOnly: true });
    try {
      assert.equal((await readSuperblock(file)).uuid, written.uuid);
    } finally {
      await file.close();
    }
  });

  test('Write Exclusive (type 1): only the holder writes; a preempted holder sees 2A/03, then conflicts', async () => {
    const [a, b, c] = [await connect('host-a'), await connect('host-b'), await connect('host-c')];
    const uasA = watch(a);
    const [keyA, keyB] = [reservationKeyForHost('host-a'), reservationKeyForHost('host-b')];
    await a.session.register(keyA);
    await b.session.register(keyB);
    await a.session.reserve(keyA, PrType.WriteExclusive);
    try {
      const sector = (byte: number) => Buffer.alloc(512, byte);
      const at = 2 * 1024 * 1024;
      await a.write(at, sector(0xa1)); // holder: GOOD
      await expectConflict(b.write(at, sector(0xb1)), 'registered non-holder B');
      await expectConflict(c.write(at, sector(0xc1)), 'unregistered C');
      assert.equal((await c.read(at, 512))[0], 0xa1, 'C reads');

      await b.session.preempt(keyB, keyA, PrType.WriteExclusive);
      const error = await expectConflict(a.write(at, sector(0xa2)), 'preempted A');
      assert.equal(error.unitAttention, '2A/03', 'the conflict came right after UNIT ATTENTION 2A/03');
      assert.deepEqual(uasA.map((ua) => ua.code), ['2A/03']);
      assert.equal(a.session.unitAttentions, 1);
      const again = await expectConflict(a.write(at, sector(0xa3)), 'preempted A, again');
      assert.equal(again.unitAttention, undefined, 'the UA is reported once');
      await expectConflict(a.flush(), 'preempted A, SYNCHRONIZE CACHE');

      await b.write(at, sector(0xb2)); // new holder: GOOD
      assert.equal((await c.read(at, 512))[0], 0xb2, 'C still reads, and sees B');
      assert.equal((await a.read(at, 512))[0], 0xb2, 'A still reads');
      assert.deepEqual((await c.session.readKeys()).keys, [keyB]);
      assert.deepEqual((await c.session.readReservation()).reservation, { key: keyB, type: PrType.WriteExclusive, scope: 0 });
    } finally {
      await b.session.clear(keyB);
    }
  });

  test('ScsiReservation (type 5): registrants write, others conflict; preemptHost fences the old primary', async () => {
    const [a, b, c] = [await connect('node-a'), await connect('node-b'), await connect('node-c')];
    const primary = new ScsiReservation(a.session, 'node-a');
    const standby = new ScsiReservation(b.session, 'node-b');
    assert.equal(primary.type, PrType.WriteExclusiveRegistrantsOnly);
    const fenced: UnitAttention[] = [];
    primary.onFenced((ua) => fenced.push(ua));
    await primary.register();
    await standby.register();
    await primary.reserve();
    await primary.reserve(); // the holder may reserve again
    try {
      assert.deepEqual(await primary.readHolder(), { key: primary.key, type: PrType.WriteExclusiveRegistrantsOnly });
      assert.equal(hostForKey((await standby.readHolder())!.key, ['node-b', 'node-a']), 'node-a');
      assert.ok(await standby.isRegistered());
      const at = 3 * 1024 * 1024;
      await a.write(at, Buffer.alloc(4096, 1));
      await b.write(at + 4096, Buffer.alloc(512, 2)); // a registered replica writes its slot
      await expectConflict(c.write(at, Buffer.alloc(512, 3)), 'unregistered C');
      assert.equal((await c.read(at, 1))[0], 1);

      await standby.preemptHost('node-a');
      assert.deepEqual(await standby.readHolder(), { key: standby.key, type: PrType.WriteExclusiveRegistrantsOnly });
      assert.deepEqual(await standby.readKeys(), [standby.key]);
      const error = await expectConflict(a.write(at, Buffer.alloc(512, 4)), 'fenced A');
      assert.equal(error.unitAttention, '2A/03');
      assert.deepEqual(fenced.map((ua) => ua.code), ['2A/03']);
      assert.equal(await primary.isRegistered(), false);
      await b.write(at, Buffer.alloc(512, 5));
      await b.flush();
      assert.equal((await c.read(at, 1))[0], 5, "C reads B's data; A's refused write never landed");
    } finally {
      await standby.session.clear(standby.key);
    }
  });

  test('reclaim(): a restarted host takes its reservation back from its own stale session', async () => {
    const [stale, b] = [await connect('node-r'), await connect('node-s')];
    const old = new ScsiReservation(stale.session, 'node-r');
    const other = new ScsiReservation(b.session, 'node-s');
    await old.register();
    await other.register();
    await old.reserve();
    try {
      const fresh = new ScsiReservation((await connect('node-r')).session, 'node-r');
      await fresh.reclaim();
      const freshDevice = open[open.length - 1]!;
      await freshDevice.write(0, Buffer.alloc(512, 7));
      await expectConflict(stale.write(0, Buffer.alloc(512, 8)), 'the stale session');
      assert.deepEqual((await other.readKeys()).sort(), [other.key, fresh.key].sort());
      assert.deepEqual(await other.readHolder(), { key: fresh.key, type: PrType.WriteExclusiveRegistrantsOnly });
    } finally {
      await other.session.clear(other.key);
    }
  });

  test('a session whose target goes away fails its commands and does not reconnect', async () => {
    const lone = await startTgt({ sizeBytes: 16 * 1024 * 1024 });
    let device: IscsiDevice | undefined;
    try {
      device = await IscsiDevice.open(lone.url, { readOnly: false, host: 'lonely' });
      await device.write(0, Buffer.alloc(512, 9));
    } finally {
      await lone.stop();
    }
    const started = Date.now();
    const error = await device.read(0, 512).then(() => undefined, (e: unknown) => e);
    assert.ok(isIscsiError(error, 'ISCSI_DISCONNECTED'), `got ${String(error)}`);
    assert.ok(error.message.includes(lone.url), error.message);
    assert.ok(Date.now() - started < 3000);
    assert.equal(device.session.state, 'failed');
    await device.close();
  });
});

test('an unreachable target is a clear error naming the URL, within seconds', async () => {
  // Nothing listens: connection refused.
  const closed = `iscsi://127.0.0.1:${await freePort()}/iqn.2024-01.test.lsnfs:none/1`;
  let started = Date.now();
  const refused = await openDevice(closed, { readOnly: false }).then(() => undefined, (e: unknown) => e);
  assert.ok(refused instanceof UserError, String(refused));
  assert.match(refused.message, new RegExp(`^device ${closed.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: cannot connect: .*Connection refused`));
  assert.ok(Date.now() - started < 3000);

  // Something accepts TCP but never answers the login: our connect deadline.
  const silent = net.createServer(() => undefined);
  await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
  try {
    const url = `iscsi://127.0.0.1:${(silent.address() as net.AddressInfo).port}/iqn.2024-01.test.lsnfs:none/1`;
    started = Date.now();
    const error = await IscsiSession.connect(url, { connectTimeoutMs: 1000 }).then(() => undefined, (e: unknown) => e);
    assert.ok(isIscsiError(error, 'ISCSI_CONNECT'), String(error));
    assert.match(error.message, /timed out/);
    assert.ok(error.message.startsWith(url), error.message);
    const elapsed = Date.now() - started;
    assert.ok(elapsed >= 900 && elapsed < 3000, `took ${elapsed} ms`);
  } finally {
    silent.close();
  }
});
