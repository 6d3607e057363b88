// A backup that meets a storage failure (full disk, I/O error, connection reset) must end in a clear
// error, add no snapshot and leave the repository as it was: check passes, earlier snapshots restore,
// and the next backup works. Slow storage must only make it slower.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { promises as fsp } from "node:fs";
import { randomBytes } from "node:crypto";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { LocalBackend } from "./local.js";
import { FaultyBackend, type Fault } from "./faulty.js";
import { Repository } from "../repo/repository.js";
import { withLock } from "../repo/lock.js";
import { Archiver, type BackupSummary } from "../archive/archiver.js";
import { checkRepository, formatProblem } from "../archive/checker.js";
import { Restorer } from "../archive/restorer.js";
import { compareTrees } from "../../test/helpers/compare.js";

const PW = "pw";
const PACK_SIZE = 256 * 1024;
let base: string;
let repoDir: string;
let srcA: string;
let changed: string;
let snapA: string;
let round = 0;

before(async () => {
  base = await fsp.mkdtemp(join(tmpdir(), "sk-faulty-"));
  repoDir = join(base, "repo");
  srcA = join(base, "a");
  changed = join(base, "changed");
  await fsp.mkdir(join(srcA, "sub"), { recursive: true });
  await fsp.mkdir(changed);
  for (let i = 0; i < 6; i++) await fsp.writeFile(join(srcA, `f${i}.bin`), randomBytes(100_000 + i * 7000));
  await fsp.writeFile(join(srcA, "sub", "note.txt"), "snapshot A\n");
  const repo = await Repository.init(new FaultyBackend(new LocalBackend(repoDir)), PW, {
    kdf: { N: 1024, r: 8, p: 1 },
    packSize: PACK_SIZE,
  });
  await repo.loadIndex();
  snapA = (await new Archiver(repo, { paths: [srcA] }).run()).snapshot_id;
});

after(async () => {
  await fsp.rm(base, { recursive: true, force: true });
});

async function snapshotIds(): Promise<string[]> {
  const repo = await Repository.open(new LocalBackend(repoDir), PW);
  return (await repo.listIds("snapshots")).sort();
}

/** Backs up srcA plus 4 MiB of new data (4-8 packs: chunks are 0.5-8 MiB) through a FaultyBackend with `faults`. */
async function backupWith(
  faults: Fault[],
  staging = true,
): Promise<{ summary?: BackupSummary; error?: unknown; backend: FaultyBackend }> {
  round++;
  await fsp.writeFile(join(changed, `new${round}.bin`), randomBytes(4 * 1024 * 1024));
  // Staging on: data packs stream to staged files (the local backend's way); off: they are built
  // in memory and saved whole (the way on S3).
  const backend = new FaultyBackend(new LocalBackend(repoDir), [], { staging });
  const repo = await Repository.open(backend, PW, { packSize: PACK_SIZE });
  await repo.loadIndex();
  // Faults are armed only now, so opening the repository and reading the index are not affected.
  backend.setFaults(faults);
  try {
    // Under a lock, as every command runs a backup: on a failure it waits for the writes still
    // in flight (abandonWrites) before the caller goes on, so nothing lands or stays afterwards.
    return { summary: await withLock(repo, false, () => new Archiver(repo, { paths: [srcA, changed] }).run()), backend };
  } catch (error) {
    return { error, backend };
  }
}

/** What every failed backup must leave behind: an intact repository and snapshot A restorable. */
async function assertIntact(before: string[]): Promise<void> {
  assert.deepEqual(await snapshotIds(), before, "no snapshot was added");
  const files = await fsp.readdir(repoDir, { recursive: true });
  assert.deepEqual(files.filter((f) => f.includes("-tmp-")), [], "no temporary file is left behind");
  const repo = await Repository.open(new LocalBackend(repoDir), PW);
  const res = await checkRepository(repo, { readData: true });
  assert.deepEqual(res.errors.map(formatProblem), [], "check finds no errors");
  await repo.loadIndex();
  const target = join(base, `restore${round}`);
  const snap = await repo.findSnapshot(snapA);
  const summary = await new Restorer(repo, { target }).restore(snap.tree);
  assert.deepEqual(summary.errors, []);
  assert.deepEqual(await compareTrees(srcA, join(target, srcA)), [], "snapshot A restores identical");
  await fsp.rm(target, { recursive: true, force: true });
  // The next backup, without faults, works and adds exactly one snapshot.
  const next = await backupWith([]);
  assert.equal(next.error, undefined, `backup after the failure: ${String(next.error)}`);
  assert.equal((await snapshotIds()).length, before.length + 1);
}

