// The archiver: walks the sources, reuses content of unchanged files from the parent snapshot,
// chunks and stores the rest, writes one tree per directory and finally the snapshot.
// Paths follow restic: an absolute source keeps its directory chain (/srv/app -> srv/app), "." puts
// the working directory's contents at the root.
import { readdirSync, closeSync, constants as fsConstants, fstatSync, lstatSync, openSync, promises as fsp, readSync, type BigIntStats } from "node:fs";
import { constants as osConstants, hostname as osHostname, userInfo } from "node:os";
import { resolve, sep } from "node:path";
import { spawn } from "node:child_process";
import { SitekeepError, errorMessage, isErrnoError } from "../errors.js";
import type { PlainUse, Repository } from "../repo/repository.js";
import { Chunker } from "../repo/chunker.js";
import { sha256, sha256Text } from "../repo/id.js";
import type { Snapshot, SnapshotJSON } from "../repo/snapshot.js";
import { formatTimeNs, nowNs, formatDate } from "../util/gotime.js";
import { type DirStats, type ReadFiles, READ_FIELDS, ReadField, STAT_FIELDS, StatField, canReadFiles, errnoCode, listXattrs, getXattr, isUnsupportedXattrError, lstatDirAsync } from "../platform/fsx.js";
import { chunkBufferSize, forEachChunk, streamReader, type ReadFn } from "./chunk-reader.js";
import { type PathMatcher, compileExcludes } from "./exclude.js";
import { type ScanTotals, startScan } from "./scanner.js";
import { type SmallFilesShare, SmallFileReader } from "./small-file-reader.js";
import { Semaphore, mapLimit, mapWithSpare, settleAll } from "../util/concurrency.js";
import { type NodeJSON, decodeName, encodeName, fileNodeFromNumbers, goModeFromUnix, nodeFromStat, sameNode } from "./node.js";
import { loadTree, treeText } from "./tree.js";
import { type EncodedBatch, batchBlob } from "../repo/blob-codec.js";
import { PROGRAM_VERSION } from "../version.js";


const ENTRY_CONCURRENCY = 8;
/** Files chunked at once, as restic's default read concurrency: each holds a 9 MiB read buffer. */
const FILE_CONCURRENCY = 2;
/** Small files read per native call, and their bytes at most (one file may exceed it alone). */
const BATCH_FILES = 64;
const BATCH_BYTES = 4 * 1024 * 1024;
/**
 * Batches being read, encoded or stored at once. A batch goes from the thread pool (reading) to the
 * pool again (encoding) to this thread (packing); with few in flight, each hand-over woke a sleeping
 * thread (~50 µs on a VM) and a site of many tiny folders ran at the speed of those wake-ups
 * (3 -> 16: 18.6 -> 15.7 s for 320k files in 32k folders).
 */
const BATCH_CONCURRENCY = 16;
/**
 * Below this many batches out (waiting for a slot, being read or encoded), a folder's small files
 * leave at once; otherwise they wait to share a batch with other folders' (SmallFileReader).
 */
const BATCH_EAGER = 2;
/**
 * Subfolders walked beside the one each folder walks itself (mapWithSpare). Every folder being
 * walked holds its listing, its stats and the nodes of its finished entries until its last
 * subfolder is done; with eight subfolders at a time at every level, a walk of 32,000 folders
 * kept ~2,300 of them open at once.
 */
const WALK_BRANCHES = 32;

export interface BackupOptions {
  paths: string[];
  tags?: string[];
  host?: string;
  excludes?: string[];
  oneFileSystem?: boolean;
  /** Parent snapshot: an ID, "none" to read everything, or undefined for the latest of the same host and paths. */
  parent?: string;
  /** A command whose stdout becomes the file `stdinFilename` in the snapshot. */
  stdinCommand?: string;
  stdinFilename?: string;
  time?: Date;
  /** Use this tree as the parent (unchanged files are not read again) instead of a parent snapshot. */
  parentTree?: string;
  /**
   * Shared between archivers of one run (the site task's online and frozen passes): trees already
   * decoded, and the stat each node was made from, so the second walk reuses unchanged nodes and
   * whole unchanged folders without decoding, formatting or encoding anything again.
   */
  memo?: ArchiverMemo;
  /** Nodes added to the root of the tree next to the sources (must not collide with their names). */
  extraRootNodes?: NodeJSON[];
  onProgress?: (p: BackupProgress) => void;
  /**
   * With onProgress: also count what will be read, in a second walk alongside, for totals and an
   * ETA (default true). It costs about as much as an unchanged re-run's own walk.
   */
  scanTotals?: boolean;
  /** Aborts the run: nothing is committed. */
  signal?: AbortSignal;
}

export interface BackupProgress {
  files: number;
  dirs: number;
  bytes: number;
  bytesAdded: number;
  currentPath?: string;
  /** What the backup will read in all, once the scan that runs alongside has finished. */
  totalFiles?: number;
  totalBytes?: number;
}

export interface BackupWarning {
  path: string;
  message: string;
}

export interface BackupSummary {
  message_type: "summary";
  files_new: number;
  files_changed: number;
  files_unmodified: number;
  dirs_new: number;
  dirs_changed: number;
  dirs_unmodified: number;
  data_blobs: number;
  tree_blobs: number;
  data_added: number;
  total_files_processed: number;
  total_bytes_processed: number;
  total_duration: number;
  snapshot_id: string;
  parent?: string;
  warnings: BackupWarning[];
}

