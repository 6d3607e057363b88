// Socket writers: an application registers with the running task through sitekeep/writer's
// startWriter, is frozen and thawed in the control file's order, and thaws by itself when the
// task dies (SIGKILL) while it is frozen.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, readFileSync, writeFileSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { REPO_ROOT, SITEKEEP_BIN, describeRun, runSitekeep, tempDir } from "./helpers/run.js";

const CLIENT = join(REPO_ROOT, "src", "writer", "client.ts");

/** A stand-in application: registers as writer `name`, logs its hooks to `events`. */
function startApp(socket: string, name: string, events: string, freezeDelayMs = 0): ChildProcess {
  const script = `
    import { appendFileSync } from "node:fs";
    import { startWriter } from ${JSON.stringify(CLIENT)};
    const log = (s) => appendFileSync(${JSON.stringify(events)}, s + "\\n");
    startWriter({
      socket: ${JSON.stringify(socket)}, name: ${JSON.stringify(name)}, retryMs: 100,
      prepare: () => log("prepare-${name}"),
      freeze: async () => { log("freeze-${name}"); await new Promise((r) => setTimeout(r, ${freezeDelayMs})); ${freezeDelayMs > 0 ? `log("frozen-${name}");` : ""} },
      thaw: () => log("thaw-${name}"),
      onEvent: (e) => { if (e.kind === "self-thaw") log("self-thaw-${name} " + e.reason); },
    });
    log("ready-${name}");
    setInterval(() => {}, 1000); // the application's own work keeps it running
  `;
  return spawn(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], { cwd: REPO_ROOT, stdio: "ignore" });
}

