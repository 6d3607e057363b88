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
import { BlobSet } from "../repo/blob-set.js";
import { isIdHex } from "../repo/id.js";
import type { BlobType } from "../repo/pack.js";
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

/** Every blob that some snapshot needs. */
async function usedBlobs(repo: Repository): Promise<BlobSet> {
  const used = new BlobSet();
  const snaps = await repo.listSnapshots();
  const pending: string[] = snaps.map((s) => s.tree);
  while (pending.length) {
    const batch = pending.splice(0, 16).filter((t) => used.add(Buffer.from(t, "hex"), "tree"));
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
        for (const c of n.content ?? []) used.add(Buffer.from(c, "hex"), "data");
        if (n.subtree && !used.has(Buffer.from(n.subtree, "hex"), "tree")) pending.push(n.subtree);
      }
    });
  }
  return used;
}

/**
 * Every blob entry of the index files, in typed arrays: prune holds the whole index at once, and
 * objects with hex strings cost ~250 bytes per blob against ~50 here.
 */
class IndexEntries {
  private ids: Buffer = Buffer.alloc(32 * 4096);
  private types: Uint8Array = new Uint8Array(4096);
  private offsets: Uint32Array = new Uint32Array(4096);
  private lengths: Uint32Array = new Uint32Array(4096);
  private ulens: Uint32Array = new Uint32Array(4096);
  n = 0;

  /** Adds an entry as an index file gives it; false when it is malformed. */
  push(b: IndexBlobJSON): boolean {
    const u32 = (v: unknown): boolean => Number.isInteger(v) && (v as number) >= 0 && (v as number) <= 0xffffffff;
    if (!isIdHex(b.id) || (b.type !== "data" && b.type !== "tree") || !u32(b.offset) || !u32(b.length) || (b.uncompressed_length !== undefined && !u32(b.uncompressed_length))) return false;
    if (this.n === this.types.length) this.grow();
    const i = this.n++;
    this.ids.write(b.id, i * 32, "hex");
    this.types[i] = b.type === "tree" ? 1 : 0;
    this.offsets[i] = b.offset;
    this.lengths[i] = b.length;
    this.ulens[i] = b.uncompressed_length ?? 0;
    return true;
  }

  id(i: number): Buffer {
    return this.ids.subarray(i * 32, i * 32 + 32);
  }

  type(i: number): BlobType {
    return this.types[i] === 1 ? "tree" : "data";
  }

  offset(i: number): number {
    return this.offsets[i];
  }

  length(i: number): number {
    return this.lengths[i];
  }

  json(i: number): IndexBlobJSON {
    const b: IndexBlobJSON = { id: this.id(i).toString("hex"), type: this.type(i), offset: this.offsets[i], length: this.lengths[i] };
    if (this.ulens[i]) b.uncompressed_length = this.ulens[i];
    return b;
  }

  uncompressedLength(i: number): number {
    return this.ulens[i];
  }

  private grow(): void {
    const n = this.types.length * 2;
    const ids = Buffer.allocUnsafe(n * 32);
    this.ids.copy(ids);
    this.ids = ids;
    const grow8 = (a: Uint8Array): Uint8Array => {
      const b = new Uint8Array(n);
      b.set(a);
      return b;
    };
    const grow32 = (a: Uint32Array): Uint32Array => {
      const b = new Uint32Array(n);
      b.set(a);
      return b;
    };
    this.types = grow8(this.types);
    this.offsets = grow32(this.offsets);
    this.lengths = grow32(this.lengths);
    this.ulens = grow32(this.ulens);
  }
}

/** A pack's entries: ranges [start, end) into IndexEntries, one per index file that lists it. */
type Ranges = number[];

function forEachEntry(ranges: Ranges, fn: (i: number) => void): void {
  for (let r = 0; r < ranges.length; r += 2) for (let i = ranges[r]; i < ranges[r + 1]; i++) fn(i);
}