/** Where a node's stat numbers are: lstatDirAsync's array and the entry's offset in it. */
interface StatRef {
  f: Float64Array;
  b: number;
}

export interface ArchiverMemo {
  trees: Map<string, NodeJSON[]>;
  stat: WeakMap<NodeJSON, StatRef>;
  /**
   * Seconds since the epoch: files whose mtime or ctime is this recent are read again even when
   * their stat looks unchanged. A write in the same clock tick as the earlier pass's stat can leave
   * size and times as they were ("racy" files, as git calls them); set by the site task to the
   * online pass's start before the frozen pass.
   */
  racySince?: number;
}

export function newArchiverMemo(): ArchiverMemo {
  return { trees: new Map(), stat: new WeakMap() };
}

/** The parent snapshot's node itself when the new one says the same (see sameNode). */
function keepParentNode(prev: NodeJSON | undefined, node: NodeJSON): NodeJSON {
  return prev !== undefined && sameNode(prev, node) ? prev : node;
}

/** Same stat (every field but the errno slot): the node made from one is the node of the other. */
function sameStat(x: StatRef, y: StatRef): boolean {
  for (let k = 0; k < STAT_FIELDS - 1; k++) if (x.f[x.b + k] !== y.f[y.b + k]) return false;
  return true;
}

function statRefBig(st: BigIntStats): StatRef {
  const f = new Float64Array(STAT_FIELDS);
  const put = (i: number, ns: bigint): void => {
    f[i] = Number(ns / 1_000_000_000n);
    f[i + 1] = Number(ns % 1_000_000_000n);
  };
  f[StatField.mode] = Number(st.mode);
  f[StatField.uid] = Number(st.uid);
  f[StatField.gid] = Number(st.gid);
  f[StatField.nlink] = Number(st.nlink);
  f[StatField.size] = Number(st.size);
  f[StatField.ino] = Number(st.ino);
  f[StatField.dev] = Number(st.dev);
  f[StatField.rdev] = Number(st.rdev);
  put(StatField.atimeSec, st.atimeNs);
  put(StatField.mtimeSec, st.mtimeNs);
  put(StatField.ctimeSec, st.ctimeNs);
  return { f, b: 0 };
}

export interface BuiltTree {
  tree: string;
  /** The absolute source paths, sorted: the snapshot's `paths`. */
  paths: string[];
  parent?: Snapshot;
  /** The root tree's nodes. */
  nodes: NodeJSON[];
}

interface Source {
  /** Absolute filesystem path of the source (Buffer-safe string). */
  abs: string;
  /** Path elements from the snapshot root to the source. */
  elements: string[];
}

/** The virtual top of the tree: intermediate directories down to each source. */
interface VirtualDir {
  abs: string;
  children: Map<string, VirtualDir | Source>;
}

export class Archiver {
  private readonly chunker: Chunker;
  private readonly exclude: PathMatcher;
  /** Reusable read buffers for files that need chunking (chunkBufferSize: a maximum chunk and 1 MiB). */
  private readonly buffers: Buffer[] = [];
  private readonly fileSlots = new Semaphore(FILE_CONCURRENCY);
  private readonly smallFiles: SmallFileReader;
  private readonly branches = new Semaphore(WALK_BRANCHES);
  private readonly warnings: BackupWarning[] = [];
  private readonly progress: BackupProgress = { files: 0, dirs: 0, bytes: 0, bytesAdded: 0 };
  private readonly stats = {
    files_new: 0,
    files_changed: 0,
    files_unmodified: 0,
    dirs_new: 0,
    dirs_changed: 0,
    dirs_unmodified: 0,
    data_blobs: 0,
    tree_blobs: 0,
  };
  private lastProgress = 0;
  private readonly started = Date.now();
  private readonly hasExcludes: boolean;
  private rootDev: bigint | undefined;
  private scan: ScanTotals | undefined;

  constructor(
    private readonly repo: Repository,
    private readonly opts: BackupOptions,
  ) {
    this.chunker = new Chunker(repo.polynomial);
    this.smallFiles = new SmallFileReader((data, offsets, lengths) => repo.encodeSmallBlobs(data, offsets, lengths), {
      maxFiles: BATCH_FILES,
      maxBytes: BATCH_BYTES,
      slots: BATCH_CONCURRENCY,
      eager: BATCH_EAGER,
    });
    this.exclude = compileExcludes(opts.excludes ?? []);
    this.hasExcludes = (opts.excludes ?? []).some((p) => p.trim() && !p.trim().startsWith("#"));
  }

  /** Backs up the sources and commits the snapshot (what `sitekeep backup` does). */
  async run(): Promise<BackupSummary> {
    const opts = this.opts;
    if (opts.stdinCommand !== undefined) {
      const name = opts.stdinFilename ?? "stdin";
      const node = await this.commandFileNode(opts.stdinCommand, name);
      return this.commit({ tree: await this.saveTree([node]), paths: ["/" + name] });
    }
    return this.commit(await this.buildTree());
  }

