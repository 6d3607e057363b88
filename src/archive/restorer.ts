// The restorer: recreates a snapshot's tree under a target directory with content verified
// against blob hashes while writing, hard links as hard links, sparse files sparse, and metadata
// (mode, times with nanoseconds, ownership when root, extended attributes).
//
// It never writes outside the target: stored names with "/" or "." / ".." are refused, and an
// existing entry in the target that is not what we need (a planted symlink, say) is replaced, never
// followed.
import { chmodSync, constants, lchownSync, lstatSync, promises as fsp, unlinkSync } from "node:fs";
import { SitekeepError, errorMessage, isErrnoError } from "../errors.js";
import type { Repository } from "../repo/repository.js";
import { type NewFile, WriteStep, canWriteFiles, lutimesNs, mknod, setXattr, isUnsupportedXattrError, writeFiles } from "../platform/fsx.js";
import { DirectWrites, FileWriter } from "../platform/file-writer.js";
import { keepFreedMemoryForReuse, releaseBuffer } from "../platform/native.js";
import { compileExcludes, compileMayMatchBelow, type PathMatcher } from "./exclude.js";
import { type NodeJSON, decodeName, linkTargetBytes, timeNs, timeParts, unixPermFromGo, unixTypeBits } from "./node.js";
import { joinPath, loadTree } from "./tree.js";
import { Backlog, Semaphore, mapLimit, settleAll } from "../util/concurrency.js";

export interface RestoreOptions {
  target: string;
  /** Restore only paths matching these patterns (and the folders that lead to them). */
  includes?: string[];
  excludes?: string[];
  dryRun?: boolean;
  /**
   * Leave the metadata of existing folders that merely lead to included paths alone (they are
   * created when missing, with the snapshot's metadata).
   */
  keepAncestors?: boolean;
  /** Restore ownership; defaults to true when running as root. */
  ownership?: boolean;
  onProgress?: (p: RestoreProgress) => void;
  /** Called for each item in a dry run (and for each restored item when verbose). */
  onItem?: (path: string, node: NodeJSON) => void;
}

export interface RestoreProgress {
  files: number;
  dirs: number;
  bytes: number;
  totalFiles: number;
  totalBytes: number;
}

export interface RestoreError {
  path: string;
  message: string;
}

export interface RestoreSummary {
  message_type: "summary";
  files_restored: number;
  dirs_restored: number;
  bytes_restored: number;
  total_files: number;
  total_bytes: number;
  errors: RestoreError[];
  dry_run: boolean;
}

/**
 * Files written at once, over the whole restore. Creating a file costs 200-400 µs of the file
 * system's time here; with several in flight the disk and both cores stay busy.
 */
const WRITE_CONCURRENCY = 8;
/**
 * Blobs of a file loaded ahead of the one being written. One keeps the pool decoding while a blob
 * is written; with WRITE_CONCURRENCY files at once, three held ~30 MiB more of the mixed set's large
 * blobs for no time saved (its large files: 4.5-4.9 s with one, 4.6-5.1 s with three).
 */
const BLOBS_AHEAD = 1;
/**
 * Files at least this large are "large": written on slots of their own, and past the page cache
 * (DirectWrites) when SITEKEEP_DIRECT_IO=1 asks for it.
 */
const LARGE_FILE_MIN = 1024 * 1024;
const isLarge = (node: NodeJSON): boolean => (node.size ?? 0) >= LARGE_FILE_MIN;
/**
 * Large files written at once, beside WRITE_CONCURRENCY others. Sharing those slots, a folder of
 * large files (the mixed set's archives, 900 MB) took all of them, and the small files the walk
 * had queued waited; with two of their own, the mixed restore peaked 14-17 MiB lower and was no
 * slower (through the page cache, four runs each on session 23's VM: 7.8-8.1 s and one 10.8 s,
 * against 7.7-8.7 s and one 10.7 s).
 */
const LARGE_FILE_CONCURRENCY = 2;
/** Files of at most this size, one blob and no more to them than content and metadata, are written in batches. */
const SMALL_FILE_MAX = 256 * 1024;
/** A batch of small files of one folder: created in one thread-pool job. */
const BATCH_FILES = 64;
const BATCH_BYTES = 2 * 1024 * 1024;
/**
 * How many files the walk queues ahead of those being written. Writing each folder's files before
 * walking on kept a restore of many small folders at 1.3 of 2 cores (the pool mostly idle, waiting
 * for work); the walk is cheap, the files it queues are what memory holds.
 */
