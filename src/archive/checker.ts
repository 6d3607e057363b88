// Repository check: the structure (index files, packs, snapshots and every tree reachable from
// them) and, on request, the data (every pack read, hashed, its header compared with the index and
// each blob decrypted, decompressed and verified), as restic's `check [--read-data]` does.
//
// Damage is reported, never thrown. Every error names the damaged file and, where the damage loses
// data, the snapshots and paths that depend on it ("affects"). Affects are computed during the tree
// walk, which keeps for each tree the damaged paths below it, so a tree shared by many snapshots is
// read only once. The walk needs to know which packs and blobs are damaged, but reading the data
// takes both cores' helper threads while this thread idles: so the walk runs while the data is read,
// with the damage known before it (missing packs, wrong sizes), and the data's findings are held
// back. When the data turns out damaged (rare), the walk's results are dropped and it runs again
// knowing all the damage; otherwise they stand as they are.
import { availableParallelism } from "node:os";
import { SitekeepError, errorMessage } from "../errors.js";
import { BlobIndex, type BlobLocation } from "../repo/blob-index.js";
import { type PackVerdict, verifyBlobsInBackground, verifyPackInBackground } from "../repo/blob-codec.js";
import { verifyPackInWorker } from "../repo/blob-workers.js";
import { EXTENSION } from "../repo/crypto.js";
import { ID_SIZE, isIdHex, shortId } from "../repo/id.js";
import { type IndexFileJSON, parseIndexFile } from "../repo/index-file.js";
import { type IndexTable, scanIndex } from "../repo/index-table.js";
import { type BlobTable, type PackedBlob, headerSize, parsePackTailTable, tableEntry } from "../repo/pack.js";
import { PieceBuffers, type StreamedVerdict, streamable, verifyPackStreamed } from "../repo/pack-verifier.js";
import { type Repository, mapLimit } from "../repo/repository.js";
import { type Snapshot, byTimeDesc } from "../repo/snapshot.js";
import { releaseBuffer } from "../platform/native.js";
import { Semaphore, mapWithSpare } from "../util/concurrency.js";
import { type NodeJSON, decodeName } from "./node.js";
import { joinPath } from "./tree.js";

export interface CheckOptions {
  /** Read and verify every pack. */
  readData?: boolean;
  /** "n/m" (packs whose first ID byte % m == n-1, as restic) or "x%" (a random sample of x percent of the packs); reads the data of that subset. */
  readDataSubset?: string;
  onProgress?: (p: { phase: "index" | "packs" | "snapshots" | "data"; done: number; total: number; bytes?: number }) => void;
}

export interface CheckProblem {
  kind: "index" | "pack" | "missing-pack" | "snapshot" | "tree" | "missing-blob";
  /** The damaged file, e.g. "data/ab/abcd…", "index/…", "snapshots/…". */
  file?: string;
  /** One line that names the problem. */
  message: string;
  /** Snapshots and paths (the first 20 per snapshot) that depend on the damaged thing. */
  affects?: { snapshot: string; paths: string[] }[];
}

export interface CheckResult {
  errors: CheckProblem[];
  /** Non-fatal findings: packs no index names (left by an interrupted backup; prune removes them), duplicate blobs. */
  notices: string[];
  /** Packs named by the index files. */
  packs: number;
  /** Snapshot files in the repository (readable or not). */
  snapshots: number;
  packsRead: number;
  bytesRead: number;
}

const MAX_PATHS = 20;
const MAX_PACK_NOTICES = 20;
/** Packs read at once: one being verified per core, and one being read. */
const DATA_CONCURRENCY = Math.min(5, availableParallelism() + 1);
const INDEX_CONCURRENCY = 4;
/** Smallest pack buffer allocated: packs are written up to 16 MiB and a little over. */
const PACK_BUFFER_MIN = 17 * 1024 * 1024;
/** Pack buffers are as large as the largest pack to read, up to this (larger packs get their own). */
const PACK_BUFFER_MAX = 32 * 1024 * 1024;
const TREE_CONCURRENCY = 8;
/**
 * Subtrees walked beside the one each tree walks itself (mapWithSpare), for the whole walk. Four
 * per tree at every level let the walk's breadth grow with the depth, and it read the many-files
 * set's tree packs ~20 times over through the repository's window cache.
 */
const TREE_BRANCHES = 8;

/** What the index files say about one pack. */
interface PackInfo {
  /** Blob entries (including duplicates of blobs indexed elsewhere). */
  count: number;
  /** Sum of the entries' stored lengths. */
  dataBytes: number;
  /** Header size the entries imply (pack.ts headerSize). */
  headerBytes: number;
  /** The index file that names it. */
  indexFile: string;
  /** Entries not kept in the BlobIndex because the blob was already indexed in another pack (or twice here). */
  dups?: PackedBlob[];
  /** Entry numbers in the BlobIndex, filled after all index files are read. */
  entries: number[];
}

/** Damaged paths below one tree, relative to it, per problem number. */
interface TreeDamage {
  /** Problems that make the tree itself unreadable or endangered (its own path is affected). */
  self: number[];
  /** Problem number -> relative paths below the tree ("name", "dir/name"), at most MAX_PATHS. */
  inner: Map<number, string[]>;
}

