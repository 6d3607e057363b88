// Reading a snapshot like a file system, without restoring it: list a folder, find a node, stream
// a file's bytes (each blob verified against its hash by the repository). For the console's
// snapshot browser and downloads.
import { SitekeepError } from "../errors.js";
import type { Repository } from "../repo/repository.js";
import { type NodeJSON, decodeName, unixPermFromGo } from "./node.js";
import { loadTree } from "./tree.js";

export interface BrowseEntry {
  name: string;
  type: NodeJSON["type"];
  size: number;
  mtime?: string;
  mode: string;
  linktarget?: string;
}

/** Splits "/srv/app/x" into ["srv", "app", "x"]; refuses "..". */
export function pathParts(path: string): string[] {
  const parts = path.split("/").filter(Boolean);
  if (parts.some((p) => p === "." || p === "..")) throw new SitekeepError("browse.path", `invalid path ${JSON.stringify(path)}`, { hint: "use an absolute path inside the snapshot" });
  return parts;
}

/** The node at `path` (undefined for the root, which is a tree without a node). */
export async function findNode(repo: Repository, rootTree: string, path: string): Promise<{ node?: NodeJSON; tree?: string }> {
  let tree: string | undefined = rootTree;
  let node: NodeJSON | undefined;
  for (const part of pathParts(path)) {
    if (!tree) throw notFound(path);
    const nodes: NodeJSON[] = await loadTree(repo, tree);
    node = nodes.find((n) => decodeName(n.name).toString("utf8") === part);
    if (!node) throw notFound(path);
    tree = node.type === "dir" ? node.subtree : undefined;
  }
  return { node, tree };
}

export async function listDir(repo: Repository, rootTree: string, path: string): Promise<BrowseEntry[]> {
  const { node, tree } = await findNode(repo, rootTree, path);
  if (!tree) throw new SitekeepError("browse.notdir", `${path} is a ${node?.type ?? "?"}, not a folder`, { hint: "download it instead" });
  const nodes = await loadTree(repo, tree);
  return nodes.map((n) => ({
    name: decodeName(n.name).toString("utf8"),
    type: n.type,
    size: n.size ?? 0,
    ...(n.mtime ? { mtime: n.mtime } : {}),
    mode: (unixPermFromGo(n.mode ?? 0) & 0o7777).toString(8).padStart(4, "0"),
    ...(n.linktarget !== undefined ? { linktarget: n.linktarget } : {}),
  }));
}

/** The file's content, blob by blob. */
export async function* fileContent(repo: Repository, node: NodeJSON): AsyncGenerator<Buffer> {
  if (node.type !== "file") throw new SitekeepError("browse.notfile", `${node.name} is a ${node.type}`, { hint: "only regular files have content" });
  for (const id of node.content ?? []) yield await repo.loadBlob("data", Buffer.from(id, "hex"));
}

function notFound(path: string): SitekeepError {
  return new SitekeepError("browse.notfound", `no ${path} in this snapshot`, { hint: "browse from / to see what it holds" });
}
