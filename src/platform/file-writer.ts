// A new file written front to back (a restore's large files, a local repository's staged files):
// aligned all-zero blocks become holes, and when asked (SITEKEEP_DIRECT_IO=1) and where the file
// system takes it, the bytes go to the disk past the page cache (O_DIRECT) through an aligned
// staging buffer.
//
// Why direct: copying a restore's bytes into the page cache was its largest single cost (`perf`
// of the mixed bench restore: 23 % of all samples in the kernel's copy, more on memory the host
// has to hand back first), and a restore of a whole site would push the server's working set out
// of the cache. `dd` of a 321 MB file here: 0.6-0.8 s of system time buffered, 0.07 s direct, no
// slower in wall time with 1 MiB writes. A writer then waits for the disk, though, so neither
// restores nor local repositories' data packs write past the cache unless asked (see Restorer and
// LocalBackend; a pack written through it is dropped from it once durable: dropCache).
import {
  closeSync,
  constants,
  fsync,
  ftruncateSync,
  open,
  openSync,
  statfsSync,
  unlinkSync,
  write,
  writeSync,
} from "node:fs";
import { promisify } from "node:util";
import { isErrnoError } from "../errors.js";
import { nativeAddon } from "./native.js";

/** Memory, file offsets and lengths of direct writes are multiples of this (every common block size divides it). */
export const DIRECT_ALIGN = 4096;
/** Bytes staged per file before they are written. */
export const STAGE_BYTES = 1024 * 1024;
/** Writes at least this large go to the thread pool; the rest are not worth the hop. */
const ASYNC_WRITE_MIN = 64 * 1024;
const SPARSE_BLOCK = 4096;
const ZERO_BLOCK = Buffer.alloc(SPARSE_BLOCK);
const NO_FOLLOW = constants.O_NOFOLLOW ?? 0;
const CREATE_NEW = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | NO_FOLLOW;
const O_DIRECT: number = constants.O_DIRECT ?? 0;

const openAsync = promisify(open);
const writeAsync = promisify(write);
const fsyncAsync = promisify(fsync);

/**
 * File systems on a block device, where O_DIRECT is the page-cache bypass it is meant to be: ext2-4,
 * xfs, btrfs, f2fs (statfs magic numbers). Elsewhere it is off: on NFS or SMB each write would be
 * an uncached round trip, FUSE and tmpfs have no disk to write to.
 */
const DIRECT_FILE_SYSTEMS = new Set([0xef53, 0x58465342, 0x9123683e, 0xf2f52010]);

/**
 * Direct writes for one restore (or one local repository's data packs): whether they are still
 * tried, and the staging buffers of the files being written (reused, so their memory is touched
 * once).
 */
export class DirectWrites {
  private usable: boolean;
  private readonly stages: Buffer[] = [];

  /**
   * Off unless `enabled`, and where O_DIRECT or aligned memory (the addon) is missing. `allocate`
   * gives the staging buffers (tests give misaligned ones). Restores use forFolder.
   */
  constructor(
    enabled: boolean,
    private readonly allocate: ((size: number) => Buffer) | undefined = nativeAddon?.alignedBuffer &&
      ((size) => nativeAddon!.alignedBuffer!(size, DIRECT_ALIGN)),
  ) {
    this.usable = enabled && O_DIRECT !== 0 && allocate !== undefined;
  }

  /**
   * Direct writes for files created under `dir` when asked (`SITEKEEP_DIRECT_IO=1`) and where its
   * file system is one of DIRECT_FILE_SYSTEMS; off otherwise (restores and local repositories' data
   * packs write through the page cache by default: see Restorer and LocalBackend).
   */
  static forFolder(dir: string): DirectWrites {
    if (process.env.SITEKEEP_DIRECT_IO !== "1") return new DirectWrites(false);
    let type: number;
    try {
      type = statfsSync(dir).type;
    } catch {
      return new DirectWrites(false);
    }
    return new DirectWrites(DIRECT_FILE_SYSTEMS.has(type));
  }

  get enabled(): boolean {
    return this.usable;
  }

  /** The first refusal (a file system without O_DIRECT, or one wanting other alignment) turns them off for the rest of the restore. */
  refuse(): void {
    this.usable = false;
    this.stages.length = 0;
  }

  take(): Buffer | undefined {
    if (!this.usable) return undefined;
    try {
      return this.stages.pop() ?? this.allocate!(STAGE_BYTES);
    } catch {
      this.refuse(); // no aligned memory (out of memory, or a runtime without external buffers): write through the cache
      return undefined;
    }
  }

  give(stage: Buffer): void {
    if (this.usable) this.stages.push(stage);
  }
}

/** One new file written front to back: write, write, ..., finish, close (discard to give up). */
export class FileWriter {
  /** File offset of stage[0] (a multiple of STAGE_BYTES), or of the next byte when nothing is staged. */
  private flushed = 0;
  private staged = 0;

  private constructor(
    private fd: number,
    private readonly path: Buffer,
    private stage: Buffer | undefined,
    private readonly direct: DirectWrites | undefined,
  ) {}