const NO_DAMAGE: TreeDamage = { self: [], inner: new Map() };
const NO_PROBLEMS: ReadonlySet<number> = new Set();
/** A blob ID's bytes for an index lookup (the walk runs on this thread, one lookup at a time). */
const ID_SCRATCH = Buffer.alloc(ID_SIZE);

/** A problem found in a pack's data: it damages the blobs named, or the whole pack. */
interface PackFinding {
  packId: string;
  problem: CheckProblem;
  blobs?: string[];
}

export function packFile(packId: string): string {
  return `data/${packId.slice(0, 2)}/${packId}`;
}

export async function checkRepository(repo: Repository, opts: CheckOptions = {}): Promise<CheckResult> {
  return (await startCheck(repo, opts)).finish();
}

/** A check whose index files are read: finish() checks the rest. */
export interface StartedCheck {
  /** True when the repository's list of index files is no longer the one read. */
  indexChanged(): Promise<boolean>;
  finish(): Promise<CheckResult>;
}

/**
 * Reads and checks the index files. This may run before the repository's lock is held, while the
 * lock waits out its conflict check: start again when indexChanged() says a backup or prune
 * finished in between (withLockPrepared).
 */
export async function startCheck(repo: Repository, opts: CheckOptions = {}): Promise<StartedCheck> {
  const checker = new Checker(repo, opts);
  const read = await checker.checkIndex();
  return {
    indexChanged: async () => (await repo.listIds("index")).sort().join() !== read.join(),
    finish: () => checker.run(),
  };
}

class Checker {
  private readonly errors: CheckProblem[] = [];
  private readonly notices: string[] = [];
  private readonly idx = new BlobIndex();
  private readonly packs = new Map<string, PackInfo>();
  /** Pack files present in data/, with their sizes. */
  private readonly present = new Map<string, number>();
  /** Problems of index files: every blob missing from the index may have been named there. */
  private readonly indexProblems: number[] = [];
  /** Packs damaged as a whole (missing, wrong size, unreadable header) -> problem numbers. */
  private readonly packDamage = new Map<string, number[]>();
  /** Single blobs known damaged (fail to decode) -> problem numbers. */
  private readonly blobDamage = new Map<string, number[]>();
  /** Per tree ID: the damage below it, once known (or while being computed). */
  private readonly trees = new Map<string, TreeDamage | Promise<TreeDamage>>();
  private readonly affects = new Map<number, Map<string, string[]>>();
  private packsRead = 0;
  private bytesRead = 0;
  private snapshotCount = 0;
  private treeSlots = TREE_CONCURRENCY;
  /** Subtrees walked beside the one each tree walks itself (see TREE_BRANCHES). */
  private readonly branches = new Semaphore(TREE_BRANCHES);
  /** Buffers of packs verified (back from a worker, or here), to read the next packs into (at most DATA_CONCURRENCY). */
  private readonly packBuffers: ArrayBuffer[] = [];
  /** Buffers of the packs read piece by piece: one per pack in flight. */
  private readonly pieceBuffers = new PieceBuffers(DATA_CONCURRENCY);
  /** The size of a new pack buffer (see checkData). */
  private packBufferSize = PACK_BUFFER_MIN;
  /** While the data is read: the walk's latest progress, held back (null: none yet). */
  private walkProgress?: { done: number; total: number } | null;
  private readonly treeWaiters: (() => void)[] = [];

  constructor(
    private readonly repo: Repository,
    private readonly opts: CheckOptions,
  ) {}

  /** Checks packs, data and snapshots (after checkIndex). */
  async run(): Promise<CheckResult> {
    const subset = this.opts.readDataSubset !== undefined ? parseSubset(this.opts.readDataSubset) : undefined;
    await this.checkPacks();
    if (this.opts.readData || subset) {
      const walkFrom = this.errors.length;
      // One progress line: the walk's shows once the data is read (if it is still going then).
      this.walkProgress = null;
      const reading = this.checkData(subset).finally(() => {
        const last = this.walkProgress;
        this.walkProgress = undefined;
        if (last) this.progress("snapshots", last.done, last.total);
      });
      const [data, walk] = await Promise.allSettled([reading, this.checkSnapshots()]);
      if (data.status === "rejected") throw data.reason;
      if (walk.status === "rejected") throw walk.reason;
      if (data.value.length) {
        // The walk could not know this damage: forget what it found and walk again.
        this.errors.length = walkFrom;
        this.affects.clear();
        this.trees.clear();
        for (const f of data.value) this.recordPackFinding(f);
        await this.checkSnapshots();
      }
    } else {
      await this.checkSnapshots();
    }
    this.errors.forEach((p, i) => {
      const a = this.affects.get(i);
      if (a && a.size) p.affects = [...a].map(([snapshot, paths]) => ({ snapshot, paths }));
    });
    return {
      errors: this.errors,
      notices: this.notices,
      packs: this.packs.size,
      snapshots: this.snapshotCount,
      packsRead: this.packsRead,
      bytesRead: this.bytesRead,
    };
  }

