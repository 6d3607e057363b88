import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { randomBytes, createHash } from "node:crypto";
import { existsSync, promises as fsp } from "node:fs";
import { tmpdir } from "node:os";
import { join, sep } from "node:path";
import { promisify } from "node:util";
import { LocalBackend } from "../backend/local.js";
import { Repository } from "../repo/repository.js";
import { Archiver } from "./archiver.js";
import { checkRepository, formatProblem, parseSubset, startCheck, type CheckResult } from "./checker.js";
import { loadTree } from "./tree.js";
import { withLockPrepared } from "../repo/lock.js";
import type { NodeJSON } from "./node.js";

const run = promisify(execFile);
const PW = "pw";
let base: string;
let srcDir: string;
let counter = 0;

before(async () => {
  base = await fsp.mkdtemp(join(tmpdir(), "sk-check-"));
  srcDir = join(base, "src");
  await fsp.mkdir(join(srcDir, "sub"), { recursive: true });
  await fsp.writeFile(join(srcDir, "a.bin"), randomBytes(300 * 1024));
  await fsp.writeFile(join(srcDir, "sub", "b.bin"), randomBytes(280 * 1024));
  await fsp.writeFile(join(srcDir, "sub", "c.bin"), randomBytes(200 * 1024));
  await fsp.writeFile(join(srcDir, "small.txt"), "hello\n");
});

after(async () => {
  await fsp.rm(base, { recursive: true, force: true });
});

interface Fixture {
  dir: string;
  repo: Repository;
  snapshots: string[];
}

/** A repository with two snapshots of srcDir (the second adds a file; "sub" is shared). */
async function makeRepo(): Promise<Fixture> {
  const dir = join(base, `repo${counter++}`);
  const w = await Repository.init(new LocalBackend(dir), PW, { kdf: { N: 1024, r: 8, p: 1 }, packSize: 64 * 1024 });
  await w.loadIndex();
  const s1 = await new Archiver(w, { paths: [srcDir] }).run();
  const extra = join(srcDir, `new${counter}.bin`);
  await fsp.writeFile(extra, randomBytes(150 * 1024));
  const w2 = await Repository.open(new LocalBackend(dir), PW);
  await w2.loadIndex();
  const s2 = await new Archiver(w2, { paths: [srcDir] }).run();
  await fsp.rm(extra);
  const repo = await Repository.open(new LocalBackend(dir), PW);
  return { dir, repo, snapshots: [s1.snapshot_id, s2.snapshot_id] };
}

/** Snapshot path of a file below srcDir, as the checker reports it. */
function snapPath(...rel: string[]): string {
  return "/" + [...srcDir.split(sep).filter(Boolean), ...rel].join("/");
}

async function findNode(repo: Repository, snapshot: string, path: string): Promise<NodeJSON> {
  const s = await repo.loadSnapshot(snapshot);
  let tree = s.tree;
  const parts = path.split("/").filter(Boolean);
  for (let i = 0; ; i++) {
    const node = (await loadTree(repo, tree)).find((n) => n.name === parts[i]);
    assert.ok(node, `no ${parts[i]} in ${path}`);
    if (i === parts.length - 1) return node;
    tree = node.subtree!;
  }
}

/** The pack holding the (single) content blob of a file. */
async function packOf(f: Fixture, path: string): Promise<{ packId: string; offset: number }> {
  const r = await Repository.open(new LocalBackend(f.dir), PW);
  await r.loadIndex();
  const node = await findNode(r, f.snapshots[0], path);
  const loc = r.lookup("data", Buffer.from(node.content![0], "hex"));
  assert.ok(loc);
  return { packId: loc.packId, offset: loc.offset };
}

function packPath(dir: string, id: string): string {
  return join(dir, "data", id.slice(0, 2), id);
}

async function flipByte(file: string, at: number): Promise<void> {
  await fsp.chmod(file, 0o600);
  const buf = await fsp.readFile(file);
  buf[at] ^= 0x55;
  await fsp.writeFile(file, buf);
}

function kinds(r: CheckResult): string[] {
  return r.errors.map((e) => e.kind);
}