const WALK_AHEAD_FILES = 4 * WRITE_CONCURRENCY * BATCH_FILES;
/** Takes a written blob's place in the read-ahead list, so that its bytes can be freed. */
const EMPTY: Promise<Buffer> = Promise.resolve(Buffer.alloc(0));

export class Restorer {
  private readonly include: PathMatcher | undefined;
  /** Whether something below a folder could be included (with include patterns only). */
  private readonly mayIncludeBelow: (dir: string) => boolean;
  private readonly exclude: PathMatcher;
  private readonly ownership: boolean;
  private readonly errors: RestoreError[] = [];
  private readonly progress: RestoreProgress = { files: 0, dirs: 0, bytes: 0, totalFiles: 0, totalBytes: 0 };
  /**
   * "device:inode" of multiply-linked files -> where the first one is restored, and whether it was
   * (settled once it was written or failed: another folder's copy may get there first).
   */
  private readonly hardlinks = new Map<string, { at: Buffer; written: Promise<boolean> }>();
  private readonly writeSlots = new Semaphore(WRITE_CONCURRENCY);
  /** Large files have slots of their own (see LARGE_FILE_CONCURRENCY). */
  private readonly largeSlots = new Semaphore(LARGE_FILE_CONCURRENCY);
  /** Files queued and not yet written: the walk waits while there are WALK_AHEAD_FILES. */
  private readonly backlog = new Backlog(WALK_AHEAD_FILES);
  private direct = new DirectWrites(false);
  private lastProgress = 0;
  private planned: { files: number; bytes: number } | undefined;

  constructor(
    private readonly repo: Repository,
    private readonly opts: RestoreOptions,
  ) {
    this.include = opts.includes?.length ? compileExcludes(opts.includes) : undefined;
    this.mayIncludeBelow = compileMayMatchBelow(opts.includes ?? []);
    this.exclude = compileExcludes(opts.excludes ?? []);
    this.ownership = opts.ownership ?? process.getuid?.() === 0;
  }

  async restore(treeId: string): Promise<RestoreSummary> {
    const target = Buffer.from(this.opts.target);
    if (!this.opts.dryRun) {
      try {
        await fsp.mkdir(target, { recursive: true, mode: 0o700 });
        await fsp.access(target, constants.W_OK);
      } catch (err) {
        throw new SitekeepError("restore.target", `cannot restore into ${this.opts.target}: ${errorMessage(err)}`, {
          hint: "choose a target folder that this user can create and write",
        });
      }
    }
    if (!this.opts.dryRun) {
      // Through the page cache unless asked (SITEKEEP_DIRECT_IO=1). Past it, large files cost less
      // CPU (no copy into the cache: 0.6-0.8 s of system time per 321 MB with dd on an earlier VM) but the
      // restore waits for the disk, as restic's does not: on session 23's VM (a disk of ~460 MB/s,
      // 1.7 GB of large files) the mixed restore took 9.9-10.6 s direct, 7.7-8.7 s cached.
      this.direct = DirectWrites.forFolder(this.opts.target);
      keepFreedMemoryForReuse(); // a sealed and a plain buffer per blob, freed as soon as it is written
    }
    if (this.opts.onProgress && !this.opts.dryRun) {
      // A first pass over the trees (no data) gives the totals that make an ETA possible.
      const plan = await new Restorer(this.repo, { ...this.opts, dryRun: true, onProgress: undefined, onItem: undefined }).restore(treeId);
      this.planned = { files: plan.total_files, bytes: plan.total_bytes };
    }
    await (await this.restoreTree(treeId, target, "/", this.include === undefined)).written;
    this.report(true);
    return {
      message_type: "summary",
      files_restored: this.progress.files,
      dirs_restored: this.progress.dirs,
      bytes_restored: this.progress.bytes,
      total_files: this.progress.totalFiles,
      total_bytes: this.progress.totalBytes,
      errors: this.errors,
      dry_run: this.opts.dryRun ?? false,
    };
  }