  private problem(p: CheckProblem): number {
    this.errors.push(p);
    return this.errors.length - 1;
  }

  private progress(phase: "index" | "packs" | "snapshots" | "data", done: number, total: number, bytes?: number): void {
    if (phase === "snapshots" && this.walkProgress !== undefined) {
      this.walkProgress = { done, total }; // held back while the data is read
      return;
    }
    this.opts.onProgress?.(bytes === undefined ? { phase, done, total } : { phase, done, total, bytes });
  }

  // ---- index files ----------------------------------------------------------------------------

  /** Reads and checks every index file (before run()); returns their IDs, sorted. */
  async checkIndex(): Promise<string[]> {
    const ids = (await this.repo.listIds("index")).sort();
    let done = 0;
    this.progress("index", 0, ids.length);
    const multiply = new Set<string>();
    await mapLimit(ids, INDEX_CONCURRENCY, async (id) => {
      let file: IndexFileJSON | undefined;
      let table: IndexTable | undefined;
      try {
        const text = await this.repo.loadUnpacked("index", id);
        // Straight into arrays; as JSON (checked entry by entry) when not in the shape restic writes.
        table = await scanIndex(text);
        if (!table) file = parseIndexFile(JSON.parse(text.toString("utf8")), id);
      } catch (err) {
        this.indexProblems.push(
          this.problem({ kind: "index", file: `index/${id}`, message: `index file index/${id} cannot be read: ${oneLine(errorMessage(err))}` }),
        );
      }
      // Added as each arrives, so only a few parsed files are held at once.
      if (table) this.addIndexTable(id, table, multiply);
      else if (file) this.addIndexFile(id, file, multiply);
      this.progress("index", ++done, ids.length);
    });
    if (multiply.size) {
      this.notices.push(`${multiply.size} pack(s) are named by more than one index file (harmless; prune rewrites the index)`);
    }
    if (this.idx.duplicates) {
      this.notices.push(`${this.idx.duplicates} blob(s) are stored more than once (harmless; prune removes the extra copies)`);
    }
    for (let i = 0; i < this.idx.size; i++) this.packs.get(this.idx.packIdAt(i))?.entries.push(i);
    return ids;
  }

  /** addIndexFile for a file read into arrays (its IDs, types and numbers are valid by then). */
  private addIndexTable(indexId: string, t: IndexTable, multiply: Set<string>): void {
    const bad: string[] = [];
    let i = 0;
    t.packs.forEach((packId, p) => {
      const first = i;
      while (i < t.count && t.packOf[i] === p) i++;
      if (this.packs.has(packId)) {
        multiply.add(packId);
        return;
      }
      const ulens: PackedBlob[] = [];
      let dataBytes = 0;
      let invalid = false;
      for (let k = first; k < i; k++) {
        dataBytes += t.numbers[3 * k + 1];
        invalid ||= t.numbers[3 * k + 1] < EXTENSION;
        ulens.push({ uncompressedLength: t.numbers[3 * k + 2] } as PackedBlob);
      }
      if (invalid) {
        bad.push(`pack ${shortId(packId)} has an invalid blob entry`);
        return;
      }
      const info: PackInfo = { count: i - first, dataBytes, headerBytes: headerSize(ulens), indexFile: indexId, entries: [] };
      for (let k = first; k < i; k++) {
        const id = t.ids.subarray(k * ID_SIZE, (k + 1) * ID_SIZE);
        const type = t.trees[k] ? "tree" : "data";
        const [offset, length, ulen] = [t.numbers[3 * k], t.numbers[3 * k + 1], t.numbers[3 * k + 2]];
        if (!this.idx.add(id, type, packId, offset, length, ulen)) (info.dups ??= []).push({ id: Buffer.from(id), type, offset, length, uncompressedLength: ulen });
      }
      this.packs.set(packId, info);
    });
    this.reportInvalid(indexId, bad);
  }

  private addIndexFile(indexId: string, file: IndexFileJSON, multiply: Set<string>): void {
    const bad: string[] = [];
    for (const p of file.packs) {
      if (!p || typeof p.id !== "string" || !isIdHex(p.id) || !Array.isArray(p.blobs)) {
        bad.push(`invalid pack entry ${JSON.stringify(p?.id ?? null)}`);
        continue;
      }
      if (this.packs.has(p.id)) {
        multiply.add(p.id);
        continue;
      }
      const invalid = p.blobs.find(
        (b) =>
          !b || typeof b.id !== "string" || !isIdHex(b.id) || (b.type !== "data" && b.type !== "tree") ||
          !isCount(b.offset) || !isCount(b.length) || b.length < EXTENSION ||
          (b.uncompressed_length !== undefined && !isCount(b.uncompressed_length)),
      );
      if (invalid) {
        bad.push(`pack ${shortId(p.id)} has an invalid blob entry`);
        continue;
      }
      const info: PackInfo = {
        count: p.blobs.length,
        dataBytes: 0,
        headerBytes: headerSize(p.blobs.map((b) => ({ uncompressedLength: b.uncompressed_length ?? 0 })) as PackedBlob[]),
        indexFile: indexId,
        entries: [],
      };
      for (const b of p.blobs) {
        info.dataBytes += b.length;
        const id = Buffer.from(b.id, "hex");
        const ulen = b.uncompressed_length ?? 0;
        if (!this.idx.add(id, b.type, p.id, b.offset, b.length, ulen)) {
          (info.dups ??= []).push({ id, type: b.type, offset: b.offset, length: b.length, uncompressedLength: ulen });
        }
      }
      this.packs.set(p.id, info);
    }
    this.reportInvalid(indexId, bad);
  }