  /**
   * Reads the sources into trees and returns the root tree, without committing a snapshot. The
   * parent is opts.parentTree when given, else the parent snapshot (opts.parent or the latest of
   * the same host and paths).
   */
  async buildTree(): Promise<BuiltTree> {
    const opts = this.opts;
    if (opts.paths.length === 0) {
      throw new SitekeepError("backup.nopaths", "nothing to back up: no paths given", { hint: "name at least one file or folder" });
    }
    const sources = await this.resolveSources(opts.paths);
    const paths = sources.map((s) => s.abs).sort();
    const parent = opts.parentTree ? undefined : await this.findParent(opts.host ?? osHostname(), paths);
    const root = this.buildVirtual(sources);
    if (opts.onProgress && opts.scanTotals !== false && !this.scan) this.scan = startScan(paths, this.exclude, opts.signal);
    const parentNodes = await this.safeLoadTree(opts.parentTree ?? parent?.tree);
    const nodes = await this.virtualNodes(root, "", parentNodes);
    nodes.push(...(opts.extraRootNodes ?? []));
    await this.repo.drainEncodes(); // so that totals count every blob this walk added
    const tree = await this.saveTree(nodes);
    return { tree, paths, ...(parent ? { parent } : {}), nodes };
  }

  /** Stores a stream (a database dump, a command's output) as a file node named `name`. */
  async streamFileNode(name: string, read: ReadFn, meta: { mode?: number; mtime?: Date } = {}): Promise<NodeJSON> {
    const content = await this.storeChunks(read);
    this.progress.files++;
    this.stats.files_new++;
    const time = meta.mtime ? formatDate(meta.mtime) : formatTimeNs(nowNs());
    const user = safeUser();
    return {
      name: encodeName(Buffer.from(name)),
      type: "file",
      mode: meta.mode ?? 0o600,
      mtime: time,
      atime: time,
      ctime: time,
      uid: user.uid,
      gid: user.gid,
      size: content.size || undefined,
      content: content.ids,
    };
  }

  /** Stores a directory node holding `children` (for content that has no folder on disk). */
  async dirNode(name: string, children: NodeJSON[], mode = 0o700): Promise<NodeJSON> {
    const subtree = await this.saveTree(children);
    this.stats.dirs_new++;
    const now = formatTimeNs(nowNs());
    const user = safeUser();
    return { name: encodeName(Buffer.from(name)), type: "dir", mode: goModeFromUnix(0o040000 | mode), mtime: now, atime: now, ctime: now, uid: user.uid, gid: user.gid, content: null, subtree };
  }

  /** Stores a root tree made of these nodes (for callers that compose the root themselves). */
  rootTree(nodes: NodeJSON[]): Promise<string> {
    return this.saveTree(nodes);
  }

  /** Flushes everything stored and writes the snapshot file: the only step that makes data visible. */
  async commit(t: { tree: string; paths: string[]; parent?: Snapshot }, started = this.started): Promise<BackupSummary> {
    const opts = this.opts;
    this.checkAbort();
    await this.repo.flush();
    const user = safeUser();
    const snap: SnapshotJSON = {
      time: opts.time ? formatDate(opts.time) : formatTimeNs(nowNs()),
      ...(t.parent ? { parent: t.parent.id } : {}),
      tree: t.tree,
      paths: t.paths,
      hostname: opts.host ?? osHostname(),
      username: user.username,
      ...(user.uid ? { uid: user.uid } : {}),
      ...(user.gid ? { gid: user.gid } : {}),
      ...(opts.excludes?.length ? { excludes: opts.excludes } : {}),
      ...(opts.tags?.length ? { tags: opts.tags } : {}),
      program_version: PROGRAM_VERSION,
    };
    // The snapshot is written last: until then nothing refers to the new data.
    this.checkAbort();
    const id = await this.repo.saveSnapshot(snap);
    return {
      message_type: "summary",
      ...this.stats,
      data_added: this.progress.bytesAdded,
      total_files_processed: this.progress.files,
      total_bytes_processed: this.progress.bytes,
      total_duration: (Date.now() - started) / 1000,
      snapshot_id: id,
      ...(t.parent ? { parent: t.parent.id } : {}),
      warnings: this.warnings,
    };
  }

  /** Files, bytes and warnings so far (for callers that build trees without committing). */
  get totals(): { stats: Omit<BackupSummary, "message_type" | "snapshot_id" | "parent" | "warnings" | "total_duration">; warnings: BackupWarning[] } {
    return {
      stats: { ...this.stats, data_added: this.progress.bytesAdded, total_files_processed: this.progress.files, total_bytes_processed: this.progress.bytes },
      warnings: this.warnings,
    };
  }

  private checkAbort(): void {
    if (this.opts.signal?.aborted) {
      throw new SitekeepError("backup.interrupted", "backup interrupted; no snapshot was written", { exitCode: 130 });
    }
  }

  private async resolveSources(paths: string[]): Promise<Source[]> {
    const out: Source[] = [];
    for (const p of paths) {
      const abs = resolve(p);
      try {
        await fsp.lstat(abs);
      } catch (err) {
        throw new SitekeepError("backup.source", `cannot back up ${p}: ${isErrnoError(err, "ENOENT") ? "no such file or directory" : errorMessage(err)}`, {
          hint: "check the path; every named source must exist",
        });
      }
      // "." and other relative paths to the working directory put their contents at the root (restic).
      const elements = p === "." || resolve(p) === process.cwd() ? [] : abs.split(sep).filter(Boolean);
      out.push({ abs, elements });
    }
    return out;
  }

