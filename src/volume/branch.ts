/**
 * A branch: a snapshot made writable with a private overlay. The overlay is
 * a small lsnfs volume in a local directory used only for its log; the
 * branch's changes are records there, replayed on top of the snapshot state
 * at every mount. The shared device is never written (only the branch's
 * reader slot, which keeps the snapshot's versions from being reclaimed).
 *
 * The overlay log is never cleaned or checkpointed: it fills up (ENOSPC)
 * after --overlay-size bytes of changes.
 */
import { existsSync, promises as fsp } from 'node:fs';
import path from 'node:path';
import { BlockDevice, DEVICE_SECTOR_BYTES } from '../device/device';
import { FileDevice } from '../device/file-device';
import { RecordType, Superblock, alignDown } from '../log/format';
import { LogReader } from '../log/log-reader';
import { LogWriter, UNGUARDED } from '../log/log-writer';
import { readSuperblock, writeSuperblock } from '../log/superblock';
import { UserError } from '../util/errors';
import { mkfs } from './mkfs';
import { decodeMetaOp } from './meta-ops';
import { loadCheckpoint, logSpaceOf } from './recovery';
import { VolumeState } from './state';

export const DEFAULT_OVERLAY_BYTES = 1024 * 1024 * 1024;

interface BranchFile { deviceUuid: string; atLsn: number; createdAt: string }

export interface Overlay {
  device: BlockDevice;
  superblock: Superblock;
  reader: LogReader;
  writer: LogWriter;
}

function branchFilePath(dir: string): string { return path.join(dir, 'branch.json'); }

/** The LSN an existing branch in `dir` was made at, or null for a new branch. */
export async function existingBranchLsn(dir: string, deviceName: string, deviceUuid: string): Promise<number | null> {
  if (!existsSync(branchFilePath(dir))) return null;
  const branch = JSON.parse(await fsp.readFile(branchFilePath(dir), 'utf8')) as BranchFile;
  if (branch.deviceUuid !== deviceUuid) {
    throw new UserError(`overlay ${dir}: it branches volume ${branch.deviceUuid}, not ${deviceName} (${deviceUuid})`);
  }
  return branch.atLsn;
}

/**
 * Opens (or creates) the overlay in `dir` and replays its records onto
 * `state` (the snapshot at `atLsn`). Returns the writer for new changes.
 */
export async function openOverlay(dir: string, deviceUuid: string, atLsn: number, state: VolumeState, sizeBytes = DEFAULT_OVERLAY_BYTES): Promise<Overlay> {
  const imagePath = path.join(dir, 'overlay.img');
  if (!existsSync(branchFilePath(dir))) {
    await fsp.mkdir(dir, { recursive: true });
    const handle = await fsp.open(imagePath, 'w');
    await handle.truncate(sizeBytes);
    await handle.close();
    const fresh = await FileDevice.open(imagePath, { readOnly: false });
    await mkfs(fresh, { pageBytes: state.pageBytes, force: true });
    await fresh.close();
    const branch: BranchFile = { deviceUuid, atLsn, createdAt: new Date().toISOString() };
    await fsp.writeFile(branchFilePath(dir), JSON.stringify(branch, null, 2));
  }
  const device = await FileDevice.open(imagePath, { readOnly: false });
  const before = await readSuperblock(device);
  const space = logSpaceOf(device, before);
  const reader = new LogReader(space);
  // The overlay's own checkpoint is its empty mkfs state: only the records after it matter.
  const start = await loadCheckpoint(reader, imagePath, before.checkpointLsn, before.epoch);
  const scan = await reader.scan(start.endLsn, { maxEpoch: before.epoch }, ({ header, payload }) => {
    if (header.type === RecordType.Data) state.applyData(header, payload, true);
    else if (header.type === RecordType.Meta) state.applyMeta(header, decodeMetaOp(payload, header.lsn));
  });
  // A new epoch makes whatever a crash left past the tail stale, as on a primary.
  const superblock = { ...before, epoch: before.epoch + 1, generation: before.generation + 1 };
  await writeSuperblock(device, superblock);
  const sectorStart = alignDown(scan.stopLsn, DEVICE_SECTOR_BYTES);
  const sectorHead = scan.stopLsn > sectorStart ? await space.read(sectorStart, scan.stopLsn - sectorStart) : Buffer.alloc(0);
  const writer = new LogWriter(space, superblock.epoch, scan.stopLsn, UNGUARDED, sectorHead,
    () => superblock.headLsn + superblock.logBytes);
  return { device, superblock, reader, writer };
}