test("a clean repository has no errors, and restic agrees", async () => {
  const f = await makeRepo();
  const phases = new Set<string>();
  const r = await checkRepository(f.repo, { readData: true, onProgress: (p) => phases.add(p.phase) });
  assert.deepEqual(r.errors, []);
  assert.deepEqual(r.notices, []);
  assert.equal(r.snapshots, 2);
  assert.ok(r.packs >= 5, `packs: ${r.packs}`);
  assert.equal(r.packsRead, r.packs);
  const onDisk = await listPacks(f.dir);
  const total = (await Promise.all(onDisk.map((id) => fsp.stat(packPath(f.dir, id))))).reduce((n, s) => n + s.size, 0);
  assert.equal(r.bytesRead, total);
  assert.deepEqual([...phases].sort(), ["data", "index", "packs", "snapshots"]);

  if (existsSync("/usr/bin/restic")) {
    const home = await fsp.mkdtemp(join(tmpdir(), "sk-home-"));
    try {
      const { stdout } = await run("/usr/bin/restic", ["-r", f.dir, "--no-cache", "check", "--read-data"], {
        env: { ...process.env, RESTIC_PASSWORD: PW, HOME: home },
      });
      assert.match(stdout, /no errors were found/);
    } finally {
      await fsp.rm(home, { recursive: true, force: true });
    }
  }
});

