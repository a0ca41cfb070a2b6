/** Controlling PostgreSQL from tests, benchmarks and the drill. */
export * from './binaries';
export * from './cluster';
export * from './exec';
export * from './pgbench';
export * from './control';
export * from './standby';
