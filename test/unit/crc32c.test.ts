import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';

import { crc32c, crc32cImplementation } from '../../src/util/crc32c';
import { mulberry32 } from '../support/core';

// Seeded PRNG so that a failure can be reproduced: the seed is in every
// assertion message; rerun with CRC32C_TEST_SEED=<seed>.
const PRNG_SEED = process.env.CRC32C_TEST_SEED
  ? Number(process.env.CRC32C_TEST_SEED) >>> 0
  : randomBytes(4).readUInt32LE(0);


function makeRng(label: string): { int(maxInclusive: number): number; bytes(n: number): Buffer } {
  // Separate stream per test so tests don't depend on each other's order.
  let h = PRNG_SEED;
  for (const ch of label) h = Math.imul(h ^ ch.charCodeAt(0), 0x01000193) >>> 0;
  const next = mulberry32(h);
  return {
    int: (maxInclusive) => Math.floor(next() * (maxInclusive + 1)),
    bytes: (n) => {
      const b = Buffer.allocUnsafe(n);
      for (let i = 0; i < n; i++) b[i] = Math.floor(next() * 256);
      return b;
    },
  };
}

const ctx = `(CRC32C_TEST_SEED=${PRNG_SEED}, implementation=${crc32cImplementation})`;

/** Bit-at-a-time reference; slow but obviously matches the definition. */
function referenceCrc32c(data: Uint8Array, seed = 0): number {
  let crc = ~seed >>> 0;
  for (const byte of data) {
    crc ^= byte;
    for (let k = 0; k < 8; k++) crc = crc & 1 ? (crc >>> 1) ^ 0x82f63b78 : crc >>> 1;
  }
  return ~crc >>> 0;
}

test('implementation is reported', () => {
  assert.ok(['sse4.2', 'table'].includes(crc32cImplementation), crc32cImplementation);
});

test('known vectors', () => {
  const ascending = Uint8Array.from({ length: 32 }, (_, i) => i);
  const vectors: Array<[string, Uint8Array, number]> = [
    ['"123456789"', Buffer.from('123456789', 'ascii'), 0xe3069283],
    ['32 x 0x00', new Uint8Array(32), 0x8a9136aa],
    ['32 x 0xFF', new Uint8Array(32).fill(0xff), 0x62a8ab43],
    ['0..31', ascending, 0x46dd794e],
    ['empty', new Uint8Array(0), 0],
  ];
  for (const [name, data, expected] of vectors) {
    assert.equal(crc32c(data), expected, `${name} ${ctx}`);
    assert.equal(referenceCrc32c(data), expected, `reference: ${name}`);
  }
});

test('returns an unsigned 32-bit integer', () => {
  const v = crc32c(Buffer.from('123456789'));
  assert.ok(Number.isInteger(v) && v >= 0 && v <= 0xffffffff);
});

test('seed chaining equals one-shot for random splits', () => {
  const rng = makeRng('chaining');
  for (let iter = 0; iter < 40; iter++) {
    const buf = rng.bytes(rng.int(100_000));
    const whole = crc32c(buf);
    const pieces = rng.int(4) + 1;
    const cuts = Array.from({ length: pieces - 1 }, () => rng.int(buf.length)).sort((a, b) => a - b);
    let crc = 0;
    let start = 0;
    for (const end of [...cuts, buf.length]) {
      crc = crc32c(buf.subarray(start, end), crc);
      start = end;
    }
    assert.equal(crc, whole, `len=${buf.length} cuts=${cuts.join(',')} ${ctx}`);
  }
});

test('empty input with a seed returns the seed', () => {
  assert.equal(crc32c(new Uint8Array(0), 0xdeadbeef), 0xdeadbeef);
});

test('Buffer and Uint8Array views with non-zero byteOffset match a copy', () => {
  const rng = makeRng('views');
  const backing = rng.bytes(70_000);
  const ab = backing.buffer.slice(backing.byteOffset, backing.byteOffset + backing.length);
  for (let iter = 0; iter < 50; iter++) {
    const offset = rng.int(1000) + 1;
    const len = rng.int(ab.byteLength - offset);
    const asBuffer = Buffer.from(ab, offset, len);
    const asU8 = new Uint8Array(ab, offset, len);
    const copy = Uint8Array.from(asU8);
    assert.equal(copy.byteOffset, 0);
    const expected = crc32c(copy);
    assert.equal(crc32c(asBuffer), expected, `Buffer offset=${offset} len=${len} ${ctx}`);
    assert.equal(crc32c(asU8), expected, `Uint8Array offset=${offset} len=${len} ${ctx}`);
  }
});

test('matches a bit-by-bit reference on random buffers', () => {
  const rng = makeRng('reference');
  for (let iter = 0; iter < 400; iter++) {
    // Mostly short buffers to cover every tail length of the 8-byte loops,
    // with some longer ones; the reference is slow.
    const len = iter < 64 ? iter : rng.int(iter % 10 === 0 ? 20_000 : 600);
    const data = rng.bytes(len);
    const offset = rng.int(7);
    // Place the data at an odd offset too, to exercise unaligned loads.
    const shifted = new Uint8Array(len + offset);
    shifted.set(data, offset);
    const unaligned = shifted.subarray(offset);
    const seed = iter % 2 === 0 ? 0 : rng.int(0xffffffff);
    const expected = referenceCrc32c(data, seed);
    assert.equal(crc32c(data, seed), expected, `len=${len} seed=${seed} ${ctx}`);
    assert.equal(crc32c(unaligned, seed), expected, `unaligned len=${len} offset=${offset} ${ctx}`);
  }
});

test('rejects bad arguments with TypeError naming the argument', () => {
  const call = crc32c as unknown as (...args: unknown[]) => number;
  for (const bad of [undefined, null, 'abc', 42, [1, 2, 3], new Uint16Array(4), new ArrayBuffer(4)]) {
    assert.throws(() => call(bad), (e: unknown) => e instanceof TypeError && /'buffer'/.test(e.message));
  }
  for (const bad of [-1, 1.5, 2 ** 32, Number.NaN, '1', null, 1n]) {
    assert.throws(
      () => call(new Uint8Array(1), bad),
      (e: unknown) => e instanceof TypeError && /'seed'/.test(e.message),
      String(bad),
    );
  }
  // The full uint32 range is accepted.
  assert.equal(typeof crc32c(new Uint8Array(1), 0xffffffff), 'number');
});
