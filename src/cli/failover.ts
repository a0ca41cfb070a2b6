/**
 * `lsnfs failover --device D --host NEW --mountpoint M`: makes host NEW the
 * primary of D in place of the current holder.
 *
 *   1. check   NEW is a known host of D (it has a live replica mount: the
 *              standby being promoted); the mountpoint is free or holds NEW's
 *              replica; the old primary no longer heartbeats (else --force).
 *   2. fence   PREEMPT the old primary's key (iSCSI: from here on the target
 *              rejects its writes) or clear the holder block (plain file,
 *              cooperative). See src/fence/fence.ts.
 *   3. promote unmount NEW's replica mount at M (its standby must be stopped
 *              first: `beforeUnmount`) and start a fresh primary mount of NEW
 *              there: it takes the reservation, recovers the log to its end,
 *              bumps the epoch and writes an Epoch record. A running replica
 *              is not switched to read-write in place: the fresh mount's
 *              recovery is what proves the log's end, and it costs ~0.5 s.
 *
 * The new primary's daemon is started first, and waits (held) while the
 * checks, the fence and the unmount run: Node's start and the device's
 * login (0.2-0.6 s) are then not part of the outage.
 *
 * Nothing on the device changes when a check fails.
 */
import { openDevice } from '../device/open';
import { FenceResult, fenceHost } from '../fence/fence';
import { describeHolder, holderHeartbeats, readHolder } from '../fence/holder-block';
import { liveSlots, readSlots } from '../replica/slots';
import { UserError } from '../util/errors';
import { DEFAULT_READER_TIMEOUT_MS } from '../volume/horizon';
import { HeldMount, spawnHeldMount, umount } from './mount';
import { isMounted, readMountRecord } from './runtime';

export interface FailoverOptions {
  device: string;
  /** The host that becomes primary. */
  host: string;
  mountpoint: string;
  /** Fence the old primary even though it still heartbeats. */
  force: boolean;
  allowOther: boolean;
  replicaTimeoutMs?: number;
  /** Runs after the fence, before NEW's replica mount is unmounted: stop what uses it (its PostgreSQL standby). */
  beforeUnmount?: { phase: string; run(): Promise<void> };
}

/** check, fence, (beforeUnmount's phase), unmount replica, daemon start (what is left of it), mount primary. */
export interface FailoverPhase { name: string; ms: number }

export interface FailoverReport {
  device: string;
  oldPrimary: string | null;
  newPrimary: string;
  /** The new primary's epoch. */
  epoch: number;
  /** Null when nobody held the device (already fenced or released). */
  fence: FenceResult | null;
  phases: FailoverPhase[];
  pid: number;
}

export async function failover(options: FailoverOptions): Promise<FailoverReport> {
  const phases: FailoverPhase[] = [];
  let phaseStartMs = Date.now();
  const phaseDone = (name: string): void => {
    const nowMs = Date.now();
    phases.push({ name, ms: nowMs - phaseStartMs });
    phaseStartMs = nowMs;
  };
  const mountRecord = await readMountRecord(options.mountpoint);
  const replicaAtMountpoint = mountRecord?.role === 'replica' && mountRecord.host === options.host;
  if (!replicaAtMountpoint && (mountRecord || (await isMounted(options.mountpoint)))) {
    throw new UserError(`mountpoint ${options.mountpoint}: already in use${mountRecord ? ` (${mountRecord.role} mount of host '${mountRecord.host}')` : ''}; ` +
      `give a free mountpoint or the replica mount of host '${options.host}'`);
  }
  const held = spawnHeldMount({
    device: options.device, mountpoint: options.mountpoint, host: options.host, role: 'primary', allowOther: options.allowOther,
    foreground: false, pollIntervalMs: 5, ...(options.replicaTimeoutMs !== undefined ? { replicaTimeoutMs: options.replicaTimeoutMs } : {}),
  });
  // Its failure (say, an unreachable target) surfaces when it is awaited, or not at all when a check fails first.
  held.catch(() => undefined);
  try {
    return { ...(await failoverWith(options, replicaAtMountpoint, held, phaseDone)), phases };
  } catch (error) {
    await held.then((daemon) => daemon.cancel(), () => undefined);
    throw error;
  }
}

async function failoverWith(
  options: FailoverOptions, replicaAtMountpoint: boolean, held: Promise<HeldMount>, phaseDone: (name: string) => void,
): Promise<Omit<FailoverReport, 'phases'>> {
  // The fencing session is NEW's own: over iSCSI the reservation passes to NEW's key, which its primary mount then reclaims.
  const device = await openDevice(options.device, { readOnly: false, host: options.host });
  let fence: FenceResult | null = null;
  let oldPrimary: string | null = null;
  try {
    const holder = await readHolder(device);
    oldPrimary = holder?.host ?? null;
    if (holder?.host === options.host) throw new UserError(`device ${options.device}: host '${options.host}' is already its primary (${describeHolder(holder)})`);
    const replicas = liveSlots(await readSlots(device), Date.now(), DEFAULT_READER_TIMEOUT_MS);
    if (!replicas.some((slot) => slot.host === options.host)) {
      const known = [...new Set(replicas.map((slot) => slot.host))];
      throw new UserError(`device ${options.device}: host '${options.host}' is unknown there: it has no live replica mount ` +
        `(replicas: ${known.length > 0 ? known.join(', ') : 'none'}); mount a replica on it first, or fail over to one of those`);
    }
    if (holder && holderHeartbeats(holder) && !options.force) {
      throw new UserError(`device ${options.device}: the primary ${describeHolder(holder)} still heartbeats, so it may be alive; ` +
        'stop it, or pass --force to fence it anyway');
    }
    phaseDone('check');
    if (holder) fence = await fenceHost(device, holder.host, options.host);
    phaseDone('fence');
  } finally {
    await device.close();
  }
  if (options.beforeUnmount) {
    await options.beforeUnmount.run();
    phaseDone(options.beforeUnmount.phase);
  }
  if (replicaAtMountpoint) await umount(options.mountpoint);
  phaseDone('unmount replica');
  const daemon = await held;
  phaseDone('daemon start');
  const { pid, epoch } = await daemon.mount();
  phaseDone('mount primary');
  return { device: options.device, oldPrimary, newPrimary: options.host, epoch, fence, pid };
}
