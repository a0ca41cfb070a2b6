/**
 * A mounted lsnfs volume: the POSIX-shaped operations the FUSE adapter calls,
 * built on the log (writes become records) and the state (records become the
 * tree and the page index). Every mutation follows one pattern:
 *
 *   await room in the log  ->  validate against the state  ->  append record
 *   ->  apply the same record to the state          (no await in between)
 *
 * so the state always equals a replay of the log, and concurrent operations
 * never see each other half-done.
 */
import { BlockDevice, DEVICE_SECTOR_BYTES } from '../device/device';
import { FsError, UserError, assert } from '../util/errors';
import {
  DATA_BYTES_OFFSET, RECORD_FLAG_CHECKPOINT_LAST, RECORD_FLAG_CONTINUES, RECORD_FLAG_SAME_CONTENT, RecordType, Superblock, alignDown, decodeDataHead,
  encodeDataPayload, recordBytes,
} from '../log/format';
import { LogReader } from '../log/log-reader';
import { LogSpace } from '../log/log-space';
import { LogWriter } from '../log/log-writer';
import { readSuperblock, writeSuperblock } from '../log/superblock';
import { HOLDER_HEARTBEAT_INTERVAL_MS } from '../fence/holder-block';
import { WriterLease, acquireWriterLease, registerReader } from '../fence/writer-lease';
import { CheckpointMark, serializeState } from './checkpoint';
import { Cleaner } from './cleaner';
import { MetaOp, encodeMetaOp } from './meta-ops';
import { loadCheckpoint, logSpaceOf, recover } from './recovery';
import { loadSnapshot, retentionFloorLsn } from './snapshot';
import { Overlay, existingBranchLsn, openOverlay } from './branch';
import { DEFAULT_READER_TIMEOUT_MS, horizonOf } from './horizon';
import { writeDurableMarker } from '../log/durable-marker';
import { ReplicaSlot, claimSlot, describeDamagedSlots, liveSlots, readSlotArea, writeSlot } from '../replica/slots';
import { Tailer } from '../replica/tailer';
import { WalPositionTracker } from './wal-position';
import { isRelationFilePath } from '../pg/control';
import { HeldPiece, SplitPageWrites } from './split-writes';
import { AttrChange, DirEntry, FileSystem, readPages } from './file-system';
import pino from 'pino';

const log = pino({ name: 'lsnfs-volume' }, pino.destination(2));
import { Inode, PageVersion, ROOT_INO, S_IFDIR, S_IFLNK, S_IFMT, VolumeState, isDir, isRegular, isSymlink } from './state';

/** A checkpoint chunk; a checkpoint is a run of these records. */
const CHECKPOINT_CHUNK_BYTES = 1024 * 1024;
/** Log growth after which a new checkpoint is written (bounds replay time). */
const CHECKPOINT_INTERVAL_BYTES = 64 * 1024 * 1024;
/**
 * A primary that has written nothing for IDLE_CHECKPOINT_MS checkpoints if at
 * least IDLE_CHECKPOINT_MIN_BYTES of log, and more than its last checkpoint's
 * size, came after that checkpoint:
 * every mount (a new replica or standby, a failover) replays the log from the
 * newest checkpoint, up to CHECKPOINT_INTERVAL_BYTES of it; after a burst of
 * writes that is most of a mount's time, and an idle moment costs nothing.
 */
const IDLE_CHECKPOINT_MS = 1000;
const IDLE_CHECKPOINT_MIN_BYTES = 1024 * 1024;
/** Deltas on one page before a read folds them into a fresh image. */
const MAX_DELTAS_PER_PAGE = 16;
/** Room a metadata operation asks for (one record, with slack for a pad). */
const META_RECORD_ROOM_BYTES = 4096 + DEVICE_SECTOR_BYTES;
/** How often a replica checks whether the primary's cleaner passed it. */
const HEAD_CHECK_INTERVAL_MS = 500;
const NAME_MAX_BYTES = 255;
/** How deep below the root a primary looks for PostgreSQL data directories at mount. */
const DATA_DIR_SEARCH_DEPTH = 4;

export interface Stat {
  ino: number; mode: number; uid: number; gid: number; nlink: number; size: number;
  atimeMs: number; mtimeMs: number; ctimeMs: number; blocks: number; blksize: number;
}

export interface StatFs {
  blockBytes: number; totalBlocks: number; freeBlocks: number; files: number; freeFiles: number; nameMax: number;
}

export type MountRole = 'primary' | 'replica' | 'snapshot';

export interface VolumeOpenOptions {
  host: string;
  /** A reader whose heartbeat is older than this no longer holds the GC horizon (default DEFAULT_READER_TIMEOUT_MS). */
  replicaTimeoutMs?: number;
}

export interface ReaderOpenOptions {
  host: string;
  role: 'replica' | 'snapshot';
  /** Snapshot: the LSN to read at (state after every record below it). */
  atLsn?: number;
  /** Snapshot: the wall-clock time to read at (converted to the LSN of that moment). */
  atTimeMs?: number;
  /** Snapshot: make it writable, keeping its changes in this local directory (a branch). */
  overlayDir?: string;
  pollIntervalMs: number;
}

/** How often the primary reads the replica slots to move the GC horizon. */
const HORIZON_POLL_MS = 100;
/** Unflushed writes become durable (and visible to replicas) within this time even without fsync. */
const BACKGROUND_FLUSH_MS = 200;

