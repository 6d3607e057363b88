// restic's lock protocol, so that Sitekeep and restic can share a repository safely.
//
// A lock is an encrypted JSON file under locks/ (the format of restic's internal/restic/lock.go).
// Any number of shared (non-exclusive) locks may coexist; an exclusive lock excludes every other
// lock. Taking a lock: look for conflicting locks, write ours, look again (two processes that raced
// past the first look both see each other on the second and back off). A held lock is refreshed
// every 5 minutes by writing a new file and removing the old one; a lock older than 30 minutes, or
// one made on this host by a process that no longer exists, is stale and ignored.
//
// Difference from restic 0.14: restic refuses to run while any conflicting lock exists, stale or
// not (until `restic unlock`); Sitekeep ignores stale locks when it checks for conflicts.
import { hostname as osHostname, userInfo } from "node:os";
import { ExitCode, SitekeepError } from "../errors.js";
import { formatDate, parseTimeNs } from "../util/gotime.js";
import { type Repository, mapLimit } from "./repository.js";

/** Locks not refreshed for this long are stale (restic's staleTimeout). */
export const STALE_AFTER_MS = 30 * 60_000;
/** How often a held lock is refreshed (restic's refreshInterval). */
export const REFRESH_EVERY_MS = 5 * 60_000;
/**
 * A lock not refreshed for this long may soon look stale to other processes (they wait 30
 * minutes); from then on we must not commit a snapshot or delete anything under it.
 */
export const LOST_AFTER_MS = 25 * 60_000;
/**
 * Pause between writing our lock and the second look, for backends whose listings lag a little
 * and do not say by how much (restic's waitBeforeLockCheck). A backend can say (listingLagMs).
 */
const DEFAULT_CHECK_DELAY_MS = 200;

/** A lock file as restic writes it. uid and gid are omitted by restic when zero. */
interface LockJSON {
  time: string;
  exclusive: boolean;
  hostname: string;
  username: string;
  pid: number;
  uid?: number;
  gid?: number;
}

export interface LockInfo {
  id: string;
  time: string;
  exclusive: boolean;
  hostname: string;
  username: string;
  pid: number;
  uid: number;
  gid: number;
}

export interface AcquireLockOptions {
  exclusive: boolean;
  /** Keep retrying while the repository is locked until this much time has passed (default 0: fail at once). */
  retryMs?: number;
  /** Refresh interval of the held lock (default 5 minutes; for tests). */
  refreshMs?: number;
  /**
   * Wait between writing the lock and checking again for conflicts (default: the backend's
   * listingLagMs, 0 on a local filesystem; 200 ms when it does not say).
   */
  checkDelayMs?: number;
  /**
   * Read-only work done during that wait instead of idling (loading the index, say). It runs again
   * on every attempt, since what it read may have changed while the repository was locked; if it
   * fails, the lock file is removed and its error thrown. What it read may predate a prune that
   * finished just before the check: withLockedIndex checks the index again once the lock is held.
   */
  whileWaiting?: () => Promise<unknown>;
  /** Called when a refresh fails; the lock stays held with its previous file. */
  onRefreshError?: (err: unknown) => void;
  /** Age of the lock file after which the lock counts as lost (default 25 minutes; for tests). */
  lostAfterMs?: number;
  /** Called when removing the lock after successful work fails (withLock only). */
  onReleaseError?: (err: unknown) => void;
}

/** Thrown when another process holds a conflicting lock. */
export class LockedError extends SitekeepError {
  constructor(readonly other: LockInfo) {
    super("repo.locked", lockedMessage(other), {
      hint: "wait for the other operation to finish, or run `sitekeep unlock` if it is no longer running",
      exitCode: ExitCode.locked,
    });
  }
}

export class Lock {
  #id: string;
  #timer: NodeJS.Timeout | undefined;
  /** Refreshes run one after another; release waits for the one in flight. */
  #pending: Promise<void> = Promise.resolve();
  #released = false;
  #releasing: Promise<void> | undefined;
  /** When the lock file in the repository was last written. */
  #writtenAt = Date.now();
  #lastRefreshError: unknown;