const cases: { name: string; fault: Fault; message: RegExp[]; staging?: boolean }[] = [
  {
    name: "ENOSPC on the 3rd pack save",
    fault: { op: "save", type: "data", nth: 3, code: "ENOSPC" },
    message: [/no space left/, /saving data\/[0-9a-f]{64}/],
  },
  {
    name: "ENOSPC on the 3rd pack save, packs built in memory",
    fault: { op: "save", type: "data", nth: 3, code: "ENOSPC" },
    message: [/no space left/, /saving data\/[0-9a-f]{64}/],
    staging: false,
  },
  {
    name: "EIO on the index save",
    fault: { op: "save", type: "index", nth: 1, code: "EIO" },
    message: [/EIO/, /i\/o error/, /saving index\/[0-9a-f]{64}/],
  },
  {
    name: "ECONNRESET on the snapshot save",
    fault: { op: "save", type: "snapshots", nth: 1, code: "ECONNRESET" },
    message: [/ECONNRESET/, /connection reset/, /saving snapshots\/[0-9a-f]{64}/],
  },
];

for (const c of cases) {
  test(`${c.name}: the backup fails clearly and the repository stays intact`, async () => {
    const before = await snapshotIds();
    const { summary, error, backend } = await backupWith([c.fault], c.staging);
    assert.equal(summary, undefined, "the backup must fail");
    assert.ok(error instanceof Error, `an Error, got ${String(error)}`);
    assert.equal(backend.failures.length, 1, "exactly the one injected failure");
    for (const re of c.message) assert.match(error.message, re);
    assert.ok(error.message.includes(repoDir), `names the destination: ${error.message}`);
    await assertIntact(before);
  });
}

test("slow saves (50 ms each) only make the backup slower", async () => {
  const before = await snapshotIds();
  const { summary, error, backend } = await backupWith([{ op: "save", delayMs: 50 }]);
  assert.equal(error, undefined, String(error));
  assert.ok(summary?.snapshot_id);
  assert.ok(
    backend.log.filter((e) => e.op === "save" && e.type === "data").length >= 3,
    "several packs were saved",
  );
  const after = await snapshotIds();
  assert.deepEqual(after, [...before, summary.snapshot_id].sort());
  const repo = await Repository.open(new LocalBackend(repoDir), PW);
  assert.deepEqual((await checkRepository(repo, { readData: true })).errors.map(formatProblem), []);
});

test("an interrupted backup stores nothing once its lock is released (blobs in flight are dropped)", async () => {
  const before = await snapshotIds();
  round++;
  await fsp.writeFile(join(changed, `new${round}.bin`), randomBytes(6 * 1024 * 1024));
  const backend = new FaultyBackend(new LocalBackend(repoDir));
  const repo = await Repository.open(backend, PW, { packSize: PACK_SIZE });
  await repo.loadIndex();
  backend.setFaults([{ op: "save", type: "data", delayMs: 150 }]);
  const ac = new AbortController();
  const timer = setInterval(() => {
    if (backend.log.some((e) => e.op === "save" && e.type === "data")) ac.abort();
  }, 5);
  let error: unknown;
  try {
    await withLock(repo, false, () => new Archiver(repo, { paths: [srcA, changed], signal: ac.signal }).run());
  } catch (err) {
    error = err;
  } finally {
    clearInterval(timer);
  }
  assert.match(String(error), /interrupted/);
  const writes = (): number => backend.log.filter((e) => e.op === "save").length;
  const atRelease = writes();
  const locks = await repo.listIds("locks");
  assert.deepEqual(locks, [], "the lock is released");
  await new Promise((r) => setTimeout(r, 600));
  assert.equal(writes(), atRelease, "nothing was saved after the lock was released");
  await assertIntact(before);
});

test("FaultyBackend: afterBytes fails every save that no longer fits; load faults and raw errors", async () => {
  const dir = join(base, "unit");
  const fb = new FaultyBackend(new LocalBackend(dir), [
    { op: "save", afterBytes: 100, code: "ENOSPC" },
    { op: "load", type: "keys", code: "EIO", raw: true },
  ]);
  await fb.create();
  const h = (type: "data" | "keys", n: number) => ({ type, name: n.toString(16).padStart(64, "0") });
  await fb.save(h("data", 1), Buffer.alloc(60));
  await assert.rejects(
    fb.save(h("data", 2), Buffer.alloc(60)),
    /no space left on the device of .* while saving data\/0+2/,
  );
  await fb.save(h("keys", 3), Buffer.alloc(40)); // still fits: 100 bytes
  await assert.rejects(
    fb.save(h("data", 4), Buffer.alloc(1)),
    (e: NodeJS.ErrnoException) => e.code === "backend.nospace",
  );
  await assert.rejects(
    fb.load(h("keys", 3)),
    (e: NodeJS.ErrnoException) => e.code === "EIO" && /i\/o error/.test(e.message),
  );
  assert.equal((await fb.load(h("data", 1))).length, 60);
  assert.equal(fb.bytesSaved, 100);
  assert.deepEqual(
    fb.failures.map((f) => `${f.op} ${f.type} ${f.failed}`),
    ["save data ENOSPC", "save data ENOSPC", "load keys EIO"],
  );
});
