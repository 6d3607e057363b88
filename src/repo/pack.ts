// Pack files: encrypted blobs back to back, then the encrypted header listing them, then the
// header's length as 4 bytes little-endian. Header entries are restic v2's: type byte, sealed
// length (u32 LE), [plaintext length (u32 LE) for compressed types], blob ID (32 bytes).
import { SitekeepError } from "../errors.js";
import { type MasterKey, EXTENSION, open, seal } from "./crypto.js";
import { releaseBuffer } from "../platform/native.js";

export type BlobType = "data" | "tree";

export interface PackedBlob {
  id: Buffer;
  type: BlobType;
  offset: number;
  /** Stored (sealed) length. */
  length: number;
  /** Plaintext length when the blob is compressed, else 0. */
  uncompressedLength: number;
}

const T_DATA = 0;
const T_TREE = 1;
const T_DATA_Z = 2;
const T_TREE_Z = 3;
const ENTRY_PLAIN = 1 + 4 + 32;
const ENTRY_Z = 1 + 4 + 4 + 32;

export function headerSize(blobs: readonly PackedBlob[]): number {
  let n = 0;
  for (const b of blobs) n += b.uncompressedLength ? ENTRY_Z : ENTRY_PLAIN;
  return n + EXTENSION;
}

export function encodeHeader(key: MasterKey, blobs: readonly PackedBlob[]): Buffer {
  const plain = Buffer.allocUnsafe(headerSize(blobs) - EXTENSION);
  let o = 0;
  for (const b of blobs) {
    const z = b.uncompressedLength !== 0;
    plain[o++] = b.type === "data" ? (z ? T_DATA_Z : T_DATA) : z ? T_TREE_Z : T_TREE;
    plain.writeUInt32LE(b.length, o);
    o += 4;
    if (z) {
      plain.writeUInt32LE(b.uncompressedLength, o);
      o += 4;
    }
    b.id.copy(plain, o);
    o += 32;
  }
  const sealed = seal(key, plain);
  const out = Buffer.allocUnsafe(sealed.length + 4);
  sealed.copy(out, 0);
  out.writeUInt32LE(sealed.length, sealed.length);
  return out;
}

/**
 * A pack's blobs as arrays: one allocation per field rather than an object and an ID buffer per
 * blob (a pack of tiny files lists ~40,000 blobs). Its `ids` and `spans` are a PackEntries.
 */
export interface BlobTable {
  count: number;
  /** 32 bytes per blob. */
  ids: Uint8Array;
  /** 1 for a tree blob, 0 for a data blob. */
  trees: Uint8Array;
  /** (offset, sealed length, plaintext length when compressed else 0) per blob. */
  spans: Float64Array;
}

/** Entry i of a table as a PackedBlob (its ID copied). */
export function tableEntry(t: BlobTable, i: number): PackedBlob {
  return {
    id: Buffer.from(t.ids.subarray(32 * i, 32 * i + 32)),
    type: t.trees[i] ? "tree" : "data",
    offset: t.spans[3 * i],
    length: t.spans[3 * i + 1],
    uncompressedLength: t.spans[3 * i + 2],
  };
}

/** Decrypts and reads a pack header into a table. */
export function decodeHeaderTable(key: MasterKey, sealedHeader: Buffer, packName: string): BlobTable {
  const plain = open(key, sealedHeader);
  // Every entry takes at least ENTRY_PLAIN bytes: the arrays are sized for that many and cut.
  const most = Math.floor(plain.length / ENTRY_PLAIN);
  const ids = new Uint8Array(32 * most);
  const trees = new Uint8Array(most);
  const spans = new Float64Array(3 * most);
  let n = 0;
  let o = 0;
  let offset = 0;
  while (o < plain.length) {
    const t = plain[o++];
    if (t > T_TREE_Z || o + (t >= T_DATA_Z ? 40 : 36) > plain.length) {
      throw new SitekeepError("pack.header", `pack ${packName}: invalid header entry at byte ${o - 1}`);
    }
    const length = plain.readUInt32LE(o);
    o += 4;
    let uncompressedLength = 0;
    if (t >= T_DATA_Z) {
      uncompressedLength = plain.readUInt32LE(o);
      o += 4;
    }
    ids.set(plain.subarray(o, o + 32), 32 * n);
    o += 32;
    trees[n] = t === T_TREE || t === T_TREE_Z ? 1 : 0;
    spans[3 * n] = offset;
    spans[3 * n + 1] = length;
    spans[3 * n + 2] = uncompressedLength;
    offset += length;
    n++;
  }
  return { count: n, ids: ids.subarray(0, 32 * n), trees: trees.subarray(0, n), spans: spans.subarray(0, 3 * n) };
}

