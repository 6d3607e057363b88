// Files the backup cannot read: each is named in a warning, the snapshot is still made, exit 3.
// Needs root to run the backup as an unprivileged user (root can read everything).
import { test } from "node:test";
import assert from "node:assert/strict";
import { promises as fsp } from "node:fs";
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { describeRun, runCommand, tempDir, SITEKEEP_BIN } from "./helpers/run.js";

const isRoot = process.getuid?.() === 0;
const hasRunuser = spawnSync("sh", ["-c", "command -v runuser"]).status === 0;

test("unreadable files and folders: warnings name each, the snapshot is made, exit code 3", { skip: !isRoot || !hasRunuser ? "needs root and runuser" : false }, async () => {
  const tmp = await tempDir("unreadable");
  try {
    await fsp.chmod(tmp.path, 0o755);
    const src = join(tmp.path, "src");
    await fsp.mkdir(join(src, "closed"), { recursive: true });
    await fsp.writeFile(join(src, "open.txt"), "readable\n", { mode: 0o644 });
    await fsp.writeFile(join(src, "secret.txt"), "root only\n", { mode: 0o600 });
    await fsp.writeFile(join(src, "closed", "inner.txt"), "hidden\n", { mode: 0o644 });
    await fsp.chmod(join(src, "closed"), 0o700);
    const work = join(tmp.path, "work");
    await fsp.mkdir(work, { mode: 0o777 });
    await fsp.chmod(work, 0o777);
    const env = { SITEKEEP_PASSWORD: "pw", SITEKEEP_SCRYPT_N: "1024", HOME: work, SITEKEEP_CACHE_DIR: join(work, "cache") };
    const asNobody = (args: string[]) =>
      runCommand("runuser", ["-u", "nobody", "--", process.execPath, SITEKEEP_BIN, ...args], { env, cwd: work });
    const repo = join(work, "repo");
    const init = await asNobody(["-r", repo, "init"]);
    assert.equal(init.code, 0, describeRun(init));
    const r = await asNobody(["-r", repo, "backup", src, "--json"]);
    assert.equal(r.code, 3, describeRun(r));
    assert.match(r.stderr + r.stdout, /secret\.txt/);
    assert.match(r.stderr + r.stdout, /closed/);
    const summary = JSON.parse(r.stdout.trim().split("\n").pop() as string);
    assert.match(summary.snapshot_id, /^[0-9a-f]{64}$/);
    const ls = await asNobody(["-r", repo, "ls", "latest"]);
    assert.match(ls.stdout, /open\.txt/);
    assert.doesNotMatch(ls.stdout, /secret\.txt/);
  } finally {
    await tmp.cleanup();
  }
});
