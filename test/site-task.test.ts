// The site backup task as an operator meets it, through the real CLI (`sitekeep site ...`), real
// folders, real SQLite files and the reference restic: preflight failures (each with its status
// message and nothing frozen), command writers (order, failure, timeout, SIGTERM, SIGKILL and the
// watchdog), the after-backup hook, SQLite captured while another process writes, the run log
// agreeing with the state database, and retention.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createRequire } from "node:module";
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import { join } from "node:path";
import Database from "better-sqlite3";
import { stringify } from "yaml";
import { SITEKEEP_BIN, describeRun, runCommand, runSitekeep, tempDir, type RunResult, type TempDir } from "./helpers/run.js";

// ---- fixtures -----------------------------------------------------------------------------------

interface WriterSpec {
  name: string;
  freeze: string;
  thaw: string;
  timeout?: string;
}

interface Site {
  name: string;
  root: string;
  dest: string;
  state: string;
  data: string;
  db: string;
  /** Where the writers append freeze-X / thaw-X lines. */
  events: string;
  config: string;
  home: string;
  env: Record<string, string>;
  writers: WriterSpec[];
}

interface MessageRow {
  seq: number;
  run_id: string | null;
  message_id: number;
  severity: string;
  text: string;
}

interface SnapshotJSON {
  id: string;
  tags?: string[];
}

const roots: TempDir[] = [];
after(async () => {
  for (const r of roots) await r.cleanup();
});

/** A writer that records its freeze and thaw in the events file (and runs `then` after freezing). */
function writer(name: string, events: string, then?: string, timeout?: string): WriterSpec {
  return { name, freeze: `echo freeze-${name} >> ${events}${then ? `; ${then}` : ""}`, thaw: `echo thaw-${name} >> ${events}`, ...(timeout ? { timeout } : {}) };
}

/** A site: a folder of files and a SQLite database, an empty destination, a private state dir. */
async function makeSite(label: string, opts: { writers?: (events: string) => WriterSpec[] } = {}): Promise<Site> {
  const tmp = await tempDir(`site-${label}`);
  roots.push(tmp);
  const root = tmp.path;
  const site: Site = {
    name: "PS1",
    root,
    dest: join(root, "dest"),
    state: join(root, "state"),
    data: join(root, "data"),
    db: join(root, "data", "app.db"),
    events: join(root, "ev", "EVENTS"),
    config: join(root, "sitekeep.yaml"),
    home: join(root, "home"),
    env: {},
    writers: [],
  };
  for (const d of [site.dest, site.state, join(site.data, "docs"), join(root, "ev"), site.home]) fs.mkdirSync(d, { recursive: true });
  site.env = { SITEKEEP_PASSWORD: "site-pw", SITEKEEP_SCRYPT_N: "1024", HOME: site.home, SITEKEEP_CACHE_DIR: join(site.home, "cache") };
  for (let i = 0; i < 5; i++) fs.writeFileSync(join(site.data, "docs", `doc${i}.txt`), `document ${i}\n`.repeat(100 + i));
  fs.writeFileSync(join(site.data, "blob.bin"), randomBytes(200_000));
  const db = new Database(site.db);
  db.exec("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO items (name) VALUES ('one'), ('two'), ('three')");
  db.close();
  site.writers = opts.writers?.(site.events) ?? [];
  writeConfig(site, {});
  return site;
}

/** Writes the site's control file (with changes); returns its text. */
function writeConfig(site: Site, change: { writers?: WriterSpec[]; afterBackup?: string; retention?: Record<string, number> }): string {
  if (change.writers) site.writers = change.writers;
  const doc = {
    site: site.name,
    stateDir: site.state,
    backup: {
      destination: site.dest,
      ...(change.afterBackup ? { afterBackup: change.afterBackup } : {}),
      ...(change.retention ? { retention: change.retention } : {}),
    },
    databases: [{ name: "app", kind: "sqlite", path: site.db }],
    files: [{ path: site.data, exclude: ["*.db-wal", "*.db-shm"] }],
    writers: site.writers,
  };
  const text = stringify(doc, { lineWidth: 0 });
  fs.writeFileSync(site.config, text);
  return text;
}

