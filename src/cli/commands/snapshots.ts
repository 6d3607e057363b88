import { type Snapshot } from "../../repo/snapshot.js";
import { loadTree } from "../../archive/tree.js";
import type { NodeJSON } from "../../archive/node.js";
import { decodeName, unixPermFromGo } from "../../archive/node.js";
import type { Repository } from "../../repo/repository.js";
import { type GlobalOptions, outputOptions, withRepository } from "../context.js";
import { printJSON } from "../output.js";
import { errorMessage } from "../../errors.js";

export interface SnapshotFilter {
  host?: string[];
  tag?: string[];
  path?: string[];
}

export function matchesFilter(s: Snapshot, f: SnapshotFilter): boolean {
  if (f.host?.length && !f.host.includes(s.hostname)) return false;
  if (f.path?.length && !f.path.every((p) => s.paths.includes(p))) return false;
  if (f.tag?.length) {
    // Each --tag is a comma-separated set that must all be present; any of the sets may match (restic).
    const ok = f.tag.some((set) => set.split(",").every((t) => (s.tags ?? []).includes(t)));
    if (!ok) return false;
  }
  return true;
}

function warnUnreadable(id: string, err: unknown, json: boolean): void {
  const message = `snapshot file snapshots/${id} cannot be read: ${errorMessage(err)}`;
  if (json) process.stderr.write(JSON.stringify({ message_type: "error", error: { message }, item: `snapshots/${id}` }) + "\n");
  else process.stderr.write(`warning: ${message} (run \`sitekeep check\`)\n`);
  unreadableSnapshots++;
}

let unreadableSnapshots = 0;

export function snapshotJSON(s: Snapshot): Record<string, unknown> {
  return { ...s, short_id: s.id.slice(0, 8) };
}

export async function snapshotsCommand(g: GlobalOptions, ids: string[], f: SnapshotFilter): Promise<number> {
  const out = outputOptions(g);
  const list = await withRepository(g, "shared", async (repo) => {
    // A damaged snapshot file is named and skipped; the others are still listed (as restic does).
    const all = (await repo.listSnapshots((id, err) => warnUnreadable(id, err, out.json))).filter((s) => matchesFilter(s, f));
    return ids.length ? all.filter((s) => ids.some((p) => s.id.startsWith(p))) : all;
  }, { loadIndex: false });
  list.reverse(); // oldest first, as restic prints them
  if (out.json) {
    printJSON(list.map(snapshotJSON));
    return unreadableSnapshots ? 1 : 0;
  }
  const rows = list.map((s) => [s.id.slice(0, 8), new Date(s.time).toISOString().replace("T", " ").slice(0, 19), s.hostname, (s.tags ?? []).join(","), s.paths.join(", ")]);
  const head = ["ID", "Time", "Host", "Tags", "Paths"];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const fmt = (r: string[]): string => r.map((c, i) => c.padEnd(widths[i])).join("  ").trimEnd();
  process.stdout.write(fmt(head) + "\n" + "-".repeat(widths.reduce((a, b) => a + b + 2, 0)) + "\n");
  for (const r of rows) process.stdout.write(fmt(r) + "\n");
  process.stdout.write(`${list.length} snapshots\n`);
  return unreadableSnapshots ? 1 : 0;
}

export async function walkSnapshot(
  repo: Repository,
  treeId: string,
  prefix: string,
  fn: (path: string, node: NodeJSON) => void,
): Promise<void> {
  for (const node of await loadTree(repo, treeId)) {
    const path = (prefix === "/" ? "/" : prefix + "/") + decodeName(node.name).toString("utf8");
    fn(path, node);
    if (node.type === "dir" && node.subtree) await walkSnapshot(repo, node.subtree, path, fn);
  }
}

export async function lsCommand(g: GlobalOptions, ref: string, f: SnapshotFilter & { long?: boolean }): Promise<number> {
  const out = outputOptions(g);
  await withRepository(g, "shared", async (repo) => {
    const snap = await repo.findSnapshot(ref, (s) => matchesFilter(s, f));
    if (out.json) printJSON({ ...snapshotJSON(snap), struct_type: "snapshot" });
    else process.stdout.write(`snapshot ${snap.id.slice(0, 8)} of [${snap.paths.join(" ")}] at ${snap.time}:\n`);
    await walkSnapshot(repo, snap.tree, "/", (path, n) => {
      if (out.json) {
        printJSON({
          name: decodeName(n.name).toString("utf8"),
          type: n.type,
          path,
          uid: n.uid,
          gid: n.gid,
          size: n.type === "file" ? (n.size ?? 0) : undefined,
          mode: n.mode,
          permissions: permString(n),
          mtime: n.mtime,
          atime: n.atime,
          ctime: n.ctime,
          struct_type: "node",
        });
      } else if (f.long) {
        process.stdout.write(`${permString(n)} ${String(n.uid).padStart(5)} ${String(n.gid).padStart(5)} ${String(n.size ?? 0).padStart(12)} ${n.mtime ?? ""} ${path}${n.type === "symlink" ? " -> " + (n.linktarget ?? "") : ""}\n`);
      } else process.stdout.write(path + "\n");
    });
  }, { loadIndex: true });
  return 0;
}

function permString(n: NodeJSON): string {
  const t = { dir: "d", symlink: "L", dev: "D", chardev: "c", fifo: "p", socket: "S", file: "-" }[n.type] ?? "?";
  const p = unixPermFromGo(n.mode ?? 0);
  const rwx = (b: number, special: string, sbit: boolean): string =>
    (b & 4 ? "r" : "-") + (b & 2 ? "w" : "-") + (sbit ? (b & 1 ? special : special.toUpperCase()) : b & 1 ? "x" : "-");
  return t + rwx((p >> 6) & 7, "s", (p & 0o4000) !== 0) + rwx((p >> 3) & 7, "s", (p & 0o2000) !== 0) + rwx(p & 7, "t", (p & 0o1000) !== 0);
}
