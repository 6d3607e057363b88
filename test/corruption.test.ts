// Damage detection through the CLI: a flipped byte in a pack, an index file or a snapshot file, and
// a deleted pack. Each case damages a fresh copy of one repository and checks that `check` finds the
// damage, names the damaged file and the paths that depend on it, and that `restore` saves what it
// can. restic (the reference) says which files use which blobs, independently of Sitekeep.
//
// Each case runs Sitekeep with an empty cache folder, as a machine that never saw the repository
// would. The last test repeats the index and snapshot cases with the cache the backups filled.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { promises as fsp, readdirSync, statSync } from "node:fs";
import { join, relative } from "node:path";
import {
  describeRun,
  runCommand,
  runRestic,
  runSitekeep,
  tempDir,
  type RunResult,
  type TempDir,
} from "./helpers/run.js";

const KiB = 1024;
const ID_RE = /^[0-9a-f]{64}$/;

let tmp: TempDir;
let env: Record<string, string>;
let src: string;
let pristine: string;
/** The snapshot of the whole tree (the latest) and an older one of src/sub only. */
let snapMain: string;
let snapSub: string;
/** Relative paths (below src) of every file in the tree. */
const files: string[] = [];

interface IndexBlob {
  id: string;
  type: "data" | "tree";
  offset: number;
  length: number;
}

before(async () => {
  tmp = await tempDir("corrupt");
  env = {
    SITEKEEP_PASSWORD: "pw-corrupt",
    RESTIC_PASSWORD: "pw-corrupt",
    SITEKEEP_CACHE_DIR: join(tmp.path, "cache"),
    HOME: tmp.path,
    SITEKEEP_SCRYPT_N: "1024",
  };
  src = join(tmp.path, "src");
  const sizes: Record<string, number> = {
    "a.txt": 6,
    "b.bin": 300 * KiB,
    "c.bin": 700 * KiB,
    "d.bin": 1500 * KiB,
    "e.bin": 2500 * KiB,
    "sub/f.bin": 900 * KiB,
    "sub/g.txt": 20,
    "sub/deeper/h.bin": 400 * KiB,
  };
  for (const [rel, size] of Object.entries(sizes)) {
    await fsp.mkdir(join(src, rel, ".."), { recursive: true });
    await fsp.writeFile(join(src, rel), randomBytes(size));
    files.push(rel);
  }
  pristine = join(tmp.path, "repo");
  ok(await runSitekeep(["-r", pristine, "init"], { env }));
  snapSub = lastJSON(
    ok(
      await runSitekeep(["-r", pristine, "--pack-size", "1", "backup", "--json", join(src, "sub")], { env }),
    ),
  ).snapshot_id as string;
  snapMain = lastJSON(
    ok(await runSitekeep(["-r", pristine, "--pack-size", "1", "backup", "--json", src], { env })),
  ).snapshot_id as string;
  assert.ok(packs(pristine).length >= 4, `expected several packs, got ${packs(pristine).length}`);
});

after(async () => tmp.cleanup());

// ---- helpers ------------------------------------------------------------------------------------

function ok(r: RunResult): RunResult {
  assert.equal(r.code, 0, describeRun(r));
  return r;
}

function lastJSON(r: RunResult): Record<string, unknown> {
  return JSON.parse(r.stdout.trim().split("\n").pop() as string) as Record<string, unknown>;
}

/** Pack files of a repository, largest first. */
function packs(repo: string): { id: string; rel: string; size: number }[] {
  const out: { id: string; rel: string; size: number }[] = [];
  for (const sub of readdirSync(join(repo, "data"))) {
    for (const id of readdirSync(join(repo, "data", sub))) {
      if (ID_RE.test(id))
        out.push({ id, rel: `data/${sub}/${id}`, size: statSync(join(repo, "data", sub, id)).size });
    }
  }
  return out.sort((x, y) => y.size - x.size);
}

function idsIn(repo: string, dir: string): string[] {
  return readdirSync(join(repo, dir)).filter((n) => ID_RE.test(n));
}

/** A fresh copy of the pristine repository, and an env with an empty cache folder for it. */
async function copy(name: string): Promise<{ repo: string; env: Record<string, string> }> {
  const repo = join(tmp.path, name);
  const r = await runCommand("cp", ["-a", pristine, repo]);
  assert.equal(r.code, 0, describeRun(r));
  return { repo, env: { ...env, SITEKEEP_CACHE_DIR: join(tmp.path, `${name}-cache`) } };
}