  /** Whether anything at or below `path` is selected. */
  private selected(path: string, isDir: boolean): "all" | "some" | "none" {
    if (this.exclude(path)) return "none";
    if (!this.include) return "all";
    if (this.include(path)) return "all";
    // A folder is entered when an include pattern could match something below it.
    return isDir && this.mayIncludeBelow(path) ? "some" : "none";
  }

  /**
   * Walks one folder of the snapshot into `dir`: creates its subfolders and queues its files.
   * Resolves when the walk below it is done, with whether anything below it was selected and a
   * promise that settles when all of that is written and its subfolders have their metadata.
   */
  private async restoreTree(treeId: string, dir: Buffer, path: string, all: boolean): Promise<WalkedTree> {
    let nodes: NodeJSON[];
    try {
      nodes = await loadTree(this.repo, treeId);
    } catch (err) {
      this.fail(path, `cannot load tree ${treeId.slice(0, 16)}…: ${errorMessage(err)}`);
      return { any: false, written: DONE };
    }
    let restoredAny = false;
    const leaves: Leaf[] = [];
    const subdirs: { node: NodeJSON; at: Buffer; path: string; subtree: string; all: boolean }[] = [];
    const seen = new Set<string>();
    for (const node of nodes) {
      const raw = decodeName(node.name);
      if (raw.length === 0 || raw.includes(0x2f) || raw.includes(0) || raw.equals(Buffer.from(".")) || raw.equals(Buffer.from(".."))) {
        this.fail(joinPath(path, node.name), "refused: the stored name would escape the target");
        continue;
      }
      // A real tree never holds a name twice; a crafted one could make a later entry (a symlink)
      // replace an earlier one (a folder or a hard link's first copy) that restore still writes through.
      const key = raw.toString("latin1");
      if (seen.has(key)) {
        this.fail(joinPath(path, raw.toString("utf8")), "refused: the name appears twice in the same folder of the snapshot (a damaged or crafted tree)");
        continue;
      }
      seen.add(key);
      const childPath = joinPath(path, raw.toString("utf8"));
      const sel = all ? (this.exclude(childPath) ? "none" : "all") : this.selected(childPath, node.type === "dir");
      if (sel === "none") continue;
      const at = Buffer.concat([dir, Buffer.from("/"), raw]);
      if (node.type === "dir") {
        if (!node.subtree) {
          this.fail(childPath, "directory without subtree in the snapshot");
          continue;
        }
        subdirs.push({ node, at, path: childPath, subtree: node.subtree, all: sel === "all" });
        continue;
      }
      restoredAny = true;
      leaves.push({ node, name: raw, at, path: childPath });
    }
    const restoreLeaves = async (): Promise<void> => {
      const batchable = !this.opts.dryRun && canWriteFiles();
      const small: Leaf[] = [];
      const rest: Leaf[] = [];
      for (const l of leaves) (batchable && isSmallFile(l.node) ? small : rest).push(l);
      await Promise.all([
        mapLimit(rest, WRITE_CONCURRENCY, (l) => this.restoreLeaf(l.node, l.at, l.path)),
        mapLimit(batches(small), WRITE_CONCURRENCY, (b) => this.restoreSmallFiles(dir, b)),
      ]);
    };
    const finishDir = async (d: { node: NodeJSON; at: Buffer }): Promise<void> => {
      this.progress.dirs++;
      this.opts.onItem?.(joinPath(path, decodeName(d.node.name).toString("utf8")), d.node);
      if (!this.opts.dryRun) await this.applyMetadata(d.node, d.at, joinPath(path, d.node.name));
    };
    if (this.opts.dryRun) {
      // A dry run lists the tree in its order: each folder's subfolders, its files, then the folders.
      const dirsToFinish: { node: NodeJSON; at: Buffer }[] = [];
      for (const d of subdirs) {
        const sub = await this.restoreTree(d.subtree, d.at, d.path, d.all);
        if (d.all || (sub.any && !this.opts.keepAncestors)) dirsToFinish.push(d);
        restoredAny ||= d.all || sub.any;
      }
      await restoreLeaves();
      for (const d of dirsToFinish) await finishDir(d);
      return { any: restoredAny, written: DONE };
    }
    // This folder's files are queued and the walk goes on into its subfolders and on to the next
    // folders while they are written: writes stay in flight across folders of a few files each
    // (writeSlots bounds them over the whole restore, the backlog how far the walk runs ahead). A
    // folder gets its metadata once everything below it is written.
    const work: Promise<unknown>[] = [];
    const track = (p: Promise<unknown>): void => {
      p.catch(() => undefined); // awaited at the end (a rejection must not count as unhandled until then)
      work.push(p);
    };
    this.backlog.add(leaves.length);
    track(restoreLeaves().finally(() => this.backlog.done(leaves.length)));
    try {
      for (const d of subdirs) {
        await this.backlog.below();
        if (d.all) {
          await this.makeDir(d.at, d.path);
          const sub = await this.restoreTree(d.subtree, d.at, d.path, true);
          track(sub.written.then(() => finishDir(d)));
          restoredAny = true;
          continue;
        }
        // Create the folder only if something below it is selected.
        const created = await this.makeDir(d.at, d.path);
        const sub = await this.restoreTree(d.subtree, d.at, d.path, false);
        if (sub.any) {
          // A folder only on the way to what was selected: with keepAncestors (recovery to the
          // original paths, target "/"), an existing /srv or /var keeps its own mode, owner and times.
          track(!this.opts.keepAncestors || created ? sub.written.then(() => finishDir(d)) : sub.written);
          restoredAny = true;
        } else {
          await sub.written;
          if (created) await fsp.rmdir(d.at).catch(() => undefined); // only what we made: never an existing empty folder
        }
      }
    } catch (err) {
      await Promise.allSettled(work); // nothing queued outlives the walk that failed
      throw err;
    }
    const written = settleAll(work);
    written.catch(() => undefined); // awaited by the caller, perhaps after it walked further
    return { any: restoredAny, written };
  }

