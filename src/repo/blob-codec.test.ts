import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { closeSync, mkdtempSync, openSync, rmSync, writeSync } from "node:fs";
import { constants, tmpdir } from "node:os";
import { join } from "node:path";
import { type BlobCodec, type EncodedBatch, type PackEntry, batchBlob, decodeBlobsInBackground, decodeFromFiles, encodeBatchInBackground, jsBlobCodec, nativeBlobCodec, packEntries, sealInBackground, verifyBlobsInBackground, verifyPackInBackground } from "./blob-codec.js";
import { compress, decompress } from "./compression.js";
import { type MasterKey, newRandomKey, open, seal } from "./crypto.js";
import { sha256 } from "./id.js";
import { SitekeepError } from "../errors.js";
import { nativeAddon } from "../platform/native.js";

// Both forms of the codec, each against the other: what one writes the other must read, and both
// must find the same damage with the same words. The JavaScript form is also what runs without the
// addon (SITEKEEP_NO_NATIVE=1, or no OpenSSL or libzstd in the process).
const forms: [string, BlobCodec][] = [["js", jsBlobCodec]];
if (nativeBlobCodec) forms.push(["native", nativeBlobCodec]);

test("the native codec is built where the addon is", () => {
  if (process.env.SITEKEEP_NO_NATIVE === "1") return;
  assert.ok(nativeBlobCodec, "native/sitekeep_codec.c did not load (OpenSSL or libzstd missing?)");
  assert.ok(decodeBlobsInBackground, "decodeblobsAsync is missing");
  assert.ok(sealInBackground, "sealblobAsync is missing");
  assert.ok(encodeBatchInBackground, "encodeblobsAsync is missing");
  assert.ok(decodeFromFiles, "readdecodeblobsAsync is missing");
  assert.ok(verifyPackInBackground, "verifypackAsync is missing");
});

test("a large blob sealed on the thread pool opens with the JavaScript form", async (t) => {
  if (!sealInBackground) return t.skip("no native codec");
  const key = newRandomKey();
  const text = Buffer.from("a large file's chunk of text ".repeat(40_000));
  const random = randomBytes(1_000_000);
  const [z, r, plain, again] = await Promise.all([
    sealInBackground(key, text, true),
    sealInBackground(key, random, true),
    sealInBackground(key, text, false),
    sealInBackground(key, text, true),
  ]);
  assert.equal(z.uncompressedLength, text.length, "text is stored compressed");
  assert.ok(z.sealed.length < text.length / 10);
  assert.deepEqual(decompress(open(key, z.sealed)), text);
  assert.equal(r.uncompressedLength, 0, "random bytes are stored as they are");
  assert.equal(r.sealed.length, random.length + 32);
  assert.deepEqual(open(key, r.sealed), random);
  assert.equal(plain.uncompressedLength, 0, "without compression, nothing is compressed");
  assert.deepEqual(open(key, plain.sealed), text);
  assert.notDeepEqual(z.sealed.subarray(0, 16), again.sealed.subarray(0, 16), "a fresh IV each time");
  const empty = await sealInBackground(key, Buffer.alloc(0), true);
  assert.deepEqual([empty.sealed.length, empty.uncompressedLength, open(key, empty.sealed).length], [32, 0, 0]);
});

test("blobs that compress by a few bytes, or just fail to, are sealed whole by both native forms", async (t) => {
  if (!sealInBackground || !nativeBlobCodec) return t.skip("no native codec");
  // zstd writes straight into the sealed blob with room for one byte less than the plaintext:
  // random bytes behind a run of zeros of each length cross that line somewhere in this range.
  const key = newRandomKey();
  const blobs = Array.from({ length: 64 }, (_, i) => Buffer.concat([Buffer.alloc(i), randomBytes(2000)]));
  let compressed = 0;
  for (const plain of blobs) {
    const s = await sealInBackground(key, plain, true);
    const body = open(key, s.sealed);
    assert.deepEqual(s.uncompressedLength ? decompress(body) : body, plain);
    if (s.uncompressedLength) {
      compressed++;
      assert.ok(body.length < plain.length, "stored compressed only when shorter");
    }
  }
  assert.ok(compressed > 0 && compressed < blobs.length, `both sides of the line are seen (${compressed} of ${blobs.length} compressed)`);
  const { data, offsets, lengths } = layout(blobs);
  const enc = nativeBlobCodec.encodeBatch(key, true, data, offsets, lengths);
  blobs.forEach((plain, i) => assert.deepEqual(jsBlobCodec.decodeBlob(key, batchBlob(enc, i), batchBlob(enc, i).sealed, sha256(plain)), plain));
});

