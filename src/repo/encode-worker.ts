// Worker thread entry of the encoder pool (encoder-pool.ts): encodes the batches it is sent.
import { parentPort } from "node:worker_threads";
import { type KeyBytes, encodeBatch, keyFromBytes } from "./batch-encode.js";
import type { MasterKey } from "./crypto.js";

export interface EncodeRequest {
  seq: number;
  key: KeyBytes;
  compress: boolean;
  data: Uint8Array;
  offsets: Float64Array;
  lengths: Float64Array;
}

/** The last key seen: a backup sends the same one with every batch. */
let last: { bytes: KeyBytes; key: MasterKey } | undefined;

function keyOf(bytes: KeyBytes): MasterKey {
  const same = (a: Uint8Array, b: Uint8Array): boolean => Buffer.from(a).equals(b);
  if (!last || !same(last.bytes.encrypt, bytes.encrypt) || !same(last.bytes.macK, bytes.macK) || !same(last.bytes.macR, bytes.macR)) {
    last = { bytes, key: keyFromBytes(bytes) };
  }
  return last.key;
}

parentPort?.on("message", (req: EncodeRequest) => {
  try {
    const out = encodeBatch(keyOf(req.key), req.compress, req.data, req.offsets, req.lengths);
    // The arrays are encodeBatch's own (never Node's shared pool): handed over, not copied.
    const transfer = [out.ids.buffer, out.sealed.buffer, out.ends.buffer, out.ulens.buffer] as ArrayBuffer[];
    parentPort?.postMessage({ seq: req.seq, ...out }, transfer);
  } catch (err) {
    parentPort?.postMessage({ seq: req.seq, error: err instanceof Error ? err.message : String(err) });
  }
});
