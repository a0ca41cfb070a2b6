/**
 * The right to write a device, whatever enforces it. A primary mount takes a
 * WriterLease before it touches the log, checks it before every batch,
 * heartbeats through it, and stops writing for good once it is lost.
 *
 *   plain file  emulated: the holder block is the lock (cooperative)
 *   iscsi://    SCSI-3 PR type 5 on the device's own session (enforced by the
 *               target), plus the holder block for the holder's name, epoch
 *               and heartbeat, checked before every batch as well: a second
 *               line of defence when a target forgets its reservations (tgt
 *               does on restart).
 */
import pino from 'pino';
import { BlockDevice } from '../device/device';
import { IscsiDevice, UnitAttention } from '../device/iscsi-device';
import { UserError } from '../util/errors';
import { EmulatedReservation, assertNotHeld } from './emulated-reservation';
import { ScsiReservation, formatKey, readerKeyForHost } from './scsi-reservation';

const log = pino({ name: 'lsnfs-fence' }, pino.destination(2));

export type FenceBackend = 'emulated' | 'scsi';

export interface WriterLease {
  readonly backend: FenceBackend;
  /** Throws once this mount may no longer write (called before every log batch). */
  check(): Promise<void>;
  /**
   * Throws once this mount may no longer write (called after a flush, before
   * acknowledging it). Over iSCSI the flush itself would have failed, so only
   * what the target already told us counts; emulated, the holder block is read again.
   */
  confirm(): Promise<void>;
  heartbeat(): Promise<void>;
  /** Clean unmount: give the device up. */
  release(): Promise<void>;
  /** `listener` runs when the storage tells this host it was fenced, before any write of ours fails. */
  onLost(listener: (error: Error) => void): void;
}

export function fenceBackendOf(device: BlockDevice): FenceBackend {
  return device instanceof IscsiDevice ? 'scsi' : 'emulated';
}

/** Takes the device for `host` as primary of epoch `epoch`; refused (naming the holder) while another live primary holds it. */
export async function acquireWriterLease(device: BlockDevice, host: string, epoch: number): Promise<WriterLease> {
  await assertNotHeld(device, host);
  if (!(device instanceof IscsiDevice)) {
    const emulated = await EmulatedReservation.take(device, host, epoch);
    return {
      backend: 'emulated',
      check: () => emulated.check(),
      confirm: () => emulated.check(),
      heartbeat: () => emulated.heartbeat(),
      release: () => emulated.release(),
      onLost: () => undefined, // nobody tells a plain file's holder: check() finds out
    };
  }
  const pr = new ScsiReservation(device.session, host);
  await takeScsiReservation(pr);
  const holderBlock = await EmulatedReservation.take(device, host, epoch);
  let lost: Error | null = null;
  const listeners: Array<(error: Error) => void> = [];
  pr.onFenced((ua: UnitAttention) => {
    // A UA is a hint; the reservation itself says whether we still hold it.
    void pr.readHolder().then((holder) => {
      if (holder?.key === pr.key || lost) return;
      lost = new UserError(`device ${device.name}: host '${host}' was fenced (unit attention ${ua.code} ${ua.description}; ` +
        `reservation now ${holder ? `held by key ${formatKey(holder.key)}` : 'free'}); writes stopped for good`);
      for (const listener of listeners) listener(lost);
    }).catch((error: Error) => log.warn({ err: error }, 'could not read the reservation after a unit attention'));
  });
  return {
    backend: 'scsi',
    async check() {
      if (lost) throw lost;
      await holderBlock.check();
    },
    async confirm() {
      if (lost) throw lost;
    },
    heartbeat: () => holderBlock.heartbeat(),
    async release() {
      await holderBlock.release();
      // Unregistering the holder also releases its reservation.
      await pr.unregister();
    },
    onLost(listener) { listeners.push(listener); },
  };
}

/**
 * Registers this session with `pr`'s key and makes it the reservation holder.
 * The holder block said no live primary holds the device, so whoever holds
 * the reservation now is a fencer that stepped away (`lsnfs fence`) or a dead
 * session of ours: PREEMPT moves the reservation here (and, for our own key,
 * drops our stale nexus).
 */
async function takeScsiReservation(pr: ScsiReservation): Promise<void> {
  await pr.session.registerAndIgnoreExistingKey(pr.key);
  const holder = await pr.readHolder();
  if (holder === null) {
    await pr.reserve();
    return;
  }
  if (holder.key !== pr.key) log.info({ previousHolderKey: formatKey(holder.key) }, 'taking over the reservation left by a fenced primary');
  await pr.preempt(holder.key);
}

/**
 * A reader mount writes its slot: over iSCSI its session must be a
 * registrant (type 5 lets registrants write). Readers use a key of their
 * own, so that fencing or taking over a host's primary key never touches them.
 */
export async function registerReader(device: BlockDevice, host: string): Promise<void> {
  if (device instanceof IscsiDevice) await device.session.registerAndIgnoreExistingKey(readerKeyForHost(host));
}