test("a flipped byte in a data pack is found by the data check, with what it affects", async () => {
  const f = await makeRepo();
  const target = snapPath("sub", "b.bin");
  const { packId, offset } = await packOf(f, target);
  await flipByte(packPath(f.dir, packId), offset + 100);

  const structure = await checkRepository(f.repo);
  assert.deepEqual(structure.errors, []);
  assert.equal(structure.packsRead, 0);

  const r = await checkRepository(f.repo, { readData: true });
  assert.deepEqual(kinds(r), ["pack"]);
  const e = r.errors[0];
  assert.equal(e.file, `data/${packId.slice(0, 2)}/${packId}`);
  assert.match(e.message, new RegExp(packId));
  assert.match(e.message, /does not match its name/);
  assert.match(e.message, /cannot be decoded/);
  // sub/ is shared by both snapshots: both lose b.bin, and only b.bin.
  assert.deepEqual(
    (e.affects ?? []).map((a) => a.snapshot).sort(),
    [...f.snapshots].sort(),
  );
  for (const a of e.affects ?? []) assert.deepEqual(a.paths, [target]);
  const text = formatProblem(e);
  assert.match(text, /^pack data\//);
  assert.match(text, new RegExp(`\\n  affects snapshot ${f.snapshots[0].slice(0, 8)}:\\n    ${target}`));
});

test("a damaged pack header makes the whole pack's contents affected", async () => {
  const f = await makeRepo();
  const target = snapPath("a.bin");
  const { packId } = await packOf(f, target);
  const file = packPath(f.dir, packId);
  const size = (await fsp.stat(file)).size;
  await flipByte(file, size - 10);
  const r = await checkRepository(f.repo, { readData: true });
  assert.deepEqual(kinds(r), ["pack"]);
  assert.match(r.errors[0].message, /header cannot be read/);
  assert.ok(r.errors[0].affects?.some((a) => a.paths.includes(target)));
});

test("a deleted pack is a missing-pack error naming what depends on it", async () => {
  const f = await makeRepo();
  const target = snapPath("sub", "c.bin");
  const { packId } = await packOf(f, target);
  await fsp.rm(packPath(f.dir, packId));
  const r = await checkRepository(f.repo);
  assert.deepEqual(kinds(r), ["missing-pack"]);
  assert.equal(r.errors[0].file, `data/${packId.slice(0, 2)}/${packId}`);
  assert.equal(r.errors[0].affects?.length, 2);
  // Exactly the files with content in that pack (which small blobs share a pack with c.bin depends
  // on the order their compression finishes).
  const inPack: string[] = [];
  for (const rel of [["a.bin"], ["sub", "b.bin"], ["sub", "c.bin"], ["small.txt"]]) {
    if ((await packOf(f, snapPath(...rel)).catch(() => undefined))?.packId === packId) inPack.push(snapPath(...rel));
  }
  assert.ok(inPack.includes(target));
  for (const a of r.errors[0].affects ?? []) assert.deepEqual([...a.paths].sort(), inPack.sort());
  // Reading data does not add errors for a pack that is not there.
  const rd = await checkRepository(f.repo, { readData: true });
  assert.deepEqual(kinds(rd), ["missing-pack"]);
});

test("a missing tree pack names the directories that hang on it", async () => {
  const f = await makeRepo();
  const r0 = await Repository.open(new LocalBackend(f.dir), PW);
  await r0.loadIndex();
  const sub = await findNode(r0, f.snapshots[0], snapPath("sub"));
  const loc = r0.lookup("tree", Buffer.from(sub.subtree!, "hex"));
  assert.ok(loc);
  await fsp.rm(packPath(f.dir, loc.packId));
  const r = await checkRepository(f.repo);
  assert.ok(kinds(r).includes("missing-pack"));
  assert.ok(kinds(r).includes("tree"));
  const missing = r.errors.find((e) => e.kind === "missing-pack")!;
  assert.ok(missing.affects?.some((a) => a.paths.includes(snapPath("sub"))));
});

test("a flipped byte in an index file is an error naming it", async () => {
  const f = await makeRepo();
  const ids = await fsp.readdir(join(f.dir, "index"));
  const id = ids.sort()[0];
  await flipByte(join(f.dir, "index", id), 40);
  const r = await checkRepository(f.repo);
  const idxErr = r.errors.find((e) => e.kind === "index");
  assert.ok(idxErr);
  assert.equal(idxErr.file, `index/${id}`);
  assert.match(idxErr.message, new RegExp(`index/${id}`));
  // The packs it named are now unindexed: notices, not errors.
  assert.ok(r.notices.some((n) => /not named by any index/.test(n)));
  assert.ok(!kinds(r).includes("missing-pack"));
});

test("an index entry that differs from its pack's header is a pack error naming the entry", async () => {
  const f = await makeRepo();
  // Rewrite the index so that the second blob of a pack with several (a tree pack here: each data
  // blob fills a pack of its own) has the other type: the pack's bytes and size still match, only
  // the header comparison can see it.
  const [indexId] = (await fsp.readdir(join(f.dir, "index"))).sort();
  const file = JSON.parse((await f.repo.loadUnpacked("index", indexId)).toString("utf8")) as {
    packs: { id: string; blobs: { id: string; type: string; offset: number }[] }[];
  };
  const pack = file.packs.find((p) => p.blobs.length >= 2);
  assert.ok(pack, "a pack with two blobs or more");
  const changed = [...pack.blobs].sort((a, b) => a.offset - b.offset)[1];
  const was = changed.type;
  changed.type = was === "tree" ? "data" : "tree";
  await f.repo.saveUnpacked("index", Buffer.from(JSON.stringify(file)));
  await fsp.rm(join(f.dir, "index", indexId));
  const r = await checkRepository(await Repository.open(new LocalBackend(f.dir), PW), { readData: true });
  const e = r.errors.find((x) => x.kind === "pack");
  assert.ok(e, JSON.stringify(r.errors));
  assert.equal(e.file, `data/${pack.id.slice(0, 2)}/${pack.id}`);
  assert.match(e.message, new RegExp(`header entry 1 \\(${was} blob ${changed.id.slice(0, 8)}… at ${changed.offset}\\+\\d+\\) differs from the index \\(${changed.type} blob ${changed.id.slice(0, 8)}…`));
});

test("a flipped byte in a snapshot file is an error naming it", async () => {
  const f = await makeRepo();
  const id = f.snapshots[1];
  await flipByte(join(f.dir, "snapshots", id), 50);
  const r = await checkRepository(f.repo, { readData: true });
  assert.deepEqual(kinds(r), ["snapshot"]);
  assert.equal(r.errors[0].file, `snapshots/${id}`);
  assert.match(r.errors[0].message, new RegExp(`snapshots/${id}`));
  assert.equal(r.snapshots, 2);
});

test("an unindexed pack is a notice, not an error", async () => {
  const f = await makeRepo();
  const junk = randomBytes(100);
  const id = createHash("sha256").update(junk).digest("hex");
  await fsp.writeFile(packPath(f.dir, id), junk);
  const r = await checkRepository(f.repo, { readData: true });
  assert.deepEqual(r.errors, []);
  assert.equal(r.notices.length, 1);
  assert.match(r.notices[0], new RegExp(`data/${id.slice(0, 2)}/${id}`));
});

test("data subsets: 1/2 and 2/2 cover every pack once; 50% reads about half", async () => {
  const f = await makeRepo();
  const packs = await listPacks(f.dir);
  const a = await checkRepository(f.repo, { readDataSubset: "1/2" });
  const b = await checkRepository(f.repo, { readDataSubset: "2/2" });
  assert.deepEqual(a.errors, []);
  assert.deepEqual(b.errors, []);
  assert.equal(a.packsRead + b.packsRead, packs.length);
  const half = await checkRepository(f.repo, { readDataSubset: "50%" });
  assert.equal(half.packsRead, Math.floor(packs.length / 2));

  const pick = parseSubset("3/4");
  assert.equal(pick("02" + "0".repeat(62), []), true);
  assert.equal(pick("03" + "0".repeat(62), []), false);
  assert.equal(pick("fe" + "0".repeat(62), []), true);
  assert.throws(() => parseSubset("0/3"));
  assert.throws(() => parseSubset("5/3"));
  assert.throws(() => parseSubset("120%"));
  assert.throws(() => parseSubset("half"));
});

async function listPacks(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const d of await fsp.readdir(join(dir, "data"))) {
    for (const n of await fsp.readdir(join(dir, "data", d))) out.push(n);
  }
  return out;
}

