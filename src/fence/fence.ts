/**
 * Fencing a host off a device (`lsnfs fence`, and the first step of
 * `lsnfs failover`): after fenceHost returns, the victim cannot write the log
 * any more — enforced by the target over iSCSI (PREEMPT), by the holder block
 * for plain files (cooperative, see emulated-reservation.ts).
 *
 * Checks come first: fencing a host that holds nothing is refused and leaves
 * the device as it was.
 */
import { BlockDevice } from '../device/device';
import { IscsiDevice } from '../device/iscsi-device';
import { readSlots } from '../replica/slots';
import { UserError } from '../util/errors';
import { Holder, describeHolder, localBootId, readHolder, writeHolder } from './holder-block';
import { processAlive } from '../util/process';
import { FenceBackend, fenceBackendOf } from './writer-lease';
import { ScsiReservation, describeKey, formatKey, reservationKeyForHost } from './scsi-reservation';

export interface FenceResult {
  device: string;
  backend: FenceBackend;
  victim: string;
  /** The victim's holder block entry when it was the primary (its epoch, last heartbeat). */
  victimHolder: Holder | null;
  /** iSCSI: the key PREEMPTed. */
  preemptedKey?: string;
  /** Emulated, victim on this machine: its daemon, killed (and gone) before the holder block was cleared. */
  killedPid?: number;
  fencer: string;
}

/** Time for a SIGKILLed daemon to be gone (a write it had in the kernel completes first). */
const KILL_WAIT_MS = 10_000;

/**
 * A plain file has no target to refuse writes, but a holder on this machine
 * can be stopped for certain: SIGKILL works on a frozen process too, and once
 * the process is gone no write of it can still land (one that was inside the
 * kernel has completed). The log recovered after this holds all it wrote.
 */
async function killHolder(device: BlockDevice, holder: Holder): Promise<number | undefined> {
  if (!processAlive(holder.pid)) return undefined;
  process.kill(holder.pid, 'SIGKILL');
  const deadline = Date.now() + KILL_WAIT_MS;
  while (processAlive(holder.pid)) {
    if (Date.now() > deadline) throw new UserError(`device ${device.name}: the primary's daemon (pid ${holder.pid}) did not exit after SIGKILL; nothing fenced`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  return holder.pid;
}

export async function fenceHost(device: BlockDevice, victim: string, fencer: string): Promise<FenceResult> {
  if (fencer === victim) throw new UserError(`fence: host '${victim}' cannot fence itself; name another fencing host`);
  const holder = await readHolder(device);
  const victimHolder = holder?.host === victim ? holder : null;
  const result: FenceResult = { device: device.name, backend: fenceBackendOf(device), victim, victimHolder, fencer };
  if (!(device instanceof IscsiDevice)) {
    if (!victimHolder) throw new UserError(`device ${device.name}: host '${victim}' does not hold it (${holder ? `the primary is ${describeHolder(holder)}` : 'no primary holds it'}); nothing fenced`);
    if (victimHolder.bootId === (await localBootId())) result.killedPid = await killHolder(device, victimHolder);
    await writeHolder(device, null, { durable: true });
    return result;
  }
  const pr = new ScsiReservation(device.session, fencer);
  const victimKey = reservationKeyForHost(victim);
  const keys = await pr.readKeys();
  if (!keys.includes(victimKey)) {
    const hosts = new Set([victim, fencer, ...(holder ? [holder.host] : []), ...(await readSlots(device)).map((slot) => slot.host)]);
    const registered = [...new Set(keys)].map((key) => describeKey(key, hosts));
    throw new UserError(`device ${device.name}: host '${victim}' is not registered (key ${formatKey(victimKey)}); ` +
      `registered: ${registered.length > 0 ? registered.join(', ') : 'nobody'}; nothing fenced`);
  }
  await pr.session.registerAndIgnoreExistingKey(pr.key);
  // The reservation passes to this session and stays with it after we log out (the
  // registration outlives the session on the target), so the victim stays locked out
  // until the next primary takes the reservation over.
  await pr.preempt(victimKey);
  if (victimHolder) await writeHolder(device, null, { durable: true });
  result.preemptedKey = formatKey(victimKey);
  return result;
}
