/**
 * Follows the log behind a primary: polls for new records, applies the ones
 * known to be durable, and publishes progress in the reader's slot.
 *
 * A replica applies everything, so its state is always the filesystem at its
 * view LSN. A snapshot keeps its view fixed and applies only the cleaner's
 * relocations, so that the versions it reads stay addressable while the
 * primary reclaims space.
 */
import pino from 'pino';
import { BlockDevice } from '../device/device';
import { readDurableMarker } from '../log/durable-marker';
import { RECORD_FLAG_CONTINUES, RecordType, decodeDataHead, recordBytes } from '../log/format';
import { LogReader, LogRecord } from '../log/log-reader';
import { readSuperblock } from '../log/superblock';
import { applyRecord } from '../volume/recovery';
import { VolumeState } from '../volume/state';
import { assert } from '../util/errors';
import { ReplicaSlot, SLOT_HEARTBEAT_MS, writeSlot } from './slots';
import { StandbyGate } from './standby-gate';

const log = pino({ name: 'lsnfs-tailer' }, pino.destination(2));

/**
 * First read of a round that follows an idle one: a round that finds nothing
 * new costs this one read (at a 5 ms poll interval, 1.6 MB/s of reads, where a
 * fixed 256 KiB read plus the durable marker cost about 50 MB/s).
 */
const IDLE_READ_BYTES = 8 * 1024;
/** Largest read of a round: reads double from the first one while records keep coming (catching up). */
const MAX_READ_BYTES = 4 * 1024 * 1024;
/** Records buffered per poll before applying (bounds memory while catching up). */
const MAX_PENDING_BYTES = 16 * 1024 * 1024;
/**
 * A moved view is published at most this often: under load nearly every round
 * applies records, and a slot write per 5 ms round buys nothing -- the primary
 * reads the slots every 100 ms, and a view published late only holds the
 * horizon lower for a moment (safe); it is never published early.
 */
const SLOT_PUBLISH_MIN_INTERVAL_MS = 20;
/** How often the tailer checks that the primary's cleaner has not passed it. */
const HEAD_CHECK_MS = 500;

export interface TailerOptions {
  device: BlockDevice;
  reader: LogReader;
  slotIndex: number;
  host: string;
  mode: 'replica' | 'snapshot';
  /** First LSN not yet consumed. */
  startLsn: number;
  /** The view: for a replica, equal to startLsn; for a snapshot, fixed. */
  viewLsn: number;
  viewTimeMs: number;
  startEpoch: number;
  pollIntervalMs: number;
}

export class Tailer {
  appliedLsn: number;
  viewLsn: number;
  viewTimeMs: number;
  private lastEpoch: number;
  private timer: NodeJS.Timeout | null = null;
  private inFlight: Promise<unknown> = Promise.resolve();
  private stopped = false;
  private lastSlotWriteMs = 0;
  /**
   * The slot write in flight. Rounds do not wait for it: on a file device the
   * write queues behind the primary's writes for the host file's lock (a
   * replica's rounds took 6-10 ms instead of under 1 ms when they did), and
   * a view published a little later only holds the horizon lower a little
   * longer.
   */
  private publishing: Promise<void> | null = null;
  /** The view moved since the slot was last written. */
  private slotStale = false;
  /** Log bytes the last round found (applied or not): the next round's first read is twice that. */
  private lastRoundBytes = 0;
  private lastHeadCheckMs = Date.now();
  /** Set when the primary reclaimed log this reader still needed; the mount must reload. */
  fellBehind: string | null = null;
  /**
   * A PostgreSQL standby's mount: the gate decides which records apply now
   * (pg_wal/) and which wait for the standby's view (everything else).
   */
  gate: StandbyGate | null = null;
  /** A standby's own figures for its slot: the database LSN it serves at, its overlay's size, the deletions it still shows, the versions it needs kept. */
  slotExtras: () => Pick<ReplicaSlot, 'viewWalLsn' | 'overlayBytes' | 'keepDeletedFromLsn' | 'keepVersionsFromLsn'> = () => ({});

  constructor(private state: VolumeState, private readonly options: TailerOptions) {
    this.appliedLsn = options.startLsn;
    this.viewLsn = options.viewLsn;
    this.viewTimeMs = options.viewTimeMs;
    this.lastEpoch = options.startEpoch;
  }

  /** Publishes the slot first (so the primary keeps what this reader needs), then starts polling. */
  async start(): Promise<void> {
    await this.publish();
    // Rounds start every pollIntervalMs (not pollIntervalMs after the previous one ended): the time a
    // round takes does not add to the visibility lag.
    const tick = (): void => {
      if (this.stopped) return;
      const startedMs = Date.now();
      this.poll()
        .catch((error: Error) => log.error({ err: error }, 'tailing failed; retrying'))
        .finally(() => {
          if (this.stopped) return;
          this.timer = setTimeout(tick, Math.max(0, this.options.pollIntervalMs - (Date.now() - startedMs)));
        });
    };
    this.timer = setTimeout(tick, this.options.pollIntervalMs);
  }

  /** Replaces the state (after a reload) and continues from `startLsn`. A standby's mount never reloads (its tree must stay at L). */
  reset(state: VolumeState, startLsn: number, epoch: number, viewTimeMs: number): void {
    assert(this.gate === null, 'a standby mount does not reload from a checkpoint');
    this.state = state;
    this.appliedLsn = this.viewLsn = startLsn;
    this.viewTimeMs = viewTimeMs;
    this.lastEpoch = epoch;
    this.fellBehind = null;
    this.slotStale = true;
  }

