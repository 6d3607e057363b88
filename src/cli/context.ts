// What every repository command needs: the global options, the password, an open repository
// with its index, and a lock held for the duration of the work.
import { openBackend } from "../backend/open.js";
import { CachedBackend, cacheDirFor, defaultCacheDir } from "../backend/cache.js";
import { Repository } from "../repo/repository.js";
import { indexFilesGone, withLockPrepared } from "../repo/lock.js";
import { type GlobalOptions, repoPassword, repoUrl } from "./global-options.js";
import { takeKeyAhead } from "./key-ahead.js";
import { type OutputOptions, printWarning } from "./output.js";
import { errorMessage } from "../errors.js";

export { type GlobalOptions, repoPassword, repoUrl } from "./global-options.js";

export function outputOptions(g: GlobalOptions): OutputOptions {
  return { json: Boolean(g.json), quiet: Boolean(g.quiet) };
}

export function packSizeBytes(g: GlobalOptions): number | undefined {
  const v = g.packSize ?? process.env.SITEKEEP_PACK_SIZE;
  if (!v) return undefined;
  const mib = Number(v);
  if (!Number.isFinite(mib) || mib < 1 || mib > 128) throw new Error(`--pack-size must be between 1 and 128 (MiB), got ${v}`);
  return Math.round(mib * 1024 * 1024);
}

export async function openRepository(g: GlobalOptions, opts: { loadIndex?: boolean } = {}): Promise<Repository> {
  const url = repoUrl(g);
  const backend = openBackend(url);
  const password = await repoPassword(g);
  const useCache = g.cache !== false && !process.env.SITEKEEP_NO_CACHE;
  const repo = await Repository.open(backend, password, {
    appendOnly: Boolean(g.appendOnly),
    packSize: packSizeBytes(g),
    wrapBackend: useCache ? (b, id) => new CachedBackend(b, cacheDirFor(defaultCacheDir(), id)) : undefined,
    key: (await takeKeyAhead(url, password))?.key,
  });
  if (opts.loadIndex !== false) await repo.loadIndex();
  return repo;
}

/** Opens the repository, takes a lock and runs fn (the index loaded first unless told not to); the lock is always released. */
export async function withRepository<T>(
  g: GlobalOptions,
  lock: "shared" | "exclusive" | "none",
  fn: (repo: Repository) => Promise<T>,
  opts: { loadIndex?: boolean } = {},
): Promise<T> {
  // The index is read while the lock waits out its conflict check (on a share or object store,
  // 200 ms otherwise idle).
  if (opts.loadIndex === false) return withPreparedRepository(g, lock, async () => undefined, async () => false, (repo) => fn(repo));
  return withPreparedRepository(g, lock, (repo) => repo.loadIndex(), indexFilesGone, (repo) => fn(repo));
}

/**
 * withRepository with read-only preparation done while the lock waits (see withLockPrepared):
 * `prepare` again once the lock is held when `stale` says so; fn gets what was prepared.
 */
export async function withPreparedRepository<P, T>(
  g: GlobalOptions,
  lock: "shared" | "exclusive" | "none",
  prepare: (repo: Repository) => Promise<P>,
  stale: (repo: Repository, prepared: P) => Promise<boolean>,
  fn: (repo: Repository, prepared: P) => Promise<T>,
): Promise<T> {
  const repo = await openRepository(g, { loadIndex: false });
  const json = Boolean(g.json);
  try {
    if (lock === "none") return await fn(repo, await prepare(repo));
    return await withLockPrepared(
      repo,
      lock === "exclusive",
      () => prepare(repo),
      (p) => stale(repo, p),
      (p) => fn(repo, p),
      {
        onRefreshError: (err) => printWarning(`could not refresh the repository lock: ${errorMessage(err)}`, json),
        onReleaseError: (err) => printWarning(`could not remove the repository lock (run \`sitekeep unlock\` later): ${errorMessage(err)}`, json),
      },
    );
  } finally {
    await repo.backend.close().catch(() => undefined); // open pack handles, S3 sockets
  }
}
