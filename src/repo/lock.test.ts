import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFile, spawn } from "node:child_process";
import { existsSync, promises as fsp } from "node:fs";
import { hostname, tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { LocalBackend } from "../backend/local.js";
import { FaultyBackend } from "../backend/faulty.js";
import { ExitCode, SitekeepError } from "../errors.js";
import { formatDate } from "../util/gotime.js";
import { Repository } from "./repository.js";
import {
  type AcquireLockOptions,
  type LockInfo,
  LockedError,
  acquireLock,
  isStale,
  listLocks,
  removeAllLocks,
  removeStaleLocks,
  withLock,
  withLockedIndex,
} from "./lock.js";
import { sha256 } from "./id.js";

const RESTIC = "/usr/bin/restic";
const HAVE_RESTIC = existsSync(RESTIC);
const run = promisify(execFile);

let root: string;
let counter = 0;

before(async () => {
  root = await fsp.mkdtemp(join(tmpdir(), "sitekeep-lock-"));
});

after(async () => {
  await fsp.rm(root, { recursive: true, force: true });
});

async function newRepo(): Promise<{ repo: Repository; dir: string }> {
  const dir = join(root, `repo${++counter}`);
  const repo = await Repository.init(new LocalBackend(dir), "pw", { kdf: { N: 1024, r: 8, p: 1 } });
  return { repo, dir };
}

const fast = (exclusive: boolean, extra: Partial<AcquireLockOptions> = {}): AcquireLockOptions => ({
  exclusive,
  checkDelayMs: 0,
  ...extra,
});

async function lockFiles(dir: string): Promise<string[]> {
  return (await fsp.readdir(join(dir, "locks"))).sort();
}

/** Writes a lock file as another process would. */
function foreignLock(repo: Repository, fields: Partial<Omit<LockInfo, "id">>): Promise<string> {
  return repo.saveJSON("locks", {
    time: formatDate(new Date()),
    exclusive: false,
    hostname: "web1",
    username: "root",
    pid: 1234,
    ...fields,
  });
}

async function deadPid(): Promise<number> {
  const child = spawn(process.execPath, ["-e", ""], { stdio: "ignore" });
  const pid = child.pid;
  await new Promise((resolve) => child.on("exit", resolve));
  assert.ok(pid);
  return pid;
}

function assertLocked(err: unknown, re: RegExp): true {
  assert.ok(err instanceof LockedError);
  assert.ok(err instanceof SitekeepError);
  assert.equal(err.code, "repo.locked");
  assert.equal(err.exitCode, ExitCode.locked);
  assert.equal(err.exitCode, 11);
  assert.equal(
    err.hint,
    "wait for the other operation to finish, or run `sitekeep unlock` if it is no longer running",
  );
  assert.match(err.message, re);
  return true;
}

const localTime = (d: Date): string => {
  const p = (n: number): string => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
};

test("shared locks coexist; release removes each file", async () => {
  const { repo, dir } = await newRepo();
  const a = await acquireLock(repo, fast(false));
  const b = await acquireLock(repo, fast(false));
  assert.equal(a.exclusive, false);
  assert.notEqual(a.id, b.id);
  assert.deepEqual(await lockFiles(dir), [a.id, b.id].sort());
  const infos = await listLocks(repo);
  assert.equal(infos.length, 2);
  for (const l of infos) {
    assert.equal(l.pid, process.pid);
    assert.equal(l.hostname, hostname());
    assert.equal(l.exclusive, false);
    assert.equal(isStale(l), false);
  }
  await a.release();
  assert.deepEqual(await lockFiles(dir), [b.id]);
  await a.release(); // twice is harmless
  await b.release();
  assert.deepEqual(await lockFiles(dir), []);
});

test("a shared lock blocks an exclusive one, and the failed attempt leaves no file", async () => {
  const { repo, dir } = await newRepo();
  const shared = await acquireLock(repo, fast(false));
  await assert.rejects(acquireLock(repo, fast(true)), (err) =>
    assertLocked(
      err,
      new RegExp(`^repository is already locked by PID ${process.pid} on host ${hostname()} by `),
    ),
  );
  assert.deepEqual(await lockFiles(dir), [shared.id]);
  await shared.release();
  const ex = await acquireLock(repo, fast(true));
  await ex.release();
});

test("an exclusive lock blocks shared and exclusive ones", async () => {
  const { repo, dir } = await newRepo();
  const ex = await acquireLock(repo, fast(true));
  const re = new RegExp(`^repository is already locked exclusively by PID ${process.pid} on host `);
  await assert.rejects(acquireLock(repo, fast(false)), (err) => assertLocked(err, re));
  await assert.rejects(acquireLock(repo, fast(true)), (err) => assertLocked(err, re));
  assert.deepEqual(await lockFiles(dir), [ex.id]);
  await ex.release();
});

test("the conflict message names the other lock", async () => {
  const { repo } = await newRepo();
  const created = new Date(Date.now() - 3 * 60_000);
  await foreignLock(repo, { exclusive: true, time: formatDate(created), uid: 0, gid: 0 });
  await assert.rejects(acquireLock(repo, fast(false)), (err) =>
    assertLocked(
      err,
      new RegExp(
        "^" +
          `repository is already locked exclusively by PID 1234 on host web1 by root (UID 0, GID 0), lock was created at ${localTime(created)} (3m ago)`.replace(
            /[()]/g,
            "\\$&",
          ) +
          "$",
      ),
    ),
  );
  const other = (await listLocks(repo))[0];
  await assert.rejects(
    acquireLock(repo, fast(true)),
    (err) => err instanceof LockedError && err.other.id === other.id,
  );
  // uid/gid omitted (restic leaves out zeros) read as 0; given ones are kept
  await foreignLock(repo, { exclusive: true, hostname: "web2", uid: 33, gid: 34, username: "www-data" });
  const web2 = (await listLocks(repo)).find((l) => l.hostname === "web2");
  assert.equal(web2?.uid, 33);
  assert.equal(web2?.gid, 34);
});

test("locks older than 30 minutes are stale: ignored, and removed by removeStaleLocks", async () => {
  const { repo, dir } = await newRepo();
  const oldId = await foreignLock(repo, {
    exclusive: true,
    time: formatDate(new Date(Date.now() - 31 * 60_000)),
  });
  const fresh = await foreignLock(repo, {
    exclusive: false,
    time: formatDate(new Date(Date.now() - 29 * 60_000)),
  });
  const infos = await listLocks(repo);
  assert.equal(isStale(infos.find((l) => l.id === oldId)!), true);
  assert.equal(isStale(infos.find((l) => l.id === fresh)!), false);
  // the old exclusive lock does not block a shared one
  const mine = await acquireLock(repo, fast(false));
  assert.equal(await removeStaleLocks(repo), 1);
  assert.deepEqual(await lockFiles(dir), [fresh, mine.id].sort());
  await mine.release();
  // isStale takes the time to judge by
  const l = infos.find((x) => x.id === fresh)!;
  assert.equal(isStale(l, new Date(Date.now() + 2 * 60_000)), true);
});

test("locks of a dead process on this host are stale; on another host they are not", async () => {
  const { repo, dir } = await newRepo();
  const pid = await deadPid();
  const here = await foreignLock(repo, { exclusive: true, hostname: hostname(), pid });
  const ex = await acquireLock(repo, fast(true));
  await ex.release();
  const there = await foreignLock(repo, { exclusive: true, hostname: "elsewhere.example", pid });
  await assert.rejects(acquireLock(repo, fast(false)), (err) =>
    assertLocked(err, /on host elsewhere\.example/),
  );
  // a live process on this host keeps its lock
  await foreignLock(repo, { exclusive: false, hostname: hostname(), pid: process.pid });
  assert.equal(await removeStaleLocks(repo), 1);
  const left = await lockFiles(dir);
  assert.equal(left.length, 2);
  assert.ok(!left.includes(here));
  assert.ok(left.includes(there));
  assert.equal(await removeAllLocks(repo), 2);
  assert.deepEqual(await lockFiles(dir), []);
});

test("unreadable lock files are skipped, and removed only by removeAllLocks", async () => {
  const { repo, dir } = await newRepo();
  const junk = "ab".repeat(32);
  await fsp.writeFile(join(dir, "locks", junk), "not a lock");
  const notJson = await repo.saveUnpacked("locks", Buffer.from("{{{"));
  const noTime = await repo.saveJSON("locks", { exclusive: true, hostname: "web1", pid: 1 });
  assert.deepEqual(await listLocks(repo), []);
  const ex = await acquireLock(repo, fast(true));
  await ex.release();
  assert.equal(await removeStaleLocks(repo), 0);
  assert.deepEqual(await lockFiles(dir), [junk, notJson, noTime].sort());
  assert.equal(await removeAllLocks(repo), 3);
  assert.deepEqual(await lockFiles(dir), []);
});

test("a held lock is refreshed: a new file with a newer time replaces the old one", async () => {
  const { repo, dir } = await newRepo();
  const errors: unknown[] = [];
  const lock = await acquireLock(repo, fast(true, { refreshMs: 40, onRefreshError: (e) => errors.push(e) }));
  const first = lock.id;
  const before = (await listLocks(repo))[0];
  const deadline = Date.now() + 5000;
  while (lock.id === first && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  assert.notEqual(lock.id, first);
  await new Promise((r) => setTimeout(r, 100)); // a few more rounds
  await lock.refresh(); // settles the chain: the file now matches lock.id
  const files = await lockFiles(dir);
  assert.deepEqual(files, [lock.id]);
  const now = (await listLocks(repo))[0];
  assert.equal(now.exclusive, true);
  assert.ok(Date.parse(now.time) > Date.parse(before.time), `${now.time} > ${before.time}`);
  assert.deepEqual(errors, []);
  await lock.release();
  assert.deepEqual(await lockFiles(dir), []);
  await new Promise((r) => setTimeout(r, 100)); // no refresh after release
  assert.deepEqual(await lockFiles(dir), []);
});

test("a lock whose refreshes fail is lost: committing a snapshot or deleting is refused", async () => {
  const dir = join(root, `repo${++counter}`);
  await Repository.init(new LocalBackend(dir), "pw", { kdf: { N: 1024, r: 8, p: 1 } });
  const faulty = new FaultyBackend(new LocalBackend(dir));
  const repo = await Repository.open(faulty, "pw");
  const errors: unknown[] = [];
  const result = withLock(
    repo,
    false,
    async () => {
      repo.assertLockHeld(); // fresh: fine
      faulty.setFaults([{ op: "save", type: "locks", code: "EIO" }]);
      const deadline = Date.now() + 5000;
      while (errors.length < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      assert.ok(errors.length >= 2, "refreshes were attempted and failed");
      await new Promise((r) => setTimeout(r, 150)); // past lostAfterMs
      assert.throws(() => repo.assertMayDelete("prune"), /lock was not refreshed/);
      await repo.saveSnapshot({ time: "2026-01-01T00:00:00Z", tree: "00".repeat(32), paths: ["/x"], hostname: "h", username: "u" });
    },
    { refreshMs: 30, lostAfterMs: 100, checkDelayMs: 0, onRefreshError: (e) => errors.push(e) },
  );
  await assert.rejects(result, (err: unknown) => {
    assert.ok(err instanceof SitekeepError);
    assert.equal(err.code, "repo.lock-lost");
    assert.match(err.message, /last refresh failed: .*i\/o error/i);
    return true;
  });
  assert.deepEqual(await repo.listIds("snapshots"), [], "no snapshot was committed");
  assert.equal(repo.lockGuard, undefined, "the guard is gone with the lock");
});

test("withLock releases after success and after failure", async () => {
  const { repo, dir } = await newRepo();
  const v = await withLock(repo, true, async () => {
    assert.equal((await lockFiles(dir)).length, 1);
    assert.equal((await listLocks(repo))[0].exclusive, true);
    return 42;
  });
  assert.equal(v, 42);
  assert.deepEqual(await lockFiles(dir), []);
  await assert.rejects(
    withLock(repo, false, async () => {
      throw new Error("boom");
    }),
    /boom/,
  );
  assert.deepEqual(await lockFiles(dir), []);
});

test("whileWaiting runs during the conflict check; when it fails, or the check does, the lock file goes", async () => {
  const { repo, dir } = await newRepo();
  let sawLockFile = false;
  const lock = await acquireLock(repo, {
    exclusive: false,
    checkDelayMs: 50,
    whileWaiting: async () => {
      sawLockFile = (await lockFiles(dir)).length === 1; // our lock is written before the wait
    },
  });
  assert.ok(sawLockFile);
  await lock.release();

  await assert.rejects(
    acquireLock(repo, { exclusive: false, checkDelayMs: 10, whileWaiting: () => Promise.reject(new Error("index unreadable")) }),
    /index unreadable/,
  );
  assert.deepEqual(await lockFiles(dir), [], "a failed preparation leaves no lock file");

  // A conflict found by the second check wins over the preparation's own failure (a prune that
  // holds an exclusive lock may be deleting the very index files being read).
  let other: string | undefined;
  await assert.rejects(
    acquireLock(repo, {
      exclusive: false,
      checkDelayMs: 10,
      whileWaiting: async () => {
        other = await foreignLock(repo, { exclusive: true });
        throw new Error("index file vanished");
      },
    }),
    (err) => assertLocked(err, /exclusively/),
  );
  assert.deepEqual(await lockFiles(dir), [other], "only the other process's lock is left");
});

test("withLockedIndex reads the index again when an index file it read is gone once the lock is held", async () => {
  const { repo, dir } = await newRepo();
  await repo.saveBlob("data", Buffer.from("old"));
  await repo.flush();
  const [oldIndex] = await repo.listIds("index");
  const reader = await Repository.open(new LocalBackend(dir), "pw");
  const has = (text: string): boolean => reader.index.has(sha256(Buffer.from(text)), "data");
  const during = withLockedIndex(reader, false, async () => ({ old: has("old"), fresh: has("fresh") }), { checkDelayMs: 300 });
  // While the reader's lock waits for its check (its index already read), a "prune" that started
  // earlier replaces the index file and finishes.
  await new Promise((r) => setTimeout(r, 100));
  const pruner = await Repository.open(new LocalBackend(dir), "pw");
  await pruner.saveBlob("data", Buffer.from("fresh"));
  await pruner.flush();
  await pruner.backend.remove({ type: "index", name: oldIndex });
  assert.deepEqual(await during, { old: false, fresh: true }, "the index was read again once the lock was held");
});

test("Repository.loadIndex replaces the index, so it can run again after a failed lock attempt", async () => {
  const { repo } = await newRepo();
  await repo.saveBlob("data", Buffer.from("one"));
  await repo.flush();
  const fresh = await Repository.open(repo.backend, "pw");
  await fresh.loadIndex();
  await fresh.loadIndex();
  assert.equal(fresh.index.size, 1);
  assert.equal(fresh.index.duplicates, 0, "a second load starts from an empty index");
});

test("retryMs waits for the other lock to go away", async () => {
  const { repo } = await newRepo();
  const ex = await acquireLock(repo, fast(true));
  setTimeout(() => void ex.release(), 300);
  const t0 = Date.now();
  const second = await acquireLock(repo, fast(false, { retryMs: 5000 }));
  assert.ok(Date.now() - t0 >= 250);
  await second.release();
  // and gives up when the time is over
  const ex2 = await acquireLock(repo, fast(true));
  await assert.rejects(acquireLock(repo, fast(false, { retryMs: 300 })), (err) =>
    assertLocked(err, /exclusively/),
  );
  await ex2.release();
});

test("lockers racing on a local file system, which look again without a wait: an exclusive lock never shares", async () => {
  const { repo, dir } = await newRepo();
  assert.equal(await repo.backend.listingLagMs?.(), 0, "the test folder is on a local file system");
  const others = await Promise.all([1, 2, 3].map(() => Repository.open(new LocalBackend(dir), "pw")));
  for (let i = 0; i < 20; i++) {
    // Two exclusive and two shared lockers, each on its own Repository, started together.
    const exclusive = [true, true, false, false];
    const results = await Promise.allSettled([repo, ...others].map((r, k) => acquireLock(r, { exclusive: exclusive[k]! })));
    const won = results.flatMap((r, k) => (r.status === "fulfilled" ? [{ lock: r.value, exclusive: exclusive[k]! }] : []));
    if (won.some((w) => w.exclusive)) assert.equal(won.length, 1, `an exclusive lock was granted beside ${won.length - 1} other(s)`);
    for (const r of results) if (r.status === "rejected") assertLocked(r.reason, /locked/);
    for (const w of won) await w.lock.release();
    assert.deepEqual(await lockFiles(dir), []);
  }
});

test("the lock's second look waits for the backend's listing lag", async () => {
  const { dir } = await newRepo();
  class LaggyBackend extends LocalBackend {
    override async listingLagMs(): Promise<number> {
      return 150;
    }
  }
  const repo = await Repository.open(new LaggyBackend(dir), "pw");
  let written = 0;
  const lock = await acquireLock(repo, { exclusive: true, whileWaiting: async () => void (written = performance.now()) });
  const waited = performance.now() - written;
  await lock.release();
  assert.ok(waited >= 140, `looked again after ${waited.toFixed(0)} ms`);
});

// ---- interop with restic ------------------------------------------------------------------------

function resticEnv(): NodeJS.ProcessEnv {
  return { PATH: process.env.PATH, HOME: join(root, "home"), RESTIC_PASSWORD: "pw" };
}

async function restic(
  dir: string,
  ...args: string[]
): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(RESTIC, ["-r", dir, ...args], { env: resticEnv() });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof e.code === "number" ? e.code : -1, stdout: e.stdout ?? "", stderr: e.stderr ?? "" };
  }
}

