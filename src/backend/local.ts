// A repository on a local path or a mounted network share, laid out exactly as restic's local
// backend: config, keys/, locks/, snapshots/, index/, data/00..ff/.
import { constants, promises as fsp } from "node:fs";
import { randomBytes } from "node:crypto";
import { join, dirname } from "node:path";
import { SitekeepError, isErrnoError } from "../errors.js";
import type { Backend, FileInfo, FileType, Handle, OpenFile, StagedFile } from "./backend.js";
import { isIdHex } from "../repo/id.js";
import { DirectWrites, FileWriter } from "../platform/file-writer.js";
import { isOnLocalFilesystem } from "../platform/filesystem-kind.js";

const DIR_MODE = 0o700;
// Stored files are never modified; read-only modes guard against accidents, as restic does.
const FILE_MODE = 0o400;
/** What a lock waits for a listing on a share (restic's wait; see listingLagMs). */
const LISTING_LAG_MS = 200;

export class LocalBackend implements Backend {
  readonly location: string;
  private readonly handles = new HandleCache(32);
  /**
   * Direct writes (O_DIRECT) for data packs when asked (SITEKEEP_DIRECT_IO=1), decided on the
   * first one. By default data packs go through the page cache and are dropped from it once
   * durable (LocalStagedFile.commit): they are not read again soon (a restore or a check comes
   * later, or never), so they do not push the server's working set out, and the next pack's
   * writes reuse their pages instead of fresh ones (which a VM's host backs afresh). Direct writes
   * were the default from session 18 to 28; they left the disk's latency in every blob's path
   * (its encode slot is held until the blob is written): on session 29's VM an initial backup of
   * the bench's mixed set took 12.5-14.1 s that way and 11.0-11.8 s through the cache, with the
   * same CPU time (bench/README.md, "What session 29 changed"). Tree packs stay cached (`readSoon`): the next backup reads them.
   */
  private dataWrites: DirectWrites | undefined;
  private lag: Promise<number> | undefined;

  constructor(readonly root: string) {
    this.location = root;
  }

  path(h: Handle): string {
    if (h.type === "config") return join(this.root, "config");
    if (h.type === "data") return join(this.root, "data", h.name.slice(0, 2), h.name);
    return join(this.root, h.type, h.name);
  }

  async exists(): Promise<boolean> {
    try {
      await fsp.stat(join(this.root, "config"));
      return true;
    } catch (err) {
      if (isErrnoError(err, "ENOENT", "ENOTDIR")) return false;
      throw err;
    }
  }

  async hasContent(): Promise<boolean> {
    try {
      const st = await fsp.stat(this.root);
      // The site task's run log (sitekeep.log, rotated) sits beside the repository and may be
      // written before the repository is; a filesystem's lost+found is not content either.
      const names = (await fsp.readdir(this.root)).filter((n) => !/^sitekeep\.log(\.\d+)?$/.test(n) && n !== "lost+found");
      return !st.isDirectory() || names.length > 0;
    } catch (err) {
      if (isErrnoError(err, "ENOENT")) return false;
      throw err;
    }
  }

  async create(): Promise<void> {
    await fsp.mkdir(this.root, { recursive: true, mode: DIR_MODE });
    for (const t of ["keys", "locks", "snapshots", "index", "data"]) {
      await fsp.mkdir(join(this.root, t), { mode: DIR_MODE }).catch(ignoreExists);
    }
    for (let i = 0; i < 256; i++) {
      await fsp.mkdir(join(this.root, "data", i.toString(16).padStart(2, "0")), { mode: DIR_MODE }).catch(ignoreExists);
    }
  }

  async save(h: Handle, data: Uint8Array): Promise<void> {
    const final = this.path(h);
    const tmp = `${final}-tmp-${randomBytes(8).toString("hex")}`;
    let fh: fsp.FileHandle | undefined;
    try {
      fh = await openForWrite(tmp);
      await writeAll(fh, data);
      await publishWritten(fh, tmp, final, h);
      fh = undefined;
    } catch (err) {
      await fh?.close().catch(() => undefined);
      await fsp.unlink(tmp).catch(() => undefined);
      throw wrapIoError(err, `saving ${h.type}/${h.name}`, this.root);
    }
  }

  async stage(type: FileType, readSoon = false): Promise<StagedFile> {
    // Named like save's temporary files (an ID, "-tmp-", random hex), so that list() skips it,
    // restic ignores it and removeTemporary() finds it after a crash; under a random ID's folder,
    // as the final name is not known yet (commit links it across, on the same filesystem).
    const fake = randomBytes(32).toString("hex");
    const tmp = `${this.path({ type, name: fake })}-tmp-${randomBytes(8).toString("hex")}`;
    // Data packs leave the page cache once written, or go past it when asked: see dataWrites.
    const notReadSoon = type === "data" && !readSoon;
    const direct = notReadSoon ? (this.dataWrites ??= DirectWrites.forFolder(join(this.root, "data"))) : undefined;
    try {
      return new LocalStagedFile(this, await createStaged(tmp, direct), tmp, notReadSoon);
    } catch (err) {
      throw wrapIoError(err, `saving a new ${type} file`, this.root);
    }
  }

