/**
 * FUSE requests -> FileSystem calls. Translation only: node ids, names and
 * handles in; attributes, data and errno out. Every decision about the
 * filesystem lives in the volume.
 *
 * The kernel names files by node id; lsnfs uses the volume's inode number as
 * the node id (hard links share one, as they share an inode), and the
 * FileSystem is addressed by path. So the adapter keeps, per node the kernel
 * holds, the names it was looked up by (parent node, name), and rebuilds a
 * path from them. On a primary every change to the tree comes through here,
 * so those names are exact. On a reader another host changes the tree, so a
 * path is used only after checking that it still leads to the same inode
 * (the kernel looks every name up again anyway: entry timeouts are 0 there).
 *
 * A file unlinked (or renamed over) while it is open is renamed to
 * `.fuse_hidden<ino><n>` in its directory instead, and unlinked at its last
 * close: the volume forgets an unlinked inode, and an open file must stay
 * readable and writable (libfuse's high-level API does the same).
 *
 * A new file or directory takes the owner of its parent directory (chown a
 * directory to give its future contents an owner, as PostgreSQL's data
 * directory is), as it did under fuse-native, which could not tell the
 * caller's uid.
 */
import { constants as os } from 'node:os';
import pino from 'pino';
import { FsError } from '../util/errors';
import type { Stat } from '../volume/volume';
import type { AttrChange, DirEntry, FileSystem, ReadOrigin } from '../volume/file-system';
import { S_IFDIR, S_IFMT, S_IFREG } from '../volume/state';
import { FuseChannel } from './channel';
import {
  FUSE_KERNEL_MINOR_VERSION, FUSE_KERNEL_VERSION, FUSE_ROOT_ID, InitFlag, Opcode, OpenReplyFlag, Request, SetattrValid, WRITE_IN_BYTES,
  attrOut, decodeInit, decodeIo, decodeSetattr, direntsOut, entryOut, initOut, names, negativeEntryOut, openOut, readU64, statfsOut, writeOut,
} from './protocol';

const log = pino({ name: 'lsnfs-fuse' }, pino.destination(2));
const errnos = os.errno as Record<string, number>;
/** The kernel's page size: max_write in pages. */
const KERNEL_PAGE_BYTES = 4096;
const DOT_ENTRIES: readonly DirEntry[] = [{ name: '.', fileType: S_IFDIR }, { name: '..', fileType: S_IFDIR }];

export interface ServeOptions {
  /** How long the kernel may trust a name: 0 when another host changes the tree. */
  entryValidMs: number;
  /** How long it may trust a file's attributes. */
  fileAttrValidMs: number;
  /**
   * How long it may trust a directory's attributes. With 0 the kernel asks for
   * every directory on every path it walks (default_permissions checks each).
   */
  dirAttrValidMs: number;
  /** Open replies: keep the page cache across opens (only this host writes) and/or bypass it (a plain replica). */
  keepCache: boolean;
  directIo: boolean;
  /** 0: the kernel's default. */
  maxReadaheadBytes: number;
  maxWriteBytes: number;
  allowOther: boolean;
  /** Paths are checked against the tree before use (another host changes it). */
  verifyPaths: boolean;
}

interface Node {
  /** The (parent node, name) pairs the kernel knows this node by, newest last. */
  links: Array<[number, string]>;
  /** Lookups the kernel has not forgotten yet. */
  lookups: number;
}

interface OpenFile { ino: number; entries: DirEntry[] | null }

/** Where a file unlinked while open lives until its last close. */
/** A file renamed out of the way while open; `renamed` settles when the volume has done the rename. */
interface HiddenFile { parent: number; name: string; renamed: Promise<void> }

function errnoOf(error: unknown, request: Request): number {
  if (error instanceof FsError) return errnos[error.errno] ?? errnos.EIO!;
  log.error({ err: error, op: Opcode[request.opcode] ?? request.opcode, nodeid: request.nodeid }, 'unexpected error in filesystem operation');
  return errnos.EIO!;
}

function child(dir: string, name: string): string {
  return dir === '/' ? `/${name}` : `${dir}/${name}`;
}