  private buildVirtual(sources: Source[]): VirtualDir | Source {
    const rootSrc = sources.find((s) => s.elements.length === 0);
    if (rootSrc) {
      if (sources.length > 1) {
        throw new SitekeepError("backup.sources", "\".\" cannot be combined with other paths in one backup", {
          hint: "back up the parent folder instead, or run separate backups",
        });
      }
      return rootSrc;
    }
    const root: VirtualDir = { abs: "/", children: new Map() };
    for (const s of sources) {
      let dir = root;
      for (let i = 0; i < s.elements.length - 1; i++) {
        const el = s.elements[i];
        let next = dir.children.get(el);
        if (!next) {
          next = { abs: "/" + s.elements.slice(0, i + 1).join("/"), children: new Map() };
          dir.children.set(el, next);
        }
        if (!("children" in next)) break; // a parent of this source is itself a source: it is inside it
        dir = next;
      }
      const last = s.elements[s.elements.length - 1];
      if (!dir.children.has(last)) dir.children.set(last, s);
    }
    return root;
  }

  private async findParent(host: string, paths: string[]): Promise<Snapshot | undefined> {
    const ref = this.opts.parent;
    if (ref === "none") return undefined;
    try {
      if (ref) return await this.repo.findSnapshot(ref);
      const key = JSON.stringify(paths);
      const all = await this.repo.listSnapshots(() => undefined);
      return all.find((s) => s.hostname === host && JSON.stringify([...s.paths].sort()) === key);
    } catch (err) {
      if (ref) throw err;
      return undefined;
    }
  }

  private async safeLoadTree(id: string | undefined): Promise<Map<string, NodeJSON> | undefined> {
    if (!id) return undefined;
    try {
      const nodes = this.opts.memo?.trees.get(id) ?? (await loadTree(this.repo, id));
      return new Map(nodes.map((n) => [n.name, n]));
    } catch {
      return undefined; // an unreadable parent only costs speed
    }
  }

  /** Nodes at one level of the virtual tree (or of the single "." source). */
  private async virtualNodes(v: VirtualDir | Source, _path: string, parent: Map<string, NodeJSON> | undefined): Promise<NodeJSON[]> {
    if (!("children" in v)) {
      const st = await fsp.lstat(v.abs, { bigint: true });
      if (!st.isDirectory()) {
        throw new SitekeepError("backup.source", `"." must be a directory`);
      }
      this.rootDev = st.dev;
      return this.dirEntries(Buffer.from(v.abs), v.abs, Promise.resolve(parent));
    }
    const nodes: NodeJSON[] = [];
    for (const [name, child] of v.children) {
      const prev = parent?.get(encodeName(Buffer.from(name)));
      if ("children" in child) {
        const st = await fsp.lstat(child.abs, { bigint: true });
        const node = nodeFromStat(Buffer.from(name), st);
        const sub = await this.virtualNodes(child, child.abs, await this.safeLoadTree(prev?.subtree));
        node.subtree = await this.saveTree(sub);
        nodes.push(node);
      } else {
        const st = await fsp.lstat(child.abs, { bigint: true });
        this.rootDev = st.dev;
        const node = await this.entryNode(Buffer.from(child.abs), child.abs, Buffer.from(name), st, prev);
        if (node) nodes.push(node);
      }
    }
    return nodes;
  }

  /** `parentTree`: the parent snapshot's tree of this folder, loading while the folder is listed. */
  private async dirEntries(absDir: Buffer, displayDir: string, parentTree: Promise<Map<string, NodeJSON> | undefined> | undefined): Promise<NodeJSON[]> {
    let plain: Buffer[] | undefined;
    let fast: DirStats | undefined;
    try {
      // One native call on the thread pool for the names and their lstat where the addon is built:
      // an incremental walk over unchanged files (the site task's frozen pass) is mostly these calls.
      fast = await lstatDirAsync(absDir);
      if (!fast) plain = readdirSync(absDir, { encoding: "buffer" });
    } catch (err) {
      this.warn(displayDir, `cannot read directory: ${errorMessage(err)}`);
      await parentTree; // never rejects (safeLoadTree)
      return [];
    }
    const parent = await parentTree;
    const sep = absDir[absDir.length - 1] === 0x2f ? Buffer.alloc(0) : Buffer.from("/");
    const nodes: NodeJSON[] = [];
    let slow: number[] = [];
    const count = fast ? fast.count : (plain as Buffer[]).length;
    for (let i = 0; i < count; i++) {
      const reused = fast ? this.unchangedFile(fast, i, absDir, displayDir, sep, parent) : undefined;
      if (reused === null) continue; // excluded
      if (reused) nodes.push(reused);
      else slow.push(i);
    }
    // Small regular files are read in batches on the thread pool (native readfiles) while the
    // main thread hashes and packs what has been read; everything else takes the general path.
    const batched: number[] = [];
    if (fast && canReadFiles()) {
      const rest: number[] = [];
      for (const i of slow) (this.batchable(fast, i) ? batched : rest).push(i);
      slow = rest;
    }
    const small = fast && batched.length ? this.readSmallFiles(absDir, sep, fast, batched, parent, nodes) : Promise.resolve();
    // Subfolders known from the listing are walked one at a time, and more beside it while the
    // whole walk has a branch free (WALK_BRANCHES).
    const folders: number[] = [];
    if (fast) {
      const rest: number[] = [];
      for (const i of slow) (listedAs(fast, i, 0o040000) ? folders : rest).push(i);
      slow = rest;
    }
    // Entries are handled concurrently so that file system latency overlaps with hashing and
    // compression; reads and stats are bounded by global semaphores, never held across recursion.
    const entry = async (i: number): Promise<void> => {
      this.checkAbort();
      const rawName = fast ? fast.names[i] : (plain as Buffer[])[i];
      const abs = Buffer.concat([absDir, sep, rawName]);
      const display = abs.toString("utf8");
      if (this.exclude(display)) return;
      let st: BigIntStats;
      try {
        // Synchronous on purpose: for a stat, fs/promises' overhead costs more than the call itself.
        st = lstatSync(abs, { bigint: true });
      } catch (err) {
        this.warn(display, `cannot stat: ${errorMessage(err)}`);
        return;
      }
      const node = await this.entryNode(abs, display, rawName, st, parent?.get(encodeName(rawName)));
      if (node) nodes.push(node);
    };
    const general = mapLimit(slow, ENTRY_CONCURRENCY, entry);
    // All settle before this folder is done, even when one fails.
    await settleAll([small, general, mapWithSpare(folders, this.branches, entry)]);
    return nodes;
  }

