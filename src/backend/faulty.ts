// A backend wrapper for tests that injects the failures real storage produces: a disk that fills
// up, an I/O error on one file, a connection reset, slow responses. Faults are matched per
// operation and file type, so a test can aim at exactly "the 3rd pack" or "the snapshot file" and
// prove that a failure there leaves the repository consistent.
import type { Backend, FileInfo, FileType, Handle, StagedFile } from "./backend.js";
import { wrapIoError } from "./local.js";

export type FaultOp = "save" | "load" | "stat" | "remove" | "list";

/** Errno codes with the texts Node gives them, so injected errors read like real ones. */
const ERRNO_TEXT: Record<string, string> = {
  ENOSPC: "no space left on device",
  EIO: "i/o error",
  ECONNRESET: "connection reset by peer",
  ETIMEDOUT: "connection timed out",
  EACCES: "permission denied",
  EROFS: "read-only file system",
  ENOENT: "no such file or directory",
};

export interface Fault {
  op: FaultOp;
  /** Only files of this type; every type when omitted. */
  type?: FileType;
  /** Only the nth matching call (1-based); with neither `nth`, `from` nor `afterBytes`, every matching call. */
  nth?: number;
  /** Every matching call from the nth on (a backend that breaks and stays broken). */
  from?: number;
  /**
   * save only: a device of this many bytes. A save fails when the bytes already saved through this
   * wrapper plus its own would exceed it (smaller files may still fit, as on a real full disk).
   */
  afterBytes?: number;
  /** The errno code of the thrown error (ENOSPC, EIO, ECONNRESET, …); no error when omitted. */
  code?: string;
  /** Wait this long before the operation (or before failing): a slow server or disk. */
  delayMs?: number;
  /**
   * Throw the bare errno error instead of wrapping it as the local backend does (SitekeepError
   * "backend.nospace" etc.) — to test code that must handle raw errors from other backends.
   */
  raw?: boolean;
}

/** One call seen by the wrapper, for assertions on what was attempted. */
export interface FaultLogEntry {
  op: FaultOp;
  type: FileType;
  name?: string;
  /** The injected error code, when this call failed because of a fault. */
  failed?: string;
}

interface ArmedFault extends Fault {
  calls: number;
}

const VERB: Record<FaultOp, string> = {
  save: "saving",
  load: "reading",
  stat: "checking",
  remove: "removing",
  list: "listing",
};

export class FaultyBackend implements Backend {
  private faults: ArmedFault[] = [];
  /** Bytes successfully saved through this wrapper (what a filling disk has used up). */
  bytesSaved = 0;
  readonly log: FaultLogEntry[] = [];

  /**
   * Present when the inner backend stages files and `staging` was not turned off: a staged file's
   * commit is a "save" for the faults (its size the bytes written), so the same faults hit packs
   * written whole and packs streamed. Off, callers build every file in memory (as on S3).
   */
  readonly stage?: (type: FileType, readSoon?: boolean) => Promise<StagedFile>;
  /** The inner backend's, when it has one: faults do not change how soon listings show a file. */
  readonly listingLagMs?: Backend["listingLagMs"];

  constructor(
    readonly inner: Backend,
    faults: Fault[] = [],
    opts: { staging?: boolean } = {},
  ) {
    this.setFaults(faults);
    const stage = inner.stage?.bind(inner);
    if (stage && opts.staging !== false) this.stage = async (type, readSoon) => this.faultyStage(await stage(type, readSoon), type);
    if (inner.listingLagMs) this.listingLagMs = () => inner.listingLagMs!();
  }

  private faultyStage(file: StagedFile, type: FileType): StagedFile {
    let size = 0;
    return {
      write: async (data) => {
        await file.write(data);
        size += data.length;
      },
      commit: async (h) => {
        try {
          await this.inject("save", type, h.name, size);
        } catch (err) {
          await file.abort();
          throw err;
        }
        await file.commit(h);
        this.bytesSaved += size;
      },
      abort: () => file.abort(),
    };
  }

  get location(): string {
    return this.inner.location;
  }

  /** Replaces the faults; their call counters start again at zero. */
  setFaults(faults: Fault[]): void {
    this.faults = faults.map((f) => ({ ...f, calls: 0 }));
  }

  clearFaults(): void {
    this.faults = [];
  }

  /** Calls that failed because of an injected fault. */
  get failures(): FaultLogEntry[] {
    return this.log.filter((e) => e.failed !== undefined);
  }

  /** Applies the faults matching this call: waits, then throws if one says so. */
  private async inject(op: FaultOp, type: FileType, name?: string, size = 0): Promise<void> {
    const entry: FaultLogEntry = { op, type, ...(name === undefined ? {} : { name }) };
    this.log.push(entry);
    let delay = 0;
    let failing: ArmedFault | undefined;
    for (const f of this.faults) {
      if (f.op !== op || (f.type !== undefined && f.type !== type)) continue;
      f.calls++;
      if (!hits(f, this.bytesSaved, size)) continue;
      delay = Math.max(delay, f.delayMs ?? 0);
      if (f.code !== undefined) failing ??= f;
    }
    if (delay > 0) await new Promise((r) => setTimeout(r, delay));
    if (!failing?.code) return;
    entry.failed = failing.code;
    const what = `${VERB[op]} ${type}${name === undefined ? "" : `/${name}`}`;
    const err = errnoError(failing.code, op);
    throw failing.raw ? err : wrapIoError(err, what, this.inner.location);
  }

  exists(): Promise<boolean> {
    return this.inner.exists();
  }

  hasContent(): Promise<boolean> {
    return this.inner.hasContent();
  }

  create(): Promise<void> {
    return this.inner.create();
  }

  async save(h: Handle, data: Uint8Array): Promise<void> {
    await this.inject("save", h.type, h.name, data.length);
    await this.inner.save(h, data);
    this.bytesSaved += data.length;
  }

  async load(h: Handle, offset?: number, length?: number): Promise<Buffer> {
    await this.inject("load", h.type, h.name);
    return this.inner.load(h, offset, length);
  }

  async stat(h: Handle): Promise<FileInfo> {
    await this.inject("stat", h.type, h.name);
    return this.inner.stat(h);
  }

  async remove(h: Handle): Promise<void> {
    await this.inject("remove", h.type, h.name);
    return this.inner.remove(h);
  }

  async *list(type: FileType): AsyncIterable<FileInfo> {
    await this.inject("list", type);
    yield* this.inner.list(type);
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}

/** Whether a fault whose call counter was just advanced applies to this call. */
function hits(f: ArmedFault, bytesSaved: number, size: number): boolean {
  if (f.afterBytes !== undefined && bytesSaved + size <= f.afterBytes) return false;
  if (f.nth !== undefined && f.calls !== f.nth) return false;
  if (f.from !== undefined && f.calls < f.from) return false;
  return true;
}

/** An Error shaped like the ones node:fs and node:net throw (code, errno, syscall). */
function errnoError(code: string, op: FaultOp): NodeJS.ErrnoException {
  // The caller's context (operation, file) is added by wrapIoError, as for real errors.
  const err: NodeJS.ErrnoException = new Error(`${code}: ${ERRNO_TEXT[code] ?? "error"} (injected fault)`);
  err.code = code;
  err.syscall = op === "save" ? "write" : op === "list" ? "scandir" : op === "load" ? "read" : op;
  return err;
}
