import assert from "node:assert/strict";
import { test } from "node:test";
import { type NodeJSON, decodeName, encodeName } from "./node.js";
import { encodeTree } from "./tree.js";

function fileNode(raw: Buffer): NodeJSON {
  return { name: encodeName(raw), type: "file", mode: 0o644, uid: 0, gid: 0, content: [] };
}

function namesOf(tree: Buffer): Buffer[] {
  return (JSON.parse(tree.toString("utf8")) as { nodes: NodeJSON[] }).nodes.map((n) => decodeName(n.name));
}

const byBytes = (a: Buffer, b: Buffer): number => Buffer.compare(a, b);

test("a tree's nodes are ordered by their raw name bytes, whether or not a name needs quoting", () => {
  const plain = ["b", "a", "Z", "_x", "a b", "~", "0", "A[", "A]"].map((s) => Buffer.from(s));
  const quoted = [
    Buffer.from("é"),
    Buffer.from([0xff, 0x41]),
    Buffer.from('q"uote'),
    Buffer.from("back\\slash"),
    Buffer.from("tab\t"),
  ];
  for (const raws of [plain, [...plain, ...quoted]]) {
    const tree = encodeTree([...raws].reverse().map(fileNode));
    assert.deepEqual(namesOf(tree), [...raws].sort(byBytes));
  }
});

test("a tree is the same bytes whatever order its nodes came in", () => {
  const raws = ["c", "a", "b", "é", "B"].map((s) => Buffer.from(s));
  const one = encodeTree(raws.map(fileNode));
  const other = encodeTree([...raws].reverse().map(fileNode));
  assert.ok(one.equals(other));
  assert.match(
    one.toString("utf8"),
    /^\{"nodes":\[\{"name":"B","type":"file","mode":420,"uid":0,"gid":0,"content":\[\]\},/,
  );
  assert.ok(one.toString("utf8").endsWith("]}\n"));
});