export class Volume implements FileSystem {
  private timers: NodeJS.Timeout[] = [];
  private checkpointInFlight: Promise<void> | null = null;
  private superblockLock: Promise<void> = Promise.resolve();
  /** About where the newest checkpoint's records end (the superblock names where they start). */
  private checkpointEndLsn: number;
  private markerWrite: Promise<void> = Promise.resolve();
  private closed = false;
  /** The damaged slots last warned about (updateHorizon), so that a lasting damage is said once. */
  private damagedSlotsLogged: string | null = null;
  /** Slots found damaged, by index: since when, without a break (see readersNow). */
  private readonly damagedSlotsSinceMs = new Map<number, number>();
  readonly cleaner: Cleaner | null;
  /** Checkpoints still in the log, oldest first, the newest last. */
  checkpoints: CheckpointMark[];
  /** A replica's or snapshot's reader of the primary's log. */
  tailer: Tailer | null = null;
  replicaTimeoutMs = DEFAULT_READER_TIMEOUT_MS;
  /** Primary: the live readers' slots as the horizon last read them. */
  liveReaders: readonly ReplicaSlot[] = [];
  /** Primary: follows PostgreSQL's WAL position from writes to pg_wal (stamped on every record). */
  private readonly walPosition = new WalPositionTracker();
  /** Pieces of relation-page writes the kernel split, held until the rest of the page comes. */
  readonly splitWrites: SplitPageWrites;

  private constructor(
    readonly device: BlockDevice,
    public superblock: Superblock,
    public state: VolumeState,
    readonly reader: LogReader,
    readonly role: MountRole,
    private readonly writer: LogWriter | null,
    private readonly reservation: WriterLease | null,
    /** A branch's private log (the writer then appends there). */
    private readonly overlay: Overlay | null,
    /** Size of the newest checkpoint, to keep room for the next one. */
    public checkpointBytes: number,
    checkpoints: CheckpointMark[],
  ) {
    this.cleaner = role === 'primary' && writer ? new Cleaner(this, writer) : null;
    this.checkpoints = checkpoints;
    this.checkpointEndLsn = superblock.checkpointLsn + checkpointBytes;
    this.splitWrites = new SplitPageWrites(state.pageBytes, (piece) => this.appendPiece(piece));
  }

  get pageBytes(): number { return this.state.pageBytes; }
  /** The LSN this mount serves: the log tail on a primary, the view on a replica or snapshot. */
  get tailLsn(): number { return this.writer ? this.writer.tailLsn : this.tailer!.viewLsn; }
  get durableLsn(): number { return this.writer ? this.writer.durableLsn : this.tailer!.viewLsn; }
  get epoch(): number { return this.writer ? this.writer.epoch : this.superblock.epoch; }
  /** Primary: the database LSN, the highest PostgreSQL WAL position written (0: none seen); a reader does not follow it. */
  get walLsn(): number { return this.writer?.walLsn ?? 0; }

  /**
   * Mounts read-write: take the reservation, recover the log, bump the epoch
   * (records of older epochs past the tail are now stale), and start the log
   * with an Epoch record.
   */
  static async openPrimary(device: BlockDevice, options: VolumeOpenOptions): Promise<Volume> {
    const startMs = Date.now();
    const before = await readSuperblock(device);
    const reservation = await acquireWriterLease(device, options.host, before.epoch + 1);
    const leaseMs = Date.now() - startMs;
    // A refused recovery (damaged log) must not leave this host holding the device.
    const recovered = await recover(device, before, { exclusive: true }).catch(async (error: unknown) => {
      await reservation.release();
      throw error;
    });
    // What a failover's "mount primary" phase spends, and on how much log.
    log.info({
      leaseMs, recoveryMs: Date.now() - startMs - leaseMs, checkpointLsn: before.checkpointLsn, checkpointBytes: recovered.checkpointBytes,
      replayedRecords: recovered.replayedRecords, tailLsn: recovered.tailLsn,
    }, 'recovered');
    const superblock = { ...before, epoch: before.epoch + 1, generation: before.generation + 1 };
    await writeSuperblock(device, superblock);
    const space = logSpaceOf(device, superblock);
    const sectorStart = alignDown(recovered.tailLsn, DEVICE_SECTOR_BYTES);
    const sectorHead = recovered.tailLsn > sectorStart ? await space.read(sectorStart, recovered.tailLsn - sectorStart) : Buffer.alloc(0);
    let volume: Volume | null = null;
    // Losing the lease at either point fences this mount for good.
    const fenceOnLoss = (ask: () => Promise<void>) => () => ask().catch((error: Error) => { volume?.fence(error); throw error; });
    const guard = { beforeWrite: fenceOnLoss(() => reservation.check()), beforeAck: fenceOnLoss(() => reservation.confirm()) };
    const writer = new LogWriter(space, superblock.epoch, recovered.tailLsn, guard, sectorHead, () => (volume?.superblock ?? superblock).headLsn + superblock.logBytes,
    (durableLsn) => volume?.publishDurable(durableLsn));
    const checkpoints = [...recovered.history, { lsn: before.checkpointLsn, timeMs: recovered.checkpointTimeMs }];
    volume = new Volume(device, superblock, recovered.state, new LogReader(space), 'primary', writer, reservation, null, recovered.checkpointBytes, checkpoints);
    if (options.replicaTimeoutMs !== undefined) volume.replicaTimeoutMs = options.replicaTimeoutMs;
    // Tags never go back: a remount resumes from the highest WAL position the log already carries.
    writer.walLsn = recovered.walLsn;
    await volume.learnDataDirectories();
    writer.append(RecordType.Epoch, Buffer.from(JSON.stringify({ host: options.host, pid: process.pid, epoch: superblock.epoch })));
    await writer.sync();
    await volume.updateHorizon();
    const primary = volume;
    reservation.onLost((error) => primary.fence(error));
    primary.every(HOLDER_HEARTBEAT_INTERVAL_MS, () => reservation.heartbeat());
    primary.every(HORIZON_POLL_MS, () => primary.updateHorizon());
    primary.every(BACKGROUND_FLUSH_MS, async () => { if (writer.tailLsn > writer.durableLsn) await writer.sync(); });
    let tailSeenLsn = writer.tailLsn;
    let noRoomAtLsn = -1;
    primary.every(IDLE_CHECKPOINT_MS, async () => {
      const idle = writer.tailLsn === tailSeenLsn;
      tailSeenLsn = writer.tailLsn;
      // Worth it only when the log to replay outweighs the checkpoint a mount would read instead.
      const replayBytes = writer.tailLsn - primary.checkpointEndLsn;
      if (!idle || replayBytes < Math.max(IDLE_CHECKPOINT_MIN_BYTES, primary.checkpointBytes) || noRoomAtLsn === writer.tailLsn) return;
      await primary.checkpoint().catch((error: Error) => {
        if (!(error instanceof FsError && error.errno === 'ENOSPC')) throw error;
        noRoomAtLsn = writer.tailLsn; // no room: try again once something changed
      });
      tailSeenLsn = writer.tailLsn;
    });
    return volume;
  }

