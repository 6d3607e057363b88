// Worker thread entry of the blob workers (blob-workers.ts): encodes batches of small blobs and
// verifies whole packs, with the code the main thread would run (blob-codec.ts).
import { parentPort } from "node:worker_threads";
import { nativeAddon } from "../platform/native.js";
import { type KeyBytes, type PackEntries, encodeBatch, keyFromBytes, verifyPack } from "./blob-codec.js";
import type { MasterKey } from "./crypto.js";

export type BlobRequest = { seq: number; key: KeyBytes } & (
  | { kind: "encode"; compress: boolean; data: Uint8Array; offsets: Float64Array; lengths: Float64Array }
  | { kind: "verify"; pack: Uint8Array; entries: PackEntries; lend?: boolean }
);

// Throughput work: it should not take the main thread's core when it wakes (see sitekeep_fs.c).
nativeAddon?.batchThisThread?.();

/** The last key seen: a backup or a check sends the same one with every request. */
let last: { bytes: KeyBytes; key: MasterKey } | undefined;

function keyOf(bytes: KeyBytes): MasterKey {
  const same = (a: Uint8Array, b: Uint8Array): boolean => Buffer.from(a).equals(b);
  if (!last || !same(last.bytes.encrypt, bytes.encrypt) || !same(last.bytes.macK, bytes.macK) || !same(last.bytes.macR, bytes.macR)) {
    last = { bytes, key: keyFromBytes(bytes) };
  }
  return last.key;
}

parentPort?.on("message", (req: BlobRequest) => {
  try {
    if (req.kind === "encode") {
      const out = encodeBatch(keyOf(req.key), req.compress, req.data, req.offsets, req.lengths);
      // The arrays are encodeBatch's own (never Node's shared pool): handed over, not copied.
      const transfer = [out.ids.buffer, out.sealed.buffer, out.ends.buffer, out.ulens.buffer] as ArrayBuffer[];
      parentPort?.postMessage({ seq: req.seq, result: out }, transfer);
    } else {
      const verdict = verifyPack(keyOf(req.key), req.pack, req.entries);
      // A lent buffer goes back to be read into again (verifyPackInWorker).
      if (req.lend) parentPort?.postMessage({ seq: req.seq, result: { ...verdict, buffer: req.pack.buffer } }, [req.pack.buffer as ArrayBuffer]);
      else parentPort?.postMessage({ seq: req.seq, result: verdict });
    }
  } catch (err) {
    parentPort?.postMessage({ seq: req.seq, error: err instanceof Error ? err.message : String(err) });
  }
});
