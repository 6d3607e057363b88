import { test } from "node:test";
import assert from "node:assert/strict";
import { type NodeJSON, orderedNode, sameNode } from "./node.js";

const file: NodeJSON = {
  name: "a.txt",
  type: "file",
  mode: 0o644,
  mtime: "2026-01-02T03:04:05.5Z",
  atime: "2026-01-02T03:04:05.5Z",
  ctime: "2026-01-02T03:04:05.5Z",
  uid: 0,
  gid: 0,
  user: "root",
  inode: 12,
  device_id: 34,
  size: 5,
  links: 1,
  content: ["ab"],
};

test("sameNode is true exactly when both nodes encode to the same JSON", () => {
  const same = (a: NodeJSON, b: NodeJSON): boolean => JSON.stringify(orderedNode(a)) === JSON.stringify(orderedNode(b));
  const xattrs = [{ name: "user.x", value: "eA==" }];
  const variants: Partial<NodeJSON>[] = [
    {},
    { mode: 0o600 },
    { atime: "2026-01-02T03:04:06Z" },
    { uid: 1000 },
    { user: "" },
    { user: undefined },
    { group: "staff" },
    { size: 0 },
    { size: undefined },
    { links: 2 },
    { content: [] },
    { content: null },
    { content: ["ab"] }, // another array, same hashes
    { content: ["ab", "cd"] },
    { extended_attributes: xattrs },
    { extended_attributes: [] },
    { subtree: "ff" },
    { error: "" },
    { error: "boom" },
  ];
  for (const v of variants) {
    for (const w of variants) {
      const a = { ...file, ...v };
      const b = { ...file, ...w };
      // Extended attributes are compared by identity: equal copies count as different, which only
      // costs encoding a tree that did not change.
      const expected = same(a, b) && (a.extended_attributes === b.extended_attributes || (!a.extended_attributes && !b.extended_attributes));
      assert.equal(sameNode(a, b), expected, `${JSON.stringify(v)} vs ${JSON.stringify(w)}`);
    }
  }
});