  /**
   * Mounts read-only on a device another host writes: a replica follows the
   * log tail; a snapshot serves one past LSN. Neither writes anything but its
   * own slot.
   */
  static async openReader(device: BlockDevice, options: ReaderOpenOptions): Promise<Volume> {
    const superblock = await readSuperblock(device);
    const reader = new LogReader(logSpaceOf(device, superblock));
    await registerReader(device, options.host);
    const slotIndex = await claimSlot(device, options.host, DEFAULT_READER_TIMEOUT_MS);
    // Hold the log from the checkpoint on before reading it, so the primary's cleaner keeps it.
    await writeSlot(device, slotIndex, {
      host: options.host, pid: process.pid, viewLsn: superblock.checkpointLsn, appliedLsn: superblock.checkpointLsn,
      viewTimeMs: 0, heartbeatAtMs: Date.now(),
    });
    // A reader that fails to open (a refused snapshot, a damaged checkpoint) must not leave its slot holding the horizon.
    return Volume.openReaderInSlot(device, options, superblock, reader, slotIndex)
      .catch(async (error: unknown) => { await writeSlot(device, slotIndex, null).catch(() => undefined); throw error; });
  }

  private static async openReaderInSlot(
    device: BlockDevice, options: ReaderOpenOptions, superblock: Superblock, reader: LogReader, slotIndex: number,
  ): Promise<Volume> {
    if (options.overlayDir !== undefined && options.role !== 'snapshot') throw new UserError('--overlay applies to --role snapshot only');
    const branchLsn = options.overlayDir !== undefined ? await existingBranchLsn(options.overlayDir, device.name, superblock.uuid) : null;
    if (branchLsn !== null && options.atLsn !== undefined && options.atLsn !== branchLsn) {
      throw new UserError(`overlay ${options.overlayDir}: the branch was made at LSN ${branchLsn}, not ${options.atLsn}`);
    }
    if (options.role === 'snapshot' && branchLsn === null && options.atLsn === undefined && options.atTimeMs === undefined) {
      throw new UserError(`overlay ${options.overlayDir}: no branch there yet; give --at-lsn or --at-time to make one`);
    }
    const startedMs = Date.now();
    const start = options.role === 'snapshot'
      ? await loadSnapshot(device, superblock, reader, branchLsn !== null ? { atLsn: branchLsn } : options)
      : await loadCheckpoint(reader, device.name, (await readSuperblock(device)).checkpointLsn, Number.MAX_SAFE_INTEGER)
        .then((checkpoint) => ({ checkpoint, viewLsn: checkpoint.endLsn, viewTimeMs: checkpoint.timeMs, epoch: checkpoint.epoch, nextLsn: checkpoint.endLsn }));
    const checkpoints = [...start.checkpoint.history, { lsn: superblock.checkpointLsn, timeMs: start.checkpoint.timeMs }];
    const overlay = options.overlayDir !== undefined
      ? await openOverlay(options.overlayDir, superblock.uuid, start.viewLsn, start.checkpoint.state)
      : null;
    const volume = new Volume(device, superblock, start.checkpoint.state, reader, options.role, overlay?.writer ?? null, null, overlay, start.checkpoint.checkpointBytes, checkpoints);
    volume.tailer = new Tailer(volume.state, {
      device, reader, slotIndex, host: options.host, mode: options.role,
      startLsn: start.nextLsn, viewLsn: start.viewLsn, viewTimeMs: start.viewTimeMs, startEpoch: start.epoch,
      pollIntervalMs: options.pollIntervalMs,
    });
    await volume.tailer.start();
    if (options.role === 'replica') {
      // Catch up before serving, so a new replica starts near the tail.
      const loadedMs = Date.now();
      try {
        while ((await volume.tailer.poll()) > 0);
      } catch (error) {
        // Its timer would go on publishing the slot that the caller frees.
        await volume.tailer.stop().catch(() => undefined);
        throw error;
      }
      // Where a new replica's (or standby's) mount time goes.
      log.info({
        checkpointLsn: superblock.checkpointLsn, checkpointBytes: start.checkpoint.checkpointBytes, loadMs: loadedMs - startedMs,
        caughtUpBytes: volume.tailer.appliedLsn - start.nextLsn, catchUpMs: Date.now() - loadedMs,
      }, 'replica caught up');
      volume.every(HEAD_CHECK_INTERVAL_MS, () => volume.reloadIfBehind());
    }
    return volume;
  }

