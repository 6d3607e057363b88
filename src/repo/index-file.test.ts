import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { test } from "node:test";
import { type IndexFileJSON, type IndexPackJSON, UnindexedPacks, parseIndexFile } from "./index-file.js";
import type { PackedBlob } from "./pack.js";

function blob(type: PackedBlob["type"], offset: number, length: number, uncompressedLength: number): PackedBlob {
  return { id: randomBytes(32), type, offset, length, uncompressedLength };
}

/** The entry as objects, the way index files were written before UnindexedPacks. */
function asObjects(packId: string, blobs: PackedBlob[]): IndexPackJSON {
  return {
    id: packId,
    blobs: blobs.map((b) => ({
      id: b.id.toString("hex"),
      type: b.type,
      offset: b.offset,
      length: b.length,
      ...(b.uncompressedLength ? { uncompressed_length: b.uncompressedLength } : {}),
    })),
  };
}

test("an index file's text is byte for byte JSON.stringify of the same entries as objects", () => {
  const packs = [
    { id: randomBytes(32).toString("hex"), blobs: [blob("data", 0, 1234, 5000), blob("data", 1234, 77, 0), blob("tree", 1311, 4_294_967_295, 9_007_199_254_740_991)] },
    { id: randomBytes(32).toString("hex"), blobs: [blob("tree", 0, 310, 900)] },
    { id: randomBytes(32).toString("hex"), blobs: Array.from({ length: 5000 }, (_, i) => blob(i % 7 ? "data" : "tree", i * 100, 100, i % 3 ? 250 : 0)) },
  ];
  const unindexed = new UnindexedPacks();
  assert.equal(unindexed.take(), undefined, "nothing held, nothing to write");
  for (const p of packs) unindexed.add(p.id, p.blobs);
  assert.equal(unindexed.packCount, 3);
  assert.equal(unindexed.blobs, 5004);
  const want: IndexFileJSON = { packs: packs.map((p) => asObjects(p.id, p.blobs)) };
  const text = unindexed.take();
  assert.ok(text);
  assert.equal(text.toString("latin1"), JSON.stringify(want));
  assert.deepEqual(parseIndexFile(JSON.parse(text.toString("utf8")), "x"), want);
  assert.equal(unindexed.packCount, 0, "taken");
  assert.equal(unindexed.blobs, 0);
  assert.equal(unindexed.take(), undefined);
});