  /** A regular file below the minimum chunk size, listed without error: one read, one blob. */
  private batchable(fast: DirStats, i: number): boolean {
    return listedAs(fast, i, 0o100000) && fast.stats[i * STAT_FIELDS + StatField.size] < this.chunker.options.min;
  }

  /**
   * Reads the small files `idx` of a folder in groups, with other folders' files where several are
   * being walked (SmallFileReader), has them encoded off this thread and makes their nodes. A
   * group's share of its batch is released once its blobs are queued for packing, which bounds the
   * bytes read ahead (the packs copy the sealed bytes they take).
   */
  private async readSmallFiles(absDir: Buffer, sep: Buffer, fast: DirStats, idx: number[], parent: Map<string, NodeJSON> | undefined, nodes: NodeJSON[]): Promise<void> {
    const f = fast.stats;
    const todo: number[] = [];
    for (const i of idx) {
      if (!this.hasExcludes || !this.exclude(Buffer.concat([absDir, sep, fast.names[i]]).toString("utf8"))) todo.push(i);
    }
    for (let start = 0; start < todo.length; ) {
      this.checkAbort();
      let end = start;
      let bytes = 0;
      while (end < todo.length && end - start < BATCH_FILES && (end === start || bytes + f[todo[end] * STAT_FIELDS + StatField.size] <= BATCH_BYTES)) {
        bytes += f[todo[end] * STAT_FIELDS + StatField.size] + 1;
        end++;
      }
      const group = todo.slice(start, end);
      start = end;
      let share: SmallFilesShare;
      try {
        share = await this.smallFiles.read(
          absDir,
          sep,
          group.map((i) => fast.names[i]),
          group.map((i) => f[i * STAT_FIELDS + StatField.size]),
        );
      } catch (err) {
        for (const i of group) this.warn(Buffer.concat([absDir, sep, fast.names[i]]).toString("utf8"), `cannot read file: ${errorMessage(err)}`);
        continue;
      }
      try {
        for (let k = 0; k < group.length; k++) {
          const node = await this.smallFileNode(absDir, sep, fast, group[k], share.r, share.first + k, share.enc, parent);
          if (node) nodes.push(node);
        }
      } finally {
        share.release();
      }
    }
  }

  private async smallFileNode(absDir: Buffer, sep: Buffer, fast: DirStats, i: number, r: ReadFiles, k: number, enc: EncodedBatch, parent: Map<string, NodeJSON> | undefined): Promise<NodeJSON | undefined> {
    const f = fast.stats;
    const b = i * STAT_FIELDS;
    const rb = k * READ_FIELDS;
    const rawName = fast.names[i];
    const abs = Buffer.concat([absDir, sep, rawName]);
    const display = abs.toString("utf8");
    const errno = r.f[rb + ReadField.errno];
    if (errno) {
      // EINVAL: replaced by something other than a regular file since the folder was listed.
      this.warn(display, errno === osConstants.errno.EINVAL ? "cannot read file: it is no longer a regular file" : `cannot read file: ${errnoCode(errno)}, open '${display}'`);
      return undefined;
    }
    const stored = encodeName(rawName);
    const prev = parent?.get(stored);
    const length = r.f[rb + ReadField.length];
    if (length > f[b + StatField.size]) {
      // Grew since the folder was listed: take the general path, which chunks it if it must.
      let st: BigIntStats;
      try {
        st = lstatSync(abs, { bigint: true });
      } catch (err) {
        this.warn(display, `cannot stat: ${errorMessage(err)}`);
        return undefined;
      }
      return this.entryNode(abs, display, rawName, st, prev);
    }
    const node = fileNodeFromNumbers(stored, f, i);
    if (
      r.f[rb + ReadField.size] !== f[b + StatField.size] ||
      r.f[rb + ReadField.mtimeSec] !== f[b + StatField.mtimeSec] ||
      r.f[rb + ReadField.mtimeNsec] !== f[b + StatField.mtimeNsec] ||
      r.f[rb + ReadField.ctimeSec] !== f[b + StatField.ctimeSec] ||
      r.f[rb + ReadField.ctimeNsec] !== f[b + StatField.ctimeNsec]
    ) {
      this.warn(display, "file changed while it was read; the snapshot holds what was read");
    }
    if (prev && prev.type === "file" && prev.ctime === node.ctime && prev.inode !== undefined && prev.inode === node.inode) {
      if (prev.extended_attributes) node.extended_attributes = prev.extended_attributes;
    } else if (r.f[rb + ReadField.xattrListSize] > 0) this.addXattrs(abs, display, node);
    this.progress.files++;
    this.progress.currentPath = display;
    node.content = length ? [await this.storeEncoded(enc, k, length)] : [];
    node.size = length || undefined;
    if (!prev) this.stats.files_new++;
    else this.stats.files_changed++;
    this.opts.memo?.stat.set(node, { f, b });
    return node;
  }

