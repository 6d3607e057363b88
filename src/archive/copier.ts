// Copies snapshots from one repository to another (restic's `copy`). Blob IDs are SHA-256 of the
// plaintext, so every blob keeps its ID: blobs the destination lacks are read from the source
// (verified), re-encrypted with the destination's key, and trees need no rewriting even when the
// two repositories chunk differently.
//
// Resumable: the blobs of a snapshot are flushed (durable and indexed) before its snapshot file is
// written, so an interrupted copy leaves only blobs that the next run finds and skips. A snapshot
// whose copy already exists in the destination (same original ID and the same fields) is skipped.
//
// The caller holds the locks (a shared lock on each repository); the indexes must be loaded.
import type { Repository } from "../repo/repository.js";
import type { Snapshot, SnapshotJSON } from "../repo/snapshot.js";
import type { BlobType } from "../repo/pack.js";
import { parseTimeNs } from "../util/gotime.js";
import { mapLimit } from "../util/concurrency.js";
import type { TreeJSON } from "./tree.js";
import { SitekeepError, errorMessage } from "../errors.js";

export interface CopyProgress {
  /** The snapshot being copied (source ID). */
  snapshot: string;
  /** Trees read so far for this snapshot. */
  trees: number;
  /** Blobs copied so far, over all snapshots. */
  blobsCopied: number;
  /** Plaintext bytes copied so far, over all snapshots. */
  bytesCopied: number;
}

export interface CopyOptions {
  onProgress?(p: CopyProgress): void;
  /** Called when a snapshot was copied (from: source ID, to: new destination ID). */
  onCopied?(from: Snapshot, to: string): void;
  /** Called when a snapshot is skipped because the destination already has a copy of it. */
  onSkipped?(from: Snapshot, existing: Snapshot): void;
  /** Blobs read from the source at the same time (default 4). */
  concurrency?: number;
}

export interface CopyResult {
  copied: { from: string; to: string }[];
  skipped: string[];
  blobsCopied: number;
  bytesCopied: number;
}

export async function copySnapshots(src: Repository, dst: Repository, snaps: Snapshot[], opts: CopyOptions = {}): Promise<CopyResult> {
  const result: CopyResult = { copied: [], skipped: [], blobsCopied: 0, bytesCopied: 0 };
  const concurrency = opts.concurrency ?? 4;

  // Destination snapshots by the ID of the snapshot they are a copy of, and by their own ID
  // (a copy of a copy carries the first snapshot's ID as its original).
  const byOriginal = new Map<string, Snapshot[]>();
  const addTo = (key: string, s: Snapshot): void => {
    const list = byOriginal.get(key);
    if (list) list.push(s);
    else byOriginal.set(key, [s]);
  };
  for (const s of await dst.listSnapshots()) {
    if (s.original) addTo(s.original, s);
    addTo(s.id, s);
  }

  // Trees visited in this run: each tree's subtree is walked once, over all snapshots.
  const visitedTrees = new Set<string>();
  // Blobs queued or saved in this run (hasBlob covers the rest).
  const queued = new Set<string>();

  const copyBlob = async (type: BlobType, idHex: string, plain?: Buffer): Promise<void> => {
    const key = type + ":" + idHex;
    const id = Buffer.from(idHex, "hex");
    if (queued.has(key) || dst.hasBlob(type, id)) return;
    queued.add(key);
    const data = plain ?? (await src.loadBlob(type, id));
    const r = await dst.saveBlob(type, data, id);
    if (r.added) {
      result.blobsCopied++;
      result.bytesCopied += data.length;
    }
  };

  // Oldest first, so the destination receives them in the order they were made.
  const ordered = [...snaps].sort((a, b) => cmpBig(parseTimeNs(a.time), parseTimeNs(b.time)) || (a.id < b.id ? -1 : 1));
  const seen = new Set<string>();
  for (const sn of ordered) {
    if (seen.has(sn.id)) continue;
    seen.add(sn.id);
    const existing = (byOriginal.get(sn.original ?? sn.id) ?? []).find((d) => similarSnapshots(d, sn));
    if (existing) {
      result.skipped.push(sn.id);
      opts.onSkipped?.(sn, existing);
      continue;
    }

    let trees = 0;
    const report = (): void =>
      opts.onProgress?.({ snapshot: sn.id, trees, blobsCopied: result.blobsCopied, bytesCopied: result.bytesCopied });
    const stack = [sn.tree];
    while (stack.length) {
      const treeId = stack.pop() as string;
      if (visitedTrees.has(treeId)) continue;
      visitedTrees.add(treeId);
      // The tree is read from the source even when the destination has it: its contents must be
      // checked too, as an earlier interrupted run may have stored a tree before its data.
      const raw = await src.loadBlob("tree", Buffer.from(treeId, "hex"));
      const nodes = parseTree(treeId, raw);
      await copyBlob("tree", treeId, raw);
      trees++;
      const data: string[] = [];
      for (const n of nodes) {
        if (n.type === "dir" && n.subtree) stack.push(n.subtree);
        if (n.type === "file" && n.content) data.push(...n.content);
      }
      await mapLimit(data, concurrency, (id) => copyBlob("data", id));
      report();
    }
    // Everything the snapshot needs is durable and indexed before the snapshot file names it.
    await dst.flush();
    const to = await dst.saveSnapshot(copyJSON(sn));
    result.copied.push({ from: sn.id, to });
    opts.onCopied?.(sn, to);
    report();
  }
  await dst.flush();
  return result;
}

