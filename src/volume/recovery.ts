/**
 * Rebuilding the in-memory state from the device: load the checkpoint the
 * superblock points to, replay every record after it, and stop at the end of
 * the log. A stop caused by damage that later durable records prove was
 * acknowledged is corruption and is refused, never silently truncated.
 */
import { BlockDevice } from '../device/device';
import { UserError } from '../util/errors';
import { RECORD_FLAG_CHECKPOINT_LAST, RecordHeader, RecordType, Superblock, recordBytes, volumeSalt } from '../log/format';
import { LogReader, LogRecord, ScanStop } from '../log/log-reader';
import { LogSpace } from '../log/log-space';
import { CheckpointMark, deserializeState } from './checkpoint';
import { readHorizon } from './horizon';
import { DurableMarker, readDurableMarker } from '../log/durable-marker';
import { holderHeartbeats, readHolder } from '../fence/holder-block';
import { decodeMetaOp } from './meta-ops';
import { VolumeState } from './state';

export interface Recovered {
  state: VolumeState;
  /** Earlier checkpoints still in the log, oldest first (from the newest checkpoint). */
  history: CheckpointMark[];
  /** Wall-clock time of the last record replayed (the checkpoint's when none). */
  lastRecordTimeMs: number;
  checkpointTimeMs: number;
  /** First LSN after the last valid record: where the next record goes. */
  tailLsn: number;
  /** Epoch of the last valid record. */
  lastEpoch: number;
  /** Size of the checkpoint that was loaded (for space reserve planning). */
  checkpointBytes: number;
  stop: ScanStop;
  replayedRecords: number;
  /** The highest PostgreSQL WAL position any replayed record (or the checkpoint) carries: where a new primary's tags resume. */
  walLsn: number;
}