  /** Makes the folder (replacing anything else that stands there); true when it did not exist. */
  private async makeDir(at: Buffer, path: string): Promise<boolean> {
    if (this.opts.dryRun) return false;
    try {
      await fsp.mkdir(at, { mode: 0o700 });
      return true;
    } catch (err) {
      if (!isErrnoError(err, "EEXIST")) throw this.fatal(path, err);
      const st = await fsp.lstat(at);
      if (!st.isDirectory()) {
        // Something else (a symlink planted in the target?) stands where the folder goes: replace it.
        await fsp.unlink(at);
        await fsp.mkdir(at, { mode: 0o700 });
        return true;
      }
      return false;
    }
  }

  private async restoreLeaf(node: NodeJSON, at: Buffer, path: string): Promise<void> {
    this.countLeaf(node, path);
    if (this.opts.dryRun) return;
    await this.createLeaf(node, at, path);
  }

  private countLeaf(node: NodeJSON, path: string): void {
    if (node.type === "file") {
      this.progress.totalFiles++;
      this.progress.totalBytes += node.size ?? 0;
    }
    this.opts.onItem?.(path, node);
  }

  /**
   * Small files of one folder (see isSmallFile): their blobs read together, the files created,
   * written and given their metadata in one thread-pool job. A file this cannot create (something
   * already stands there, a blob is damaged...) goes the way of every other file, alone.
   */
  private async restoreSmallFiles(dir: Buffer, batch: Leaf[]): Promise<void> {
    for (const l of batch) this.countLeaf(l.node, l.path);
    // Outside the write slot: the files done alone take slots of their own.
    const alone = await this.writeSlots.run(() => this.writeSmallFiles(dir, batch));
    await mapLimit(alone, WRITE_CONCURRENCY, (l) => this.createLeaf(l.node, l.at, l.path));
  }

