/**
 * One FUSE mount's channel: mounts /dev/fuse at a mountpoint and moves
 * requests and replies between the kernel and a handler, on the event loop
 * (native/fuse.c holds the file descriptor and the epoll watch).
 *
 * Requests are read on the JS thread as soon as the kernel queues them and
 * answered whenever their handler finishes (asynchronously, in any order);
 * the kernel matches replies by `unique`.
 */
import { constants as os } from 'node:os';
import { nativeAddon } from '../util/native';
import { IN_HEADER_BYTES, OUT_HEADER_BYTES, Request, decodeRequest, outHeader } from './protocol';

interface NativeFuse {
  fuseMount(mountpoint: string, options: string): number;
  fuseRead(fd: number, buffer: Buffer): number;
  fuseWrite(fd: number, header: Buffer, data?: Buffer): number;
  fuseWatch(fd: number, onReadable: () => void): unknown;
  fuseUnwatch(watch: unknown): void;
  fuseClose(fd: number): void;
}

const { EAGAIN, ENODEV, ENOENT } = os.errno;
/**
 * Requests read per wake-up before yielding to the rest of the event loop
 * (device completions, the tailer, timers); the watch fires again at once
 * while more are queued.
 */
const REQUESTS_PER_WAKEUP = 64;

export interface ChannelOptions {
  /** FUSE mount options: allow_other, default_permissions, max_read=N. */
  mountOptions: string[];
  /** The largest request the kernel may send: its max_write plus headers. */
  maxWriteBytes: number;
}

/** Told of each request answered: its opcode, its errno (0: success) and the seconds from its arrival to its reply. */
export type ReplyObserver = (opcode: number, errno: number, elapsedSeconds: number) => void;

export class FuseChannel {
  /** Set to time requests (a metrics endpoint; the arrival time rides on the request); while null, nothing is timed. */
  observer: ReplyObserver | null = null;
  private readonly native = nativeAddon<NativeFuse>(['fuseMount', 'fuseRead', 'fuseWrite', 'fuseWatch', 'fuseUnwatch', 'fuseClose']);
  private readonly readBuffer: Buffer;
  private watch: unknown = null;
  private fd: number;
  private onUnmounted: (() => void) | null = null;

  /** Mounts; `handle` gets every request from now on. Throws (naming the mountpoint) if the kernel refuses. */
  constructor(readonly mountpoint: string, options: ChannelOptions, private readonly handle: (request: Request) => void) {
    // The kernel refuses reads into a buffer smaller than its largest request.
    this.readBuffer = Buffer.allocUnsafe(options.maxWriteBytes + 4096);
    this.fd = this.native.fuseMount(mountpoint, options.mountOptions.join(','));
    this.watch = this.native.fuseWatch(this.fd, () => this.readRequests());
  }

  /** Called once when the kernel ends the mount (a plain umount, or `lsnfs umount`). */
  onceUnmounted(callback: () => void): void { this.onUnmounted = callback; }

  private readRequests(): void {
    for (let i = 0; i < REQUESTS_PER_WAKEUP && this.watch !== null; i++) {
      const bytes = this.native.fuseRead(this.fd, this.readBuffer);
      if (bytes === -EAGAIN) return;
      // ENOENT: the request was interrupted before we read it (native/fuse.c retries EINTR itself).
      if (bytes === -ENOENT) continue;
      if (bytes === -ENODEV || bytes < 0) {
        this.stop();
        this.onUnmounted?.();
        return;
      }
      if (bytes < IN_HEADER_BYTES) throw new Error(`FUSE channel ${this.mountpoint}: a request of ${bytes} bytes`);
      const request = decodeRequest(this.readBuffer.subarray(0, bytes));
      if (this.observer) request.receivedMs = performance.now();
      this.handle(request);
    }
  }

  /** Answers `request` with an error (a positive errno) or with `body` (nothing: an empty success). */
  reply(request: Request, errno: number, body?: Buffer): void {
    if (this.watch === null) return; // unmounted: nobody is waiting
    const header = outHeader(request.unique, -errno, body?.length ?? 0);
    const written = body === undefined || body.length === 0
      ? this.native.fuseWrite(this.fd, header)
      : this.native.fuseWrite(this.fd, header, body);
    // ENOENT: the caller was interrupted and no longer waits; ENODEV: the mount is gone.
    if (written < 0 && written !== -ENOENT && written !== -ENODEV) {
      throw new Error(`FUSE channel ${this.mountpoint}: reply to request ${request.unique} (opcode ${request.opcode}) failed: errno ${-written}`);
    }
    if (written >= 0 && written !== OUT_HEADER_BYTES + (body?.length ?? 0)) {
      throw new Error(`FUSE channel ${this.mountpoint}: reply to request ${request.unique} was cut at ${written} bytes`);
    }
    if (this.observer && request.receivedMs > 0) this.observer(request.opcode, errno, (performance.now() - request.receivedMs) / 1000);
  }

  /** Stops reading and closes the channel (the kernel fails whatever is still unanswered). */
  stop(): void {
    if (this.watch === null) return;
    this.native.fuseUnwatch(this.watch);
    this.watch = null;
    this.native.fuseClose(this.fd);
    this.fd = -1;
  }
}
