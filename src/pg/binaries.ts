/**
 * Where PostgreSQL's programs are. Not PATH: Debian's /usr/bin wrappers
 * (pg_wrapper) and hand-made symlinks differ between machines. Order:
 * $LSNFS_PG_BINDIR, `pg_config --bindir`, then the newest
 * /usr/lib/postgresql/N/bin; a directory counts only if it has initdb.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { exec } from './exec';

export type PgProgram = 'initdb' | 'pg_ctl' | 'postgres' | 'psql' | 'pgbench' | 'pg_amcheck' | 'pg_controldata' | 'pg_waldump' | 'pg_basebackup';

let cached: Promise<string> | null = null;

async function hasInitdb(dir: string): Promise<boolean> {
  return fsp.access(path.join(dir, 'initdb')).then(() => true, () => false);
}

async function findBinDir(): Promise<string> {
  const candidates: string[] = [];
  if (process.env.LSNFS_PG_BINDIR) candidates.push(process.env.LSNFS_PG_BINDIR);
  const fromConfig = await exec('pg_config', ['--bindir']).catch(() => null);
  if (fromConfig?.code === 0 && fromConfig.stdout.trim()) candidates.push(fromConfig.stdout.trim());
  const versions = await fsp.readdir('/usr/lib/postgresql').catch(() => [] as string[]);
  versions.filter((v) => /^\d+$/.test(v)).sort((a, b) => Number(b) - Number(a))
    .forEach((v) => candidates.push(`/usr/lib/postgresql/${v}/bin`));
  for (const dir of candidates) if (await hasInitdb(dir)) return dir;
  throw new Error(`PostgreSQL not found (looked in ${candidates.join(', ') || 'nothing'}); install postgresql-15 or set LSNFS_PG_BINDIR`);
}

/** The directory holding initdb, pg_ctl, pgbench, … (looked up once). */
export function pgBinDir(): Promise<string> {
  cached ??= findBinDir();
  return cached;
}

export async function pgProgram(name: PgProgram): Promise<string> {
  return path.join(await pgBinDir(), name);
}