/** Reads the header of a pack, as a table, given its tail bytes (at least the header and length field). */
export function parsePackTailTable(key: MasterKey, tail: Buffer, packSize: number, packName: string): BlobTable {
  if (tail.length < 4) throw new SitekeepError("pack.short", `pack ${packName} is too short (${packSize} bytes)`);
  const hlen = tail.readUInt32LE(tail.length - 4);
  if (hlen + 4 > packSize || hlen < EXTENSION) {
    throw new SitekeepError("pack.header", `pack ${packName}: header length ${hlen} is invalid for a ${packSize}-byte file`);
  }
  if (hlen + 4 > tail.length) throw new RangeError(`need ${hlen + 4} tail bytes`);
  const t = decodeHeaderTable(key, tail.subarray(tail.length - 4 - hlen, tail.length - 4), packName);
  const dataEnd = packSize - hlen - 4;
  const described = t.count ? t.spans[3 * t.count - 3] + t.spans[3 * t.count - 2] : 0;
  if (described !== dataEnd) {
    throw new SitekeepError("pack.header", `pack ${packName}: header describes ${described} bytes of blobs, file holds ${dataEnd}`);
  }
  return t;
}

/** Reads the header of a pack given its tail bytes (at least the header and length field). */
export function parsePackTail(key: MasterKey, tail: Buffer, packSize: number, packName: string): PackedBlob[] {
  const t = parsePackTailTable(key, tail, packSize, packName);
  return Array.from({ length: t.count }, (_, i) => tableEntry(t, i));
}

/**
 * Collects sealed blobs into one pack file in memory (packs are a few MiB). Each blob is copied in
 * as it is added, so the caller's buffer is free at once and the pack is one buffer when it is
 * finished (no second copy of it); the buffer may be one a stored pack no longer needs (`buffer`).
 */
export class PackBuilder {
  private buf: Buffer;
  readonly blobs: PackedBlob[] = [];
  size = 0;

  /**
   * `buffer`: memory to build the pack in (grown when too small); `capacity`: else, how much to
   * allocate; `target`: the size at which the pack will be finished (how far growth may double).
   */
  constructor(
    readonly type: BlobType,
    buffer?: Buffer,
    capacity = 1024 * 1024,
    private readonly target = Infinity,
  ) {
    this.buf = buffer ?? Buffer.allocUnsafeSlow(capacity);
  }

  add(id: Buffer, sealed: Uint8Array, uncompressedLength: number): PackedBlob {
    const entry: PackedBlob = { id, type: this.type, offset: this.size, length: sealed.length, uncompressedLength };
    this.reserve(sealed.length);
    this.buf.set(sealed, this.size);
    this.blobs.push(entry);
    this.size += sealed.length;
    return entry;
  }

  /** The pack file's bytes: a view of the builder's buffer, valid until the buffer is reused. */
  finish(key: MasterKey): Buffer {
    const header = encodeHeader(key, this.blobs);
    this.reserve(header.length);
    header.copy(this.buf, this.size);
    return this.buf.subarray(0, this.size + header.length);
  }

  /** The memory the pack was built in (to build another one in once this one is stored). */
  get buffer(): Buffer {
    return this.buf;
  }

  private reserve(more: number): void {
    const needed = this.size + more;
    if (needed <= this.buf.length) return;
    // Doubled up to the target size (few copies while a pack fills), then grown only by what is
    // needed and a little more: past its target a pack takes at most one more blob, and a doubled
    // buffer (kept for reuse) would hold twice the memory for good.
    const slack = 1024 * 1024;
    const size = needed <= this.target ? Math.max(needed, Math.min(2 * this.buf.length, this.target + slack)) : needed + slack;
    const bigger = Buffer.allocUnsafeSlow(size);
    this.buf.copy(bigger, 0, 0, this.size);
    // The smaller buffer is the builder's alone (its own, or a stored pack's given to it): freed
    // now, not a pack's size of dead memory until a collection (one of four data pack buffers at
    // the peak of a backup).
    releaseBuffer(this.buf);
    this.buf = bigger;
  }
}

export { seal as sealBlob, open as openBlob };