test("a check started before a backup finished reads the index again when the list of index files changed", async () => {
  const f = await makeRepo();
  // The index is read while the lock waits (withLockPrepared, as the CLI's check); a backup
  // commits right after that first read, before the lock is held.
  let starts = 0;
  let changedSeen: boolean | undefined;
  const r = await withLockPrepared(
    f.repo,
    false,
    async () => {
      const started = await startCheck(f.repo, { readData: true });
      if (starts++ === 0) {
        const extra = join(srcDir, "late.bin");
        await fsp.writeFile(extra, randomBytes(120 * 1024));
        try {
          const w = await Repository.open(new LocalBackend(f.dir), PW);
          await w.loadIndex();
          await new Archiver(w, { paths: [srcDir] }).run();
        } finally {
          await fsp.rm(extra);
        }
      }
      return started;
    },
    async (started) => (changedSeen ??= await started.indexChanged()),
    (started) => started.finish(),
    { checkDelayMs: 0 },
  );
  assert.equal(changedSeen, true, "the first read is seen as stale");
  assert.equal(starts, 2, "the index was read again once the lock was held");
  // With the old index, the new packs would be "not named by any index" and the new snapshot's
  // file would name blobs missing from it.
  assert.deepEqual(r.errors.map(formatProblem), []);
  assert.deepEqual(r.notices, []);
  assert.equal(r.snapshots, 3);
  assert.equal(r.packsRead, (await listPacks(f.dir)).length);
});

test("packs larger than the check's pack buffers are verified, and damage in one is found", async () => {
  // Packs of ~36 MiB: with the addon they are read in pieces (some blobs larger than a piece);
  // without it (SITEKEEP_NO_NATIVE=1) whole, each larger than a reused pack buffer (32 MiB at
  // most), so each needs a buffer of its own and a smaller one in the pool is given up for it.
  const src = join(base, "large-packs");
  await fsp.mkdir(src);
  for (let i = 0; i < 3; i++) await fsp.writeFile(join(src, `f${i}.bin`), randomBytes(30 * 1024 * 1024));
  const dir = join(base, `repo${counter++}`);
  const w = await Repository.init(new LocalBackend(dir), PW, { kdf: { N: 1024, r: 8, p: 1 }, packSize: 34 * 1024 * 1024 });
  await w.loadIndex();
  await new Archiver(w, { paths: [src] }).run();
  await fsp.rm(src, { recursive: true });
  const repo = await Repository.open(new LocalBackend(dir), PW);
  const packs: { file: string; size: number }[] = [];
  for (const id of await repo.listIds("data")) {
    const file = packPath(dir, id);
    packs.push({ file, size: (await fsp.stat(file)).size });
  }
  packs.sort((a, b) => b.size - a.size);
  assert.ok(packs.length >= 4, `${packs.length} packs`);
  assert.ok(packs[0].size > 32 * 1024 * 1024, `largest pack ${packs[0].size} bytes`);

  const clean = await checkRepository(repo, { readData: true });
  assert.deepEqual(clean.errors, []);
  assert.equal(clean.packsRead, packs.length);

  await flipByte(packs[0].file, Math.floor(packs[0].size / 2));
  const r = await checkRepository(await Repository.open(new LocalBackend(dir), PW), { readData: true });
  assert.deepEqual(kinds(r), ["pack"]);
  assert.match(r.errors[0].message, /does not match its name/);
});