  /** Reads pg_control of every PostgreSQL data directory on the volume (a directory holding pg_wal/ and global/pg_control). */
  private async learnDataDirectories(): Promise<void> {
    const visit = async (dirPath: string, dir: Inode, depth: number): Promise<void> => {
      const entries = dir.entries!;
      const globalIno = entries.get('global');
      const controlIno = globalIno !== undefined ? this.state.inodes.get(globalIno)?.entries?.get('pg_control') : undefined;
      if (entries.has('pg_wal') && controlIno !== undefined) {
        this.walPosition.learnControlFile(dirPath, await this.read(controlIno, 0, this.pageBytes));
        return;
      }
      // Data directories sit near the root of a volume; do not walk a whole tree of files.
      if (depth >= DATA_DIR_SEARCH_DEPTH) return;
      for (const [name, ino] of entries) {
        const child = this.state.inodes.get(ino);
        if (child && isDir(child)) await visit(`${dirPath === '/' ? '' : dirPath}/${name}`, child, depth + 1);
      }
    };
    await visit('/', this.state.inode(ROOT_INO), 0);
  }

  /** Runs `task` every `intervalMs` (never overlapping itself) until close; a failure fences a primary. */
  private every(intervalMs: number, task: () => Promise<void>): void {
    let running = false;
    const timer = setInterval(() => {
      if (running || this.closed) return;
      running = true;
      task().catch((error: Error) => {
        if (this.writer) this.fence(error);
        else log.error({ err: error }, 'background task failed');
      }).finally(() => { running = false; });
    }, intervalMs);
    timer.unref();
    this.timers.push(timer);
  }

  /** A replica the primary stopped waiting for reloads from the newest checkpoint. */
  private async reloadIfBehind(): Promise<void> {
    const tailer = this.tailer!;
    if (!tailer.fellBehind) return;
    if (tailer.gate) {
      // A standby's tree must stay at its view L; a checkpoint's state is newer than that. Stop serving instead.
      if (!tailer.gate.failure) log.error({ reason: tailer.fellBehind }, 'standby fell behind the log head; restart it on a fresh overlay');
      tailer.gate.failure = `the standby's replica fell behind the primary's log head (${tailer.fellBehind}); restart the standby with a fresh overlay`;
      return;
    }
    // Between polls: a round in flight would apply records read before the reload onto the reloaded
    // state. And a replica that has since caught up past the newest checkpoint keeps going: reloading
    // would take its view back to an older state than it has already served.
    await tailer.betweenPolls(async () => {
      const superblock = await readSuperblock(this.device);
      if (tailer.appliedLsn >= superblock.checkpointLsn) { tailer.fellBehind = null; return; }
      log.warn({ reason: tailer.fellBehind }, 'replica fell behind the log head; reloading from the newest checkpoint');
      this.superblock = superblock;
      const checkpoint = await loadCheckpoint(this.reader, this.device.name, superblock.checkpointLsn, Number.MAX_SAFE_INTEGER);
      this.state = checkpoint.state;
      tailer.reset(checkpoint.state, checkpoint.endLsn, checkpoint.epoch, checkpoint.timeMs);
    });
  }

  /** This host may no longer write: fail everything pending and refuse the rest. */
  private fence(error: Error): void {
    this.writer?.fail(error);
  }

  /** After an idle flush: tell readers on other hosts how far the log is durable. */
  private publishDurable(durableLsn: number): void {
    this.markerWrite = this.markerWrite
      .then(() => writeDurableMarker(this.device, { epoch: this.epoch, durableLsn, timeMs: Date.now() }))
      .then(() => this.writer?.markerWritten(durableLsn))
      .catch((error: Error) => this.fence(error));
  }

  /**
   * The GC horizon: the oldest LSN a live replica or snapshot reads at, and
   * the start of the retention window. Versions visible at or after it are
   * kept; tombstones older than it are dropped unless a standby still shows
   * them (keepDeletedFromLsn).
   */
  async updateHorizon(): Promise<void> {
    // A reader whose slot this read misses wrote it after the read began, and only then read the log:
    // its view is at least what the device vouched for as durable before the read. The horizon stays
    // below that, else a base written since would drop a version that view still shows (a new
    // standby's tree stays there until its L moves).
    const newReaderViewLsn = this.writer?.vouchedLsn ?? Number.POSITIVE_INFINITY;
    const { live, unaccounted } = await this.readersNow();
    this.liveReaders = live;
    if (unaccounted.length > 0) {
      // Kept where it was until every reader can be accounted for; said once per damage.
      const damage = describeDamagedSlots(this.device, unaccounted);
      if (damage !== this.damagedSlotsLogged) log.warn(damage);
      this.damagedSlotsLogged = damage;
      return;
    }
    this.damagedSlotsLogged = null;
    const horizon = horizonOf(live, Math.min(newReaderViewLsn, retentionFloorLsn(this.checkpoints, this.superblock.retainMs, Date.now())));
    if (horizon.lsn === this.state.horizonLsn && horizon.keepDeletedFromLsn === this.state.keepDeletedFromLsn) return;
    this.state.setHorizon(horizon.lsn, horizon.keepDeletedFromLsn);
  }

  /** Whether a live reader has not yet consumed the log up to `lsn` (the cleaner waits for it); a damaged slot's reader may not have. */
  async readerBehind(lsn: number): Promise<boolean> {
    const { live, unaccounted } = await this.readersNow();
    return unaccounted.length > 0 || live.some((r) => r.appliedLsn < lsn);
  }