async function backup(site: Site, env: Record<string, string> = {}): Promise<{ r: RunResult; summary: Record<string, unknown> }> {
  const r = await runSitekeep(["site", "backup", "--config", site.config, "--json"], { env: { ...site.env, ...env }, timeoutMs: 60_000 });
  return { r, summary: lastJSON(r) };
}

/** `site messages --json` (oldest first), for one run or all. */
async function messagesOf(site: Site, runId?: string): Promise<MessageRow[]> {
  const r = await runSitekeep(["site", "messages", "--config", site.config, "--json", "-n", "1000", ...(runId ? ["--run", runId] : [])], { env: site.env });
  assert.equal(r.code, 0, describeRun(r));
  return JSON.parse(r.stdout) as MessageRow[];
}

/** The STATMSG lines of one run in DEST/sitekeep.log. */
function statmsgsOf(site: Site, runId: string): { id: number; sev: string; text: string }[] {
  const log = join(site.dest, "sitekeep.log");
  if (!fs.existsSync(log)) return [];
  const out: { id: number; sev: string; text: string }[] = [];
  for (const line of fs.readFileSync(log, "utf8").split("\n")) {
    const m = /STATMSG: ID=(\d+) SEV=(\w) SITE=\S+ RUN=(\S+) TIME=\S+ TEXT=(.*)$/.exec(line);
    if (m && m[3] === runId) out.push({ id: Number(m[1]), sev: m[2], text: JSON.parse(m[4]) as string });
  }
  return out;
}

/** The writers' freeze/thaw lines, or null when no writer ever ran. */
function eventsOf(site: Site): string[] | null {
  if (!fs.existsSync(site.events)) return null;
  return fs.readFileSync(site.events, "utf8").split("\n").filter(Boolean);
}

/** The destination's snapshots, listed by the reference restic ([] when there is no repository). */
async function resticSnapshots(site: Site): Promise<SnapshotJSON[]> {
  if (!fs.existsSync(join(site.dest, "config"))) return [];
  const r = await runCommand("/usr/bin/restic", ["-r", site.dest, "snapshots", "--json", "--no-cache"], { env: { RESTIC_PASSWORD: site.env.SITEKEEP_PASSWORD, HOME: site.home } });
  assert.equal(r.code, 0, describeRun(r));
  return JSON.parse(r.stdout) as SnapshotJSON[];
}

async function resticCheck(site: Site): Promise<void> {
  const r = await runCommand("/usr/bin/restic", ["-r", site.dest, "check", "--no-cache"], { env: { RESTIC_PASSWORD: site.env.SITEKEEP_PASSWORD, HOME: site.home } });
  assert.equal(r.code, 0, describeRun(r));
}

