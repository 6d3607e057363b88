// `sitekeep copy`: snapshots move between two repositories with different passwords (and so
// different master keys and chunker polynomials); the copies keep their trees and times, restic
// accepts the destination, and a second run copies nothing.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { promises as fsp } from "node:fs";
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { describeRun, runRestic, runSitekeep, tempDir, type RunResult, type TempDir, ok } from "./helpers/run.js";
import { LocalBackend } from "../src/backend/local.js";
import { Repository } from "../src/repo/repository.js";
import { compareTrees } from "./helpers/compare.js";

let tmp: TempDir;
let base: Record<string, string>;
let envA: Record<string, string>;
let envB: Record<string, string>;
let src: string;
let repoA: string;
let repoB: string;
let pwFileA: string;

interface SnapJSON {
  id: string;
  time: string;
  tree: string;
  paths: string[];
  hostname: string;
  tags?: string[];
  original?: string;
}

function lastJSON(r: RunResult): Record<string, unknown> {
  return JSON.parse(r.stdout.trim().split("\n").pop() as string);
}

async function snapshots(repo: string, env: Record<string, string>): Promise<SnapJSON[]> {
  return JSON.parse(ok(await runSitekeep(["-r", repo, "snapshots", "--json"], { env })).stdout) as SnapJSON[];
}

before(async () => {
  tmp = await tempDir("copy");
  base = { SITEKEEP_CACHE_DIR: join(tmp.path, "cache"), HOME: tmp.path, SITEKEEP_SCRYPT_N: "1024" };
  envA = { ...base, SITEKEEP_PASSWORD: "pw-source", RESTIC_PASSWORD: "pw-source" };
  envB = { ...base, SITEKEEP_PASSWORD: "pw-dest", RESTIC_PASSWORD: "pw-dest" };
  pwFileA = join(tmp.path, "source-password");
  await fsp.writeFile(pwFileA, "pw-source\n");
  src = join(tmp.path, "src");
  await fsp.mkdir(join(src, "sub"), { recursive: true });
  await fsp.writeFile(join(src, "big.bin"), randomBytes(3 * 1024 * 1024));
  await fsp.writeFile(join(src, "sub", "mid.bin"), randomBytes(1024 * 1024 + 123));
  for (let i = 0; i < 10; i++) await fsp.writeFile(join(src, "sub", `f${i}.dat`), randomBytes(20_000 + i * 777));
  await fsp.writeFile(join(src, "empty"), "");
  await fsp.symlink("big.bin", join(src, "link"));

  repoA = join(tmp.path, "repo-a");
  repoB = join(tmp.path, "repo-b");
  ok(await runSitekeep(["-r", repoA, "init"], { env: envA }));
  ok(await runSitekeep(["-r", repoB, "init"], { env: envB }));
  ok(await runSitekeep(["-r", repoA, "backup", src, "--tag", "first"], { env: envA }));
  await fsp.writeFile(join(src, "sub", "f3.dat"), randomBytes(40_000));
  await fsp.writeFile(join(src, "added.bin"), randomBytes(2 * 1024 * 1024));
  ok(await runSitekeep(["-r", repoA, "backup", src], { env: envA }));
});

after(async () => tmp.cleanup());

test("the two repositories chunk differently", async () => {
  const a = await Repository.open(new LocalBackend(repoA), "pw-source");
  const b = await Repository.open(new LocalBackend(repoB), "pw-dest");
  assert.notEqual(a.config.chunker_polynomial, b.config.chunker_polynomial);
});

test("copy A→B: same snapshots, restorable, accepted by restic; a second run copies nothing", async () => {
  const res = ok(await runSitekeep(["-r", repoB, "copy", "--from-repo", repoA, "--json"], { env: { ...envB, SITEKEEP_FROM_PASSWORD: "pw-source" } }));
  const summary = lastJSON(res);
  assert.equal((summary.copied as unknown[]).length, 2, describeRun(res));
  assert.deepEqual(summary.skipped, []);
  assert.ok((summary.blobs_copied as number) > 0);
  assert.ok((summary.bytes_copied as number) > 6 * 1024 * 1024, `bytes_copied ${summary.bytes_copied}`);

  const a = await snapshots(repoA, envA);
  const b = await snapshots(repoB, envB);
  assert.equal(b.length, 2);
  const key = (s: SnapJSON): string => s.time;
  a.sort((x, y) => key(x).localeCompare(key(y)));
  b.sort((x, y) => key(x).localeCompare(key(y)));
  for (let i = 0; i < a.length; i++) {
    assert.equal(b[i].tree, a[i].tree, "same tree ID");
    assert.equal(b[i].time, a[i].time, "same time");
    assert.deepEqual(b[i].paths, a[i].paths);
    assert.equal(b[i].hostname, a[i].hostname);
    assert.deepEqual(b[i].tags, a[i].tags);
    assert.equal(b[i].original, a[i].id, "original names the source snapshot");
    assert.notEqual(b[i].id, a[i].id);
  }
  const copiedPairs = (summary.copied as { from: string; to: string }[]).map((c) => [c.from, c.to]).sort();
  assert.deepEqual(copiedPairs, a.map((s) => [s.id, b.find((x) => x.original === s.id)?.id]).sort());

  const out = join(tmp.path, "restore-b");
  ok(await runSitekeep(["-r", repoB, "restore", "latest", "--target", out], { env: envB }));
  assert.deepEqual(await compareTrees(src, join(out, src)), [], "the restore from B equals the source");

  ok(await runRestic(["-r", repoB, "check", "--read-data"], { env: envB }));
  const restic = JSON.parse(ok(await runRestic(["-r", repoB, "snapshots", "--json"], { env: envB })).stdout) as SnapJSON[];
  assert.equal(restic.length, 2);

  // Again: everything is skipped, nothing is written.
  const again = ok(await runSitekeep(["-r", repoB, "copy", "--from-repo", repoA, "--from-password-file", pwFileA], { env: envB }));
  assert.match(again.stdout, /skipped/);
  assert.match(again.stdout, /0 snapshots copied, 2 skipped; 0 blobs/);
  const againJSON = lastJSON(ok(await runSitekeep(["-r", repoB, "copy", "--from-repo", repoA, "--json"], { env: { ...envB, SITEKEEP_FROM_PASSWORD: "pw-source" } })));
  assert.deepEqual(againJSON.copied, []);
  assert.equal((againJSON.skipped as string[]).length, 2);
  assert.equal(againJSON.blobs_copied, 0);
  assert.equal((await snapshots(repoB, envB)).length, 2);
});