export class CorruptLogError extends UserError {
  /** `proof`: why the damaged record must have been durable (acknowledged). */
  constructor(readonly deviceName: string, readonly lsn: number, readonly reason: string, proof: string) {
    super(
      `device ${deviceName}: log record at LSN ${lsn} is damaged (${reason}) but ${proof}; ` +
        `refusing to mount rather than drop acknowledged data. Run 'lsnfs fsck --device ${deviceName}'.`,
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

export interface LoadedCheckpoint {
  state: VolumeState;
  history: CheckpointMark[];
  checkpointBytes: number;
  /** First LSN after the checkpoint's last chunk: replay starts here. */
  endLsn: number;
  epoch: number;
  timeMs: number;
  /** The walLsn tag of the checkpoint's last chunk. */
  walLsn: number;
}

/** Reads the checkpoint whose first chunk is at `lsn`. */
export async function loadCheckpoint(reader: LogReader, deviceName: string, lsn: number, maxEpoch: number): Promise<LoadedCheckpoint> {
  const chunks: Buffer[] = [];
  let loaded: LoadedCheckpoint | null = null;
  const scan = await reader.scan(lsn, { maxEpoch }, ({ header, payload }) => {
    if (header.type !== RecordType.Checkpoint) {
      throw new UserError(`device ${deviceName}: expected a checkpoint at LSN ${lsn}, found a record of type ${header.type} at LSN ${header.lsn}`);
    }
    chunks.push(Buffer.from(payload));
    if (!(header.flags & RECORD_FLAG_CHECKPOINT_LAST)) return true;
    const bytes = Buffer.concat(chunks);
    const { state, history } = deserializeState(bytes);
    loaded = {
      state, history, checkpointBytes: bytes.length, endLsn: header.lsn + recordBytes(header.payloadBytes),
      epoch: header.epoch, timeMs: header.timeMs, walLsn: header.walLsn,
    };
    return false;
  });
  if (loaded === null) {
    throw new UserError(
      `device ${deviceName}: the checkpoint at LSN ${lsn} is damaged (stopped at LSN ${scan.stopLsn}: ${describeStop(scan.stop)}); run 'lsnfs fsck'`,
    );
  }
  return loaded;
}

/**
 * Loads the newest checkpoint and replays the log after it to its end.
 *
 * `exclusive`: the caller holds the device (a primary mounting), so nobody
 * writes while we read and any later evidence proves a stop is damage.
 * Otherwise (status, fsck, inspect) a primary may be appending right now: a
 * record written after our read of the tail would "prove" that tail damaged.
 * Then only evidence taken BEFORE the scan counts: the durable marker read
 * first. A primary that no longer heartbeats writes nothing, so its log gets
 * the exclusive rule.
 */
export async function recover(device: BlockDevice, superblock: Superblock, options: { exclusive: boolean }): Promise<Recovered> {
  const liveWriter = !options.exclusive && (await readHolder(device).then((holder) => holder !== null && holderHeartbeats(holder)));
  const markerBeforeScan = liveWriter ? await readDurableMarker(device) : null;
  const reader = new LogReader(logSpaceOf(device, superblock));
  const checkpoint = await loadCheckpoint(reader, device.name, superblock.checkpointLsn, superblock.epoch);
  const state = checkpoint.state;
  // Deletions replayed below must keep what live readers and retention still need.
  const horizon = await readHorizon(device, [...checkpoint.history, { lsn: superblock.checkpointLsn, timeMs: checkpoint.timeMs }], superblock.retainMs);
  // A damaged slot's reader may read anything: keep it all until the horizon can be read (the primary rereads it).
  // A primary mounting keeps what the checkpoint shows: a reader that registers after this read of the
  // slots reads from that checkpoint on (Volume.updateHorizon holds the same rule once the primary writes).
  state.horizonLsn = 'damaged' in horizon ? 0 : options.exclusive ? Math.min(horizon.lsn, superblock.checkpointLsn) : horizon.lsn;
  state.keepDeletedFromLsn = 'damaged' in horizon ? 0 : horizon.keepDeletedFromLsn;
  let replayedRecords = 0;
  let lastRecordTimeMs = checkpoint.timeMs;
  let walLsn = checkpoint.walLsn;
  const scan = await reader.scan(checkpoint.endLsn, { maxEpoch: superblock.epoch, minEpoch: checkpoint.epoch }, ({ header, payload }: LogRecord) => {
    applyRecord(state, header, payload);
    lastRecordTimeMs = header.timeMs;
    walLsn = Math.max(walLsn, header.walLsn);
    replayedRecords++;
  });
  if (scan.stop !== 'end-of-range') {
    const proof = liveWriter
      ? markerBeforeScan && markerProves(markerBeforeScan, scan.stopLsn, scan.lastEpoch)
      : await durabilityProof(device, reader, scan.stopLsn, scan.lastEpoch, superblock.headLsn);
    if (proof) throw new CorruptLogError(device.name, scan.stopLsn, describeStop(scan.stop), proof);
  }
  return {
    state, history: checkpoint.history, tailLsn: scan.stopLsn, lastEpoch: scan.lastEpoch, lastRecordTimeMs,
    checkpointBytes: checkpoint.checkpointBytes, checkpointTimeMs: checkpoint.timeMs, stop: scan.stop, replayedRecords, walLsn,
  };
}

function markerProves(marker: DurableMarker, stopLsn: number, lastEpoch: number): string | null {
  return marker.epoch >= lastEpoch && marker.durableLsn > stopLsn
    ? `the primary (epoch ${marker.epoch}) recorded the log durable up to LSN ${marker.durableLsn}`
    : null;
}

/**
 * Evidence that the log was durable past `stopLsn`, so that whatever is
 * there was acknowledged: a later record stamped with a durable prefix past
 * it, or the primary's durable marker (which also covers the last batch,
 * after which no record could vouch for it).
 */
async function durabilityProof(device: BlockDevice, reader: LogReader, stopLsn: number, lastEpoch: number, headLsn: number): Promise<string | null> {
  const successor = await reader.findDurableSuccessor(stopLsn, lastEpoch, headLsn);
  if (successor) return `durable records follow it (LSN ${successor.lsn})`;
  const marker = await readDurableMarker(device);
  return marker && markerProves(marker, stopLsn, lastEpoch);
}

export function describeStop(stop: ScanStop): string {
  switch (stop) {
    case 'no-record': return 'bad header checksum or not a record';
    case 'payload-checksum': return 'payload checksum mismatch';
    case 'stale-epoch': return 'record of an older epoch';
    case 'end-of-range': return 'end of range';
  }
}
