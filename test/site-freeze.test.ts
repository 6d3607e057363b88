// `site freeze --exec` (other tools use Sitekeep's writers) and the watchdog's deadline: a task that
// hangs while frozen (here: stopped with SIGSTOP) still gets its writers thawed by the deadline.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { SITEKEEP_BIN, describeRun, runSitekeep, tempDir } from "./helpers/run.js";

const lines = (f: string): string[] => (existsSync(f) ? readFileSync(f, "utf8").trim().split("\n").filter(Boolean) : []);

function setup(root: string, writers: string, extraBackup = ""): { config: string; events: string; env: Record<string, string> } {
  const site = join(root, "site");
  mkdirSync(site, { recursive: true });
  writeFileSync(join(site, "a.txt"), "a\n");
  mkdirSync(join(root, "dest"));
  const events = join(root, "events");
  const config = join(root, "sitekeep.yaml");
  writeFileSync(
    config,
    `site: FZ
backup:
  destination: ${join(root, "dest")}
${extraBackup}files:
  - { path: ${site} }
writers:
${writers.replaceAll("EVENTS", events)}
stateDir: ${join(root, "state")}
`,
  );
  return { config, events, env: { SITEKEEP_PASSWORD: "pw", SITEKEEP_SCRYPT_N: "1024", HOME: root } };
}

test("site freeze --exec freezes in order, runs the command with everything frozen, thaws in reverse, exits with its code", async () => {
  const tmp = await tempDir("site-freeze-exec");
  try {
    const s = setup(
      tmp.path,
      `  - { name: a, freeze: "echo freeze-a >> EVENTS", thaw: "echo thaw-a >> EVENTS" }
  - { name: b, freeze: "echo freeze-b >> EVENTS", thaw: "echo thaw-b >> EVENTS" }`,
    );
    const seen = join(tmp.path, "seen-by-command");
    const r = await runSitekeep(["site", "freeze", "--config", s.config, "--exec", `cp ${s.events} ${seen}; echo snapshot-taken >> ${s.events}; exit 7`], { env: s.env });
    assert.equal(r.code, 7, describeRun(r));
    assert.deepEqual(lines(seen), ["freeze-a", "freeze-b"], "the command ran with both writers frozen");
    assert.deepEqual(lines(s.events), ["freeze-a", "freeze-b", "snapshot-taken", "thaw-b", "thaw-a"]);

    // A writer that cannot freeze: the command never runs, what was frozen is thawed, exit 1.
    writeFileSync(s.events, "");
    const bad = setup(
      join(tmp.path, "bad"),
      `  - { name: a, freeze: "echo freeze-a >> EVENTS", thaw: "echo thaw-a >> EVENTS" }
  - { name: b, freeze: "echo freeze-b >> EVENTS; exit 2", thaw: "echo thaw-b >> EVENTS" }`,
    );
    const r2 = await runSitekeep(["site", "freeze", "--config", bad.config, "--exec", `echo ran >> ${bad.events}`], { env: bad.env });
    assert.equal(r2.code, 1, describeRun(r2));
    assert.deepEqual(lines(bad.events), ["freeze-a", "freeze-b", "thaw-b", "thaw-a"]);
  } finally {
    await tmp.cleanup();
  }
});

test("the watchdog thaws by the deadline when the task hangs while frozen", async () => {
  const tmp = await tempDir("site-freeze-hang");
  try {
    // The second writer's freeze stops the task (SIGSTOP): it is alive, holds the watchdog's pipe
    // open, and can thaw nothing. Deadline: maxFreeze 1s + 2 x the writers' 1 s timeouts.
    const s = setup(
      tmp.path,
      `  - { name: a, freeze: "echo freeze-a >> EVENTS", thaw: "echo thaw-a >> EVENTS", timeout: 1s }
  - { name: b, freeze: "echo freeze-b >> EVENTS; kill -STOP $PPID", thaw: "echo thaw-b >> EVENTS", timeout: 1s }`,
      "  maxFreeze: 1s\n",
    );
    const task = spawn(process.execPath, [SITEKEEP_BIN, "site", "backup", "--config", s.config], { env: { ...process.env, ...s.env }, stdio: "ignore" });
    const started = Date.now();
    try {
      const deadline = Date.now() + 20_000;
      while (!lines(s.events).includes("thaw-a") && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
      const took = Date.now() - started;
      assert.deepEqual(lines(s.events), ["freeze-a", "freeze-b", "thaw-b", "thaw-a"], "the watchdog thawed both, in reverse order");
      assert.ok(took < 15_000, `thawed after ${took} ms`);
      assert.match(readFileSync(join(tmp.path, "state", "watchdog.log"), "utf8"), /freeze deadline passed; thawing b, a/);
    } finally {
      task.kill("SIGCONT");
      task.kill("SIGKILL");
    }
  } finally {
    await tmp.cleanup();
  }
});

test("short freeze: only files changed since the online pass are read while frozen, and the snapshot has their frozen state", async () => {
  const tmp = await tempDir("site-short-freeze");
  try {
    const site = join(tmp.path, "site");
    const s = setup(tmp.path, `  - { name: app, freeze: "echo 'written just before the freeze' >> ${join(site, "journal.log")}", thaw: "true" }`);
    for (let i = 0; i < 50; i++) writeFileSync(join(site, `f${i}.txt`), `file ${i}\n`.repeat(100));
    writeFileSync(join(site, "journal.log"), "start\n");
    // Files written in the second before a run are read again while frozen however they look
    // ("racy" files): let these age first.
    await new Promise((r) => setTimeout(r, 2100));
    for (let run = 1; run <= 2; run++) {
      const r = await runSitekeep(["site", "backup", "--json", "--config", s.config], { env: s.env });
      assert.equal(r.code, 0, describeRun(r));
      const sum = JSON.parse(r.stdout) as { files_changed_while_frozen: number; total_files_processed: number; freeze_window_ms: number };
      assert.equal(sum.files_changed_while_frozen, 1, `run ${run}: only journal.log is read again while frozen`);
      assert.equal(sum.total_files_processed, 52);
    }
    const target = join(tmp.path, "restored");
    const rs = await runSitekeep(["restore", "latest", "--target", target, "-r", join(tmp.path, "dest")], { env: s.env });
    assert.equal(rs.code, 0, describeRun(rs));
    assert.equal(readFileSync(join(target, site, "journal.log"), "utf8"), readFileSync(join(site, "journal.log"), "utf8"));
    assert.match(readFileSync(join(target, site, "journal.log"), "utf8"), /(written just before the freeze\n){2}$/);
  } finally {
    await tmp.cleanup();
  }
});