  /** @internal use acquireLock */
  constructor(
    private readonly repo: Repository,
    readonly exclusive: boolean,
    id: string,
    refreshMs: number,
    private readonly onRefreshError?: (err: unknown) => void,
    private readonly lostAfterMs = LOST_AFTER_MS,
  ) {
    this.#id = id;
    if (refreshMs > 0 && Number.isFinite(refreshMs)) {
      this.#timer = setInterval(() => void this.refresh(), refreshMs);
      this.#timer.unref();
    }
  }

  /** The ID of the current lock file (it changes on every refresh). */
  get id(): string {
    return this.#id;
  }

  get released(): boolean {
    return this.#released;
  }

  /**
   * True once the lock file is so old (refreshes failed, or the process was stalled) that another
   * process may soon take it for stale and, say, prune data this one still needs.
   */
  get lost(): boolean {
    return this.#released || Date.now() - this.#writtenAt > this.lostAfterMs;
  }

  /** Throws repo.lock-lost when the lock can no longer be trusted; call before committing or deleting. */
  assertHeld(): void {
    if (!this.lost) return;
    const why = this.#lastRefreshError instanceof Error ? ` (last refresh failed: ${this.#lastRefreshError.message})` : "";
    throw new SitekeepError("repo.lock-lost", `the repository lock was not refreshed for ${Math.round((Date.now() - this.#writtenAt) / 60_000)} minutes${why}; stopping before changing anything`, {
      hint: "check that the repository is reachable and writable, then run the command again (what was uploaded is reused)",
    });
  }

  /** Replaces the lock file with one carrying the current time. Errors go to onRefreshError. */
  refresh(): Promise<void> {
    this.#pending = this.#pending.then(async () => {
      if (this.#released) return;
      try {
        const newId = await this.repo.saveJSON("locks", newLockJSON(this.exclusive));
        const oldId = this.#id;
        this.#id = newId;
        this.#writtenAt = Date.now();
        this.#lastRefreshError = undefined;
        await this.repo.backend.remove({ type: "locks", name: oldId });
      } catch (err) {
        this.#lastRefreshError = err;
        this.onRefreshError?.(err);
      }
    });
    return this.#pending;
  }

  /** Stops refreshing and removes the lock file. Safe to call more than once. */
  release(): Promise<void> {
    this.#releasing ??= (async () => {
      this.#released = true; // refreshes queued from now on do nothing
      if (this.#timer) clearInterval(this.#timer);
      this.#timer = undefined;
      await this.#pending;
      await this.repo.backend.remove({ type: "locks", name: this.#id });
    })();
    return this.#releasing;
  }
}

/** Takes a shared or exclusive lock on the repository, or throws LockedError (exit code 11). */
export async function acquireLock(repo: Repository, opts: AcquireLockOptions): Promise<Lock> {
  const deadline = Date.now() + Math.max(0, opts.retryMs ?? 0);
  let wait = 500;
  for (;;) {
    try {
      return await tryLock(repo, opts);
    } catch (err) {
      const left = deadline - Date.now();
      if (!(err instanceof LockedError) || left <= 0) throw err;
      await sleep(Math.min(wait, left));
      wait = Math.min(wait * 2, 10_000);
    }
  }
}

async function tryLock(repo: Repository, opts: AcquireLockOptions): Promise<Lock> {
  await checkForOtherLocks(repo, opts.exclusive);
  const id = await repo.saveJSON("locks", newLockJSON(opts.exclusive));
  // Refreshed from now on: whileWaiting may take long (an index on slow storage).
  const lock = new Lock(repo, opts.exclusive, id, opts.refreshMs ?? REFRESH_EVERY_MS, opts.onRefreshError, opts.lostAfterMs);
  try {
    const delay = opts.checkDelayMs ?? (await repo.backend.listingLagMs?.()) ?? DEFAULT_CHECK_DELAY_MS;
    const [, work] = await Promise.allSettled([delay > 0 ? sleep(delay) : undefined, opts.whileWaiting?.()]);
    await checkForOtherLocks(repo, opts.exclusive, lock.id);
    if (work.status === "rejected") throw work.reason;
  } catch (err) {
    await lock.release().catch(() => undefined);
    throw err;
  }
  return lock;
}

