/**
 * How lsnfs runs itself as a process: the binary, and the Node flags of its
 * command-line processes and of its mount daemons. Whoever starts one (the
 * CLI, the drill, the tests, the benchmarks) starts it with these.
 */
import path from 'node:path';

/** The `lsnfs` binary (this file is dist/src/cli/invocation.js). */
export const LSNFS_BIN = path.resolve(__dirname, '..', '..', '..', 'bin', 'lsnfs');

/**
 * Node flags of a command-line process (bin/lsnfs's #! line has them too). No concurrent TurboFan:
 * Node 20 can hang for good in process.exit when a background compile job waits for a garbage
 * collection that the exiting main thread never runs (nodejs/node#54918). Seen once here: an
 * `lsnfs status` in the replica test hung for 15 minutes, its main thread joining a compile thread
 * parked in CollectionBarrier::AwaitCollectionBackground. A command compiles little, so compiling on
 * its main thread costs it nothing measurable.
 */
export const CLI_NODE_FLAGS: readonly string[] = ['--no-concurrent-recompilation'];

/**
 * V8 flags of the daemon. A larger young generation (32 MB semi-spaces; V8 picks 16 here): most of what
 * a FUSE request allocates (buffers, promises, records in flight) lives a few milliseconds, but at
 * thousands of requests a second the default young generation filled before it died, it was promoted,
 * and the old generation, which holds the whole page index, was marked again and again. In
 * bench-standby (perf over 12 s of load) the primary's daemon spent 48 % of its CPU in garbage
 * collection, 2 % with this flag; the four daemons' CPU per pgbench transaction fell from 1.50 to
 * 1.14 ms. It costs up to 32 MB more memory per daemon. The daemon keeps concurrent TurboFan (its
 * compiles would otherwise stall the event loop that serves FUSE) and with it the small risk above at
 * its exit, after the volume is closed: `lsnfs umount` then reports that the daemon did not exit.
 *
 * And a 256 MB floor under the old generation. V8 sets the old generation's limit from its live size,
 * and a daemon's heap is small (~7 MB on an empty volume) while a FUSE request's buffers are large, so
 * mark-compacts came every few MB of promotion: 25 in a loop of 34k 8 KiB writes to a primary, 48 with
 * prom-client loaded (--metrics), 0 with the floor. Over eight rotated rounds of that loop the
 * daemon's CPU per write was 150 us (183 with --metrics) and 124 us with the floor (125 with
 * --metrics), for a peak RSS of 169 MB against 136. On the 1 GB bench database (2026-11-22) the floor
 * ended the standbys' mark-compact storms without changing their RSS (184-243 MB) or replay lag.
 */
export const DAEMON_NODE_FLAGS: readonly string[] = ['--max-semi-space-size=32', '--initial-old-space-size=256'];

/** The argv (after the Node executable) of `lsnfs ARGS` as a command-line process. */
export function cliArgv(args: readonly string[]): string[] {
  return [...CLI_NODE_FLAGS, LSNFS_BIN, ...args];
}