  async load(h: Handle, offset = 0, length?: number): Promise<Buffer> {
    const p = this.path(h);
    try {
      if (offset === 0 && length === undefined) return await fsp.readFile(p);
      // Ranged reads (blobs inside packs) reuse open handles: restore and check read many blobs
      // from the same pack, and opening the file for each one cost more than the read.
      const { entry, fh } = await this.handles.acquire(p);
      try {
        let start = offset;
        let len = length;
        if (start < 0 || len === undefined) {
          const { size } = await fh.stat();
          if (start < 0) start = Math.max(0, size + start);
          if (len === undefined) len = size - start;
        }
        const buf = Buffer.allocUnsafe(len);
        const got = await readFully(fh, buf, start);
        return got === len ? buf : buf.subarray(0, got);
      } finally {
        this.handles.release(entry);
      }
    } catch (err) {
      throw wrapIoError(err, `reading ${h.type}/${h.name}`, this.root);
    }
  }

  async openFile(h: Handle): Promise<OpenFile> {
    const p = this.path(h);
    try {
      // The handle cache's: a restore reads many ranges of the same packs.
      const { entry, fh } = await this.handles.acquire(p);
      let released = false;
      return {
        fd: fh.fd,
        release: () => {
          if (released) return;
          released = true;
          this.handles.release(entry);
        },
      };
    } catch (err) {
      throw wrapIoError(err, `opening ${h.type}/${h.name}`, this.root);
    }
  }

  async loadInto(h: Handle, into: Uint8Array, offset?: number): Promise<number> {
    const p = this.path(h);
    try {
      if (offset !== undefined) {
        // Ranged, like load's: the open handle is reused.
        const { entry, fh } = await this.handles.acquire(p);
        try {
          return await readFully(fh, into, offset);
        } finally {
          this.handles.release(entry);
        }
      }
      const fh = await fsp.open(p, "r");
      try {
        const got = await readFully(fh, into, 0);
        if (got < into.length || (await fh.read(Buffer.alloc(1), 0, 1, got)).bytesRead) {
          const { size } = await fh.stat();
          throw new Error(`it has ${size} bytes, not ${into.length}`);
        }
        return got;
      } finally {
        await fh.close();
      }
    } catch (err) {
      throw wrapIoError(err, `reading ${h.type}/${h.name}`, this.root);
    }
  }

  async stat(h: Handle): Promise<FileInfo> {
    const st = await fsp.stat(this.path(h));
    return { name: h.name, size: st.size };
  }

  async remove(h: Handle): Promise<void> {
    this.handles.forget(this.path(h));
    try {
      await fsp.unlink(this.path(h));
    } catch (err) {
      if (isErrnoError(err, "ENOENT")) return;
      throw wrapIoError(err, `removing ${h.type}/${h.name}`, this.root);
    }
  }

  async *list(type: FileType): AsyncIterable<FileInfo> {
    if (type === "config") {
      if (await this.exists()) yield { name: "config", size: (await fsp.stat(join(this.root, "config"))).size };
      return;
    }
    const dirs =
      type === "data"
        ? (await readdirOrEmpty(join(this.root, "data"))).filter((d) => /^[0-9a-f]{2}$/.test(d)).map((d) => join(this.root, "data", d))
        : [join(this.root, type)];
    for (const dir of dirs) {
      for (const name of await readdirOrEmpty(dir)) {
        if (!isIdHex(name)) continue;
        try {
          const st = await fsp.stat(join(dir, name));
          if (st.isFile()) yield { name, size: st.size };
        } catch (err) {
          if (!isErrnoError(err, "ENOENT")) throw err; // removed meanwhile
        }
      }
    }
  }

  async removeTemporary(): Promise<{ files: number; bytes: number }> {
    let files = 0;
    let bytes = 0;
    const dataDirs = (await readdirOrEmpty(join(this.root, "data"))).filter((d) => /^[0-9a-f]{2}$/.test(d)).map((d) => join(this.root, "data", d));
    for (const dir of [...dataDirs, join(this.root, "index"), join(this.root, "snapshots")]) {
      for (const name of await readdirOrEmpty(dir)) {
        if (!/^[0-9a-f]{64}-tmp-[0-9a-f]+$/.test(name)) continue;
        try {
          const st = await fsp.stat(join(dir, name));
          await fsp.unlink(join(dir, name));
          files++;
          bytes += st.size;
        } catch {
          // gone meanwhile
        }
      }
    }
    return { files, bytes };
  }

