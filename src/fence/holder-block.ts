/**
 * The holder block: who is the primary of a device, in the device's
 * reservation area (FORMAT.md). Every backend keeps it: for plain files it
 * IS the reservation (src/fence/emulated-reservation.ts); over iSCSI the
 * target enforces the reservation and the block names the holder (a SCSI key
 * is only a hash), carries its epoch and its heartbeat, and stays the
 * second line of defence should the target forget its reservations.
 */
import { promises as fsp } from 'node:fs';
import { BlockDevice } from '../device/device';
import { RESERVATION_OFFSET, readU48, writeU48 } from '../log/format';
import { crc32c } from '../util/crc32c';

const HOLDER_MAGIC = Buffer.from('LSNFS-RS', 'ascii');
export const HOLDER_BLOCK_BYTES = 512;
const HOST_BYTES = 64;

/** The primary rewrites the block this often; a failover refuses without --force while it is fresher than HOLDER_STALE_MS. */
export const HOLDER_HEARTBEAT_INTERVAL_MS = 1000;
export const HOLDER_STALE_MS = 3 * HOLDER_HEARTBEAT_INTERVAL_MS;

export interface Holder {
  host: string;
  pid: number;
  /** Random per mount: two mounts of one host are different holders. */
  key: number;
  epoch: number;
  heartbeatAtMs: number;
  /** The kernel boot id of the machine the holder runs on: tells whether `pid` is a process of this machine. */
  bootId: string;
}

// Field offsets in the block.
const HB = { magic: 0, key: 8, pid: 16, epoch: 24, heartbeatAtMs: 32, host: 40, bootId: 104, crc: HOLDER_BLOCK_BYTES - 4 } as const;
const BOOT_ID_BYTES = 16;

/** The current holder, or null when nobody holds the device (released, fenced, never mounted). */
export async function readHolder(device: BlockDevice): Promise<Holder | null> {
  return decodeHolder(await device.read(RESERVATION_OFFSET, HOLDER_BLOCK_BYTES));
}

/** The holder in a holder block's bytes, or null. */
export function decodeHolder(buf: Buffer): Holder | null {
  if (!buf.subarray(0, 8).equals(HOLDER_MAGIC)) return null;
  if (buf.readUInt32LE(HB.crc) !== crc32c(buf.subarray(0, HB.crc))) return null;
  const key = readU48(buf, HB.key);
  if (key === 0) return null;
  const hostBytes = buf.subarray(HB.host, HB.host + HOST_BYTES);
  return {
    key,
    pid: buf.readUInt32LE(HB.pid),
    epoch: readU48(buf, HB.epoch),
    heartbeatAtMs: readU48(buf, HB.heartbeatAtMs),
    host: hostBytes.subarray(0, Math.max(0, hostBytes.indexOf(0))).toString('utf8'),
    bootId: buf.subarray(HB.bootId, HB.bootId + BOOT_ID_BYTES).toString('hex'),
  };
}

/** Writes the block (null: nobody holds the device). `durable`: flushed before it returns. */
export async function writeHolder(device: BlockDevice, holder: Holder | null, options: { durable: boolean }): Promise<void> {
  const buf = Buffer.alloc(HOLDER_BLOCK_BYTES);
  HOLDER_MAGIC.copy(buf, HB.magic);
  if (holder) {
    writeU48(buf, HB.key, holder.key);
    buf.writeUInt32LE(holder.pid, HB.pid);
    writeU48(buf, HB.epoch, holder.epoch);
    writeU48(buf, HB.heartbeatAtMs, holder.heartbeatAtMs);
    Buffer.from(holder.host, 'utf8').subarray(0, HOST_BYTES - 1).copy(buf, HB.host);
    Buffer.from(holder.bootId, 'hex').copy(buf, HB.bootId);
  }
  buf.writeUInt32LE(crc32c(buf.subarray(0, HB.crc)), HB.crc);
  await device.write(RESERVATION_OFFSET, buf);
  if (options.durable) await device.flush();
}

/** "host 'a' (pid 12, epoch 3, last heartbeat 0.4 s ago)" */
export function describeHolder(holder: Holder, nowMs = Date.now()): string {
  const age_s = ((nowMs - holder.heartbeatAtMs) / 1000).toFixed(1);
  return `host '${holder.host}' (pid ${holder.pid}, epoch ${holder.epoch}, last heartbeat ${age_s} s ago)`;
}

export function holderHeartbeats(holder: Holder, nowMs = Date.now()): boolean {
  return nowMs - holder.heartbeatAtMs < HOLDER_STALE_MS;
}

let bootIdCache: string | undefined;

/** This machine's kernel boot id (32 hex digits), as stored in the holder block. */
export async function localBootId(): Promise<string> {
  bootIdCache ??= (await fsp.readFile('/proc/sys/kernel/random/boot_id', 'utf8')).trim().replace(/-/g, '');
  return bootIdCache;
}