  /** The problem of an index file with invalid entries (none: nothing). */
  private reportInvalid(indexId: string, bad: string[]): void {
    if (bad.length) {
      this.indexProblems.push(
        this.problem({
          kind: "index",
          file: `index/${indexId}`,
          message: `index file index/${indexId} is invalid: ${bad[0]}${bad.length > 1 ? ` (and ${bad.length - 1} more)` : ""}`,
        }),
      );
    }
  }

  // ---- pack files -----------------------------------------------------------------------------

  private async checkPacks(): Promise<void> {
    for await (const fi of this.repo.backend.list("data")) this.present.set(fi.name, fi.size);
    const total = this.packs.size;
    let done = 0;
    this.progress("packs", 0, total);
    for (const [id, info] of [...this.packs].sort(byKey)) {
      const size = this.present.get(id);
      if (size === undefined) {
        this.damagePack(id, this.problem({ kind: "missing-pack", file: packFile(id), message: `pack ${packFile(id)} is missing (named by index/${info.indexFile})` }));
      } else {
        const expected = info.dataBytes + info.headerBytes + 4;
        if (size !== expected) {
          this.damagePack(
            id,
            this.problem({ kind: "pack", file: packFile(id), message: `pack ${packFile(id)} has ${size} bytes, the index implies ${expected}` }),
          );
        }
      }
      this.progress("packs", ++done, total);
    }
    const unindexed = [...this.present].filter(([id]) => !this.packs.has(id)).sort(byKey);
    // With a damaged index file, "unindexed" packs may hold needed data: never suggest pruning them.
    const indexDamaged = this.errors.some((e) => e.kind === "index");
    const why = indexDamaged
      ? "a damaged index file may have named it; do not prune before the index is repaired"
      : "left by an interrupted backup; prune removes it";
    for (const [id, size] of unindexed.slice(0, MAX_PACK_NOTICES)) {
      this.notices.push(`pack ${packFile(id)} (${size} bytes) is not named by any index (${why})`);
    }
    if (unindexed.length > MAX_PACK_NOTICES) {
      this.notices.push(`… and ${unindexed.length - MAX_PACK_NOTICES} more packs not named by any index`);
    }
  }

  private damagePack(packId: string, problem: number): void {
    const list = this.packDamage.get(packId);
    if (list) list.push(problem);
    else this.packDamage.set(packId, [problem]);
  }

  private damageBlob(hex: string, problem: number): void {
    const list = this.blobDamage.get(hex);
    if (list) list.push(problem);
    else this.blobDamage.set(hex, [problem]);
  }

  /**
   * The index's entries for a pack, in offset order, as a table: a pack of tiny files lists
   * ~40,000 blobs, and an object and an ID buffer per blob for the packs in flight were ~30 MiB
   * of the many-files check's heap.
   */
  private packTable(info: PackInfo): BlobTable {
    const dups = info.dups ?? [];
    const count = info.entries.length + dups.length;
    const order = new Uint32Array(count);
    const offsetOf = (k: number): number => (k < info.entries.length ? this.idx.offsetAt(info.entries[k]) : dups[k - info.entries.length].offset);
    let sorted = true;
    for (let k = 0; k < count; k++) {
      order[k] = k;
      if (k && offsetOf(k) < offsetOf(k - 1)) sorted = false;
    }
    if (!sorted) order.sort((a, b) => offsetOf(a) - offsetOf(b));
    const t: BlobTable = { count, ids: new Uint8Array(ID_SIZE * count), trees: new Uint8Array(count), spans: new Float64Array(3 * count) };
    for (let j = 0; j < count; j++) {
      const k = order[j];
      if (k < info.entries.length) {
        const i = info.entries[k];
        t.ids.set(this.idx.idBytesAt(i), ID_SIZE * j);
        t.trees[j] = this.idx.typeAt(i) === "tree" ? 1 : 0;
        t.spans[3 * j] = this.idx.offsetAt(i);
        t.spans[3 * j + 1] = this.idx.lengthAt(i);
        t.spans[3 * j + 2] = this.idx.uncompressedLengthAt(i);
      } else {
        const d = dups[k - info.entries.length];
        t.ids.set(d.id, ID_SIZE * j);
        t.trees[j] = d.type === "tree" ? 1 : 0;
        t.spans[3 * j] = d.offset;
        t.spans[3 * j + 1] = d.length;
        t.spans[3 * j + 2] = d.uncompressedLength;
      }
    }
    return t;
  }

  // ---- data -----------------------------------------------------------------------------------

