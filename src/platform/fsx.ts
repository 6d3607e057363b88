// Filesystem calls Node lacks (nanosecond lutimes, mknod, xattrs), backed by our own Node-API addon
// (native/sitekeep_fs.c, built by `node-gyp rebuild` on install). When the addon is missing (build
// failed, unsupported platform) each call falls back to the best plain-Node equivalent or fails with
// a clear errno-style code, so a restore degrades instead of crashing.
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import util from "node:util";
import { nativeAddon } from "./native.js";
import type { TimeParts } from "../util/gotime.js";

export type PathLike = Buffer | string;


/** Fields per entry of lstatDirAsync's stats (see native/sitekeep_fs.c). */
export const STAT_FIELDS = 15;
export const StatField = {
  mode: 0,
  uid: 1,
  gid: 2,
  nlink: 3,
  size: 4,
  ino: 5,
  dev: 6,
  rdev: 7,
  atimeSec: 8,
  atimeNsec: 9,
  mtimeSec: 10,
  mtimeNsec: 11,
  ctimeSec: 12,
  ctimeNsec: 13,
  errno: 14,
} as const;

/** A folder's entries and their lstat numbers, as lstatDirAsync returns them. */
export class DirStats {
  #names: Buffer[] | undefined;
  /** Number of entries. */
  readonly count: number;
  /**
   * Every name as restic stores it in a tree, when all are printable ASCII without '"' or '\\'
   * (then the stored name is the name itself; undefined otherwise): split from one string, without
   * a Buffer per name, for the walk over unchanged files.
   */
  readonly simpleNames: string[] | undefined;

  constructor(
    private readonly buf: Buffer,
    /** STAT_FIELDS numbers per name (StatField order); errno != 0 when that entry's lstat failed. */
    readonly stats: Float64Array,
    simple: boolean,
  ) {
    this.count = stats.length / STAT_FIELDS;
    this.simpleNames = simple && this.count ? buf.toString("latin1", 0, buf.length - 1).split("\0") : simple ? [] : undefined;
  }

  /** The raw entry names (made on first use). */
  get names(): Buffer[] {
    if (!this.#names) {
      const names: Buffer[] = [];
      const buf = this.buf;
      let start = 0;
      for (let i = 0; i < buf.length; i++) {
        if (buf[i] === 0) {
          names.push(buf.subarray(start, i));
          start = i + 1;
        }
      }
      this.#names = names;
    }
    return this.#names;
  }
}

/**
 * A folder's entry names with their lstat, in one native call on the thread pool (undefined
 * without the addon: use readdir and lstat). A walk lists folders there while the main thread
 * compares the entries of others. Rejects like readdir when the folder cannot be read.
 */
export async function lstatDirAsync(dir: Buffer): Promise<DirStats | undefined> {
  if (!native?.lstatdirAsync) return undefined;
  return new DirStats(...(await native.lstatdirAsync(dir)));
}

/** Numbers per file of readFiles' result (see native/sitekeep_fs.c). */
export const READ_FIELDS = 9;
export const ReadField = {
  offset: 0,
  length: 1,
  errno: 2,
  size: 3,
  mtimeSec: 4,
  mtimeNsec: 5,
  ctimeSec: 6,
  ctimeNsec: 7,
  xattrListSize: 8,
} as const;

export interface ReadFiles {
  /** The files' bytes back to back. */
  data: Buffer;
  /** READ_FIELDS numbers per file (ReadField order). */
  f: Float64Array;
}

/** True when readFiles is available (the addon is built). */
export const canReadFiles = (): boolean => native?.readfiles !== undefined;

/**
 * Reads small files of any folders on the thread pool (`paths`: absolute paths, each followed by a
 * NUL), each up to limits[i] + 1 bytes (a file that reached limits[i] + 1 grew since it was
 * listed), with an fstat and an xattr probe after reading. A file that cannot be read, its folder
 * gone included, has a non-zero errno entry; bad arguments reject.
 */
export async function readFiles(paths: Buffer, limits: Float64Array): Promise<ReadFiles> {
  if (!native?.readfiles) throw errnoError("ENOSYS", "readfiles", paths.subarray(0, Math.max(0, paths.indexOf(0))), "function not implemented (native addon not built)");
  // openat() ignores the folder it is given for an absolute path: "/" only has to open.
  const [data, f] = await native.readfiles("/", paths, limits);
  return { data, f };
}

