// A real full disk, not a simulated one: a 24 MiB tmpfs holds the repository and a backup of 40 MiB
// of random data runs out of space. The backup must fail with one clear line, commit nothing, leave
// no lock behind and keep the repository valid for sitekeep and restic; prune then removes the packs
// the failed run left. Needs root (mount); skipped otherwise.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { promises as fsp } from "node:fs";
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { describeRun, runCommand, runRestic, runSitekeep, tempDir, type TempDir, ok } from "./helpers/run.js";
import { compareTrees } from "./helpers/compare.js";
import { LocalBackend } from "../src/backend/local.js";
import { Repository } from "../src/repo/repository.js";

const PW = "pw-disk-full";
const isRoot = process.getuid?.() === 0;

let tmp: TempDir | undefined;
let mounted: string | undefined;

after(async () => {
  // Runs on failure too: a test must never leave a mount behind.
  if (mounted) {
    const r = await runCommand("umount", [mounted]);
    if (r.code !== 0) await runCommand("umount", ["-l", mounted]);
  }
  await tmp?.cleanup();
});

/** Pack files in the repository, and those that some index file names. */
async function packs(repoDir: string): Promise<{ files: Set<string>; indexed: Set<string> }> {
  const repo = await Repository.open(new LocalBackend(repoDir), PW);
  const files = new Set(await repo.listIds("data"));
  const indexed = new Set<string>();
  for (const id of await repo.listIds("index")) {
    const idx = await repo.loadJSON<{ packs: { id: string }[] }>("index", id);
    for (const p of idx.packs) indexed.add(p.id);
  }
  return { files, indexed };
}

test(
  "a backup onto a full filesystem fails clearly and leaves the repository intact",
  { skip: isRoot ? false : "needs root to mount a tmpfs" },
  async (t) => {
    tmp = await tempDir("diskfull");
    const mnt = join(tmp.path, "mnt");
    await fsp.mkdir(mnt);
    const m = await runCommand("mount", ["-t", "tmpfs", "-o", "size=24m", "tmpfs", mnt]);
    if (m.code !== 0) {
      t.skip(`cannot mount a tmpfs here: ${m.stderr.trim()}`);
      return;
    }
    mounted = mnt;

    const repo = join(mnt, "repo");
    const env = {
      SITEKEEP_PASSWORD: PW,
      RESTIC_PASSWORD: PW,
      SITEKEEP_SCRYPT_N: "1024",
      SITEKEEP_CACHE_DIR: join(tmp.path, "cache"),
      // 4 MiB packs: several complete packs fit before the disk is full, so the failed run leaves
      // unreferenced packs behind for prune to remove.
      SITEKEEP_PACK_SIZE: "4",
      HOME: tmp.path,
    };
    const srcA = join(tmp.path, "a");
    await fsp.mkdir(join(srcA, "sub"), { recursive: true });
    for (let i = 0; i < 4; i++) await fsp.writeFile(join(srcA, `f${i}.bin`), randomBytes(768 * 1024));
    await fsp.writeFile(join(srcA, "sub", "g.bin"), randomBytes(1024 * 1024));
    await fsp.writeFile(join(srcA, "sub", "note.txt"), "snapshot A\n");
    const big = join(tmp.path, "big");
    await fsp.mkdir(big);
    for (let i = 0; i < 4; i++) await fsp.writeFile(join(big, `r${i}.bin`), randomBytes(10 * 1024 * 1024));

    ok(await runSitekeep(["-r", repo, "init"], { env }));
    const a = JSON.parse(
      ok(await runSitekeep(["-r", repo, "backup", srcA, "--json"], { env }))
        .stdout.trim()
        .split("\n")
        .pop() as string,
    ) as { snapshot_id: string };
    const snapshotsDir = join(repo, "snapshots");
    assert.deepEqual(await fsp.readdir(snapshotsDir), [a.snapshot_id]);
    const before = await packs(repo);

    const full = await runSitekeep(["-r", repo, "backup", big], { env });
    assert.equal(full.code, 1, describeRun(full));
    const lines = full.stderr.split("\n").filter((l) => l.trim() !== "");
    assert.equal(lines.length, 1, `one line on stderr:\n${full.stderr}`);
    assert.match(lines[0], /no space left/i);
    assert.ok(lines[0].includes(repo), `names the destination: ${lines[0]}`);

    assert.deepEqual(await fsp.readdir(snapshotsDir), [a.snapshot_id], "no new snapshot file");
    assert.deepEqual(await fsp.readdir(join(repo, "locks")), [], "the failed run released its lock");
    const tmpFiles = (await fsp.readdir(join(repo, "data"), { recursive: true })).filter((f) =>
      String(f).includes("-tmp-"),
    );
    assert.deepEqual(tmpFiles, [], "no partial temp files left");

    ok(await runSitekeep(["-r", repo, "check", "--read-data"], { env }));
    ok(await runRestic(["-r", repo, "check", "--read-data"], { env }));

    const target = join(tmp.path, "restore");
    ok(await runSitekeep(["-r", repo, "restore", a.snapshot_id, "--target", target], { env }));
    assert.deepEqual(await compareTrees(srcA, join(target, srcA)), [], "snapshot A restores identical");

    // The failed run left complete packs that no index names; prune removes them.
    const leftover = await packs(repo);
    const unreferenced = [...leftover.files].filter((p) => !leftover.indexed.has(p));
    assert.ok(unreferenced.length > 0, "the failed run left unreferenced packs");
    assert.deepEqual(leftover.indexed, before.indexed, "the failed run indexed nothing");
    ok(await runSitekeep(["-r", repo, "prune"], { env }));
    const pruned = await packs(repo);
    for (const p of unreferenced) assert.ok(!pruned.files.has(p), `prune removed leftover pack ${p}`);
    assert.deepEqual([...pruned.files].sort(), [...pruned.indexed].sort(), "every remaining pack is indexed");
    assert.deepEqual(await fsp.readdir(snapshotsDir), [a.snapshot_id]);
    ok(await runSitekeep(["-r", repo, "check", "--read-data"], { env }));
    ok(await runRestic(["-r", repo, "check", "--read-data"], { env }));
    await fsp.rm(target, { recursive: true });
    ok(await runSitekeep(["-r", repo, "restore", a.snapshot_id, "--target", target], { env }));
    assert.deepEqual(
      await compareTrees(srcA, join(target, srcA)),
      [],
      "snapshot A still restores identical after prune",
    );
  },
);
