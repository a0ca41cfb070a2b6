/**
 * Page writes the kernel split, joined again before they reach the log
 * (docs/ARCHITECTURE.md, invariant 6).
 *
 * Through the page cache the kernel copies a write(2) page by page and sends
 * what it has copied whenever the source buffer faults, so an 8 KiB page that
 * PostgreSQL writes from a shared buffer this process never touched reaches
 * the mount as [0, 4992) then [4992, 8192): two deltas, which a crash between
 * them tears apart, where full_page_writes=off counts on whole pages (655 of
 * 74 462 page writes in a 30 s pgbench run). PostgreSQL writes its relation
 * files in whole pages only, so a write there that stops inside a page it
 * wrote from the start is the first piece of one: it is held back, the rest
 * (which the kernel sends at once: the write(2) is still going on) is joined
 * to it, and the page goes to the log as one image.
 *
 * Anything that could observe a held piece first appends it as it is, a
 * delta (the records there were without the join): a read of its page, a
 * metadata change of its file, an fsync of its file, the unmount, and the
 * timer after HELD_PIECE_MAX_MS. A stat counts it in the file's size (other
 * backends stat the file for its size all the time). Opening the files with
 * direct I/O would also keep writes whole, but it cost 25 % of select-only
 * TPS and 7 % of tpcb-like TPS (scale 10, shared_buffers 128MB): every read
 * missing PostgreSQL's buffers then comes to the daemon.
 */
import { assert } from '../util/errors';

/** The longest a piece waits for the rest of its page (the kernel sends it at once; a saturated daemon reads it late). */
export const HELD_PIECE_MAX_MS = 100;

/** The start of a page write: `bytes` from the page's first byte. */
export interface HeldPiece { ino: number; pageNo: number; bytes: Buffer }

export class SplitPageWrites {
  /** At most one piece per file: a write(2) holds the file's lock until its last piece is sent. */
  private readonly held = new Map<number, HeldPiece>();
  private timer: NodeJS.Timeout | null = null;
  /** Pages joined from pieces so far. */
  joinedPages = 0;

  constructor(
    private readonly pageBytes: number,
    /** Appends a piece as it is (a delta); called in the order the pieces were held. */
    private readonly appendPiece: (piece: HeldPiece) => void,
  ) {}

  /**
   * The write to append for (`position`, `data`) to a relation file: joined to the piece held for the file
   * when it continues it, less a last page it leaves unfinished after writing it from its start (held).
   * A held piece it does not continue is appended first. `append` is empty when all of it is held.
   */
  take(ino: number, position: number, data: Buffer): { position: number; append: Buffer } {
    const piece = this.held.get(ino);
    if (piece) {
      this.held.delete(ino);
      const pieceStart = piece.pageNo * this.pageBytes;
      if (position === pieceStart + piece.bytes.length) {
        position = pieceStart;
        data = Buffer.concat([piece.bytes, data]);
        if (data.length >= this.pageBytes) this.joinedPages++;
      } else this.appendPiece(piece);
    }
    const end = position + data.length;
    const lastPageStart = end - (end % this.pageBytes);
    if (end % this.pageBytes === 0 || lastPageStart < position) return { position, append: data };
    const tail: HeldPiece = { ino, pageNo: lastPageStart / this.pageBytes, bytes: Buffer.from(data.subarray(lastPageStart - position)) };
    assert(tail.bytes.length > 0 && tail.bytes.length < this.pageBytes, `a held piece of ${tail.bytes.length} bytes`);
    this.held.set(ino, tail);
    this.timer ??= setTimeout(() => {
      this.timer = null;
      this.appendAll();
    }, HELD_PIECE_MAX_MS);
    return { position, append: data.subarray(0, lastPageStart - position) };
  }

  /** Appends the piece held for this file if it is of a page in [firstPageNo, lastPageNo]. */
  appendHeld(ino: number, firstPageNo: number, lastPageNo: number): void {
    const piece = this.held.get(ino);
    if (!piece || piece.pageNo < firstPageNo || piece.pageNo > lastPageNo) return;
    this.held.delete(ino);
    this.appendPiece(piece);
  }

  /** Where the piece held for this file ends (0: none): the file's size counts it. */
  heldEnd(ino: number): number {
    const piece = this.held.get(ino);
    return piece ? piece.pageNo * this.pageBytes + piece.bytes.length : 0;
  }

  /** Appends every held piece. */
  appendAll(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    const pieces = [...this.held.values()];
    this.held.clear();
    for (const piece of pieces) this.appendPiece(piece);
  }
}
