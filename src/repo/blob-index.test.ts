import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { BlobIndex } from "./blob-index.js";
import type { IndexTable } from "./index-table.js";

const id = (i: number): Buffer => createHash("sha256").update(String(i)).digest();

test("the compact index finds every blob after growing, keeps the first copy and tells types apart", () => {
  const idx = new BlobIndex();
  const n = 50_000;
  for (let i = 0; i < n; i++) assert.equal(idx.add(id(i), "data", `pack${i % 97}`, i * 10, 100 + (i % 7), i % 3 ? 200 : 0), true);
  assert.equal(idx.size, n);
  for (let i = 0; i < n; i += 997) {
    const loc = idx.get(id(i), "data");
    assert.deepEqual(loc, { packId: `pack${i % 97}`, type: "data", offset: i * 10, length: 100 + (i % 7), uncompressedLength: i % 3 ? 200 : 0 });
    assert.equal(idx.has(id(i), "tree"), false);
  }
  assert.equal(idx.add(id(5), "data", "other", 0, 1, 0), false);
  assert.equal(idx.get(id(5), "data")?.packId, "pack5");
  assert.equal(idx.duplicates, 1);
  assert.equal(idx.add(id(5), "tree", "treepack", 0, 1, 0), true);
  assert.equal(idx.get(id(5), "tree")?.packId, "treepack");
  assert.equal(idx.has(id(n + 1), "data"), false);
  assert.equal(idx.packCount, 98);
});

test("addTable gives the index that adding its blobs one by one gives: first copy kept, packs numbered at their first new blob", () => {
  // Two tables as two index files give them: the second repeats blobs of the first, and one of its
  // packs holds nothing new (that pack is not one of the index's packs).
  const table = (packs: string[], blobs: [number, string, number][]): IndexTable => {
    const t: IndexTable = {
      packs,
      count: blobs.length,
      packOf: new Uint32Array(blobs.length),
      ids: new Uint8Array(blobs.length * 32),
      trees: new Uint8Array(blobs.length),
      numbers: new Float64Array(3 * blobs.length),
    };
    blobs.forEach(([n, type, pack], i) => {
      t.ids.set(id(n), i * 32);
      t.trees[i] = type === "tree" ? 1 : 0;
      t.packOf[i] = pack;
      t.numbers.set([n * 10, 100 + n, n % 2 ? 0 : 300], 3 * i);
    });
    return t;
  };
  const first = table(
    ["p1", "p2"],
    Array.from({ length: 3000 }, (_, n): [number, string, number] => [n, n % 5 ? "data" : "tree", n < 1500 ? 0 : 1]),
  );
  const second = table(
    ["p3", "p4", "p5"],
    [
      [10, "tree", 0], // known: 10 is a tree in the first table
      [20, "data", 0], // new: 20 is a tree there, and the same ID as data is another blob
      [3000, "data", 1],
      [11, "data", 2], // known, and all that p5 holds
      [3001, "tree", 1],
    ],
  );

  const bulk = new BlobIndex();
  bulk.addTable(first);
  bulk.addTable(second);
  const single = new BlobIndex();
  for (const t of [first, second]) {
    for (let i = 0; i < t.count; i++) {
      single.add(t.ids.subarray(i * 32, i * 32 + 32), t.trees[i] ? "tree" : "data", t.packs[t.packOf[i]], t.numbers[3 * i], t.numbers[3 * i + 1], t.numbers[3 * i + 2]);
    }
  }
  assert.equal(bulk.size, single.size);
  assert.equal(bulk.duplicates, single.duplicates);
  assert.deepEqual(bulk.packs(), single.packs());
  assert.deepEqual([...bulk.entries()], [...single.entries()]);
  // What that means here.
  assert.equal(bulk.duplicates, 2, "blobs 10 and 11 were known");
  assert.deepEqual(bulk.packs(), ["p1", "p2", "p3", "p4"], "p5 holds nothing new");
  assert.equal(bulk.get(id(10), "tree")?.packId, "p1", "the first copy wins");
  assert.equal(bulk.get(id(20), "data")?.packId, "p3");
});