test("copy one snapshot by ID prefix; the rest follows later and only the missing blobs move", async () => {
  const repoC = join(tmp.path, "repo-c");
  const envC = { ...envB, SITEKEEP_PASSWORD: "pw-c", RESTIC_PASSWORD: "pw-c" };
  ok(await runSitekeep(["-r", repoC, "init"], { env: envC }));
  const a = (await snapshots(repoA, envA)).sort((x, y) => x.time.localeCompare(y.time));
  const first = a[0];
  const one = lastJSON(ok(await runSitekeep(["-r", repoC, "copy", "--from-repo", repoA, first.id.slice(0, 8), "--json"], { env: { ...envC, SITEKEEP_FROM_PASSWORD: "pw-source" } })));
  assert.deepEqual((one.copied as { from: string }[]).map((c) => c.from), [first.id]);
  const c = await snapshots(repoC, envC);
  assert.equal(c.length, 1);
  assert.equal(c[0].tree, first.tree);
  assert.deepEqual(c[0].tags, ["first"]);

  const rest = lastJSON(ok(await runSitekeep(["-r", repoC, "copy", "--from-repo", repoA, "--json"], { env: { ...envC, SITEKEEP_FROM_PASSWORD: "pw-source" } })));
  assert.deepEqual((rest.copied as { from: string }[]).map((x) => x.from), [a[1].id]);
  assert.deepEqual(rest.skipped, [first.id]);
  assert.ok((rest.bytes_copied as number) < (one.bytes_copied as number), "only the changed data is copied the second time");
  ok(await runRestic(["-r", repoC, "check", "--read-data"], { env: envC }));

  // --tag filters the source snapshots.
  const repoD = join(tmp.path, "repo-d");
  ok(await runSitekeep(["-r", repoD, "init"], { env: envC }));
  const tagged = lastJSON(ok(await runSitekeep(["-r", repoD, "copy", "--from-repo", repoA, "--tag", "first", "--json"], { env: { ...envC, SITEKEEP_FROM_PASSWORD: "pw-source" } })));
  assert.deepEqual((tagged.copied as { from: string }[]).map((x) => x.from), [first.id]);
});

test("a wrong source password: exit 12, saying it was the source repository", async () => {
  const res = await runSitekeep(["-r", repoB, "copy", "--from-repo", repoA], { env: { ...envB, SITEKEEP_FROM_PASSWORD: "not-it" } });
  assert.equal(res.code, 12, describeRun(res));
  assert.match(res.stderr, /source repository/);
  assert.match(res.stderr, /wrong password/);
  const missing = await runSitekeep(["-r", repoB, "copy"], { env: envB });
  assert.equal(missing.code, 1, describeRun(missing));
  assert.match(missing.stderr, /--from-repo/);
});

test("an interrupted copy resumes: blobs already stored are not copied again", async () => {
  const { copySnapshots } = await import("../src/archive/copier.js");
  const repoE = join(tmp.path, "repo-e");
  ok(await runSitekeep(["-r", repoE, "init"], { env: envB }));
  const a = await Repository.open(new LocalBackend(repoA), "pw-source");
  await a.loadIndex();
  const snaps = await a.listSnapshots();
  // Tiny packs: every blob is its own pack, and an index file is written every 8 packs.
  const e1 = await Repository.open(new LocalBackend(repoE), "pw-dest", { packSize: 1 });
  await e1.loadIndex();
  const realLoad = a.loadBlob.bind(a);
  let loads = 0;
  a.loadBlob = async (type, id) => {
    if (++loads > 12) throw new Error("simulated interruption");
    return realLoad(type, id);
  };
  await assert.rejects(copySnapshots(a, e1, snaps), /simulated interruption/);
  a.loadBlob = realLoad;
  await new Promise((r) => setTimeout(r, 200)); // let uploads in flight settle
  const e2 = await Repository.open(new LocalBackend(repoE), "pw-dest");
  await e2.loadIndex();
  const before = e2.index.size;
  assert.ok(before > 0, "some blobs were indexed before the interruption");
  assert.equal((await e2.listSnapshots()).length, 0, "no snapshot names incomplete data");
  const full = await copySnapshots(a, e2, snaps);
  assert.equal(full.copied.length, 2);
  assert.equal(e2.index.size, before + full.blobsCopied, "the blobs stored before were not copied again");
  ok(await runRestic(["-r", repoE, "check", "--read-data"], { env: envB }));
});