/** Text that compresses, random bytes that do not, an empty blob, one byte, odd sizes (the CTR stream restarts per blob). */
function sampleBlobs(): Buffer[] {
  return [
    Buffer.from("hello ".repeat(200)),
    randomBytes(3000),
    Buffer.alloc(0),
    Buffer.from("x"),
    randomBytes(17),
    Buffer.from("world ".repeat(60_000)),
    randomBytes(400_000),
    randomBytes(33),
  ];
}

function layout(blobs: Buffer[]): { data: Buffer; offsets: number[]; lengths: number[] } {
  const offsets: number[] = [];
  let off = 0;
  for (const b of blobs) {
    offsets.push(off);
    off += b.length;
  }
  // A batch need not start at 0 or use all of its buffer: a prefix and a tail around the blobs.
  const data = Buffer.concat([Buffer.from("prefix"), ...blobs, Buffer.from("tail")]);
  return { data, offsets: offsets.map((o) => o + 6), lengths: blobs.map((b) => b.length) };
}

function entriesOf(enc: EncodedBatch, n: number): PackEntry[] {
  return Array.from({ length: n }, (_, i) => {
    const b = batchBlob(enc, i);
    return { id: b.id, offset: i === 0 ? 0 : enc.ends[i - 1], length: b.sealed.length, uncompressedLength: b.uncompressedLength };
  });
}

/** A batch of sampleBlobs(), encoded `compressed` or not, holds each blob as `r` reads it. */
function assertBatch(key: MasterKey, enc: EncodedBatch, blobs: Buffer[], compressed: boolean, r: BlobCodec): void {
  assert.equal(enc.ends.length, blobs.length);
  blobs.forEach((plain, i) => {
    const b = batchBlob(enc, i);
    assert.deepEqual(b.id, sha256(plain), `ID of blob ${i}`);
    assert.deepEqual(r.decodeBlob(key, b, b.sealed, b.id), plain, `blob ${i}`);
  });
  const ulens = Array.from(enc.ulens);
  if (compressed) {
    assert.equal(ulens[0], blobs[0].length, "text is stored compressed");
    assert.equal(ulens[5], blobs[5].length);
    assert.deepEqual([ulens[1], ulens[2], ulens[3], ulens[6]], [0, 0, 0, 0], "random bytes, an empty blob and one byte are stored as they are");
  } else {
    assert.ok(ulens.every((u) => u === 0), "nothing is compressed without compression");
  }
  // Sealed size: IV + MAC on top of the stored body.
  assert.equal(enc.sealed.length, enc.ends[enc.ends.length - 1]);
  assert.equal(batchBlob(enc, 1).sealed.length, 3000 + 32);
  const pack = Buffer.from(enc.sealed);
  const verdict = r.verifyPack(key, pack, packEntries(entriesOf(enc, blobs.length)));
  assert.deepEqual(verdict, { hash: sha256(pack).toString("hex"), bad: [] });
}

