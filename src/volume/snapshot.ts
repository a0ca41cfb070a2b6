/**
 * Point-in-time views. Every LSN names a consistent state of the whole
 * filesystem: the newest checkpoint at or below it, plus every record below
 * it. The retention window keeps such a checkpoint (and the versions the
 * states after it need) in the log.
 */
import { BlockDevice } from '../device/device';
import { Superblock } from '../log/format';
import { LogReader } from '../log/log-reader';
import { UserError } from '../util/errors';
import { CheckpointMark } from './checkpoint';
import { LoadedCheckpoint, applyRecord, loadCheckpoint } from './recovery';

/**
 * The oldest checkpoint the retention window needs: the newest one taken at
 * or before `now - retainMs` (or the oldest there is). Infinity without retention.
 */
export function retentionFloorLsn(checkpoints: CheckpointMark[], retainMs: number, nowMs: number): number {
  if (retainMs === 0 || checkpoints.length === 0) return Number.POSITIVE_INFINITY;
  let floor = checkpoints[0]!.lsn;
  for (const mark of checkpoints) if (mark.timeMs <= nowMs - retainMs) floor = mark.lsn;
  return floor;
}

export interface SnapshotStart {
  checkpoint: LoadedCheckpoint;
  /** The snapshot's LSN: the state after every record below it. */
  viewLsn: number;
  viewTimeMs: number;
  epoch: number;
  /** First record at or after viewLsn: where the snapshot starts consuming relocations. */
  nextLsn: number;
}

/** Builds the state at `atLsn` or `atTimeMs`: load the newest checkpoint at or below it, replay up to it. */
export async function loadSnapshot(
  device: BlockDevice, superblock: Superblock, reader: LogReader, at: { atLsn?: number; atTimeMs?: number },
): Promise<SnapshotStart> {
  const newest = await loadCheckpoint(reader, device.name, superblock.checkpointLsn, superblock.epoch);
  const marks = [...newest.history, { lsn: superblock.checkpointLsn, timeMs: newest.timeMs }]
    .filter((mark) => mark.lsn >= superblock.headLsn);
  const oldest = marks[0]!;
  let atLsn = at.atLsn;
  if (atLsn === undefined) {
    const atTimeMs = at.atTimeMs!;
    if (atTimeMs < oldest.timeMs) {
      throw new UserError(`device ${device.name}: ${new Date(atTimeMs).toISOString()} is older than the oldest state kept (${new Date(oldest.timeMs).toISOString()}, LSN ${oldest.lsn})`);
    }
    atLsn = await lsnAtTime(reader, newestMarkAtOrBelow(marks, (m) => m.timeMs <= atTimeMs).lsn, atTimeMs, superblock.epoch);
  }
  if (atLsn < oldest.lsn) {
    throw new UserError(`device ${device.name}: LSN ${atLsn} is older than the oldest LSN available (${oldest.lsn}); the retention window is ${superblock.retainMs} ms`);
  }
  const base = newestMarkAtOrBelow(marks, (m) => m.lsn <= atLsn!);
  const checkpoint = base.lsn === superblock.checkpointLsn ? newest : await loadCheckpoint(reader, device.name, base.lsn, superblock.epoch);
  let viewTimeMs = checkpoint.timeMs;
  let epoch = checkpoint.epoch;
  const scan = await reader.scan(checkpoint.endLsn, { toLsn: atLsn, minEpoch: checkpoint.epoch, maxEpoch: superblock.epoch }, ({ header, payload }) => {
    applyRecord(checkpoint.state, header, payload);
    viewTimeMs = header.timeMs;
    epoch = header.epoch;
  });
  if (scan.stop !== 'end-of-range' && scan.stopLsn < atLsn) {
    throw new UserError(`device ${device.name}: LSN ${atLsn} is beyond the end of the log (LSN ${scan.stopLsn})`);
  }
  return { checkpoint, viewLsn: atLsn, viewTimeMs, epoch, nextLsn: Math.max(scan.stopLsn, checkpoint.endLsn) };
}

function newestMarkAtOrBelow(marks: CheckpointMark[], fits: (mark: CheckpointMark) => boolean): CheckpointMark {
  let found = marks[0]!;
  for (const mark of marks) if (fits(mark)) found = mark;
  return found;
}

/** The LSN of the first record written after `timeMs` (or the log's end), scanning from a checkpoint. */
async function lsnAtTime(reader: LogReader, fromLsn: number, timeMs: number, maxEpoch: number): Promise<number> {
  let found: number | null = null;
  const scan = await reader.scan(fromLsn, { maxEpoch }, ({ header }) => {
    if (header.timeMs > timeMs) { found = header.lsn; return false; }
    return true;
  });
  return found ?? scan.stopLsn;
}