/** restic's similarSnapshots: every field except parent and original must match. */
export function similarSnapshots(a: SnapshotJSON, b: SnapshotJSON): boolean {
  if (!sameTime(a.time, b.time) || a.tree !== b.tree || a.hostname !== b.hostname) return false;
  if (a.username !== b.username || (a.uid ?? 0) !== (b.uid ?? 0) || (a.gid ?? 0) !== (b.gid ?? 0)) return false;
  const pa = a.paths ?? [];
  const pb = b.paths ?? [];
  const ta = a.tags ?? [];
  const tb = b.tags ?? [];
  const ea = a.excludes ?? [];
  const eb = b.excludes ?? [];
  if (pa.length !== pb.length || ta.length !== tb.length || ea.length !== eb.length) return false;
  if (!pb.every((p) => pa.includes(p)) || !tb.every((t) => ta.includes(t))) return false;
  return ea.every((e, i) => e === eb[i]);
}

function sameTime(a: string, b: string): boolean {
  try {
    return parseTimeNs(a) === parseTimeNs(b);
  } catch {
    return a === b;
  }
}

function parseTree(id: string, raw: Buffer): TreeJSON["nodes"] {
  try {
    return (JSON.parse(raw.toString("utf8")) as TreeJSON).nodes ?? [];
  } catch (err) {
    throw new SitekeepError("tree.invalid", `tree ${id} in the source repository is not valid JSON: ${errorMessage(err)}`);
  }
}

function cmpBig(a: bigint, b: bigint): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** The snapshot's JSON as it was, with `original` naming the source snapshot unless already set. */
function copyJSON(sn: Snapshot): SnapshotJSON {
  const { id, ...rest } = sn;
  const fields = rest as SnapshotJSON & Record<string, unknown>;
  const withOriginal: Record<string, unknown> = { ...fields, original: fields.original ?? id };
  // restic's field order, then any fields this version does not know (kept as they were).
  const order = ["time", "parent", "tree", "paths", "hostname", "username", "uid", "gid", "excludes", "tags", "original", "program_version"];
  const out: Record<string, unknown> = {};
  for (const k of order) if (withOriginal[k] !== undefined) out[k] = withOriginal[k];
  for (const [k, v] of Object.entries(withOriginal)) if (!(k in out) && v !== undefined) out[k] = v;
  return out as unknown as SnapshotJSON;
}
