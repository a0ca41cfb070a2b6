/**
 * Read-only views of a device for status, fsck and inspect. They open the
 * device without writing and work while a primary has it mounted.
 */
import { BlockDevice } from '../device/device';
import { DATA_BYTES_OFFSET, RECORD_FLAG_CONTINUES, RecordHeader, RecordType, Superblock, decodeDataHead, recordBytes } from '../log/format';
import { LogReader } from '../log/log-reader';
import { readSuperblock } from '../log/superblock';
import { Holder, readHolder } from '../fence/holder-block';
import { CorruptLogError, Recovered, applyRecord, describeStop, loadCheckpoint, logSpaceOf, recover } from './recovery';
import { Inode, VolumeState, isDir, versionLogBytes } from './state';
import { liveSlots, readSlots } from '../replica/slots';
import { retentionFloorLsn } from './snapshot';
import { DEFAULT_READER_TIMEOUT_MS, horizonOf, versionsNeededFromLsn } from './horizon';
import { decodeMetaOp } from './meta-ops';
import { formatPgLsn } from '../pg/control';

export interface VolumeStatus {
  device: string;
  uuid: string;
  formatVersion: number;
  pageSize: number;
  sizeBytes: number;
  logBytes: number;
  usedBytes: number;
  liveBytes: number;
  /** Of liveBytes, what a read at the tail needs: the rest is older versions kept for readers, retention and tombstones. */
  tailBytes: number;
  epoch: number;
  headLsn: number;
  tailLsn: number;
  /** The database LSN: highest PostgreSQL WAL position written to the volume (0 = no PostgreSQL WAL seen). */
  walLsn: number;
  /** The same in PostgreSQL's notation ("0/1A2B3C8"). */
  walLsnText: string;
  checkpointLsn: number;
  files: number;
  holder: Holder | null;
  /** Retention window in milliseconds (0 = none). */
  retainMs: number;
  /** The oldest LSN a snapshot can be taken at. */
  oldestLsn: number;
  replicas: ReplicaStatus[];
  /** Versions visible at or after this LSN are kept (null: nobody reads the past). */
  horizonLsn: number | null;
  tombstones: TombstoneStatus[];
}

export interface ReplicaStatus {
  host: string;
  pid: number;
  viewLsn: number;
  appliedLsn: number;
  lagBytes: number;
  lagMs: number;
  heartbeatAt: string;
  /** A PostgreSQL standby's mount: the database LSN its non-WAL tree is served at (0 for other readers). */
  viewWalLsn: number;
  /** A PostgreSQL standby's mount: bytes held in its private overlay. */
  overlayBytes: number;
  /** Files deleted at or after this LSN are kept for it (a standby still showing removed WAL segments); 0: none. */
  keepDeletedFromLsn: number;
  /** Past viewLsn: page versions visible from here on are kept for it (a standby keeps its view's older ones itself); 0: from viewLsn. */
  keepVersionsFromLsn: number;
  /** False once its heartbeat is older than the timeout: it no longer holds the horizon. */
  live: boolean;
}

export interface TombstoneStatus {
  ino: number;
  name: string;
  deletedAtLsn: number;
  bytes: number;
  /** Who still needs it: replica hosts whose view is older, and/or "retention". */
  heldBy: string[];
}