async function waitFor(cond: () => boolean, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function setup(root: string, writersYaml: string): { config: string; events: string; socket: string; env: Record<string, string> } {
  const site = join(root, "site");
  mkdirSync(site, { recursive: true });
  writeFileSync(join(site, "data.txt"), "payload\n");
  mkdirSync(join(root, "dest"));
  const events = join(root, "events");
  const state = join(root, "state");
  const config = join(root, "sitekeep.yaml");
  writeFileSync(
    config,
    `site: SW
backup:
  destination: ${join(root, "dest")}
files:
  - { path: ${site} }
writers:
${writersYaml.replaceAll("EVENTS", events)}
stateDir: ${state}
`,
  );
  return { config, events, socket: join(state, "writers", "SW.sock"), env: { SITEKEEP_PASSWORD: "pw", SITEKEEP_SCRYPT_N: "1024", HOME: root } };
}

const lines = (f: string): string[] => (existsSync(f) ? readFileSync(f, "utf8").trim().split("\n") : []);

test("a socket writer and command writers freeze in the control file's order and thaw in reverse", async () => {
  const tmp = await tempDir("socket-writer");
  const s = setup(
    tmp.path,
    `  - { name: first, freeze: "echo freeze-first >> EVENTS", thaw: "echo thaw-first >> EVENTS" }
  - { name: app, socket: true, timeout: 20s }
  - { name: last, freeze: "echo freeze-last >> EVENTS", thaw: "echo thaw-last >> EVENTS" }`,
  );
  const app = startApp(s.socket, "app", s.events);
  try {
    await waitFor(() => lines(s.events).includes("ready-app"), 15_000, "the app to start");
    const r = await runSitekeep(["site", "backup", "--json", "--config", s.config], { env: s.env });
    assert.equal(r.code, 0, describeRun(r));
    assert.equal(JSON.parse(r.stdout).message_id, 5035);
    assert.deepEqual(
      lines(s.events).filter((l) => !l.startsWith("ready")),
      ["freeze-first", "prepare-app", "freeze-app", "freeze-last", "thaw-last", "thaw-app", "thaw-first"],
    );
    assert.equal(existsSync(s.socket), false, "the socket is removed after the run");
  } finally {
    app.kill();
    await tmp.cleanup();
  }
});

test("a required socket writer that never registers fails the run (5011) with nothing frozen", async () => {
  const tmp = await tempDir("socket-writer-missing");
  const s = setup(
    tmp.path,
    `  - { name: cmd, freeze: "echo freeze-cmd >> EVENTS", thaw: "echo thaw-cmd >> EVENTS" }
  - { name: app, socket: true, timeout: 1s }`,
  );
  try {
    const r = await runSitekeep(["site", "backup", "--json", "--config", s.config], { env: s.env });
    assert.equal(r.code, 1, describeRun(r));
    const out = JSON.parse(r.stdout) as { message_id: number; error: { message: string } };
    assert.equal(out.message_id, 5011);
    assert.match(out.error.message, /writer app did not register/);
    assert.deepEqual(lines(s.events), [], "nothing was frozen");
  } finally {
    await tmp.cleanup();
  }
});

test("when the task is killed (SIGKILL) while a socket writer is frozen, the writer thaws by itself", async () => {
  const tmp = await tempDir("socket-writer-kill");
  const s = setup(tmp.path, `  - { name: app, socket: true, timeout: 20s }`);
  // The app takes 3 s to freeze: time to kill the task while it is frozen.
  const app = startApp(s.socket, "app", s.events, 3000);
  try {
    await waitFor(() => lines(s.events).includes("ready-app"), 15_000, "the app to start");
    const task = spawn(process.execPath, [SITEKEEP_BIN, "site", "backup", "--config", s.config], {
      env: { ...process.env, ...s.env },
      stdio: "ignore",
    });
    await waitFor(() => lines(s.events).includes("freeze-app"), 20_000, "the freeze");
    task.kill("SIGKILL");
    await waitFor(() => lines(s.events).some((l) => l.startsWith("self-thaw-app")), 10_000, "the writer to thaw itself");
    // The thaw waits for the freeze hook in progress to finish: a thaw that ran first would be
    // undone by the late freeze, leaving the application quiesced.
    await waitFor(() => lines(s.events).includes("thaw-app"), 10_000, "the thaw hook");
    const ev = lines(s.events);
    assert.ok(ev.indexOf("frozen-app") >= 0 && ev.indexOf("frozen-app") < ev.indexOf("thaw-app"), ev.join(","));
    assert.match(lines(s.events).find((l) => l.startsWith("self-thaw-app")) ?? "", /connection lost/);

    // The next run records the killed one as interrupted and succeeds (the app registers again).
    const r = await runSitekeep(["site", "backup", "--json", "--config", s.config], { env: s.env });
    assert.equal(r.code, 0, describeRun(r));
    const msgs = await runSitekeep(["site", "messages", "--json", "--config", s.config], { env: s.env });
    const ids = (JSON.parse(msgs.stdout) as { message_id: number }[]).map((m) => m.message_id);
    assert.ok(ids.includes(5021), `5021 for the killed run in ${ids.join(",")}`);
    assert.equal(ids.at(-1), 5035);
  } finally {
    app.kill();
    await tmp.cleanup();
  }
});

test("a socket writer that thawed itself at its deadline fails the run: nothing read after that is committed", async () => {
  const tmp = await tempDir("socket-writer-deadline");
  // The app gets its deadline (maxFreeze 2s) when it is frozen; the next writer then takes 3 s to
  // freeze, so the app thaws itself before the frozen pass even starts.
  const s = setup(
    tmp.path,
    `  - { name: app, socket: true, timeout: 20s }
  - { name: slow, freeze: "sleep 3; echo freeze-slow >> EVENTS", thaw: "echo thaw-slow >> EVENTS", timeout: 10s }`,
  );
  writeFileSync(s.config, readFileSync(s.config, "utf8").replace("backup:\n", "backup:\n  maxFreeze: 2s\n"));
  const app = startApp(s.socket, "app", s.events);
  try {
    await waitFor(() => lines(s.events).includes("ready-app"), 15_000, "the app to start");
    const r = await runSitekeep(["site", "backup", "--json", "--config", s.config], { env: s.env });
    assert.notEqual(r.code, 0, describeRun(r));
    const out = JSON.parse(r.stdout) as { status: string; message_id: number; snapshot_id?: string; error: { message: string } };
    assert.equal(out.status, "failed");
    assert.equal(out.snapshot_id, undefined);
    assert.ok([5012, 5013].includes(out.message_id), `message ${out.message_id}: ${out.error.message}`);
    assert.ok(lines(s.events).some((l) => l.startsWith("self-thaw-app") && /deadline passed/.test(l)), lines(s.events).join(","));
    const snaps = await runSitekeep(["-r", join(tmp.path, "dest"), "snapshots", "--json"], { env: s.env });
    assert.deepEqual(JSON.parse(snaps.stdout), [], "nothing committed");
  } finally {
    app.kill();
    await tmp.cleanup();
  }
});
