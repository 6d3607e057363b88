// The engine commands as a user meets them: incremental runs, excludes, streamed command output,
// several passwords, and a clear message with restic's exit code for every bad input.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { promises as fsp, readdirSync } from "node:fs";
import { createHash, randomBytes } from "node:crypto";
import { join } from "node:path";
import { describeRun, runRestic, runSitekeep, tempDir, type RunResult, type TempDir, ok } from "./helpers/run.js";
import { LocalBackend } from "../src/backend/local.js";
import { Repository } from "../src/repo/repository.js";
import { seal } from "../src/repo/crypto.js";
import { acquireLock } from "../src/repo/lock.js";

let tmp: TempDir;
let env: Record<string, string>;
let src: string;

before(async () => {
  tmp = await tempDir("cli");
  env = { SITEKEEP_PASSWORD: "pw-one", RESTIC_PASSWORD: "pw-one", SITEKEEP_CACHE_DIR: join(tmp.path, "cache"), HOME: tmp.path, SITEKEEP_SCRYPT_N: "1024" };
  src = join(tmp.path, "src");
  await fsp.mkdir(join(src, "sub", "logs"), { recursive: true });
  for (let i = 0; i < 20; i++) await fsp.writeFile(join(src, `f${i}.dat`), randomBytes(50_000 + i * 1000));
  await fsp.writeFile(join(src, "big.bin"), randomBytes(3 * 1024 * 1024));
  await fsp.writeFile(join(src, "junk.tmp"), "temporary");
  await fsp.writeFile(join(src, "sub", "logs", "app.log"), "log line\n");
  await fsp.writeFile(join(src, "sub", "keep.txt"), "keep me\n");
});

after(async () => tmp.cleanup());

function lastJSON(r: RunResult): Record<string, unknown> {
  return JSON.parse(r.stdout.trim().split("\n").pop() as string);
}

async function newRepo(name: string): Promise<string> {
  const repo = join(tmp.path, name);
  ok(await runSitekeep(["-r", repo, "init"], { env }));
  return repo;
}

test("a second run reads no unchanged file and a changed file is detected", async () => {
  const repo = await newRepo("repo-incr");
  const first = lastJSON(ok(await runSitekeep(["-r", repo, "backup", src, "--json"], { env })));
  assert.equal(first.files_new, 24);
  const second = lastJSON(ok(await runSitekeep(["-r", repo, "backup", src, "--json"], { env })));
  assert.equal(second.files_unmodified, 24);
  assert.equal(second.files_new, 0);
  assert.equal(second.parent, first.snapshot_id);
  // Only the new tree objects are added on an unchanged run.
  assert.ok((second.data_added as number) < 10_000, `unchanged run added ${second.data_added} bytes`);
  await fsp.appendFile(join(src, "f3.dat"), "more");
  const third = lastJSON(ok(await runSitekeep(["-r", repo, "backup", src, "--json"], { env })));
  assert.equal(third.files_changed, 1);
  assert.equal(third.files_unmodified, 23);
  const forced = lastJSON(ok(await runSitekeep(["-r", repo, "backup", src, "--json", "--force"], { env })));
  assert.equal(forced.files_new, 24, "--force reads everything again");
  assert.equal(forced.data_added as number < 10_000, true, "but stores nothing new");
});

test("--exclude and --exclude-file leave matching paths out", async () => {
  const repo = await newRepo("repo-excl");
  const exFile = join(tmp.path, "excludes.txt");
  await fsp.writeFile(exFile, "# comment\nlogs\n");
  ok(await runSitekeep(["-r", repo, "backup", src, "--exclude", "*.tmp", "--exclude-file", exFile], { env }));
  const ls = ok(await runSitekeep(["-r", repo, "ls", "latest"], { env })).stdout;
  assert.match(ls, /\/sub\/keep\.txt$/m);
  assert.doesNotMatch(ls, /junk\.tmp/);
  assert.doesNotMatch(ls, /logs/);
});

test("--stdin-from-command streams a command's output into the snapshot; a failing command makes no snapshot", async () => {
  const repo = await newRepo("repo-stdin");
  const payload = join(tmp.path, "payload.bin");
  await fsp.writeFile(payload, randomBytes(5 * 1024 * 1024));
  ok(await runSitekeep(["-r", repo, "backup", "--stdin-from-command", `cat '${payload}'`, "--stdin-filename", "dump.sql"], { env }));
  const out = join(tmp.path, "stdin-restore");
  ok(await runSitekeep(["-r", repo, "restore", "latest", "--target", out], { env }));
  const want = createHash("sha256").update(await fsp.readFile(payload)).digest("hex");
  const got = createHash("sha256").update(await fsp.readFile(join(out, "dump.sql"))).digest("hex");
  assert.equal(got, want);
  const bad = await runSitekeep(["-r", repo, "backup", "--stdin-from-command", "echo partial; exit 3", "--stdin-filename", "x"], { env });
  assert.equal(bad.code, 1, describeRun(bad));
  assert.match(bad.stderr, /exited with status 3/);
  const snaps = JSON.parse(ok(await runSitekeep(["-r", repo, "snapshots", "--json"], { env })).stdout);
  assert.equal(snaps.length, 1, "the failed command left no snapshot");
  ok(await runRestic(["-r", repo, "check"], { env }));
});

