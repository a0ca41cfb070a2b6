/**
 * Replica slots: where each replica publishes how far it has read the log.
 * The primary reads them to find the GC horizon (it never reclaims what a live
 * replica can still read); `lsnfs status` reads them to report lag. A slot is
 * one sector, written only by the replica that owns it.
 */
import { BlockDevice } from '../device/device';
import { UserError } from '../util/errors';
import { crc32c } from '../util/crc32c';
import { REPLICA_SLOTS_OFFSET, REPLICA_SLOT_BYTES, REPLICA_SLOT_COUNT, readU48, writeU48 } from '../log/format';

const SLOT_MAGIC = Buffer.from('LSNFS-RP', 'ascii');
/** A reader rewrites its slot at least this often, as its heartbeat. */
export const SLOT_HEARTBEAT_MS = 200;
const HOST_BYTES = 64;

export interface ReplicaSlot {
  index: number;
  host: string;
  pid: number;
  /** The LSN the reader serves: versions visible there must be kept (the GC horizon). */
  viewLsn: number;
  /**
   * How far the reader has consumed the log (for a replica the same as viewLsn;
   * a snapshot consumes the cleaner's relocations beyond its view). The
   * cleaner frees a range only after every live reader consumed the copies it
   * made of that range.
   */
  appliedLsn: number;
  /** Record time (primary's clock) of the last record applied; lag in ms derives from it. */
  viewTimeMs: number;
  heartbeatAtMs: number;
  /** A PostgreSQL standby's mount: the database LSN (its minRecoveryPoint) the non-WAL tree is served at; 0 otherwise. */
  viewWalLsn?: number;
  /** A PostgreSQL standby's mount: bytes in its private overlay; 0 otherwise. */
  overlayBytes?: number;
  /**
   * Files deleted at or after this LSN must stay readable for this reader, whatever its view (0: none).
   * A standby keeps showing the WAL segments the primary removed until its restart point has passed
   * them, without holding its whole view (and with it every version the primary rewrites) there.
   */
  keepDeletedFromLsn?: number;
  /**
   * Page versions visible at or after this LSN must stay readable for this reader, when it is past
   * viewLsn (0: from viewLsn). A standby keeps locally its view's version of each page the primary has
   * written since (StandbyGate.keepVersionsFromLsn), so the versions between need not stay on the device.
   */
  keepVersionsFromLsn?: number;
}

// Field offsets in a slot.
const RS = { magic: 0, viewLsn: 8, viewTimeMs: 16, heartbeatAtMs: 24, pid: 32, host: 40, appliedLsn: 104, viewWalLsn: 112, overlayBytes: 120, keepDeletedFromLsn: 128, keepVersionsFromLsn: 136, crc: REPLICA_SLOT_BYTES - 4 } as const;

function slotOffset(index: number): number {
  return REPLICA_SLOTS_OFFSET + index * REPLICA_SLOT_BYTES;
}

export function encodeSlot(slot: Omit<ReplicaSlot, 'index'> | null): Buffer {
  const buf = Buffer.alloc(REPLICA_SLOT_BYTES);
  if (slot) {
    SLOT_MAGIC.copy(buf, RS.magic);
    writeU48(buf, RS.viewLsn, slot.viewLsn);
    writeU48(buf, RS.appliedLsn, slot.appliedLsn);
    writeU48(buf, RS.viewWalLsn, slot.viewWalLsn ?? 0);
    writeU48(buf, RS.overlayBytes, slot.overlayBytes ?? 0);
    writeU48(buf, RS.keepDeletedFromLsn, slot.keepDeletedFromLsn ?? 0);
    writeU48(buf, RS.keepVersionsFromLsn, slot.keepVersionsFromLsn ?? 0);
    writeU48(buf, RS.viewTimeMs, slot.viewTimeMs);
    writeU48(buf, RS.heartbeatAtMs, slot.heartbeatAtMs);
    buf.writeUInt32LE(slot.pid, RS.pid);
    Buffer.from(slot.host, 'utf8').subarray(0, HOST_BYTES - 1).copy(buf, RS.host);
  }
  buf.writeUInt32LE(crc32c(buf.subarray(0, RS.crc)), RS.crc);
  return buf;
}

