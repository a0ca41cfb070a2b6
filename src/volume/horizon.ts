/**
 * The GC horizon: the oldest LSN anyone may still read at. It is the lowest
 * view of the live readers (replicas, snapshots) and the start of the
 * retention window. The primary keeps every version visible at or after it;
 * recovery replays with it so that a restarted primary keeps what readers
 * still need.
 */
import { BlockDevice } from '../device/device';
import { liveSlots, readSlots } from '../replica/slots';
import { CheckpointMark } from './checkpoint';
import { retentionFloorLsn } from './snapshot';

/** A reader whose heartbeat is older than this no longer holds the horizon. */
export const DEFAULT_READER_TIMEOUT_MS = 10_000;

export async function readHorizonLsn(
  device: BlockDevice, checkpoints: CheckpointMark[], retainMs: number, readerTimeoutMs = DEFAULT_READER_TIMEOUT_MS,
): Promise<number> {
  const nowMs = Date.now();
  const readers = liveSlots(await readSlots(device), nowMs, readerTimeoutMs);
  return Math.min(retentionFloorLsn(checkpoints, retainMs, nowMs), ...readers.map((r) => r.viewLsn));
}
