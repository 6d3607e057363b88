// zstd for blobs and for v2 "unpacked" files (index, snapshots, locks; never the config).
import { Compressor, Decompressor } from "zstd-napi";

const compressor = new Compressor();
compressor.setParameters({ compressionLevel: 3 });
const decompressor = new Decompressor();

export function compress(data: Uint8Array): Buffer {
  return compressor.compress(data);
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