/** A slot's bytes: null when free (no magic), 'damaged' when its checksum fails. */
export function decodeSlot(buf: Buffer, index: number): ReplicaSlot | null | 'damaged' {
  if (!buf.subarray(0, 8).equals(SLOT_MAGIC)) return null;
  if (buf.readUInt32LE(RS.crc) !== crc32c(buf.subarray(0, RS.crc))) return 'damaged';
  const hostBytes = buf.subarray(RS.host, RS.host + HOST_BYTES);
  return {
    index,
    host: hostBytes.subarray(0, Math.max(0, hostBytes.indexOf(0))).toString('utf8'),
    pid: buf.readUInt32LE(RS.pid),
    viewLsn: readU48(buf, RS.viewLsn),
    appliedLsn: readU48(buf, RS.appliedLsn),
    viewWalLsn: readU48(buf, RS.viewWalLsn),
    overlayBytes: readU48(buf, RS.overlayBytes),
    keepDeletedFromLsn: readU48(buf, RS.keepDeletedFromLsn),
    keepVersionsFromLsn: readU48(buf, RS.keepVersionsFromLsn),
    viewTimeMs: readU48(buf, RS.viewTimeMs),
    heartbeatAtMs: readU48(buf, RS.heartbeatAtMs),
  };
}

/**
 * Reads of the slot area after one that found a slot failing its checksum.
 * A read that races the owner's rewrite of its slot can see it half written
 * (buffered reads of a file do not wait for a 512-byte write in progress, and
 * a target's backing file is no different), and one made of the slot area a
 * moment later sees it whole.
 */
const DAMAGED_SLOT_REREADS = 5;

/**
 * The slots in use, and those still failing their checksum after
 * DAMAGED_SLOT_REREADS more reads. A damaged slot may be a live reader's:
 * the horizon must not move past it, the cleaner must wait for it, and no
 * new reader may take it.
 */
export async function readSlotArea(device: BlockDevice): Promise<{ slots: ReplicaSlot[]; damaged: number[] }> {
  for (let reread = 0; ; reread++) {
    const area = await device.read(REPLICA_SLOTS_OFFSET, REPLICA_SLOT_COUNT * REPLICA_SLOT_BYTES);
    const slots: ReplicaSlot[] = [];
    const damaged: number[] = [];
    for (let index = 0; index < REPLICA_SLOT_COUNT; index++) {
      const slot = decodeSlot(area.subarray(index * REPLICA_SLOT_BYTES, (index + 1) * REPLICA_SLOT_BYTES), index);
      if (slot === 'damaged') damaged.push(index);
      else if (slot) slots.push(slot);
    }
    if (damaged.length === 0 || reread >= DAMAGED_SLOT_REREADS) return { slots, damaged };
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
}

/** The slots in use, for naming hosts and reporting (a slot that stays damaged is left out). */
export async function readSlots(device: BlockDevice): Promise<ReplicaSlot[]> {
  return (await readSlotArea(device)).slots;
}

/** What the primary logs while a slot stays damaged. */
export function describeDamagedSlots(device: BlockDevice, damaged: number[]): string {
  return `device ${device.name}: replica slot ${damaged.join(', ')} (byte ${slotOffset(damaged[0]!)}) failed its checksum on ` +
    `${DAMAGED_SLOT_REREADS + 1} reads; the reader there cannot be accounted for, so nothing it may read is reclaimed until the ` +
    `slot reads whole (a live reader rewrites it every ${SLOT_HEARTBEAT_MS} ms)`;
}

/** A replica is live while its heartbeat is younger than the timeout. */
export function liveSlots(slots: ReplicaSlot[], nowMs: number, heartbeatTimeoutMs: number): ReplicaSlot[] {
  return slots.filter((slot) => nowMs - slot.heartbeatAtMs <= heartbeatTimeoutMs);
}

/**
 * Picks the slot for `host`: its own from an earlier mount, else a free one,
 * else the one with the oldest heartbeat if that is older than the timeout.
 */
export async function claimSlot(device: BlockDevice, host: string, heartbeatTimeoutMs: number): Promise<number> {
  const { slots, damaged } = await readSlotArea(device);
  const own = slots.find((slot) => slot.host === host);
  if (own) return own.index;
  // A damaged slot may be a live reader's: never taken.
  const used = new Set([...slots.map((slot) => slot.index), ...damaged]);
  for (let index = 0; index < REPLICA_SLOT_COUNT; index++) if (!used.has(index)) return index;
  const stale = slots.filter((slot) => Date.now() - slot.heartbeatAtMs > heartbeatTimeoutMs)
    .sort((a, b) => a.heartbeatAtMs - b.heartbeatAtMs)[0];
  if (!stale) throw new UserError(`device ${device.name}: all ${REPLICA_SLOT_COUNT} replica slots are held by live replicas`);
  return stale.index;
}

export async function writeSlot(device: BlockDevice, index: number, slot: Omit<ReplicaSlot, 'index'> | null): Promise<void> {
  await device.write(slotOffset(index), encodeSlot(slot));
}
