// Blobs in and out of their sealed form, without a Repository: so that worker threads
// (blob-workers.ts) can run the same code as the main thread. Encoding takes a batch of small
// blobs (the archiver reads small files 64 at a time, from one folder or several; per blob on the main thread
// this was most of a backup's time); verifying takes a whole pack (check --read-data).
// Two forms of the same codec: the native addon's (native/sitekeep_codec.c: one call per batch,
// ~7 µs per small blob less) where it is built, and this file's JavaScript otherwise. The native
// form also decodes blobs and seals large ones on the thread pool, one job each
// (decodeBlobsInBackground, sealInBackground).
import { SitekeepError } from "../errors.js";
import { type NativeAddon, nativeAddon } from "../platform/native.js";
import { asBuffer } from "../util/bytes.js";
import { ZSTD_LEVEL, compress, decompress, decompressInto } from "./compression.js";
import { type MasterKey, keyBytes, macFailure, open, seal, tooShort } from "./crypto.js";
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

function encodeBatchJS(key: MasterKey, compressBlobs: boolean, data: Uint8Array, offsets: ArrayLike<number>, lengths: ArrayLike<number>): EncodedBatch {
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

function decodeBlobJS(key: MasterKey, loc: { uncompressedLength: number }, sealed: Uint8Array, id: Uint8Array): Buffer {
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
    const n = undamaged(id, () => decompressInto(scratch.subarray(0, expected + 1), plain));
    if (n !== expected) throw damagedBlob(id, "decompressed to the wrong length");
    plain = scratch.subarray(0, n);
  } else if (expected) {
    const body = plain;
    plain = undamaged(id, () => decompress(body));
    if (plain.length !== expected) throw damagedBlob(id, "decompressed to the wrong length");
  }
  if (!sha256(plain).equals(id)) throw damagedBlob(id, "does not match its ID");
  return plain;
}

/** Runs a decompression; zstd's errors become the blob's (its output too long for the room, or not zstd at all). */
function undamaged<T>(id: Uint8Array, decompression: () => T): T {
  try {
    return decompression();
  } catch (err) {
    throw damagedBlob(id, /too small/i.test(err instanceof Error ? err.message : "") ? "decompressed to the wrong length" : "could not be decompressed");
  }
}