export async function prune(repo: Repository, opts: PruneOptions = {}): Promise<PruneStats> {
  if (!opts.dryRun) repo.assertMayDelete("prune");
  const oldIndexIds = await repo.listIds("index");
  const entries = new IndexEntries();
  const packs = new Map<string, Ranges>();
  for (const id of oldIndexIds) {
    let file: IndexFileJSON;
    try {
      file = parseIndexFile(await repo.loadJSON<unknown>("index", id), id);
    } catch (err) {
      throw new SitekeepError("prune.index", `index file ${id} cannot be read: ${errorMessage(err)}; nothing was deleted`, {
        hint: "run `sitekeep check`; prune refuses to work on a damaged repository",
      });
    }
    const malformed = (): SitekeepError =>
      new SitekeepError("prune.index", `index file ${id} has a malformed entry; nothing was deleted`, {
        hint: "run `sitekeep check`; prune refuses to work on a damaged repository",
      });
    for (const p of file.packs) {
      if (!isIdHex(p.id) || !Array.isArray(p.blobs)) throw malformed();
      const ranges = packs.get(p.id);
      const start = entries.n;
      if (ranges) {
        // The same pack in two index files (an interrupted prune, or concurrent backups): keep
        // each of its blobs once.
        const seen = new Set<string>();
        forEachEntry(ranges, (i) => seen.add(entries.id(i).toString("hex") + "@" + entries.offset(i)));
        for (const b of p.blobs) if (!seen.has(b.id + "@" + b.offset) && !entries.push(b)) throw malformed();
        if (entries.n > start) ranges.push(start, entries.n);
      } else {
        for (const b of p.blobs) if (!entries.push(b)) throw malformed();
        packs.set(p.id, [start, entries.n]);
      }
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
  const kept = new BlobSet();
  const keepEntry = new Uint8Array(entries.n);
  let bytesUsed = 0;
  let bytesUnused = 0;
  let blobsUsed = 0;
  let blobsUnused = 0;
  const usage = new Map<string, { usedCount: number; usedBytes: number; unusedBytes: number; size: number }>();
  for (const [packId, ranges] of packs) {
    const u = { usedCount: 0, usedBytes: 0, unusedBytes: 0, size: present.get(packId) ?? 0 };
    forEachEntry(ranges, (i) => {
      const id = entries.id(i);
      const type = entries.type(i);
      if (used.has(id, type) && kept.add(id, type)) {
        keepEntry[i] = 1;
        u.usedCount++;
        u.usedBytes += entries.length(i);
        bytesUsed += entries.length(i);
        blobsUsed++;
      } else {
        u.unusedBytes += entries.length(i);
        bytesUnused += entries.length(i);
        blobsUnused++;
      }
    });
    usage.set(packId, u);
  }
  if (kept.size !== used.size) {
    let example = "";
    for (const [id, type] of used.entries()) {
      if (!kept.has(id, type)) {
        example = `${type}:${Buffer.from(id).toString("hex")}`;
        break;
      }
    }
    throw new SitekeepError("prune.incomplete", `${used.size - kept.size} blobs that snapshots need are not in any pack (e.g. ${example}); nothing was deleted`, {
      hint: "run `sitekeep check`; prune refuses to work on a damaged repository",
    });
  }

  const remove = new Set<string>();
  const repack: string[] = [];
  for (const [packId, u] of usage) if (u.usedCount === 0) remove.add(packId);
  let unusedLeft = [...usage].filter(([id]) => !remove.has(id)).reduce((a, [, u]) => a + u.unusedBytes, 0);
  const tolerated = parseSize(opts.maxUnused ?? "5%", bytesUsed);
  let repackBudget = parseSize(opts.maxRepackSize ?? "unlimited", bytesUsed);
  const partly = [...usage].filter(([id, u]) => !remove.has(id) && u.unusedBytes > 0).sort((a, b) => b[1].unusedBytes / b[1].size - a[1].unusedBytes / a[1].size);
  for (const [packId, u] of partly) {
    if (unusedLeft <= tolerated) break;
    if (u.usedBytes > repackBudget) continue;
    repackBudget -= u.usedBytes;
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
    bytes_repacked: repack.reduce((a, id) => a + (usage.get(id)?.usedBytes ?? 0), 0),
    index_files_replaced: 0,
    dry_run: Boolean(opts.dryRun),
  };
  if (opts.dryRun) return stats;
  if (remove.size === 0 && repack.length === 0 && unreferenced.length === 0) return removeTemporary(repo, stats);

  // 1. Repack: copy the used blobs, still sealed, into new packs; flush writes their index file.
  let done = 0;
  for (const packId of repack) {
    const keepHere: number[] = [];
    forEachEntry(packs.get(packId) ?? [], (i) => {
      if (keepEntry[i]) keepHere.push(i);
    });
    for (const i of keepHere) {
      const sealed = await repo.backend.load({ type: "data", name: packId }, entries.offset(i), entries.length(i));
      await repo.addSealedBlob(entries.type(i), Buffer.from(entries.id(i)), sealed, entries.uncompressedLength(i));
    }
    opts.onProgress?.("repack", ++done, repack.length);
  }
  await repo.flush();

  // 2. New index files for every kept pack (the repacked ones are covered by step 1's index).
  const repacked = new Set(repack);
  let batch: IndexPackJSON[] = [];
  let count = 0;
  const writeBatch = async (): Promise<void> => {
    if (!batch.length) return;
    await repo.saveJSON("index", { supersedes: oldIndexIds, packs: batch } satisfies IndexFileJSON);
    stats.index_files_replaced++;
    batch = [];
    count = 0;
  };
  for (const [packId, ranges] of packs) {
    if (remove.has(packId) || repacked.has(packId)) continue;
    // Entries become JSON one index file's worth at a time.
    const blobs: IndexBlobJSON[] = [];
    forEachEntry(ranges, (i) => blobs.push(entries.json(i)));
    batch.push({ id: packId, blobs });
    count += blobs.length;
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
  return removeTemporary(repo, stats);
}

/**
 * Removes the partial files of writers that were killed mid-write (a backup's pack being streamed,
 * a save's temporary file), also when there is nothing else to prune: nothing names them, and
 * under prune's exclusive lock nobody is writing them now.
 */
async function removeTemporary(repo: Repository, stats: PruneStats): Promise<PruneStats> {
  const tmp = await repo.backend.removeTemporary?.();
  if (tmp) stats.bytes_removed += tmp.bytes;
  return stats;
}
