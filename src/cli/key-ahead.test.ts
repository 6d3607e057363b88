import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { LocalBackend } from "../backend/local.js";
import { openWithPassword } from "../repo/keyfile.js";
import { Repository } from "../repo/repository.js";
import { SitekeepError } from "../errors.js";
import { deriveKeyAhead, takeKeyAhead } from "./key-ahead.js";

const KDF = { N: 1024, r: 8, p: 1 };

/** Runs fn with these password variables set (undefined: unset), restoring them after. */
async function withEnv(vars: Record<string, string | undefined>, fn: () => Promise<void>): Promise<void> {
  const before = Object.fromEntries(Object.keys(vars).map((k) => [k, process.env[k]]));
  const set = (v: Record<string, string | undefined>): void => {
    for (const [k, x] of Object.entries(v)) {
      if (x === undefined) delete process.env[k];
      else process.env[k] = x;
    }
  };
  set(vars);
  try {
    await fn();
  } finally {
    set(before);
  }
}

const QUIET = { SITEKEEP_PASSWORD: "pw", SITEKEEP_PASSWORD_FILE: undefined, SITEKEEP_PASSWORD_COMMAND: undefined, SITEKEEP_REPOSITORY: undefined };

test("the key unlocked ahead is the one Repository.open unlocks, handed over once, for the same repository and password only", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "sitekeep-key-ahead-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const repo = join(dir, "repo");
  await Repository.init(new LocalBackend(repo), "pw", { kdf: KDF });
  const expected = await openWithPassword(new LocalBackend(repo), "pw");

  await withEnv(QUIET, async () => {
    deriveKeyAhead({ repo });
    const ahead = await takeKeyAhead(repo, "pw");
    assert.ok(ahead, "started from the environment's password");
    const r = await Repository.open(new LocalBackend(repo), "pw", { key: ahead.key });
    assert.equal(r.keyId, expected.keyId);
    assert.deepEqual(r.key, expected.master);
    assert.equal(await takeKeyAhead(repo, "pw"), undefined, "handed over once");

    // Open takes the key it is given instead of deriving one (which this password could not).
    deriveKeyAhead({ repo });
    const given = await takeKeyAhead(repo, "pw");
    assert.equal((await Repository.open(new LocalBackend(repo), "not the password", { key: given?.key })).keyId, expected.keyId);

    deriveKeyAhead({ repo });
    assert.equal(await takeKeyAhead(repo, "other"), undefined, "another password");
    deriveKeyAhead({ repo });
    assert.equal(await takeKeyAhead(join(dir, "elsewhere"), "pw"), undefined, "another repository");
  });

  // From a password file, as the command reads it (its first line).
  const file = join(dir, "pw.txt");
  writeFileSync(file, "pw\nignored\n");
  await withEnv({ ...QUIET, SITEKEEP_PASSWORD: undefined }, async () => {
    deriveKeyAhead({ repo, passwordFile: file });
    const ahead = await takeKeyAhead(repo, "pw");
    assert.ok(ahead, "started from the file");
    assert.equal((await ahead.key).keyId, expected.keyId);
  });

  // A password command or a prompt is left to the command: nothing runs ahead of it.
  await withEnv({ ...QUIET, SITEKEEP_PASSWORD_COMMAND: `echo pw > ${join(dir, "ran")}; echo pw` }, async () => {
    deriveKeyAhead({ repo });
    assert.equal(await takeKeyAhead(repo, "pw"), undefined);
  });
  await withEnv({ ...QUIET, SITEKEEP_PASSWORD: undefined }, async () => {
    deriveKeyAhead({ repo });
    assert.equal(await takeKeyAhead(repo, "pw"), undefined);
  });
  assert.throws(() => rmSync(join(dir, "ran")), { code: "ENOENT" }, "the password command did not run");
});

test("what fails ahead fails where the repository is opened, in its usual order", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "sitekeep-key-ahead-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const repo = join(dir, "repo");
  await Repository.init(new LocalBackend(repo), "pw", { kdf: KDF });

  await withEnv({ ...QUIET, SITEKEEP_PASSWORD: "wrong" }, async () => {
    deriveKeyAhead({ repo });
    const ahead = await takeKeyAhead(repo, "wrong");
    assert.ok(ahead);
    await assert.rejects(Repository.open(new LocalBackend(repo), "wrong", { key: ahead.key }), (err: unknown) => err instanceof SitekeepError && err.code === "repo.password");
  });

  // No repository there: the open says so (not what listing its keys ahead ran into).
  const missing = join(dir, "missing");
  await withEnv(QUIET, async () => {
    deriveKeyAhead({ repo: missing });
    const ahead = await takeKeyAhead(missing, "pw");
    assert.ok(ahead);
    await assert.rejects(Repository.open(new LocalBackend(missing), "pw", { key: ahead.key }), (err: unknown) => err instanceof SitekeepError && err.code === "repo.missing");
  });

  // Never taken (the command failed before it opened the repository): no unhandled rejection.
  await withEnv({ ...QUIET, SITEKEEP_PASSWORD: "wrong" }, async () => {
    deriveKeyAhead({ repo });
    await new Promise((resolve) => setTimeout(resolve, 200));
  });
});