  /** Reads the packs; returns what is wrong with them (in pack order), recorded by nothing yet. */
  private async checkData(subset: ((packId: string, all: string[]) => boolean) | undefined): Promise<PackFinding[]> {
    const candidates = [...this.packs.keys()].filter((id) => this.present.has(id)).sort();
    const chosen = subset ? candidates.filter((id) => subset(id, candidates)) : candidates;
    let done = 0;
    const findings = new Map<string, PackFinding>();
    // One buffer size for every pack (a tenth of them are a little over 17 MiB): a buffer too small
    // for the next pack was replaced, and each replaced one stayed allocated until V8 collected it.
    let largest = 0;
    for (const id of chosen) largest = Math.max(largest, this.present.get(id) ?? 0);
    this.packBufferSize = Math.min(Math.max(largest, PACK_BUFFER_MIN), PACK_BUFFER_MAX);
    this.progress("data", 0, chosen.length, 0);
    try {
      await mapLimit(chosen, DATA_CONCURRENCY, async (id) => {
        const f = await this.readPack(id);
        if (f) findings.set(id, f);
        this.progress("data", ++done, chosen.length, this.bytesRead);
      });
    } finally {
      this.pieceBuffers.clear();
    }
    return chosen.flatMap((id) => findings.get(id) ?? []);
  }

  /** Records a problem found in a pack's data, and what it damages. */
  private recordPackFinding(f: PackFinding): void {
    const p = this.problem(f.problem);
    if (f.blobs) for (const hex of f.blobs) this.damageBlob(hex, p);
    else this.damagePack(f.packId, p);
  }

  private async readPack(packId: string): Promise<PackFinding | undefined> {
    const info = this.packs.get(packId);
    if (!info) return undefined;
    const name = packFile(packId);
    const size = this.present.get(packId);
    const entries = this.packTable(info);
    const backend = this.repo.backend;
    const h = { type: "data" as const, name: packId };
    let verdict: PackVerdict;
    let headerProblem: string | undefined;
    if (verifyBlobsInBackground && backend.loadInto && size !== undefined && streamable(entries, size)) {
      // Piece by piece: the blobs verified and the file hashed on the thread pool.
      let v: StreamedVerdict;
      try {
        v = await verifyPackStreamed(this.repo.key, size, entries, (into, offset) => backend.loadInto!(h, into, offset), this.pieceBuffers, verifyBlobsInBackground);
      } catch (err) {
        return { packId, problem: { kind: "pack", file: name, message: `pack ${name} cannot be read: ${oneLine(errorMessage(err))}` } };
      }
      this.packsRead++;
      this.bytesRead += size;
      headerProblem = await this.tailHeaderProblem(v.tail, size, packId, entries);
      verdict = v;
    } else {
      const whole = await this.verifyWholePack(packId, size, entries);
      if ("problem" in whole) return whole;
      ({ verdict, headerProblem } = whole);
    }
    return this.packFinding(packId, entries, verdict, headerProblem);
  }

  /** The header problem of a pack read piece by piece, from the bytes after its last blob. */
  private async tailHeaderProblem(tail: Buffer, size: number, packId: string, entries: BlobTable): Promise<string | undefined> {
    try {
      // The index says where the blobs end; a damaged pack's header may start elsewhere.
      const h = { type: "data" as const, name: packId };
      let t = tail;
      if (t.length < 4 && size >= 4) t = await this.repo.backend.load(h, size - 4, 4);
      const hlen = t.length >= 4 ? t.readUInt32LE(t.length - 4) : 0;
      if (t.length >= 4 && hlen + 4 > t.length && hlen + 4 <= size) t = await this.repo.backend.load(h, size - hlen - 4, hlen + 4);
      return compareHeader(parsePackTailTable(this.repo.key, t, size, packId), entries);
    } catch (err) {
      return `its header cannot be read (${oneLine(errorMessage(err))})`;
    }
  }

  /** Reads a pack whole and verifies it (without the addon, or where the backend cannot read into a buffer). */
  private async verifyWholePack(packId: string, size: number | undefined, entries: BlobTable): Promise<PackFinding | { verdict: PackVerdict; headerProblem: string | undefined }> {
    const name = packFile(packId);
    const backend = this.repo.backend;
    const lend = backend.loadInto !== undefined && size !== undefined;
    let buf: Buffer;
    try {
      if (lend) {
        buf = Buffer.from(this.packBuffer(size), 0, size);
        await backend.loadInto!({ type: "data", name: packId }, buf);
      } else {
        buf = await backend.load({ type: "data", name: packId });
      }
    } catch (err) {
      return { packId, problem: { kind: "pack", file: name, message: `pack ${name} cannot be read: ${oneLine(errorMessage(err))}` } };
    }
    this.packsRead++;
    this.bytesRead += buf.length;
    let headerProblem: string | undefined;
    try {
      headerProblem = compareHeader(parsePackTailTable(this.repo.key, buf, buf.length, packId), entries);
    } catch (err) {
      headerProblem = `its header cannot be read (${oneLine(errorMessage(err))})`;
    }
    // Hashing the file and decoding every blob run on the thread pool (a worker thread per core
    // without the addon), while this thread reads the next packs: on this thread alone, check was
    // bound to one core.
    try {
      const v: PackVerdict & { buffer?: ArrayBuffer } = verifyPackInBackground
        ? await verifyPackInBackground(this.repo.key, buf, entries)
        : await verifyPackInWorker(this.repo.key, buf, entries, () => backend.load({ type: "data", name: packId }), lend);
      // Back from the worker, or still here when the pack was verified on the pool or this thread.
      const back = v.buffer ?? (lend && buf.buffer.byteLength ? (buf.buffer as ArrayBuffer) : undefined);
      if (back && this.packBuffers.length < DATA_CONCURRENCY) this.packBuffers.push(back);
      else if (back) releaseBuffer(new Uint8Array(back));
      return { verdict: v, headerProblem };
    } catch (err) {
      // Only when a worker died with the pack and reading it again failed, or the pool's job did
      // (OpenSSL failed or memory ran out).
      return { packId, problem: { kind: "pack", file: name, message: `pack ${name} cannot be read: ${oneLine(errorMessage(err))}` } };
    }
  }