  /** Creates `path` (it must not exist; never through a symlink), mode 0600. */
  static async create(path: Buffer, direct?: DirectWrites): Promise<FileWriter> {
    const stage = direct?.take();
    if (stage && direct) {
      try {
        return new FileWriter(await openAsync(path, CREATE_NEW | O_DIRECT, 0o600), path, stage, direct);
      } catch (err) {
        if (!isErrnoError(err, "EINVAL")) {
          direct.give(stage);
          throw err;
        }
        // Linux checks O_DIRECT after it has created the file (O_EXCL: this call's own).
        direct.refuse();
        unlinkQuietly(path);
      }
    }
    return new FileWriter(await openAsync(path, CREATE_NEW, 0o600), path, undefined, undefined);
  }

  /** Bytes written so far. */
  get length(): number {
    return this.flushed + this.staged;
  }

  /** Whether the file was opened for direct writes (a refused write goes on through the cache). */
  get isDirect(): boolean {
    return this.stage !== undefined;
  }

  /** Appends `data`; it may be reused once this settles. */
  async write(data: Buffer): Promise<void> {
    const stage = this.stage;
    if (!stage) {
      await writeSparse(this.fd, data, this.flushed, data.length >= ASYNC_WRITE_MIN);
      this.flushed += data.length;
      return;
    }
    for (let off = 0; off < data.length;) {
      const n = Math.min(data.length - off, stage.length - this.staged);
      data.copy(stage, this.staged, off, off + n);
      this.staged += n;
      off += n;
      if (this.staged === stage.length) await this.flush(stage.length);
    }
  }

  /** Writes what is staged and sets the file's length (holes at the end get it from this too). Returns the length. */
  async finish(): Promise<number> {
    if (this.stage && this.staged > 0) {
      // The last block goes out whole, zero-padded, and the truncate below cuts it to length.
      const padded = Math.ceil(this.staged / DIRECT_ALIGN) * DIRECT_ALIGN;
      this.stage.fill(0, this.staged, padded);
      await this.flush(padded);
    }
    const length = this.length;
    // Synchronous although cutting a direct-written file's padded last block takes ~6 ms here (0.27 s
    // of a mixed restore's main thread): on the thread pool it waited behind decode jobs while its
    // file held a write slot and a stage, and the restore peaked ~20 MiB higher and was no faster.
    ftruncateSync(this.fd, length);
    return length;
  }

  /** Makes what was written durable (after finish). */
  sync(): Promise<void> {
    return fsyncAsync(this.fd);
  }

  /**
   * Drops the file's pages from the page cache (after sync, so that all of them are clean and
   * go). False where the addon or the advice is missing: the pages stay, as any file's would.
   */
  dropCache(): boolean {
    return nativeAddon?.dropCache?.(this.fd) ?? false;
  }

  /** Closes the file after finish (no write may be in flight). */
  close(): void {
    if (this.stage) this.direct?.give(this.stage);
    this.stage = undefined;
    closeSync(this.fd);
  }

  /** Gives up on the file: closes and removes it (no write may be in flight). */
  discard(): void {
    this.close();
    unlinkQuietly(this.path);
  }

  private async flush(len: number): Promise<void> {
    const bytes = this.stage!.subarray(0, len);
    try {
      await writeSparse(this.fd, bytes, this.flushed, true);
    } catch (err) {
      if (!isErrnoError(err, "EINVAL")) throw err;
      // A file system that opened the file for O_DIRECT but wants other alignment: the same bytes
      // again through the page cache, from the start of this stage.
      this.direct?.refuse();
      const fd = openSync(this.path, constants.O_WRONLY | NO_FOLLOW);
      closeSync(this.fd);
      this.fd = fd;
      await writeSparse(this.fd, bytes, this.flushed, true);
    }
    this.flushed += this.staged;
    this.staged = 0;
  }
}

function unlinkQuietly(path: Buffer): void {
  try {
    unlinkSync(path);
  } catch {
    // not there
  }
}

/** Writes `data` at `pos`, leaving aligned all-zero blocks as holes. */
async function writeSparse(fd: number, data: Buffer, pos: number, onPool: boolean): Promise<void> {
  let i = 0;
  const n = data.length;
  // The first block ends at the next block boundary of the file, so holes are aligned.
  while (i < n) {
    const blockEnd = Math.min(n, i + SPARSE_BLOCK - ((pos + i) % SPARSE_BLOCK));
    if (isZero(data, i, blockEnd)) {
      i = blockEnd;
      continue;
    }
    // Extend over following non-zero blocks and write them in one call.
    let j = blockEnd;
    while (j < n) {
      const e = Math.min(n, j + SPARSE_BLOCK);
      if (isZero(data, j, e)) break;
      j = e;
    }
    for (let off = i; off < j;) {
      off += onPool
        ? (await writeAsync(fd, data, off, j - off, pos + off)).bytesWritten
        : writeSync(fd, data, off, j - off, pos + off);
    }
    i = j;
  }
}

function isZero(buf: Buffer, start: number, end: number): boolean {
  // A block of data mostly has a non-zero byte at one end or the other; checking them first spares
  // the full comparison and its call into the runtime (~400,000 calls, ~0.2 s of the main thread, in
  // a mixed restore's 1.7 GB of large files).
  if (buf[start] !== 0 || buf[end - 1] !== 0) return false;
  return ZERO_BLOCK.compare(buf, start, end, 0, end - start) === 0;
}
