import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { batchBlob, encodeBatch, packEntries } from "./blob-codec.js";
import { decompress } from "./compression.js";
import { newRandomKey, open } from "./crypto.js";
import { blobWorkerState, encodeInWorker } from "./blob-workers.js";
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
  assert.ok(blobWorkerState().workers >= 1, "encoded on a worker, not on this thread");
  assert.equal(blobWorkerState().broken, false);
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

test("a pack is verified on a worker (damage found per blob), and again on this thread when the worker dies with it", async () => {
  const { verifyPackInWorker, killBlobWorkersForTest } = await import("./blob-workers.js");
  const key = newRandomKey();
  // A pack large enough (~16 MB) that the worker is still at it when it is killed below.
  const blobs = [Buffer.from("a".repeat(5000)), randomBytes(16_000_000), Buffer.from("last")];
  const enc = encodeBatch(key, true, Buffer.concat(blobs), [0, 5000, 16_005_000], blobs.map((b) => b.length));
  const list = blobs.map((_, i) => {
    const b = batchBlob(enc, i);
    return { id: b.id, offset: i === 0 ? 0 : enc.ends[i - 1], length: b.sealed.length, uncompressedLength: b.uncompressedLength };
  });
  const entries = packEntries(list);
  const pack = Buffer.from(enc.sealed); // a "pack" of three blobs, without a header
  const damaged = Buffer.from(pack);
  damaged[list[1].offset + 100] ^= 1;
  const fresh = (b: Buffer): Uint8Array => new Uint8Array(b); // owns its memory: handed to the worker

  const good = await verifyPackInWorker(key, fresh(pack), entries, async () => fresh(pack));
  assert.equal(good.hash, sha256(pack).toString("hex"));
  assert.deepEqual(good.bad, []);
  const bad = await verifyPackInWorker(key, fresh(damaged), entries, async () => fresh(damaged));
  assert.deepEqual(bad.bad.map((b) => b.entry), [1]);
  assert.match(bad.bad[0].message, /ciphertext verification failed/);

  // Lent: a pack at the start of a larger buffer goes to the worker and comes back, unchanged.
  const room = new ArrayBuffer(damaged.length + 1000);
  const lent = new Uint8Array(room, 0, damaged.length);
  lent.set(damaged);
  const back = await verifyPackInWorker(key, lent, entries, async () => fresh(damaged), true);
  assert.deepEqual(back.bad.map((b) => b.entry), [1]);
  assert.equal(back.hash, sha256(damaged).toString("hex"));
  assert.equal(room.byteLength, 0, "handed to the worker, not copied");
  assert.ok(back.buffer instanceof ArrayBuffer && back.buffer.byteLength === damaged.length + 1000);
  assert.ok(Buffer.from(back.buffer, 0, damaged.length).equals(damaged));
  assert.equal((await verifyPackInWorker(key, fresh(pack), entries, async () => fresh(pack))).buffer, undefined, "not lent: not returned");

  // The worker dies while it has the pack: the pack is read again and verified here.
  let reloaded = 0;
  const inFlight = verifyPackInWorker(key, fresh(damaged), entries, async () => {
    reloaded++;
    return fresh(damaged);
  });
  await killBlobWorkersForTest();
  const again = await inFlight;
  assert.deepEqual(again.bad.map((b) => b.entry), [1]);
  assert.equal(again.hash, sha256(damaged).toString("hex"));
  assert.equal(reloaded, 1, "the pack was read again");
  assert.equal(blobWorkerState().broken, true, "a worker that died marks the pool broken");
});
