/**
 * The GC horizon: the oldest LSN anyone may still read at. It is the lowest
 * view of the live readers (replicas, snapshots), or what a standby needs
 * past its view (versionsNeededFromLsn), and the start of the retention
 * window. The primary keeps every version visible at or after it,
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

type ReaderNeeds = Pick<ReplicaSlot, 'viewLsn' | 'keepDeletedFromLsn' | 'keepVersionsFromLsn'>;

/** The oldest LSN whose visible versions the reader still reads from the device: its view, or past it (a standby's kept pages). */
export function versionsNeededFromLsn(reader: ReaderNeeds): number {
  return Math.max(reader.viewLsn, reader.keepVersionsFromLsn ?? 0);
}

/** The horizon that live readers and the retention window's floor make. */
export function horizonOf(liveReaders: ReaderNeeds[], retentionFloorLsn: number): Horizon {
  return {
    lsn: Math.min(retentionFloorLsn, ...liveReaders.map(versionsNeededFromLsn)),
    keepDeletedFromLsn: Math.min(Number.POSITIVE_INFINITY, ...liveReaders.map((r) => r.keepDeletedFromLsn || Number.POSITIVE_INFINITY)),
  };
}
