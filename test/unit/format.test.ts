import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';

import {
  DATA_BYTES_OFFSET, FORMAT_VERSION, RECORD_ALIGN_BYTES, RECORD_HEADER_BYTES, RecordType, SUPERBLOCK_BYTES, Superblock,
  decodeDataHead, decodeRecordHeader, decodeSuperblock, encodeDataPayload, encodeRecord, encodeSuperblock,
  payloadChecksumOk, recordBytes, volumeSalt,
} from '../../src/log/format';
import { crc32c } from '../../src/util/crc32c';
import { makeRng, seedFrom } from '../support/core';

const SEED = seedFrom('FORMAT_TEST_SEED');
const ctx = `(FORMAT_TEST_SEED=${SEED})`;

function sampleSuperblock(): Superblock {
  return {
    formatVersion: FORMAT_VERSION, pageBytes: 8192, deviceBytes: 3 * 2 ** 40 + 12345 * 4096, logOffset: 1024 * 1024,
    logBytes: 3 * 2 ** 40, uuid: randomUUID(), generation: 2 ** 40 + 7, epoch: 123456, checkpointLsn: 2 ** 47 + 4096,
    headLsn: 2 ** 47, createdAtMs: Date.now(), retainMs: 86_400_000,
  };
}

/** Re-seals a superblock's CRC after a deliberate field change. */
function reseal(buf: Buffer): Buffer {
  buf.writeUInt32LE(crc32c(buf.subarray(0, SUPERBLOCK_BYTES - 4)), SUPERBLOCK_BYTES - 4);
  return buf;
}

test('superblock: encode/decode round trip preserves every field', () => {
  const sb = sampleSuperblock();
  const buf = encodeSuperblock(sb);
  assert.equal(buf.length, SUPERBLOCK_BYTES);
  const decoded = decodeSuperblock(buf);
  assert.ok(decoded.ok, JSON.stringify(decoded));
  assert.deepEqual(decoded.superblock, sb);
});

test('superblock: bad magic is not-lsnfs, an all-zero block too', () => {
  const buf = encodeSuperblock(sampleSuperblock());
  buf[0] ^= 0xff;
  const decoded = decodeSuperblock(buf);
  assert.equal(decoded.ok, false);
  assert.equal(!decoded.ok && decoded.reason, 'not-lsnfs');
  const zeros = decodeSuperblock(Buffer.alloc(SUPERBLOCK_BYTES));
  assert.equal(!zeros.ok && zeros.reason, 'not-lsnfs');
});

test('superblock: any flipped bit after the magic is a checksum failure', () => {
  const rng = makeRng(SEED);
  const good = encodeSuperblock(sampleSuperblock());
  for (let i = 0; i < 200; i++) {
    const buf = Buffer.from(good);
    const at = rng.range(8, SUPERBLOCK_BYTES - 1);
    buf[at] ^= 1 << rng.int(7);
    const decoded = decodeSuperblock(buf);
    assert.equal(!decoded.ok && decoded.reason, 'checksum', `byte ${at} ${ctx}`);
  }
});

test('superblock: another format version is refused with reason version', () => {
  const buf = encodeSuperblock(sampleSuperblock());
  buf.writeUInt32LE(FORMAT_VERSION + 1, 8);
  const decoded = decodeSuperblock(reseal(buf));
  assert.equal(decoded.ok, false);
  assert.equal(!decoded.ok && decoded.reason, 'version');
  assert.match(!decoded.ok ? decoded.detail : '', new RegExp(`format version ${FORMAT_VERSION + 1}`));
});

test('superblock: fields beyond 48 bits are refused at encode time', () => {
  assert.throws(() => encodeSuperblock({ ...sampleSuperblock(), headLsn: 2 ** 48 }), /u48 out of range/);
  assert.throws(() => encodeSuperblock({ ...sampleSuperblock(), epoch: -1 }), /u48 out of range/);
});

function sampleHeader(lsn: number) {
  return { lsn, epoch: 77, type: RecordType.Meta, flags: 3, timeMs: Date.now(), durableLsn: Math.max(0, lsn - 512), walLsn: 2 ** 40 + 1 };
}