  /** Writes a batch of small files; returns those left to be done alone. */
  private async writeSmallFiles(dir: Buffer, batch: Leaf[]): Promise<Leaf[]> {
    const withData = batch.filter((l) => l.node.content?.length);
    let blobs: Buffer[];
    try {
      blobs = await this.repo.loadBlobs("data", withData.map((l) => Buffer.from(l.node.content![0], "hex")));
    } catch {
      return batch; // each file then reports its own missing or damaged blob
    }
    const data = new Map(withData.map((l, i) => [l, blobs[i]]));
    const files = batch.map((l): NewFile => {
      const m = timeParts(l.node.mtime);
      const a = timeParts(l.node.atime) ?? m;
      return {
        name: l.name,
        data: data.get(l) ?? EMPTY_DATA,
        mode: unixPermFromGo(l.node.mode ?? 0o600),
        uid: l.node.uid,
        gid: l.node.gid,
        ...(m !== undefined && a !== undefined ? { atime: a, mtime: m } : {}),
      };
    });
    let results: Awaited<ReturnType<typeof writeFiles>>;
    try {
      results = await writeFiles(dir, files, this.ownership);
    } catch {
      return batch; // the folder cannot be opened: each file reports why
    }
    const alone: Leaf[] = [];
    batch.forEach((l, i) => {
      const r = results[i];
      if (r && (r.step === WriteStep.open || r.step === WriteStep.write || r.step === WriteStep.close)) {
        alone.push(l); // not created, removed again, or its bytes perhaps not written (close failed)
        return;
      }
      this.progress.files++;
      this.progress.bytes += files[i].data.length;
      if (r) this.fail(l.path, `metadata not restored: ${errorMessage(r.error)}`);
      if (l.node.size !== undefined && files[i].data.length !== l.node.size) {
        this.fail(l.path, `restored ${files[i].data.length} bytes but the snapshot records ${l.node.size}`);
      }
    });
    this.repo.releaseBlobs(blobs); // written, and this batch's alone (the files done alone load their own)
    this.report(false);
    return alone;
  }

  private async createLeaf(node: NodeJSON, at: Buffer, path: string): Promise<void> {
    try {
      await removeExisting(at);
      switch (node.type) {
        case "file": {
          const key = node.links && node.links > 1 && node.inode ? `${node.device_id ?? 0}:${node.inode}` : undefined;
          const first = key ? this.hardlinks.get(key) : undefined;
          if (first && (await first.written) && (await this.link(first.at, at))) return;
          let settle: ((written: boolean) => void) | undefined;
          if (key && !first) {
            const written = new Promise<boolean>((resolve) => (settle = resolve));
            this.hardlinks.set(key, { at, written });
          }
          try {
            const slots = isLarge(node) ? this.largeSlots : this.writeSlots;
            await slots.run(() => this.writeFile(node, at, path));
            settle?.(true);
          } catch (err) {
            settle?.(false); // the other copies write the content themselves
            throw err;
          }
          break;
        }
        case "symlink":
          await fsp.symlink(linkTargetBytes(node), at);
          break;
        case "fifo":
          mknod(at, unixTypeBits("fifo") | 0o600, 0n);
          break;
        case "dev":
        case "chardev":
          if (process.getuid?.() !== 0) {
            this.fail(path, `device node not restored: creating devices needs root`);
            return;
          }
          mknod(at, unixTypeBits(node.type) | 0o600, BigInt(node.device ?? 0));
          break;
        case "socket":
          return; // sockets belong to running programs; restic skips them too
        default:
          this.fail(path, `unknown node type ${JSON.stringify(node.type)} skipped`);
          return;
      }
      await this.applyMetadata(node, at, path);
    } catch (err) {
      this.fail(path, errorMessage(err));
    }
  }

  /** Links `at` to the first copy of a multiply-linked file; false when that fails. */
  private async link(first: Buffer, at: Buffer): Promise<boolean> {
    try {
      await fsp.link(first, at);
      this.progress.files++;
      return true;
    } catch {
      return false; // e.g. the first copy was not restored: write the content again
    }
  }

  private async writeFile(node: NodeJSON, at: Buffer, path: string): Promise<void> {
    // Creating a file took 200-400 µs on ext4 here, so files are created on the thread pool, several
    // at once (WRITE_CONCURRENCY over the whole restore). Large blobs are loaded ahead and written
    // on the pool; large files past the page cache when that was asked for and the file system takes it.
    const file = await FileWriter.create(at, isLarge(node) ? this.direct : undefined);
    // The next blobs are loaded and decoded (on the thread pool) while this one is written.
    const ids = node.content ?? [];
    const pending: Promise<Buffer>[] = [];
    const load = (k: number): void => {
      const p = this.repo.loadBlob("data", Buffer.from(ids[k], "hex"));
      p.catch(() => undefined); // awaited below in order; a file that failed early leaves the rest unawaited
      pending.push(p);
    };
    let length: number;
    try {
      for (let k = 0; k < Math.min(BLOBS_AHEAD, ids.length); k++) load(k);
      for (let k = 0; k < ids.length; k++) {
        const blob = await pending[k];
        pending[k] = EMPTY;
        if (k + BLOBS_AHEAD < ids.length) load(k + BLOBS_AHEAD);
        await file.write(blob);
        this.progress.bytes += blob.length;
        releaseBuffer(blob); // written, and this file's alone (loadBlob decodes a fresh copy)
        this.report(false);
      }
      length = await file.finish();
    } catch (err) {
      // The loads still running end before the restore goes on (none outlives it).
      await Promise.allSettled(pending);
      file.discard();
      throw new SitekeepError("restore.file", errorMessage(err), { cause: err });
    }
    file.close();
    if (node.size !== undefined && length !== node.size) {
      this.fail(path, `restored ${length} bytes but the snapshot records ${node.size}`);
    }
    this.progress.files++;
  }

