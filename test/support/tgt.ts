/**
 * A private tgt iSCSI target for tests (see ../shared/notes/tgt-iscsi.md):
 * its own tgtd on 127.0.0.1 and a free port, its own control socket in the
 * test's temp dir, one file-backed disk LUN (LUN 1; LUN 0 is tgt's
 * controller), open to initiators from 127.0.0.1.
 *
 * tgtd ignores SIGTERM, so stop() asks it to exit through tgtadm. tgtd runs
 * under `setpriv --pdeathsig KILL`, and an 'exit' hook SIGKILLs it, so no
 * tgtd outlives the test process even when a test fails or the process is
 * killed.
 */
import { ChildProcess, spawn } from 'node:child_process';
import { createWriteStream, mkdtempSync, promises as fsp } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { freePort, run, sleep } from './harness';

export const TGT_TARGET_IQN = 'iqn.2024-01.test.lsnfs:shared0';
const TID = 1;
const LUN = 1;

export interface TgtTarget {
  /** iscsi://127.0.0.1:PORT/IQN/1 */
  url: string;
  port: number;
  /** The LUN's backing file: the same bytes the initiators see. */
  backingFile: string;
  dir: string;
  pid: number;
  /** Runs tgtadm against this tgtd; returns its stdout. */
  tgtadm(args: string[]): Promise<string>;
  /** Stops tgtd (all sessions dropped) and removes `dir` if start created it. */
  stop(): Promise<void>;
}

export interface StartTgtOptions {
  sizeBytes: number;
  /** Where the socket, backing file and log go; a fresh temp dir by default. */
  dir?: string;
}

const live = new Set<ChildProcess>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const child of live) {
      try { child.kill('SIGKILL'); } catch { /* already gone */ }
    }
  });
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    socket.once('connect', () => { socket.destroy(); resolve(true); });
    socket.once('error', () => resolve(false));
  });
}

export async function startTgt(options: StartTgtOptions): Promise<TgtTarget> {
  const ownDir = options.dir === undefined;
  const dir = options.dir ?? mkdtempSync(path.join(os.tmpdir(), 'lsnfs-tgt-'));
  const backingFile = path.join(dir, 'lun1.img');
  const socket = path.join(dir, 'tgtd.sock'); // tgtd listens on `${socket}.0`
  const env = { TGT_IPC_SOCKET: socket };
  const tgtadm = (args: string[]) => run('tgtadm', args, { env });

  const file = await fsp.open(backingFile, 'w');
  await file.truncate(options.sizeBytes);
  await file.close();

  // A port that was free a moment ago can be taken before tgtd binds it;
  // then tgtd never accepts and we try another.
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    const log = createWriteStream(path.join(dir, 'tgtd.log'), { flags: 'a' });
    const child = spawn('setpriv', ['--pdeathsig', 'KILL', '--', 'tgtd', '-f', '--iscsi', `portal=127.0.0.1:${port}`], {
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    child.stdout!.pipe(log);
    child.stderr!.pipe(log);
    installExitHook();
    live.add(child);
    let exited = false;
    const exitedPromise = new Promise<void>((resolve) => child.once('exit', () => { exited = true; live.delete(child); resolve(); }));
    child.once('error', () => { exited = true; live.delete(child); });
    const kill = async () => {
      if (!exited) child.kill('SIGKILL');
      await exitedPromise;
    };

    const target: TgtTarget = {
      url: `iscsi://127.0.0.1:${port}/${TGT_TARGET_IQN}/${LUN}`,
      port,
      backingFile,
      dir,
      pid: child.pid ?? -1,
      tgtadm,
      stop: async () => {
        if (!exited) {
          // The documented way down: offline, drop the target (and with it
          // every session), then ask the daemon to exit.
          await tgtadm(['--op', 'update', '--mode', 'sys', '--name', 'State', '-v', 'offline']).catch(() => undefined);
          await tgtadm(['--lld', 'iscsi', '--op', 'delete', '--mode', 'target', '--tid', String(TID), '--force']).catch(() => undefined);
          await tgtadm(['--op', 'delete', '--mode', 'system']).catch(() => undefined);
          const deadline = Date.now() + 3000;
          while (!exited && Date.now() < deadline) await sleep(20);
        }
        await kill();
        if (ownDir) await fsp.rm(dir, { recursive: true, force: true });
      },
    };

    try {
      // The control socket appears ~0.5 s after start.
      const deadline = Date.now() + 10_000;
      for (;;) {
        if (exited) throw new Error(`tgtd exited at start (see ${path.join(dir, 'tgtd.log')})`);
        try {
          await tgtadm(['--op', 'show', '--mode', 'sys']);
          break;
        } catch (error) {
          if (Date.now() > deadline) throw error;
          await sleep(50);
        }
      }
      await tgtadm(['--lld', 'iscsi', '--op', 'new', '--mode', 'target', '--tid', String(TID), '-T', TGT_TARGET_IQN]);
      await tgtadm(['--lld', 'iscsi', '--op', 'new', '--mode', 'logicalunit', '--tid', String(TID), '--lun', String(LUN),
        '-b', backingFile, '--bstype', 'rdwr']);
      await tgtadm(['--lld', 'iscsi', '--op', 'bind', '--mode', 'target', '--tid', String(TID), '-I', '127.0.0.1']);
      if (!(await canConnect(port))) throw new Error(`tgtd does not accept connections on port ${port}`);
      return target;
    } catch (error) {
      await kill();
      if (attempt >= 3) {
        if (ownDir) await fsp.rm(dir, { recursive: true, force: true });
        throw error;
      }
    }
  }
}
