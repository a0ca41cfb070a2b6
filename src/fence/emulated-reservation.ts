/**
 * Emulated reservation for devices without SCSI-3/NVMe persistent
 * reservations (plain files): the holder block (holder-block.ts) is the
 * reservation, checked before every log batch and again before a flush is
 * acknowledged.
 *
 * On its own this is COOPERATIVE: it stops lsnfs processes that follow the
 * protocol, but a process frozen between its check and its write can, on
 * resume, land one batch over the new primary's log. `lsnfs fence` closes
 * that for a holder on the same machine (the usual case for a file device)
 * by SIGKILLing it and waiting until it is gone — fencing by killing, as a
 * cluster kills a node. A holder on another machine (a file shared over a
 * network filesystem) cannot be killed: there fencing stays cooperative.
 * Enforced fencing needs a device whose target enforces reservations (iSCSI).
 */
import { BlockDevice } from '../device/device';
import { UserError } from '../util/errors';
import { processAlive } from '../util/process';
import { HOLDER_BLOCK_BYTES, Holder, decodeHolder, describeHolder, localBootId, readHolder, writeHolder } from './holder-block';
import { superblockFromArea } from '../log/superblock';
import { RESERVATION_OFFSET } from '../log/format';

/**
 * Refuses while another host holds the device, or while a live process of
 * this host does: a second writer never starts. A holder that is this host
 * with a dead pid crashed and may be replaced.
 */
export async function assertNotHeld(device: BlockDevice, host: string): Promise<void> {
  const current = await readHolder(device);
  if (current && (current.host !== host || (current.pid !== process.pid && processAlive(current.pid)))) {
    throw new UserError(
      `device ${device.name}: already mounted read-write by ${describeHolder(current)}; unmount it there first` +
        (current.host !== host ? `, or fail over with 'lsnfs failover --host ${host}' (or 'lsnfs fence --host ${current.host}')` : ''),
    );
  }
}

export class EmulatedReservation {
  private constructor(private readonly device: BlockDevice, private holder: Holder) {}

  /** Writes this mount into the holder block, unconditionally: the caller has made sure it may. */
  static async take(device: BlockDevice, host: string, epoch: number): Promise<EmulatedReservation> {
    const holder: Holder = {
      host, pid: process.pid, key: 1 + Math.floor(Math.random() * 2 ** 47), epoch, heartbeatAtMs: Date.now(), bootId: await localBootId(),
    };
    await writeHolder(device, holder, { durable: true });
    return new EmulatedReservation(device, holder);
  }

  /**
   * Throws unless this mount still holds the device (called before every log
   * write). Two rules close the races a frozen-and-resumed old primary can
   * cause with its holder-block heartbeat (written after its own check passed):
   * the superblock's epoch must still be ours (a new primary bumped it before
   * writing anything), and a holder entry of an OLDER epoch than ours is such a
   * stale write, which we overwrite instead of giving up.
   */
  async check(): Promise<void> {
    // One device read covers both superblock copies and the holder block: this runs before every batch.
    const head = await this.device.read(0, RESERVATION_OFFSET + HOLDER_BLOCK_BYTES);
    const current = decodeHolder(head.subarray(RESERVATION_OFFSET));
    if (current && current.key !== this.holder.key && current.epoch < this.holder.epoch) {
      await writeHolder(this.device, this.holder, { durable: true });
      return;
    }
    const epoch = superblockFromArea(this.device, head).epoch;
    if (!current || current.key !== this.holder.key || epoch !== this.holder.epoch) {
      throw new UserError(
        `device ${this.device.name}: host '${this.holder.host}' (epoch ${this.holder.epoch}) lost the reservation` +
          (current && current.key !== this.holder.key ? ` to ${describeHolder(current)}` : epoch !== this.holder.epoch ? ` (the device is at epoch ${epoch})` : ' (fenced)') +
          '; writes stopped for good',
      );
    }
  }

  async heartbeat(): Promise<void> {
    await this.check();
    this.holder = { ...this.holder, heartbeatAtMs: Date.now() };
    // A heartbeat is only a liveness hint: no flush.
    await writeHolder(this.device, this.holder, { durable: false });
  }

  async release(): Promise<void> {
    const current = await readHolder(this.device);
    if (current?.key === this.holder.key) await writeHolder(this.device, null, { durable: true });
  }
}