  private async applyMetadata(node: NodeJSON, at: Buffer, path: string): Promise<void> {
    try {
      if (this.ownership) lchownSync(at, node.uid, node.gid);
      if (node.type !== "symlink") chmodSync(at, unixPermFromGo(node.mode ?? 0o600));
      for (const xa of node.extended_attributes ?? []) {
        try {
          setXattr(at, xa.name, Buffer.from(xa.value, "base64"));
        } catch (err) {
          if (!isUnsupportedXattrError(err) && !isErrnoError(err, "EPERM")) throw err;
        }
      }
      const m = timeNs(node.mtime);
      const a = timeNs(node.atime) ?? m;
      if (m !== undefined && a !== undefined) lutimesNs(at, a, m);
    } catch (err) {
      this.fail(path, `metadata not restored: ${errorMessage(err)}`);
    }
  }

  private fail(path: string, message: string): void {
    this.errors.push({ path, message });
  }

  private fatal(path: string, err: unknown): SitekeepError {
    return new SitekeepError("restore.io", `${path}: ${errorMessage(err)}`, { cause: err });
  }

  private report(force: boolean): void {
    const cb = this.opts.onProgress;
    if (!cb) return;
    const now = Date.now();
    if (!force && now - this.lastProgress < 250) return;
    this.lastProgress = now;
    cb({ ...this.progress, ...(this.planned ? { totalFiles: this.planned.files, totalBytes: this.planned.bytes } : {}) });
  }
}

interface WalkedTree {
  /** Whether anything at or below the folder was selected. */
  any: boolean;
  /** Settles when everything below the folder is written (rejects with the first failure, once all have settled). */
  written: Promise<void>;
}

const DONE: Promise<void> = Promise.resolve();

interface Leaf {
  node: NodeJSON;
  /** The file's name as stored (bytes). */
  name: Buffer;
  at: Buffer;
  path: string;
}

const EMPTY_DATA = Buffer.alloc(0);

/**
 * A regular file restored by content and metadata alone: one blob (or none) of at most
 * SMALL_FILE_MAX bytes, not one of several hard links, no extended attributes.
 */
function isSmallFile(node: NodeJSON): boolean {
  return (
    node.type === "file" &&
    (node.content?.length ?? 0) <= 1 &&
    (node.size ?? 0) <= SMALL_FILE_MAX &&
    !(node.links && node.links > 1 && node.inode) &&
    !node.extended_attributes?.length
  );
}

/** Consecutive batches of at most BATCH_FILES files and (unless one file is larger) BATCH_BYTES. */
function batches(leaves: Leaf[]): Leaf[][] {
  const out: Leaf[][] = [];
  let cur: Leaf[] = [];
  let bytes = 0;
  for (const l of leaves) {
    const size = l.node.size ?? 0;
    if (cur.length && (cur.length >= BATCH_FILES || bytes + size > BATCH_BYTES)) {
      out.push(cur);
      cur = [];
      bytes = 0;
    }
    cur.push(l);
    bytes += size;
  }
  if (cur.length) out.push(cur);
  return out;
}

async function removeExisting(at: Buffer): Promise<void> {
  try {
    const st = lstatSync(at);
    if (st.isDirectory()) await fsp.rm(at, { recursive: true });
    else unlinkSync(at);
  } catch (err) {
    if (!isErrnoError(err, "ENOENT")) throw err;
  }
}
