// A restic-format repository: opens with a password, holds the master key, the config and the
// blob index, stores blobs in packs and unpacked files (index, snapshots, locks) as JSON.
//
// Write ordering is what makes it crash safe: a pack is durable before an index file names it, and
// an index file is durable before a snapshot refers to its blobs. A crash leaves only unreferenced
// packs, which prune collects.
import { randomBytes } from "node:crypto";
import { getSystemErrorName } from "node:util";
import type { Backend, FileType, OpenFile } from "../backend/backend.js";
import { wrapIoError } from "../backend/local.js";
import { ExitCode, SitekeepError, errorMessage } from "../errors.js";
import { BlobIndex, type BlobLocation } from "./blob-index.js";
import { type EncodedBatch, batchBlob, damagedBlob, decodeBlob, decodeBlobsInBackground, decodeFromFiles, encodeBatchInBackground, packEntries, sealInBackground } from "./blob-codec.js";
import { encodeInWorker } from "./blob-workers.js";
import { packUnpacked, packUnpackedAsync, unpackUnpacked, unpackUnpackedAsync, compress, compressAsync, compressesInBackground, decompressAsync } from "./compression.js";
import { type RepoConfig, SUPPORTED_VERSIONS } from "./config.js";
import { type MasterKey, newRandomKey, open, openAsync, seal, sealAsync } from "./crypto.js";
import { ID_SIZE, hashHex, hashHexAsync, isIdHex, sha256, sha256Async } from "./id.js";
import { type IndexFileJSON, UnindexedPacks, parseIndexFile } from "./index-file.js";
import { type IndexTable, scanIndex } from "./index-table.js";
import { addKey, openWithPassword, type KdfParams, type UnlockedKey } from "./keyfile.js";
import { type BlobType, PackBuilder, type PackedBlob } from "./pack.js";
import { StreamedPack } from "./pack-stream.js";
import { formatPolynomial, parsePolynomial, randomPolynomial } from "./polynomial.js";
import { type Snapshot, type SnapshotJSON, byTimeDesc } from "./snapshot.js";
import { releaseBuffer } from "../platform/native.js";
import { asBuffer } from "../util/bytes.js";
import { Semaphore, mapLimit } from "../util/concurrency.js";

export interface RepositoryOptions {
  /** Target size of a pack file in bytes (restic's default is 16 MiB). */
  packSize?: number;
  /** Packs uploaded at the same time. */
  uploadConcurrency?: number;
  /** Refuse every operation that deletes (forget, prune, key removal). */
  appendOnly?: boolean;
  /** zstd for blobs in v2 repositories ("auto": keep when it shrinks, "off": never). */
  compression?: "auto" | "off";
  /** Wraps the backend once the repository ID is known (the local cache of index/snapshot files). */
  wrapBackend?: (backend: Backend, repoId: string) => Backend;
  /**
   * The master key as openWithPassword gives it for this backend and password, already on its way
   * (the CLI starts deriving it while its modules load: cli/key-ahead.ts). open derives it otherwise.
   */
  key?: Promise<UnlockedKey>;
}

export interface InitOptions extends RepositoryOptions {
  version?: 1 | 2;
  polynomial?: bigint;
  kdf?: KdfParams;
}

export interface SaveBlobResult {
  id: Buffer;
  /** True when the blob was new and was stored; false when deduplicated. */
  added: boolean;
  /** Bytes the blob adds to the repository (sealed size), 0 when deduplicated. */
  storedSize: number;
}

const INDEX_EVERY_PACKS = 8;
/**
 * An index file is written once it names this many blobs or more (restic uses the same number):
 * packs of small files hold tens of thousands of blobs each, and every reader parses a whole index
 * file at once. A single pack of tiny blobs can still exceed it.
 */
const INDEX_MAX_BLOBS = 50_000;
/**
 * Blobs being compressed on the thread pool at once (queueBlob). Two keep both cores busy while
 * the main thread reads, hashes and encrypts; the rest is read-ahead. Each holds its plaintext and
 * its compressed form, so this also bounds the memory of the backup pipeline.
 */
const ENCODE_CONCURRENCY = 4;
/** Room beyond the pack size in a new pack buffer: the blob that fills a pack and the header. */
const PACK_SLACK = 1024 * 1024;
/** Smaller blobs are compressed on the main thread: a thread pool round trip costs ~20 µs. */
const BACKGROUND_MIN = 16 * 1024;
const INDEX_EVERY_MS = 60_000;
/**
 * Trees are encoded off this thread (encodeSmallBlobs) this many (or TREE_BATCH_BYTES) at a time,
 * TREE_BATCHES of them at once: a site of many small folders made one small tree per folder, and
 * compressing and sealing them was a tenth of the main thread's time.
 */
const TREE_BATCH = 64;
const TREE_BATCH_BYTES = 1024 * 1024;
const TREE_BATCHES = 4;
/** Tree blobs are read in aligned windows of this size, the last TREE_WINDOWS_KEPT kept (8 MiB). */
const TREE_WINDOW = 256 * 1024;
const TREE_WINDOWS_KEPT = 32;
/** Buffers of dropped windows kept for the next reads (beyond them, left to the collector). */
const WINDOW_BUFFERS_SPARE = 8;

/** A window of a tree pack: its bytes (read once), the loads reading from it, whether it is still kept. */
interface TreeWindow {
  bytes: Promise<Buffer>;
  users: number;
  dropped: boolean;
}
/** loadBlobs reads blobs of a pack in one request when at most NEAR_GAP bytes lie between them, up to NEAR_RANGE bytes. */
const NEAR_GAP = 64 * 1024;
const NEAR_RANGE = 4 * 1024 * 1024;

/** Blobs of one pack read together (loadBlobs): bytes start to end, holding the blobs `members` (indexes into its ids). */
interface PackRange {
  packId: string;
  start: number;
  end: number;
  members: number[];
}

/** What becomes of a queued blob's plaintext: see Repository.queueBlob. */
export type PlainUse = "free" | ((readDone: Promise<void>) => void);

function noop(): void {}

