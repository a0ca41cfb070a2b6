import { BlockDevice } from '../device/device';
import { UserError } from '../util/errors';
import { SUPERBLOCK_BYTES, SUPERBLOCK_OFFSETS, Superblock, decodeSuperblock, encodeSuperblock } from './format';

/** Bytes from offset 0 that hold both superblock copies. */
export const SUPERBLOCK_AREA_BYTES = SUPERBLOCK_OFFSETS[1] + SUPERBLOCK_BYTES;

/**
 * Reads both superblock copies and returns the valid one with the highest
 * generation. A torn superblock write damages only the copy being written.
 */
export async function readSuperblock(device: BlockDevice): Promise<Superblock> {
  if (device.sizeBytes < SUPERBLOCK_AREA_BYTES) {
    throw new UserError(`device ${device.name}: ${device.sizeBytes} bytes is too small to be an lsnfs volume`);
  }
  return superblockFromArea(device, await device.read(0, SUPERBLOCK_AREA_BYTES));
}

/** The current superblock from `area`, the device's first SUPERBLOCK_AREA_BYTES (or more) bytes. */
export function superblockFromArea(device: BlockDevice, area: Buffer): Superblock {
  const copies = SUPERBLOCK_OFFSETS.map((offset) => decodeSuperblock(area.subarray(offset, offset + SUPERBLOCK_BYTES)));
  let best: Superblock | null = null;
  for (const copy of copies) {
    if (copy.ok && (best === null || copy.superblock.generation > best.generation)) best = copy.superblock;
  }
  if (best === null) {
    const reasons = copies.map((copy) => (copy.ok ? 'ok' : copy.detail));
    if (copies.every((copy) => !copy.ok && copy.reason === 'not-lsnfs')) {
      throw new UserError(`device ${device.name}: not an lsnfs volume (no superblock found; run 'lsnfs mkfs' first)`);
    }
    throw new UserError(`device ${device.name}: no valid superblock (copy A: ${reasons[0]}; copy B: ${reasons[1]})`);
  }
  if (best.deviceBytes > device.sizeBytes) {
    throw new UserError(
      `device ${device.name}: truncated: formatted for ${best.deviceBytes} bytes but only ${device.sizeBytes} bytes are present`,
    );
  }
  return best;
}

/** Writes the next generation into the copy not holding the current one, then flushes. */
export async function writeSuperblock(device: BlockDevice, superblock: Superblock): Promise<void> {
  const offset = SUPERBLOCK_OFFSETS[superblock.generation % 2]!;
  await device.write(offset, encodeSuperblock(superblock));
  await device.flush();
}
