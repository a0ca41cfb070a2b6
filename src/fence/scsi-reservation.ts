/**
 * Enforced fencing with SCSI-3 persistent reservations over iSCSI
 * (DESIGN.md §5). The target, not lsnfs, refuses a fenced host's writes.
 *
 * Design notes
 *
 * - Keys: one 64-bit key per host NAME, the first 8 bytes of
 *   sha256(host) (never 0: 0 means "no key" in SPC). Anyone who knows a host's
 *   name knows its key, so `lsnfs fence --host NAME` can preempt it without
 *   asking it, and READ KEYS can be mapped back to names (hostForKey).
 *   Two mounts of the same host therefore share a key; that is fine because
 *   lsnfs allows one writer per host and a restarted host must be able to
 *   take over its own stale registration (reclaim()).
 *
 * - Registration lives on the I_T nexus, i.e. the iSCSI session: this class
 *   must be used over the SAME IscsiSession that does the host's I/O
 *   (IscsiDevice.session). A registration made on another session would
 *   not let the device's writes through.
 *
 * - Type: Write Exclusive – Registrants Only (5) by default. Every
 *   registered nexus may write (the primary, and replicas that write their
 *   slots), unregistered ones get RESERVATION CONFLICT, everyone may read.
 *   Measured on tgt 1.0.85 (test/integration/iscsi.test.ts): type 5 behaves
 *   as SPC-4 says — registrant B writes GOOD, unregistered C gets 0x18; when
 *   B PREEMPTs A's key, A's registration goes, the reservation passes to B
 *   (still type 5), A's next command gets UNIT ATTENTION 2A/03 and then
 *   0x18 on every write and SYNCHRONIZE CACHE, its reads still work. Type 1
 *   (Write Exclusive) behaves the same except that registrants other than
 *   the holder cannot write either; use it if replicas never write.
 *   Type 7 (All Registrants) also works on tgt, but its holder is "every
 *   registrant" (READ RESERVATION shows key 0), so readHolder() cannot name
 *   a primary; we do not use it.
 *
 * - With registrant types any initiator can REGISTER (AND IGNORE EXISTING
 *   KEY) and write: fencing holds only if a fenced host never registers
 *   again by itself. Nothing here re-registers automatically; after a
 *   RESERVATION_CONFLICT or a 2A/03 unit attention (onFenced) the caller
 *   stops writing for good.
 *
 * - tgt forgets reservations when tgtd restarts and has no PREEMPT AND
 *   ABORT (commands accepted before a PREEMPT are not aborted): the epoch in
 *   the log stays the second line of defence.
 */
import { createHash } from 'node:crypto';
import { IscsiSession, PrType, UnitAttention } from '../device/iscsi-device';

export { PrType };

export const DEFAULT_RESERVATION_TYPE = PrType.WriteExclusiveRegistrantsOnly;

/** The persistent-reservation key of host `host`: first 8 bytes of sha256(host), never 0. */
export function reservationKeyForHost(host: string): bigint {
  const key = createHash('sha256').update(host, 'utf8').digest().readBigUInt64BE(0);
  return key === 0n ? 1n : key;
}

/** The host among `hosts` whose key is `key`, if any. */
export function hostForKey(key: bigint, hosts: Iterable<string>): string | undefined {
  for (const host of hosts) if (reservationKeyForHost(host) === key) return host;
  return undefined;
}

export function formatKey(key: bigint): string {
  return `0x${key.toString(16).padStart(16, '0')}`;
}

export interface ScsiHolder {
  key: bigint;
  type: PrType;
}

/** UAs that mean "this nexus lost its registration or reservation". */
const FENCED_UAS = new Set(['2A/03', '2A/05']);

export class ScsiReservation {
  readonly key: bigint;

  constructor(
    readonly session: IscsiSession,
    readonly host: string,
    readonly type: PrType = DEFAULT_RESERVATION_TYPE,
  ) {
    this.key = reservationKeyForHost(host);
  }

  /** REGISTER this host's key on this session (fails with RESERVATION_CONFLICT if the session already has a key). */
  register(): Promise<void> {
    return this.session.register(this.key);
  }

  /** RESERVE (this session must be registered). Succeeds again if we already hold it. */
  reserve(): Promise<void> {
    return this.session.reserve(this.key, this.type);
  }

  /**
   * Takes over this host's own registration after a restart: a new session
   * registers the host key, then PREEMPTs that same key, which (SPC-4, and
   * tgt does it) removes every OTHER nexus registered with it — the stale
   * session of the previous run — and moves its reservation here. Only for
   * a host that knows its previous incarnation is dead; never after being
   * fenced by another host.
   */
  async reclaim(): Promise<void> {
    await this.session.registerAndIgnoreExistingKey(this.key);
    await this.session.preempt(this.key, this.key, this.type);
  }

  /** The registered keys (a key appears once per registered nexus). */
  async readKeys(): Promise<bigint[]> {
    return (await this.session.readKeys()).keys;
  }

  async isRegistered(): Promise<boolean> {
    return (await this.readKeys()).includes(this.key);
  }

  /** The reservation holder, or null if there is no reservation. */
  async readHolder(): Promise<ScsiHolder | null> {
    const { reservation } = await this.session.readReservation();
    return reservation && { key: reservation.key, type: reservation.type };
  }

  /**
   * PREEMPT: removes the victim's registration(s) and, if it held the
   * reservation, takes it (type this.type). From then on the target rejects
   * the victim's writes. This session must be registered.
   */
  preempt(victimKey: bigint): Promise<void> {
    return this.session.preempt(this.key, victimKey, this.type);
  }

  preemptHost(victimHost: string): Promise<void> {
    return this.preempt(reservationKeyForHost(victimHost));
  }

  /** RELEASE the reservation (registrations stay). */
  release(): Promise<void> {
    return this.session.release(this.key, this.type);
  }

  /** Drops this session's registration (and the reservation, if it was the holder). */
  unregister(): Promise<void> {
    return this.session.unregister(this.key);
  }

  /**
   * Calls `listener` when the target tells this session its registration or
   * reservation is gone (UNIT ATTENTION 2A/03 "reservations preempted" or
   * 2A/05 "registrations preempted"; 2A/04 "released" is not fencing). Returns a
   * function that removes the listener.
   */
  onFenced(listener: (ua: UnitAttention) => void): () => void {
    const handler = (ua: UnitAttention) => { if (FENCED_UAS.has(ua.code)) listener(ua); };
    this.session.on('unitAttention', handler);
    return () => { this.session.off('unitAttention', handler); };
  }
}

/** The key a reader mount of `host` registers with (never a primary's key, see registerReader). */
export function readerKeyForHost(host: string): bigint {
  return reservationKeyForHost(`replica:${host}`);
}

/** "primary 'a'", "replica 'b'" or the bare key, for the registrations a device lists. */
export function describeKey(key: bigint, hosts: Iterable<string>): string {
  for (const host of hosts) {
    if (reservationKeyForHost(host) === key) return `primary '${host}'`;
    if (readerKeyForHost(host) === key) return `replica '${host}'`;
  }
  return formatKey(key);
}