export class Repository {
  #index = new BlobIndex();
  /** The memory of plaintexts readBlobs decoded, each batch's one ArrayBuffer, until releaseBlobs frees it. */
  #decodedBatches = new WeakSet<ArrayBuffer>();
  readonly packSize: number;
  readonly appendOnly: boolean;
  private readonly uploadConcurrency: number;
  private readonly compression: "auto" | "off";

  /** Blobs are compressed: repository version 2 and compression not turned off. */
  private get compresses(): boolean {
    return this.version >= 2 && this.compression === "auto";
  }
  /**
   * Packs being filled. They stream to a staged file where the backend can (local paths and
   * shares: see StreamedPack) and are built in memory where it cannot (S3). Tree packs stream too:
   * a site of many small folders fills them, and one built in memory grew to a 16 MiB buffer.
   */
  private readonly builders: { data: PackBuilder | StreamedPack | undefined; tree: PackBuilder | StreamedPack | undefined } = { data: undefined, tree: undefined };
  /** Buffers of stored packs, to build the next packs in. */
  private readonly packBuffers: Buffer[] = [];
  /** Segments of streamed packs, reused (pack-stream.ts). */
  private readonly segments: Buffer[] = [];
  /**
   * Data packs in memory (filling, waiting for an upload slot or uploading), at most
   * uploadConcurrency + 1 (set in the constructor). Without it every caller that found the pack
   * full started another while the full ones waited for a slot: six 17 MiB packs at once in a
   * backup of large files, a third of its memory.
   */
  private readonly packSlots: Semaphore;
  /** Blobs in open or uploading packs, keyed "type:hex", so a backup never stores one twice. */
  private readonly inflight = new Set<string>();
  private readonly uploads = new Set<Promise<void>>();
  /** Packs handed to upload() that wait for an upload slot (see upload). */
  private readonly queuedUploads = new Set<Promise<void>>();
  private readonly encodeSlots = new Semaphore(ENCODE_CONCURRENCY);
  private readonly encoding = new Set<Promise<void>>();
  /** Trees given to queueTree, not yet sent to be encoded. */
  private treeBatch: { text: string; length: number; id: Buffer; onStored?: (storedSize: number) => void }[] = [];
  private treeBatchBytes = 0;
  private readonly treeSlots = new Semaphore(TREE_BATCHES);
  /** Recently read windows of tree packs, keyed "packId:offset", least recently used first. */
  private readonly treeWindows = new Map<string, TreeWindow>();
  /** Buffers of windows no longer kept, to read the next windows into (backends with loadInto). */
  private readonly windowBuffers: ArrayBuffer[] = [];
  private uploadError: unknown;
  /** Durable packs not yet named by an index file. */
  private readonly unindexed = new UnindexedPacks();
  /** Set by abandonWrites: nothing more is packed, uploaded or indexed. */
  private abandoned = false;
  private lastIndexWrite = Date.now();
  private indexWrite: Promise<void> = Promise.resolve();
  polynomial: bigint;

  private constructor(
    readonly backend: Backend,
    readonly key: MasterKey,
    readonly config: RepoConfig,
    readonly keyId: string,
    opts: RepositoryOptions,
  ) {
    this.packSize = opts.packSize ?? 16 * 1024 * 1024;
    this.uploadConcurrency = opts.uploadConcurrency ?? 2;
    this.packSlots = new Semaphore(this.uploadConcurrency + 1);
    this.appendOnly = opts.appendOnly ?? false;
    this.compression = opts.compression ?? "auto";
    this.polynomial = parsePolynomial(config.chunker_polynomial);
  }

  get id(): string {
    return this.config.id;
  }

  get version(): number {
    return this.config.version;
  }

  static async init(backend: Backend, password: string, opts: InitOptions = {}): Promise<Repository> {
    if (await backend.exists()) {
      throw new SitekeepError("repo.exists", `a repository already exists at ${backend.location}`, {
        hint: "use it as it is, or choose an empty destination",
      });
    }
    if (await backend.hasContent()) {
      throw new SitekeepError("repo.notempty", `${backend.location} is not empty and holds no repository`, {
        hint: "choose an empty or missing folder for a new repository",
      });
    }
    await backend.create();
    const master = newRandomKey();
    const config: RepoConfig = {
      version: opts.version ?? 2,
      id: randomBytes(32).toString("hex"),
      chunker_polynomial: formatPolynomial(opts.polynomial ?? randomPolynomial()),
    };
    const keyId = await addKey(backend, master, password, { params: opts.kdf });
    await backend.save({ type: "config", name: "config" }, seal(master, Buffer.from(JSON.stringify(config))));
    return new Repository(backend, master, config, keyId, opts);
  }

  static async open(backend: Backend, password: string, opts: RepositoryOptions = {}): Promise<Repository> {
    if (!(await backend.exists())) {
      if (await backend.hasContent()) {
        throw new SitekeepError("repo.notrepo", `${backend.location} is not a repository: it has no config file`, {
          hint: "check the path; `sitekeep init` creates a repository only in an empty or missing folder",
        });
      }
      throw new SitekeepError("repo.missing", `there is no repository at ${backend.location}`, {
        hint: "create one with `sitekeep init`, or check the path / SITEKEEP_REPOSITORY",
        exitCode: ExitCode.noRepository,
      });
    }
    const { master, keyId } = await (opts.key ?? openWithPassword(backend, password));
    let config: RepoConfig;
    try {
      const raw = await backend.load({ type: "config", name: "config" });
      config = JSON.parse(unpackUnpacked(open(master, raw)).toString("utf8")) as RepoConfig;
    } catch (err) {
      throw new SitekeepError("repo.config", `the repository config at ${backend.location} cannot be read: ${errorMessage(err)}`, {
        hint: "the config file is damaged; restore it from a copy of the repository",
      });
    }
    if (!SUPPORTED_VERSIONS.includes(config.version)) {
      throw new SitekeepError(
        "repo.version",
        `the repository at ${backend.location} has format version ${config.version}; this Sitekeep reads versions ${SUPPORTED_VERSIONS.join(" and ")}`,
        { hint: "upgrade Sitekeep to a release that supports this format" },
      );
    }
    if (!isIdHex(config.id) || !config.chunker_polynomial) {
      throw new SitekeepError("repo.config", `the repository config at ${backend.location} is invalid`);
    }
    const wrapped = opts.wrapBackend ? opts.wrapBackend(backend, config.id) : backend;
    return new Repository(wrapped, master, config, keyId, opts);
  }