/** The error of a blob that decodes to something else than its ID promises. */
export function damagedBlob(id: Uint8Array, why: "decompressed to the wrong length" | "could not be decompressed" | "does not match its ID"): SitekeepError {
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

const BEYOND_END = "it lies beyond the end of the file";

function verifyEntryJS(key: MasterKey, pack: Uint8Array, e: PackEntry): string | undefined {
  try {
    if (e.offset + e.length > pack.length) throw new Error(BEYOND_END);
    decodeBlobInto(key, e, pack.subarray(e.offset, e.offset + e.length), e.id, true);
    return undefined;
  } catch (err) {
    return err instanceof Error ? err.message : String(err);
  }
}

/** The blobs of a pack to verify, packed for a worker (one transfer, not one object per blob). */
export interface PackEntries {
  /** ID_SIZE bytes per blob: what it must hash to. */
  ids: Uint8Array;
  /** (offset, length, uncompressed length or 0) per blob, as the index has them. */
  spans: Float64Array;
}

export function packEntries(entries: readonly PackEntry[]): PackEntries {
  const ids = new Uint8Array(ID_SIZE * entries.length);
  const spans = new Float64Array(3 * entries.length);
  entries.forEach((e, i) => {
    ids.set(e.id, ID_SIZE * i);
    spans[3 * i] = e.offset;
    spans[3 * i + 1] = e.length;
    spans[3 * i + 2] = e.uncompressedLength;
  });
  return { ids, spans };
}

/** Entry i of packed entries. */
function entryAt(p: PackEntries, i: number): PackEntry {
  return { id: p.ids.subarray(ID_SIZE * i, ID_SIZE * (i + 1)), offset: p.spans[3 * i], length: p.spans[3 * i + 1], uncompressedLength: p.spans[3 * i + 2] };
}

function verifyPackJS(key: MasterKey, pack: Uint8Array, entries: PackEntries): PackVerdict {
  const bad: PackVerdict["bad"] = [];
  for (let i = 0; i < entries.spans.length / 3; i++) {
    const message = verifyEntryJS(key, pack, entryAt(entries, i));
    if (message !== undefined) bad.push({ entry: i, message });
  }
  return { hash: hashHex(pack), bad };
}

/** One form of the codec: what the worker threads and the repository call. */
export interface BlobCodec {
  /** Hashes, compresses (when `compressBlobs` and it makes a blob shorter) and seals data[offsets[i] .. + lengths[i]]. */
  encodeBatch(key: MasterKey, compressBlobs: boolean, data: Uint8Array, offsets: ArrayLike<number>, lengths: ArrayLike<number>): EncodedBatch;
  /** Verifies and decodes a sealed blob as stored in a pack: its content must match its ID. */
  decodeBlob(key: MasterKey, loc: { uncompressedLength: number }, sealed: Uint8Array, id: Uint8Array): Buffer;
  /** Hashes a pack file and decodes every entry in it (check --read-data). */
  verifyPack(key: MasterKey, pack: Uint8Array, entries: PackEntries): PackVerdict;
}

export const jsBlobCodec: BlobCodec = { encodeBatch: encodeBatchJS, decodeBlob: decodeBlobJS, verifyPack: verifyPackJS };

// ---- the native form -------------------------------------------------------------------------

/** Status codes of the addon's decodeblobs, one per blob (native/sitekeep_codec.c, SK_DECODE_*). */
const Decoded = {
  Ok: 0,
  BeyondEnd: 1,
  Short: 2,
  Mac: 3,
  Length: 4,
  Corrupt: 5,
  Id: 6,
  /** Larger than the addon decodes (64 MiB): the JavaScript form does it. */
  TooLarge: 7,
} as const;

/** The error a blob's status stands for, with the messages of the JavaScript form. */
function decodeError(status: number, id: Uint8Array, sealedLength: number): Error {
  switch (status) {
    case Decoded.BeyondEnd:
      return new Error(BEYOND_END);
    case Decoded.Short:
      return tooShort(sealedLength);
    case Decoded.Mac:
      return macFailure();
    case Decoded.Length:
      return damagedBlob(id, "decompressed to the wrong length");
    case Decoded.Corrupt:
      return damagedBlob(id, "could not be decompressed");
    case Decoded.Id:
      return damagedBlob(id, "does not match its ID");
    default:
      return new Error(`blob codec: unknown status ${status}`);
  }
}

/** The addon's codec functions: native/sitekeep_codec.c defines all six or none. */
type CodecAddon = Required<Pick<NativeAddon, "encodeblobs" | "encodeblobsAsync" | "decodeblobs" | "decodeblobsAsync" | "verifypackAsync" | "sealblobAsync">>;

const codecAddon: CodecAddon | undefined =
  nativeAddon?.encodeblobs &&
  nativeAddon.encodeblobsAsync &&
  nativeAddon.decodeblobs &&
  nativeAddon.decodeblobsAsync &&
  nativeAddon.verifypackAsync &&
  nativeAddon.sealblobAsync
    ? (nativeAddon as CodecAddon)
    : undefined;

/** The addon's spans argument for a batch: (offset, length) per blob. */
function spansOf(offsets: ArrayLike<number>, lengths: ArrayLike<number>): Float64Array {
  const spans = new Float64Array(2 * lengths.length);
  for (let i = 0; i < lengths.length; i++) {
    spans[2 * i] = offsets[i];
    spans[2 * i + 1] = lengths[i];
  }
  return spans;
}

/** A pack's verdict from the addon's status per entry; a blob too large for the addon is verified here. */
function packVerdict(key: MasterKey, pack: Uint8Array, entries: PackEntries, status: Int32Array, hash: string): PackVerdict {
  const bad: PackVerdict["bad"] = [];
  status.forEach((s, i) => {
    if (s === Decoded.Ok) return;
    const e = entryAt(entries, i);
    const message = s === Decoded.TooLarge ? verifyEntryJS(key, pack, e) : decodeError(s, e.id, e.length).message;
    if (message !== undefined) bad.push({ entry: i, message });
  });
  return { hash, bad };
}

function nativeForm(addon: CodecAddon): BlobCodec {
  return {
    encodeBatch(key, compressBlobs, data, offsets, lengths) {
      const [ids, sealed, ends, ulens] = addon.encodeblobs(keyBytes(key), asBuffer(data), spansOf(offsets, lengths), compressBlobs ? ZSTD_LEVEL : 0);
      return { ids, sealed, ends, ulens };
    },
    decodeBlob(key, loc, sealed, id) {
      const [status, out] = addon.decodeblobs(keyBytes(key), asBuffer(sealed), Float64Array.of(0, sealed.length, loc.uncompressedLength), asBuffer(id), true);
      if (status[0] === Decoded.Ok && out) return out;
      if (status[0] === Decoded.TooLarge) return decodeBlobJS(key, loc, sealed, id);
      throw decodeError(status[0], id, sealed.length);
    },
    verifyPack(key, pack, entries) {
      const [status] = addon.decodeblobs(keyBytes(key), asBuffer(pack), entries.spans, asBuffer(entries.ids), false);
      return packVerdict(key, pack, entries, status, hashHex(pack));
    },
  };
}

/** The addon's form, where it is built with OpenSSL and zstd at hand. */
export const nativeBlobCodec: BlobCodec | undefined =
  codecAddon ? nativeForm(codecAddon) : undefined;

const codec = nativeBlobCodec ?? jsBlobCodec;

/**
 * Decodes blobs of `src` on the thread pool, in one job (the addon's form only: the JavaScript form
 * decodes on the calling thread). Per entry, its plaintext or why it cannot be decoded. `src` must
 * not change until it settles.
 */
export type BackgroundDecoder = (key: MasterKey, src: Buffer, entries: PackEntries) => Promise<(Buffer | Error)[]>;

/** The addon's decode results per entry: its plaintext (a view of `out`), why it failed, or what `tooLarge` makes of a blob left to JavaScript. */
function decodedEntries<T>(status: Int32Array, out: Buffer, ends: Float64Array, entries: PackEntries, tooLarge: (e: PackEntry) => T): (Buffer | Error | T)[] {
  return Array.from(status, (s, i) => {
    if (s === Decoded.Ok) return out.subarray(i === 0 ? 0 : ends[i - 1], ends[i]);
    const e = entryAt(entries, i);
    return s === Decoded.TooLarge ? tooLarge(e) : decodeError(s, e.id, e.length);
  });
}

function backgroundDecoder(addon: CodecAddon): BackgroundDecoder {
  return async (key, src, entries) => {
    const [status, out, ends] = await addon.decodeblobsAsync(keyBytes(key), src, entries.spans, asBuffer(entries.ids));
    return decodedEntries(status, out, ends, entries, (e) => {
      try {
        return decodeBlobJS(key, e, src.subarray(e.offset, e.offset + e.length), e.id);
      } catch (err) {
        return err instanceof Error ? err : new Error(String(err));
      }
    });
  };
}

export const decodeBlobsInBackground: BackgroundDecoder | undefined =
  codecAddon ? backgroundDecoder(codecAddon) : undefined;

/**
 * Reads ranges of files by descriptor and decodes the blobs in them, in one thread-pool job (the
 * addon's form only): `reads` holds (fd, position, length) per range, and `entries`' offsets count
 * through the ranges laid end to end. A blob the addon leaves to JavaScript (larger than it
 * decodes) comes back undefined, for the caller to load alone.
 */
export type FileDecoder = (key: MasterKey, reads: Float64Array, entries: PackEntries) => Promise<(Buffer | Error | undefined)[]>;

function fileDecoder(read: NonNullable<NativeAddon["readdecodeblobsAsync"]>): FileDecoder {
  return async (key, reads, entries) => {
    const [status, out, ends] = await read(keyBytes(key), reads, entries.spans, asBuffer(entries.ids));
    return decodedEntries(status, out, ends, entries, () => undefined);
  };
}

export const decodeFromFiles: FileDecoder | undefined =
  codecAddon && nativeAddon?.readdecodeblobsAsync ? fileDecoder(nativeAddon.readdecodeblobsAsync) : undefined;

/**
 * Compresses (when `compressBlob` and it makes the blob shorter) and seals one blob on the thread
 * pool, in one job (the addon's form only). `plain` must not change until it settles.
 */
export type BackgroundSealer = (key: MasterKey, plain: Buffer, compressBlob: boolean) => Promise<{ sealed: Buffer; uncompressedLength: number }>;

function backgroundSealer(addon: CodecAddon): BackgroundSealer {
  return async (key, plain, compressBlob) => {
    const [sealed, uncompressedLength] = await addon.sealblobAsync(keyBytes(key), plain, compressBlob ? ZSTD_LEVEL : 0);
    return { sealed, uncompressedLength };
  };
}

export const sealInBackground: BackgroundSealer | undefined = codecAddon ? backgroundSealer(codecAddon) : undefined;

/**
 * encodeBatch on the thread pool, in one job (the addon's form only; without it a blob worker does
 * it: blob-workers.ts). `data` must not change until it settles. The sealed blobs are a Buffer of
 * their own, for the caller to free once they are packed (releaseBuffer).
 */
export type BackgroundBatchEncoder = (key: MasterKey, compressBlobs: boolean, data: Uint8Array, offsets: number[], lengths: number[]) => Promise<EncodedBatch>;

function backgroundBatchEncoder(addon: CodecAddon): BackgroundBatchEncoder {
  return async (key, compressBlobs, data, offsets, lengths) => {
    const [ids, sealed, ends, ulens] = await addon.encodeblobsAsync(keyBytes(key), asBuffer(data), spansOf(offsets, lengths), compressBlobs ? ZSTD_LEVEL : 0);
    return { ids, sealed, ends, ulens };
  };
}

export const encodeBatchInBackground: BackgroundBatchEncoder | undefined = codecAddon ? backgroundBatchEncoder(codecAddon) : undefined;

/**
 * verifyPack on the thread pool, in one job (the addon's form only; without it a blob worker does
 * it: blob-workers.ts). `pack` must not change until it settles.
 */
export type BackgroundPackVerifier = (key: MasterKey, pack: Uint8Array, entries: PackEntries) => Promise<PackVerdict>;

function backgroundPackVerifier(addon: CodecAddon): BackgroundPackVerifier {
  return async (key, pack, entries) => {
    const [status, hash] = await addon.verifypackAsync(keyBytes(key), asBuffer(pack), entries.spans, asBuffer(entries.ids), true);
    return packVerdict(key, pack, entries, status, (hash as Buffer).toString("hex"));
  };
}

export const verifyPackInBackground: BackgroundPackVerifier | undefined = codecAddon ? backgroundPackVerifier(codecAddon) : undefined;

/**
 * Decodes and verifies the blobs in `bytes` (a piece of a pack: offsets are relative to it) on the
 * thread pool without hashing the piece, for a check that streams a pack and hashes it beside
 * (the addon's form only). Returns the entries that fail. `bytes` must not change until it settles.
 */
export type BackgroundBlobVerifier = (key: MasterKey, bytes: Uint8Array, entries: PackEntries) => Promise<PackVerdict["bad"]>;

function backgroundBlobVerifier(addon: CodecAddon): BackgroundBlobVerifier {
  return async (key, bytes, entries) => {
    const [status] = await addon.verifypackAsync(keyBytes(key), asBuffer(bytes), entries.spans, asBuffer(entries.ids), false);
    return packVerdict(key, bytes, entries, status, "").bad;
  };
}

export const verifyBlobsInBackground: BackgroundBlobVerifier | undefined = codecAddon ? backgroundBlobVerifier(codecAddon) : undefined;

/**
 * Encodes the blobs data[offsets[i] .. offsets[i] + lengths[i]]. The results are in arrays of
 * their own (not Node's shared pool), so that a worker can hand them over without copying.
 */
export const encodeBatch: BlobCodec["encodeBatch"] = (...args) => codec.encodeBatch(...args);
/** Verifies and decodes a sealed blob as stored in a pack: its content must match its ID. */
export const decodeBlob: BlobCodec["decodeBlob"] = (...args) => codec.decodeBlob(...args);
/** Hashes a pack file and decodes every entry in it (check --read-data). */
export const verifyPack: BlobCodec["verifyPack"] = (...args) => codec.verifyPack(...args);