for (const [writer, w] of forms) {
  for (const [reader, r] of forms) {
    test(`blobs encoded by the ${writer} codec are decoded and verified by the ${reader} codec`, () => {
      const key = newRandomKey();
      const blobs = sampleBlobs();
      const { data, offsets, lengths } = layout(blobs);
      for (const compressed of [true, false]) assertBatch(key, w.encodeBatch(key, compressed, data, offsets, lengths), blobs, compressed, r);
    });
  }
  test(`blobs encoded by the ${writer} codec are decoded on the thread pool`, async (t) => {
    if (!decodeBlobsInBackground) return t.skip("no native codec");
    const key = newRandomKey();
    const blobs = sampleBlobs();
    const { data, offsets, lengths } = layout(blobs);
    const enc = w.encodeBatch(key, true, data, offsets, lengths);
    // Two calls at once on the pool, each over its own copy of the pack.
    const results = await Promise.all([1, 2].map(() => decodeBlobsInBackground!(key, Buffer.from(enc.sealed), packEntries(entriesOf(enc, blobs.length)))));
    for (const decoded of results) assert.deepEqual(decoded, blobs);
  });
}

test("ranges of files read by descriptor are decoded on the thread pool, and failed reads say so", async (t) => {
  if (!decodeFromFiles || !nativeAddon?.readdecodeblobsAsync) return t.skip("no native codec");
  const key = newRandomKey();
  const blobs = sampleBlobs();
  const { data, offsets, lengths } = layout(blobs);
  const enc = jsBlobCodec.encodeBatch(key, true, data, offsets, lengths);
  const entries = entriesOf(enc, blobs.length);
  const dir = mkdtempSync(join(tmpdir(), "sitekeep-readdecode-"));
  const a = openSync(join(dir, "a"), "w+");
  const b = openSync(join(dir, "b"), "w+");
  try {
    // File a holds the batch; file b holds it after 100 other bytes. Read b's copy, then a's.
    writeSync(a, enc.sealed, 0, enc.sealed.length, 0);
    writeSync(b, Buffer.concat([randomBytes(100), enc.sealed]), 0, enc.sealed.length + 100, 0);
    const n = enc.sealed.length;
    const reads = new Float64Array([b, 100, n, a, 0, n]);
    const both = packEntries([...entries, ...entries.map((e) => ({ ...e, offset: e.offset + n }))]);
    assert.deepEqual(await decodeFromFiles(key, reads, both), [...blobs, ...blobs]);

    // A damaged byte fails its blob alone.
    writeSync(a, Buffer.from([enc.sealed[entries[1].offset + 20] ^ 0xff]), 0, 1, entries[1].offset + 20);
    const decoded = await decodeFromFiles(key, new Float64Array([a, 0, n]), packEntries(entries));
    decoded.forEach((d, i) => (i === 1 ? assert.ok(d instanceof SitekeepError && d.code === "crypto.mac", String(d)) : assert.deepEqual(d, blobs[i])));

    // A file that ends early, a descriptor that is not open, and arguments out of range.
    const readFails = (errno: number) => (err: unknown) => err instanceof Error && (err as NodeJS.ErrnoException).code === "ERR_SITEKEEP_READ" && (err as NodeJS.ErrnoException).errno === errno;
    await assert.rejects(decodeFromFiles(key, new Float64Array([a, 1, n]), packEntries(entries)), readFails(0));
    await assert.rejects(decodeFromFiles(key, new Float64Array([999_999, 0, n]), packEntries(entries)), readFails(constants.errno.EBADF));
    await assert.rejects(decodeFromFiles(key, new Float64Array([a, 0]), packEntries(entries)), /reads/);
    await assert.rejects(decodeFromFiles(key, new Float64Array([a, 0, 65 * 1024 * 1024]), packEntries(entries)), /reads/);
  } finally {
    closeSync(a);
    closeSync(b);
    rmSync(dir, { recursive: true, force: true });
  }
});

