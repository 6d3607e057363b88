// Blobs in and out of their sealed form, without a Repository: so that worker threads
// (blob-workers.ts) can run the same code as the main thread. Encoding takes a batch of small
// blobs (the archiver reads the small files of a folder 64 at a time; per blob on the main thread
// this was most of a backup's time); verifying takes a whole pack (check --read-data).
import { SitekeepError } from "../errors.js";
import { compress, decompress, decompressInto } from "./compression.js";
import { type MasterKey, open, seal } from "./crypto.js";
import { ID_SIZE, hashHex, sha256 } from "./id.js";

/** The blobs of a batch, in the order given: IDs, sealed bytes back to back, and their sizes. */
export interface EncodedBatch {
  /** ID_SIZE bytes per blob: SHA-256 of the plaintext. */
  ids: Uint8Array;
  /** The sealed blobs back to back. */
  sealed: Uint8Array;
  /** End offset of each sealed blob in `sealed`. */
  ends: Uint32Array;
  /** Plaintext length of each compressed blob; 0 for a blob stored uncompressed. */
  ulens: Uint32Array;
}

/** The plain key material of a MasterKey (what a worker needs to rebuild it). */
export interface KeyBytes {
  encrypt: Uint8Array;
  macK: Uint8Array;
  macR: Uint8Array;
}

export function keyFromBytes(k: KeyBytes): MasterKey {
  return { encrypt: Buffer.from(k.encrypt), macK: Buffer.from(k.macK), macR: Buffer.from(k.macR) };
}

/**
 * Encodes the blobs data[offsets[i] .. offsets[i] + lengths[i]]. The results are in arrays of
 * their own (not Node's shared pool), so that a worker can hand them over without copying.
 */
export function encodeBatch(key: MasterKey, compressBlobs: boolean, data: Uint8Array, offsets: ArrayLike<number>, lengths: ArrayLike<number>): EncodedBatch {
  const n = lengths.length;
  const ids = new Uint8Array(n * ID_SIZE);
  const ends = new Uint32Array(n);
  const ulens = new Uint32Array(n);
  const parts: Buffer[] = [];
  let total = 0;
  for (let i = 0; i < n; i++) {
    const plain = data.subarray(offsets[i], offsets[i] + lengths[i]);
    ids.set(sha256(plain), i * ID_SIZE);
    let body: Uint8Array = plain;
    if (compressBlobs && plain.length > 0) {
      const z = compress(plain);
      if (z.length < plain.length) {
        body = z;
        ulens[i] = plain.length;
      }
    }
    const s = seal(key, body);
    parts.push(s);
    total += s.length;
    ends[i] = total;
  }
  const sealed = new Uint8Array(total);
  let off = 0;
  for (const p of parts) {
    sealed.set(p, off);
    off += p.length;
  }
  return { ids, sealed, ends, ulens };
}

/** Blob i of a batch. */
export function batchBlob(b: EncodedBatch, i: number): { id: Buffer; sealed: Buffer; uncompressedLength: number } {
  const start = i === 0 ? 0 : b.ends[i - 1];
  return {
    id: Buffer.from(b.ids.buffer, b.ids.byteOffset + i * ID_SIZE, ID_SIZE),
    sealed: Buffer.from(b.sealed.buffer, b.sealed.byteOffset + start, b.ends[i] - start),
    uncompressedLength: b.ulens[i],
  };
}

/** Verifies and decodes a sealed blob as stored in a pack: its content must match its ID. */
export function decodeBlob(key: MasterKey, loc: { uncompressedLength: number }, sealed: Uint8Array, id: Uint8Array): Buffer {
  return decodeBlobInto(key, loc, sealed, id, false);
}

/** Largest plaintext decompressed into the reused buffer (the index's length decides: it may be damaged). */
const SCRATCH_MAX = 64 * 1024 * 1024;
/** Output buffer of decodeBlobInto's decompression, reused from blob to blob. */
let scratch = Buffer.alloc(0);

/**
 * decodeBlob; with `reuse`, the plaintext may be decompressed into a buffer that the next call
 * overwrites (for check, which decodes every blob only to hash it: a pack's worth of plaintext
 * then leaves no garbage behind).
 */
function decodeBlobInto(key: MasterKey, loc: { uncompressedLength: number }, sealed: Uint8Array, id: Uint8Array, reuse: boolean): Buffer {
  let plain = open(key, sealed);
  const expected = loc.uncompressedLength;
  if (expected && reuse && expected < SCRATCH_MAX) {
    // One byte more than expected: a blob that decompresses to more is found out, not cut short.
    if (scratch.length < expected + 1) scratch = Buffer.allocUnsafeSlow(Math.min(SCRATCH_MAX, Math.max(expected + 1, 2 * scratch.length)));
    let n: number;
    try {
      n = decompressInto(scratch.subarray(0, expected + 1), plain);
    } catch (err) {
      if (/too small/i.test(err instanceof Error ? err.message : "")) throw damagedBlob(id, "decompressed to the wrong length");
      throw err;
    }
    if (n !== expected) throw damagedBlob(id, "decompressed to the wrong length");
    plain = scratch.subarray(0, n);
  } else if (expected) {
    plain = decompress(plain);
    if (plain.length !== expected) throw damagedBlob(id, "decompressed to the wrong length");
  }
  if (!sha256(plain).equals(id)) throw damagedBlob(id, "does not match its ID");
  return plain;
}

/** The error of a blob that decodes to something else than its ID promises. */
export function damagedBlob(id: Uint8Array, why: "decompressed to the wrong length" | "does not match its ID"): SitekeepError {
  return new SitekeepError("repo.damaged", `blob ${Buffer.from(id).toString("hex")} ${why}`);
}

/** A blob of a pack to verify: where it is and what it must decode to. */
export interface PackEntry {
  id: Uint8Array;
  offset: number;
  length: number;
  uncompressedLength: number;
}

/** A whole pack's SHA-256, and which of the entries cannot be decoded (index in `entries`, why). */
export interface PackVerdict {
  hash: string;
  bad: { entry: number; message: string }[];
}

/** Hashes a pack file and decodes every entry in it (check --read-data). */
export function verifyPack(key: MasterKey, pack: Uint8Array, entries: readonly PackEntry[]): PackVerdict {
  const bad: PackVerdict["bad"] = [];
  entries.forEach((e, i) => {
    try {
      if (e.offset + e.length > pack.length) throw new Error("it lies beyond the end of the file");
      decodeBlobInto(key, e, pack.subarray(e.offset, e.offset + e.length), e.id, true);
    } catch (err) {
      bad.push({ entry: i, message: err instanceof Error ? err.message : String(err) });
    }
  });
  return { hash: hashHex(pack), bad };
}
