// Tree blobs: {"nodes":[...]} plus a newline, nodes sorted by their raw name bytes, as restic does.
import type { Repository } from "../repo/repository.js";
import { SitekeepError, errorMessage } from "../errors.js";
import { type NodeJSON, decodeName, orderedNode } from "./node.js";

export interface TreeJSON {
  nodes: NodeJSON[];
}

export function encodeTree(nodes: NodeJSON[]): Buffer {
  const sorted = nodes
    .map((n) => ({ n, raw: decodeName(n.name) }))
    .sort((a, b) => Buffer.compare(a.raw, b.raw))
    .map((x) => orderedNode(x.n));
  return Buffer.from(JSON.stringify({ nodes: sorted }) + "\n");
}

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
