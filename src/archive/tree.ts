// Tree blobs: {"nodes":[...]} plus a newline, nodes sorted by their raw name bytes, as restic does.
import type { Repository } from "../repo/repository.js";
import { SitekeepError, errorMessage } from "../errors.js";
import { type NodeJSON, decodeName, orderedNode } from "./node.js";

export interface TreeJSON {
  nodes: NodeJSON[];
}

export function encodeTree(nodes: NodeJSON[]): Buffer {
  return Buffer.from(treeText(nodes));
}

/** A tree blob's plaintext as a string (its UTF-8 bytes are the blob). */
export function treeText(nodes: NodeJSON[]): string {
  return JSON.stringify({ nodes: sortedByRawName(nodes).map(orderedNode) }) + "\n";
}

/**
 * Nodes in the order of their raw name bytes. A stored name of printable ASCII without a backslash
 * is its own raw bytes (goQuote escapes everything else), and for such strings JavaScript's order
 * is the bytes' order: only folders with other names decode them to compare.
 */
function sortedByRawName(nodes: NodeJSON[]): NodeJSON[] {
  if (nodes.every((n) => PLAIN_NAME.test(n.name))) return [...nodes].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  return nodes
    .map((n) => ({ n, raw: decodeName(n.name) }))
    .sort((a, b) => Buffer.compare(a.raw, b.raw))
    .map((x) => x.n);
}

const PLAIN_NAME = /^[\x20-\x5b\x5d-\x7e]*$/;

export async function loadTree(repo: Repository, id: string): Promise<NodeJSON[]> {
  const raw = await repo.loadBlob("tree", Buffer.from(id, "hex"));
  try {
    const t = JSON.parse(raw.toString("utf8")) as TreeJSON;
    return t.nodes ?? [];
  } catch (err) {
    throw new SitekeepError("tree.invalid", `tree ${id} is not valid JSON: ${errorMessage(err)}`);
  }
}

/** Joins snapshot paths the way restic prints them (always "/"-separated, rooted at "/"). */
export function joinPath(parent: string, name: string): string {
  return parent === "/" ? "/" + name : parent + "/" + name;
}
