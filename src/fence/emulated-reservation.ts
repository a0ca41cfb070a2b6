/**
 * Emulated reservation for devices without SCSI-3/NVMe persistent
 * reservations (plain files): the holder block (holder-block.ts) is the
 * reservation, checked before every log write.
 *
 * This is COOPERATIVE fencing: it stops lsnfs processes that follow the
 * protocol, but nothing stops a frozen process that resumes between its check
 * and its write, or any other program, from writing the device. The epoch in
 * every record is the second line of defence. Enforced fencing needs a device
 * whose target enforces reservations (iSCSI, SCSI, NVMe).
 */
import { BlockDevice } from '../device/device';
import { UserError } from '../util/errors';
import { processAlive } from '../util/process';
import { Holder, describeHolder, readHolder, writeHolder } from './holder-block';

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

  /** Takes the device for `host` (see assertNotHeld). */
  static async acquire(device: BlockDevice, host: string, epoch: number): Promise<EmulatedReservation> {
    await assertNotHeld(device, host);
    return EmulatedReservation.take(device, host, epoch);
  }

  /** Writes this mount into the holder block, unconditionally: the caller has made sure it may. */
  static async take(device: BlockDevice, host: string, epoch: number): Promise<EmulatedReservation> {
    const holder: Holder = { host, pid: process.pid, key: 1 + Math.floor(Math.random() * 2 ** 47), epoch, heartbeatAtMs: Date.now() };
    await writeHolder(device, holder, { durable: true });
    return new EmulatedReservation(device, holder);
  }

  /** Throws unless this mount still holds the device (called before every log write). */
  async check(): Promise<void> {
    const current = await readHolder(this.device);
    if (!current || current.key !== this.holder.key) {
      throw new UserError(
        `device ${this.device.name}: host '${this.holder.host}' lost the reservation` +
          (current ? ` to ${describeHolder(current)}` : ' (fenced)') + '; writes stopped for good',
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