  /** What is wrong with a pack, from its verdict and header (undefined: nothing). */
  private packFinding(packId: string, entries: BlobTable, verdict: PackVerdict, headerProblem: string | undefined): PackFinding | undefined {
    const name = packFile(packId);
    const failures: string[] = [];
    if (verdict.hash !== packId) failures.push(`its content does not match its name (SHA-256 ${shortId(verdict.hash)}…)`);
    const headerOk = headerProblem === undefined;
    if (headerProblem) failures.push(headerProblem);
    const badBlobs = verdict.bad.map((b) => tableEntry(entries, b.entry).id.toString("hex"));
    const first = verdict.bad[0];
    const firstBad = first ? `${tableEntry(entries, first.entry).type} blob ${shortId(badBlobs[0])}…: ${oneLine(first.message)}` : "";
    if (badBlobs.length) failures.push(`${badBlobs.length} of ${entries.count} blobs cannot be decoded (first: ${firstBad})`);

    if (!failures.length) return undefined;
    const problem: CheckProblem = { kind: "pack", file: name, message: `pack ${name} is damaged: ${failures.join("; ")}` };
    // When the damage is pinned to particular blobs, only what uses them is lost; otherwise the
    // whole pack is suspect.
    return badBlobs.length && headerOk ? { packId, problem, blobs: badBlobs } : { packId, problem };
  }

  /** A buffer of at least `size` bytes for a pack: one verified before, or a new one. */
  private packBuffer(size: number): ArrayBuffer {
    const i = this.packBuffers.findIndex((b) => b.byteLength >= size);
    if (i >= 0) return this.packBuffers.splice(i, 1)[0];
    const small = this.packBuffers.pop(); // too small for this pack: replaced by a larger one, freed now
    if (small) releaseBuffer(new Uint8Array(small));
    return new ArrayBuffer(Math.max(size, this.packBufferSize));
  }

  // ---- snapshots and trees --------------------------------------------------------------------

  private async checkSnapshots(): Promise<void> {
    const ids = (await this.repo.listIds("snapshots")).sort();
    this.snapshotCount = ids.length;
    const snaps: Snapshot[] = [];
    await mapLimit(ids, 8, async (id) => {
      try {
        const s = await this.repo.loadSnapshot(id);
        if (typeof s.tree !== "string" || !isIdHex(s.tree)) throw new Error(`its tree ID ${JSON.stringify(s.tree ?? null)} is invalid`);
        snaps.push(s);
      } catch (err) {
        this.problem({ kind: "snapshot", file: `snapshots/${id}`, message: `snapshot file snapshots/${id} cannot be read: ${oneLine(errorMessage(err))}` });
      }
    });
    snaps.sort(byTimeDesc);
    let done = 0;
    this.progress("snapshots", 0, snaps.length);
    for (const s of snaps) {
      const d = await this.visitTree(s.tree, s.id, "/");
      for (const p of d.self) this.addAffected(p, s.id, ["/"]);
      for (const [p, rel] of d.inner) this.addAffected(p, s.id, rel.map((r) => "/" + r));
      this.progress("snapshots", ++done, snaps.length);
    }
  }

  private addAffected(problem: number, snapshot: string, paths: string[]): void {
    let m = this.affects.get(problem);
    if (!m) this.affects.set(problem, (m = new Map()));
    const list = m.get(snapshot) ?? [];
    m.set(snapshot, list);
    for (const p of paths) {
      if (list.length >= MAX_PATHS) break;
      list.push(p);
    }
  }

  /** The damage below tree `id`, checking it the first time it is seen (at `path` in `snapshot`). */
  private visitTree(id: string, snapshot: string, path: string): Promise<TreeDamage> | TreeDamage {
    const known = this.trees.get(id);
    if (known) return known;
    const p = this.checkTree(id, snapshot, path).then((d) => {
      this.trees.set(id, d);
      return d;
    });
    this.trees.set(id, p);
    return p;
  }

  private where(snapshot: string, path: string): string {
    return `snapshot ${shortId(snapshot)} ${path}`;
  }

