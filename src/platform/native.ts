// Loads Sitekeep's own Node-API addon (native/*.c, built by `node-gyp rebuild` on install) once.
// Every caller has a plain-Node fallback for when it is missing (build failed, unsupported platform,
// or SITEKEEP_NO_NATIVE=1, which tests use to exercise those fallbacks).
import fs from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

type PathLike = Buffer | string;

/** An opaque hash state of the addon's (sha256Begin). */
declare const nativeHash: unique symbol;
export type NativeHash = { readonly [nativeHash]: true };

export interface NativeAddon {
  lutimes(p: PathLike, atimeSec: bigint, atimeNsec: number, mtimeSec: bigint, mtimeNsec: number): void;
  mknod(p: PathLike, mode: number, dev: bigint): void;
  llistxattr(p: PathLike): string[];
  lgetxattr(p: PathLike, name: string): Buffer;
  lsetxattr(p: PathLike, name: string, value: Buffer): void;
  lstatdirAsync?(p: PathLike): Promise<[Buffer, Float64Array, boolean]>;
  readfiles?(dir: PathLike, names: Buffer, limits: Float64Array): Promise<[Buffer, Float64Array]>;
  writefiles?(dir: PathLike, names: Buffer, datas: Buffer[], meta: Float64Array, flags: number): Promise<Float64Array>;
  /** Present when the process has OpenSSL's SHA-256 (native/sitekeep_chunk.c). */
  chunkhash?(buf: Buffer, start: number, end: number, eof: boolean, params: Buffer): Promise<Buffer>;
  /** Marks the calling thread SCHED_BATCH on Linux (helper threads yield to the main thread; see sitekeep_fs.c). */
  batchThisThread?(): void;
  /** Sets one of glibc's malloc settings, by MallocOption (false elsewhere; see sitekeep_fs.c). */
  mallocOption?(option: number, value: number): boolean;
  /** Detaches the ArrayBuffer under `buf` when `buf` spans all of it, freeing its memory now (see sitekeep_fs.c). */
  release?(buf: Uint8Array): boolean;
  /** `size` zeroed bytes at a multiple of `align` (a power of two), for O_DIRECT writes (see sitekeep_fs.c). */
  alignedBuffer?(size: number, align: number): Buffer;
  /** Drops a file's clean pages from the page cache (POSIX_FADV_DONTNEED); false where it cannot (see sitekeep_fs.c). */
  dropCache?(fd: number): boolean;
  /** Poly1305-AES of `msg` under a 64-byte codec key's k and r and `iv`, on this thread (with the codec, below). */
  poly1305aes?(key: Buffer, iv: Uint8Array, msg: Uint8Array): Buffer;
  /** SHA-256 on the thread pool, without a copy of `buf` (same condition as chunkhash). */
  sha256?(buf: Uint8Array): Promise<Buffer>;
  /** restic's blob format for a batch of blobs (native/sitekeep_codec.c; present with OpenSSL and libzstd). */
  encodeblobs?(key: Buffer, data: Buffer, spans: Float64Array, level: number): [Uint8Array, Uint8Array, Uint32Array, Uint32Array];
  /** encodeblobs on the thread pool; `sealed` is a Buffer of its own. `data` must not change until it settles. */
  encodeblobsAsync?(key: Buffer, data: Buffer, spans: Float64Array, level: number): Promise<[Uint8Array, Buffer, Uint32Array, Uint32Array]>;
  decodeblobs?(key: Buffer, src: Buffer, spans: Float64Array, ids: Buffer, keep: boolean): [Int32Array, Buffer | null, Float64Array | null];
  /** decodeblobs with the plaintexts kept, on the thread pool. `src` must not change until it settles. */
  decodeblobsAsync?(key: Buffer, src: Buffer, spans: Float64Array, ids: Buffer): Promise<[Int32Array, Buffer, Float64Array]>;
  /**
   * decodeblobsAsync over bytes it reads itself: (fd, position, length) per range in `reads`, the
   * spans' offsets counting through the ranges laid end to end. The descriptors must stay open
   * until it settles; a failed read rejects with code ERR_SITEKEEP_READ and its `errno` (0: a file
   * ended early).
   */
  readdecodeblobsAsync?(key: Buffer, reads: Float64Array, spans: Float64Array, ids: Buffer): Promise<[Int32Array, Buffer, Float64Array]>;
  /** decodeblobs without keeping the plaintexts, and with `hash` the SHA-256 of `pack` (else null), on the thread pool. `pack` must not change until it settles. */
  verifypackAsync?(key: Buffer, pack: Buffer, spans: Float64Array, ids: Buffer, hash: boolean): Promise<[Int32Array, Buffer | null]>;
  /** A SHA-256 fed piece by piece, each piece on the thread pool (one update at a time per hash). */
  sha256Begin?(): NativeHash;
  sha256UpdateAsync?(hash: NativeHash, data: Buffer): Promise<void>;
  sha256End?(hash: NativeHash): Buffer;
  /**
   * An index file's text read into arrays on the thread pool (native/sitekeep_index.c): [ids, packOf,
   * trees, numbers, packIds], or null when the text is not in the shape it reads. `text` must not
   * change until it settles.
   */
  scanindexAsync?(text: Uint8Array): Promise<[Uint8Array, Uint32Array, Uint8Array, Float64Array, Uint8Array] | null>;
  /** One blob compressed (level > 0, when shorter) and sealed on the thread pool: [sealed, uncompressed length or 0]. */
  sealblobAsync?(key: Buffer, data: Buffer, level: number): Promise<[Buffer, number]>;
}

