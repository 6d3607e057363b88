// Verifies a pack file read in pieces, for check --read-data: each piece holds whole blobs, which
// are decoded and verified on the thread pool while the same piece feeds the file's SHA-256 (its
// name) beside, and the bytes after the last blob (the header) are returned for the caller to
// compare with the index. A whole pack in one buffer took 17-19 MiB per pack in flight; pieces of
// PIECE_SIZE take a quarter of that (bench/README.md, "What session 16 changed").
import { releaseBuffer } from "../platform/native.js";
import type { BackgroundBlobVerifier, PackEntries, PackVerdict } from "./blob-codec.js";
import type { MasterKey } from "./crypto.js";
import { ID_SIZE, sha256Stream } from "./id.js";

/** A piece holds whole blobs up to this many bytes; a larger blob is a piece of its own. */
export const PIECE_SIZE = 4 * 1024 * 1024;

/** Reads up to `into.length` bytes of the pack from `offset` into `into`; returns how many it read. */
export type RangeReader = (into: Uint8Array, offset: number) => Promise<number>;

async function readAll(read: RangeReader, into: Uint8Array, offset: number): Promise<void> {
  const got = await read(into, offset);
  if (got < into.length) throw new Error(`it ends at ${offset + got} bytes, before the ${offset + into.length} its listing and index imply`);
}

export interface StreamedVerdict extends PackVerdict {
  /** The file's bytes after its last blob: the encrypted header and its length. */
  tail: Buffer;
}

/** Buffers of PIECE_SIZE bytes, reused from pack to pack; larger pieces get one of their own. */
export class PieceBuffers {
  private readonly free: ArrayBuffer[] = [];

  constructor(private readonly keep: number) {}

  take(size: number): Uint8Array {
    if (size > PIECE_SIZE) return new Uint8Array(size);
    return new Uint8Array(this.free.pop() ?? new ArrayBuffer(PIECE_SIZE), 0, size);
  }

  give(buf: Uint8Array): void {
    if (buf.buffer.byteLength === PIECE_SIZE && this.free.length < this.keep) this.free.push(buf.buffer as ArrayBuffer);
    else releaseBuffer(new Uint8Array(buf.buffer));
  }

  /** Frees the buffers kept. */
  clear(): void {
    for (const b of this.free.splice(0)) releaseBuffer(new Uint8Array(b));
  }
}

/** How many blobs `entries` lists. */
function countOf(entries: PackEntries): number {
  return entries.spans.length / 3;
}

/** Where entry i ends in the pack. */
function endOf(entries: PackEntries, i: number): number {
  return entries.spans[3 * i] + entries.spans[3 * i + 1];
}

/**
 * Whether `entries` (in offset order) can be verified piece by piece: blobs that neither overlap
 * nor reach past `size`. An index that says otherwise is damaged; the whole-pack path reports it.
 */
export function streamable(entries: PackEntries, size: number): boolean {
  let end = 0;
  for (let i = 0; i < countOf(entries); i++) {
    if (entries.spans[3 * i] < end || entries.spans[3 * i + 1] <= 0) return false;
    end = endOf(entries, i);
  }
  return end <= size;
}

/** Cuts [0, end of the last blob) into pieces of whole blobs: [start, end, first entry, entry count]. */
export function pieces(entries: PackEntries): [number, number, number, number][] {
  const out: [number, number, number, number][] = [];
  const n = countOf(entries);
  let i = 0;
  let start = 0;
  while (i < n) {
    const first = i;
    let end = endOf(entries, i);
    i++;
    while (i < n && endOf(entries, i) - start <= PIECE_SIZE) {
      end = endOf(entries, i);
      i++;
    }
    out.push([start, end, first, i - first]);
    start = end;
  }
  return out;
}

/**
 * Reads a pack of `size` bytes piece by piece (entries in offset order, `streamable`), verifying
 * every blob and hashing the whole file. `bad` indexes `entries`, as verifyPack's does.
 */
export async function verifyPackStreamed(
  key: MasterKey,
  size: number,
  entries: PackEntries,
  read: RangeReader,
  buffers: PieceBuffers,
  verifyBlobs: BackgroundBlobVerifier,
): Promise<StreamedVerdict> {
  const hash = sha256Stream();
  const bad: PackVerdict["bad"] = [];
  for (const [start, end, first, count] of pieces(entries)) {
    const buf = buffers.take(end - start);
    try {
      await readAll(read, buf, start);
      const ids = entries.ids.subarray(ID_SIZE * first, ID_SIZE * (first + count));
      const spans = entries.spans.slice(3 * first, 3 * (first + count));
      for (let k = 0; k < count; k++) spans[3 * k] -= start; // offsets within the piece
      // Both read `buf` on the thread pool; neither changes it. Both settle before `buf` is given
      // back (and maybe freed), even when one fails.
      const [found, hashed] = await Promise.allSettled([verifyBlobs(key, buf, { ids, spans }), hash.update(buf)]);
      if (found.status === "rejected") throw found.reason;
      if (hashed.status === "rejected") throw hashed.reason;
      for (const b of found.value) bad.push({ entry: first + b.entry, message: b.message });
    } finally {
      buffers.give(buf);
    }
  }
  const n = countOf(entries);
  const dataEnd = n ? endOf(entries, n - 1) : 0;
  const tail = Buffer.alloc(size - dataEnd);
  if (tail.length) await readAll(read, tail, dataEnd);
  await hash.update(tail);
  return { hash: hash.digestHex(), bad, tail };
}
