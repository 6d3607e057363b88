// The README's first command: `sitekeep demo` runs end to end and leaves a repository restic accepts.
import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { readFileSync } from "node:fs";
import { describeRun, runRestic, runSitekeep, tempDir } from "./helpers/run.js";

test("sitekeep demo runs the site task, restores identical and verifies; restic reads the result", async () => {
  const tmp = await tempDir("demo");
  try {
    const dir = join(tmp.path, "demo");
    const r = await runSitekeep(["demo", dir], { env: { HOME: tmp.path, SITEKEEP_CACHE_DIR: join(tmp.path, "cache") } });
    assert.equal(r.code, 0, describeRun(r));
    assert.match(r.stdout, /identical to the site/);
    assert.match(r.stdout, /^ {3}5055 I Backup of site DEMO started/m);
    assert.match(r.stdout, /^ {3}5056 I Snapshot of site DEMO cut; 1 writer thawed/m);
    assert.match(r.stdout, /^ {3}5040 I After-backup script/m);
    assert.match(r.stdout, /^ {3}5035 I Backup of site DEMO completed with no errors/m);
    assert.match(r.stdout, /check --read-data: .* no errors/);
    assert.match(readFileSync(join(dir, "backup", "sitekeep.log"), "utf8"), /STATMSG: ID=5035 SEV=I[^\n]*\n[^\n]*Backup completed/);
    assert.equal(readFileSync(join(dir, "after-backup.out"), "utf8").trim().split("\n").length, 2, "the after-backup script ran after each backup");
    // The status the demo points at agrees.
    const st = await runSitekeep(["site", "status", "--json", "--config", join(dir, "sitekeep.yaml")], { env: { HOME: tmp.path } });
    assert.equal(st.code, 0, describeRun(st));
    const status = JSON.parse(st.stdout) as { healthy: boolean; runs: { status: string }[] };
    assert.equal(status.healthy, true);
    assert.deepEqual(status.runs.map((x) => x.status), ["succeeded", "succeeded"]);
    const password = readFileSync(join(dir, "password"), "utf8").trim();
    const env = { RESTIC_PASSWORD: password, HOME: tmp.path };
    const snaps = await runRestic(["-r", join(dir, "backup"), "snapshots", "--json"], { env });
    assert.equal(snaps.code, 0, describeRun(snaps));
    assert.equal(JSON.parse(snaps.stdout).length, 2);
    const check = await runRestic(["-r", join(dir, "backup"), "check", "--read-data"], { env });
    assert.equal(check.code, 0, describeRun(check));
    // Running it again over its own folder works; over a foreign non-empty folder it refuses.
    assert.equal((await runSitekeep(["demo", dir], { env: { HOME: tmp.path } })).code, 0);
    const refused = await runSitekeep(["demo", tmp.path], { env: { HOME: tmp.path } });
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /is not an earlier demo folder/);
  } finally {
    await tmp.cleanup();
  }
});