test(
  "restic refuses to back up while Sitekeep holds an exclusive lock, and reads the lock",
  { skip: !HAVE_RESTIC && "restic not installed" },
  async () => {
    const { repo, dir } = await newRepo();
    const src = join(root, "src");
    await fsp.mkdir(src, { recursive: true });
    await fsp.writeFile(join(src, "a.txt"), "hello");
    await fsp.mkdir(join(root, "home"), { recursive: true });

    const ex = await acquireLock(repo, { exclusive: true });
    const listed = await restic(dir, "list", "locks");
    assert.equal(listed.code, 0, listed.stderr);
    assert.deepEqual(listed.stdout.trim().split("\n"), [ex.id]);
    const cat = await restic(dir, "--no-lock", "cat", "lock", ex.id);
    assert.equal(cat.code, 0, cat.stderr);
    const j = JSON.parse(cat.stdout) as Record<string, unknown>;
    assert.equal(j.pid, process.pid);
    assert.equal(j.exclusive, true);
    assert.equal(j.hostname, hostname());

    const b = await restic(dir, "backup", src);
    assert.notEqual(b.code, 0);
    assert.match(b.stderr, /locked exclusively by PID (\d+)/);
    assert.match(b.stderr, new RegExp(`PID ${process.pid} `));
    await ex.release();

    // a shared Sitekeep lock lets restic back up (restic's backup lock is shared too)...
    const shared = await acquireLock(repo, { exclusive: false });
    const b2 = await restic(dir, "backup", src);
    assert.equal(b2.code, 0, b2.stderr);
    // ...but not forget, which needs an exclusive lock
    const f = await restic(dir, "forget", "--keep-last", "1");
    assert.notEqual(f.code, 0);
    assert.match(f.stderr, /already locked by PID/);
    await shared.release();
    assert.deepEqual(await lockFiles(dir), []);
  },
);