  /**
   * The live readers, and the damaged slots that may be live readers': a
   * live reader rewrites its slot every 200 ms, so one that stays damaged
   * longer than the reader timeout is a dead reader's, like a slot whose
   * heartbeat stopped (else one bad sector would stop the horizon and the
   * cleaner for good).
   */
  private async readersNow(): Promise<{ live: ReplicaSlot[]; unaccounted: number[] }> {
    const { slots, damaged } = await readSlotArea(this.device);
    const nowMs = Date.now();
    for (const index of this.damagedSlotsSinceMs.keys()) if (!damaged.includes(index)) this.damagedSlotsSinceMs.delete(index);
    for (const index of damaged) if (!this.damagedSlotsSinceMs.has(index)) this.damagedSlotsSinceMs.set(index, nowMs);
    return {
      live: liveSlots(slots, nowMs, this.replicaTimeoutMs),
      unaccounted: damaged.filter((index) => nowMs - this.damagedSlotsSinceMs.get(index)! <= this.replicaTimeoutMs),
    };
  }

  // -------------------------------------------------------------------------
  // Lookups

  resolve(path: string): Inode { return this.state.resolve(path); }
  getattr(path: string): Stat { return this.stat(this.resolve(path)); }
  fgetattr(ino: number, path: string): Stat { return this.stat(this.state.inodes.get(ino) ?? this.resolve(path)); }
  lookupIno(path: string): number { return this.resolve(path).ino; }

  stat(inode: Inode): Stat {
    return {
      ino: inode.ino, mode: inode.mode, uid: inode.uid, gid: inode.gid, nlink: inode.nlink,
      size: Math.max(inode.size, this.splitWrites.heldEnd(inode.ino)),
      atimeMs: inode.atimeMs, mtimeMs: inode.mtimeMs, ctimeMs: inode.ctimeMs,
      blocks: this.allocatedBlocks(inode), blksize: this.pageBytes,
    };
  }

  /** 512-byte blocks the file holds: what du and sparse-file checks read. */
  private allocatedBlocks(inode: Inode): number {
    if (!inode.pages) return 0;
    return (inode.pages.size * this.pageBytes) / 512;
  }

  readdir(path: string): DirEntry[] {
    const dir = this.resolve(path);
    if (!dir.entries) throw new FsError('ENOTDIR', path);
    return [...dir.entries].map(([name, ino]) => ({ name, fileType: this.state.inode(ino).mode & S_IFMT }));
  }

  readlink(path: string): string {
    const inode = this.resolve(path);
    if (!isSymlink(inode)) throw new FsError('EINVAL', path);
    return inode.target!;
  }

  statfs(): StatFs {
    // The cleaner's reserve (it grows with the state) counts as used, like ext4's reserved blocks.
    const freeBytes = Math.max(0, this.superblock.logBytes - (this.cleaner?.reserveBytes() ?? 0) - this.state.liveBytes);
    return {
      blockBytes: this.pageBytes,
      totalBlocks: Math.floor(this.superblock.logBytes / this.pageBytes),
      freeBlocks: Math.floor(freeBytes / this.pageBytes),
      files: this.state.inodes.size + 1_000_000,
      freeFiles: 1_000_000,
      nameMax: NAME_MAX_BYTES,
    };
  }

  // -------------------------------------------------------------------------
  // Namespace changes

  async create(path: string, mode: number, uid: number, gid: number, target?: string): Promise<Inode> {
    return this.metaChange(() => {
      const { parent, name } = this.parentForNewEntry(path);
      const ino = this.state.nextIno;
      this.appendMeta({ op: 'create', parent: parent.ino, name, ino, mode, uid, gid, ...(target !== undefined ? { target } : {}) });
      return this.state.inode(ino);
    });
  }

  mkdir(path: string, mode: number, uid: number, gid: number): Promise<Inode> {
    return this.create(path, S_IFDIR | (mode & 0o7777), uid, gid);
  }

  symlink(target: string, path: string, uid: number, gid: number): Promise<Inode> {
    return this.create(path, S_IFLNK | 0o777, uid, gid, target);
  }

  async link(existingPath: string, newPath: string): Promise<void> {
    await this.metaChange(() => {
      const inode = this.resolve(existingPath);
      if (isDir(inode)) throw new FsError('EPERM', existingPath);
      const { parent, name } = this.parentForNewEntry(newPath);
      this.appendMeta({ op: 'link', ino: inode.ino, parent: parent.ino, name });
    });
  }

  async unlink(path: string): Promise<void> {
    await this.metaChange(() => {
      const { parent, name } = this.state.resolveParent(path);
      const inode = this.resolve(path);
      if (isDir(inode)) throw new FsError('EISDIR', path);
      this.appendMeta({ op: 'unlink', parent: parent.ino, name });
    }, 'free');
  }

  async rmdir(path: string): Promise<void> {
    await this.metaChange(() => {
      const { parent, name } = this.state.resolveParent(path);
      const inode = this.resolve(path);
      if (!isDir(inode)) throw new FsError('ENOTDIR', path);
      if (inode.entries!.size > 0) throw new FsError('ENOTEMPTY', path);
      this.appendMeta({ op: 'unlink', parent: parent.ino, name });
    }, 'free');
  }

  async rename(from: string, to: string): Promise<void> {
    await this.metaChange(() => {
      const source = this.state.resolveParent(from);
      const moving = this.resolve(from);
      const target = this.state.resolveParent(to);
      checkName(target.name, to);
      const existingIno = target.parent.entries!.get(target.name);
      // POSIX: renaming a file onto itself (same inode) succeeds and changes nothing.
      if (existingIno !== undefined && existingIno !== moving.ino) {
        const existing = this.state.inode(existingIno);
        if (isDir(existing) && !isDir(moving)) throw new FsError('EISDIR', to);
        if (!isDir(existing) && isDir(moving)) throw new FsError('ENOTDIR', to);
        if (isDir(existing) && existing.entries!.size > 0) throw new FsError('ENOTEMPTY', to);
      }
      if (isDir(moving) && this.isAncestor(moving.ino, target.parent.ino)) throw new FsError('EINVAL', `${to} is inside ${from}`);
      this.appendMeta({ op: 'rename', parent: source.parent.ino, name: source.name, newParent: target.parent.ino, newName: target.name });
    });
  }

