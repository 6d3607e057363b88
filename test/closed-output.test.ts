// A command whose output cannot be written: the reader went away (`sitekeep ls latest | head`), or
// the output's disk is full. The first finishes its work quietly (its lock released, prune done);
// the second says so in one line and exits 1. Neither ends in a stack trace.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { promises as fsp, existsSync, readdirSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { describeRun, runCommand, runSitekeep, tempDir, SITEKEEP_BIN, type TempDir, ok } from "./helpers/run.js";

let tmp: TempDir;
let env: Record<string, string>;
let repo: string;

before(async () => {
  tmp = await tempDir("closed-output");
  env = { SITEKEEP_PASSWORD: "pw", SITEKEEP_CACHE_DIR: join(tmp.path, "cache"), HOME: tmp.path, SITEKEEP_SCRYPT_N: "1024" };
  const src = join(tmp.path, "src");
  await fsp.mkdir(src);
  for (let i = 0; i < 200; i++) await fsp.writeFile(join(src, `file-${i}.txt`), `line ${i}\n`);
  repo = join(tmp.path, "repo");
  ok(await runSitekeep(["-r", repo, "init"], { env }));
  for (let i = 0; i < 3; i++) {
    await fsp.writeFile(join(src, "changing.bin"), randomBytes(1000));
    ok(await runSitekeep(["-r", repo, "backup", src], { env }));
  }
});

after(async () => tmp.cleanup());

/**
 * Runs sitekeep with its stdout piped to `true`, which exits at once: every line it writes
 * (after ~0.1 s of opening the repository) meets a closed pipe. Its own exit code is on stderr's
 * last line.
 */
async function withReaderGone(args: string[]): Promise<{ code: number; stderr: string }> {
  const r = await runCommand("bash", ["-c", 'node "$0" "$@" | true; echo "exit ${PIPESTATUS[0]}" >&2', SITEKEEP_BIN, ...args], { env });
  const lines = r.stderr.trim().split("\n");
  const m = /^exit (\d+)$/.exec(lines.pop() ?? "");
  assert.ok(m, describeRun(r));
  return { code: Number(m[1]), stderr: lines.join("\n") };
}

test("ls to a reader that has gone ends quietly with exit code 0", async () => {
  const r = await withReaderGone(["-r", repo, "ls", "latest"]);
  assert.equal(r.stderr, "", "nothing on stderr (no EPIPE, no stack trace)");
  assert.equal(r.code, 0);
});

test("forget --prune whose reader has gone finishes its work and releases its lock", async () => {
  const r = await withReaderGone(["-r", repo, "forget", "--keep-last", "1", "--prune"]);
  assert.equal(r.stderr, "", "nothing on stderr (no EPIPE, no stack trace)");
  assert.equal(r.code, 0);
  const snaps = JSON.parse(ok(await runSitekeep(["-r", repo, "snapshots", "--json"], { env })).stdout) as unknown[];
  assert.equal(snaps.length, 1, "the two older snapshots were forgotten");
  const locks = join(repo, "locks");
  assert.deepEqual(existsSync(locks) ? readdirSync(locks) : [], [], "no lock left behind");
  ok(await runSitekeep(["-r", repo, "check"], { env }));
});

test("output to a full disk is one clear error and exit code 1", { skip: !existsSync("/dev/full") }, async () => {
  const r = await runCommand("bash", ["-c", 'node "$0" "$@" > /dev/full', SITEKEEP_BIN, "-r", repo, "ls", "latest"], { env });
  assert.equal(r.code, 1, describeRun(r));
  assert.match(r.stderr, /^sitekeep: could not write the output: .*ENOSPC.*\(make room where the output goes/);
  assert.equal(r.stderr.trim().split("\n").length, 1, "one line");
});
