/**
 * Metadata journal operations. Each is one Meta record (JSON payload); the
 * primary appends it and every reader replays it with VolumeState.applyMeta.
 * Record time (header.timeMs) provides the timestamps.
 */
import { assert } from '../util/errors';

export type MetaOp =
  | { op: 'create'; parent: number; name: string; ino: number; mode: number; uid: number; gid: number; target?: string }
  | { op: 'link'; ino: number; parent: number; name: string }
  | { op: 'unlink'; parent: number; name: string }
  | { op: 'rename'; parent: number; name: string; newParent: number; newName: string }
  | { op: 'setattr'; ino: number; mode?: number; uid?: number; gid?: number; atimeMs?: number; mtimeMs?: number }
  | { op: 'truncate'; ino: number; size: number };

export function encodeMetaOp(op: MetaOp): Buffer {
  return Buffer.from(JSON.stringify(op), 'utf8');
}

export function decodeMetaOp(payload: Buffer, lsn: number): MetaOp {
  const op = JSON.parse(payload.toString('utf8')) as MetaOp;
  assert(typeof op === 'object' && op !== null && typeof op.op === 'string', `meta record at LSN ${lsn} has no op`);
  return op;
}