  private async checkTree(id: string, snapshot: string, path: string): Promise<TreeDamage> {
    const loc = this.idx.get(Buffer.from(id, "hex"), "tree");
    if (!loc) {
      const p = this.problem({ kind: "tree", message: `tree ${shortId(id)}… (${this.where(snapshot, path)}) is not in the index` });
      return { self: [p, ...this.indexProblems], inner: new Map() };
    }
    const self = this.blobProblems(id, loc.packId);
    let nodes: NodeJSON[];
    if (this.packDamage.has(loc.packId) && !this.present.has(loc.packId)) {
      self.push(this.problem({ kind: "tree", file: packFile(loc.packId), message: `tree ${shortId(id)}… (${this.where(snapshot, path)}) is in missing pack ${packFile(loc.packId)}` }));
      return { self, inner: new Map() };
    }
    try {
      nodes = await this.loadTree(id, loc);
    } catch (err) {
      self.push(
        this.problem({ kind: "tree", file: packFile(loc.packId), message: `tree ${shortId(id)}… (${this.where(snapshot, path)}) cannot be loaded: ${oneLine(errorMessage(err))}` }),
      );
      return { self, inner: new Map() };
    }

    const inner = new Map<number, string[]>();
    const add = (problems: Iterable<number>, rel: string): void => {
      for (const p of problems) {
        const list = inner.get(p) ?? [];
        inner.set(p, list);
        if (list.length < MAX_PATHS) list.push(rel);
      }
    };
    const dirs: { name: string; subtree: string }[] = [];
    for (const node of nodes) {
      const name = displayName(node);
      if (node.type === "dir") {
        if (typeof node.subtree !== "string" || !isIdHex(node.subtree)) {
          add([this.problem({ kind: "tree", message: `tree ${shortId(id)}…: directory ${this.where(snapshot, joinPath(path, name))} has no valid subtree` })], name);
        } else {
          dirs.push({ name, subtree: node.subtree });
        }
      } else if (node.type === "file") {
        add(this.checkFile(node, snapshot, path, name, id), name);
      }
    }
    const subs = new Array<TreeDamage>(dirs.length);
    await mapWithSpare(
      dirs.map((d, i) => ({ ...d, i })),
      this.branches,
      async (d) => {
        subs[d.i] = await this.visitTree(d.subtree, snapshot, joinPath(path, d.name));
      },
    );
    dirs.forEach((d, i) => {
      const sub = subs[i];
      add(sub.self, d.name);
      for (const [p, rel] of sub.inner) {
        const list = inner.get(p) ?? [];
        inner.set(p, list);
        for (const r of rel) {
          if (list.length >= MAX_PATHS) break;
          list.push(d.name + "/" + r);
        }
      }
    });
    return self.length || inner.size ? { self, inner } : NO_DAMAGE;
  }

  /** Problems that endanger a blob in `packId`: its pack damaged as a whole, or the blob itself damaged. */
  private blobProblems(hex: string, packId: string): number[] {
    return [...(this.packDamage.get(packId) ?? []), ...(this.blobDamage.get(hex) ?? [])];
  }

  /**
   * Checks a file node's content (at `name` in the tree at `path`); returns the problems that
   * affect it. Called for every file of every snapshot walked: nothing is allocated for a file
   * without problems (a Set, a path, a location and an ID buffer per blob were most of the
   * many-files check's garbage).
   */
  private checkFile(node: NodeJSON, snapshot: string, path: string, name: string, treeId: string): ReadonlySet<number> {
    let problems: Set<number> | undefined;
    const found = (p: number): Set<number> => (problems ??= new Set()).add(p);
    const where = (): string => this.where(snapshot, joinPath(path, name));
    const content = node.content ?? [];
    if (!Array.isArray(content)) return found(this.problem({ kind: "tree", message: `tree ${shortId(treeId)}…: file ${where()} has an invalid content list` }));
    const damaged = this.packDamage.size > 0 || this.blobDamage.size > 0;
    let size = 0;
    let missing = 0;
    let firstMissing = "";
    for (const hex of content) {
      if (typeof hex !== "string" || !isIdHex(hex)) {
        return found(this.problem({ kind: "tree", message: `tree ${shortId(treeId)}…: file ${where()} names an invalid blob ID` }));
      }
      ID_SCRATCH.write(hex, "hex");
      const i = this.idx.find(ID_SCRATCH, "data");
      if (i < 0) {
        if (!missing) firstMissing = hex;
        missing++;
        continue;
      }
      size += this.idx.uncompressedLengthAt(i) || this.idx.lengthAt(i) - EXTENSION;
      if (damaged) for (const p of this.blobProblems(hex, this.idx.packIdAt(i))) found(p);
    }
    if (missing) {
      found(
        this.problem({
          kind: "missing-blob",
          message: `file ${where()}: ${missing} of ${content.length} content blobs are not in the index (first: ${shortId(firstMissing)}…)`,
        }),
      );
      for (const p of this.indexProblems) found(p);
    } else if (size !== (node.size ?? 0)) {
      found(this.problem({ kind: "tree", message: `tree ${shortId(treeId)}…: file ${where()} has size ${node.size ?? 0} but its content holds ${size} bytes` }));
    }
    return problems ?? NO_PROBLEMS;
  }

