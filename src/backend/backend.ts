// The storage interface every repository sits on: named immutable files grouped by type, as in
// restic's layout. Implementations: local (path / mounted share), s3; wrappers add retries and faults.

export type FileType = "config" | "keys" | "locks" | "snapshots" | "index" | "data";

export const FILE_TYPES: readonly FileType[] = ["config", "keys", "locks", "snapshots", "index", "data"];

export interface Handle {
  type: FileType;
  /** 64 hex digits (the SHA-256 of the content), or "config". */
  name: string;
}

export interface FileInfo {
  name: string;
  size: number;
}

/**
 * A file written piece by piece and published under its name only once complete: a pack streamed
 * to storage as it fills, whose name (its SHA-256) is known only at the end.
 */
export interface StagedFile {
  /** Appends `data`. One call at a time; `data` must not change until it settles. */
  write(data: Uint8Array): Promise<void>;
  /** Makes the file durable and publishes it as `h`, as save does; the staged file is gone afterwards. */
  commit(h: Handle): Promise<void>;
  /** Removes the staged file (a failed or abandoned write). Never throws. */
  abort(): Promise<void>;
}

/** An open file of a backend (openFile): its descriptor, valid until release(). */
export interface OpenFile {
  readonly fd: number;
  release(): void;
}

export interface Backend {
  /** Where the repository is, for messages (never contains secrets). */
  readonly location: string;
  /** True when the repository's config file exists. */
  exists(): Promise<boolean>;
  /** True when the location holds anything at all (to tell "no repository" from "not a repository"). */
  hasContent(): Promise<boolean>;
  /** Creates the layout (directories) for a new repository. */
  create(): Promise<void>;
  /** Stores a file durably and atomically: it is either absent or complete. Never overwrites. */
  save(h: Handle, data: Uint8Array): Promise<void>;
  /**
   * Starts a file of `type` to be written in pieces and named when committed. Optional: backends
   * that cannot append (object stores) leave it out, and their callers build files in memory.
   * `readSoon`: the file will be read again soon (a tree pack, read by the next backup), so a
   * backend that can write past its cache should not.
   */
  stage?(type: FileType, readSoon?: boolean): Promise<StagedFile>;
  /** Reads a whole file, or `length` bytes at `offset` (a negative offset counts from the end). */
  load(h: Handle, offset?: number, length?: number): Promise<Buffer>;
  /**
   * Reads a whole file of exactly `into.length` bytes (known from a listing) into `into`, or with
   * `offset` up to `into.length` bytes from there (fewer only where the file ends). Returns the
   * bytes read. For callers that reuse their buffers (a check's packs, the tree windows). Optional:
   * without it, use load.
   */
  loadInto?(h: Handle, into: Uint8Array, offset?: number): Promise<number>;
  /**
   * The file open for reading, as a descriptor, for reads done outside JavaScript (a restore's
   * small files: ranges of packs read and decoded in one thread-pool job). Optional: backends of
   * local paths and mounted shares. Pair every call with the file's release().
   */
  openFile?(h: Handle): Promise<OpenFile>;
  stat(h: Handle): Promise<FileInfo>;
  remove(h: Handle): Promise<void>;
  /** Files of a type whose names are valid IDs (temporary files are not listed). */
  list(type: FileType): AsyncIterable<FileInfo>;
  /**
   * Removes temporary files that writers killed mid-write left behind (backends that stage writes
   * under temporary names). Only safe under an exclusive lock; returns how many bytes were freed.
   */
  removeTemporary?(): Promise<{ files: number; bytes: number }>;
  /**
   * How long a file one client saved may take to appear in another client's listing: taking a
   * lock waits this long before its second look for other locks. Optional: without it, 200 ms
   * (restic's wait, for object stores and network filesystems whose listings lag a little).
   */
  listingLagMs?(): Promise<number>;
  close(): Promise<void>;
}
