/**
 * iSCSI devices: an `IscsiSession` (one libiscsi session = one I_T nexus,
 * native/iscsi.c) and `IscsiDevice`, the BlockDevice on top of it.
 *
 * A host must do all its I/O and all its persistent-reservation commands on
 * ONE session: the target grants write access per nexus, so a key registered
 * on another session would not let this one write. IscsiDevice exposes its
 * session for src/fence/scsi-reservation.ts for that reason.
 */
import { EventEmitter } from 'node:events';
import { lookup } from 'node:dns/promises';
import * as net from 'node:net';
import * as os from 'node:os';
import PQueue from 'p-queue';
import { BlockDevice } from './device';
import { UserError, assert } from '../util/errors';
import { nativeAddon } from '../util/native';

/** Commands in flight per session: libiscsi pipelines them on one connection. */
const ISCSI_MAX_IN_FLIGHT = 16;
/** Largest single READ/WRITE; bigger requests are split. */
const MAX_TRANSFER_BYTES = 1024 * 1024;
const DEFAULT_CONNECT_TIMEOUT_MS = 5000;
/** A command the target has not answered by then fails with ISCSI_TIMEOUT. */
const DEFAULT_COMMAND_TIMEOUT_S = 30;

// ---- the native session ---------------------------------------------------

interface NativeSession {
  connect(url: string, initiatorIqn: string, connectTimeoutMs: number, commandTimeoutS: number): Promise<Capacity>;
  readCapacity(): Promise<Capacity>;
  read(lba: number, blocks: number): Promise<Buffer>;
  write(lba: number, data: Uint8Array): Promise<void>;
  synchronizeCache(): Promise<void>;
  persistentReserveOut(serviceAction: number, type: number, key: bigint, serviceActionKey: bigint): Promise<void>;
  persistentReserveIn(serviceAction: number): Promise<unknown>;
  close(): Promise<void>;
  takeUnitAttentions(): Array<{ asc: number; ascq: number }>;
  stats(): { state: string; inFlight: number; unitAttentions: number; failReason?: string };
}

interface NativeModule { IscsiSession: new () => NativeSession }

let native: NativeModule | undefined;

export interface Capacity { blockSize: number; blocks: number }

/** Error codes on errors from an iSCSI session (err.code). */
export type IscsiErrorCode =
  | 'RESERVATION_CONFLICT' // SCSI status 0x18: this nexus may not do that now (fenced)
  | 'SCSI_SENSE' // CHECK CONDITION: err.senseKey / err.asc / err.ascq
  | 'SCSI_STATUS' // another SCSI status (BUSY, TASK SET FULL, ...)
  | 'ISCSI_CONNECT' | 'ISCSI_URL' // connect() failed
  | 'ISCSI_DISCONNECTED' // the session dropped; it never reconnects by itself
  | 'ISCSI_CLOSED' | 'ISCSI_TIMEOUT' | 'ISCSI_ERROR';

export interface IscsiError extends Error {
  code: IscsiErrorCode;
  url: string;
  /** "2A/03" when the command met a UNIT ATTENTION before it failed. */
  unitAttention?: string;
  senseKey?: number;
  asc?: number;
  ascq?: number;
}

export function isIscsiError(error: unknown, code?: IscsiErrorCode): error is IscsiError {
  return error instanceof Error && typeof (error as IscsiError).code === 'string' &&
    typeof (error as IscsiError).url === 'string' && (code === undefined || (error as IscsiError).code === code);
}

export function isReservationConflict(error: unknown): error is IscsiError {
  return isIscsiError(error, 'RESERVATION_CONFLICT');
}

export interface UnitAttention {
  asc: number;
  ascq: number;
  /** "2A/03" */
  code: string;
  description: string;
}

const UA_DESCRIPTIONS: Record<string, string> = {
  '29/00': 'power on, reset, or bus device reset occurred',
  '29/01': 'power on occurred',
  '29/07': 'I_T nexus loss occurred',
  '2A/01': 'mode parameters changed',
  '2A/03': 'reservations preempted',
  '2A/04': 'reservations released',
  '2A/05': 'registrations preempted',
  '2A/09': 'capacity data has changed',
  '3F/0E': 'reported LUNs data has changed',
};

const hex2 = (n: number) => n.toString(16).toUpperCase().padStart(2, '0');

/** SCSI-3 persistent reservation types (SPC-4 table "Persistent reservation type codes"). */
export enum PrType {
  WriteExclusive = 1,
  ExclusiveAccess = 3,
  WriteExclusiveRegistrantsOnly = 5,
  ExclusiveAccessRegistrantsOnly = 6,
  WriteExclusiveAllRegistrants = 7,
  ExclusiveAccessAllRegistrants = 8,
}

const PR_OUT = { register: 0, reserve: 1, release: 2, clear: 3, preempt: 4, registerAndIgnore: 6 } as const;
const PR_IN = { readKeys: 0, readReservation: 1 } as const;

export interface Reservation { key: bigint; type: PrType; scope: number }