  /**
   * The fast path of an incremental walk: a regular file whose size, mtime, ctime and inode equal
   * the parent snapshot's reuses its content without a BigInt lstat or a read. Returns null for an
   * excluded entry and undefined when the entry needs the full path (anything else).
   */
  private unchangedFile(fast: DirStats, i: number, absDir: Buffer, displayDir: string, sep: Buffer, parent: Map<string, NodeJSON> | undefined): NodeJSON | null | undefined {
    const b = i * STAT_FIELDS;
    const f = fast.stats;
    if (!parent || !listedAs(fast, i, 0o100000)) return undefined;
    // A folder of plain ASCII names needs no Buffer per name: the stored name is the name.
    const simple = fast.simpleNames;
    const stored = simple ? simple[i] : encodeName(fast.names[i]);
    const prev = parent.get(stored);
    if (!prev || prev.type !== "file") return undefined;
    const memo = this.opts.memo;
    if (memo?.racySince !== undefined && Math.max(f[b + StatField.mtimeSec], f[b + StatField.ctimeSec]) >= memo.racySince) return undefined;
    const ref: StatRef = { f, b };
    const display = (): string => (simple ? displayDir + sep.toString("latin1") + stored : Buffer.concat([absDir, sep, fast.names[i]]).toString("utf8"));
    if (this.hasExcludes && this.exclude(display())) return null;
    const was = memo?.stat.get(prev);
    if (was && sameStat(was, ref)) {
      // Made from this very stat a moment ago (the online pass): the node itself is reused.
      this.progress.files++;
      this.progress.bytes += prev.size ?? 0;
      this.stats.files_unmodified++;
      this.report();
      return prev;
    }
    let node = fileNodeFromNumbers(stored, f, i);
    if (!this.unchanged(prev, node) || !this.allKnown(prev.content)) return undefined;
    if (prev.extended_attributes) node.extended_attributes = prev.extended_attributes; // same inode and ctime: same attributes
    node.content = prev.content;
    node.size = prev.size;
    node = keepParentNode(prev, node);
    memo?.stat.set(node, ref);
    this.progress.files++;
    this.progress.bytes += prev.size ?? 0;
    this.progress.currentPath = display();
    this.stats.files_unmodified++;
    this.report();
    return node;
  }

  private async entryNode(
    abs: Buffer,
    display: string,
    rawName: Buffer,
    st: BigIntStats,
    prev: NodeJSON | undefined,
  ): Promise<NodeJSON | undefined> {
    let node: NodeJSON;
    if (st.isSymbolicLink()) {
      let target: Buffer;
      try {
        target = await fsp.readlink(abs, { encoding: "buffer" });
      } catch (err) {
        this.warn(display, `cannot read symlink: ${errorMessage(err)}`);
        return undefined;
      }
      node = nodeFromStat(rawName, st, target);
    } else node = nodeFromStat(rawName, st);
    // Setting or removing an extended attribute changes the ctime: with the same inode and ctime
    // the parent's attributes are still current, and listing them for every unchanged file cost
    // as much as the lstat itself.
    if (prev && prev.type === node.type && prev.ctime === node.ctime && prev.inode !== undefined && prev.inode === node.inode) {
      if (prev.extended_attributes) node.extended_attributes = prev.extended_attributes;
    } else this.addXattrs(abs, display, node);
    if (st.isDirectory()) {
      if (this.opts.oneFileSystem && this.rootDev !== undefined && st.dev !== this.rootDev) {
        // restic keeps the mount point as an empty directory.
        node.subtree = await this.saveTree([]);
        return node;
      }
      this.progress.dirs++;
      const parentTree = this.safeLoadTree(prev?.subtree);
      const sub = await this.dirEntries(abs, display, parentTree);
      const parentNodes = await parentTree;
      // Every entry the very node object of the parent tree: the folder's tree is the parent's.
      const sameEntries = prev?.subtree !== undefined && parentNodes !== undefined && sub.length === parentNodes.size && sub.every((n) => parentNodes.get(n.name) === n);
      if (sameEntries) {
        node.subtree = prev?.subtree as string;
        this.opts.memo?.trees.set(node.subtree, sub); // the next pass finds it as if saveTree had run
      } else node.subtree = await this.saveTree(sub);
      if (!prev) this.stats.dirs_new++;
      else if (prev.subtree === node.subtree) this.stats.dirs_unmodified++;
      else this.stats.dirs_changed++;
      const kept = keepParentNode(prev, node);
      this.opts.memo?.stat.set(kept, statRefBig(st));
      return kept;
    }
    if (st.isFile()) {
      this.progress.files++;
      this.progress.currentPath = display;
      const racy = this.opts.memo?.racySince !== undefined && Number((st.mtimeNs > st.ctimeNs ? st.mtimeNs : st.ctimeNs) / 1_000_000_000n) >= this.opts.memo.racySince;
      if (prev && prev.type === "file" && !racy && this.unchanged(prev, node) && this.allKnown(prev.content)) {
        node.content = prev.content;
        node.size = prev.size;
        this.progress.bytes += prev.size ?? 0;
        this.stats.files_unmodified++;
        this.report();
        return keepParentNode(prev, node);
      }
      const content = await this.readFile(abs, display, st);
      if (!content) return undefined;
      node.content = content.ids;
      node.size = content.size || undefined;
      if (!prev) this.stats.files_new++;
      else this.stats.files_changed++;
      this.opts.memo?.stat.set(node, statRefBig(st));
      return node;
    }
    return keepParentNode(prev, node);
  }