  /** Adds another password that unlocks this repository; returns the new key file's ID. */
  addPassword(password: string, params?: KdfParams): Promise<string> {
    return addKey(this.backend, this.key, password, { params });
  }

  /**
   * Set while a lock is held (withLock): throws when the lock can no longer be trusted. Called
   * before anything that commits or deletes, so a process whose lock went stale changes nothing.
   */
  lockGuard: (() => void) | undefined;

  assertLockHeld(): void {
    this.lockGuard?.();
  }

  assertMayDelete(what: string): void {
    this.assertLockHeld();
    if (this.appendOnly) {
      throw new SitekeepError("repo.appendonly", `${what} refused: the repository was opened append-only`, {
        hint: "open it without --append-only (with a credential that may delete) to do this",
      });
    }
  }

  // ---- unpacked files -------------------------------------------------------------------------

  // Unpacked files of BACKGROUND_MIN and more (the index files of a large site are tens of MB) are
  // compressed, encrypted and hashed on the thread pool: on this thread they held up the walk.

  async saveUnpacked(type: Exclude<FileType, "data" | "config">, plain: Uint8Array): Promise<string> {
    const background = plain.length >= BACKGROUND_MIN;
    let body = asBuffer(plain);
    if (this.version >= 2) body = background ? await packUnpackedAsync(body) : packUnpacked(body);
    const sealed = background ? await sealAsync(this.key, body) : seal(this.key, body);
    const id = background ? await hashHexAsync(sealed) : hashHex(sealed);
    await this.backend.save({ type, name: id }, sealed);
    return id;
  }

  async loadUnpacked(type: Exclude<FileType, "data" | "config">, id: string): Promise<Buffer> {
    const raw = await this.backend.load({ type, name: id });
    const background = raw.length >= BACKGROUND_MIN;
    if ((background ? await hashHexAsync(raw) : hashHex(raw)) !== id) {
      throw new SitekeepError("repo.damaged", `${type} file ${id} is damaged: its content does not match its name`, {
        hint: "run `sitekeep check` to see what it affects",
      });
    }
    return background ? unpackUnpackedAsync(await openAsync(this.key, raw)) : unpackUnpacked(open(this.key, raw));
  }

  saveJSON(type: Exclude<FileType, "data" | "config">, obj: unknown): Promise<string> {
    return this.saveUnpacked(type, Buffer.from(JSON.stringify(obj)));
  }

  async loadJSON<T>(type: Exclude<FileType, "data" | "config">, id: string): Promise<T> {
    return JSON.parse((await this.loadUnpacked(type, id)).toString("utf8")) as T;
  }

  async listIds(type: FileType): Promise<string[]> {
    const ids: string[] = [];
    for await (const fi of this.backend.list(type)) ids.push(fi.name);
    return ids;
  }

  // ---- index ----------------------------------------------------------------------------------

  /** Every blob the repository's index files (and this process's stored packs) name. */
  get index(): BlobIndex {
    return this.#index;
  }

  /**
   * Reads every index file into a new in-memory index, which replaces the current one once all are
   * read (so it may run again, say after waiting for a lock, and a failed load changes nothing).
   * Returns the index file IDs read. Not while this process has blobs on their way.
   */
  async loadIndex(onError?: (id: string, err: unknown) => void): Promise<string[]> {
    // (After abandonWrites nothing more is stored: reading the index afresh is then fine.)
    if (!this.abandoned && this.hasPendingWrites()) throw new Error("internal: loadIndex while blobs are being stored");
    const fresh = new BlobIndex();
    const ids = await this.listIds("index");
    await mapLimit(ids, 4, async (id) => {
      let table: IndexTable | undefined;
      let file: IndexFileJSON | undefined;
      try {
        const text = await this.loadUnpacked("index", id);
        // Straight into arrays; as JSON only when it is not in the shape restic writes.
        table = await scanIndex(text);
        if (!table) file = parseIndexFile(JSON.parse(text.toString("utf8")), id);
      } catch (err) {
        if (onError) return onError(id, err);
        throw new SitekeepError("repo.index", `index file ${id} cannot be read: ${errorMessage(err)}`, {
          hint: "run `sitekeep check` to see what it affects",
          cause: err,
        });
      }
      if (table) fresh.addTable(table);
      else if (file) addIndexFile(fresh, file);
    });
    this.#index = fresh;
    return ids;
  }

