import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { BlobSet } from "./blob-set.js";

const id = (n: number): Buffer => createHash("sha256").update(String(n)).digest();

test("BlobSet: members by ID and type, through many resizes, in insertion order", () => {
  const s = new BlobSet();
  const n = 50_000;
  for (let i = 0; i < n; i++) assert.equal(s.add(id(i), i % 3 === 0 ? "tree" : "data"), true);
  assert.equal(s.size, n);
  assert.equal(s.add(id(7), "data"), false, "already there");
  for (let i = 0; i < n; i += 997) {
    const type = i % 3 === 0 ? "tree" : "data";
    assert.ok(s.has(id(i), type));
    assert.ok(!s.has(id(i), type === "tree" ? "data" : "tree"), "the same ID as the other type is another blob");
  }
  assert.ok(!s.has(id(n + 1), "data"));
  // IDs that share their first four bytes (the hash slot) are still told apart.
  const a = Buffer.alloc(32, 1);
  const b = Buffer.alloc(32, 1);
  b[31] = 2;
  assert.ok(s.add(a, "data") && s.add(b, "data"));
  assert.ok(s.has(a, "data") && s.has(b, "data"));
  const all = [...s.entries()];
  assert.equal(all.length, n + 2);
  assert.deepEqual(Buffer.from(all[5][0]), id(5));
  assert.equal(all[6][1], "tree");
});

test("BlobSet: addAt reads an ID inside a larger array, and reserve changes nothing but the room", () => {
  const a = new BlobSet();
  const b = new BlobSet();
  const n = 5_000;
  const all = new Uint8Array(7 + n * 32); // IDs at an odd offset, as in no view of its own
  for (let i = 0; i < n; i++) all.set(id(i), 7 + i * 32);
  b.reserve(3);
  for (let i = 0; i < n; i++) {
    const t = i % 4 === 0 ? 1 : 0;
    assert.equal(a.add(id(i), t ? "tree" : "data"), true);
    if (i === 100) b.reserve(n); // room for more than are left, mid-way
    assert.equal(b.addAt(all, 7 + i * 32, t), true);
  }
  assert.equal(b.addAt(all, 7 + 32, 0), false, "already there");
  assert.equal(b.addAt(all, 7 + 32, 1), true, "the same ID as a tree is another blob");
  assert.equal(b.size, n + 1);
  for (let i = 0; i < n; i++) assert.equal(b.find(id(i), i % 4 === 0 ? "tree" : "data"), a.find(id(i), i % 4 === 0 ? "tree" : "data"));
  assert.deepEqual(Buffer.from(b.idAt(n)), id(1));
  assert.equal(b.typeAt(n), "tree");
});