/** Numbers per file of writeFiles' metadata and result (see native/sitekeep_fs.c). */
export const WRITE_META = 7;
export const WRITE_RESULT = 2;
/** The step of writeFiles that failed for a file. */
export const WriteStep = { open: 1, write: 2, chown: 3, chmod: 4, utimes: 5, close: 6 } as const;
const WRITE_SYSCALL = ["", "open", "write", "fchown", "fchmod", "futimens", "close"];

export interface NewFile {
  name: Buffer;
  data: Buffer;
  /** Permission bits (with set-user-ID, set-group-ID and sticky). */
  mode: number;
  uid: number;
  gid: number;
  /** Both or neither. */
  atime?: TimeParts;
  mtime?: TimeParts;
}

/** True when writeFiles is available (the addon is built). */
export const canWriteFiles = (): boolean => native?.writefiles !== undefined;

/**
 * Creates new files in one folder on the thread pool: each with O_EXCL (never through whatever stands
 * there), its bytes (aligned zero blocks left as holes), then ownership when `chown`, mode and times
 * (ownership and mode only where the new file's differ: a file that keeps its creator's owner and
 * group is created with its permission bits, when `chown` only if its group gets what others get;
 * any other 0600 until then).
 * Returns per file undefined when all of it was done, else the error and the step that failed (after
 * a failed open or write nothing of the file is left); a folder that cannot be opened rejects.
 * The files' bytes are read in place: their Buffers must not change until this settles.
 */
export async function writeFiles(dir: Buffer, files: readonly NewFile[], chown: boolean): Promise<({ step: number; error: NodeJS.ErrnoException } | undefined)[]> {
  if (!native?.writefiles) throw errnoError("ENOSYS", "writefiles", dir, "function not implemented (native addon not built)");
  const meta = new Float64Array(files.length * WRITE_META);
  files.forEach((f, i) => {
    const m = i * WRITE_META;
    meta[m] = f.mode;
    meta[m + 1] = f.uid;
    meta[m + 2] = f.gid;
    if (f.atime === undefined || f.mtime === undefined) {
      meta[m + 3] = NaN;
    } else {
      meta[m + 3] = f.atime.sec;
      meta[m + 4] = f.atime.nsec;
      meta[m + 5] = f.mtime.sec;
      meta[m + 6] = f.mtime.nsec;
    }
  });
  // The bytes are read where they are, on the thread pool: a fresh array, so nothing changes it meanwhile.
  const r = await native.writefiles(dir, nulTerminated(files.map((f) => f.name)), files.map((f) => f.data), meta, chown ? 1 : 0);
  return files.map((f, i) => {
    const errno = r[i * WRITE_RESULT];
    if (!errno) return undefined;
    const step = r[i * WRITE_RESULT + 1];
    const code = errnoCode(errno);
    const error = errnoError(code, WRITE_SYSCALL[step] ?? "write", Buffer.concat([dir, Buffer.from("/"), f.name]), describeErrno(errno));
    return { step, error };
  });
}

/** strerror-like text for an errno ("permission denied"), as Node's own fs errors say it. */
function describeErrno(errno: number): string {
  try {
    return util.getSystemErrorMap().get(-errno)?.[1] ?? `error ${errno}`;
  } catch {
    return `error ${errno}`;
  }
}

function nulTerminated(names: Buffer[]): Buffer {
  const parts: Buffer[] = [];
  const nul = Buffer.alloc(1);
  for (const n of names) parts.push(n, nul);
  return Buffer.concat(parts);
}

/** errno number -> Node's code for the few a read can fail with (others: "E" + number). */
export function errnoCode(n: number): string {
  const name = Object.entries(os.constants.errno).find(([, v]) => v === n)?.[0];
  return name ?? `E${n}`;
}

const native = nativeAddon;

export const nativeAvailable: boolean = native !== undefined;

function errnoError(code: string, syscall: string, p: PathLike, detail: string): NodeJS.ErrnoException {
  const shown = typeof p === "string" ? p : p.toString();
  const err: NodeJS.ErrnoException = new Error(`${code}: ${detail}, ${syscall} '${shown}'`);
  err.code = code;
  err.errno = -((os.constants.errno as Record<string, number>)[code] ?? 0);
  err.syscall = syscall;
  err.path = shown;
  return err;
}

const NS_PER_S = 1_000_000_000n;

/** Splits ns since the epoch into [seconds, nanoseconds] with nanoseconds in [0, 1e9), also before 1970. */
function splitNs(ns: bigint): [bigint, number] {
  let sec = ns / NS_PER_S; // BigInt division truncates toward zero...
  let rem = ns % NS_PER_S;
  if (rem < 0n) {
    // ...so step down one second for negative times (floor division).
    rem += NS_PER_S;
    sec -= 1n;
  }
  return [sec, Number(rem)];
}

