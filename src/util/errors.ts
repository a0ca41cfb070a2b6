/**
 * Errors a user or the kernel can act on.
 *
 * `FsError` carries a POSIX errno name: the FUSE adapter turns it into the
 * negative errno the kernel expects. `UserError` is a mistake or a condition a
 * person must fix (wrong device, damaged log, holder conflict): the CLI prints
 * its message without a stack trace and exits non-zero.
 */
export type ErrnoName =
  | 'ENOENT' | 'EEXIST' | 'ENOTDIR' | 'EISDIR' | 'ENOTEMPTY' | 'EINVAL'
  | 'EIO' | 'ENOSPC' | 'EROFS' | 'EBADF' | 'EPERM' | 'EACCES' | 'ENAMETOOLONG'
  | 'EFBIG' | 'EXDEV' | 'ENOSYS' | 'EMLINK' | 'ELOOP' | 'EOPNOTSUPP' | 'EPROTO';

export class FsError extends Error {
  constructor(readonly errno: ErrnoName, message?: string) {
    // No stack trace: an FsError is an answer (ENOENT for a name PostgreSQL probes, hundreds of times a
    // second on a standby), never a bug to trace, and capturing one cost ~0.8 % of a standby daemon's time.
    const stackTraceLimit = Error.stackTraceLimit;
    Error.stackTraceLimit = 0;
    super(message ?? errno);
    Error.stackTraceLimit = stackTraceLimit;
    this.name = 'FsError';
  }
}

export class UserError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UserError';
  }
}

/** Invariant check: a failure is a bug in lsnfs, never a user mistake. */
export function assert(condition: unknown, message: string): asserts condition {
  if (!condition) throw new Error(`lsnfs invariant violated: ${message}`);
}
