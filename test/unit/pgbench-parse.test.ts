import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { countLoggedCommits, formatSetting, parsePgbenchOutput } from '../../src/pg';

test('pgbench summary: tps, processed, failed and aborted clients are parsed', () => {
  const stdout = [
    'transaction type: <builtin: TPC-B (sort of)>', 'number of clients: 4',
    'number of transactions actually processed: 14198', 'number of failed transactions: 0 (0.000%)',
    'latency average = 2.805 ms', 'initial connection time = 21.723 ms', 'tps = 1420.466199 (without initial connection time)',
  ].join('\n');
  const ok = parsePgbenchOutput({ command: 'pgbench', code: 0, signal: null, stdout, stderr: '' });
  assert.equal(ok.tps, 1420.466199);
  assert.equal(ok.processed, 14198);
  assert.equal(ok.failed, 0);
  assert.equal(ok.aborted, false);
  const crashed = parsePgbenchOutput({
    command: 'pgbench', code: 2, signal: null, stdout: '',
    stderr: 'pgbench: error: client 1 aborted in command 8 (SQL) of script 0; perhaps the backend died while processing\n',
  });
  assert.equal(crashed.aborted, true);
  assert.equal(crashed.tps, null);
});

test('pgbench -l: only lines of committed transactions count, across thread files', async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'lsnfs-pgbench-log-'));
  try {
    await fsp.writeFile(path.join(dir, 'pgbench_log.123'), '0 1 12590 0 1795292196 85302\n1 1 3234 0 1795292196 88580\n2 5 failed 0 1795292196 90000\n');
    await fsp.writeFile(path.join(dir, 'pgbench_log.123.1'), '3 1 17493 0 1795292196 90217\n3 2 skipped 0 1795292196 91000\n3 3 174');
    await fsp.writeFile(path.join(dir, 'other.txt'), '0 1 12590 0 1795292196 85302\n');
    assert.equal(await countLoggedCommits(dir), 3);
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

test('settings are written in postgresql.conf syntax', () => {
  assert.equal(formatSetting(false), 'off');
  assert.equal(formatSetting(50), '50');
  assert.equal(formatSetting("it's"), "'it''s'");
});
