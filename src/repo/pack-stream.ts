// A pack written to storage as it fills instead of held whole in memory (restic writes its packs
// to temporary files for the same reason): blobs are gathered into small segments, and each full
// segment, or a large blob as it is, is written to the backend's staged file and hashed, in order,
// while the next blobs arrive. Finishing appends the header and names the file by its SHA-256.
// Three data packs held whole were ~51 MiB of a backup's peak; a streamed one holds at most three
// segments (one filling, WRITING_MAX being written).
import type { StagedFile } from "../backend/backend.js";
import type { MasterKey } from "./crypto.js";
import { type Sha256Stream, sha256Stream } from "./id.js";
import { type BlobType, type PackedBlob, encodeHeader } from "./pack.js";

/** Bytes gathered before a write. Blobs of at least half of it are written as they are. */
export const SEGMENT_SIZE = 1024 * 1024;
/** Segments of one pack being written at once; a blob that needs another one waits. */
const WRITING_MAX = 2;

export class StreamedPack {
  readonly blobs: PackedBlob[] = [];
  size = 0;
  private readonly hash: Sha256Stream = sha256Stream();
  /** Writes and hash updates, one after the other in the file's order. */
  private io: Promise<void>;
  private file: StagedFile | undefined;
  private failure: unknown;
  private segment: Buffer | undefined;
  private used = 0;
  /** Segments handed to `io` and not yet written. */
  private writing = 0;
  /** Settles once the last blob that had to wait is placed (finish waits for it). */
  private lastWaiting: Promise<void> = Promise.resolve();
  /** Blobs waiting for a segment, in call order (their places in the pack are taken). */
  private readonly waiting: { sealed: Uint8Array; resolve: () => void; reject: (err: unknown) => void }[] =
    [];

  /**
   * `open` starts the staged file (Backend.stage); `segments` is a pool of SEGMENT_SIZE buffers
   * shared by the packs of one repository: a segment goes back to it once written.
   */
  constructor(
    readonly type: BlobType,
    open: () => Promise<StagedFile>,
    private readonly segments: Buffer[],
  ) {
    this.io = open().then((f) => {
      this.file = f;
    });
    this.io.catch((err: unknown) => {
      this.failure ??= err;
    });
  }

  /**
   * Adds a sealed blob at the end of the pack. Its place is taken at once, in call order; the
   * promise settles when `sealed` may be freed or reused. A blob that finds the segments full
   * waits (with the blobs after it) until one is written: the pack's memory stays bounded however
   * fast blobs come. It rejects when a write failed (the pack cannot be finished then either).
   */
  add(id: Buffer, sealed: Uint8Array, uncompressedLength: number): Promise<void> {
    this.blobs.push({ id, type: this.type, offset: this.size, length: sealed.length, uncompressedLength });
    this.size += sealed.length;
    if (this.failure !== undefined) return Promise.reject(this.failure);
    if (this.waiting.length === 0 && this.hasRoom(sealed.length)) return this.place(sealed);
    const placed = new Promise<void>((resolve, reject) => this.waiting.push({ sealed, resolve, reject }));
    this.lastWaiting = placed.catch(() => undefined);
    return placed;
  }

  private hasRoom(n: number): boolean {
    if (n >= SEGMENT_SIZE / 2) return true; // written as it is, the caller waits for it
    return (this.segment !== undefined && this.used + n <= this.segment.length) || this.writing < WRITING_MAX;
  }

  /** Copies `sealed` into the segment, or queues it to be written as it is (half a segment and more). */
  private place(sealed: Uint8Array): Promise<void> {
    if (sealed.length >= SEGMENT_SIZE / 2) {
      this.sendSegment(); // what was gathered goes first
      return this.write(sealed);
    }
    if (this.segment && this.used + sealed.length > this.segment.length) this.sendSegment();
    const seg = (this.segment ??= this.segments.pop() ?? Buffer.allocUnsafeSlow(SEGMENT_SIZE));
    seg.set(sealed, this.used);
    this.used += sealed.length;
    return Promise.resolve();
  }

  /** Places the waiting blobs that fit now, in order; after a failure, rejects them all. */
  private wake(): void {
    while (this.waiting.length) {
      const w = this.waiting[0];
      if (this.failure === undefined && !this.hasRoom(w.sealed.length)) return;
      this.waiting.shift();
      if (this.failure !== undefined) w.reject(this.failure);
      else this.place(w.sealed).then(w.resolve, w.reject);
    }
  }

  /** Appends the header, writes what is left and publishes the pack under its ID (returned). */
  async finish(key: MasterKey): Promise<string> {
    const header = encodeHeader(key, this.blobs);
    try {
      await this.lastWaiting; // every blob placed (the one that filled the pack may still wait)
      this.sendSegment();
      await this.write(header);
      const id = this.hash.digestHex();
      await this.file!.commit({ type: "data", name: id });
      return id;
    } catch (err) {
      await this.abort();
      throw err;
    }
  }

  /** Drops the pack: waits for the writes under way and removes the staged file. */
  async abort(): Promise<void> {
    this.failure ??= new Error("the pack was abandoned");
    this.wake();
    this.sendSegment();
    await this.io.catch(() => undefined);
    await this.file?.abort();
  }

  /** Queues the segment being gathered (if any) for writing; a new one starts with the next blob. */
  private sendSegment(): void {
    const seg = this.segment;
    if (!seg || this.used === 0) return;
    const bytes = seg.subarray(0, this.used);
    this.segment = undefined;
    this.used = 0;
    this.writing++;
    void this.write(bytes)
      .catch(() => undefined) // the failure is kept in this.failure
      .finally(() => {
        this.writing--;
        this.segments.push(seg);
        this.wake();
      });
  }

  /** Writes and hashes `bytes` after everything queued before them. */
  private write(bytes: Uint8Array): Promise<void> {
    const step = this.io.then(async () => {
      if (this.failure !== undefined) throw this.failure;
      // Both settle before the bytes may be reused, even when one fails.
      const [w, h] = await Promise.allSettled([this.file!.write(bytes), this.hash.update(bytes)]);
      if (w.status === "rejected") throw w.reason;
      if (h.status === "rejected") throw h.reason;
    });
    this.io = step.catch((err: unknown) => {
      this.failure ??= err;
    });
    return step;
  }
}
