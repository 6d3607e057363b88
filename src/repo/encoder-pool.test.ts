import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { batchBlob, encodeBatch } from "./batch-encode.js";
import { decompress } from "./compression.js";
import { newRandomKey, open } from "./crypto.js";
import { encodeInWorker, encoderPoolState } from "./encoder-pool.js";
import { sha256 } from "./id.js";

test("a batch encoded on a worker thread opens to its plaintexts, each under its own ID", async () => {
  const key = newRandomKey();
  // Text that compresses, random bytes that do not, an empty blob, and one of the largest sizes.
  const blobs = [Buffer.from("hello ".repeat(200)), randomBytes(3000), Buffer.alloc(0), Buffer.from("x"), randomBytes(400_000)];
  const data = Buffer.concat(blobs);
  const offsets: number[] = [];
  let off = 0;
  for (const b of blobs) {
    offsets.push(off);
    off += b.length;
  }
  const lengths = blobs.map((b) => b.length);
  const batches = await Promise.all([1, 2, 3].map(() => encodeInWorker(key, true, data, offsets, lengths)));
  assert.ok(encoderPoolState().workers >= 1, "encoded on a worker, not on this thread");
  assert.equal(encoderPoolState().broken, false);
  for (const enc of [...batches, encodeBatch(key, true, data, offsets, lengths)]) {
    blobs.forEach((plain, i) => {
      const b = batchBlob(enc, i);
      assert.deepEqual(b.id, sha256(plain));
      const opened = open(key, b.sealed);
      assert.deepEqual(b.uncompressedLength ? decompress(opened) : opened, plain, `blob ${i}`);
      if (i === 0) assert.equal(b.uncompressedLength, plain.length, "text is stored compressed");
      if (i === 1) assert.equal(b.uncompressedLength, 0, "random bytes are stored as they are");
    });
  }
  // Without compression (repository version 1, or compression off) nothing is compressed.
  const plainOnly = await encodeInWorker(key, false, data, offsets, lengths);
  assert.deepEqual(open(key, batchBlob(plainOnly, 0).sealed), blobs[0]);
  assert.equal(batchBlob(plainOnly, 0).uncompressedLength, 0);
});