  async setattr(path: string, change: AttrChange): Promise<void> {
    await this.metaChange(() => {
      const inode = this.resolve(path);
      this.appendMeta({ op: 'setattr', ino: inode.ino, ...change });
    });
  }

  async truncate(ino: number, size: number): Promise<void> {
    await this.metaChange(() => {
      const inode = this.state.inode(ino);
      if (isDir(inode)) throw new FsError('EISDIR', `inode ${ino}`);
      if (!isRegular(inode)) throw new FsError('EINVAL', `inode ${ino}`);
      this.appendMeta({ op: 'truncate', ino, size });
    }, 'free');
  }

  private parentForNewEntry(path: string): { parent: Inode; name: string } {
    const { parent, name } = this.state.resolveParent(path);
    checkName(name, path);
    if (parent.entries!.has(name)) throw new FsError('EEXIST', path);
    return { parent, name };
  }

  private isAncestor(ancestorIno: number, ino: number): boolean {
    if (ancestorIno === ino) return true;
    // Directories have one parent; walk down from the root is costly, so search upward by scanning.
    const parents = new Map<number, number>();
    for (const inode of this.state.inodes.values()) {
      if (!inode.entries) continue;
      for (const child of inode.entries.values()) parents.set(child, inode.ino);
    }
    for (let at: number | undefined = ino; at !== undefined && at !== ROOT_INO; at = parents.get(at)) {
      if (at === ancestorIno) return true;
    }
    return false;
  }

  /** `free`: unlink, rmdir, truncate -- they may use the reserve, so that a full log can always be emptied. */
  private async metaChange<T>(change: () => T, kind: 'meta' | 'free' = 'meta'): Promise<T> {
    await this.ensureRoom(META_RECORD_ROOM_BYTES, kind);
    return change();
  }

  private appendMeta(op: MetaOp): void {
    // A held piece goes before an op on its file: a truncate or setattr of it, an unlink or rename that may drop it.
    if (op.op === 'unlink' || op.op === 'rename') this.splitWrites.appendAll();
    else if (op.op !== 'create') this.splitWrites.appendHeld(op.ino, 0, Number.POSITIVE_INFINITY);
    const payload = encodeMetaOp(op);
    const header = this.writable().append(RecordType.Meta, payload);
    this.state.applyMeta(header, op);
    // The next checkpoint grows with the state (a new inode, a longer name, a tombstone): keep the
    // space reserve honest until it is written. Without a horizon, unlinked inodes simply go.
    const tombstones = Number.isFinite(this.state.horizonLsn);
    if (op.op !== 'unlink' || tombstones) this.checkpointBytes += payload.length + (op.op === 'create' || tombstones ? 256 : 0);
    this.afterAppend();
  }

  // -------------------------------------------------------------------------
  // File data

  /** `path`: the file's path, by which a primary recognises PostgreSQL's WAL segments and pg_control. */
  async write(ino: number, position: number, data: Buffer, path?: string): Promise<number> {
    const pageBytes = this.pageBytes;
    const firstPage = Math.floor(position / pageBytes);
    const lastPage = Math.floor((position + data.length - 1) / pageBytes);
    await this.writable().waitForRoom();
    await this.ensureRoom((lastPage - firstPage + 1) * recordBytes(DATA_BYTES_OFFSET + pageBytes) + DEVICE_SECTOR_BYTES, 'data');
    this.writable();
    const inode = this.state.inode(ino);
    if (!isRegular(inode)) throw new FsError('EISDIR', `inode ${ino}`);
    if (path !== undefined && this.role === 'primary') {
      // Before appending: a WAL write's own records carry the position it reaches.
      const walEnd = this.walPosition.observeWrite(path, position, data);
      if (walEnd !== null && walEnd > this.writer!.walLsn) this.writer!.walLsn = walEnd;
    }
    const { position: from, append } = path !== undefined && isRelationFilePath(path)
      ? this.splitWrites.take(ino, position, data)
      : { position, append: data };
    const appendLastPage = Math.floor((from + append.length - 1) / pageBytes);
    for (let pageNo = Math.floor(from / pageBytes); pageNo <= appendLastPage; pageNo++) {
      const start = Math.max(from, pageNo * pageBytes);
      const end = Math.min(from + append.length, (pageNo + 1) * pageBytes);
      const bytes = append.subarray(start - from, end - from);
      this.appendData(ino, pageNo, start - pageNo * pageBytes, bytes, 0, pageNo < appendLastPage ? RECORD_FLAG_CONTINUES : 0);
    }
    this.afterAppend();
    return data.length;
  }

  /** Appends one Data record and applies it (versionLsn 0 = new bytes; else a cleaner copy). */
  appendData(ino: number, pageNo: number, offsetInPage: number, bytes: Uint8Array, versionLsn: number, flags = 0): number {
    const payload = encodeDataPayload({ ino, pageNo, offsetInPage, length: bytes.length, versionLsn }, bytes);
    const header = this.writable().append(RecordType.Data, payload, flags);
    this.state.applyData(header, payload, this.overlay !== null);
    // A new version is one more entry in the next checkpoint's version table (see checkpoint.ts).
    if (versionLsn === 0) this.checkpointBytes += 32 + 12;
    return header.lsn;
  }

  async read(ino: number, position: number, length: number): Promise<Buffer> {
    this.splitWrites.appendHeld(ino, Math.floor(position / this.pageBytes), Math.floor((position + length - 1) / this.pageBytes));
    const inode = this.state.inode(ino);
    if (isDir(inode)) throw new FsError('EISDIR', `inode ${ino}`);
    return readPages(inode.size, position, length, this.pageBytes, (pageNo) => this.readPage(inode, pageNo));
  }

