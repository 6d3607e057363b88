// zstd for blobs and for v2 "unpacked" files (index, snapshots, locks; never the config).
// Synchronous calls use zstd-napi. Blob compression during a backup uses @mongodb-js/zstd, whose
// calls run on libuv's thread pool: compression is the largest CPU cost of a backup, and this is
// what puts the second core to work. Where that package has no binary for the platform, the
// asynchronous form falls back to the synchronous one.
import { createRequire } from "node:module";
import { Compressor, Decompressor } from "zstd-napi";

const compressor = new Compressor();
compressor.setParameters({ compressionLevel: 3 });
const decompressor = new Decompressor();

export function compress(data: Uint8Array): Buffer {
  return compressor.compress(data);
}

type AsyncCompress = (data: Buffer, level: number) => Promise<Buffer>;

function loadAsyncCompress(): AsyncCompress | undefined {
  if (process.env.SITEKEEP_SYNC_COMPRESSION === "1") return undefined;
  try {
    const m = createRequire(import.meta.url)("@mongodb-js/zstd") as { compress: AsyncCompress };
    return m.compress;
  } catch {
    return undefined;
  }
}

const asyncCompress = loadAsyncCompress();

/** True when compressAsync runs off the main thread. */
export const compressesInBackground: boolean = asyncCompress !== undefined;

/** zstd level 3, on the thread pool when available. `data` must not change until it resolves. */
export async function compressAsync(data: Buffer): Promise<Buffer> {
  return asyncCompress ? asyncCompress(data, 3) : compress(data);
}

export function decompress(data: Uint8Array): Buffer {
  return decompressor.decompress(data);
}

/** v2 unpacked files: a version byte 2 followed by zstd data; a first byte of `{` or `[` is plain JSON. */
export function packUnpacked(plain: Uint8Array): Buffer {
  const z = compress(plain);
  const out = Buffer.allocUnsafe(z.length + 1);
  out[0] = 2;
  z.copy(out, 1);
  return out;
}

export function unpackUnpacked(data: Buffer): Buffer {
  if (data.length > 0 && data[0] === 2) return decompress(data.subarray(1));
  return data;
}