test("batches encoded on the thread pool are decoded and verified by each codec", async (t) => {
  if (!encodeBatchInBackground || !nativeAddon?.encodeblobsAsync) return t.skip("no native codec");
  const key = newRandomKey();
  const blobs = sampleBlobs();
  const { data, offsets, lengths } = layout(blobs);
  for (const compressed of [true, false]) {
    // Two jobs at once on the pool, over the same data.
    const encs = await Promise.all([1, 2].map(() => encodeBatchInBackground!(key, compressed, data, offsets, lengths)));
    for (const enc of encs) for (const [, r] of forms) assertBatch(key, enc, blobs, compressed, r);
    assert.notDeepEqual(batchBlob(encs[0], 0).sealed.subarray(0, 16), batchBlob(encs[1], 0).sealed.subarray(0, 16), "fresh IVs in each job");
  }
  const empty = await encodeBatchInBackground(key, true, Buffer.alloc(0), [], []);
  assert.deepEqual([empty.ids.length, empty.sealed.length, empty.ends.length, empty.ulens.length], [0, 0, 0, 0]);
  const bad = Buffer.alloc(64);
  assert.throws(() => nativeAddon!.encodeblobsAsync!(bad, data, new Float64Array([0, data.length + 1]), 3), /spans/);
  assert.throws(() => nativeAddon!.encodeblobsAsync!(bad, data, new Float64Array([0, 1]), 23), /level/);
});

for (const [name, codec] of forms) {
  test(`the ${name} codec finds each kind of damage, blob by blob`, async () => {
    const key = newRandomKey();
    const blobs = [Buffer.from("hello ".repeat(3000)), Buffer.from("world ".repeat(50_000)), randomBytes(2000)];
    const { data, offsets, lengths } = layout(blobs);
    const enc = codec.encodeBatch(key, true, data, offsets, lengths);
    const entries = entriesOf(enc, blobs.length);
    const pack = Buffer.from(enc.sealed);
    assert.ok(entries[0].uncompressedLength && entries[1].uncompressedLength && !entries[2].uncompressedLength);
    // A sealed blob whose MAC is right but whose body is not a zstd frame: written damaged.
    const notZstd = seal(key, Buffer.from("this is not a zstd frame at all"));
    // One whose body is zstd of other bytes than the ID names.
    const otherText = seal(key, compress(Buffer.from("other ".repeat(100))));
    const flipped = Buffer.from(pack);
    flipped[entries[2].offset + 20] ^= 1;
    const full = Buffer.concat([flipped, notZstd, otherText]);
    const idOf = (s: string): Buffer => sha256(Buffer.from(s));
    const cases: [PackEntry, string][] = [
      [entries[0], ""],
      [{ ...entries[0], uncompressedLength: entries[0].uncompressedLength + 1 }, "blob ID decompressed to the wrong length"],
      [{ ...entries[1], uncompressedLength: entries[1].uncompressedLength - 1 }, "blob ID decompressed to the wrong length"],
      [{ ...entries[1], uncompressedLength: 10 }, "blob ID decompressed to the wrong length"],
      [{ ...entries[1], uncompressedLength: 3 * 1024 ** 3 }, "blob ID decompressed to the wrong length"], // a damaged index: no 3 GiB buffer for it
      [{ ...entries[0], id: idOf("other") }, "blob ID does not match its ID"],
      [entries[2], "ciphertext verification failed (wrong key or damaged data)"],
      [{ ...entries[1], length: 31 }, "ciphertext too short (31 bytes)"],
      [{ ...entries[1], offset: full.length - 10 }, "it lies beyond the end of the file"],
      [{ id: idOf("x"), offset: pack.length, length: notZstd.length, uncompressedLength: 100 }, "blob ID could not be decompressed"],
      [{ id: idOf("x"), offset: pack.length + notZstd.length, length: otherText.length, uncompressedLength: 600 }, "blob ID does not match its ID"],
      [entries[1], ""],
    ];
    const verdict = codec.verifyPack(key, full, packEntries(cases.map((c) => c[0])));
    const found = verdict.bad.map((b) => [b.entry, b.message.replace(/[0-9a-f]{64}/, "ID")]);
    const expected = cases.flatMap(([, message], i) => (message ? [[i, message]] : []));
    assert.deepEqual(found, expected);
    // decodeBlob throws the same (except for a place beyond the end, which only a pack has).
    cases.forEach(([e, message], i) => {
      if (e.offset + e.length > full.length) return;
      const sealed = full.subarray(e.offset, e.offset + e.length);
      if (!message) assert.deepEqual(codec.decodeBlob(key, e, sealed, e.id), blobs[i === 0 ? 0 : 1]);
      else assert.throws(() => codec.decodeBlob(key, e, sealed, e.id), (err: Error) => err.message.replace(/[0-9a-f]{64}/, "ID") === message, `case ${i}`);
    });
    // Another key opens nothing.
    assert.throws(() => codec.decodeBlob(newRandomKey(), entries[0], pack.subarray(0, entries[0].length), entries[0].id), /verification failed/);
    // On the thread pool: the same verdicts, and the plaintexts of the good ones.
    if (name === "native" && decodeBlobsInBackground) {
      const decoded = await decodeBlobsInBackground(key, full, packEntries(cases.map((c) => c[0])));
      assert.deepEqual(
        decoded.map((d) => (d instanceof Error ? d.message.replace(/[0-9a-f]{64}/, "ID") : d)),
        cases.map(([, message], i) => message || blobs[i === 0 ? 0 : 1]),
      );
    }
    if (name === "native" && verifyPackInBackground) {
      assert.deepEqual(await verifyPackInBackground(key, full, packEntries(cases.map((c) => c[0]))), verdict, "a pack verified on the thread pool");
    }
    if (name === "native" && verifyBlobsInBackground) {
      assert.deepEqual(await verifyBlobsInBackground(key, full, packEntries(cases.map((c) => c[0]))), verdict.bad, "blobs verified on the thread pool, unhashed");
    }
  });
}