function findPackageRoot(start: string): string | undefined {
  for (let dir = start; ; dir = path.dirname(dir)) {
    try {
      const pkg = JSON.parse(fs.readFileSync(path.join(dir, "package.json"), "utf8")) as { name?: unknown };
      if (pkg.name === "sitekeep") return dir;
    } catch {
      // no (readable) package.json here: keep walking
    }
    if (path.dirname(dir) === dir) return undefined;
  }
}

function loadNative(): NativeAddon | undefined {
  if (process.env.SITEKEEP_NO_NATIVE === "1") return undefined;
  const root = findPackageRoot(path.dirname(fileURLToPath(import.meta.url)));
  if (root === undefined) return undefined;
  try {
    return createRequire(import.meta.url)(path.join(root, "build", "Release", "sitekeep_fs.node")) as NativeAddon;
  } catch {
    return undefined;
  }
}

export const nativeAddon: NativeAddon | undefined = loadNative();

/** The addon's numbers for glibc's malloc settings (sitekeep_fs.c, mallocOption). */
const MallocOption = { mmapThreshold: 0, trimThreshold: 1 } as const;

/**
 * Buffers of 4 MiB and more (packs, read buffers, the largest blobs) get memory of their own from the
 * kernel, returned as soon as they are freed, instead of the allocator's heaps where it stayed
 * resident (sitekeep_fs.c says why). For a process that backs up, restores or checks; a no-op
 * without the addon or off glibc.
 */
export function returnLargeBuffersToTheSystem(): void {
  nativeAddon?.mallocOption?.(MallocOption.mmapThreshold, 4 * 1024 * 1024);
}

/**
 * From now on the allocator keeps up to 16 MiB of freed memory at the top of its heap for the next
 * allocations instead of giving it back to the kernel at once. For a restore, which allocates and
 * frees two buffers of ~1 MiB per blob: each was otherwise faulted in afresh (by hand on the mixed
 * set: ~200,000 page faults down to ~70,000, 0.4-0.8 s less CPU of 8.7-10.2 s, 13 MiB more at the
 * peak). Not for a backup: its buffers come from the thread pool's arenas, each of which would keep
 * as much (its initial backup peaked 8-18 MiB higher for 0.3-0.6 s less system time). Lasts for the
 * process; a no-op without the addon or off glibc.
 */
export function keepFreedMemoryForReuse(): void {
  nativeAddon?.mallocOption?.(MallocOption.trimThreshold, 16 * 1024 * 1024);
}

/**
 * Frees `buf`'s memory now instead of when the garbage collector gets to it: V8 lets tens of MiB
 * of dead external memory (chunks, sealed blobs, batches) pile up between collections, and the
 * allocator keeps what it held resident. Only for a buffer that is the caller's alone and spans
 * its whole ArrayBuffer (anything else is left as it is); every view of it is empty afterwards.
 * A no-op without the addon.
 */
export function releaseBuffer(buf: Uint8Array): void {
  nativeAddon?.release?.(buf);
}