/** An IQN for this host's initiator: stable per host name, so tgt logs and ACLs can name it. */
export function initiatorIqnForHost(host: string): string {
  const clean = host.toLowerCase().replace(/[^a-z0-9.-]+/g, '-').replace(/^[-.]+|[-.]+$/g, '') || 'host';
  return `iqn.2024-01.org.lsnfs.initiator:${clean.slice(0, 180)}`;
}

export interface IscsiConnectOptions {
  /** Defaults to initiatorIqnForHost(host ?? os.hostname()). */
  initiatorIqn?: string;
  host?: string;
  connectTimeoutMs?: number;
  commandTimeoutS?: number;
}

/**
 * One iSCSI session (one I_T nexus) to one LUN. Methods map 1:1 to SCSI
 * commands; every failure is an IscsiError. Emits 'unitAttention'
 * (UnitAttention) for every UNIT ATTENTION the target reported; the command
 * that got it was retried. 2A/03 "reservations preempted" means this host
 * has been fenced.
 */
export class IscsiSession extends EventEmitter {
  private closed = false;
  private unitAttentionTotal = 0;
  private readonly pending = new Set<Promise<unknown>>();

  private constructor(
    readonly url: string,
    readonly initiatorIqn: string,
    private readonly handle: NativeSession,
    readonly blockSize: number,
    readonly blocks: number,
  ) {
    super();
  }

  static async connect(url: string, options: IscsiConnectOptions = {}): Promise<IscsiSession> {
    native ??= nativeAddon<NativeModule>(['IscsiSession']);
    const initiatorIqn = options.initiatorIqn ?? initiatorIqnForHost(options.host ?? os.hostname());
    const handle = new native.IscsiSession();
    const capacity = await handle.connect(
      await resolvePortal(url), initiatorIqn,
      options.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS, options.commandTimeoutS ?? DEFAULT_COMMAND_TIMEOUT_S,
    ).catch((error: unknown) => {
      // The native message names the resolved URL; name the one the user gave.
      if (error instanceof Error && isIscsiError(error)) {
        error.message = error.message.replace(error.url, url);
        error.url = url;
      }
      throw error;
    });
    const session = new IscsiSession(url, initiatorIqn, handle, capacity.blockSize, capacity.blocks);
    session.drainUnitAttentions();
    return session;
  }

  /** UNIT ATTENTIONs seen since connect. */
  get unitAttentions(): number { return this.unitAttentionTotal; }
  get state(): string { return this.handle.stats().state; }

  read(lba: number, blocks: number): Promise<Buffer> { return this.track(this.handle.read(lba, blocks)); }
  write(lba: number, data: Uint8Array): Promise<void> { return this.track(this.handle.write(lba, data)); }
  synchronizeCache(): Promise<void> { return this.track(this.handle.synchronizeCache()); }
  readCapacity(): Promise<Capacity> { return this.track(this.handle.readCapacity()); }

  /** REGISTER: this nexus (not yet registered) registers `key`. */
  register(key: bigint): Promise<void> { return this.prOut(PR_OUT.register, 0, 0n, key); }
  /** REGISTER with the current key and a zero new key: drop this nexus's registration. */
  unregister(key: bigint): Promise<void> { return this.prOut(PR_OUT.register, 0, key, 0n); }
  /** REGISTER AND IGNORE EXISTING KEY: (re)register `key` whatever this nexus had. */
  registerAndIgnoreExistingKey(key: bigint): Promise<void> { return this.prOut(PR_OUT.registerAndIgnore, 0, 0n, key); }
  reserve(key: bigint, type: PrType): Promise<void> { return this.prOut(PR_OUT.reserve, type, key, 0n); }
  release(key: bigint, type: PrType): Promise<void> { return this.prOut(PR_OUT.release, type, key, 0n); }
  /** PREEMPT: removes `victimKey`'s registrations (and its reservation, which passes to `key`). */
  preempt(key: bigint, victimKey: bigint, type: PrType): Promise<void> { return this.prOut(PR_OUT.preempt, type, key, victimKey); }
  /** CLEAR: drops every registration and the reservation. */
  clear(key: bigint): Promise<void> { return this.prOut(PR_OUT.clear, 0, key, 0n); }

  /** READ KEYS: the registered keys (one per registered nexus; duplicates possible). */
  async readKeys(): Promise<{ generation: number; keys: bigint[] }> {
    return (await this.track(this.handle.persistentReserveIn(PR_IN.readKeys))) as { generation: number; keys: bigint[] };
  }

  /** READ RESERVATION: the holder's key and type, or null. */
  async readReservation(): Promise<{ generation: number; reservation: Reservation | null }> {
    return (await this.track(this.handle.persistentReserveIn(PR_IN.readReservation))) as
      { generation: number; reservation: Reservation | null };
  }

