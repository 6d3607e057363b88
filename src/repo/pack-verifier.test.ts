import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { packEntries, verifyBlobsInBackground, type PackEntry } from "./blob-codec.js";
import { compress } from "./compression.js";
import { newRandomKey, seal } from "./crypto.js";
import { hashHex, sha256 } from "./id.js";
import { PackBuilder, type PackedBlob, parsePackTail } from "./pack.js";
import { PIECE_SIZE, PieceBuffers, pieces, streamable, verifyPackStreamed } from "./pack-verifier.js";

const skip = verifyBlobsInBackground ? false : "needs the addon's codec";

function entry(offset: number, length: number): PackEntry {
  return { id: new Uint8Array(32), offset, length, uncompressedLength: 0 };
}

test("pieces hold whole blobs up to PIECE_SIZE; a larger blob is a piece of its own; they cover the blobs without a gap", () => {
  const M = 1024 * 1024;
  const lengths = [M, M, M, M - 10, 20, 5 * M, 10, 3 * M, 2 * M];
  let at = 0;
  const entries = lengths.map((l) => {
    const e = entry(at, l);
    at += l;
    return e;
  });
  const cut = pieces(packEntries(entries));
  assert.deepEqual(
    cut.map(([s, e, first, n]) => [s, e - s, first, n]),
    [
      [0, 4 * M - 10, 0, 4],
      [4 * M - 10, 20, 4, 1], // the next blob (5 MiB) would not fit beside it
      [4 * M + 10, 5 * M, 5, 1],
      [9 * M + 10, 3 * M + 10, 6, 2],
      [12 * M + 20, 2 * M, 8, 1],
    ],
  );
  for (let i = 1; i < cut.length; i++) assert.equal(cut[i][0], cut[i - 1][1], "contiguous");
  assert.ok(cut.every(([s, e, , n]) => e - s <= PIECE_SIZE || n === 1));
  assert.deepEqual(pieces(packEntries([])), []);
  // A gap before the first blob (and between blobs) is inside a piece, so it is hashed too.
  assert.deepEqual(pieces(packEntries([entry(100, 10), entry(200, 10)])), [[0, 210, 0, 2]]);
});

test("streamable: blobs in order that neither overlap nor pass the end of the file", () => {
  assert.equal(streamable(packEntries([entry(0, 10), entry(10, 10)]), 30), true);
  assert.equal(streamable(packEntries([entry(0, 10), entry(10, 10)]), 20), true);
  assert.equal(streamable(packEntries([]), 0), true);
  assert.equal(streamable(packEntries([entry(0, 10), entry(5, 10)]), 30), false, "overlap");
  assert.equal(streamable(packEntries([entry(10, 10), entry(0, 10)]), 30), false, "out of order");
  assert.equal(streamable(packEntries([entry(0, 10), entry(10, 25)]), 30), false, "past the end");
  assert.equal(streamable(packEntries([entry(0, 0)]), 30), false, "empty blob");
});

/** A real pack: compressed and incompressible blobs, some larger than a piece. */
function buildPack(): { key: ReturnType<typeof newRandomKey>; bytes: Buffer; blobs: PackedBlob[]; entries: ReturnType<typeof packEntries> } {
  const key = newRandomKey();
  const b = new PackBuilder("data");
  const plains = [
    Buffer.from("text ".repeat(100_000)), // compressed
    randomBytes(3 * 1024 * 1024),
    randomBytes(5 * 1024 * 1024), // a piece of its own
    randomBytes(10),
    Buffer.from("more text ".repeat(700_000)), // 7 MB, compressed to little
    randomBytes(1500 * 1024),
  ];
  for (const p of plains) {
    const z = p.length > 1000 && p[0] === 0x74 ? compress(p) : undefined;
    const sealed = seal(key, z ?? p);
    b.add(sha256(p), sealed, z ? p.length : 0);
  }
  const bytes = Buffer.from(b.finish(key));
  return { key, bytes, blobs: b.blobs, entries: packEntries(b.blobs) };
}

function reader(bytes: Buffer, log?: [number, number][]): (into: Uint8Array, offset: number) => Promise<number> {
  return async (into, offset) => {
    log?.push([offset, into.length]);
    const got = bytes.subarray(offset, offset + into.length);
    into.set(got);
    return got.length;
  };
}

test("a pack verified piece by piece: its SHA-256, no bad blob, its header from the tail, every byte read once", { skip }, async () => {
  const { key, bytes, blobs, entries } = buildPack();
  const buffers = new PieceBuffers(2);
  const log: [number, number][] = [];
  const v = await verifyPackStreamed(key, bytes.length, entries, reader(bytes, log), buffers, verifyBlobsInBackground!);
  assert.equal(v.hash, hashHex(bytes));
  assert.deepEqual(v.bad, []);
  assert.deepEqual(parsePackTail(key, v.tail, bytes.length, "p"), blobs);
  // Reads in order, back to back, to the end of the file.
  let at = 0;
  for (const [offset, length] of log) {
    assert.equal(offset, at);
    at += length;
  }
  assert.equal(at, bytes.length);
  assert.ok(log.length >= 4, `${log.length} reads`);
  buffers.clear();
});

test("a damaged blob is named by its entry, the hash differs; a file cut short fails with where it ends", { skip }, async () => {
  const { key, bytes, blobs, entries } = buildPack();
  const damaged = Buffer.from(bytes);
  damaged[blobs[4].offset + 40] ^= 1;
  const v = await verifyPackStreamed(key, damaged.length, entries, reader(damaged), new PieceBuffers(1), verifyBlobsInBackground!);
  assert.deepEqual(v.bad.map((b) => b.entry), [4]);
  assert.match(v.bad[0].message, /verification failed/);
  assert.notEqual(v.hash, hashHex(bytes));

  const short = bytes.subarray(0, blobs[2].offset + 100);
  await assert.rejects(verifyPackStreamed(key, bytes.length, entries, reader(short), new PieceBuffers(1), verifyBlobsInBackground!), new RegExp(`ends at ${short.length} bytes`));
});

test("a read that fails leaves the buffers usable: the next pack verifies", { skip }, async () => {
  const { key, bytes, entries } = buildPack();
  const buffers = new PieceBuffers(1);
  let calls = 0;
  const failing = async (into: Uint8Array, offset: number): Promise<number> => {
    if (++calls === 2) throw new Error("EIO");
    return reader(bytes)(into, offset);
  };
  await assert.rejects(verifyPackStreamed(key, bytes.length, entries, failing, buffers, verifyBlobsInBackground!), /EIO/);
  const v = await verifyPackStreamed(key, bytes.length, entries, reader(bytes), buffers, verifyBlobsInBackground!);
  assert.equal(v.hash, hashHex(bytes));
  assert.deepEqual(v.bad, []);
});
