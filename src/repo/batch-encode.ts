// Encoding a batch of small blobs in one go: hash, compress (when it helps), seal. The archiver
// reads the small files of a folder 64 at a time; for a site of many small files, doing this per
// blob on the main thread was most of a backup's time, so batches go to worker threads
// (encoder-pool.ts) that run this same function.
import { compress } from "./compression.js";
import { type MasterKey, seal } from "./crypto.js";
import { ID_SIZE, sha256 } from "./id.js";

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