  private async loadTree(id: string, loc: BlobLocation): Promise<NodeJSON[]> {
    while (this.treeSlots === 0) await new Promise<void>((r) => this.treeWaiters.push(r));
    this.treeSlots--;
    let raw: Buffer;
    try {
      const sealed = await this.repo.loadSealed(loc);
      if (sealed.length !== loc.length) throw new Error(`pack ${packFile(loc.packId)} is too short`);
      raw = this.repo.decodeBlob(loc, sealed, Buffer.from(id, "hex"));
    } finally {
      this.treeSlots++;
      this.treeWaiters.shift()?.();
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(raw.toString("utf8"));
    } catch (err) {
      throw new Error(`it is not valid JSON (${errorMessage(err)})`);
    }
    const nodes = (parsed as { nodes?: unknown } | null)?.nodes;
    if (nodes === null || nodes === undefined) return [];
    if (!Array.isArray(nodes) || nodes.some((n) => !n || typeof n !== "object" || typeof (n as NodeJSON).name !== "string")) {
      throw new Error("its node list is invalid");
    }
    return nodes as NodeJSON[];
  }
}

/** Compares a pack's header with the index's entries; returns what differs, or undefined. */
function compareHeader(header: BlobTable, entries: BlobTable): string | undefined {
  if (header.count !== entries.count) return `its header lists ${header.count} blobs, the index ${entries.count}`;
  if (sameBytes(header.ids, entries.ids) && sameBytes(header.trees, entries.trees) && sameBytes(header.spans, entries.spans)) return undefined;
  for (let i = 0; i < header.count; i++) {
    const h = tableEntry(header, i);
    const e = tableEntry(entries, i);
    if (!h.id.equals(e.id) || h.type !== e.type || h.offset !== e.offset || h.length !== e.length || h.uncompressedLength !== e.uncompressedLength) {
      return `header entry ${i} (${h.type} blob ${shortId(h.id.toString("hex"))}… at ${h.offset}+${h.length}) differs from the index (${e.type} blob ${shortId(e.id.toString("hex"))}… at ${e.offset}+${e.length})`;
    }
  }
  return undefined;
}

function sameBytes(a: ArrayBufferView, b: ArrayBufferView): boolean {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
}

/** Parses --read-data-subset: "n/m" or "x%". Returns the selection predicate. */
export function parseSubset(spec: string): (packId: string, all: string[]) => boolean {
  const bucket = /^\s*(\d+)\s*\/\s*(\d+)\s*$/.exec(spec);
  if (bucket) {
    const n = Number(bucket[1]);
    const m = Number(bucket[2]);
    if (m < 1 || m > 256 || n < 1 || n > m) {
      throw new SitekeepError("check.subset", `invalid data subset ${JSON.stringify(spec)}: n/m needs 1 <= n <= m <= 256`, {
        hint: 'use e.g. "1/5" (the first of five parts) or "10%"',
      });
    }
    return (id) => parseInt(id.slice(0, 2), 16) % m === n - 1;
  }
  const pct = /^\s*(\d+(?:\.\d+)?)\s*%\s*$/.exec(spec);
  if (pct) {
    const p = Number(pct[1]);
    if (!(p > 0 && p <= 100)) {
      throw new SitekeepError("check.subset", `invalid data subset ${JSON.stringify(spec)}: the percentage must be above 0 and at most 100`, {
        hint: 'use e.g. "10%"',
      });
    }
    let chosen: Set<string> | undefined;
    return (id, all) => {
      if (!chosen) chosen = sample(all, Math.max(1, Math.floor((all.length * p) / 100)));
      return chosen.has(id);
    };
  }
  throw new SitekeepError("check.subset", `invalid data subset ${JSON.stringify(spec)}`, {
    hint: 'use "n/m" (e.g. "1/5") or a percentage (e.g. "10%")',
  });
}

function sample(all: string[], k: number): Set<string> {
  const a = [...all];
  const n = Math.min(k, a.length);
  for (let i = 0; i < n; i++) {
    const j = i + Math.floor(Math.random() * (a.length - i));
    [a[i], a[j]] = [a[j], a[i]];
  }
  return new Set(a.slice(0, n));
}

/** One line for the CLI, then indented lines naming what the problem affects. */
export function formatProblem(p: CheckProblem): string {
  const lines = [p.message];
  for (const a of p.affects ?? []) {
    lines.push(`  affects snapshot ${shortId(a.snapshot)}:`);
    for (const path of a.paths) lines.push(`    ${path}`);
    if (a.paths.length >= MAX_PATHS) lines.push("    …");
  }
  return lines.join("\n");
}

function displayName(node: NodeJSON): string {
  try {
    return decodeName(node.name).toString("utf8");
  } catch {
    return node.name;
  }
}

function oneLine(s: string): string {
  return s.replace(/\s*\n\s*/g, " ");
}

function isCount(n: unknown): n is number {
  return typeof n === "number" && Number.isInteger(n) && n >= 0 && n <= 0xffffffff;
}

function byKey<V>(a: [string, V], b: [string, V]): number {
  return a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0;
}
