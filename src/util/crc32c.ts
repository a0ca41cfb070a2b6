/**
 * CRC32C (Castagnoli) checksums, computed by the native addon in native/.
 *
 * There is deliberately no JavaScript fallback: a pure-JS CRC is far slower
 * and would silently degrade every checksummed write, so a missing addon is
 * a hard error instead.
 */
import { nativeAddon } from './native';

interface NativeCrc32c {
  crc32c(data: Uint8Array, seed?: number): number;
  crc32cImplementation: string;
}

const native = nativeAddon<NativeCrc32c>(['crc32c', 'crc32cImplementation']);

/** Which native code path was selected at load time: "sse4.2" or "table". */
export const crc32cImplementation: string = native.crc32cImplementation;

/**
 * CRC32C of `data`. Pass a previous result as `seed` to continue a running
 * checksum: crc32c(b, crc32c(a)) === crc32c(concat(a, b)).
 * Throws TypeError if `data` is not a Uint8Array (Buffer included) or `seed`
 * is not an integer in 0..2^32-1.
 */
export function crc32c(data: Uint8Array, seed?: number): number {
  return seed === undefined ? native.crc32c(data) : native.crc32c(data, seed);
}