export async function volumeStatus(device: BlockDevice, replicaTimeoutMs = DEFAULT_READER_TIMEOUT_MS): Promise<VolumeStatus> {
  const superblock = await readSuperblock(device);
  const recovered = await recover(device, superblock, { exclusive: false });
  const nowMs = Date.now();
  const checkpoints = [...recovered.history, { lsn: superblock.checkpointLsn, timeMs: recovered.checkpointTimeMs }];
  const slots = await readSlots(device);
  const live = new Set(liveSlots(slots, nowMs, replicaTimeoutMs).map((slot) => slot.index));
  const replicas: ReplicaStatus[] = slots.map((slot) => ({
    host: slot.host, pid: slot.pid, viewLsn: slot.viewLsn, appliedLsn: slot.appliedLsn,
    lagBytes: Math.max(0, recovered.tailLsn - slot.viewLsn),
    lagMs: slot.viewLsn >= recovered.tailLsn ? 0 : Math.max(0, recovered.lastRecordTimeMs - slot.viewTimeMs),
    heartbeatAt: new Date(slot.heartbeatAtMs).toISOString(), live: live.has(slot.index),
    viewWalLsn: slot.viewWalLsn ?? 0, overlayBytes: slot.overlayBytes ?? 0, keepDeletedFromLsn: slot.keepDeletedFromLsn ?? 0,
    keepVersionsFromLsn: slot.keepVersionsFromLsn ?? 0,
  }));
  const retentionFloor = retentionFloorLsn(checkpoints, superblock.retainMs, nowMs);
  const liveReplicas = replicas.filter((r) => r.live);
  const { lsn: horizon, keepDeletedFromLsn } = horizonOf(liveReplicas, retentionFloor);
  const keepsDeleted = (r: ReplicaStatus, lsn: number): boolean => r.keepDeletedFromLsn !== 0 && r.keepDeletedFromLsn <= lsn;
  // Recovery kept tombstones by its own reading of the slots (default timeout) and the checkpoint
  // may hold ones the primary has since dropped: report what the primary keeps at this horizon.
  recovered.state.setHorizon(horizon, keepDeletedFromLsn);
  const tombstones: TombstoneStatus[] = [...recovered.state.tombstones.values()].map((t) => ({
    ino: t.inode.ino, name: t.name, deletedAtLsn: t.deletedAtLsn,
    bytes: [...t.inode.pages?.values() ?? []].flat().reduce((sum, v) => sum + versionLogBytes(v), 0),
    heldBy: [
      ...liveReplicas.filter((r) => versionsNeededFromLsn(r) <= t.deletedAtLsn || keepsDeleted(r, t.deletedAtLsn)).map((r) => r.host),
      ...(retentionFloor <= t.deletedAtLsn ? ['retention'] : []),
    ],
  }));
  return {
    device: device.name,
    uuid: superblock.uuid,
    formatVersion: superblock.formatVersion,
    pageSize: superblock.pageBytes,
    sizeBytes: superblock.deviceBytes,
    logBytes: superblock.logBytes,
    usedBytes: recovered.tailLsn - superblock.headLsn,
    liveBytes: recovered.state.liveBytes,
    tailBytes: recovered.state.tailVisibleBytes(),
    epoch: superblock.epoch,
    headLsn: superblock.headLsn,
    tailLsn: recovered.tailLsn,
    walLsn: recovered.walLsn,
    walLsnText: formatPgLsn(recovered.walLsn),
    checkpointLsn: superblock.checkpointLsn,
    files: recovered.state.inodes.size,
    holder: await readHolder(device),
    retainMs: superblock.retainMs,
    oldestLsn: checkpoints.filter((mark) => mark.lsn >= superblock.headLsn)[0]?.lsn ?? superblock.checkpointLsn,
    replicas,
    horizonLsn: Number.isFinite(horizon) ? horizon : null,
    tombstones,
  };
}

export interface FsckProblem { lsn?: number; path?: string; message: string }

export interface FsckReport {
  ok: boolean;
  device: string;
  headLsn: number;
  tailLsn: number;
  records: number;
  recordsByType: Record<string, number>;
  versionsChecked: number;
  inodes: number;
  problems: FsckProblem[];
}