/** Mounts `fs` at `mountpoint` and serves it until the kernel ends the mount. */
export function serveFuse(fs: FileSystem, mountpoint: string, options: ServeOptions): FuseChannel {
  const nodes = new Map<number, Node>();
  const openFiles = new Map<number, OpenFile>();
  /** Open handles per inode (files only), to know when an unlinked file may go. */
  const openCounts = new Map<number, number>();
  const hiddenFiles = new Map<number, HiddenFile>();
  /** Reads that wait (see ReadOrigin.onInterrupt), by request: what an INTERRUPT of each calls. */
  const interruptCallbacks = new Map<bigint, () => void>();
  let hiddenFilesMade = 0;
  let nextHandle = 1;
  // NOFLUSH: close(2) sends no FLUSH (lsnfs has nothing to do then: durability is fsync's).
  const openReplyFlags = (ino: number): number => OpenReplyFlag.NOFLUSH | (options.keepCache ? OpenReplyFlag.KEEP_CACHE : 0) |
    (options.directIo || fs.bypassesPageCache?.(ino) ? OpenReplyFlag.DIRECT_IO : 0);

  const inoAt = (path: string): number | undefined => {
    try {
      return fs.lookupIno(path);
    } catch {
      return undefined;
    }
  };
  /**
   * A path that leads to `nodeid` now, or undefined (unlinked, or renamed behind the kernel's back).
   * `below`: the nodes whose path asked for this one (their ancestors): on a reader, names the kernel
   * learnt before directories moved on the primary can form a cycle, which no path follows.
   */
  const pathOf = (nodeid: number, below: Set<number> = new Set()): string | undefined => {
    if (nodeid === FUSE_ROOT_ID) return '/';
    const node = nodes.get(nodeid);
    if (!node || below.has(nodeid)) return undefined;
    below.add(nodeid);
    try {
      for (let i = node.links.length - 1; i >= 0; i--) {
        const [parent, name] = node.links[i]!;
        const dir = pathOf(parent, below);
        const path = dir === undefined ? undefined : child(dir, name);
        if (path !== undefined && (!options.verifyPaths || inoAt(path) === nodeid)) return path;
        // A name the node no longer has (a reader's tree moved): forget it; a lookup brings it back.
        if (options.verifyPaths) node.links.splice(i, 1);
      }
      return undefined;
    } finally {
      below.delete(nodeid);
    }
  };
  const requirePath = (nodeid: number): string => {
    const path = pathOf(nodeid);
    if (path === undefined) throw new FsError('ENOENT', `inode ${nodeid}: no longer has a name`);
    return path;
  };
  const addLink = (ino: number, parent: number, name: string, lookups: number): void => {
    if (ino === FUSE_ROOT_ID) return;
    let node = nodes.get(ino);
    if (!node) nodes.set(ino, node = { links: [], lookups: 0 });
    node.links = node.links.filter(([p, n]) => p !== parent || n !== name);
    node.links.push([parent, name]);
    node.lookups += lookups;
  };
  const removeLink = (ino: number | undefined, parent: number, name: string): void => {
    const node = ino === undefined ? undefined : nodes.get(ino);
    if (node) node.links = node.links.filter(([p, n]) => p !== parent || n !== name);
  };
  const attrValidMs = (stat: Stat): number => ((stat.mode & S_IFMT) === S_IFDIR ? options.dirAttrValidMs : options.fileAttrValidMs);
  const statOf = (nodeid: number): Stat => (nodeid === FUSE_ROOT_ID
    ? fs.getattr('/')
    // Open files keep their attributes after an unlink: by inode number first.
    : fs.fgetattr(nodeid, pathOf(nodeid) ?? `(inode ${nodeid}, unlinked)`));
  const ownerOf = (dirNode: number): { uid: number; gid: number } => {
    const dir = statOf(dirNode);
    return { uid: dir.uid, gid: dir.gid };
  };
  /**
   * The entry of parent/name, for a LOOKUP or for what was just created there (it counts as a lookup). A
   * missing name the volume lets the kernel remember (nameValidMs) gets a negative entry instead of ENOENT.
   */
  const entryFor = (parent: number, name: string): Buffer => {
    let stat: Stat;
    try {
      stat = fs.getattr(child(requirePath(parent), name));
    } catch (error) {
      const negativeValidMs = error instanceof FsError && error.errno === 'ENOENT' ? fs.nameValidMs?.(parent, name, null) : undefined;
      if (negativeValidMs !== undefined) return negativeEntryOut(negativeValidMs);
      throw error;
    }
    addLink(stat.ino, parent, name, 1);
    const nameValidMs = fs.nameValidMs?.(parent, name, stat.ino);
    return nameValidMs !== undefined ? entryOut(stat, nameValidMs, nameValidMs) : entryOut(stat, options.entryValidMs, attrValidMs(stat));
  };
  const openHandle = (ino: number, isFile: boolean): number => {
    const handle = nextHandle++;
    openFiles.set(handle, { ino, entries: null });
    if (isFile) openCounts.set(ino, (openCounts.get(ino) ?? 0) + 1);
    return handle;
  };
  /** Whether removing the name `ino` has would take a file that is open: it must be hidden instead. */
  const mustHide = (ino: number | undefined): ino is number => ino !== undefined && openCounts.has(ino) && !hiddenFiles.has(ino);
  /**
   * Renames an open file out of the way so that it survives what comes next. It counts as hidden from
   * the start: a RELEASE while the volume renames waits for the rename and then removes the hidden name.
   */
  const hide = async (ino: number, parent: number, name: string): Promise<void> => {
    const hex = (n: number): string => n.toString(16).padStart(8, '0');
    const hiddenName = `.fuse_hidden${hex(ino)}${hex(hiddenFilesMade++)}`;
    const dir = requirePath(parent);
    const renamed = fs.rename(child(dir, name), child(dir, hiddenName));
    hiddenFiles.set(ino, { parent, name: hiddenName, renamed });
    try {
      await renamed;
    } catch (error) {
      hiddenFiles.delete(ino);
      throw error;
    }
    removeLink(ino, parent, name);
    addLink(ino, parent, hiddenName, 0);
  };
  /**
   * Removes the name before the volume removes the file: an OPEN that arrives meanwhile (the kernel
   * looked the name up before this request) then fails with ENOENT, as an open after an unlink does,
   * instead of opening a file whose reads would fail. A failed removal puts the name back.
   */
  const removeNameWhile = async (ino: number | undefined, parent: number, name: string, removal: Promise<void>): Promise<void> => {
    removeLink(ino, parent, name);
    try {
      await removal;
    } catch (error) {
      if (ino !== undefined) addLink(ino, parent, name, 0);
      throw error;
    }
  };
  const release = async (handle: number): Promise<void> => {
    const file = openFiles.get(handle);
    openFiles.delete(handle);
    if (!file || !openCounts.has(file.ino)) return;
    const left = openCounts.get(file.ino)! - 1;
    if (left > 0) {
      openCounts.set(file.ino, left);
      return;
    }
    openCounts.delete(file.ino);
    const hidden = hiddenFiles.get(file.ino);
    if (!hidden) return;
    hiddenFiles.delete(file.ino);
    if (!(await hidden.renamed.then(() => true, () => false))) return; // the hide failed: it kept its name
    const dir = pathOf(hidden.parent);
    if (dir !== undefined) await fs.unlink(child(dir, hidden.name));
    removeLink(file.ino, hidden.parent, hidden.name);
  };
  const fileOf = (handle: number): OpenFile => {
    const file = openFiles.get(handle);
    if (!file) throw new FsError('EBADF', `file handle ${handle}`);
    return file;
  };
  const forget = (nodeid: number, count: number): void => {
    const node = nodes.get(nodeid);
    if (node && (node.lookups -= count) <= 0) nodes.delete(nodeid);
  };

  /** The answer to one request: a reply body, nothing (empty success), or null (the kernel expects no reply). */
  function answer(request: Request): Buffer | undefined | null | Promise<Buffer | undefined> {
    const { nodeid, body } = request;
    switch (request.opcode) {
      case Opcode.INIT: {
        const init = decodeInit(body);
        if (init.major !== FUSE_KERNEL_VERSION) throw new FsError('EPROTO', `FUSE protocol ${init.major}.${init.minor} (lsnfs speaks 7.x)`);
        const wanted = InitFlag.ASYNC_READ | InitFlag.BIG_WRITES | InitFlag.PARALLEL_DIROPS | InitFlag.MAX_PAGES;
        return initOut({
          minor: Math.min(init.minor, FUSE_KERNEL_MINOR_VERSION),
          maxReadaheadBytes: options.maxReadaheadBytes > 0 ? Math.min(options.maxReadaheadBytes, init.maxReadaheadBytes) : init.maxReadaheadBytes,
          flags: init.flags & wanted,
          maxBackground: 32, congestionThreshold: 24,
          maxWriteBytes: options.maxWriteBytes, maxPages: options.maxWriteBytes / KERNEL_PAGE_BYTES,
        });
      }
      case Opcode.LOOKUP: {
        const [name] = names(body, 1);
        return entryFor(nodeid, name!);
      }
      case Opcode.FORGET:
        forget(nodeid, readU64(body, 0));
        return null;
      case Opcode.BATCH_FORGET: {
        const count = body.readUInt32LE(0);
        for (let i = 0; i < count; i++) forget(readU64(body, 8 + i * 16), readU64(body, 16 + i * 16));
        return null;
      }
      case Opcode.GETATTR: {
        const stat = statOf(nodeid);
        return attrOut(stat, attrValidMs(stat));
      }
      case Opcode.SETATTR: return (async () => {
        const change = decodeSetattr(body);
        const ino = nodeid;
        if (change.valid & SetattrValid.SIZE) await fs.truncate(ino, change.size, pathOf(ino));
        const attrs: AttrChange = {};
        if (change.valid & SetattrValid.MODE) attrs.mode = change.mode;
        if (change.valid & SetattrValid.UID) attrs.uid = change.uid;
        if (change.valid & SetattrValid.GID) attrs.gid = change.gid;
        // One reading of the clock: `touch` (both times "now") must set them equal, even across a millisecond.
        const nowMs = Date.now();
        if (change.valid & SetattrValid.ATIME) attrs.atimeMs = change.valid & SetattrValid.ATIME_NOW ? nowMs : change.atimeMs;
        if (change.valid & SetattrValid.MTIME) attrs.mtimeMs = change.valid & SetattrValid.MTIME_NOW ? nowMs : change.mtimeMs;
        if (Object.keys(attrs).length > 0) await fs.setattr(requirePath(ino), attrs);
        const stat = statOf(ino);
        return attrOut(stat, attrValidMs(stat));
      })();
      case Opcode.READLINK:
        return Buffer.from(fs.readlink(requirePath(nodeid)), 'utf8');
      case Opcode.SYMLINK: return (async () => {
        const [name, target] = names(body, 2);
        const { uid, gid } = ownerOf(nodeid);
        await fs.symlink(target!, child(requirePath(nodeid), name!), uid, gid);
        return entryFor(nodeid, name!);
      })();
      case Opcode.MKNOD: return (async () => {
        const mode = body.readUInt32LE(0);
        const [name] = names(body.subarray(16), 1);
        if ((mode & 0o170000) !== S_IFREG) throw new FsError('EPERM', `${name}: only regular files can be created with mknod`);
        const { uid, gid } = ownerOf(nodeid);
        await fs.create(child(requirePath(nodeid), name!), mode, uid, gid);
        return entryFor(nodeid, name!);
      })();
      case Opcode.MKDIR: return (async () => {
        const mode = body.readUInt32LE(0);
        const [name] = names(body.subarray(8), 1);
        const { uid, gid } = ownerOf(nodeid);
        await fs.mkdir(child(requirePath(nodeid), name!), mode, uid, gid);
        return entryFor(nodeid, name!);
      })();
      case Opcode.UNLINK:
      case Opcode.RMDIR: return (async () => {
        const [name] = names(body, 1);
        const path = child(requirePath(nodeid), name!);
        const ino = inoAt(path);
        if (request.opcode === Opcode.UNLINK && mustHide(ino)) await hide(ino, nodeid, name!);
        else await removeNameWhile(ino, nodeid, name!, request.opcode === Opcode.UNLINK ? fs.unlink(path) : fs.rmdir(path));
        return undefined;
      })();
      case Opcode.RENAME:
      case Opcode.RENAME2: return (async () => {
        const newParent = readU64(body, 0);
        const namesAt = request.opcode === Opcode.RENAME ? 8 : 16;
        if (request.opcode === Opcode.RENAME2 && body.readUInt32LE(8) !== 0) throw new FsError('EINVAL', 'rename flags (RENAME_NOREPLACE, RENAME_EXCHANGE) are not supported');
        const [oldName, newName] = names(body.subarray(namesAt), 2);
        const from = child(requirePath(nodeid), oldName!);
        const to = child(requirePath(newParent), newName!);
        const moved = inoAt(from);
        const replaced = inoAt(to);
        const hidesReplaced = replaced !== moved && mustHide(replaced);
        if (hidesReplaced) await hide(replaced!, newParent, newName!);
        await removeNameWhile(replaced === moved || hidesReplaced ? undefined : replaced, newParent, newName!, fs.rename(from, to));
        if (moved !== undefined) {
          removeLink(moved, nodeid, oldName!);
          addLink(moved, newParent, newName!, 0);
        }
        return undefined;
      })();
      case Opcode.LINK: return (async () => {
        const target = readU64(body, 0);
        const [name] = names(body.subarray(8), 1);
        await fs.link(requirePath(target), child(requirePath(nodeid), name!));
        return entryFor(nodeid, name!);
      })();
      case Opcode.OPEN:
        // The kernel looked the name up before this OPEN; another process may have unlinked it since. As on
        // a local filesystem, that open fails (ENOENT) rather than opening a file whose reads would fail.
        requirePath(nodeid);
        return openOut(openHandle(nodeid, true), openReplyFlags(nodeid));
      case Opcode.CREATE: return (async () => {
        const mode = body.readUInt32LE(4);
        const [name] = names(body.subarray(16), 1);
        const { uid, gid } = ownerOf(nodeid);
        const created = await fs.create(child(requirePath(nodeid), name!), S_IFREG | (mode & 0o7777), uid, gid);
        return Buffer.concat([entryFor(nodeid, name!), openOut(openHandle(created.ino, true), openReplyFlags(created.ino))]);
      })();
      case Opcode.READ: {
        const io = decodeIo(body);
        // A read that may wait registers for the kernel's INTERRUPT (before read() returns).
        let interruptible = false;
        const origin: ReadOrigin = {
          handle: io.handle,
          onInterrupt: (callback) => {
            interruptible = true;
            interruptCallbacks.set(request.unique, callback);
          },
        };
        const reply = fs.read(fileOf(io.handle).ino, io.offset, io.size, origin);
        return interruptible ? reply.finally(() => interruptCallbacks.delete(request.unique)) : reply;
      }
      case Opcode.WRITE: return (async () => {
        const io = decodeIo(body);
        const ino = fileOf(io.handle).ino;
        // The path lets a primary recognise WAL segments and pg_control.
        const written = await fs.write(ino, io.offset, body.subarray(WRITE_IN_BYTES, WRITE_IN_BYTES + io.size), pathOf(ino));
        return writeOut(written);
      })();
      case Opcode.STATFS:
        return statfsOut(fs.statfs());
      case Opcode.RELEASE:
        return release(readU64(body, 0)).then(() => undefined);
      case Opcode.RELEASEDIR:
        openFiles.delete(readU64(body, 0));
        return undefined;
      case Opcode.FLUSH:
        return undefined;
      case Opcode.FSYNC:
      case Opcode.FSYNCDIR:
        return fs.sync(nodeid).then(() => undefined);
      case Opcode.OPENDIR:
        return openOut(openHandle(nodeid, false), 0);
      case Opcode.READDIR: {
        const io = decodeIo(body);
        const dir = fileOf(io.handle);
        // One listing per open directory, taken at its first read: later reads continue the same list.
        if (io.offset === 0 || dir.entries === null) dir.entries = [...DOT_ENTRIES, ...fs.readdir(requirePath(nodeid))];
        return direntsOut(dir.entries, io.offset, io.size);
      }
      case Opcode.INTERRUPT: {
        // A read waiting for the WAL tail answers now; every other operation finishes quickly or must
        // finish (an fsync): let it. INTERRUPT itself gets no reply.
        interruptCallbacks.get(body.readBigUInt64LE(0))?.(); // the read's reply removes it
        return null;
      }
      case Opcode.DESTROY:
        return undefined;
      default:
        // Extended attributes, locks by the server, fallocate, lseek, ...: the kernel stops asking.
        throw new FsError('ENOSYS', `FUSE opcode ${Opcode[request.opcode] ?? request.opcode}`);
    }
  }

  const channel: FuseChannel = new FuseChannel(mountpoint, {
    mountOptions: [
      'default_permissions', `max_read=${options.maxWriteBytes}`, ...(options.allowOther ? ['allow_other'] : []),
    ],
    maxWriteBytes: options.maxWriteBytes,
  }, (request) => {
    let result: ReturnType<typeof answer>;
    try {
      result = answer(request);
    } catch (error) {
      channel.reply(request, errnoOf(error, request));
      return;
    }
    if (result === null) return;
    if (result instanceof Promise) {
      result.then(
        (reply) => channel.reply(request, 0, reply),
        (error: unknown) => channel.reply(request, errnoOf(error, request)),
      );
    } else channel.reply(request, 0, result);
  });
  return channel;
}
