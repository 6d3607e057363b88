import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { BlobIndex } from "./blob-index.js";

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