/** Verifies every record from head to tail, then every index entry and the tree. */
export async function fsck(device: BlockDevice): Promise<FsckReport> {
  const superblock = await readSuperblock(device);
  const report: FsckReport = {
    ok: false, device: device.name, headLsn: superblock.headLsn, tailLsn: 0, records: 0, recordsByType: {},
    versionsChecked: 0, inodes: 0, problems: [],
  };
  let recovered: Recovered | null = null;
  try {
    recovered = await recover(device, superblock, { exclusive: false });
    report.tailLsn = recovered.tailLsn;
  } catch (error) {
    if (!(error instanceof CorruptLogError)) throw error;
    report.problems.push({ lsn: error.lsn, message: error.message });
  }
  const reader = new LogReader(logSpaceOf(device, superblock));
  const scan = await reader.scan(superblock.headLsn, { maxEpoch: superblock.epoch }, ({ header, payload }) => {
    report.records++;
    const type = RecordType[header.type] ?? String(header.type);
    report.recordsByType[type] = (report.recordsByType[type] ?? 0) + 1;
    if (header.type === RecordType.Meta) decodeMetaOp(payload, header.lsn);
  });
  if (recovered && scan.stopLsn < recovered.tailLsn) {
    report.problems.push({ lsn: scan.stopLsn, message: `record at LSN ${scan.stopLsn} is damaged (${describeStop(scan.stop)})` });
  }
  if (recovered) {
    await checkIndex(reader, recovered.state, report);
    checkTree(recovered.state, report);
  }
  report.ok = report.problems.length === 0;
  return report;
}

async function checkIndex(reader: LogReader, state: VolumeState, report: FsckReport): Promise<void> {
  for (const inode of state.inodes.values()) {
    for (const [pageNo, versions] of inode.pages ?? []) {
      for (const version of versions) {
        if (version.kind === 'zero') continue;
        report.versionsChecked++;
        const record = await reader.readRecord(version.loc, recordBytes(DATA_BYTES_OFFSET + version.length));
        const head = record && record.header.type === RecordType.Data ? decodeDataHead(record.payload) : null;
        if (!head || head.ino !== inode.ino || head.pageNo !== pageNo || (head.versionLsn || version.loc) !== version.versionLsn) {
          report.problems.push({
            lsn: version.loc,
            message: `inode ${inode.ino} page ${pageNo}: version ${version.versionLsn} points at LSN ${version.loc}, which is not its data record`,
          });
        }
      }
    }
  }
}

function checkTree(state: VolumeState, report: FsckReport): void {
  const links = new Map<number, number>();
  for (const inode of state.inodes.values()) {
    for (const [name, child] of inode.entries ?? []) {
      if (!state.inodes.has(child)) report.problems.push({ message: `directory inode ${inode.ino} entry '${name}' names missing inode ${child}` });
      links.set(child, (links.get(child) ?? 0) + 1);
    }
  }
  for (const inode of state.inodes.values()) {
    if (inode.ino !== 1 && !links.has(inode.ino)) report.problems.push({ message: `inode ${inode.ino} is in no directory` });
    if (!isDir(inode) && (links.get(inode.ino) ?? 0) !== inode.nlink) {
      report.problems.push({ message: `inode ${inode.ino} has nlink ${inode.nlink} but ${links.get(inode.ino) ?? 0} directory entries` });
    }
  }
  report.inodes = state.inodes.size;
}

export interface RecordSummary {
  lsn: number; epoch: number; type: string; bytes: number; timeMs: number; walLsn: number;
  ino?: number; page?: number; offset?: number; length?: number; versionLsn?: number; op?: unknown;
  /** More records of the same operation follow (readers on other hosts apply them together). */
  continues?: true;
}

/** Lists records from `fromLsn` (default: the head), at most `limit`. */
export async function listRecords(device: BlockDevice, options: { fromLsn?: number; limit: number }): Promise<RecordSummary[]> {
  const superblock = await readSuperblock(device);
  const reader = new LogReader(logSpaceOf(device, superblock));
  const out: RecordSummary[] = [];
  const from = Math.max(options.fromLsn ?? superblock.headLsn, superblock.headLsn);
  await reader.scan(from, { maxEpoch: superblock.epoch }, ({ header, payload }) => {
    if (out.length >= options.limit) return;
    out.push(summarize(header, payload));
  });
  return out.slice(0, options.limit);
}