  /**
   * 0 on a local filesystem: a lock file is in every listing once its save returns, so of two
   * processes that each save a lock and then list, the later lister always sees the other's
   * lock, without a wait. A mounted share (NFS, SMB, FUSE) may cache its listings, and any
   * filesystem not known to be local may be such a share: restic's 200 ms there.
   */
  async listingLagMs(): Promise<number> {
    this.lag ??= isOnLocalFilesystem(this.root).then((local) => (local ? 0 : LISTING_LAG_MS));
    return this.lag;
  }

  async close(): Promise<void> {
    await this.handles.closeAll();
  }
}

/**
 * A file of the local backend being written in pieces (see Backend.stage), through a FileWriter:
 * staged in aligned memory and written past the page cache when it has DirectWrites.
 */
class LocalStagedFile implements StagedFile {
  private writer: FileWriter | undefined;

  constructor(
    private readonly backend: LocalBackend,
    writer: FileWriter,
    private readonly tmp: string,
    /** Dropped from the page cache once durable (a data pack: see LocalBackend.dataWrites). */
    private readonly uncache: boolean,
  ) {
    this.writer = writer;
  }

  async write(data: Uint8Array): Promise<void> {
    const w = this.open("write to");
    try {
      await w.write(Buffer.from(data.buffer, data.byteOffset, data.byteLength));
    } catch (err) {
      throw wrapIoError(err, `saving a new file (${w.length} bytes written)`, this.backend.root);
    }
  }

  async commit(h: Handle): Promise<void> {
    const w = this.open("commit");
    const final = this.backend.path(h);
    try {
      // A data/xx folder can be missing in repositories made by other tools.
      await fsp.mkdir(dirname(final), { recursive: true, mode: DIR_MODE });
      await w.finish();
      await w.sync();
      if (this.uncache && !w.isDirect) w.dropCache(); // ~1.7 ms for a 16 MiB pack: not worth a pool hop
      w.close();
      this.writer = undefined;
      await publishClosed(this.tmp, final, h);
    } catch (err) {
      await this.abort();
      throw wrapIoError(err, `saving ${h.type}/${h.name}`, this.backend.root);
    }
  }

  async abort(): Promise<void> {
    const w = this.writer;
    this.writer = undefined;
    try {
      w?.close();
    } catch {
      // an error closing a file that is being removed
    }
    await fsp.unlink(this.tmp).catch(() => undefined);
  }

  private open(what: string): FileWriter {
    if (!this.writer) throw new Error(`cannot ${what} a staged file that was committed or aborted`);
    return this.writer;
  }
}

function createStaged(tmp: string, direct: DirectWrites | undefined): Promise<FileWriter> {
  return creatingFolder(tmp, () => FileWriter.create(Buffer.from(tmp), direct));
}

interface HandleEntry {
  path: string;
  handle: Promise<fsp.FileHandle>;
  /** Counted synchronously in acquire, so eviction never closes a handle someone is about to use. */
  users: number;
}

/** A few read-only file handles kept open, least recently used closed first (never while in use). */
class HandleCache {
  private readonly open = new Map<string, HandleEntry>();

  constructor(private readonly max: number) {}

  /** Returns the open handle of path; pair every call with release(entry). */
  async acquire(path: string): Promise<{ entry: HandleEntry; fh: fsp.FileHandle }> {
    let e = this.open.get(path);
    if (e) {
      this.open.delete(path); // re-insert: most recently used last
      this.open.set(path, e);
    } else {
      const entry: HandleEntry = { path, handle: fsp.open(path, "r"), users: 0 };
      entry.handle.catch(() => {
        if (this.open.get(path) === entry) this.open.delete(path);
      });
      this.open.set(path, entry);
      e = entry;
    }
    e.users++;
    this.evict();
    try {
      return { entry: e, fh: await e.handle };
    } catch (err) {
      e.users--;
      throw err;
    }
  }

  release(e: HandleEntry): void {
    e.users--;
    if (e.users === 0 && this.open.get(e.path) !== e) close(e); // evicted or forgotten while in use
  }

  private evict(): void {
    for (const [path, e] of this.open) {
      if (this.open.size <= this.max) break;
      if (e.users > 0) continue;
      this.open.delete(path);
      close(e);
    }
  }

  forget(path: string): void {
    const e = this.open.get(path);
    if (!e) return;
    this.open.delete(path);
    if (e.users === 0) close(e);
  }

  async closeAll(): Promise<void> {
    const all = [...this.open.values()];
    this.open.clear();
    for (const e of all) if (e.users === 0) await close(e);
  }
}

function close(e: HandleEntry): Promise<void> {
  return e.handle.then((fh) => fh.close()).catch(() => undefined);
}