/** Inverts one byte of a (read-only) repository file; `at` defaults to the middle. */
async function flipByte(file: string, at?: number): Promise<void> {
  await fsp.chmod(file, 0o600);
  const buf = await fsp.readFile(file);
  const i = at ?? Math.floor(buf.length / 2);
  buf[i] ^= 0xff;
  await fsp.writeFile(file, buf);
  await fsp.chmod(file, 0o400);
}

/** restic's index of the repository: pack ID -> its blobs. */
async function resticIndex(repo: string): Promise<Map<string, IndexBlob[]>> {
  const out = new Map<string, IndexBlob[]>();
  const ids = ok(await runRestic(["-r", repo, "list", "index"], { env }))
    .stdout.trim()
    .split("\n");
  for (const id of ids) {
    const idx = JSON.parse(ok(await runRestic(["-r", repo, "cat", "index", id], { env })).stdout) as {
      packs: { id: string; blobs: IndexBlob[] }[];
    };
    for (const p of idx.packs) out.set(p.id, [...(out.get(p.id) ?? []), ...p.blobs]);
  }
  return out;
}

/** Relative paths (below src) of the files that restic's `find` reports for the given arguments. */
async function resticFind(args: string[]): Promise<Set<string>> {
  const r = ok(await runRestic(["-r", pristine, "find", "--json", ...args], { env }));
  const found = new Set<string>();
  for (const line of r.stdout.split("\n")) {
    if (!line.startsWith("[")) continue;
    for (const m of JSON.parse(line) as { path: string }[]) found.add(relative(src, m.path));
  }
  return found;
}

/** Whether `out` names the file `rel` (below src) as a path of its own (not as a prefix of another). */
function names(out: string, rel: string): boolean {
  const abs = join(src, rel);
  return new RegExp(`(^|[\\s:"'])${abs.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}($|[\\s:"'])`, "m").test(out);
}

/** Restores the main snapshot and compares every file not in `lost` with the source. */
async function restoreExpectingLoss(
  repo: string,
  caseEnv: Record<string, string>,
  target: string,
  lost: Set<string>,
): Promise<void> {
  const r = await runSitekeep(["-r", repo, "restore", "latest", "--target", target], { env: caseEnv });
  assert.equal(r.code, 1, describeRun(r));
  for (const rel of lost)
    assert.ok(names(r.stderr, rel), `restore does not name the lost file ${rel}\n${describeRun(r)}`);
  for (const rel of files) {
    const restored = join(target, src, rel);
    if (lost.has(rel)) {
      await assert.rejects(fsp.stat(restored), `${rel} cannot be restored and must not be left half-written`);
      continue;
    }
    assert.ok(!names(r.stderr, rel), `restore reports ${rel}, which is intact\n${describeRun(r)}`);
    const [want, got] = await Promise.all([fsp.readFile(join(src, rel)), fsp.readFile(restored)]);
    assert.ok(got.equals(want), `${rel} restored with different content`);
  }
}

// ---- cases --------------------------------------------------------------------------------------

test("a flipped byte in a data pack: found by --read-data only, with the pack and the paths; restore saves the rest", async (t) => {
  const { repo, env: caseEnv } = await copy("case-pack");
  const pack = packs(repo)[0];
  const blobs = (await resticIndex(repo)).get(pack.id);
  assert.ok(blobs, `restic's index does not name the largest pack ${pack.id}`);
  const blob = blobs.filter((b) => b.type === "data").sort((x, y) => y.length - x.length)[0];
  assert.ok(blob, `the largest pack ${pack.id} holds no data blob`);
  const lost = await resticFind(["--blob", blob.id]);
  assert.ok(lost.size > 0, `restic finds no file using blob ${blob.id}`);
  t.diagnostic(
    `flipped a byte of blob ${blob.id.slice(0, 8)} in ${pack.rel}; files using it: ${[...lost].join(", ")}`,
  );
  await flipByte(join(repo, pack.rel), blob.offset + Math.floor(blob.length / 2));

  const structure = await runSitekeep(["-r", repo, "check"], { env: caseEnv });
  assert.equal(
    structure.code,
    0,
    `the structure is intact, so check without --read-data passes\n${describeRun(structure)}`,
  );

  const full = await runSitekeep(["-r", repo, "check", "--read-data"], { env: caseEnv });
  assert.equal(full.code, 1, describeRun(full));
  assert.ok(
    full.stdout.includes(pack.rel),
    `check --read-data does not name ${pack.rel}\n${describeRun(full)}`,
  );
  for (const rel of lost)
    assert.ok(
      names(full.stdout, rel),
      `check --read-data does not name the affected file ${rel}\n${describeRun(full)}`,
    );
  for (const rel of files.filter((f) => !lost.has(f))) {
    assert.ok(
      !names(full.stdout, rel),
      `check --read-data names ${rel}, which does not use the damaged blob\n${describeRun(full)}`,
    );
  }

  const restic = await runRestic(["-r", repo, "check", "--read-data"], { env: caseEnv });
  assert.notEqual(restic.code, 0, `restic check --read-data should fail too\n${describeRun(restic)}`);

  await restoreExpectingLoss(repo, caseEnv, join(tmp.path, "restore-pack"), lost);
});