  private unchanged(prev: NodeJSON, cur: NodeJSON): boolean {
    return prev.size === cur.size && prev.mtime === cur.mtime && prev.ctime === cur.ctime && prev.inode === cur.inode;
  }

  private allKnown(content: string[] | null): boolean {
    if (!content) return false;
    return content.every((h) => this.repo.hasBlob("data", Buffer.from(h, "hex")));
  }

  private addXattrs(abs: Buffer, display: string, node: NodeJSON): void {
    let names: string[];
    try {
      names = listXattrs(abs);
    } catch (err) {
      if (!isUnsupportedXattrError(err) && !isErrnoError(err, "ENOENT")) this.warn(display, `cannot list extended attributes: ${errorMessage(err)}`);
      return;
    }
    if (names.length === 0) return;
    node.extended_attributes = [];
    for (const name of names.sort()) {
      try {
        node.extended_attributes.push({ name, value: getXattr(abs, name).toString("base64") });
      } catch (err) {
        this.warn(display, `cannot read extended attribute ${name}: ${errorMessage(err)}`);
      }
    }
  }

  private async readFile(abs: Buffer, display: string, st: BigIntStats): Promise<{ ids: string[]; size: number } | undefined> {
    await this.fileSlots.acquire();
    try {
      return await this.readFileNow(abs, display, st);
    } finally {
      this.fileSlots.release();
    }
  }

  private async readFileNow(abs: Buffer, display: string, st: BigIntStats): Promise<{ ids: string[]; size: number } | undefined> {
    if (st.size < BigInt(this.chunker.options.min)) return this.readSmallFile(abs, display, st);
    return this.readLargeFile(abs, display, st);
  }

  private async readLargeFile(abs: Buffer, display: string, st: BigIntStats): Promise<{ ids: string[]; size: number } | undefined> {
    let fh: fsp.FileHandle;
    try {
      fh = await openNoAtime(abs);
    } catch (err) {
      this.warn(display, `cannot read file: ${errorMessage(err)}`);
      return undefined;
    }
    try {
      const read: ReadFn = async (buf, off, len) => (await fh.read(buf, off, len, null)).bytesRead;
      const buffer = this.buffers.pop() ?? Buffer.allocUnsafe(chunkBufferSize(this.chunker.options.max));
      let ids;
      try {
        ids = await this.storeChunks(read, buffer);
      } finally {
        this.buffers.push(buffer);
      }
      const after = await fh.stat({ bigint: true });
      if (after.mtimeNs !== st.mtimeNs || after.size !== st.size || after.ctimeNs !== st.ctimeNs) {
        this.warn(display, "file changed while it was read; the snapshot holds what was read");
      }
      return ids;
    } catch (err) {
      if (err instanceof SitekeepError) throw err;
      this.warn(display, `error while reading file: ${errorMessage(err)}`);
      return undefined;
    } finally {
      await fh.close();
    }
  }

  /** A file below the minimum chunk size is one chunk. Read synchronously: for small files the
   *  promise machinery of fs/promises costs several times the system calls themselves. */
  private async readSmallFile(abs: Buffer, display: string, st: BigIntStats): Promise<{ ids: string[]; size: number } | undefined> {
    const data = this.readWholeSync(abs, display, st);
    if (data === "grew") return this.readLargeFile(abs, display, st);
    if (data === undefined) return undefined;
    if (data.length === 0) return { ids: [], size: 0 };
    const size = data.length; // (storeChunk gives `data` away)
    return { ids: [await this.storeChunk(data, "free")], size };
  }

  private readWholeSync(abs: Buffer, display: string, st: BigIntStats): Buffer | "grew" | undefined {
    let fd: number;
    try {
      try {
        fd = openSync(abs, fsConstants.O_RDONLY | O_NOATIME);
      } catch (err) {
        if (!O_NOATIME || !isErrnoError(err, "EPERM")) throw err;
        fd = openSync(abs, "r"); // O_NOATIME is refused on other users' files without privilege
      }
    } catch (err) {
      this.warn(display, `cannot read file: ${errorMessage(err)}`);
      return undefined;
    }
    try {
      const buf = Buffer.allocUnsafe(Number(st.size) + 1);
      let n = 0;
      for (;;) {
        const r = readSync(fd, buf, n, buf.length - n, null);
        if (r === 0) break;
        n += r;
        if (n === buf.length) return "grew"; // larger than when it was stat'ed: chunk it as a large file
      }
      const after = fstatSync(fd, { bigint: true });
      if (after.mtimeNs !== st.mtimeNs || after.size !== st.size || after.ctimeNs !== st.ctimeNs) {
        this.warn(display, "file changed while it was read; the snapshot holds what was read");
      }
      return buf.subarray(0, n);
    } catch (err) {
      this.warn(display, `error while reading file: ${errorMessage(err)}`);
      return undefined;
    } finally {
      closeSync(fd);
    }
  }