/**
 * Writes all of `data` at the file's position, in one call where the kernel takes it:
 * FileHandle.writeFile writes 512 KiB per call, and each call waits in the thread pool's queue
 * behind compression jobs.
 */
async function writeAll(fh: fsp.FileHandle, data: Uint8Array): Promise<void> {
  for (let off = 0; off < data.length; ) {
    off += (await fh.write(data, off, data.length - off, null)).bytesWritten;
  }
}

/**
 * The end of save: the temporary file made durable, closed, then published (publishClosed). On
 * failure the caller closes `fh` (closing twice is harmless) and removes `tmp`.
 */
async function publishWritten(fh: fsp.FileHandle, tmp: string, final: string, h: Handle): Promise<void> {
  await fh.sync();
  await fh.close();
  await publishClosed(tmp, final, h);
}

/** The end of every write once the temporary file is durable and closed: made read-only, published as `final` (never overwriting), its folder synced. */
async function publishClosed(tmp: string, final: string, h: Handle): Promise<void> {
  await fsp.chmod(tmp, FILE_MODE);
  await publish(tmp, final, h);
  await syncDir(dirname(final));
}

/** Moves a finished temp file to its final name without ever replacing an existing file. */
async function publish(tmp: string, final: string, h: Handle): Promise<void> {
  try {
    // link() fails instead of replacing: nothing is ever overwritten.
    await fsp.link(tmp, final);
  } catch (err) {
    const exists = (): never | void => {
      if (h.type === "config" || h.type === "keys") {
        throw new SitekeepError("backend.exists", `${h.type} file ${h.name} already exists`);
      }
      // content-addressed: the existing file already holds these bytes
    };
    if (isErrnoError(err, "EEXIST")) {
      await fsp.unlink(tmp);
      return exists();
    }
    // Shares without hard links (SMB, some FUSE filesystems): fall back to a checked rename.
    if (!isErrnoError(err, "EPERM", "ENOTSUP", "EOPNOTSUPP", "EXDEV", "EMLINK")) throw err;
    if (await fsp.stat(final).then(() => true, () => false)) {
      await fsp.unlink(tmp);
      return exists();
    }
    await fsp.rename(tmp, final);
    return;
  }
  await fsp.unlink(tmp);
}

function openForWrite(tmp: string): Promise<fsp.FileHandle> {
  return creatingFolder(tmp, () => fsp.open(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600));
}

/**
 * Creates a new file with `create`, and again after making the folder of `file` when it is
 * missing: a data/xx folder can be missing in repositories made by other tools.
 */
async function creatingFolder<T>(file: string, create: () => Promise<T>): Promise<T> {
  try {
    return await create();
  } catch (err) {
    if (!isErrnoError(err, "ENOENT")) throw err;
    await fsp.mkdir(dirname(file), { recursive: true, mode: DIR_MODE });
    return await create();
  }
}

async function syncDir(dir: string): Promise<void> {
  const fh = await fsp.open(dir, "r");
  try {
    await fh.sync();
  } catch (err) {
    // Some filesystems (network shares) refuse fsync on directories; the rename is still atomic.
    if (!isErrnoError(err, "EINVAL", "ENOTSUP", "EBADF", "EPERM")) throw err;
  } finally {
    await fh.close();
  }
}

async function readdirOrEmpty(dir: string): Promise<string[]> {
  try {
    return await fsp.readdir(dir);
  } catch (err) {
    if (isErrnoError(err, "ENOENT")) return [];
    throw err;
  }
}

function ignoreExists(err: unknown): void {
  if (!isErrnoError(err, "EEXIST")) throw err;
}

/** Reads into all of `buf` from `position` on, fewer bytes only at the end of the file; returns how many. */
async function readFully(fh: fsp.FileHandle, buf: Uint8Array, position: number): Promise<number> {
  let got = 0;
  while (got < buf.length) {
    const { bytesRead } = await fh.read(buf, got, buf.length - got, position + got);
    if (bytesRead === 0) break;
    got += bytesRead;
  }
  return got;
}

export function wrapIoError(err: unknown, what: string, root: string): unknown {
  if (err instanceof SitekeepError || !isErrnoError(err)) return err;
  switch (err.code) {
    case "ENOSPC":
      return new SitekeepError("backend.nospace", `no space left on the device of ${root} while ${what}`, {
        hint: "free space on the destination or choose another one; nothing was committed",
        cause: err,
      });
    case "EACCES":
    case "EPERM":
    case "EROFS":
      return new SitekeepError("backend.denied", `permission denied while ${what} in ${root}`, {
        hint: "make the repository writable by this user (or read it with a user that may)",
        cause: err,
      });
    case "ENOENT":
      return new SitekeepError("backend.missing", `${what}: file not found in ${root}`, { cause: err });
    default:
      return new SitekeepError("backend.io", `${err.code} while ${what} in ${root}: ${err.message}`, { cause: err });
  }
}
