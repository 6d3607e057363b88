// Reads the small files of many folders in shared batches: one native read on the thread pool and
// one encode on a worker thread per batch, whichever folders its files come from. A site of many
// tiny folders (320k files in 32k folders, ~10 per folder) paid both hand-overs per folder: most
// of the main thread's time in those calls was waiting for a core after waking another thread.
//
// No timers: a folder's files leave at once while few batches are out (nothing to wait for), and
// otherwise join the open batch, which leaves when one that is out comes back or when it is full.
import type { EncodedBatch } from "../repo/blob-codec.js";
import { type ReadFiles, READ_FIELDS, ReadField, readFiles } from "../platform/fsx.js";
import { Semaphore } from "../util/concurrency.js";

export type EncodeFn = (data: Uint8Array, offsets: number[], lengths: number[]) => Promise<EncodedBatch>;

/** One folder's files within a batch: entries first .. first + count - 1 of `r` and `enc`. */
export interface SmallFilesShare {
  r: ReadFiles;
  enc: EncodedBatch;
  first: number;
  /**
   * Called once this share's blobs are queued for packing: the batch's slot (what bounds the
   * bytes read ahead) returns when every share of it has been released.
   */
  release(): void;
}

export interface SmallFileReaderOptions {
  /** Files and bytes per batch at most (one request may exceed the bytes alone). */
  maxFiles: number;
  maxBytes: number;
  /** Batches read, encoded or not yet released at once. */
  slots: number;
  /** Below this many batches being read or encoded, a request leaves at once (at least 1). */
  eager: number;
}

interface Request {
  first: number;
  resolve: (s: SmallFilesShare) => void;
  reject: (err: unknown) => void;
}

interface OpenBatch {
  /** NUL-terminated absolute paths, in parts (folder, separator, name, NUL). */
  paths: Buffer[];
  limits: number[];
  bytes: number;
  requests: Request[];
}

const NUL = Buffer.alloc(1);

export class SmallFileReader {
  private open: OpenBatch | undefined;
  /** Batches between leaving and their shares being handed out. */
  private out = 0;
  private readonly slots: Semaphore;
  private readonly eager: number;

  constructor(
    private readonly encode: EncodeFn,
    private readonly opts: SmallFileReaderOptions,
  ) {
    this.slots = new Semaphore(opts.slots);
    // With none out, nothing else would ever send the open batch.
    this.eager = Math.max(1, opts.eager);
  }

  /**
   * Reads the files `names` of the folder `dir` (absolute) up to limits[i] + 1 bytes each, and
   * encodes them as blobs. At most opts.maxFiles names per call. Rejects when the batch could not
   * be read or encoded at all (a file that cannot be read has its errno in the share instead).
   */
  read(dir: Buffer, sep: Buffer, names: Buffer[], limits: number[]): Promise<SmallFilesShare> {
    let bytes = 0;
    for (const l of limits) bytes += l + 1;
    let b = this.open;
    if (b && (b.limits.length + names.length > this.opts.maxFiles || b.bytes + bytes > this.opts.maxBytes)) {
      this.launch();
      b = undefined;
    }
    if (!b) b = this.open = { paths: [], limits: [], bytes: 0, requests: [] };
    const first = b.limits.length;
    for (let i = 0; i < names.length; i++) b.paths.push(dir, sep, names[i], NUL);
    b.limits.push(...limits);
    b.bytes += bytes;
    const share = new Promise<SmallFilesShare>((resolve, reject) => b.requests.push({ first, resolve, reject }));
    if (this.out < this.eager || b.limits.length >= this.opts.maxFiles || b.bytes >= this.opts.maxBytes) this.launch();
    return share;
  }

  /** Sends the open batch on its way: a slot, the read, the encode, then its shares. */
  private launch(): void {
    const b = this.open;
    if (!b) return;
    this.open = undefined;
    this.out++;
    void this.run(b).finally(() => {
      this.out--;
      this.launch(); // what gathered meanwhile
    });
  }

  private async run(b: OpenBatch): Promise<void> {
    await this.slots.acquire();
    let r: ReadFiles;
    let enc: EncodedBatch;
    try {
      r = await readFiles(Buffer.concat(b.paths), Float64Array.from(b.limits));
      const offsets: number[] = [];
      const lengths: number[] = [];
      for (let k = 0; k < b.limits.length; k++) {
        const rb = k * READ_FIELDS;
        offsets.push(r.f[rb + ReadField.offset]);
        lengths.push(r.f[rb + ReadField.errno] ? 0 : r.f[rb + ReadField.length]);
      }
      enc = await this.encode(r.data, offsets, lengths);
    } catch (err) {
      this.slots.release();
      for (const q of b.requests) q.reject(err);
      return;
    }
    let unreleased = b.requests.length;
    const release = (): void => {
      if (--unreleased === 0) this.slots.release();
    };
    for (const q of b.requests) {
      let released = false;
      q.resolve({
        r,
        enc,
        first: q.first,
        release: () => {
          if (!released) {
            released = true;
            release();
          }
        },
      });
    }
  }
}