test(
  "Sitekeep refuses an exclusive lock while restic backs up",
  { skip: !HAVE_RESTIC && "restic not installed" },
  async () => {
    const { repo, dir } = await newRepo();
    await fsp.mkdir(join(root, "home"), { recursive: true });
    const child = spawn(RESTIC, ["-r", dir, "backup", "--stdin", "--stdin-filename", "x"], {
      env: resticEnv(),
      stdio: ["pipe", "pipe", "pipe"],
    });
    let stderr = "";
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    child.stdout.resume();
    const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
    try {
      child.stdin.write("some data\n");
      let theirs: LockInfo | undefined;
      const deadline = Date.now() + 20_000;
      while (!theirs && Date.now() < deadline) {
        theirs = (await listLocks(repo)).find((l) => l.pid === child.pid);
        if (!theirs) await new Promise((r) => setTimeout(r, 50));
      }
      assert.ok(theirs, `restic took no lock; stderr: ${stderr}`);
      assert.equal(theirs.exclusive, false);
      assert.equal(isStale(theirs), false);

      await assert.rejects(acquireLock(repo, { exclusive: true }), (err) =>
        assertLocked(
          err,
          new RegExp(`^repository is already locked by PID ${child.pid} on host ${hostname()} by `),
        ),
      );
      const shared = await acquireLock(repo, { exclusive: false });
      await shared.release();
    } finally {
      child.stdin.end();
    }
    assert.equal(await exited, 0, stderr);
    assert.deepEqual(await lockFiles(dir), []);
    const ex = await acquireLock(repo, { exclusive: true });
    await ex.release();
  },
);