function summarize(header: RecordHeader, payload: Buffer): RecordSummary {
  const base: RecordSummary = {
    lsn: header.lsn, epoch: header.epoch, type: RecordType[header.type] ?? String(header.type),
    bytes: recordBytes(header.payloadBytes), timeMs: header.timeMs, walLsn: header.walLsn,
    ...(header.flags & RECORD_FLAG_CONTINUES ? { continues: true as const } : {}),
  };
  if (header.type === RecordType.Data) {
    const head = decodeDataHead(payload);
    return { ...base, ino: head.ino, page: head.pageNo, offset: head.offsetInPage, length: head.length, versionLsn: head.versionLsn || header.lsn };
  }
  if (header.type === RecordType.Meta) return { ...base, op: decodeMetaOp(payload, header.lsn) };
  return base;
}

export interface PageVersionsReport { path: string; ino: number; page: number; versions: Array<{ versionLsn: number; loc: number; kind: string; offset: number; length: number }> }

export async function pageVersions(device: BlockDevice, path: string, page: number): Promise<PageVersionsReport> {
  const superblock: Superblock = await readSuperblock(device);
  const { state } = await recover(device, superblock, { exclusive: false });
  const inode: Inode = state.resolve(path);
  const versions = inode.pages?.get(page) ?? [];
  return {
    path, ino: inode.ino, page,
    versions: versions.map((v) => ({ versionLsn: v.versionLsn, loc: v.loc, kind: v.kind, offset: v.offsetInPage, length: v.length })),
  };
}

export interface PathEvent { lsn: number; time: string; op: string; detail: string }

/**
 * What happened at `path` over the retained log: creates, renames to and
 * from it, deletes, attribute changes and truncates of the file there, and
 * how many data writes it received in between. Replays from the oldest
 * checkpoint still in the log.
 */
export async function pathHistory(device: BlockDevice, path: string): Promise<{ path: string; fromLsn: number; events: PathEvent[] }> {
  const superblock = await readSuperblock(device);
  const reader = new LogReader(logSpaceOf(device, superblock));
  const newest = await loadCheckpoint(reader, device.name, superblock.checkpointLsn, superblock.epoch);
  const oldest = [...newest.history, { lsn: superblock.checkpointLsn, timeMs: newest.timeMs }].find((m) => m.lsn >= superblock.headLsn)!;
  const start = oldest.lsn === superblock.checkpointLsn ? newest : await loadCheckpoint(reader, device.name, oldest.lsn, superblock.epoch);
  const state = start.state;
  const inoAt = (): number | null => { try { return state.resolve(path).ino; } catch { return null; } };
  const events: PathEvent[] = [];
  let writes = 0;
  const flushWrites = (lsn: number, timeMs: number): void => {
    if (writes > 0) events.push({ lsn, time: new Date(timeMs).toISOString(), op: 'write', detail: `${writes} page write(s)` });
    writes = 0;
  };
  await reader.scan(start.endLsn, { minEpoch: start.epoch, maxEpoch: superblock.epoch }, ({ header, payload }) => {
    const before = inoAt();
    if (header.type === RecordType.Data) {
      if (before !== null && decodeDataHead(payload).ino === before && decodeDataHead(payload).versionLsn === 0) writes++;
      applyRecord(state, header, payload);
      return;
    }
    if (header.type !== RecordType.Meta) return;
    const op = decodeMetaOp(payload, header.lsn);
    applyRecord(state, header, payload);
    const after = inoAt();
    const touchesInode = before !== null && 'ino' in op && op.ino === before && op.op !== 'create';
    if (before === after && !touchesInode) return;
    flushWrites(header.lsn, header.timeMs);
    const detail = before === after ? `inode ${before}` : before === null ? `now inode ${after}` : after === null ? `inode ${before} gone` : `inode ${before} replaced by ${after}`;
    events.push({ lsn: header.lsn, time: new Date(header.timeMs).toISOString(), op: `${op.op} ${JSON.stringify(op)}`, detail });
  });
  flushWrites(Number.NaN, Date.now());
  return { path, fromLsn: oldest.lsn, events };
}
