// zstd for blobs and for v2 "unpacked" files (index, snapshots, locks; never the config).
// Synchronous calls use zstd-napi. Blob compression during a backup uses @mongodb-js/zstd, whose
// calls run on libuv's thread pool: compression is the largest CPU cost of a backup, and this is
// what puts the second core to work. Where that package has no binary for the platform, the
// asynchronous form falls back to the synchronous one.
import { createRequire } from "node:module";
import { Compressor, Decompressor } from "zstd-napi";

/**
 * The zstd level of blobs and unpacked files. restic's "auto" compression is klauspost/compress's
 * SpeedDefault, a Go encoder of its own whose ratio is close to libzstd's level 2 (between 1 and 2 on
 * the benchmark's mixed set, between 2 and 3 on its many-files set). Level 2
 * gives a repository the size of restic's (bench/README.md: 0.996× on the mixed set, 1.004× on the
 * many-files set; level 3 0.992× and 1.000×) and compresses ~1.4× as fast as level 3 on that data,
 * which took the mixed initial backup from ~11.0 to ~9.4 s.
 */
export const ZSTD_LEVEL = 2;

const compressor = new Compressor();
compressor.setParameters({ compressionLevel: ZSTD_LEVEL });
const decompressor = new Decompressor();

export function compress(data: Uint8Array): Buffer {
  return compressor.compress(data);
}

interface AsyncZstd {
  compress(data: Buffer, level: number): Promise<Buffer>;
  decompress(data: Buffer): Promise<Buffer>;
}

function loadAsyncZstd(): AsyncZstd | undefined {
  if (process.env.SITEKEEP_SYNC_COMPRESSION === "1") return undefined;
  try {
    return createRequire(import.meta.url)("@mongodb-js/zstd") as AsyncZstd;
  } catch {
    return undefined;
  }
}

const asyncZstd = loadAsyncZstd();

/** True when compressAsync runs off the main thread. */
export const compressesInBackground: boolean = asyncZstd !== undefined;

/** zstd on the thread pool when available, at ZSTD_LEVEL as compress(). `data` must not change until it resolves. */
export async function compressAsync(data: Buffer): Promise<Buffer> {
  return asyncZstd ? asyncZstd.compress(data, ZSTD_LEVEL) : compress(data);
}

/**
 * decompress() on the thread pool. Falls back to this thread for frames the asynchronous decoder
 * refuses (it wants the content size in the frame header, which other writers may leave out).
 */
export async function decompressAsync(data: Buffer): Promise<Buffer> {
  if (!asyncZstd) return decompress(data);
  try {
    return await asyncZstd.decompress(data);
  } catch {
    return decompress(data);
  }
}

export function decompress(data: Uint8Array): Buffer {
  return decompressor.decompress(data);
}

interface DCtx {
  decompress(dst: Uint8Array, src: Uint8Array): number;
}
// zstd-napi's documented low-level binding (binding.d.ts): decompression into a given buffer.
const ZstdDCtx = (createRequire(import.meta.url)("zstd-napi/binding") as { DCtx: new () => DCtx }).DCtx;
let dctx: DCtx | undefined;

/**
 * Decompresses `data` into `into` and returns the bytes written, for callers that reuse one output
 * buffer (check decodes every blob only to hash it). Throws when `into` is too small.
 */
export function decompressInto(into: Uint8Array, data: Uint8Array): number {
  dctx ??= new ZstdDCtx();
  return dctx.decompress(into, data);
}

/** v2 unpacked files: a version byte 2 followed by zstd data; a first byte of `{` or `[` is plain JSON. */
export function packUnpacked(plain: Uint8Array): Buffer {
  return framed(compress(plain));
}

/** packUnpacked with the compression on the thread pool (index files of a large site are tens of MB). */
export async function packUnpackedAsync(plain: Buffer): Promise<Buffer> {
  return framed(await compressAsync(plain));
}

function framed(z: Buffer): Buffer {
  const out = Buffer.allocUnsafe(z.length + 1);
  out[0] = 2;
  z.copy(out, 1);
  return out;
}

export function unpackUnpacked(data: Buffer): Buffer {
  if (data.length > 0 && data[0] === 2) return decompress(data.subarray(1));
  return data;
}

/** unpackUnpacked with the decompression on the thread pool. */
export async function unpackUnpackedAsync(data: Buffer): Promise<Buffer> {
  if (data.length > 0 && data[0] === 2) return decompressAsync(data.subarray(1));
  return data;
}