  /** Runs `task` between two polling rounds: no round is reading or applying records meanwhile. */
  betweenPolls<T>(task: () => Promise<T>): Promise<T> {
    const run = this.inFlight.then(task);
    this.inFlight = run.catch(() => undefined);
    return run;
  }

  /** One round: read what is new, apply what is durable. Returns the number of records applied. Rounds never overlap. */
  poll(): Promise<number> {
    const round = this.inFlight.then(() => this.pollOnce());
    this.inFlight = round.catch(() => undefined);
    return round;
  }

  private async pollOnce(): Promise<number> {
    const { device, reader, mode } = this.options;
    const pending: LogRecord[] = [];
    let pendingBytes = 0;
    let durableLimit = 0;
    let scannedEndLsn = this.appliedLsn;
    // One small read when the last round found nothing. Else twice what it found: a round under a steady
    // load then takes one read, where a record cut at the end of a short read costs a second one (each
    // device read is a trip through the thread pool, which costs more than the bytes).
    const firstChunkBytes = Math.min(MAX_READ_BYTES, Math.max(IDLE_READ_BYTES, 2 * this.lastRoundBytes));
    await reader.scan(this.appliedLsn, { minEpoch: this.lastEpoch, firstChunkBytes, maxChunkBytes: MAX_READ_BYTES }, (record) => {
      durableLimit = Math.max(durableLimit, record.header.durableLsn);
      pending.push(record);
      pendingBytes += record.payload.length;
      scannedEndLsn = record.header.lsn + recordBytes(record.header.payloadBytes);
      return pendingBytes < MAX_PENDING_BYTES;
    });
    this.lastRoundBytes = scannedEndLsn - this.appliedLsn;
    if (pending.length > 0) {
      // A record's durableLsn vouches only for records before it; the marker covers the last batch.
      // Read after the records, so it is at least as new as they are. Nothing new: no marker read.
      const marker = await readDurableMarker(device);
      if (marker && marker.epoch >= this.lastEpoch) durableLimit = Math.max(durableLimit, marker.durableLsn);
    }
    let applied = 0;
    // Apply whole operations only: up to the last record that is durable and ends one.
    let usable = 0;
    for (let i = 0; i < pending.length; i++) {
      const { header } = pending[i]!;
      if (header.lsn + recordBytes(header.payloadBytes) > durableLimit) break;
      if (!(header.flags & RECORD_FLAG_CONTINUES)) usable = i + 1;
    }
    for (const { header, payload } of pending.slice(0, usable)) {
      const end = header.lsn + recordBytes(header.payloadBytes);
      if (this.gate) this.gate.offer(header, payload);
      else if (mode === 'replica') applyRecord(this.state, header, payload);
      else if (header.type === RecordType.Data && decodeDataHead(payload).versionLsn !== 0) this.state.applyData(header, payload);
      this.appliedLsn = end;
      this.lastEpoch = header.epoch;
      if (mode === 'replica' && !this.gate) { this.viewLsn = end; this.viewTimeMs = header.timeMs; }
      applied++;
    }
    if (applied > 0) this.slotStale = true;
    this.followGate();
    const now = Date.now();
    const sinceSlotWriteMs = now - this.lastSlotWriteMs;
    if ((this.slotStale && sinceSlotWriteMs >= SLOT_PUBLISH_MIN_INTERVAL_MS) || sinceSlotWriteMs >= SLOT_HEARTBEAT_MS) this.publishInBackground();
    if (now - this.lastHeadCheckMs >= HEAD_CHECK_MS) {
      this.lastHeadCheckMs = now;
      const superblock = await readSuperblock(device);
      if (superblock.headLsn > this.appliedLsn) {
        this.fellBehind = `the primary reclaimed the log up to LSN ${superblock.headLsn}, past this reader's LSN ${this.appliedLsn}`;
      }
    }
    return applied;
  }

  /** A standby's view is where its gate holds the non-WAL tree (call after the gate applied held records). */
  followGate(): void {
    if (!this.gate) return;
    this.viewLsn = this.gate.viewLsn(this.appliedLsn);
    if (this.gate.viewTimeMs > 0) this.viewTimeMs = this.gate.viewTimeMs;
  }

  /** One slot write at a time; a round that finds one in flight leaves the view to the next round (slotStale stays set). */
  private publishInBackground(): void {
    if (this.publishing) return;
    this.publishing = this.publish()
      .catch((error: Error) => log.error({ err: error }, 'publishing the slot failed; retrying'))
      .finally(() => { this.publishing = null; });
  }

  private async publish(): Promise<void> {
    if (this.stopped) return;
    this.lastSlotWriteMs = Date.now();
    this.slotStale = false;
    await writeSlot(this.options.device, this.options.slotIndex, {
      host: this.options.host, pid: process.pid, viewLsn: this.viewLsn, appliedLsn: this.appliedLsn,
      viewTimeMs: this.viewTimeMs, heartbeatAtMs: this.lastSlotWriteMs, ...this.slotExtras(),
    });
  }

  /** Stops polling and frees the slot. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    await this.inFlight;
    // A slot write landing after the one that frees it would show this reader alive.
    await this.publishing;
    await writeSlot(this.options.device, this.options.slotIndex, null);
  }
}