async function checkForOtherLocks(repo: Repository, exclusive: boolean, ownId?: string): Promise<void> {
  const now = new Date();
  const conflicts = (await listLocks(repo)).filter(
    (l) => l.id !== ownId && (exclusive || l.exclusive) && !isStale(l, now),
  );
  if (conflicts.length === 0) return;
  // Name an exclusive holder first, then the newest lock.
  conflicts.sort((a, b) => Number(b.exclusive) - Number(a.exclusive) || timeMs(b.time) - timeMs(a.time));
  throw new LockedError(conflicts[0]);
}

/** Every readable lock in the repository; damaged ones, and ones removed while listing, are skipped. */
export async function listLocks(repo: Repository): Promise<LockInfo[]> {
  const ids = await repo.listIds("locks");
  const out: LockInfo[] = [];
  await mapLimit(ids, 8, async (id) => {
    try {
      out.push(parseLock(id, await repo.loadJSON<unknown>("locks", id)));
    } catch {
      // unreadable: being written or removed right now, or damaged (`unlock --remove-all` clears it)
    }
  });
  return out.sort((a, b) => timeMs(a.time) - timeMs(b.time) || a.id.localeCompare(b.id));
}

function parseLock(id: string, raw: unknown): LockInfo {
  if (typeof raw !== "object" || raw === null) throw new Error("lock is not a JSON object");
  const j = raw as Partial<Record<keyof LockJSON, unknown>>;
  if (typeof j.time !== "string") throw new Error("lock has no time");
  parseTimeNs(j.time); // throws when invalid
  const num = (v: unknown): number => (typeof v === "number" && Number.isFinite(v) ? v : 0);
  return {
    id,
    time: j.time,
    exclusive: j.exclusive === true,
    hostname: typeof j.hostname === "string" ? j.hostname : "",
    username: typeof j.username === "string" ? j.username : "",
    pid: num(j.pid),
    uid: num(j.uid),
    gid: num(j.gid),
  };
}

/**
 * True when the lock's holder is surely gone: it was not refreshed for 30 minutes, or it was made on
 * this host by a process that no longer exists. Locks of other hosts are trusted until they age out.
 */
export function isStale(l: LockInfo, now: Date = new Date()): boolean {
  let t: number;
  try {
    t = timeMsStrict(l.time);
  } catch {
    return true; // restic could not read such a lock either
  }
  if (now.getTime() - t > STALE_AFTER_MS) return true;
  if (l.hostname !== osHostname()) return false;
  return !processExists(l.pid);
}

function processExists(pid: number): boolean {
  // 0 and negative numbers address process groups: no answer about a single process.
  if (!Number.isSafeInteger(pid) || pid <= 0) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    // EPERM: it exists but belongs to another user.
    return (err as NodeJS.ErrnoException).code !== "ESRCH";
  }
}

/** Removes stale locks (`sitekeep unlock`); returns how many were removed. */
export async function removeStaleLocks(repo: Repository): Promise<number> {
  const now = new Date();
  let n = 0;
  for (const l of await listLocks(repo)) {
    if (!isStale(l, now)) continue;
    await repo.backend.remove({ type: "locks", name: l.id });
    n++;
  }
  return n;
}

/** Removes every lock file, readable or not (`sitekeep unlock --remove-all`); returns how many. */
export async function removeAllLocks(repo: Repository): Promise<number> {
  let n = 0;
  for (const id of await repo.listIds("locks")) {
    await repo.backend.remove({ type: "locks", name: id });
    n++;
  }
  return n;
}

