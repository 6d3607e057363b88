import { test } from "node:test";
import assert from "node:assert/strict";
import { promises as fsp, mkdtempSync, readdirSync, statSync } from "node:fs";
import { randomBytes, createHash } from "node:crypto";
import { spawnSync } from "node:child_process";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { LocalBackend } from "../backend/local.js";
import { Repository } from "../repo/repository.js";
import { Archiver } from "./archiver.js";
import { Restorer } from "./restorer.js";
import { checkRepository } from "./checker.js";
import { prune, parseSize } from "./pruner.js";

const kdf = { N: 1024, r: 8, p: 1 };

async function open(dir: string): Promise<Repository> {
  const repo = await Repository.open(new LocalBackend(dir), "pw", { packSize: 256 * 1024 });
  await repo.loadIndex();
  return repo;
}

function du(dir: string): number {
  let n = 0;
  for (const sub of readdirSync(join(dir, "data"))) for (const f of readdirSync(join(dir, "data", sub))) n += Number(spawnSync("stat", ["-c", "%s", join(dir, "data", sub, f)]).stdout.toString());
  return n;
}

test("prune removes what no snapshot needs, repacks partly used packs, and leaves a repository both tools accept", async () => {
  const tmp = mkdtempSync(join(tmpdir(), "sitekeep-prune-"));
  try {
    const src = join(tmp, "src");
    await fsp.mkdir(src);
    for (let i = 0; i < 30; i++) await fsp.writeFile(join(src, `keep${i}`), randomBytes(40_000));
    for (let i = 0; i < 30; i++) await fsp.writeFile(join(src, `drop${i}`), randomBytes(40_000));
    const dir = join(tmp, "repo");
    await Repository.init(new LocalBackend(dir), "pw", { kdf, packSize: 256 * 1024 });
    let repo = await open(dir);
    const first = await new Archiver(repo, { paths: [src] }).run();
    for (let i = 0; i < 30; i++) await fsp.unlink(join(src, `drop${i}`));
    repo = await open(dir);
    const second = await new Archiver(repo, { paths: [src] }).run();
    const before = du(dir);
    // forget the first snapshot: the drop* files are needed by nothing now
    await fsp.unlink(join(dir, "snapshots", first.snapshot_id));

    repo = await open(dir);
    const dry = await prune(repo, { dryRun: true });
    assert.equal(dry.dry_run, true);
    assert.equal(du(dir), before, "a dry run deletes nothing");

    const stats = await prune(await open(dir), { maxUnused: "0%" });
    assert.ok(stats.packs_removed + stats.packs_repacked > 0, JSON.stringify(stats));
    const after = du(dir);
    assert.ok(after < before * 0.65, `repository shrank from ${before} to ${after}`);

    const check = await checkRepository(await open(dir), { readData: true });
    assert.deepEqual(check.errors, []);
    assert.deepEqual(check.notices, []);
    const restic = spawnSync("restic", ["-r", dir, "check", "--read-data"], { env: { ...process.env, RESTIC_PASSWORD: "pw", HOME: tmp } });
    assert.equal(restic.status, 0, restic.stdout.toString() + restic.stderr.toString());

    repo = await open(dir);
    const target = join(tmp, "restore");
    const snap = await repo.loadSnapshot(second.snapshot_id);
    const r = await new Restorer(repo, { target }).restore(snap.tree);
    assert.deepEqual(r.errors, []);
    for (let i = 0; i < 30; i++) {
      const a = createHash("sha256").update(await fsp.readFile(join(src, `keep${i}`))).digest("hex");
      const b = createHash("sha256").update(await fsp.readFile(join(target, src, `keep${i}`))).digest("hex");
      assert.equal(b, a);
    }
    // Nothing left to do: a second prune changes nothing but the staged pack of a killed backup.
    const staged = await new LocalBackend(dir).stage("data");
    // More than a 1 MiB stage: through the page cache all of it is in the file at once, past it
    // (SITEKEEP_DIRECT_IO=1) its full stages.
    await staged.write(randomBytes(1_500_000));
    const stagedNames = (): string[] => readdirSync(join(dir, "data"), { recursive: true }).map(String).filter((f) => f.includes("-tmp-"));
    assert.equal(stagedNames().length, 1);
    const stagedSize = statSync(join(dir, "data", stagedNames()[0])).size;
    assert.ok(stagedSize >= 1024 * 1024, `${stagedSize} bytes on disk`);
    const again = await prune(await open(dir), { maxUnused: "0%" });
    assert.equal(again.packs_removed + again.packs_repacked + again.packs_unreferenced_removed, 0);
    assert.deepEqual(stagedNames(), [], "the staged file is removed");
    assert.equal(again.bytes_removed, stagedSize);
    await staged.abort(); // closes the writer's handle; its file is gone already

    const ro = await Repository.open(new LocalBackend(dir), "pw", { appendOnly: true });
    await assert.rejects(prune(ro), /append-only/);
  } finally {
    await fsp.rm(tmp, { recursive: true, force: true });
  }
});

test("sizes for --max-unused", () => {
  assert.equal(parseSize("5%", 1000), 50);
  assert.equal(parseSize("2M", 0), 2 * 1024 * 1024);
  assert.equal(parseSize("unlimited", 0), Infinity);
  assert.throws(() => parseSize("lots", 0), /invalid size/);
});
