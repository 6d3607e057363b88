// Retention from the command line: forget applies restic's policy, never removes the newest
// snapshot of a group, --prune frees the space, and restic still accepts the repository.
import { test } from "node:test";
import assert from "node:assert/strict";
import { promises as fsp } from "node:fs";
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { runRestic, runSitekeep, tempDir, ok } from "./helpers/run.js";

test("forget --keep-daily keeps one per day, --prune frees space, restic agrees; append-only refuses", async () => {
  const tmp = await tempDir("forget");
  try {
    process.env.TZ = "UTC";
    const env = { SITEKEEP_PASSWORD: "pw", RESTIC_PASSWORD: "pw", SITEKEEP_SCRYPT_N: "1024", HOME: tmp.path, SITEKEEP_CACHE_DIR: join(tmp.path, "c"), TZ: "UTC" };
    const repo = join(tmp.path, "repo");
    const src = join(tmp.path, "src");
    await fsp.mkdir(src);
    ok(await runSitekeep(["-r", repo, "init"], { env }));
    // Two snapshots a day for three days, each with 200 KiB of new data.
    const times = ["2026-11-01 08:00:00", "2026-11-01 20:00:00", "2026-11-02 08:00:00", "2026-11-02 20:00:00", "2026-11-03 08:00:00", "2026-11-03 20:00:00"];
    for (const [i, t] of times.entries()) {
      await fsp.writeFile(join(src, `f${i}`), randomBytes(200 * 1024));
      ok(await runSitekeep(["-r", repo, "backup", src, "--time", t], { env }));
    }
    const dry = JSON.parse(ok(await runSitekeep(["-r", repo, "forget", "--keep-daily", "2", "--dry-run", "--json"], { env })).stdout);
    assert.equal(dry.length, 1);
    assert.equal(dry[0].keep.length, 2);
    assert.equal(dry[0].remove.length, 4);
    assert.deepEqual(dry[0].keep.map((s: { time: string }) => s.time), ["2026-11-03T20:00:00Z", "2026-11-02T20:00:00Z"]);
    assert.equal(JSON.parse(ok(await runSitekeep(["-r", repo, "snapshots", "--json"], { env })).stdout).length, 6, "a dry run removes nothing");

    const refused = await runSitekeep(["-r", repo, "--append-only", "forget", "--keep-last", "1"], { env });
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /append-only/);

    const newest = JSON.parse(ok(await runSitekeep(["-r", repo, "snapshots", "--json"], { env })).stdout).pop();
    const prot = await runSitekeep(["-r", repo, "forget", newest.id.slice(0, 8)], { env });
    assert.equal(prot.code, 1);
    assert.match(prot.stderr, /newest snapshot of its group/);

    const keepNone = await runSitekeep(["-r", repo, "forget", "--keep-tag", "nosuchtag"], { env });
    assert.equal(keepNone.code, 0, "the newest snapshot is protected, so the group is never emptied");

    ok(await runSitekeep(["-r", repo, "forget", "--keep-daily", "2", "--prune", "--max-unused", "0%"], { env }));
    const left = JSON.parse(ok(await runSitekeep(["-r", repo, "snapshots", "--json"], { env })).stdout);
    assert.equal(left.length, 1, "keep-tag run removed all but the protected newest; keep-daily then had one left");
    ok(await runRestic(["-r", repo, "check", "--read-data"], { env }));
    ok(await runSitekeep(["-r", repo, "check", "--read-data"], { env }));
    const target = join(tmp.path, "out");
    ok(await runSitekeep(["-r", repo, "restore", "latest", "--target", target], { env }));
    for (let i = 0; i < 6; i++) assert.deepEqual(await fsp.readFile(join(target, src, `f${i}`)), await fsp.readFile(join(src, `f${i}`)));
  } finally {
    await tmp.cleanup();
  }
});