/** Runs fn while holding a lock; the lock is released however fn ends. */
export async function withLock<T>(
  repo: Repository,
  exclusive: boolean,
  fn: () => Promise<T>,
  opts: Omit<AcquireLockOptions, "exclusive"> = {},
): Promise<T> {
  const lock = await acquireLock(repo, { ...opts, exclusive });
  const previousGuard = repo.lockGuard;
  repo.lockGuard = () => lock.assertHeld();
  let result: T;
  try {
    result = await fn();
  } catch (err) {
    // Blobs still being compressed or uploaded must not land after the lock is gone.
    await repo.abandonWrites();
    await lock.release().catch(() => undefined);
    throw err;
  } finally {
    repo.lockGuard = previousGuard;
  }
  // The work is done and committed; a lock file we fail to remove is only stale clutter
  // (it ages out, or `sitekeep unlock` removes it), not a reason to report failure.
  await lock.release().catch((err: unknown) => opts.onReleaseError?.(err));
  return result;
}

/**
 * withLock with read-only preparation done while the lock waits out its conflict check: `prepare`
 * runs then, and runs again once the lock is held if `stale` says that what it read may have
 * changed in the meantime (a backup or a prune that finished before the check). fn gets what was
 * prepared.
 */
export function withLockPrepared<P, T>(
  repo: Repository,
  exclusive: boolean,
  prepare: () => Promise<P>,
  stale: (prepared: P) => Promise<boolean>,
  fn: (prepared: P) => Promise<T>,
  opts: Omit<AcquireLockOptions, "exclusive" | "whileWaiting"> = {},
): Promise<T> {
  let prepared: P;
  const body = async (): Promise<T> => fn((await stale(prepared)) ? await prepare() : prepared);
  return withLock(repo, exclusive, body, { ...opts, whileWaiting: async () => (prepared = await prepare()) });
}

/**
 * withLock with the repository's index loaded: read while the lock waits out its conflict check,
 * then read again if an index file it read is gone by the time the lock is held (a prune that
 * started before our lock file was seen and finished before the check).
 */
export function withLockedIndex<T>(
  repo: Repository,
  exclusive: boolean,
  fn: () => Promise<T>,
  opts: Omit<AcquireLockOptions, "exclusive" | "whileWaiting"> = {},
): Promise<T> {
  return withLockPrepared(repo, exclusive, () => repo.loadIndex(), (read) => indexFilesGone(repo, read), () => fn(), opts);
}

/** True when an index file of `read` (IDs that Repository.loadIndex returned) is no longer there. */
export async function indexFilesGone(repo: Repository, read: string[]): Promise<boolean> {
  const now = new Set(await repo.listIds("index"));
  return read.some((id) => !now.has(id));
}

// ---- helpers -----------------------------------------------------------------------------------

function newLockJSON(exclusive: boolean): LockJSON {
  const lock: LockJSON = {
    time: formatDate(new Date()),
    exclusive,
    hostname: osHostname(),
    username: currentUsername(),
    pid: process.pid,
  };
  const uid = process.getuid?.() ?? 0;
  const gid = process.getgid?.() ?? 0;
  if (uid) lock.uid = uid;
  if (gid) lock.gid = gid;
  return lock;
}

function currentUsername(): string {
  try {
    return userInfo().username;
  } catch {
    // no passwd entry for this UID (common in containers)
    return process.env.USER ?? process.env.LOGNAME ?? "";
  }
}

function timeMsStrict(time: string): number {
  return Number(parseTimeNs(time) / 1_000_000n);
}

function timeMs(time: string): number {
  try {
    return timeMsStrict(time);
  } catch {
    return 0;
  }
}

function lockedMessage(l: LockInfo): string {
  const t = timeMs(l.time);
  return (
    `repository is already locked ${l.exclusive ? "exclusively " : ""}by PID ${l.pid} on host ${l.hostname} ` +
    `by ${l.username} (UID ${l.uid}, GID ${l.gid}), ` +
    `lock was created at ${formatLocal(new Date(t))} (${formatAgo(Date.now() - t)} ago)`
  );
}

/** "2006-01-02 15:04:05" in local time. */
function formatLocal(d: Date): string {
  const p = (n: number): string => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

/** A short age: 42s, 3m, 2h5m, 4d. */
export function formatAgo(ms: number): string {
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m`;
  const h = Math.floor(m / 60);
  if (h < 48) return m % 60 ? `${h}h${m % 60}m` : `${h}h`;
  return `${Math.floor(h / 24)}d`;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
