// What changed between two snapshots: walks both trees together and skips every subtree whose ID
// is the same on both sides (content addressing makes "unchanged" cheap), so comparing two
// snapshots of a large, mostly unchanged site reads only the folders that differ.
import type { Repository } from "../repo/repository.js";
import { type NodeJSON, decodeName } from "./node.js";
import { joinPath, loadTree } from "./tree.js";

export interface DiffEntry {
  path: string;
  /** "metadata": same content, other mode or times. */
  change: "added" | "removed" | "changed" | "metadata";
  type: NodeJSON["type"];
  /** For files: size before and after. */
  sizes?: [number, number];
}

export async function diffSnapshots(repo: Repository, a: string, b: string, limit = 2000): Promise<{ entries: DiffEntry[]; truncated: boolean }> {
  const out: DiffEntry[] = [];
  let truncated = false;
  const walk = async (ta: string | undefined, tb: string | undefined, path: string): Promise<void> => {
    if (ta === tb || truncated) return;
    const na = new Map((ta ? await loadTree(repo, ta) : []).map((n) => [n.name, n]));
    const nb = new Map((tb ? await loadTree(repo, tb) : []).map((n) => [n.name, n]));
    const names = [...new Set([...na.keys(), ...nb.keys()])].sort();
    for (const name of names) {
      if (out.length >= limit) {
        truncated = true;
        return;
      }
      const x = na.get(name);
      const y = nb.get(name);
      const p = joinPath(path, decodeName(name).toString("utf8"));
      if (!x || !y) {
        const n = (x ?? y) as NodeJSON;
        out.push({ path: p, change: x ? "removed" : "added", type: n.type });
        if (n.type === "dir") await walk(x?.subtree, y?.subtree, p);
        continue;
      }
      if (x.type === "dir" && y.type === "dir") {
        await walk(x.subtree, y.subtree, p);
        continue;
      }
      const sameContent = x.type === y.type && JSON.stringify(x.content) === JSON.stringify(y.content) && x.linktarget === y.linktarget;
      const sameMeta = x.mode === y.mode && x.mtime === y.mtime && x.uid === y.uid && x.gid === y.gid;
      if (sameContent && sameMeta) continue;
      out.push({ path: p, change: sameContent ? "metadata" : "changed", type: y.type, ...(x.type === "file" && y.type === "file" ? { sizes: [x.size ?? 0, y.size ?? 0] as [number, number] } : {}) });
    }
  };
  await walk(a, b, "/");
  return { entries: out, truncated };
}
