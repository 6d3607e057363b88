// Prune: removes data no snapshot needs. Fully unused packs are deleted; partly used packs are
// repacked (their used blobs copied, still sealed, into new packs) until the unused data left is
// within the tolerated share. Crash safe at every step, in this order:
//   1. new packs durable, and an index file naming them;
//   2. new index files naming every kept pack;
//   3. the old index files removed;
//   4. the packs no index names any more removed.
// Interrupted anywhere, the repository stays valid (at worst with duplicate index entries or
// unreferenced packs), and the next prune finishes the job.
import { SitekeepError, errorMessage } from "../errors.js";
import { type IndexBlobJSON, type IndexFileJSON, type IndexPackJSON, parseIndexFile } from "../repo/index-file.js";
import { type Repository, mapLimit } from "../repo/repository.js";
import { loadTree } from "./tree.js";

export interface PruneOptions {
  /** Tolerated unused data: "5%" (default), a size like "100M", or "unlimited". */
  maxUnused?: string;
  /** At most this many bytes are repacked in one run ("1G"); unlimited by default. */
  maxRepackSize?: string;
  dryRun?: boolean;
  onProgress?: (phase: string, done: number, total: number) => void;
}

export interface PruneStats {
  message_type: "prune";
  packs_total: number;
  packs_removed: number;
  packs_repacked: number;
  packs_unreferenced_removed: number;
  blobs_used: number;
  blobs_unused: number;
  bytes_used: number;
  bytes_unused_before: number;
  bytes_removed: number;
  bytes_repacked: number;
  index_files_replaced: number;
  dry_run: boolean;
}

const BLOBS_PER_INDEX_FILE = 50_000;

export function parseSize(s: string, total: number): number {
  const v = s.trim().toLowerCase();
  if (v === "unlimited") return Infinity;
  const pct = /^(\d+(?:\.\d+)?)%$/.exec(v);
  if (pct) return (Number(pct[1]) / 100) * total;
  const m = /^(\d+(?:\.\d+)?)([kmgt]?)b?$/.exec(v);
  if (!m) throw new SitekeepError("prune.size", `invalid size ${JSON.stringify(s)}`, { hint: 'use a percentage ("5%"), a size ("500M", "2G") or "unlimited"' });
  return Number(m[1]) * 1024 ** " kmgt".indexOf(m[2] || " ");
}

/** Every blob that some snapshot needs, as "type:hex". */
async function usedBlobs(repo: Repository): Promise<Set<string>> {
  const used = new Set<string>();
  const snaps = await repo.listSnapshots();
  const pending: string[] = snaps.map((s) => s.tree);
  while (pending.length) {
    const batch = pending.splice(0, 16).filter((t) => !used.has("tree:" + t));
    for (const t of batch) used.add("tree:" + t);
    await mapLimit(batch, 8, async (treeId) => {
      let nodes;
      try {
        nodes = await loadTree(repo, treeId);
      } catch (err) {
        throw new SitekeepError("prune.tree", `tree ${treeId} cannot be read: ${errorMessage(err)}; nothing was deleted`, {
          hint: "run `sitekeep check` first; prune refuses to work on a damaged repository",
        });
      }
      for (const n of nodes) {
        for (const c of n.content ?? []) used.add("data:" + c);
        if (n.subtree && !used.has("tree:" + n.subtree)) pending.push(n.subtree);
      }
    });
  }
  return used;
}

