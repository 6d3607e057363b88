// The README's first command: `sitekeep demo` runs end to end and leaves a repository restic accepts.
import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { readFileSync } from "node:fs";
import { describeRun, runRestic, runSitekeep, tempDir } from "./helpers/run.js";

test("sitekeep demo backs up, restores identical and verifies; restic reads the result", async () => {
  const tmp = await tempDir("demo");
  try {
    const dir = join(tmp.path, "demo");
    const r = await runSitekeep(["demo", dir], { env: { HOME: tmp.path, SITEKEEP_CACHE_DIR: join(tmp.path, "cache") } });
    assert.equal(r.code, 0, describeRun(r));
    assert.match(r.stdout, /identical to the site/);
    assert.match(r.stdout, /no errors/);
    const password = readFileSync(join(dir, "password"), "utf8").trim();
    const env = { RESTIC_PASSWORD: password, HOME: tmp.path };
    const snaps = await runRestic(["-r", join(dir, "repository"), "snapshots", "--json"], { env });
    assert.equal(snaps.code, 0, describeRun(snaps));
    assert.equal(JSON.parse(snaps.stdout).length, 2);
    const check = await runRestic(["-r", join(dir, "repository"), "check", "--read-data"], { env });
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