/** Sets atime and mtime of `p` itself (a symlink is not followed), in nanoseconds since the epoch. */
export function lutimesNs(p: PathLike, atimeNs: bigint, mtimeNs: bigint): void {
  if (native) {
    const [as, ans] = splitNs(atimeNs);
    const [ms, mns] = splitNs(mtimeNs);
    native.lutimes(p, as, ans, ms, mns);
    return;
  }
  // Fallback: Node takes seconds as a double, which keeps only about microsecond precision for
  // present-day times, so the restored nanoseconds may be off in the last digits.
  fs.lutimesSync(p, fallbackTime(atimeNs), fallbackTime(mtimeNs));
}

// fs.lutimesSync silently replaces a negative number with "now", but takes a pre-1970 Date as is
// (at millisecond precision), so times before the epoch go as Dates.
function fallbackTime(ns: bigint): number | Date {
  return ns >= 0n ? Number(ns) / 1e9 : new Date(Number(ns / 1_000_000n));
}

/**
 * Creates a fifo or device node. `mode` holds the file type (S_IFIFO, S_IFCHR, S_IFBLK) and the
 * permission bits (the process umask applies, as with mknod(2)); `dev` is the raw device number as
 * `fs.Stats.rdev` reports it (see makeDev).
 */
export function mknod(p: PathLike, mode: number, dev: bigint): void {
  if (native) {
    native.mknod(p, mode, dev);
    return;
  }
  // Fallback: fifos need no privilege and coreutils can make them; device nodes cannot be done.
  if ((mode & fs.constants.S_IFMT) !== fs.constants.S_IFIFO) {
    throw errnoError("ENOSYS", "mknod", p, "function not implemented (native addon not built)");
  }
  const arg = typeof p === "string" ? p : p.toString("utf8");
  if (typeof p !== "string" && !Buffer.from(arg, "utf8").equals(p)) {
    // Arguments of a child process are strings, so a non-UTF-8 name cannot be passed through.
    throw errnoError("ENOSYS", "mknod", p, "non-UTF-8 name needs the native addon");
  }
  const perm = (mode & 0o7777).toString(8);
  const res = spawnSync("mkfifo", ["-m", perm, "--", arg], { encoding: "utf8" });
  if (res.error) throw res.error;
  if (res.status !== 0) {
    const reason = res.stderr.trim();
    throw errnoError(/File exists/i.test(reason) ? "EEXIST" : "EIO", "mknod", p, reason || "mkfifo failed");
  }
}

/**
 * The raw device number for a major/minor pair, encoded as this platform's makedev() does, so it
 * compares equal to `fs.Stats.rdev` and can be passed to mknod.
 */
export function makeDev(major: number, minor: number): bigint {
  const ma = BigInt(major >>> 0);
  const mi = BigInt(minor >>> 0);
  if (process.platform === "darwin") return (ma << 24n) | (mi & 0xffffffn);
  // glibc/Linux: 12 low bits of major at 8..19, 8 low bits of minor at 0..7, the rest above.
  return ((ma & 0xfffff000n) << 32n) | ((ma & 0xfffn) << 8n) | ((mi & 0xffffff00n) << 12n) | (mi & 0xffn);
}

/** Names of the extended attributes of `p` itself (a symlink is not followed). [] without the addon. */
export function listXattrs(p: PathLike): string[] {
  return native ? native.llistxattr(p) : [];
}

/** The value of one extended attribute of `p` itself. */
export function getXattr(p: PathLike, name: string): Buffer {
  if (!native)
    throw errnoError("ENOTSUP", "lgetxattr", p, "operation not supported (native addon not built)");
  return native.lgetxattr(p, name);
}

/** Creates or replaces one extended attribute of `p` itself. */
export function setXattr(p: PathLike, name: string, value: Buffer): void {
  if (!native)
    throw errnoError("ENOTSUP", "lsetxattr", p, "operation not supported (native addon not built)");
  native.lsetxattr(p, name, value);
}

/**
 * True for "this filesystem (or platform) has no xattrs of that kind". Linux reports EOPNOTSUPP under
 * the name ENOTSUP (same number); macOS has two distinct codes.
 */
export function isUnsupportedXattrError(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException | null)?.code;
  return code === "ENOTSUP" || code === "EOPNOTSUPP";
}
