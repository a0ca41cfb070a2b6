/**
 * Emulated reservation for devices without SCSI-3/NVMe persistent
 * reservations (plain files). The holder is recorded in the device's
 * reservation block and checked before every log write.
 *
 * This is COOPERATIVE fencing: it stops lsnfs processes that follow the
 * protocol, but nothing stops a frozen process that resumes between its check
 * and its write, or any other program, from writing the device. The epoch in
 * every record is the second line of defence. Enforced fencing needs a device
 * whose target enforces reservations (iSCSI, SCSI, NVMe).
 */
import { BlockDevice } from '../device/device';
import { UserError } from '../util/errors';
import { RESERVATION_OFFSET, readU48, writeU48 } from '../log/format';
import { crc32c } from '../util/crc32c';
import { processAlive } from '../util/process';

const RESERVATION_MAGIC = Buffer.from('LSNFS-RS', 'ascii');
const BLOCK_BYTES = 512;
const HOST_BYTES = 64;

export interface Holder {
  host: string;
  pid: number;
  /** Random per mount: two mounts of one host are different holders. */
  key: number;
  epoch: number;
  heartbeatAtMs: number;
}

// Field offsets in the reservation block.
const RB = { magic: 0, key: 8, pid: 16, epoch: 24, heartbeatAtMs: 32, host: 40, crc: BLOCK_BYTES - 4 } as const;

export async function readHolder(device: BlockDevice): Promise<Holder | null> {
  const buf = await device.read(RESERVATION_OFFSET, BLOCK_BYTES);
  if (!buf.subarray(0, 8).equals(RESERVATION_MAGIC)) return null;
  if (buf.readUInt32LE(RB.crc) !== crc32c(buf.subarray(0, RB.crc))) return null;
  const key = readU48(buf, RB.key);
  if (key === 0) return null;
  const hostBytes = buf.subarray(RB.host, RB.host + HOST_BYTES);
  return {
    key,
    pid: buf.readUInt32LE(RB.pid),
    epoch: readU48(buf, RB.epoch),
    heartbeatAtMs: readU48(buf, RB.heartbeatAtMs),
    host: hostBytes.subarray(0, Math.max(0, hostBytes.indexOf(0))).toString('utf8'),
  };
}

async function writeHolder(device: BlockDevice, holder: Holder | null, options: { durable: boolean }): Promise<void> {
  const buf = Buffer.alloc(BLOCK_BYTES);
  RESERVATION_MAGIC.copy(buf, RB.magic);
  if (holder) {
    writeU48(buf, RB.key, holder.key);
    buf.writeUInt32LE(holder.pid, RB.pid);
    writeU48(buf, RB.epoch, holder.epoch);
    writeU48(buf, RB.heartbeatAtMs, holder.heartbeatAtMs);
    Buffer.from(holder.host, 'utf8').subarray(0, HOST_BYTES - 1).copy(buf, RB.host);
  }
  buf.writeUInt32LE(crc32c(buf.subarray(0, RB.crc)), RB.crc);
  await device.write(RESERVATION_OFFSET, buf);
  // Taking and releasing must survive a crash; a heartbeat is only a liveness hint.
  if (options.durable) await device.flush();
}


export class EmulatedReservation {
  private constructor(private readonly device: BlockDevice, private holder: Holder) {}

  /**
   * Takes the reservation for `host`. Refused while another host holds it, or
   * while a live process of this host does: a second writer never starts.
   * A holder that is this host with a dead pid crashed and is replaced.
   */
  static async acquire(device: BlockDevice, host: string, epoch: number): Promise<EmulatedReservation> {
    const current = await readHolder(device);
    if (current && (current.host !== host || (current.pid !== process.pid && processAlive(current.pid)))) {
      const age_s = ((Date.now() - current.heartbeatAtMs) / 1000).toFixed(1);
      throw new UserError(
        `device ${device.name}: already mounted read-write by host '${current.host}' (pid ${current.pid}, epoch ${current.epoch}, ` +
          `last heartbeat ${age_s} s ago); unmount it there first${current.host !== host ? ", or fence it with 'lsnfs fence'" : ''}`,
      );
    }
    const holder: Holder = { host, pid: process.pid, key: 1 + Math.floor(Math.random() * 2 ** 47), epoch, heartbeatAtMs: Date.now() };
    await writeHolder(device, holder, { durable: true });
    return new EmulatedReservation(device, holder);
  }

  /** Throws unless this mount still holds the reservation (called before every log write). */
  async check(): Promise<void> {
    const current = await readHolder(this.device);
    if (!current || current.key !== this.holder.key) {
      throw new UserError(
        `device ${this.device.name}: this host lost the reservation` +
          (current ? ` to host '${current.host}' (epoch ${current.epoch})` : '') + '; writes stopped for good',
      );
    }
  }

  async heartbeat(): Promise<void> {
    await this.check();
    this.holder = { ...this.holder, heartbeatAtMs: Date.now() };
    await writeHolder(this.device, this.holder, { durable: false });
  }

  async release(): Promise<void> {
    const current = await readHolder(this.device);
    if (current?.key === this.holder.key) await writeHolder(this.device, null, { durable: true });
  }
}