  /**
   * Waits for the commands already sent, then logs out (which ends the nexus
   * on the target; its registration stays). Later calls fail with ISCSI_CLOSED.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.allSettled([...this.pending]);
    await this.handle.close();
    this.drainUnitAttentions();
  }

  private prOut(serviceAction: number, type: number, key: bigint, serviceActionKey: bigint): Promise<void> {
    return this.track(this.handle.persistentReserveOut(serviceAction, type, key, serviceActionKey));
  }

  private async track<T>(operation: Promise<T>): Promise<T> {
    this.pending.add(operation);
    try {
      return await operation;
    } finally {
      this.pending.delete(operation);
      this.drainUnitAttentions();
    }
  }

  private drainUnitAttentions(): void {
    for (const { asc, ascq } of this.handle.takeUnitAttentions()) {
      this.unitAttentionTotal++;
      const code = `${hex2(asc)}/${hex2(ascq)}`;
      const ua: UnitAttention = { asc, ascq, code, description: UA_DESCRIPTIONS[code] ?? 'unit attention' };
      this.emit('unitAttention', ua);
    }
  }
}

/**
 * libiscsi resolves the portal with a blocking getaddrinfo; resolve it here
 * (asynchronously) and hand it an address.
 */
async function resolvePortal(url: string): Promise<string> {
  const match = /^(iscsi:\/\/(?:[^@/]*@)?)([^/]+)(\/.*)$/.exec(url);
  if (!match) return url; // the native side reports the bad URL
  const [, prefix, hostPort, rest] = match as unknown as [string, string, string, string];
  const hostMatch = /^(\[[^\]]+\]|[^:]+)(:\d+)?$/.exec(hostPort);
  if (!hostMatch) return url;
  const host = hostMatch[1]!;
  if (host.startsWith('[') || net.isIP(host) !== 0) return url;
  try {
    const { address, family } = await lookup(host);
    return `${prefix}${family === 6 ? `[${address}]` : address}${hostMatch[2] ?? ''}${rest}`;
  } catch (error) {
    throw new UserError(`device ${url}: cannot resolve host '${host}' (${(error as NodeJS.ErrnoException).code ?? error})`);
  }
}

// ---- the block device -----------------------------------------------------

export interface IscsiDeviceOptions extends IscsiConnectOptions { readOnly: boolean }

/**
 * A LUN as a BlockDevice. Writes must cover whole blocks of the LUN (lsnfs
 * writes 512-byte sectors and 4 KiB superblocks); reads may be unaligned
 * (the covering blocks are read and sliced). flush() is SYNCHRONIZE CACHE.
 */
export class IscsiDevice implements BlockDevice {
  /** A LUN's blocks exist before they are written. */
  readonly allocatesOnWrite = false;
  private readonly queue = new PQueue({ concurrency: ISCSI_MAX_IN_FLIGHT });

  private constructor(
    readonly name: string,
    readonly session: IscsiSession,
    readonly sizeBytes: number,
    readonly readOnly: boolean,
  ) {}

  static async open(url: string, options: IscsiDeviceOptions): Promise<IscsiDevice> {
    let session: IscsiSession;
    try {
      session = await IscsiSession.connect(url, options);
    } catch (error) {
      if (error instanceof UserError) throw error;
      // A UserError (printed without a stack); the IscsiError stays as cause.
      throw Object.assign(new UserError(`device ${(error as Error).message}`), { cause: error });
    }
    return new IscsiDevice(url, session, session.blocks * session.blockSize, options.readOnly);
  }

  get blockSize(): number { return this.session.blockSize; }

  async read(offset: number, length: number): Promise<Buffer> {
    assert(Number.isSafeInteger(offset) && Number.isSafeInteger(length) && offset >= 0 && length >= 0 &&
      offset + length <= this.sizeBytes, `read [${offset}, +${length}) beyond ${this.name}`);
    if (length === 0) return Buffer.alloc(0);
    const bs = this.blockSize;
    const first = Math.floor(offset / bs);
    const end = Math.ceil((offset + length) / bs);
    const chunkBlocks = MAX_TRANSFER_BYTES / bs;
    const parts: Array<Promise<Buffer>> = [];
    for (let lba = first; lba < end; lba += chunkBlocks) {
      const blocks = Math.min(chunkBlocks, end - lba);
      parts.push(this.queue.add(() => this.session.read(lba, blocks)));
    }
    const whole = parts.length === 1 ? await parts[0]! : Buffer.concat(await Promise.all(parts));
    const skip = offset - first * bs;
    return skip === 0 && whole.length === length ? whole : whole.subarray(skip, skip + length);
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    assert(!this.readOnly, `write to read-only device ${this.name}`);
    const bs = this.blockSize;
    assert(offset >= 0 && offset + data.length <= this.sizeBytes, `write [${offset}, +${data.length}) beyond ${this.name}`);
    assert(offset % bs === 0 && data.length % bs === 0,
      `write [${offset}, +${data.length}) to ${this.name} is not aligned to its ${bs}-byte blocks`);
    const parts: Array<Promise<void>> = [];
    for (let done = 0; done < data.length; done += MAX_TRANSFER_BYTES) {
      const chunk = data.subarray(done, Math.min(data.length, done + MAX_TRANSFER_BYTES));
      const lba = (offset + done) / bs;
      parts.push(this.queue.add(() => this.session.write(lba, chunk)));
    }
    await Promise.all(parts);
  }

  async flush(): Promise<void> {
    if (this.readOnly) return;
    await this.session.synchronizeCache();
  }

  async close(): Promise<void> {
    await this.queue.onIdle();
    await this.session.close();
  }
}
