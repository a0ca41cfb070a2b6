/**
 * The durable marker: one sector where the primary records how far its log
 * is durable. Readers on other hosts must not apply a record before they know
 * it is durable (a crashed primary's recovery may drop it), and a record's own
 * `durableLsn` only vouches for earlier records. The marker covers the last
 * batch when no later batch comes; the primary writes it after a flush that
 * left nothing queued.
 */
import { BlockDevice, DEVICE_SECTOR_BYTES } from '../device/device';
import { crc32c } from '../util/crc32c';
import { DURABLE_MARKER_OFFSET, readU48, writeU48 } from './format';

const MARKER_MAGIC = Buffer.from('LSNFS-DM', 'ascii');

export interface DurableMarker { epoch: number; durableLsn: number; timeMs: number }

// Field offsets.
const DM = { magic: 0, epoch: 8, durableLsn: 16, timeMs: 24, crc: DEVICE_SECTOR_BYTES - 4 } as const;

export async function writeDurableMarker(device: BlockDevice, marker: DurableMarker): Promise<void> {
  const buf = Buffer.alloc(DEVICE_SECTOR_BYTES);
  MARKER_MAGIC.copy(buf, DM.magic);
  writeU48(buf, DM.epoch, marker.epoch);
  writeU48(buf, DM.durableLsn, marker.durableLsn);
  writeU48(buf, DM.timeMs, marker.timeMs);
  buf.writeUInt32LE(crc32c(buf.subarray(0, DM.crc)), DM.crc);
  await device.write(DURABLE_MARKER_OFFSET, buf);
}

export async function readDurableMarker(device: BlockDevice): Promise<DurableMarker | null> {
  const buf = await device.read(DURABLE_MARKER_OFFSET, DEVICE_SECTOR_BYTES);
  if (!buf.subarray(0, 8).equals(MARKER_MAGIC) || buf.readUInt32LE(DM.crc) !== crc32c(buf.subarray(0, DM.crc))) return null;
  return { epoch: readU48(buf, DM.epoch), durableLsn: readU48(buf, DM.durableLsn), timeMs: readU48(buf, DM.timeMs) };
}
