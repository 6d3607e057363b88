// Reads the small files of many folders in shared batches: one native read on the thread pool and
// one encode off the main thread per batch, whichever folders its files come from. A site of many
// tiny folders (320k files in 32k folders, ~10 per folder) paid both hand-overs per folder: most
// of the main thread's time in those calls was waiting for a core after waking another thread.
//
// Batches are gathered without timers (util/gather.ts); a batch's slot bounds the bytes read ahead.
import type { EncodedBatch } from "../repo/blob-codec.js";
import { type ReadFiles, READ_FIELDS, ReadField, readFiles } from "../platform/fsx.js";
import { releaseBuffer } from "../platform/native.js";
import { Semaphore } from "../util/concurrency.js";
import { Gatherer } from "../util/gather.js";

export type EncodeFn = (data: Uint8Array, offsets: number[], lengths: number[]) => Promise<EncodedBatch>;

/** One folder's files within a batch: entries first .. first + count - 1 of `r` and `enc`. */
export interface SmallFilesShare {
  r: ReadFiles;
  enc: EncodedBatch;
  first: number;
  /**
   * Called once this share's blobs are queued for packing: the batch's slot (what bounds the
   * bytes read ahead) returns, and the memory of `enc` is freed, when every share of it has been
   * released. `r.data` is freed once encoded (its numbers, `r.f`, stay).
   */
  release(): void;
}

export interface SmallFileReaderOptions {
  /** Files and bytes per batch at most (one request may exceed the bytes alone). */
  maxFiles: number;
  maxBytes: number;
  /** Batches read, encoded or not yet released at once. */
  slots: number;
  /** Below this many batches out (waiting for a slot, read or encoded), a request leaves at once. */
  eager: number;
}

interface Request {
  dir: Buffer;
  sep: Buffer;
  names: Buffer[];
  limits: number[];
  /** Bytes the request may read: its limits plus one per file. */
  bytes: number;
}

const NUL = Buffer.alloc(1);

export class SmallFileReader {
  private readonly gatherer: Gatherer<Request, SmallFilesShare>;
  private readonly slots: Semaphore;

  constructor(
    private readonly encode: EncodeFn,
    opts: SmallFileReaderOptions,
  ) {
    this.slots = new Semaphore(opts.slots);
    const files = (b: readonly Request[]): number => b.reduce((n, q) => n + q.names.length, 0);
    const bytes = (b: readonly Request[]): number => b.reduce((n, q) => n + q.bytes, 0);
    this.gatherer = new Gatherer((batch) => this.run(batch), {
      eager: opts.eager,
      fits: (b, q) => files(b) + q.names.length <= opts.maxFiles && bytes(b) + q.bytes <= opts.maxBytes,
      full: (b) => files(b) >= opts.maxFiles || bytes(b) >= opts.maxBytes,
    });
  }

  /**
   * Reads the files `names` of the folder `dir` (absolute; `sep` goes between the two) up to
   * limits[i] + 1 bytes each, and encodes them as blobs. At most opts.maxFiles names per call.
   * Rejects when the batch could not be read or encoded at all (a file that cannot be read has its
   * errno in the share instead).
   */
  read(dir: Buffer, sep: Buffer, names: Buffer[], limits: number[]): Promise<SmallFilesShare> {
    let bytes = 0;
    for (const l of limits) bytes += l + 1;
    return this.gatherer.add({ dir, sep, names, limits, bytes });
  }

  /** A batch: a slot, one read, one encode, then a share per request. */
  private async run(batch: Request[]): Promise<SmallFilesShare[]> {
    await this.slots.acquire();
    const paths: Buffer[] = [];
    const limits: number[] = [];
    const firsts: number[] = [];
    for (const q of batch) {
      firsts.push(limits.length);
      for (let i = 0; i < q.names.length; i++) paths.push(q.dir, q.sep, q.names[i], NUL);
      limits.push(...q.limits);
    }
    let r: ReadFiles;
    let enc: EncodedBatch;
    try {
      r = await readFiles(Buffer.concat(paths), Float64Array.from(limits));
      const offsets: number[] = [];
      const lengths: number[] = [];
      for (let k = 0; k < limits.length; k++) {
        const rb = k * READ_FIELDS;
        offsets.push(r.f[rb + ReadField.offset]);
        lengths.push(r.f[rb + ReadField.errno] ? 0 : r.f[rb + ReadField.length]);
      }
      enc = await this.encode(r.data, offsets, lengths);
      releaseBuffer(r.data); // encoded: the shares need its numbers only
    } catch (err) {
      this.slots.release();
      throw err;
    }
    const done = (): void => {
      // Every share's blobs are in packs (copied there) or were known: the batch's memory goes now.
      releaseBuffer(enc.sealed);
      releaseBuffer(enc.ids);
      this.slots.release();
    };
    let unreleased = batch.length;
    return firsts.map((first) => {
      let released = false;
      return {
        r,
        enc,
        first,
        release: () => {
          if (released) return;
          released = true;
          if (--unreleased === 0) done();
        },
      };
    });
  }
}
