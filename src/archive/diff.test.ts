import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync, mkdirSync, unlinkSync, chmodSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { LocalBackend } from "../backend/local.js";
import { Repository } from "../repo/repository.js";
import { Archiver } from "./archiver.js";
import { diffSnapshots } from "./diff.js";

test("diffSnapshots names added, removed, changed and metadata-only entries", async () => {
  const tmp = mkdtempSync(join(tmpdir(), "sitekeep-diff-"));
  try {
    const repo = await Repository.init(new LocalBackend(join(tmp, "repo")), "pw", { kdf: { N: 1024, r: 8, p: 1 } });
    await repo.loadIndex();
    const src = join(tmp, "src");
    mkdirSync(join(src, "same"), { recursive: true });
    mkdirSync(join(src, "sub"));
    for (let i = 0; i < 20; i++) writeFileSync(join(src, "same", `f${i}`), `unchanged ${i}\n`);
    writeFileSync(join(src, "sub", "edit.txt"), "before\n");
    writeFileSync(join(src, "sub", "gone.txt"), "bye\n");
    writeFileSync(join(src, "mode.txt"), "m\n");
    const a = await new Archiver(repo, { paths: [src] }).run();
    writeFileSync(join(src, "sub", "edit.txt"), "after, longer\n");
    unlinkSync(join(src, "sub", "gone.txt"));
    writeFileSync(join(src, "sub", "new.txt"), "hi\n");
    chmodSync(join(src, "mode.txt"), 0o600);
    const b = await new Archiver(repo, { paths: [src] }).run();
    const ta = (await repo.loadSnapshot(a.snapshot_id)).tree;
    const tb = (await repo.loadSnapshot(b.snapshot_id)).tree;
    const d = await diffSnapshots(repo, ta, tb);
    const got = Object.fromEntries(d.entries.map((e) => [e.path.slice(src.length), e.change]));
    assert.deepEqual(got, { "/mode.txt": "metadata", "/sub/edit.txt": "changed", "/sub/gone.txt": "removed", "/sub/new.txt": "added" });
    assert.deepEqual(d.entries.find((e) => e.path.endsWith("edit.txt"))?.sizes, [7, 14]);
    assert.equal(d.truncated, false);
    assert.deepEqual((await diffSnapshots(repo, ta, ta)).entries, []);
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
});
