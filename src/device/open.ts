import { BlockDevice } from './device';
import { FileDevice } from './file-device';
import { IscsiDevice } from './iscsi-device';
import { UserError } from '../util/errors';

/**
 * Opens a device by its user-facing name: a file or block-device path, or
 * iscsi://HOST[:PORT]/TARGET-IQN/LUN. `host` names this host for iSCSI (its
 * initiator IQN); default os.hostname().
 */
export async function openDevice(spec: string, options: { readOnly: boolean; host?: string }): Promise<BlockDevice> {
  if (spec.startsWith('iscsi://')) {
    return IscsiDevice.open(spec, options);
  }
  if (/^[a-z]+:\/\//.test(spec)) {
    throw new UserError(`device ${spec}: unsupported device URL (only paths and iscsi:// URLs are supported)`);
  }
  return FileDevice.open(spec, options);
}

/** Opens `spec`, runs `body` on it, and closes it whatever happens. */
export async function withDevice<T>(spec: string, options: { readOnly: boolean; host?: string }, body: (device: BlockDevice) => Promise<T>): Promise<T> {
  const device = await openDevice(spec, options);
  try {
    return await body(device);
  } finally {
    await device.close();
  }
}
