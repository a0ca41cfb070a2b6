import { randomUUID } from 'node:crypto';
import { BlockDevice } from '../device/device';
import { UserError } from '../util/errors';
import {
  DEFAULT_PAGE_BYTES, FIRST_LSN, FORMAT_VERSION, LOG_OFFSET, MIN_DEVICE_BYTES, RECORD_FLAG_CHECKPOINT_LAST,
  RecordType, SUPERBLOCK_OFFSETS, Superblock, alignDown, decodeSuperblock, encodeRecord, encodeSuperblock, volumeSalt,
} from '../log/format';
import { LogSpace } from '../log/log-space';
import { serializeState } from './checkpoint';
import { VolumeState } from './state';

export interface MkfsOptions { pageBytes?: number; force?: boolean; retainMs?: number }

/** Throws if `device` already holds an lsnfs volume (mkfs without --force must not destroy it). */
export async function refuseExistingVolume(device: BlockDevice): Promise<void> {
  // Either copy alone mounts the volume (readSuperblock takes any valid one), so check both.
  for (const offset of SUPERBLOCK_OFFSETS) {
    if (device.sizeBytes < offset + 4096) return;
    const existing = decodeSuperblock(await device.read(offset, 4096));
    if (existing.ok || existing.reason !== 'not-lsnfs') {
      throw new UserError(`device ${device.name}: already holds an lsnfs volume; pass --force to overwrite it`);
    }
  }
}

/** Formats `device`: zeroed metadata area, both superblocks, and an empty root checkpoint. */
export async function mkfs(device: BlockDevice, options: MkfsOptions = {}): Promise<Superblock> {
  const pageBytes = options.pageBytes ?? DEFAULT_PAGE_BYTES;
  if (!Number.isInteger(Math.log2(pageBytes)) || pageBytes < 4096 || pageBytes > 65536) {
    throw new UserError(`--page-size ${pageBytes}: must be a power of two between 4096 and 65536`);
  }
  if (device.sizeBytes < MIN_DEVICE_BYTES) {
    throw new UserError(`device ${device.name}: ${device.sizeBytes} bytes is too small (at least ${MIN_DEVICE_BYTES} bytes)`);
  }
  if (!options.force) await refuseExistingVolume(device);
  const uuid = randomUUID();
  const logBytes = alignDown(device.sizeBytes - LOG_OFFSET, 4096);
  const state = VolumeState.empty(pageBytes, 0o755, Date.now());
  const checkpoint = encodeRecord(
    { lsn: FIRST_LSN, epoch: 1, type: RecordType.Checkpoint, flags: RECORD_FLAG_CHECKPOINT_LAST, timeMs: Date.now(), durableLsn: FIRST_LSN, walLsn: 0 },
    serializeState(state, []),
    volumeSalt(uuid),
  );
  const superblock: Superblock = {
    formatVersion: FORMAT_VERSION, pageBytes, deviceBytes: device.sizeBytes, logOffset: LOG_OFFSET, logBytes, uuid,
    generation: 1, epoch: 1, checkpointLsn: FIRST_LSN, headLsn: FIRST_LSN, createdAtMs: Date.now(), retainMs: options.retainMs ?? 0,
  };
  // Zero the metadata area (stale reservations, slots) before anything points at it.
  await device.write(0, Buffer.alloc(LOG_OFFSET));
  const space = new LogSpace(device, LOG_OFFSET, logBytes, volumeSalt(uuid));
  const sector = Buffer.alloc(Math.ceil((checkpoint.length + 64) / 512) * 512);
  checkpoint.copy(sector, 0);
  await space.write(FIRST_LSN, sector);
  await device.flush();
  await device.write(SUPERBLOCK_OFFSETS[0], encodeSuperblock(superblock));
  await device.write(SUPERBLOCK_OFFSETS[1], encodeSuperblock({ ...superblock, generation: 0 }));
  await device.flush();
  return superblock;
}