test("a flipped byte in an index file: check fails naming index/ID", async () => {
  const { repo, env: caseEnv } = await copy("case-index");
  const id = idsIn(repo, "index").sort()[0];
  await flipByte(join(repo, "index", id));
  const r = await runSitekeep(["-r", repo, "check"], { env: caseEnv });
  assert.equal(r.code, 1, describeRun(r));
  assert.ok(r.stdout.includes(`index/${id}`), `check does not name index/${id}\n${describeRun(r)}`);
});

test("a flipped byte in a snapshot file: check fails naming snapshots/ID; snapshots lists the rest or names the file", async (t) => {
  const { repo, env: caseEnv } = await copy("case-snapshot");
  await flipByte(join(repo, "snapshots", snapMain));
  const r = await runSitekeep(["-r", repo, "check"], { env: caseEnv });
  assert.equal(r.code, 1, describeRun(r));
  assert.ok(
    r.stdout.includes(`snapshots/${snapMain}`),
    `check does not name snapshots/${snapMain}\n${describeRun(r)}`,
  );

  const list = await runSitekeep(["-r", repo, "snapshots", "--json"], { env: caseEnv });
  if (list.code === 0) {
    const ids = (JSON.parse(list.stdout) as { id: string }[]).map((s) => s.id);
    assert.deepEqual(ids, [snapSub], `snapshots should list the intact snapshot only\n${describeRun(list)}`);
    assert.ok(
      list.stderr.includes(snapMain),
      `snapshots does not warn about the damaged one\n${describeRun(list)}`,
    );
    t.diagnostic("sitekeep snapshots lists the intact snapshot and warns about the damaged one");
  } else {
    assert.equal(list.code, 1, describeRun(list));
    assert.ok(
      list.stderr.includes(snapMain),
      `snapshots fails without naming the damaged file\n${describeRun(list)}`,
    );
    t.diagnostic(`sitekeep snapshots fails (exit 1), naming the damaged file: ${list.stderr.trim()}`);
  }
});

test("a deleted pack: check names it as missing and the affected paths; restore saves the rest", async () => {
  const { repo, env: caseEnv } = await copy("case-missing");
  const pack = packs(repo)[0];
  const lost = await resticFind(["--pack", pack.id]);
  assert.ok(lost.size > 0, `restic finds no file in pack ${pack.id}`);
  await fsp.unlink(join(repo, pack.rel));

  const r = await runSitekeep(["-r", repo, "check"], { env: caseEnv });
  assert.equal(r.code, 1, describeRun(r));
  assert.match(
    r.stdout,
    new RegExp(`${pack.rel}.*missing|missing.*${pack.rel}`),
    `check does not name ${pack.rel} as missing\n${describeRun(r)}`,
  );
  for (const rel of lost)
    assert.ok(names(r.stdout, rel), `check does not name the affected file ${rel}\n${describeRun(r)}`);
  for (const rel of files.filter((f) => !lost.has(f))) {
    assert.ok(
      !names(r.stdout, rel),
      `check names ${rel}, which has no data in the deleted pack\n${describeRun(r)}`,
    );
  }
  await restoreExpectingLoss(repo, caseEnv, join(tmp.path, "restore-missing"), lost);
});

test(
  "damaged index and snapshot files are found even when the local cache holds intact copies",
  {},
  async () => {
    // The cache the backups filled: it holds the intact index and snapshot files under their names.
    for (const dir of ["index", "snapshots"] as const) {
      const { repo } = await copy(`case-cached-${dir}`);
      const id = dir === "index" ? idsIn(repo, "index").sort()[0] : snapMain;
      await flipByte(join(repo, dir, id));
      const r = await runSitekeep(["-r", repo, "check"], { env });
      assert.equal(
        r.code,
        1,
        `a damaged ${dir}/${id} goes unnoticed by check with a filled cache\n${describeRun(r)}`,
      );
      assert.ok(r.stdout.includes(`${dir}/${id}`), describeRun(r));
    }
  },
);