  addIndexFile(file: IndexFileJSON): void {
    addIndexFile(this.#index, file);
  }

  private hasPendingWrites(): boolean {
    return this.pendingWrites() > 0 || this.inflight.size > 0;
  }

  private pendingWrites(): number {
    return this.encoding.size + this.treeBatch.length + this.queuedUploads.size + this.uploads.size + (this.builders.data?.blobs.length ?? 0) + (this.builders.tree?.blobs.length ?? 0) + this.unindexed.packCount;
  }

  // ---- blobs ----------------------------------------------------------------------------------

  hasBlob(type: BlobType, id: Uint8Array): boolean {
    return this.index.has(id, type) || this.inflight.has(type + ":" + Buffer.from(id).toString("hex"));
  }

  /** Stores a blob unless the repository already has it. `id` may be passed when already computed. */
  async saveBlob(type: BlobType, plain: Buffer, id: Buffer = sha256(plain)): Promise<SaveBlobResult> {
    if (this.uploadError) await this.failedWrites();
    const key = type + ":" + id.toString("hex");
    if (this.index.has(id, type) || this.inflight.has(key)) return { id, added: false, storedSize: 0 };
    this.inflight.add(key);
    const { sealed, uncompressedLength } = this.encodeBlob(plain);
    await this.addToPack(type, id, sealed, uncompressedLength);
    return { id, added: true, storedSize: sealed.length };
  }

  /**
   * Stores a blob like saveBlob, but returns as soon as the blob is admitted: it is compressed on
   * the thread pool and packed while the caller reads on. `plain` must not change afterwards.
   * Returns false when the repository already has the blob. onStored gets the sealed size once it
   * is packed; drainEncodes() (and flush()) wait for every queued blob, and a failure surfaces there.
   * `plainUse`: "free" when `plain` is the repository's alone once queued (its memory is freed as
   * soon as it is sealed: see releaseBuffer); a function when `plain` is a view of the caller's
   * reused buffer: it gets a promise that settles (never rejects) once `plain` is no longer read,
   * after which the caller may overwrite it (a chunk of a read buffer is then sealed without a copy).
   */
  async queueBlob(type: BlobType, plain: Buffer, id: Buffer, onStored?: (storedSize: number) => void, plainUse?: PlainUse): Promise<boolean> {
    if (this.uploadError) await this.failedWrites();
    const key = type + ":" + id.toString("hex");
    if (this.index.has(id, type) || this.inflight.has(key)) return false;
    this.inflight.add(key);
    if (plain.length < BACKGROUND_MIN || !(sealInBackground || compressesInBackground)) {
      const { sealed, uncompressedLength } = this.encodeBlob(plain);
      await this.addToPack(type, id, sealed, uncompressedLength);
      onStored?.(sealed.length);
      return true;
    }
    await this.encodeSlots.acquire();
    const encoded = this.encodeBlobAsync(plain);
    if (typeof plainUse === "function") plainUse(encoded.then(noop, noop));
    this.trackEncode(
      encoded.then(async ({ sealed, uncompressedLength }) => {
        if (plainUse === "free") releaseBuffer(plain);
        await this.addToPack(type, id, sealed, uncompressedLength);
        const storedSize = sealed.length;
        releaseBuffer(sealed); // copied into the pack, and ours alone
        onStored?.(storedSize);
      }),
      this.encodeSlots,
    );
    return true;
  }

  /**
   * Keeps an encode that holds a slot of `slots` in `encoding` until it settles (drainEncodes and
   * abandonWrites wait for it); its failure becomes the repository's upload error.
   */
  private trackEncode(work: Promise<void>, slots: Semaphore): void {
    const job: Promise<void> = work
      .catch((err: unknown) => {
        this.uploadError ??= err;
      })
      .finally(() => {
        slots.release();
        this.encoding.delete(job);
      });
    this.encoding.add(job);
  }

  /**
   * Stores a tree like queueBlob: trees are gathered into batches that the thread pool compresses
   * and seals (encodeSmallBlobs), so the caller has the tree's ID (`id`, its SHA-256) at once and
   * the packing follows. drainEncodes() (and flush()) send the last batch and wait for it.
   */
  async queueTree(text: string, id: Buffer, onStored?: (storedSize: number) => void): Promise<boolean> {
    if (this.uploadError) await this.failedWrites();
    const key = "tree:" + id.toString("hex");
    if (this.index.has(id, "tree") || this.inflight.has(key)) return false;
    this.inflight.add(key);
    const length = Buffer.byteLength(text);
    this.treeBatch.push({ text, length, id, onStored });
    this.treeBatchBytes += length;
    if (this.treeBatch.length >= TREE_BATCH || this.treeBatchBytes >= TREE_BATCH_BYTES) await this.encodeTreeBatch();
    return true;
  }

  private async encodeTreeBatch(): Promise<void> {
    if (!this.treeBatch.length) return;
    // The trees stay in treeBatch (seen by pendingWrites and by a drain) until a slot is free; then
    // they become a job in `encoding` without an await in between.
    await this.treeSlots.acquire();
    const batch = this.treeBatch;
    if (!batch.length) {
      this.treeSlots.release(); // taken meanwhile by another call
      return;
    }
    this.treeBatch = [];
    this.treeBatchBytes = 0;
    const offsets: number[] = [];
    let at = 0;
    for (const t of batch) {
      offsets.push(at);
      at += t.length;
    }
    // The trees' text is written straight into the batch (freed once encoded): no Buffer per tree.
    const data = Buffer.allocUnsafeSlow(at);
    for (let i = 0; i < batch.length; i++) data.write(batch[i].text, offsets[i], batch[i].length, "utf8");
    this.trackEncode(
      this.encodeSmallBlobs(data, offsets, batch.map((t) => t.length)).then(async (encoded) => {
        releaseBuffer(data);
        for (let i = 0; i < batch.length; i++) {
          const b = batchBlob(encoded, i);
          if (!b.id.equals(batch[i].id)) throw new SitekeepError("repo.encode", "a tree was encoded under another ID than it was queued with (a worker or memory fault)");
          // (The pack builder copies the sealed bytes: no view keeps the batch's arrays alive.)
          await this.addToPack("tree", batch[i].id, b.sealed, b.uncompressedLength);
          batch[i].onStored?.(b.sealed.length);
        }
        releaseBuffer(encoded.sealed); // every tree's bytes are in a pack now
      }),
      this.treeSlots,
    );
  }

  /**
   * Hashes, compresses and seals small blobs data[offsets[i] .. + lengths[i]] on the thread pool (a
   * worker thread without the addon: blob-workers.ts); queueEncoded stores them. Blobs the
   * repository already has are encoded too, which costs less than hashing them here first.
   */
  encodeSmallBlobs(data: Uint8Array, offsets: number[], lengths: number[]): Promise<EncodedBatch> {
    if (encodeBatchInBackground) return encodeBatchInBackground(this.key, this.compresses, data, offsets, lengths);
    return encodeInWorker(this.key, this.compresses, data, offsets, lengths);
  }

  /** Stores one blob of an encodeSmallBlobs batch unless the repository has it (then false). */
  async queueEncoded(type: BlobType, id: Buffer, sealed: Buffer, uncompressedLength: number): Promise<boolean> {
    if (this.uploadError) await this.failedWrites();
    const key = type + ":" + id.toString("hex");
    if (this.index.has(id, type) || this.inflight.has(key)) return false;
    this.inflight.add(key);
    // (The pack builder copies the sealed bytes: no view keeps the batch's arrays alive.)
    await this.addToPack(type, Buffer.from(id), sealed, uncompressedLength);
    return true;
  }

  /**
   * After a failed or aborted write: drops what is not yet stored (open packs, queued blobs, index
   * entries not yet written) and waits for the encodes, uploads and index write in flight, so that
   * nothing reaches the repository once the caller releases its lock. The repository refuses to
   * store anything afterwards.
   */
  async abandonWrites(): Promise<void> {
    if (!this.pendingWrites()) return; // nothing in flight: the repository stays usable (a failed read, say)
    this.abandoned = true;
    await this.dropOpenPacks();
    this.treeBatch = [];
    this.treeBatchBytes = 0;
    this.uploadError ??= new SitekeepError("repo.abandoned", "the repository's writes were abandoned after an error");
    while (this.encoding.size || this.queuedUploads.size || this.uploads.size) {
      await Promise.allSettled([...this.encoding, ...this.queuedUploads, ...this.uploads]);
    }
    await this.indexWrite.catch(() => undefined);
  }

  /**
   * Throws the upload error once the open packs are dropped: after a failed write none of them
   * can be finished, and their staged files go before the failure reaches the caller, whether or
   * not it goes on to abandonWrites.
   */
  private async failedWrites(): Promise<never> {
    await this.dropOpenPacks();
    throw this.uploadError;
  }

  private async dropOpenPacks(): Promise<void> {
    const open = [this.builders.data, this.builders.tree];
    if (this.builders.data) this.packSlots.release();
    this.builders.data = undefined;
    this.builders.tree = undefined;
    for (const b of open) if (b instanceof StreamedPack) await b.abort();
  }

  /** Waits until every blob given to queueBlob is packed (or has failed: then it throws). */
  async drainEncodes(): Promise<void> {
    await this.encodeTreeBatch();
    while (this.encoding.size) await Promise.all(this.encoding);
    if (this.uploadError) await this.failedWrites();
  }

  private async addToPack(type: BlobType, id: Buffer, sealed: Buffer, uncompressedLength: number): Promise<void> {
    // After a failed write nothing more is packed: a pack started now could never be finished.
    if (this.abandoned || this.uploadError) return;
    let b = this.builders[type];
    if (!b && type === "data") {
      await this.packSlots.acquire();
      b = this.builders.data; // started by another caller while this one waited
      const stop = this.abandoned || this.uploadError !== undefined;
      if (b || stop) this.packSlots.release();
      if (stop) return;
    }
    if (!b) b = this.startPack(type);
    if (b instanceof StreamedPack) {
      // Its place in the pack is taken now; the bytes are written (or copied) when `added` settles.
      // A failed write fails the pack (finish and abort see it) and, through uploadError, the backup.
      const added = b.add(id, sealed, uncompressedLength).catch((err: unknown) => {
        this.uploadError ??= err;
      });
      try {
        if (b.size >= this.packSize) {
          this.builders[type] = undefined;
          await this.upload(b);
        }
      } finally {
        await added; // the caller frees `sealed` once this returns
      }
      return;
    }
    b.add(id, sealed, uncompressedLength);
    if (b.size >= this.packSize) {
      this.builders[type] = undefined;
      await this.upload(b);
    }
  }

  /** A new pack for blobs of `type` (see builders). */
  private startPack(type: BlobType): PackBuilder | StreamedPack {
    const backend = this.backend;
    if (backend.stage) {
      return (this.builders[type] = new StreamedPack(type, () => backend.stage!("data", type === "tree"), this.segments));
    }
    // Data packs fill up to the pack size; tree packs usually stay small and start small.
    const buffer = type === "data" ? this.packBuffers.pop() : undefined;
    return (this.builders[type] = new PackBuilder(type, buffer, type === "data" ? this.packSize + PACK_SLACK : undefined, this.packSize));
  }

  /** Adds an already sealed blob to a new pack as it is (prune's repacking: no decrypt, no re-encrypt).
   *  It is stored even when the index already knows the blob in another pack. */
  async addSealedBlob(type: BlobType, id: Buffer, sealed: Buffer, uncompressedLength: number): Promise<void> {
    if (this.uploadError) await this.failedWrites();
    await this.addToPack(type, id, sealed, uncompressedLength);
  }

  /**
   * encodeBlob on the thread pool: in one native job where the addon has it, else compression and
   * AES there and the MAC on this thread.
   */
  private async encodeBlobAsync(plain: Buffer): Promise<{ sealed: Buffer; uncompressedLength: number }> {
    if (sealInBackground) return sealInBackground(this.key, plain, this.compresses);
    if (this.compresses && plain.length > 0) {
      const z = await compressAsync(plain);
      if (z.length < plain.length) return { sealed: await sealAsync(this.key, z), uncompressedLength: plain.length };
    }
    return { sealed: await sealAsync(this.key, plain), uncompressedLength: 0 };
  }

  private encodeBlob(plain: Buffer): { sealed: Buffer; uncompressedLength: number } {
    if (this.compresses && plain.length > 0) {
      const z = compress(plain);
      if (z.length < plain.length) return { sealed: seal(this.key, z), uncompressedLength: plain.length };
    }
    return { sealed: seal(this.key, plain), uncompressedLength: 0 };
  }

  /** Decodes a sealed blob as stored in a pack, verifying that its content matches its ID. */
  decodeBlob(loc: { type: BlobType; uncompressedLength: number }, sealed: Buffer, id: Uint8Array): Buffer {
    return decodeBlob(this.key, loc, sealed, id);
  }

  /**
   * decodeBlob with decryption, decompression and hashing of large blobs on the thread pool, so
   * that restore and check use both cores; small blobs are decoded here (a pool hop costs more).
   */
  async decodeBlobAsync(loc: { type: BlobType; uncompressedLength: number }, sealed: Buffer, id: Uint8Array): Promise<Buffer> {
    if (sealed.length < BACKGROUND_MIN) return this.decodeBlob(loc, sealed, id);
    if (decodeBlobsInBackground) {
      // All of it in one job: the MAC was checked here and each other step was a hop of its own.
      const [plain] = await decodeBlobsInBackground(this.key, sealed, packEntries([{ id, offset: 0, length: sealed.length, uncompressedLength: loc.uncompressedLength }]));
      if (plain instanceof Error) throw plain;
      return plain;
    }
    let plain = await openAsync(this.key, sealed);
    if (loc.uncompressedLength) {
      plain = await decompressAsync(plain);
      if (plain.length !== loc.uncompressedLength) throw damagedBlob(id, "decompressed to the wrong length");
    }
    if (!(await sha256Async(plain)).equals(id)) throw damagedBlob(id, "does not match its ID");
    return plain;
  }

  async loadBlob(type: BlobType, id: Uint8Array): Promise<Buffer> {
    const loc = this.locate(type, id);
    const sealed = await this.loadSealed(loc);
    try {
      return await this.decodeLoaded(loc, sealed, id);
    } finally {
      // A data blob's sealed bytes were read for this call alone (tree blobs come from shared
      // windows): freed now rather than with the next collection, a restore's whole size of them.
      if (type === "data") releaseBuffer(sealed);
    }
  }

  /**
   * Several blobs, read with their neighbours: blobs of one pack that lie close together are read
   * in one request (a restore of many small files read each blob alone, a thread-pool hop or an S3
   * request per file). Fails like loadBlob when any of them is missing or damaged.
   */
  async loadBlobs(type: BlobType, ids: readonly Uint8Array[]): Promise<Buffer[]> {
    const locs = ids.map((id) => this.locate(type, id));
    const order = locs.map((_, i) => i).sort((a, b) => (locs[a].packId < locs[b].packId ? -1 : locs[a].packId > locs[b].packId ? 1 : locs[a].offset - locs[b].offset));
    const ranges: PackRange[] = [];
    for (const i of order) {
      const { packId, offset, length } = locs[i];
      const r = ranges.at(-1);
      if (r && r.packId === packId && offset - r.end <= NEAR_GAP && offset + length - r.start <= NEAR_RANGE) {
        r.end = Math.max(r.end, offset + length);
        r.members.push(i);
      } else ranges.push({ packId, start: offset, end: offset + length, members: [i] });
    }
    if (decodeFromFiles && this.backend.openFile) return this.readBlobs(ranges, locs, ids, this.backend.openFile.bind(this.backend));
    const out: Buffer[] = new Array<Buffer>(ids.length);
    await Promise.all(
      ranges.map(async (r) => {
        const buf = await this.backend.load({ type: "data", name: r.packId }, r.start, r.end - r.start);
        if (decodeBlobsInBackground) {
          // The range's blobs decoded in one thread-pool job.
          const entries = r.members.map((i) => ({ id: ids[i], offset: locs[i].offset - r.start, length: locs[i].length, uncompressedLength: locs[i].uncompressedLength }));
          const decoded = await decodeBlobsInBackground(this.key, buf, packEntries(entries));
          r.members.forEach((i, k) => {
            const d = decoded[k];
            if (d instanceof Error) throw this.unreadable(locs[i], ids[i], d);
            out[i] = d;
          });
          return;
        }
        for (const i of r.members) {
          const at = locs[i].offset - r.start;
          out[i] = await this.decodeLoaded(locs[i], buf.subarray(at, at + locs[i].length), ids[i]);
        }
      }),
    );
    return out;
  }

  /**
   * loadBlobs' ranges read and decoded in one thread-pool job (decodeFromFiles) from the packs'
   * open files: a restore of small files read each range into a Buffer with a thread-pool hop of
   * its own and decoded it in another, ~5 KB of JavaScript garbage and two hops per range.
   */
  private async readBlobs(
    ranges: readonly PackRange[],
    locs: readonly BlobLocation[],
    ids: readonly Uint8Array[],
    openFile: (h: { type: "data"; name: string }) => Promise<OpenFile>,
  ): Promise<Buffer[]> {
    const packs = [...new Set(ranges.map((r) => r.packId))];
    const opened = await Promise.allSettled(packs.map((name) => openFile({ type: "data", name })));
    const files = new Map<string, OpenFile>();
    try {
      opened.forEach((o, k) => {
        if (o.status === "fulfilled") files.set(packs[k], o.value);
      });
      for (const o of opened) if (o.status === "rejected") throw o.reason;
      const reads = new Float64Array(3 * ranges.length);
      const spans = new Float64Array(3 * ids.length);
      const idBytes = new Uint8Array(ID_SIZE * ids.length);
      const member: number[] = []; // the blob (index into ids) of each span
      let base = 0;
      ranges.forEach((r, j) => {
        reads[3 * j] = files.get(r.packId)!.fd;
        reads[3 * j + 1] = r.start;
        reads[3 * j + 2] = r.end - r.start;
        for (const i of r.members) {
          const k = member.length;
          spans[3 * k] = base + locs[i].offset - r.start;
          spans[3 * k + 1] = locs[i].length;
          spans[3 * k + 2] = locs[i].uncompressedLength;
          idBytes.set(ids[i], ID_SIZE * k);
          member.push(i);
        }
        base += r.end - r.start;
      });
      let decoded: (Buffer | Error | undefined)[];
      try {
        decoded = await decodeFromFiles!(this.key, reads, { ids: idBytes, spans });
      } catch (err) {
        throw this.unreadableRanges(err);
      }
      const out: Buffer[] = new Array<Buffer>(ids.length);
      const alone: Promise<void>[] = [];
      member.forEach((i, k) => {
        const d = decoded[k];
        if (d instanceof Error) throw this.unreadable(locs[i], ids[i], d);
      });
      member.forEach((i, k) => {
        const d = decoded[k];
        if (d) this.#decodedBatches.add((out[i] = d as Buffer).buffer as ArrayBuffer);
        else alone.push(this.loadBlob("data", ids[i]).then((b) => void (out[i] = b))); // larger than the addon decodes
      });
      await Promise.all(alone);
      return out;
    } finally {
      for (const f of files.values()) f.release();
    }
  }

  /**
   * Frees now the memory of blobs that loadBlobs returned, once the caller is done with them and
   * keeps no view of them: every view of them is empty afterwards. Without it V8 frees them at a
   * collection, and read by descriptor (readBlobs) they no longer came with the sealed bytes'
   * buffers whose size made V8 collect sooner: a mixed restore peaked 15-25 MiB higher.
   */
  releaseBlobs(blobs: readonly Uint8Array[]): void {
    for (const b of blobs) {
      const ab = b.buffer;
      if (ab instanceof ArrayBuffer && this.#decodedBatches.delete(ab)) releaseBuffer(new Uint8Array(ab));
    }
  }

  /** The error of readBlobs' job when a read failed (errno) or a pack ended before its range (errno 0). */
  private unreadableRanges(err: unknown): unknown {
    if (!(err instanceof Error) || (err as NodeJS.ErrnoException).code !== "ERR_SITEKEEP_READ") return err;
    const errno = (err as NodeJS.ErrnoException).errno ?? 0;
    if (errno === 0) {
      return new SitekeepError("repo.damaged", `a pack of ${this.backend.location} is shorter than the index says`, {
        hint: "run `sitekeep check --read-data` to see what it affects",
        cause: err,
      });
    }
    // As the backend reports its own read errors (ENOENT, EACCES... each with its hint).
    return wrapIoError(Object.assign(new Error(err.message), { code: getSystemErrorName(-errno), errno }), "reading data packs", this.backend.location);
  }

  private locate(type: BlobType, id: Uint8Array): BlobLocation {
    const loc = this.index.get(id, type);
    if (!loc) {
      throw new SitekeepError("repo.noblob", `${type} blob ${Buffer.from(id).toString("hex")} is not in the index`, {
        hint: "the repository is missing data; run `sitekeep check`",
      });
    }
    return loc;
  }

  private async decodeLoaded(loc: BlobLocation, sealed: Buffer, id: Uint8Array): Promise<Buffer> {
    try {
      return await this.decodeBlobAsync(loc, sealed, id);
    } catch (err) {
      throw this.unreadable(loc, id, err);
    }
  }

  /** The error of a blob read from its pack that cannot be decoded. */
  private unreadable(loc: BlobLocation, id: Uint8Array, err: unknown): SitekeepError {
    return new SitekeepError("repo.damaged", `pack ${loc.packId} is damaged: ${loc.type} blob ${Buffer.from(id).toString("hex").slice(0, 16)}… cannot be read (${errorMessage(err)})`, {
      hint: "run `sitekeep check --read-data` to see what it affects",
      cause: err,
    });
  }

  /**
   * A blob's sealed bytes as stored in its pack. Tree blobs are read with their neighbours: a
   * walk over a parent snapshot (or a restore, or a check) loads thousands of small tree blobs
   * that were packed next to each other, and one read per blob cost more than decoding it (on S3,
   * a request each). Packs never change under their ID, so a window read once stays valid. A tree
   * blob is a copy of its bytes: a window's buffer is read into again once it is no longer kept
   * (a check of the many-files set read ~2,000 windows, 500 MiB, each left to the garbage collector).
   */
  async loadSealed(loc: BlobLocation): Promise<Buffer> {
    const h = { type: "data" as const, name: loc.packId };
    if (loc.type !== "tree") return this.backend.load(h, loc.offset, loc.length);
    const start = loc.offset - (loc.offset % TREE_WINDOW);
    const end = loc.offset + loc.length;
    if (end > start + TREE_WINDOW) return this.backend.load(h, loc.offset, loc.length); // crosses a window edge
    const w = this.treeWindow(loc.packId, start);
    w.users++;
    try {
      const buf = await w.bytes;
      // A window cut short by the end of the pack holds every blob in it; shorter still means the
      // pack is damaged, and the exact read reports that as the other blob reads do.
      if (buf.length < end - start) return await this.backend.load(h, loc.offset, loc.length);
      return Buffer.from(buf.subarray(loc.offset - start, end - start));
    } finally {
      w.users--;
      if (w.dropped && w.users === 0) this.recycleWindow(w);
    }
  }

  /** The window of a tree pack at `start`, kept or read now (the least recently used one dropped). */
  private treeWindow(packId: string, start: number): TreeWindow {
    const key = `${packId}:${start}`;
    let w = this.treeWindows.get(key);
    if (w) {
      this.treeWindows.delete(key); // re-inserted below: the Map's order is the LRU order
    } else {
      if (this.treeWindows.size >= TREE_WINDOWS_KEPT) {
        const [oldest, old] = this.treeWindows.entries().next().value as [string, TreeWindow];
        this.treeWindows.delete(oldest);
        old.dropped = true;
        if (old.users === 0) this.recycleWindow(old);
      }
      w = { bytes: this.readWindow(packId, start), users: 0, dropped: false };
      const read = w;
      read.bytes.catch(() => {
        if (this.treeWindows.get(key) === read) this.treeWindows.delete(key);
      });
    }
    this.treeWindows.set(key, w);
    return w;
  }

  private async readWindow(packId: string, start: number): Promise<Buffer> {
    const h = { type: "data" as const, name: packId };
    if (!this.backend.loadInto) return this.backend.load(h, start, TREE_WINDOW);
    const buf = Buffer.from(this.windowBuffers.pop() ?? new ArrayBuffer(TREE_WINDOW));
    try {
      return buf.subarray(0, await this.backend.loadInto(h, buf, start));
    } catch (err) {
      this.windowBuffers.push(buf.buffer as ArrayBuffer);
      throw err;
    }
  }

  /** A window no longer kept and no longer read from: its buffer takes the next window. */
  private recycleWindow(w: TreeWindow): void {
    if (!this.backend.loadInto) return; // windows from load: left to the collector
    w.bytes.then(
      (buf) => {
        if (buf.buffer.byteLength === TREE_WINDOW && this.windowBuffers.length < WINDOW_BUFFERS_SPARE) this.windowBuffers.push(buf.buffer as ArrayBuffer);
      },
      () => undefined,
    );
  }

  lookup(type: BlobType, id: Uint8Array): BlobLocation | undefined {
    return this.index.get(id, type);
  }

  /**
   * Stores a full pack once fewer than uploadConcurrency are being written. Its caller has taken
   * it from the builders, so until it is among the uploads only queuedUploads knows of it:
   * abandonWrites waits for these too, or a pack still waiting for a slot would be aborted (its
   * staged file removed) after the failed backup had already given up its lock.
   */
  private upload(b: PackBuilder | StreamedPack): Promise<void> {
    const p = this.uploadWhenFree(b).finally(() => this.queuedUploads.delete(p));
    this.queuedUploads.add(p);
    return p;
  }

  private async uploadWhenFree(b: PackBuilder | StreamedPack): Promise<void> {
    // The pack's memory is given back (its slot released) once it is stored or given up.
    const done = (): void => {
      if (b.type === "data") this.packSlots.release();
    };
    // Back-pressure: never more than uploadConcurrency packs being written.
    while (this.uploads.size >= this.uploadConcurrency) await Promise.race(this.uploads);
    if (this.uploadError || this.abandoned) {
      if (b instanceof StreamedPack) await b.abort();
      done();
      // The failure of a pack written meanwhile: the open packs go too (their staged files), as
      // in every other call that meets it; its caller may never call the repository again.
      if (this.uploadError) await this.failedWrites();
      return;
    }
    const p = this.store(b)
      .then((packId) => this.packDurable(packId, b.blobs))
      .catch((err: unknown) => {
        this.uploadError ??= err;
      })
      .finally(() => {
        this.uploads.delete(p);
        done();
      });
    this.uploads.add(p);
  }

  /** Writes a finished pack to the backend; its ID. */
  private async store(b: PackBuilder | StreamedPack): Promise<string> {
    if (b instanceof StreamedPack) return b.finish(this.key); // the rest of it, the header, the name
    const data = b.finish(this.key);
    const packId = await hashHexAsync(data);
    await this.backend.save({ type: "data", name: packId }, data);
    // Stored: its memory builds a later pack (saves a fresh 16 MiB, and the allocator's
    // fragmentation, per pack). Not after a failure: a failed request may still hold it. The
    // pool stays within packSlots: a buffer comes back only as its pack's slot is given back.
    if (b.type === "data") this.packBuffers.push(b.buffer);
    return packId;
  }

  private packDurable(packId: string, blobs: PackedBlob[]): void {
    // An abandoned run's pack that was already on its way is left unindexed: prune removes it.
    if (this.abandoned) return;
    for (const bl of blobs) {
      this.index.add(bl.id, bl.type, packId, bl.offset, bl.length, bl.uncompressedLength);
      this.inflight.delete(bl.type + ":" + bl.id.toString("hex"));
    }
    this.unindexed.add(packId, blobs);
    if (this.unindexed.packCount >= INDEX_EVERY_PACKS || this.unindexed.blobs >= INDEX_MAX_BLOBS || Date.now() - this.lastIndexWrite > INDEX_EVERY_MS) {
      this.indexWrite = this.indexWrite.then(() => this.writeIndex()).catch((err: unknown) => {
        this.uploadError ??= err;
      });
    }
  }

  /** Writes an index file for the durable packs that no index names yet. */
  private async writeIndex(): Promise<void> {
    const plain = this.unindexed.take();
    if (!plain) return;
    this.lastIndexWrite = Date.now();
    try {
      await this.saveUnpacked("index", plain);
    } finally {
      releaseBuffer(new Uint8Array(plain.buffer)); // sealed (a copy) or failed: ~8 MiB for 50,000 blobs, freed now
    }
  }

  /** Finishes open packs, waits for every upload and writes the index: afterwards all saved blobs are durable and indexed. */
  async flush(): Promise<void> {
    await this.drainEncodes();
    for (const t of ["data", "tree"] as const) {
      const b = this.builders[t];
      if (b && b.blobs.length) {
        this.builders[t] = undefined;
        await this.upload(b);
      }
    }
    while (this.uploads.size) await Promise.race(this.uploads);
    await this.indexWrite;
    if (this.uploadError) await this.failedWrites();
    await this.writeIndex();
  }

  // ---- snapshots ------------------------------------------------------------------------------

  async saveSnapshot(s: SnapshotJSON): Promise<string> {
    this.assertLockHeld();
    return this.saveJSON("snapshots", s);
  }

  async loadSnapshot(id: string): Promise<Snapshot> {
    return { ...(await this.loadJSON<SnapshotJSON>("snapshots", id)), id };
  }

  /** All snapshots, newest first; unreadable ones are reported through onError and skipped. */
  async listSnapshots(onError?: (id: string, err: unknown) => void): Promise<Snapshot[]> {
    const ids = await this.listIds("snapshots");
    const out: Snapshot[] = [];
    await mapLimit(ids, 8, async (id) => {
      try {
        out.push(await this.loadSnapshot(id));
      } catch (err) {
        if (!onError) throw err;
        onError(id, err);
      }
    });
    return out.sort(byTimeDesc);
  }

  /** Resolves `latest`, a full ID or a unique prefix. */
  async findSnapshot(ref: string, filter: (s: Snapshot) => boolean = () => true): Promise<Snapshot> {
    if (ref === "latest") {
      const all = (await this.listSnapshots()).filter(filter);
      if (!all.length) throw new SitekeepError("snapshot.none", "no snapshot found", { hint: "make one with `sitekeep backup`" });
      return all[0];
    }
    const ids = (await this.listIds("snapshots")).filter((id) => id.startsWith(ref.toLowerCase()));
    if (ids.length === 0) {
      throw new SitekeepError("snapshot.notfound", `no snapshot matches ${JSON.stringify(ref)}`, {
        hint: "list them with `sitekeep snapshots`",
      });
    }
    if (ids.length > 1) {
      throw new SitekeepError("snapshot.ambiguous", `snapshot prefix ${JSON.stringify(ref)} matches ${ids.length} snapshots`, {
        hint: "give more characters of the ID",
      });
    }
    return this.loadSnapshot(ids[0]);
  }
}

export { mapLimit } from "../util/concurrency.js";

function addIndexFile(index: BlobIndex, file: IndexFileJSON): void {
  for (const p of file.packs) {
    for (const b of p.blobs) index.add(Buffer.from(b.id, "hex"), b.type, p.id, b.offset, b.length, b.uncompressed_length ?? 0);
  }
}