export async function prune(repo: Repository, opts: PruneOptions = {}): Promise<PruneStats> {
  if (!opts.dryRun) repo.assertMayDelete("prune");
  const oldIndexIds = await repo.listIds("index");
  const packs = new Map<string, IndexBlobJSON[]>();
  for (const id of oldIndexIds) {
    let file: IndexFileJSON;
    try {
      file = parseIndexFile(await repo.loadJSON<unknown>("index", id), id);
    } catch (err) {
      throw new SitekeepError("prune.index", `index file ${id} cannot be read: ${errorMessage(err)}; nothing was deleted`, {
        hint: "run `sitekeep check`; prune refuses to work on a damaged repository",
      });
    }
    for (const p of file.packs) {
      const list = packs.get(p.id);
      if (list) list.push(...p.blobs.filter((b) => !list.some((x) => x.id === b.id && x.offset === b.offset)));
      else packs.set(p.id, [...p.blobs]);
    }
  }
  const present = new Map<string, number>();
  for await (const fi of repo.backend.list("data")) present.set(fi.name, fi.size);
  for (const id of packs.keys()) {
    if (!present.has(id)) {
      throw new SitekeepError("prune.missing", `pack ${id} is named by the index but missing; nothing was deleted`, {
        hint: "run `sitekeep check` to see what it affects",
      });
    }
  }
  const used = await usedBlobs(repo);
  // Each needed blob is kept in exactly one place, the first one met; other copies count as unused.
  const kept = new Set<string>();
  let bytesUsed = 0;
  let bytesUnused = 0;
  let blobsUsed = 0;
  let blobsUnused = 0;
  const usage = new Map<string, { used: IndexBlobJSON[]; unusedBytes: number; size: number }>();
  for (const [packId, blobs] of packs) {
    const u = { used: [] as IndexBlobJSON[], unusedBytes: 0, size: present.get(packId) ?? 0 };
    for (const b of blobs) {
      const key = b.type + ":" + b.id;
      if (used.has(key) && !kept.has(key)) {
        kept.add(key);
        u.used.push(b);
        bytesUsed += b.length;
        blobsUsed++;
      } else {
        u.unusedBytes += b.length;
        bytesUnused += b.length;
        blobsUnused++;
      }
    }
    usage.set(packId, u);
  }
  const missing = [...used].filter((k) => !kept.has(k));
  if (missing.length) {
    throw new SitekeepError("prune.incomplete", `${missing.length} blobs that snapshots need are not in any pack (e.g. ${missing[0]}); nothing was deleted`, {
      hint: "run `sitekeep check`; prune refuses to work on a damaged repository",
    });
  }

  const remove = new Set<string>();
  const repack: string[] = [];
  for (const [packId, u] of usage) if (u.used.length === 0) remove.add(packId);
  let unusedLeft = [...usage].filter(([id]) => !remove.has(id)).reduce((a, [, u]) => a + u.unusedBytes, 0);
  const tolerated = parseSize(opts.maxUnused ?? "5%", bytesUsed);
  let repackBudget = parseSize(opts.maxRepackSize ?? "unlimited", bytesUsed);
  const partly = [...usage].filter(([id, u]) => !remove.has(id) && u.unusedBytes > 0).sort((a, b) => b[1].unusedBytes / b[1].size - a[1].unusedBytes / a[1].size);
  for (const [packId, u] of partly) {
    if (unusedLeft <= tolerated) break;
    const cost = u.used.reduce((a, b) => a + b.length, 0);
    if (cost > repackBudget) continue;
    repackBudget -= cost;
    repack.push(packId);
    unusedLeft -= u.unusedBytes;
  }
  const unreferenced = [...present.keys()].filter((id) => !packs.has(id));
  const stats: PruneStats = {
    message_type: "prune",
    packs_total: packs.size,
    packs_removed: remove.size,
    packs_repacked: repack.length,
    packs_unreferenced_removed: unreferenced.length,
    blobs_used: blobsUsed,
    blobs_unused: blobsUnused,
    bytes_used: bytesUsed,
    bytes_unused_before: bytesUnused,
    bytes_removed: [...remove, ...repack, ...unreferenced].reduce((a, id) => a + (present.get(id) ?? 0), 0),
    bytes_repacked: repack.reduce((a, id) => a + (usage.get(id)?.used.reduce((x, b) => x + b.length, 0) ?? 0), 0),
    index_files_replaced: 0,
    dry_run: Boolean(opts.dryRun),
  };
  if (opts.dryRun || (remove.size === 0 && repack.length === 0 && unreferenced.length === 0)) return stats;

  // 1. Repack: copy the used blobs, still sealed, into new packs; flush writes their index file.
  let done = 0;
  for (const packId of repack) {
    for (const b of usage.get(packId)?.used ?? []) {
      const sealed = await repo.backend.load({ type: "data", name: packId }, b.offset, b.length);
      await repo.addSealedBlob(b.type, Buffer.from(b.id, "hex"), sealed, b.uncompressed_length ?? 0);
    }
    opts.onProgress?.("repack", ++done, repack.length);
  }
  await repo.flush();

  // 2. New index files for every kept pack (the repacked ones are covered by step 1's index).
  const keep: IndexPackJSON[] = [];
  for (const packId of usage.keys()) {
    if (!remove.has(packId) && !repack.includes(packId)) keep.push({ id: packId, blobs: packs.get(packId) as IndexBlobJSON[] });
  }
  let batch: IndexPackJSON[] = [];
  let count = 0;
  const writeBatch = async (): Promise<void> => {
    if (!batch.length) return;
    await repo.saveJSON("index", { supersedes: oldIndexIds, packs: batch } satisfies IndexFileJSON);
    stats.index_files_replaced++;
    batch = [];
    count = 0;
  };
  for (const p of keep) {
    batch.push(p);
    count += p.blobs.length;
    if (count >= BLOBS_PER_INDEX_FILE) await writeBatch();
  }
  await writeBatch();

  // 3. Old index files go; 4. then the packs nothing names any more.
  repo.assertLockHeld();
  await mapLimit(oldIndexIds, 8, (id) => repo.backend.remove({ type: "index", name: id }));
  const obsolete = [...remove, ...repack, ...unreferenced];
  done = 0;
  await mapLimit(obsolete, 8, async (id) => {
    await repo.backend.remove({ type: "data", name: id });
    opts.onProgress?.("remove", ++done, obsolete.length);
  });
  // Partial files of writers that were killed mid-write: nothing names them, and under our
  // exclusive lock nobody is writing them now.
  const tmp = await repo.backend.removeTemporary?.();
  if (tmp) stats.bytes_removed += tmp.bytes;
  return stats;
}
