/**
 * Rebuilding the in-memory state from the device: load the checkpoint the
 * superblock points to, replay every record after it, and stop at the end of
 * the log. A stop caused by damage that later durable records prove was
 * acknowledged is corruption and is refused, never silently truncated.
 */
import { BlockDevice } from '../device/device';
import { UserError } from '../util/errors';
import { RECORD_FLAG_CHECKPOINT_LAST, RecordHeader, RecordType, Superblock, volumeSalt } from '../log/format';
import { LogReader, ScanStop } from '../log/log-reader';
import { LogSpace } from '../log/log-space';
import { deserializeState } from './checkpoint';
import { decodeMetaOp } from './meta-ops';
import { VolumeState } from './state';

export interface Recovered {
  state: VolumeState;
  /** First LSN after the last valid record: where the next record goes. */
  tailLsn: number;
  /** Epoch of the last valid record. */
  lastEpoch: number;
  /** Size of the checkpoint that was loaded (for space reserve planning). */
  checkpointBytes: number;
  stop: ScanStop;
  replayedRecords: number;
}

export class CorruptLogError extends UserError {
  constructor(readonly deviceName: string, readonly lsn: number, readonly reason: string, readonly successorLsn: number) {
    super(
      `device ${deviceName}: log record at LSN ${lsn} is damaged (${reason}) but durable records follow it ` +
        `(LSN ${successorLsn}); refusing to mount rather than drop acknowledged data. Run 'lsnfs fsck --device ${deviceName}'.`,
    );
  }
}

export function logSpaceOf(device: BlockDevice, superblock: Superblock): LogSpace {
  return new LogSpace(device, superblock.logOffset, superblock.logBytes, volumeSalt(superblock.uuid));
}

/** Applies one replayed record to the state. Checkpoints and markers change nothing. */
export function applyRecord(state: VolumeState, header: RecordHeader, payload: Buffer): void {
  if (header.type === RecordType.Data) state.applyData(header, payload);
  else if (header.type === RecordType.Meta) state.applyMeta(header, decodeMetaOp(payload, header.lsn));
}

/** How many times a read-only recovery re-reads a tail that a live primary is still writing. */
const LIVE_TAIL_RETRIES = 5;

export async function recover(device: BlockDevice, superblock: Superblock): Promise<Recovered> {
  const reader = new LogReader(logSpaceOf(device, superblock));
  let state: VolumeState | null = null;
  const chunks: Buffer[] = [];
  let checkpointBytes = 0;
  let replayedRecords = 0;
  const visit = ({ header, payload }: { header: RecordHeader; payload: Buffer }): void => {
    if (state === null) {
      if (header.type !== RecordType.Checkpoint) {
        throw new UserError(`device ${device.name}: expected the checkpoint at LSN ${superblock.checkpointLsn}, found a record of type ${header.type} at LSN ${header.lsn}`);
      }
      chunks.push(Buffer.from(payload));
      if (header.flags & RECORD_FLAG_CHECKPOINT_LAST) {
        const bytes = Buffer.concat(chunks);
        checkpointBytes = bytes.length;
        state = deserializeState(bytes);
      }
      return;
    }
    applyRecord(state, header, payload);
    replayedRecords++;
  };
  let scan = await reader.scan(superblock.checkpointLsn, { maxEpoch: superblock.epoch }, visit);
  for (let retry = 0; scan.stop !== 'end-of-range'; retry++) {
    const successor = await reader.findDurableSuccessor(scan.stopLsn, scan.lastEpoch, superblock.headLsn);
    if (!successor) break;
    // A primary writing while we read (status, fsck, replicas) can make its
    // tail look damaged for a moment: read again from where we stopped.
    const again = await reader.scan(scan.stopLsn, { maxEpoch: superblock.epoch, minEpoch: scan.lastEpoch }, visit);
    if (again.stopLsn === scan.stopLsn || retry >= LIVE_TAIL_RETRIES) {
      throw new CorruptLogError(device.name, scan.stopLsn, describeStop(scan.stop), successor.lsn);
    }
    scan = again;
  }
  if (state === null) {
    throw new UserError(
      `device ${device.name}: the checkpoint at LSN ${superblock.checkpointLsn} is damaged (stopped at LSN ${scan.stopLsn}: ${describeStop(scan.stop)}); run 'lsnfs fsck'`,
    );
  }
  return { state, tailLsn: scan.stopLsn, lastEpoch: scan.lastEpoch, checkpointBytes, stop: scan.stop, replayedRecords };
}

export function describeStop(stop: ScanStop): string {
  switch (stop) {
    case 'no-record': return 'bad header checksum or not a record';
    case 'payload-checksum': return 'payload checksum mismatch';
    case 'stale-epoch': return 'record of an older epoch';
    case 'end-of-range': return 'end of range';
  }
}