test("several passwords open one repository; key passwd replaces the current one", async () => {
  const repo = await newRepo("repo-keys");
  ok(await runSitekeep(["-r", repo, "key", "add"], { env: { ...env, SITEKEEP_NEW_PASSWORD: "pw-two" } }));
  const keys = JSON.parse(ok(await runSitekeep(["-r", repo, "key", "list", "--json"], { env })).stdout);
  assert.equal(keys.length, 2);
  ok(await runSitekeep(["-r", repo, "snapshots"], { env: { ...env, SITEKEEP_PASSWORD: "pw-two" } }));
  ok(await runRestic(["-r", repo, "snapshots"], { env: { ...env, RESTIC_PASSWORD: "pw-two" } }));
  ok(await runSitekeep(["-r", repo, "key", "passwd"], { env: { ...env, SITEKEEP_NEW_PASSWORD: "pw-three" } }));
  const wrong = await runSitekeep(["-r", repo, "snapshots"], { env });
  assert.equal(wrong.code, 12, "the replaced password no longer opens it");
  ok(await runSitekeep(["-r", repo, "snapshots"], { env: { ...env, SITEKEEP_PASSWORD: "pw-three" } }));
  const self = keys.find((k: { current: boolean }) => !k.current);
  const refused = await runSitekeep(["-r", repo, "--append-only", "key", "remove", self.id.slice(0, 8)], { env: { ...env, SITEKEEP_PASSWORD: "pw-two" } });
  assert.equal(refused.code, 1);
  assert.match(refused.stderr, /append-only/);
});

test("bad input: each gets a clear message and restic's exit code", async () => {
  const repo = await newRepo("repo-bad");
  const wrong = await runSitekeep(["-r", repo, "snapshots"], { env: { ...env, SITEKEEP_PASSWORD: "nope" } });
  assert.equal(wrong.code, 12, describeRun(wrong));
  assert.match(wrong.stderr, /wrong password/);

  const missing = await runSitekeep(["-r", join(tmp.path, "does-not-exist"), "snapshots"], { env });
  assert.equal(missing.code, 10, describeRun(missing));
  assert.match(missing.stderr, /no repository at/);

  const notRepo = await runSitekeep(["-r", src, "snapshots"], { env });
  assert.equal(notRepo.code, 1, describeRun(notRepo));
  assert.match(notRepo.stderr, /is not a repository/);

  const initTwice = await runSitekeep(["-r", repo, "init"], { env });
  assert.equal(initTwice.code, 1);
  assert.match(initTwice.stderr, /already exists/);

  const unknownFlag = await runSitekeep(["-r", repo, "backup", "--no-such-flag", src], { env });
  assert.equal(unknownFlag.code, 1);
  assert.match(unknownFlag.stderr, /unknown option '--no-such-flag'/);

  const noPw = await runSitekeep(["-r", repo, "snapshots"], { env: { ...env, SITEKEEP_PASSWORD: undefined as unknown as string } });
  assert.equal(noPw.code, 1);
  assert.match(noPw.stderr, /no password given/);

  const noSource = await runSitekeep(["-r", repo, "backup", join(tmp.path, "nothing-here")], { env });
  assert.equal(noSource.code, 1);
  assert.match(noSource.stderr, /no such file or directory/);

  const json = await runSitekeep(["-r", repo, "snapshots", "--json"], { env: { ...env, SITEKEEP_PASSWORD: "nope" } });
  assert.equal(JSON.parse(json.stderr.trim()).code, "repo.password");

  // A newer format version is refused, saying so.
  const backend = new LocalBackend(repo);
  const r = await Repository.open(backend, "pw-one");
  await fsp.chmod(join(repo, "config"), 0o600);
  await fsp.unlink(join(repo, "config"));
  await backend.save({ type: "config", name: "config" }, seal(r.key, Buffer.from(JSON.stringify({ ...r.config, version: 3 }))));
  const newer = await runSitekeep(["-r", repo, "snapshots"], { env });
  assert.equal(newer.code, 1, describeRun(newer));
  assert.match(newer.stderr, /format version 3/);
});

test("a locked repository: exit 11 naming the holder; nothing is written", async () => {
  const repo = await newRepo("repo-locked");
  const r = await Repository.open(new LocalBackend(repo), "pw-one");
  const lock = await acquireLock(r, { exclusive: true, checkDelayMs: 0 });
  try {
    const res = await runSitekeep(["-r", repo, "backup", src], { env });
    assert.equal(res.code, 11, describeRun(res));
    assert.match(res.stderr, new RegExp(`locked exclusively by PID ${process.pid}`));
    assert.equal(readdirSync(join(repo, "snapshots")).length, 0);
  } finally {
    await lock.release();
  }
});

test("restore refuses a target it cannot write, with the reason", async () => {
  const repo = await newRepo("repo-target");
  ok(await runSitekeep(["-r", repo, "backup", join(src, "sub")], { env }));
  const blocker = join(tmp.path, "a-file");
  await fsp.writeFile(blocker, "x");
  const res = await runSitekeep(["-r", repo, "restore", "latest", "--target", join(blocker, "inside")], { env });
  assert.equal(res.code, 1, describeRun(res));
  assert.match(res.stderr, /cannot restore into/);
  const dry = ok(await runSitekeep(["-r", repo, "restore", "latest", "--target", join(tmp.path, "dry"), "--dry-run"], { env }));
  assert.match(dry.stdout, /would restore .*keep\.txt/);
  await assert.rejects(fsp.stat(join(tmp.path, "dry")), "a dry run writes nothing");
});

test("restore --include restores only the chosen parts", async () => {
  const repo = await newRepo("repo-include");
  ok(await runSitekeep(["-r", repo, "backup", src], { env }));
  const out = join(tmp.path, "inc");
  ok(await runSitekeep(["-r", repo, "restore", "latest", "--target", out, "--include", "keep.txt"], { env }));
  assert.equal(await fsp.readFile(join(out, src, "sub", "keep.txt"), "utf8"), "keep me\n");
  await assert.rejects(fsp.stat(join(out, src, "f1.dat")));
  await assert.rejects(fsp.stat(join(out, src, "sub", "logs")));
});