  /** The page as of `atLsn`: newest image at or below it, with the later deltas applied in order. */
  async readPage(inode: Inode, pageNo: number, atLsn = Number.POSITIVE_INFINITY): Promise<Buffer> {
    // Chosen once: a retry re-reads these same versions where the cleaner moved them (a relocation
    // updates `loc` in place), never newer ones -- the other pages of a read are of this state.
    const versions = this.state.versionsAt(inode, pageNo, atLsn);
    for (let attempt = 0; ; attempt++) {
      const locations = versions.map((v) => v.loc);
      const contents = await Promise.all(versions.map((v) => this.versionBytes(inode.ino, pageNo, v)));
      const moved = versions.some((v, i) => v.loc !== locations[i]);
      const missing = contents.findIndex((c, i) => c === null && versions[i]!.kind !== 'zero');
      if (missing >= 0) {
        // The cleaner may have moved the version while we read: look again.
        if (moved && attempt < 3) continue;
        throw new FsError('EIO', `page ${pageNo} of inode ${inode.ino}: record at LSN ${locations[missing]} is damaged`);
      }
      const page = Buffer.alloc(this.pageBytes);
      versions.forEach((v, i) => {
        if (v.kind === 'zero') page.fill(0, v.offsetInPage, v.offsetInPage + v.length);
        else contents[i]!.copy(page, v.offsetInPage);
      });
      if (versions.length > MAX_DELTAS_PER_PAGE && atLsn === Number.POSITIVE_INFINITY) this.foldDeltas(inode, pageNo, versions, page);
      return page;
    }
  }

  /** Replaces a long delta chain with one image of the same content, if nothing changed meanwhile. */
  private foldDeltas(inode: Inode, pageNo: number, folded: PageVersion[], page: Buffer): void {
    // Only a mount that can write folds: on a replica or plain snapshot (or once fenced) the read just returns the page.
    if (!this.writer || this.writer.failed || this.closed) return;
    const current = inode.pages?.get(pageNo);
    if (!current || current[current.length - 1] !== folded[folded.length - 1] || !this.canAppendNow('data', page.length)) return;
    // Same content, so replay must not move size (the page may reach past EOF) or mtime.
    this.appendData(inode.ino, pageNo, 0, page, 0, RECORD_FLAG_SAME_CONTENT);
    this.afterAppend();
  }

  private async versionBytes(ino: number, pageNo: number, version: PageVersion): Promise<Buffer | null> {
    if (version.kind === 'zero') return null;
    // A version lives in the log this mount writes (primary, or a branch's overlay) or in the shared log.
    const inWrittenLog = (version.overlay === true) === (this.overlay !== null);
    const unwritten = inWrittenLog ? this.writer?.unwrittenRecord(version.loc) : undefined;
    const reader = version.overlay ? this.overlay!.reader : this.reader;
    const record = unwritten
      ? { payload: unwritten.subarray(64, 64 + DATA_BYTES_OFFSET + version.length) }
      : await reader.readRecord(version.loc, recordBytes(DATA_BYTES_OFFSET + version.length));
    if (!record) return null;
    const head = decodeDataHead(record.payload);
    if (head.ino !== ino || head.pageNo !== pageNo || head.length !== version.length) return null;
    return record.payload.subarray(DATA_BYTES_OFFSET, DATA_BYTES_OFFSET + head.length);
  }

  // -------------------------------------------------------------------------
  // Durability

  /**
   * fsync of anything: the whole log prefix appended so far becomes durable. Of the held pieces of page
   * writes, the fsync'd file's (`ino`), or all of them. A commit's fsync of WAL must not append the
   * piece of a page write a checkpointer has half sent: when every fsync appended them, 49 of a 30 s
   * pgbench run's ~650 split page writes stayed two deltas; none do now.
   */
  async sync(ino?: number): Promise<void> {
    if (ino === undefined) this.splitWrites.appendAll();
    else this.splitWrites.appendHeld(ino, 0, Number.POSITIVE_INFINITY);
    if (this.writer) await this.writer.sync();
  }

  /** A piece of a split page write, appended as it came (SplitPageWrites): a delta. */
  private appendPiece(piece: HeldPiece): void {
    try {
      this.appendData(piece.ino, piece.pageNo, 0, piece.bytes, 0);
      this.afterAppend();
    } catch (error) {
      // Fenced or closed meanwhile: the fsync that would make it durable fails the same way.
      log.error({ err: error, ino: piece.ino, pageNo: piece.pageNo }, 'appending a held piece of a page write failed');
    }
  }

  /** The writer, if this mount may write now: EROFS on a read-only mount, EIO once fenced. */
  private writable(): LogWriter {
    if (this.closed || !this.writer) throw new FsError('EROFS', this.closed ? 'volume is closed' : `${this.role} mounts are read-only`);
    if (this.writer.failed) throw new FsError('EIO', `writes stopped: ${this.writer.failed.message}`);
    return this.writer;
  }

  private afterAppend(): void {
    if (!this.cleaner) return; // a branch's overlay log is neither checkpointed nor cleaned
    if (this.writable().tailLsn - this.superblock.checkpointLsn > this.checkpointIntervalBytes() && !this.checkpointInFlight) {
      // No room for a checkpoint is ENOSPC for the operations, not a reason to stop writing.
      void this.checkpoint().catch((error: Error) => { if (!(error instanceof FsError && error.errno === 'ENOSPC')) this.fence(error); });
    }
    this.cleaner!.maybeStartBackground();
  }

  private checkpointIntervalBytes(): number {
    return Math.min(CHECKPOINT_INTERVAL_BYTES, Math.floor(this.superblock.logBytes / 8));
  }

  // -------------------------------------------------------------------------
  // Space