function lastJSON(r: RunResult): Record<string, unknown> {
  const line = r.stdout.trim().split("\n").pop();
  assert.ok(line, `no JSON on stdout\n${describeRun(r)}`);
  return JSON.parse(line) as Record<string, unknown>;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Freezes first to last, then thaws of exactly those, last to first. */
function assertThawedInReverse(events: string[]): void {
  const frozen = events.filter((e) => e.startsWith("freeze-")).map((e) => e.slice(7));
  const thawed = events.filter((e) => e.startsWith("thaw-")).map((e) => e.slice(5));
  assert.ok(frozen.length > 0, "something was frozen");
  assert.deepEqual(thawed, [...frozen].reverse(), `every frozen writer is thawed once, in reverse order: ${events.join(", ")}`);
  assert.ok(events.findIndex((e) => e.startsWith("thaw-")) > events.findLastIndex((e) => e.startsWith("freeze-")), "thaws come after the freezes");
}

// ---- 1. preflight failures ----------------------------------------------------------------------

/** A run stopped in the preflight: its message, nothing frozen, no snapshot, the message in the state. */
async function assertPreflightFailure(site: Site, id: number, r: RunResult, summary: Record<string, unknown>, msgs?: Awaited<ReturnType<typeof messagesOf>>): Promise<void> {
  assert.notEqual(r.code, 0, describeRun(r));
  assert.equal(summary.status, "failed", describeRun(r));
  assert.equal(summary.message_id, id, describeRun(r));
  assert.equal(eventsOf(site), null, "no writer may be frozen when the preflight fails");
  if (fs.existsSync(site.dest)) assert.deepEqual(await resticSnapshots(site), [], "a failed preflight makes no snapshot");
  const rows = msgs ?? (await messagesOf(site, summary.run_id as string));
  assert.deepEqual(
    rows.map((m) => m.message_id),
    [5055, id],
    `site messages --json for run ${String(summary.run_id)}`,
  );
  assert.equal(rows[1].severity, "E");
}

test("preflight: a missing destination is 5003; nothing frozen, no snapshot", async () => {
  const site = await makeSite("pf-missing", { writers: (e) => [writer("a", e)] });
  fs.rmSync(site.dest, { recursive: true });
  const { r, summary } = await backup(site);
  await assertPreflightFailure(site, 5003, r, summary);
  assert.equal(fs.existsSync(site.dest), false, "Sitekeep never creates a destination's folder itself");
});

test("preflight: a destination the user cannot write is 5004 (run as nobody)", async (t) => {
  if (process.getuid?.() !== 0 || !fs.existsSync("/usr/sbin/runuser")) {
    t.skip("needs root and runuser");
    return;
  }
  const site = await makeSite("pf-unwritable", { writers: (e) => [writer("a", e)] });
  // nobody must reach everything but the destination: the temp root is 0700 by default.
  fs.chmodSync(site.root, 0o755);
  fs.chmodSync(site.dest, 0o755); // owned by root
  const open = join(site.root, "open");
  fs.mkdirSync(open);
  fs.chmodSync(open, 0o777);
  fs.chmodSync(site.state, 0o777);
  fs.chmodSync(site.home, 0o777);
  fs.mkdirSync(join(site.home, "cache"), { recursive: true });
  fs.chmodSync(join(site.home, "cache"), 0o777);
  // EVENTS would go where nobody can write it: keep it where the assertion looks, writable by all.
  fs.chmodSync(join(site.root, "ev"), 0o777);
  const asNobody = (args: string[]): Promise<RunResult> =>
    runCommand("runuser", [
      "-u", "nobody", "--", "env",
      `HOME=${site.home}`, `SITEKEEP_PASSWORD=${site.env.SITEKEEP_PASSWORD}`, "SITEKEEP_SCRYPT_N=1024", `SITEKEEP_CACHE_DIR=${join(site.home, "cache")}`, `TMPDIR=${open}`,
      process.execPath, SITEKEEP_BIN, ...args,
    ]);
  const r = await asNobody(["site", "backup", "--config", site.config, "--json"]);
  const summary = lastJSON(r);
  const m = await asNobody(["site", "messages", "--config", site.config, "--json", "-n", "1000", "--run", summary.run_id as string]);
  assert.equal(m.code, 0, describeRun(m));
  await assertPreflightFailure(site, 5004, r, summary, JSON.parse(m.stdout));
  assert.match((summary.error as { message: string }).message, /not writable by this process \(uid 65534\)/);
  assert.deepEqual(fs.readdirSync(site.dest), [], "the destination is left as it was");
});

test("preflight: a destination holding other files is 5006", async () => {
  const site = await makeSite("pf-foreign", { writers: (e) => [writer("a", e)] });
  fs.writeFileSync(join(site.dest, "somebody-elses.txt"), "not a repository\n");
  const { r, summary } = await backup(site);
  await assertPreflightFailure(site, 5006, r, summary);
  assert.deepEqual(fs.readdirSync(site.dest).sort(), ["sitekeep.log", "somebody-elses.txt"], "nothing but the run log is added");
});

test("preflight: a destination too small for the run is 5005 (1 MiB tmpfs, 4 MiB of files)", async (t) => {
  const site = await makeSite("pf-full", { writers: (e) => [writer("a", e)] });
  fs.writeFileSync(join(site.data, "big.bin"), randomBytes(4 * 1024 * 1024));
  const mnt = await runCommand("mount", ["-t", "tmpfs", "-o", "size=1m", "tmpfs", site.dest]);
  if (mnt.code !== 0) {
    t.skip(`cannot mount a tmpfs here (${mnt.stderr.trim() || `exit ${mnt.code}`})`);
    return;
  }
  try {
    const { r, summary } = await backup(site);
    await assertPreflightFailure(site, 5005, r, summary);
    assert.match(String((summary.error as { message: string }).message), /free/);
  } finally {
    const um = await runCommand("umount", [site.dest]);
    assert.equal(um.code, 0, describeRun(um));
  }
});

test("preflight: an unreachable database (SQLite file missing) is 5008", async () => {
  const site = await makeSite("pf-db", { writers: (e) => [writer("a", e)] });
  fs.rmSync(site.db);
  const { r, summary } = await backup(site);
  await assertPreflightFailure(site, 5008, r, summary);
});

test("preflight: a writer command that does not exist is 5011, and no writer is frozen", async () => {
  const site = await makeSite("pf-writer", {
    writers: (e) => [writer("a", e), { name: "b", freeze: "no-such-freeze-command-sk --now", thaw: `echo thaw-b >> ${e}` }],
  });
  const { r, summary } = await backup(site);
  await assertPreflightFailure(site, 5011, r, summary);
  assert.match(String((summary.error as { message: string }).message), /no-such-freeze-command-sk/);
});

test("preflight: the wrong password for an existing repository is 5007", async () => {
  const site = await makeSite("pf-password", { writers: (e) => [writer("a", e)] });
  const init = await runSitekeep(["-r", site.dest, "init"], { env: site.env });
  assert.equal(init.code, 0, describeRun(init));
  const { r, summary } = await backup(site, { SITEKEEP_PASSWORD: "not-the-password" });
  await assertPreflightFailure(site, 5007, r, summary);
});

// ---- 2. writers ---------------------------------------------------------------------------------

test("writers: a, b, c freeze in order and thaw in reverse; 5056 reports the freeze window", async () => {
  const site = await makeSite("writers-order", { writers: (e) => [writer("a", e), writer("b", e), writer("c", e)] });
  const { r, summary } = await backup(site);
  assert.equal(r.code, 0, describeRun(r));
  assert.deepEqual(eventsOf(site), ["freeze-a", "freeze-b", "freeze-c", "thaw-c", "thaw-b", "thaw-a"]);
  const rows = await messagesOf(site, summary.run_id as string);
  assert.deepEqual(rows.map((m) => m.message_id), [5055, 5056, 5035]);
  const window = /3 writers thawed after a freeze window of (\d+) ms/.exec(rows[1].text);
  assert.ok(window, rows[1].text);
  assert.equal(Number(window[1]), summary.freeze_window_ms);
  assert.ok((summary.freeze_window_ms as number) >= 0 && (summary.freeze_window_ms as number) < 10_000);
  assert.equal((await resticSnapshots(site)).length, 1);
});

test("writers: b failing to freeze thaws b then a, never freezes c; 5012, exit non-zero, no new snapshot", async () => {
  const site = await makeSite("writers-fail");
  const first = await backup(site); // a good snapshot first: the failed run must leave it alone
  assert.equal(first.r.code, 0, describeRun(first.r));
  writeConfig(site, { writers: [writer("a", site.events), writer("b", site.events, "exit 1"), writer("c", site.events)] });
  const { r, summary } = await backup(site);
  assert.notEqual(r.code, 0, describeRun(r));
  assert.equal(summary.message_id, 5012);
  assert.deepEqual(eventsOf(site), ["freeze-a", "freeze-b", "thaw-b", "thaw-a"]);
  assert.deepEqual((await messagesOf(site, summary.run_id as string)).map((m) => m.message_id), [5055, 5012]);
  assert.deepEqual((await resticSnapshots(site)).map((s) => s.id), [first.summary.snapshot_id]);
});

test("writers: a freeze running past the writer's timeout is killed and thawed (5012) in well under its 30 s", async () => {
  const site = await makeSite("writers-timeout", { writers: (e) => [writer("a", e), writer("b", e, "sleep 31", "1s"), writer("c", e)] });
  const t0 = Date.now();
  const { r, summary } = await backup(site);
  const took = Date.now() - t0;
  assert.notEqual(r.code, 0, describeRun(r));
  assert.ok(took < 15_000, `the run took ${took} ms`);
  assert.equal(summary.message_id, 5012);
  assert.match((summary.error as { message: string }).message, /timed out/);
  assert.deepEqual(eventsOf(site), ["freeze-a", "freeze-b", "thaw-b", "thaw-a"]);
  const ps = await runCommand("ps", ["-eo", "args"]);
  assert.equal(ps.stdout.split("\n").filter((l) => l.trim() === "sleep 31").length, 0, "the timed-out freeze command (its whole process group) is gone");
});

// ---- 3. guaranteed thaw -------------------------------------------------------------------------

let termEvents: string[] | null = null;

test("SIGTERM while freezing: exit 130, 5021, every frozen writer thawed in reverse, no snapshot", async () => {
  // b's freeze signals the task and keeps running: the signal is then handled while b is freezing,
  // whichever of the signal and the command's exit Node would otherwise see first.
  const site = await makeSite("sigterm", { writers: (e) => [writer("a", e), writer("b", e, "kill -TERM $PPID; sleep 3"), writer("c", e)] });
  const { r, summary } = await backup(site);
  assert.equal(r.code, 130, describeRun(r));
  assert.equal(summary.status, "interrupted");
  assert.equal(summary.message_id, 5021);
  assert.deepEqual((await messagesOf(site, summary.run_id as string)).map((m) => m.message_id), [5055, 5021]);
  termEvents = eventsOf(site);
  assert.ok(termEvents);
  assert.deepEqual(termEvents.slice(0, 2), ["freeze-a", "freeze-b"]);
  assertThawedInReverse(termEvents);
  assert.deepEqual(await resticSnapshots(site), []);
  // The watchdog was told everything was thawed: it must not thaw again.
  await sleep(400);
  assert.deepEqual(eventsOf(site), termEvents);
});

test("SIGTERM while freezing: no further writer is frozen once the task is interrupted", () => {
  assert.ok(termEvents, "the SIGTERM run above ran");
  assert.ok(!termEvents.includes("freeze-c"), `writer c was frozen after the task got SIGTERM: ${termEvents.join(", ")}`);
});

let killed: { site: Site; events: string[]; runId: string } | undefined;

test("SIGKILL while freezing: the watchdog thaws in reverse; the next run succeeds and the killed run is 5021", async () => {
  const site = await makeSite("sigkill", { writers: (e) => [writer("a", e), writer("b", e, "kill -KILL $PPID"), writer("c", e)] });
  const r = await runSitekeep(["site", "backup", "--config", site.config, "--json"], { env: site.env, timeoutMs: 60_000 });
  assert.equal(r.signal, "SIGKILL", describeRun(r));
  let events = eventsOf(site) ?? [];
  for (const t0 = Date.now(); !events.includes("thaw-a") && Date.now() - t0 < 10_000; events = eventsOf(site) ?? []) await sleep(50);
  assert.deepEqual(events.slice(0, 2), ["freeze-a", "freeze-b"], events.join(", "));
  const thaws = events.filter((e) => e === "thaw-a" || e === "thaw-b");
  assert.deepEqual(thaws, ["thaw-b", "thaw-a"], `the watchdog thawed the frozen writers, last first: ${events.join(", ")}`);
  assert.match(fs.readFileSync(join(site.state, "watchdog.log"), "utf8"), /ended without thawing/);

  // The next run (same site, writers that behave) succeeds and closes the killed run.
  fs.rmSync(site.events);
  writeConfig(site, { writers: [writer("a", site.events), writer("b", site.events), writer("c", site.events)] });
  const next = await backup(site);
  assert.equal(next.r.code, 0, describeRun(next.r));
  assert.equal(next.summary.message_id, 5035);
  assert.deepEqual(eventsOf(site), ["freeze-a", "freeze-b", "freeze-c", "thaw-c", "thaw-b", "thaw-a"]);

  const all = await messagesOf(site);
  const runId = all.find((m) => m.message_id === 5055)?.run_id as string;
  assert.notEqual(runId, next.summary.run_id);
  const rows = await messagesOf(site, runId);
  assert.deepEqual(rows.map((m) => m.message_id), [5055, 5021], "the killed run is reported interrupted");
  const st = await runSitekeep(["site", "status", "--config", site.config, "--json"], { env: site.env });
  assert.equal(st.code, 0, describeRun(st));
  const runs = (JSON.parse(st.stdout) as { runs: { id: string; status: string }[] }).runs;
  assert.equal(runs.find((x) => x.id === runId)?.status, "interrupted");
  assert.equal(runs.find((x) => x.id === next.summary.run_id)?.status, "succeeded");
  assert.equal((await resticSnapshots(site)).length, 1);
  killed = { site, events, runId };
});

test("SIGKILL while freezing: the watchdog thaws only the writers that were frozen (never c)", () => {
  assert.ok(killed, "the SIGKILL run above ran");
  assert.deepEqual(killed.events, ["freeze-a", "freeze-b", "thaw-b", "thaw-a"], `after SIGKILL: ${killed.events.join(", ")}`);
});

test("SIGKILL while freezing: the killed run's 5021 is in DEST/sitekeep.log as in the state database", async () => {
  assert.ok(killed, "the SIGKILL run above ran");
  const state = await messagesOf(killed.site, killed.runId);
  assert.deepEqual(
    statmsgsOf(killed.site, killed.runId).map((l) => l.id),
    state.map((m) => m.message_id),
    "log watchers must see the interrupted run's 5021 (SEV=E) too",
  );
});

// ---- 4. the after-backup hook -------------------------------------------------------------------

test("afterBackup: the hook gets the snapshot ID, site, destination and log, never the password; 5040 before 5035", async () => {
  const site = await makeSite("hook-env");
  const out = join(site.root, "hook-env.txt");
  const hook = join(site.root, "after.sh");
  fs.writeFileSync(hook, `#!/bin/sh\nenv > '${out}'\necho hook ran\n`);
  fs.chmodSync(hook, 0o700);
  writeConfig(site, { afterBackup: hook });
  const { r, summary } = await backup(site);
  assert.equal(r.code, 0, describeRun(r));
  assert.equal(summary.message_id, 5035);
  const env = new Map(
    fs.readFileSync(out, "utf8").split("\n").filter((l) => l.includes("=")).map((l) => [l.slice(0, l.indexOf("=")), l.slice(l.indexOf("=") + 1)] as const),
  );
  assert.equal(env.get("SITEKEEP_SNAPSHOT_ID"), summary.snapshot_id);
  assert.equal(env.get("SITEKEEP_SITE"), site.name);
  assert.equal(env.get("SITEKEEP_DESTINATION"), site.dest);
  assert.equal(env.get("SITEKEEP_LOG"), join(site.dest, "sitekeep.log"));
  assert.equal(env.get("SITEKEEP_RUN_ID"), summary.run_id);
  assert.equal(env.has("SITEKEEP_PASSWORD"), false, "the hook must not get the repository password");
  const ids = (await messagesOf(site, summary.run_id as string)).map((m) => m.message_id);
  assert.deepEqual(ids, [5055, 5056, 5040, 5035]);
  assert.deepEqual(await resticSnapshots(site).then((s) => s.map((x) => x.id)), [summary.snapshot_id]);
});

test("afterBackup: a failing hook (exit 3) is warning 5020; the run still succeeds (exit 0, 5035) and keeps its snapshot", async () => {
  const site = await makeSite("hook-fail");
  const hook = join(site.root, "after.sh");
  fs.writeFileSync(hook, "#!/bin/sh\necho 'hook says no' >&2\nexit 3\n");
  fs.chmodSync(hook, 0o700);
  writeConfig(site, { afterBackup: hook });
  const { r, summary } = await backup(site);
  assert.equal(r.code, 0, describeRun(r));
  assert.equal(summary.status, "succeeded");
  assert.equal(summary.message_id, 5035);
  assert.equal((summary.warnings as string[]).length, 1, JSON.stringify(summary.warnings));
  const rows = await messagesOf(site, summary.run_id as string);
  assert.deepEqual(rows.map((m) => m.message_id), [5055, 5056, 5040, 5020, 5035]);
  assert.equal(rows[3].severity, "W");
  assert.match(rows[3].text, /status 3/);
  assert.deepEqual(await resticSnapshots(site).then((s) => s.map((x) => x.id)), [summary.snapshot_id], "the snapshot is kept");
});

test("afterBackup: a hook writable by others (0777) is refused by `site validate` with file:line:col", async () => {
  const site = await makeSite("hook-mode");
  const hook = join(site.root, "after.sh");
  fs.writeFileSync(hook, "#!/bin/sh\nexit 0\n");
  fs.chmodSync(hook, 0o777);
  const text = writeConfig(site, { afterBackup: hook });
  const lines = text.split("\n");
  const line = lines.findIndex((l) => /^\s*afterBackup:/.test(l)) + 1;
  const col = lines[line - 1].indexOf(hook) + 1;
  assert.ok(line > 0 && col > 0);
  const r = await runSitekeep(["site", "validate", "--config", site.config], { env: site.env });
  assert.notEqual(r.code, 0, describeRun(r));
  assert.ok(
    r.stderr.includes(`${site.config}:${line}:${col}: backup.afterBackup: ${hook} is writable by other users`),
    `expected ${site.config}:${line}:${col}: backup.afterBackup: ... writable by other users\n${describeRun(r)}`,
  );
  // And `site backup` does not run it either.
  const b = await runSitekeep(["site", "backup", "--config", site.config], { env: site.env });
  assert.notEqual(b.code, 0, describeRun(b));
  assert.match(b.stderr, /writable by other users/);
  assert.deepEqual(await resticSnapshots(site), []);
});

// ---- 5. SQLite under concurrent writers ---------------------------------------------------------

test("SQLite: a database written concurrently (WAL, transfers in transactions) is captured consistently", async () => {
  const site = await makeSite("sqlite-live");
  // A bigger database so the copy takes a moment: 1000 accounts holding 1,000,000 in all, and
  // 20,000 padded transfers.
  fs.rmSync(site.db);
  const db = new Database(site.db);
  db.pragma("journal_mode = WAL");
  db.exec("CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL); CREATE TABLE transfers (id INTEGER PRIMARY KEY, src INTEGER, dst INTEGER, amount INTEGER, note TEXT)");
  db.transaction(() => {
    const a = db.prepare("INSERT INTO accounts (id, balance) VALUES (?, 1000)");
    for (let i = 1; i <= 1000; i++) a.run(i);
    const tr = db.prepare("INSERT INTO transfers (src, dst, amount, note) VALUES (1, 1, 0, ?)");
    for (let i = 0; i < 20_000; i++) tr.run(randomBytes(100).toString("hex"));
  })();
  db.close();

  const bs3 = createRequire(import.meta.url).resolve("better-sqlite3");
  const worker = spawn(
    process.execPath,
    [
      "-e",
      `
const Database = require(${JSON.stringify(bs3)});
const db = new Database(${JSON.stringify(site.db)});
db.pragma("journal_mode = WAL");
db.pragma("busy_timeout = 10000");
const move = db.prepare("UPDATE accounts SET balance = balance + ? WHERE id = ?");
const ins = db.prepare("INSERT INTO transfers (src, dst, amount, note) VALUES (?, ?, ?, ?)");
const transfer = db.transaction((a, b, amount) => {
  move.run(-amount, a);
  move.run(amount, b);
  ins.run(a, b, amount, "x".repeat(200));
});
let done = 0;
const tick = () => {
  for (let i = 0; i < 20; i++) {
    const a = 1 + Math.floor(Math.random() * 1000);
    const b = 1 + ((a + Math.floor(Math.random() * 998)) % 1000);
    transfer(a, b, 1 + Math.floor(Math.random() * 50));
    done++;
  }
  if (done % 200 === 0) process.stdout.write(done + "\\n");
  setImmediate(tick);
};
tick();
`,
    ],
    { stdio: ["ignore", "pipe", "inherit"] },
  );
  let progress = 0;
  worker.stdout.on("data", (d: Buffer) => {
    const last = d.toString().trim().split("\n").pop();
    if (last) progress = Number(last);
  });
  const exited = new Promise<void>((res) => worker.on("exit", () => res()));
  let summary: Record<string, unknown>;
  let transfersBefore = 20_000;
  try {
    while (progress < 400) await sleep(20);
    transfersBefore += progress; // at least this many transfers exist when the backup starts
    const b = await backup(site);
    assert.equal(b.r.code, 0, describeRun(b.r));
    summary = b.summary;
  } finally {
    worker.kill("SIGTERM");
    await exited;
  }

  const target = join(site.root, "restored");
  const rs = await runSitekeep(["-r", site.dest, "restore", "latest", "--target", target, "--include", "/.sitekeep"], { env: site.env });
  assert.equal(rs.code, 0, describeRun(rs));
  const copyPath = join(target, ".sitekeep", "databases", "app.sqlite");
  const manifest = JSON.parse(fs.readFileSync(join(target, ".sitekeep", "manifest.json"), "utf8")) as {
    runId: string;
    databases: { name: string; tables: Record<string, number> }[];
  };
  assert.equal(manifest.runId, summary.run_id);
  const copy = new Database(copyPath);
  try {
    assert.equal(copy.pragma("integrity_check", { simple: true }), "ok");
    assert.equal((copy.prepare("SELECT sum(balance) AS s FROM accounts").get() as { s: number }).s, 1_000_000, "a consistent copy: the sum is unchanged");
    const counts = Object.fromEntries(
      ["accounts", "transfers"].map((t) => [t, (copy.prepare(`SELECT count(*) AS n FROM ${t}`).get() as { n: number }).n]),
    );
    assert.deepEqual(manifest.databases.find((d) => d.name === "app")?.tables, counts, "the manifest's row counts are those of the copy");
    const live = new Database(site.db, { readonly: true });
    const liveTransfers = (live.prepare("SELECT count(*) AS n FROM transfers").get() as { n: number }).n;
    assert.equal((live.prepare("SELECT sum(balance) AS s FROM accounts").get() as { s: number }).s, 1_000_000);
    live.close();
    // The copy was taken while the writer ran: it has transfers made before it, and more came after.
    assert.ok(counts.transfers >= transfersBefore, `copy has ${counts.transfers} transfers, ${transfersBefore} existed when the backup started`);
    assert.ok(liveTransfers > counts.transfers, `the live database (${liveTransfers}) went on after the copy (${counts.transfers})`);
  } finally {
    copy.close();
  }
});

// ---- 6. the run log and the state database agree ------------------------------------------------

test("log and state agree: STATMSG lines in DEST/sitekeep.log match `site messages --json` per run; restic check passes", async () => {
  const site = await makeSite("log-state", { writers: (e) => [writer("a", e), writer("b", e)] });
  const good = await backup(site);
  assert.equal(good.r.code, 0, describeRun(good.r));
  // A failed run too (b fails to freeze), then a good one again.
  writeConfig(site, { writers: [writer("a", site.events), { ...writer("b", site.events), freeze: "exit 1" }] });
  const bad = await backup(site);
  assert.notEqual(bad.r.code, 0, describeRun(bad.r));
  writeConfig(site, { writers: [writer("a", site.events), writer("b", site.events)] });
  const again = await backup(site);
  assert.equal(again.r.code, 0, describeRun(again.r));

  for (const run of [good, bad, again]) {
    const id = run.summary.run_id as string;
    const state = await messagesOf(site, id);
    const log = statmsgsOf(site, id);
    assert.ok(state.length >= 2);
    assert.deepEqual(
      log.map((l) => [l.id, l.sev]),
      state.map((m) => [m.message_id, m.severity]),
      `run ${id}: log and state disagree`,
    );
    assert.deepEqual(log.map((l) => l.text), state.map((m) => m.text));
  }
  assert.deepEqual(statmsgsOf(site, bad.summary.run_id as string).map((l) => l.id), [5055, 5012]);

  const logLines = fs.readFileSync(join(site.dest, "sitekeep.log"), "utf8").split("\n");
  for (const run of [good, again]) {
    const id = run.summary.run_id as string;
    const i5035 = logLines.findIndex((l) => l.includes(`RUN=${id} `) && l.includes("STATMSG: ID=5035 "));
    const done = logLines.findIndex((l) => l.includes(`[${site.name} ${id}] Backup completed`));
    assert.ok(i5035 >= 0 && done > i5035, `"Backup completed" comes after the 5035 line (run ${id})`);
  }
  assert.equal(logLines.filter((l) => l.includes(`[${site.name} ${bad.summary.run_id as string}] Backup completed`)).length, 0);

  await resticCheck(site);
});

// ---- 7. retention -------------------------------------------------------------------------------

test("retention: keepLast 2 over 4 runs leaves exactly the 2 newest site snapshots", async () => {
  const site = await makeSite("retention");
  writeConfig(site, { retention: { keepLast: 2 } });
  const ids: string[] = [];
  for (let i = 0; i < 4; i++) {
    fs.writeFileSync(join(site.data, "changing.txt"), `run ${i}\n`);
    const { r, summary } = await backup(site);
    assert.equal(r.code, 0, describeRun(r));
    ids.push(summary.snapshot_id as string);
  }
  const left = (await resticSnapshots(site)).filter((s) => s.tags?.includes(`site:${site.name}`));
  assert.deepEqual(left.map((s) => s.id).sort(), ids.slice(2).sort());
  await resticCheck(site);
});

