import { BlockDevice } from './device';
import { FileDevice } from './file-device';
import { UserError } from '../util/errors';

/** Opens a device by its user-facing name. Only paths exist for now; iscsi:// comes with fencing. */
export async function openDevice(spec: string, options: { readOnly: boolean }): Promise<BlockDevice> {
  if (/^[a-z]+:\/\//.test(spec)) {
    throw new UserError(`device ${spec}: unsupported device URL (only file and block-device paths are supported)`);
  }
  return FileDevice.open(spec, options);
}
