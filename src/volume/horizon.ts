/**
 * The GC horizon: the oldest LSN anyone may still read at. It is the lowest
 * view of the live readers (replicas, snapshots) and the start of the
 * retention window. The primary keeps every version visible at or after it,
 * and every file deleted at or after the lowest keepDeletedFromLsn a live
 * reader asks for (a standby still showing WAL segments the primary removed);
 * recovery replays with both so that a restarted primary keeps what readers
 * still need.
 */
import { BlockDevice } from '../device/device';
import { ReplicaSlot, liveSlots, readSlotArea } from '../replica/slots';
import { CheckpointMark } from './checkpoint';
import { retentionFloorLsn } from './snapshot';

/** A reader whose heartbeat is older than this no longer holds the horizon. */
export const DEFAULT_READER_TIMEOUT_MS = 10_000;

/** What the primary keeps for readers: versions visible at or after `lsn`, and files deleted at or after `keepDeletedFromLsn`. */
export interface Horizon { lsn: number; keepDeletedFromLsn: number }

/** The horizon now; `damaged` (the slot indexes) when a slot cannot be read whole: its reader may hold it lower. */
export async function readHorizon(
  device: BlockDevice, checkpoints: CheckpointMark[], retainMs: number, readerTimeoutMs = DEFAULT_READER_TIMEOUT_MS,
): Promise<Horizon | { damaged: number[] }> {
  const nowMs = Date.now();
  const { slots, damaged } = await readSlotArea(device);
  if (damaged.length > 0) return { damaged };
  return horizonOf(liveSlots(slots, nowMs, readerTimeoutMs), retentionFloorLsn(checkpoints, retainMs, nowMs));
}

/** The horizon that live readers and the retention window's floor make. */
export function horizonOf(liveReaders: Array<Pick<ReplicaSlot, 'viewLsn' | 'keepDeletedFromLsn'>>, retentionFloorLsn: number): Horizon {
  return {
    lsn: Math.min(retentionFloorLsn, ...liveReaders.map((r) => r.viewLsn)),
    keepDeletedFromLsn: Math.min(Number.POSITIVE_INFINITY, ...liveReaders.map((r) => r.keepDeletedFromLsn || Number.POSITIVE_INFINITY)),
  };
}
