/**
 * The main job, as a user runs it: `lsnfs drill --rounds 3` on a file device
 * and on a real iSCSI target (tgt), each round killing or freezing the
 * primary host and failing over to the other. Every round must lose no
 * acknowledged commit and fence the old primary.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { TgtTarget, startTgt } from '../support/tgt';
import { lsnfs } from '../support/harness';
import type { DrillReport } from '../../src/cli/drill';

const DRILL_ARGS = ['drill', '--rounds', '3', '--scale', '2', '--clients', '4', '--kill-after', '2-5', '--json'];

function assertDrillPassed(stdout: string, stderr: string, code: number, type: 'file' | 'iscsi'): void {
  assert.equal(code, 0, `drill exited ${code}\n${stderr}`);
  const report = JSON.parse(stdout) as DrillReport;
  assert.equal(report.kind, 'failover');
  assert.equal(report.device.type, type);
  assert.equal(report.rounds.length, 3);
  assert.deepEqual(report.rounds.map((r) => r.failure), ['kill', 'freeze', 'kill']);
  assert.deepEqual(report.rounds.map((r) => `${r.from}->${r.to}`), ['node-a->node-b', 'node-b->node-a', 'node-a->node-b']);
  for (const round of report.rounds) {
    assert.ok(round.acknowledged > 0, `round ${round.round}: pgbench acknowledged nothing`);
    assert.equal(round.lost, 0, `round ${round.round}: ${round.lost} acknowledged commits lost`);
    assert.ok(round.fenced, `round ${round.round}: ${round.fenceEvidence}`);
    assert.ok(round.balancesConsistent && round.amcheckClean, `round ${round.round}: balances ${round.balancesConsistent}, amcheck ${round.amcheckOutput}`);
    assert.ok(round.rtoMs > 0);
  }
  assert.equal(report.summary.lostTotal, 0);
  assert.equal(report.summary.fenceFailures, 0);
  assert.ok(report.fsck?.ok, `fsck: ${JSON.stringify(report.fsck?.problems)}`);
  assert.ok(report.ok);
}

test('lsnfs drill --rounds 3 on a file device: RPO 0 and the old primary fenced in every round', async () => {
  const result = await lsnfs([...DRILL_ARGS, '--size', '1G', '--port', '55431']);
  assertDrillPassed(result.stdout, result.stderr, result.code, 'file');
});

let tgt: TgtTarget | undefined;
before(async () => { tgt = await startTgt({ sizeBytes: 1024 * 1024 * 1024 }); });
after(async () => { await tgt?.stop(); });

test('lsnfs drill --rounds 3 on iSCSI (tgt, SCSI-3 PR): RPO 0 and the old primary fenced in every round', async () => {
  const result = await lsnfs([...DRILL_ARGS, '--device', tgt!.url, '--port', '55441']);
  assertDrillPassed(result.stdout, result.stderr, result.code, 'iscsi');
});