test("the native codec keeps each key's contexts apart, and refuses bad arguments", (t) => {
  if (!nativeBlobCodec || !nativeAddon?.encodeblobs || !nativeAddon.decodeblobs) return t.skip("no native codec");
  const keys = [newRandomKey(), newRandomKey()];
  const blobs = [Buffer.from("a ".repeat(500)), randomBytes(100)];
  const { data, offsets, lengths } = layout(blobs);
  // Alternating keys: each call must use its own (the addon keeps one keyed context per thread).
  const encs = [0, 1, 0, 1].map((k) => nativeBlobCodec!.encodeBatch(keys[k], true, data, offsets, lengths));
  encs.forEach((enc, j) => {
    const b = batchBlob(enc, 0);
    assert.deepEqual(jsBlobCodec.decodeBlob(keys[j % 2], b, b.sealed, b.id), blobs[0]);
    assert.throws(() => nativeBlobCodec!.decodeBlob(keys[(j + 1) % 2], b, b.sealed, b.id), /verification failed/);
  });
  // IVs are fresh for every blob, also for the same bytes under the same key.
  assert.notDeepEqual(batchBlob(encs[0], 0).sealed.subarray(0, 16), batchBlob(encs[2], 0).sealed.subarray(0, 16));

  const key = Buffer.alloc(64);
  assert.throws(() => nativeAddon!.encodeblobs!(Buffer.alloc(63), data, new Float64Array([0, 1]), 3), /key.*64 bytes/);
  assert.throws(() => nativeAddon!.encodeblobs!(key, data, new Float64Array([0, data.length + 1]), 3), /spans/);
  assert.throws(() => nativeAddon!.encodeblobs!(key, data, new Float64Array([0.5, 1]), 3), /spans/);
  assert.throws(() => nativeAddon!.encodeblobs!(key, data, new Float64Array([0]), 3), /spans/);
  assert.throws(() => nativeAddon!.encodeblobs!(key, data, new Float64Array([0, 1]), 23), /level/);
  assert.throws(() => nativeAddon!.decodeblobs!(key, data, new Float64Array([0, 40, 0]), Buffer.alloc(31), false), /spans/);
  assert.throws(() => nativeAddon!.decodeblobs!(key, data, new Float64Array([-1, 40, 0]), Buffer.alloc(32), false), /spans/);
});