test('record: encode/decode round trip for many payload sizes and types', () => {
  const rng = makeRng(SEED ^ 1);
  const salt = volumeSalt(randomUUID());
  const sizes = [0, 1, 7, 8, 9, 63, 64, 65, 511, 4096, 8192 + DATA_BYTES_OFFSET, 100_000];
  for (let i = 0; i < 40; i++) sizes.push(rng.int(20_000));
  for (const size of sizes) {
    const payload = rng.bytes(size);
    const header = { ...sampleHeader(4096 + rng.int(2 ** 40) * 8), type: rng.pick([RecordType.Pad, RecordType.Epoch, RecordType.Checkpoint, RecordType.Data, RecordType.Meta]) };
    const buf = encodeRecord(header, payload, salt);
    assert.equal(buf.length, recordBytes(size));
    assert.equal(buf.length % RECORD_ALIGN_BYTES, 0);
    // Padding bytes after the payload are zero.
    assert.ok(buf.subarray(RECORD_HEADER_BYTES + size).every((b) => b === 0));
    // Decode at a non-zero offset inside a larger buffer too.
    const host = Buffer.concat([Buffer.alloc(24, 0xaa), buf]);
    const decoded = decodeRecordHeader(host, 24, salt);
    assert.ok(decoded, `size ${size} ${ctx}`);
    assert.deepEqual(decoded, { ...header, payloadBytes: size, payloadCrc: crc32c(payload) });
    const back = host.subarray(24 + RECORD_HEADER_BYTES, 24 + RECORD_HEADER_BYTES + size);
    assert.ok(payloadChecksumOk(decoded, back));
    assert.ok(back.equals(payload));
  }
});

test('record: header damage (any bit of the 64 header bytes) is detected', () => {
  const rng = makeRng(SEED ^ 2);
  const salt = volumeSalt(randomUUID());
  const good = encodeRecord(sampleHeader(8192), rng.bytes(300), salt);
  for (let bit = 0; bit < RECORD_HEADER_BYTES * 8; bit++) {
    const buf = Buffer.from(good);
    buf[bit >> 3] ^= 1 << (bit & 7);
    assert.equal(decodeRecordHeader(buf, 0, salt), null, `header bit ${bit}`);
  }
  // A truncated header is not a header.
  assert.equal(decodeRecordHeader(good.subarray(0, RECORD_HEADER_BYTES - 1), 0, salt), null);
  assert.equal(decodeRecordHeader(good, good.length - 10, salt), null);
});

test('record: payload damage is detected by the payload CRC, not the header', () => {
  const rng = makeRng(SEED ^ 3);
  const salt = volumeSalt(randomUUID());
  const payload = rng.bytes(5000);
  const good = encodeRecord(sampleHeader(12288), payload, salt);
  for (let i = 0; i < 100; i++) {
    const buf = Buffer.from(good);
    const at = RECORD_HEADER_BYTES + rng.int(payload.length - 1);
    buf[at] ^= 1 << rng.int(7);
    const header = decodeRecordHeader(buf, 0, salt);
    assert.ok(header, 'header still valid');
    assert.equal(payloadChecksumOk(header, buf.subarray(RECORD_HEADER_BYTES, RECORD_HEADER_BYTES + payload.length)), false, `payload byte ${at} ${ctx}`);
  }
  // A payload of the wrong length fails even if its bytes are a prefix.
  const header = decodeRecordHeader(good, 0, salt)!;
  assert.equal(payloadChecksumOk(header, payload.subarray(0, payload.length - 1)), false);
});

test('record: the volume salt makes records of another volume invalid', () => {
  const saltA = volumeSalt(randomUUID());
  const saltB = volumeSalt(randomUUID());
  assert.notEqual(saltA, saltB);
  const buf = encodeRecord(sampleHeader(4096), Buffer.from('hello'), saltA);
  assert.ok(decodeRecordHeader(buf, 0, saltA));
  assert.equal(decodeRecordHeader(buf, 0, saltB), null);
  // Deterministic per uuid, and the uuid's dashes do not matter.
  const uuid = randomUUID();
  assert.equal(volumeSalt(uuid), volumeSalt(uuid.replace(/-/g, '')));
});

test('data payload: round trip of head and bytes, versionLsn 0 and a relocated copy', () => {
  const rng = makeRng(SEED ^ 4);
  for (const [offsetInPage, length, versionLsn] of [[0, 8192, 0], [100, 1, 0], [8191, 1, 2 ** 46], [0, 0, 4096], [17, 5000, 123456]] as const) {
    const bytes = rng.bytes(length);
    const head = { ino: 2 ** 40 + 3, pageNo: 0xfffffff0, offsetInPage, length, versionLsn };
    const payload = encodeDataPayload(head, bytes);
    assert.equal(payload.length, DATA_BYTES_OFFSET + length);
    assert.deepEqual(decodeDataHead(payload), head);
    assert.ok(payload.subarray(DATA_BYTES_OFFSET).equals(bytes));
    // And inside a whole record.
    const salt = volumeSalt(randomUUID());
    const record = encodeRecord({ ...sampleHeader(4096), type: RecordType.Data }, payload, salt);
    const header = decodeRecordHeader(record, 0, salt)!;
    const back = record.subarray(RECORD_HEADER_BYTES, RECORD_HEADER_BYTES + header.payloadBytes);
    assert.deepEqual(decodeDataHead(back), head);
    assert.ok(back.subarray(DATA_BYTES_OFFSET).equals(bytes));
  }
  assert.throws(() => encodeDataPayload({ ino: 2, pageNo: 0, offsetInPage: 0, length: 3, versionLsn: 0 }, Buffer.alloc(4)), /length mismatch/);
});