  /**
   * Hashes a chunk and queues it for compression and packing, which run on the thread pool while
   * reading goes on. `use`: "free" when the chunk is the caller's to give away, or the read
   * buffer's hold when it is a view into a reused read buffer (the buffer is then left alone
   * until the chunk is sealed).
   */
  private async storeChunk(chunk: Buffer, use: PlainUse, hashed?: Buffer): Promise<string> {
    this.checkAbort();
    const id = hashed ?? sha256(chunk);
    const length = chunk.length; // (a chunk given away is the repository's once queued)
    if (!this.repo.hasBlob("data", id)) {
      // (A copy of the ID: it may be a view of cutAndHash's records, which the index must not pin.)
      const onStored = (stored: number): void => {
        this.progress.bytesAdded += stored;
      };
      if (await this.repo.queueBlob("data", chunk, Buffer.from(id), onStored, use)) this.stats.data_blobs++;
    }
    this.progress.bytes += length;
    this.report();
    return id.toString("hex");
  }

  /** storeChunk for blob k of a batch encoded by the repository's encodeSmallBlobs. */
  private async storeEncoded(enc: EncodedBatch, k: number, length: number): Promise<string> {
    this.checkAbort();
    const b = batchBlob(enc, k);
    if (await this.repo.queueEncoded("data", b.id, b.sealed, b.uncompressedLength)) {
      this.stats.data_blobs++;
      this.progress.bytesAdded += b.sealed.length;
    }
    this.progress.bytes += length;
    this.report();
    return b.id.toString("hex");
  }

  private async storeChunks(read: ReadFn, buffer?: Buffer): Promise<{ ids: string[]; size: number }> {
    const ids: string[] = [];
    const size = await forEachChunk(
      this.chunker,
      read,
      async (chunk, id, hold) => {
        ids.push(await this.storeChunk(chunk, hold, id));
      },
      buffer,
    );
    return { ids, size };
  }

  private async commandFileNode(command: string, name: string): Promise<NodeJSON> {
    const child = spawn("/bin/sh", ["-c", command], { stdio: ["ignore", "pipe", "pipe"] });
    let stderr = "";
    child.stderr.on("data", (d: Buffer) => {
      if (stderr.length < 4000) stderr += d.toString();
    });
    const exited = new Promise<number | null>((res, rej) => {
      child.on("error", rej);
      child.on("close", (code, signal) => res(signal ? 128 : code));
    });
    let node: NodeJSON;
    try {
      node = await this.streamFileNode(name, streamReader(child.stdout), { mode: 0o644 });
    } catch (err) {
      child.kill();
      throw err;
    }
    const code = await exited;
    if (code !== 0) {
      throw new SitekeepError("backup.command", `the command ${JSON.stringify(command)} exited with status ${code}; no snapshot was written${stderr ? ": " + stderr.trim().split("\n").slice(-3).join(" | ") : ""}`, {
        hint: "fix the command so that it exits 0 when its output is complete",
      });
    }
    return node;
  }

  private async saveTree(nodes: NodeJSON[]): Promise<string> {
    // As text up to the repository's batch: a Buffer per tree was ~115 MiB of short-lived
    // ArrayBuffers in a backup of 32,000 folders, each freed only by a collection.
    const text = treeText(nodes);
    const hash = sha256Text(text);
    const added = await this.repo.queueTree(text, hash, (stored) => {
      this.progress.bytesAdded += stored;
    });
    if (added) this.stats.tree_blobs++;
    const id = hash.toString("hex");
    this.opts.memo?.trees.set(id, nodes);
    return id;
  }

  private warn(path: string, message: string): void {
    this.warnings.push({ path, message });
  }

  private report(): void {
    const cb = this.opts.onProgress;
    if (!cb) return;
    const now = Date.now();
    if (now - this.lastProgress < 250) return;
    this.lastProgress = now;
    const totals = this.scan?.done ? { totalFiles: this.scan.files, totalBytes: this.scan.bytes } : {};
    cb({ ...this.progress, ...totals });
  }
}

/** Entry i of a listing was stat'ed without error and has the file type `type` (S_IFREG, S_IFDIR, ...). */
function listedAs(fast: DirStats, i: number, type: number): boolean {
  const b = i * STAT_FIELDS;
  return fast.stats[b + StatField.errno] === 0 && (fast.stats[b + StatField.mode] & 0o170000) === type;
}

const O_NOATIME = (fsConstants as Record<string, number>).O_NOATIME ?? 0;

/** Opens for reading without touching the file's atime (as restic does), so that reading a file
 *  does not make the next run see a changed node. O_NOATIME needs ownership or CAP_FOWNER. */
async function openNoAtime(p: Buffer): Promise<fsp.FileHandle> {
  if (O_NOATIME) {
    try {
      return await fsp.open(p, fsConstants.O_RDONLY | O_NOATIME);
    } catch (err) {
      if (!isErrnoError(err, "EPERM")) throw err;
      // Files owned by someone else refuse it unless we are privileged: read them the usual way.
    }
  }
  return fsp.open(p, "r");
}

function safeUser(): { username: string; uid: number; gid: number } {
  try {
    const u = userInfo();
    return { username: u.username, uid: u.uid, gid: u.gid };
  } catch {
    return { username: "", uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0 };
  }
}

export { decodeName };