  canAppendNow(kind: 'data' | 'meta' | 'free' | 'cleaner', bytes: number): boolean {
    const { headLsn, logBytes } = this.overlay?.superblock ?? this.superblock;
    const used = this.writable().tailLsn - headLsn;
    const reserve = this.cleaner?.reserveBytes() ?? DEVICE_SECTOR_BYTES * 4;
    const limit = kind === 'data' ? logBytes - reserve
      : kind === 'meta' ? logBytes - reserve / 2
        // Space-freeing metadata keeps only the room for the checkpoint that lets the cleaner move the head.
        : kind === 'free' ? logBytes - this.checkpointBytes - 64 * 1024
          : logBytes - DEVICE_SECTOR_BYTES * 2;
    return used + bytes <= limit;
  }

  /** Waits until `bytes` fit in the log, cleaning if needed; ENOSPC when cleaning cannot make room. */
  private async ensureRoom(bytes: number, kind: 'data' | 'meta' | 'free'): Promise<void> {
    const writer = this.writable();
    if (this.canAppendNow(kind, bytes)) return;
    // What was deleted or rewritten since the slots were last read is reclaimable only once the horizon
    // passes it, and the horizon waits for the device to vouch for it (updateHorizon): make it so now.
    if (this.role === 'primary') { // a branch's overlay log has no readers
      await writer.sync();
      await this.markerWrite;
      await this.updateHorizon();
    }
    if (this.cleaner) await this.cleaner.cleanUntil(() => this.canAppendNow(kind, bytes));
    if (!this.canAppendNow(kind, bytes)) {
      throw new FsError('ENOSPC', `device ${this.device.name}: no space left (live ${this.state.liveBytes} bytes of ${this.superblock.logBytes})`);
    }
  }

  /**
   * Writes a checkpoint at the tail and points the superblock at it. The
   * state is serialized and appended in one tick, so no record falls between
   * the state and its LSN.
   */
  checkpoint(): Promise<void> {
    if (this.checkpointInFlight) return this.checkpointInFlight;
    const run = async (): Promise<void> => {
      const writer = this.writable();
      const bytes = serializeState(this.state, this.checkpoints);
      const timeMs = Date.now();
      // Refuse before appending anything when it cannot fit (the writer would assert half-way).
      const chunks = Math.max(1, Math.ceil(bytes.length / CHECKPOINT_CHUNK_BYTES));
      if (writer.tailLsn + bytes.length + chunks * 64 + 2 * DEVICE_SECTOR_BYTES > this.superblock.headLsn + this.superblock.logBytes) {
        this.checkpointBytes = bytes.length;
        throw new FsError('ENOSPC', `device ${this.device.name}: no room in the log for a checkpoint of ${bytes.length} bytes`);
      }
      let firstLsn = 0;
      for (let offset = 0; offset < bytes.length || offset === 0; offset += CHECKPOINT_CHUNK_BYTES) {
        const chunk = bytes.subarray(offset, offset + CHECKPOINT_CHUNK_BYTES);
        const last = offset + CHECKPOINT_CHUNK_BYTES >= bytes.length;
        const header = writer.append(RecordType.Checkpoint, chunk, last ? RECORD_FLAG_CHECKPOINT_LAST : 0);
        if (offset === 0) firstLsn = header.lsn;
      }
      this.checkpointBytes = bytes.length;
      this.checkpointEndLsn = writer.tailLsn;
      await writer.sync();
      await this.updateSuperblock({ checkpointLsn: firstLsn });
      this.checkpoints.push({ lsn: firstLsn, timeMs });
    };
    this.checkpointInFlight = run().finally(() => { this.checkpointInFlight = null; });
    return this.checkpointInFlight;
  }

  /** Serialized superblock update: next generation, written and flushed. */
  updateSuperblock(change: Partial<Pick<Superblock, 'checkpointLsn' | 'headLsn'>>): Promise<void> {
    const run = this.superblockLock.then(async () => {
      const next = { ...this.superblock, ...change, generation: this.superblock.generation + 1 };
      assert(next.headLsn <= next.checkpointLsn, `head ${next.headLsn} passed checkpoint ${next.checkpointLsn}`);
      await writeSuperblock(this.device, next);
      this.superblock = next;
      this.checkpoints = this.checkpoints.filter((mark) => mark.lsn >= next.headLsn);
    });
    this.superblockLock = run.catch(() => undefined);
    return run;
  }

  /** Clean unmount: a primary checkpoints (fast next mount) and releases the reservation; a reader frees its slot. */
  async close(): Promise<void> {
    if (this.closed) return;
    for (const timer of this.timers) clearInterval(timer);
    await this.cleaner?.stop();
    if (this.writer && !this.writer.failed) this.splitWrites.appendAll();
    if (this.role === 'primary' && !this.writer!.failed) {
      this.writer!.stopFillingAhead();
      // Without room for it, skip the checkpoint: the next mount replays a little more. An idle checkpoint
      // may already cover the tail.
      if (this.checkpointInFlight || this.writer!.tailLsn !== this.checkpointEndLsn) {
        await this.checkpoint().catch((error: Error) => { if (!(error instanceof FsError && error.errno === 'ENOSPC')) throw error; });
      }
      await this.markerWrite;
      await this.reservation!.release();
    }
    if (this.overlay) {
      this.overlay.writer.stopFillingAhead();
      await this.overlay.writer.sync();
      await this.overlay.device.close();
    }
    await this.tailer?.stop();
    this.closed = true;
    await this.device.close();
  }

  logSpace(): LogSpace { return this.reader.space; }
}

function checkName(name: string, path: string): void {
  if (Buffer.byteLength(name) > NAME_MAX_BYTES) throw new FsError('ENAMETOOLONG', path);
}

