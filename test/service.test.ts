// The service (`sitekeep serve`) run in-process against real folders, a real SMTP server
// (smtp-server) and a real webhook receiver (node:http) on 127.0.0.1, through its HTTP API:
// the cron schedule (with a seconds field) runs on time and never overlaps, catch-up at start,
// alerts raised, delivered and closed, the retention-window watch on an injected clock, /metrics as
// strict Prometheus text, reload refusing a bad control file, bearer-token auth and routing,
// backup.maxDuration stopping a run safely, and stopping the service during a run.
import { after, test } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import { createServer as createHttpServer, type Server as HttpServer } from "node:http";
import { type AddressInfo, createConnection } from "node:net";
import { join } from "node:path";
import Database from "better-sqlite3";
import { SMTPServer } from "smtp-server";
import { stringify } from "yaml";
import { SiteService } from "../src/service/service.js";
import type { Clock } from "../src/service/scheduler.js";
import { type AlertRow, type MessageRow, type NotificationRow, type RunRow, StateStore } from "../src/site/state.js";
import { type TempDir, tempDir } from "./helpers/run.js";

// In-process runs read these from process.env (scrypt cost of new repositories; the cache).
process.env.SITEKEEP_SCRYPT_N = "1024";

const SITE = "PS1";
const PASSWORD = "service-test-pw";

const roots: TempDir[] = [];
const running = new Set<Served>();
after(async () => {
  for (const s of running) await s.stop();
  for (const r of roots) await r.cleanup();
});

// ---- fixtures -----------------------------------------------------------------------------------

interface Site {
  root: string;
  data: string;
  dest: string;
  state: string;
  /** Where the writers append freeze-X / thaw-X lines. */
  events: string;
  config: string;
  env: NodeJS.ProcessEnv;
}

interface WriterSpec {
  name: string;
  freeze: string;
  thaw: string;
  timeout?: string;
}

type Doc = Record<string, unknown> & { backup?: Record<string, unknown>; service?: Record<string, unknown> };

async function makeSite(label: string): Promise<Site> {
  const tmp = await tempDir(`service-${label}`);
  roots.push(tmp);
  const root = tmp.path;
  const site: Site = {
    root,
    data: join(root, "data"),
    dest: join(root, "dest"),
    state: join(root, "state"),
    events: join(root, "EVENTS"),
    config: join(root, "sitekeep.yaml"),
    // The password reaches the service only through its env option, never process.env.
    env: { ...process.env, SITEKEEP_PASSWORD: PASSWORD, SITEKEEP_CACHE_DIR: join(root, "cache") },
  };
  for (const d of [join(site.data, "docs"), site.dest, site.state]) fs.mkdirSync(d, { recursive: true });
  for (let i = 0; i < 4; i++) fs.writeFileSync(join(site.data, "docs", `doc${i}.txt`), `document ${i}\n`.repeat(200 + i));
  return site;
}

/** A writer that records its freeze and thaw in the events file (and runs `then` after freezing). */
function writer(site: Site, name: string, then?: string): WriterSpec {
  return { name, freeze: `echo freeze-${name} >> ${site.events}${then ? `; ${then}` : ""}`, thaw: `echo thaw-${name} >> ${site.events}`, timeout: "60s" };
}

/** Writes the control file: the site's folder into its destination, plus `extra` (backup and service merged). */
function writeConfig(site: Site, extra: Doc = {}): void {
  const { backup, service, ...rest } = extra;
  const doc = {
    site: SITE,
    stateDir: site.state,
    backup: { destination: site.dest, ...backup },
    files: [{ path: site.data }],
    service: { listen: "127.0.0.1:0", ...service },
    ...rest,
  };
  fs.writeFileSync(site.config, stringify(doc, { lineWidth: 0 }));
}

function events(site: Site): string[] {
  return fs.existsSync(site.events) ? fs.readFileSync(site.events, "utf8").split("\n").filter(Boolean) : [];
}

// ---- the service and its API --------------------------------------------------------------------

interface ApiResponse<T = unknown> {
  status: number;
  headers: Headers;
  body: T;
  text: string;
}

interface Served {
  svc: SiteService;
  site: Site;
  logs: Record<string, unknown>[];
  api<T = unknown>(method: string, path: string, opts?: { body?: unknown; auth?: string | null }): Promise<ApiResponse<T>>;
  stop(): Promise<void>;
}

async function serve(site: Site, opts: { clock?: Clock; watchIntervalMs?: number } = {}): Promise<Served> {
  const logs: Record<string, unknown>[] = [];
  const svc = await SiteService.start({
    configPath: site.config,
    listen: "127.0.0.1:0",
    env: site.env,
    watchIntervalMs: opts.watchIntervalMs ?? 200,
    deliver: { retries: 0, backoffMs: 10 },
    log: (e) => logs.push(e),
    ...(opts.clock ? { clock: opts.clock } : {}),
  });
  let stopped = false;
  const served: Served = {
    svc,
    site,
    logs,
    async api<T>(method: string, path: string, o: { body?: unknown; auth?: string | null } = {}): Promise<ApiResponse<T>> {
      const headers: Record<string, string> = {};
      const auth = o.auth === undefined ? `Bearer ${svc.token}` : o.auth;
      if (auth !== null) headers.authorization = auth;
      if (o.body !== undefined) headers["content-type"] = "application/json";
      const res = await fetch(svc.url + path, { method, headers, ...(o.body !== undefined ? { body: JSON.stringify(o.body) } : {}) });
      const text = await res.text();
      let body: unknown = text;
      if ((res.headers.get("content-type") ?? "").startsWith("application/json")) body = JSON.parse(text);
      return { status: res.status, headers: res.headers, body: body as T, text };
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      running.delete(served);
      await svc.stop();
    },
  };
  running.add(served);
  return served;
}

type RunWithMessages = RunRow & { messages: MessageRow[] };
type AlertWithNotes = AlertRow & { notifications: NotificationRow[] };
interface Status {
  healthy: boolean;
  windowExceeded: boolean;
  active: { kind: string; runId: string } | null;
  next_runs: Record<string, string | null>;
  openAlerts: AlertRow[];
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

async function waitFor<T>(what: string, fn: () => Promise<T | undefined> | T | undefined, timeoutMs = 10_000, everyMs = 50): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(everyMs);
  }
}

/** Waits until a run has finished and the service is idle again; returns the run with its messages. */
async function finished(h: Served, runId: string, timeoutMs = 15_000): Promise<RunWithMessages> {
  return waitFor(
    `run ${runId} to finish`,
    async () => {
      const r = await h.api<RunWithMessages>("GET", `/api/runs/${runId}`);
      if (r.status !== 200 || r.body.status === "running" || h.svc.activeRun) return undefined;
      return r.body;
    },
    timeoutMs,
  );
}

async function runNow(h: Served): Promise<RunWithMessages> {
  const r = await h.api<{ run_id: string; kind: string }>("POST", "/api/runs", { body: { kind: "backup" } });
  assert.equal(r.status, 202, r.text);
  assert.equal(r.body.kind, "backup");
  return finished(h, r.body.run_id);
}

function messageIds(run: RunWithMessages): number[] {
  return run.messages.map((m) => m.message_id);
}

async function alerts(h: Served, all = false): Promise<AlertWithNotes[]> {
  const r = await h.api<AlertWithNotes[]>("GET", all ? "/api/alerts?all" : "/api/alerts");
  assert.equal(r.status, 200, r.text);
  return r.body;
}

function describeLogs(h: Served): string {
  return h.logs.map((l) => JSON.stringify(l)).join("\n");
}

/** No two runs' [start, end] intervals overlap. */
function assertNoOverlap(runs: RunRow[]): void {
  const sorted = [...runs].sort((a, b) => Date.parse(a.started_at) - Date.parse(b.started_at));
  for (let i = 1; i < sorted.length; i++) {
    const prev = sorted[i - 1];
    assert.ok(prev.finished_at, `run ${prev.id} has not finished but ${sorted[i].id} started`);
    assert.ok(Date.parse(prev.finished_at) <= Date.parse(sorted[i].started_at), `runs overlap: ${prev.id} ${prev.started_at}..${prev.finished_at} and ${sorted[i].id} from ${sorted[i].started_at}`);
  }
}

/** The events of writers frozen first-to-last and thawed last-to-first, any number of rounds. */
function assertRoundsThawed(ev: string[], names: string[]): void {
  const round = [...names.map((n) => `freeze-${n}`), ...[...names].reverse().map((n) => `thaw-${n}`)];
  assert.ok(ev.length > 0 && ev.length % round.length === 0, `whole freeze/thaw rounds: ${ev.join(", ")}`);
  for (let i = 0; i < ev.length; i++) assert.equal(ev[i], round[i % round.length], `every frozen writer thawed before the next freeze: ${ev.join(", ")}`);
}

function processGone(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return false;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "ESRCH";
  }
}

// ---- receivers ----------------------------------------------------------------------------------

interface Mail {
  subject: string;
  body: string;
  raw: string;
  to: string[];
}

async function smtpReceiver(): Promise<{ port: number; mails: Mail[]; close(): Promise<void> }> {
  const mails: Mail[] = [];
  const server = new SMTPServer({
    logger: false,
    disableReverseLookup: true,
    authOptional: true,
    disabledCommands: ["STARTTLS"],
    onData(stream, session, cb) {
      const chunks: Buffer[] = [];
      stream.on("data", (c: Buffer) => chunks.push(c));
      stream.on("end", () => {
        const raw = Buffer.concat(chunks).toString("utf8");
        mails.push({ raw, subject: /^Subject: (.*)\r?$/m.exec(raw)?.[1] ?? "", body: decodeBody(raw), to: session.envelope.rcptTo.map((r) => r.address) });
        cb();
      });
    },
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.server.address() as AddressInfo).port;
  return { port, mails, close: () => new Promise<void>((resolve) => server.close(() => resolve())) };
}

/** Undo quoted-printable soft breaks and escapes (nodemailer may encode a long body line). */
function decodeBody(raw: string): string {
  if (!/Content-Transfer-Encoding: quoted-printable/i.test(raw)) return raw;
  return raw.replace(/=\r?\n/g, "").replace(/=([0-9A-F]{2})/g, (_, h: string) => String.fromCharCode(parseInt(h, 16)));
}

interface Hook {
  site: string;
  alert_id: number;
  kind: string;
  severity: string;
  state: "opened" | "closed";
  text: string;
  message_id: number | null;
  run_id: string | null;
  time: string;
}

async function webhookReceiver(): Promise<{ url: string; hooks: Hook[]; close(): Promise<void> }> {
  const hooks: Hook[] = [];
  const server: HttpServer = createHttpServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      assert.equal(req.method, "POST");
      assert.match(req.headers["content-type"] ?? "", /^application\/json/);
      hooks.push(JSON.parse(Buffer.concat(chunks).toString("utf8")) as Hook);
      res.writeHead(200).end("ok");
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/hooks/sitekeep`,
    hooks,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

// ---- a strict Prometheus text-format (0.0.4) parser ---------------------------------------------

interface Sample {
  labels: Record<string, string>;
  value: number;
}

interface Family {
  type: string;
  help?: string;
  samples: Sample[];
}

const NAME = "[a-zA-Z_:][a-zA-Z0-9_:]*";

function parseLabels(s: string, where: string): Record<string, string> {
  const labels: Record<string, string> = {};
  const re = /\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"\s*(,|$)/y;
  let pos = 0;
  while (pos < s.length) {
    re.lastIndex = pos;
    const m = re.exec(s);
    if (!m) throw new Error(`${where}: bad label set {${s}} at ${pos}`);
    if (m[1] in labels) throw new Error(`${where}: label ${m[1]} twice`);
    labels[m[1]] = m[2].replace(/\\(.)/g, (_, c: string) => (c === "n" ? "\n" : c));
    pos = re.lastIndex;
    if (m[3] === "" && pos < s.length) throw new Error(`${where}: junk after labels`);
  }
  return labels;
}

function parseValue(v: string, where: string): number {
  if (v === "NaN") return NaN;
  if (v === "+Inf" || v === "Inf") return Infinity;
  if (v === "-Inf") return -Infinity;
  if (!/^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(v)) throw new Error(`${where}: value ${JSON.stringify(v)} is not a number`);
  return Number(v);
}

/** Parses the exposition text; throws on anything the format does not allow. */
function parsePrometheus(text: string): Map<string, Family> {
  const families = new Map<string, Family>();
  const seen = new Set<string>();
  let current: string | undefined;
  const done = new Set<string>();
  assert.ok(text.endsWith("\n"), "the exposition ends with a line feed");
  const lines = text.slice(0, -1).split("\n");
  lines.forEach((line, i) => {
    const where = `line ${i + 1} ${JSON.stringify(line)}`;
    if (line.startsWith("#")) {
      const m = new RegExp(`^# (HELP|TYPE) (${NAME})(?: (.*))?$`).exec(line);
      if (!m) throw new Error(`${where}: a comment other than HELP or TYPE`);
      const [, kw, name, rest = ""] = m;
      const fam = families.get(name) ?? { type: "", samples: [] };
      if (fam.samples.length) throw new Error(`${where}: ${kw} after the metric's samples`);
      if (kw === "TYPE") {
        if (fam.type) throw new Error(`${where}: second TYPE for ${name}`);
        if (!["counter", "gauge", "histogram", "summary", "untyped"].includes(rest)) throw new Error(`${where}: unknown type ${rest}`);
        fam.type = rest;
      } else {
        if (fam.help !== undefined) throw new Error(`${where}: second HELP for ${name}`);
        if (!rest) throw new Error(`${where}: empty HELP`);
        fam.help = rest;
      }
      families.set(name, fam);
      return;
    }
    if (line.trim() === "") throw new Error(`${where}: empty line`);
    const m = new RegExp(`^(${NAME})(?:\\{(.*)\\})? (\\S+)(?: (-?\\d+))?$`).exec(line);
    if (!m) throw new Error(`${where}: not a sample line`);
    const [, name, labelText = "", value] = m;
    const base = families.has(name) ? name : name.replace(/_(bucket|sum|count)$/, "");
    const fam = families.get(base);
    if (!fam?.type) throw new Error(`${where}: sample of ${name} without a TYPE line`);
    if (base !== name && !["histogram", "summary"].includes(fam.type)) throw new Error(`${where}: ${name} is not declared`);
    if (current !== base) {
      if (done.has(base)) throw new Error(`${where}: samples of ${base} are not together`);
      if (current) done.add(current);
      current = base;
    }
    const labels = parseLabels(labelText, where);
    const key = `${name}{${Object.entries(labels).sort().map(([k, v]) => `${k}=${v}`).join(",")}}`;
    if (seen.has(key)) throw new Error(`${where}: duplicate series ${key}`);
    seen.add(key);
    fam.samples.push({ labels, value: parseValue(value, where) });
  });
  return families;
}

function sampleOf(f: Map<string, Family>, name: string, labels: Record<string, string> = {}): number {
  const fam = f.get(name);
  assert.ok(fam, `metric ${name} exists`);
  const s = fam.samples.filter((x) => Object.entries(labels).every(([k, v]) => x.labels[k] === v));
  assert.equal(s.length, 1, `one ${name} series with ${JSON.stringify(labels)}: ${JSON.stringify(fam.samples)}`);
  return s[0].value;
}

// ---- 1. the schedule ----------------------------------------------------------------------------

test("a 6-field schedule (every 2 s) runs on time: a succeeded run with 5035 within 5 s, runs never overlap", async () => {
  const site = await makeSite("schedule");
  writeConfig(site, { backup: { schedule: "*/2 * * * * *" }, service: { catchUp: false } });
  const t0 = Date.now();
  const h = await serve(site);
  try {
    const st = await h.api<Status>("GET", "/api/status");
    const next = Date.parse(st.body.next_runs.backup ?? "");
    assert.ok(next > t0 && next <= Date.now() + 2000, `next backup within 2 s: ${st.body.next_runs.backup}`);
    assert.equal(st.body.active, null, "catchUp: false starts nothing at start");

    const first = await waitFor(
      "a succeeded scheduled run",
      async () => (await h.api<RunRow[]>("GET", "/api/runs")).body.find((r) => r.kind === "backup" && r.status === "succeeded"),
      5000,
    );
    assert.ok(Date.now() - t0 <= 5500, `the first run succeeded ${Date.now() - t0} ms after start`);
    // Started by the cron tick: just after an even second.
    assert.ok(Date.parse(first.started_at) % 2000 < 1000, `started on a tick: ${first.started_at}`);
    const detail = await h.api<RunWithMessages>("GET", `/api/runs/${first.id}`);
    assert.equal(detail.status, 200);
    assert.equal(messageIds(detail.body).at(0), 5055);
    assert.equal(messageIds(detail.body).at(-1), 5035, JSON.stringify(detail.body.messages));
    assert.ok(detail.body.snapshot_id, "the run names its snapshot");
    assert.ok(!h.logs.some((l) => /missed/.test(String(l.msg))), "no catch-up run");

    // The schedule goes on: a second run, after the first one ended.
    await waitFor("a second succeeded run", async () => {
      const runs = (await h.api<RunRow[]>("GET", "/api/runs")).body.filter((r) => r.status === "succeeded");
      return runs.length >= 2 ? runs : undefined;
    }, 6000);
    await h.stop();
    const store = StateStore.open(site.state);
    try {
      const runs = store.runs(SITE, 100, "backup");
      assert.ok(runs.every((r) => r.status !== "running"), "nothing left running after stop");
      assertNoOverlap(runs);
    } finally {
      store.close();
    }
  } finally {
    await h.stop();
  }
});

test("runs never overlap: run-now while a run is active is 409 with a clear message; scheduled ticks are skipped", async () => {
  const site = await makeSite("overlap");
  writeConfig(site, { backup: { schedule: "*/2 * * * * *" }, writers: [writer(site, "a", "sleep 3")] });
  const h = await serve(site);
  try {
    // No run ever: catch-up (default true) starts one at once.
    const active = h.svc.activeRun;
    assert.ok(active, "a catch-up run is active right after start");
    await waitFor("the writer to be freezing", () => (events(site).includes("freeze-a") ? true : undefined), 8000);

    const busy = await h.api<{ error: { code: string; message: string; hint?: string } }>("POST", "/api/runs", { body: { kind: "backup" } });
    assert.equal(busy.status, 409, busy.text);
    assert.equal(busy.body.error.code, "service.busy");
    assert.match(busy.body.error.message, new RegExp(`a backup \\(run ${active.runId}\\) is already running`));
    assert.match(busy.body.error.hint ?? "", /never overlap/);
    const drill = await h.api("POST", "/api/drills");
    assert.equal(drill.status, 409, "a drill is refused too while a backup runs");
    const status = await h.api<Status>("GET", "/api/status");
    assert.equal(status.body.active?.kind, "backup");
    assert.equal(status.body.active?.runId, active.runId);
    assert.equal((status.body.active as { progress?: { phase: string } } | null)?.progress?.phase, "frozen", "the active run reports its phase (the writer holds it frozen)");

    await waitFor("a scheduled tick to be skipped", () => (h.logs.some((l) => /^scheduled backup skipped: a backup \(run .*\) is already running/.test(String(l.msg))) ? true : undefined), 5000);
    const run = await finished(h, active.runId);
    assert.equal(run.status, "succeeded", JSON.stringify(run.messages));
    await h.stop();
    const store = StateStore.open(site.state);
    try {
      assertNoOverlap(store.runs(SITE, 100, "backup"));
    } finally {
      store.close();
    }
    assertRoundsThawed(events(site), ["a"]);
  } finally {
    await h.stop();
  }
});

test("catch-up at start: a run missed since long ago runs once with catchUp true, not with catchUp false", async () => {
  const site = await makeSite("catchup");
  // The last run was years ago; the daily 03:00 backup was missed since.
  StateStore.open(site.state).close();
  const db = new Database(join(site.state, "state.db"));
  db.prepare("INSERT INTO runs (id, site, kind, status, started_at, finished_at, pid) VALUES (?, ?, 'backup', 'succeeded', ?, ?, 1)").run("20200101T030000Z-old000", SITE, "2020-01-01T03:00:00.000Z", "2020-01-01T03:01:00.000Z");
  db.close();

  writeConfig(site, { backup: { schedule: "0 0 3 * * *" }, service: { catchUp: false } });
  let h = await serve(site);
  try {
    assert.equal(h.svc.activeRun, undefined, "catchUp: false: nothing runs at start");
    await sleep(400);
    const runs = (await h.api<RunRow[]>("GET", "/api/runs")).body;
    assert.deepEqual(runs.map((r) => r.id), ["20200101T030000Z-old000"], "no run was started");
    assert.ok(!h.logs.some((l) => /missed/.test(String(l.msg))), describeLogs(h));
  } finally {
    await h.stop();
  }

  writeConfig(site, { backup: { schedule: "0 0 3 * * *" }, service: { catchUp: true } });
  h = await serve(site);
  try {
    const active = h.svc.activeRun;
    assert.ok(active, "catchUp: true: the missed backup runs at once");
    assert.ok(h.logs.some((l) => /missed while the service was down/.test(String(l.msg))), describeLogs(h));
    const run = await finished(h, active.runId);
    assert.equal(run.status, "succeeded", JSON.stringify(run.messages));
    await sleep(300);
    const runs = (await h.api<RunRow[]>("GET", "/api/runs")).body;
    assert.equal(runs.length, 2, `once, never several: ${runs.map((r) => r.id).join(", ")}`);
  } finally {
    await h.stop();
  }

  // Restarted right after that run: nothing was missed, nothing runs.
  h = await serve(site);
  try {
    assert.equal(h.svc.activeRun, undefined, "no catch-up when the last run is newer than the last due time");
  } finally {
    await h.stop();
  }
});

// ---- 2. alerts: raised, delivered, closed --------------------------------------------------------

/** A site whose destination folder is missing, alerting by email and webhook to receivers here. */
async function siteWithoutDestination(name: string) {
  const smtp = await smtpReceiver();
  const hook = await webhookReceiver();
  const site = await makeSite(name);
  fs.rmSync(site.dest, { recursive: true });
  writeConfig(site, {
    alerts: {
      email: { to: ["ops@example.com"], from: "sitekeep@example.com", smtp: `smtp://127.0.0.1:${smtp.port}?starttls=never` },
      webhook: { url: hook.url },
    },
  });
  return { smtp, hook, site };
}

test("a missing destination: critical alert 5003, email and webhook delivered; the next success closes it and says so", async () => {
  const { smtp, hook, site } = await siteWithoutDestination("alerts");
  const h = await serve(site);
  try {
    const failed = await runNow(h);
    assert.equal(failed.status, "failed");
    assert.deepEqual(messageIds(failed), [5055, 5003]);
    assert.equal(failed.messages[1].severity, "E");

    const open = (await alerts(h)).filter((a) => a.kind === "backup-failed");
    assert.equal(open.length, 1, JSON.stringify(open));
    const alert = open[0];
    assert.equal(alert.severity, "critical");
    assert.equal(alert.message_id, 5003);
    assert.equal(alert.run_id, failed.id);
    assert.equal(alert.closed_at, null);
    assert.match(alert.text, /does not exist/);

    const mail = await waitFor("the alert email", () => smtp.mails.find((m) => /CRITICAL: backup failed \(5003\)/.test(m.subject)));
    assert.equal(mail.subject, `[Sitekeep ${SITE}] CRITICAL: backup failed (5003)`);
    assert.deepEqual(mail.to, ["ops@example.com"]);
    assert.match(mail.body, new RegExp(`^Site: +${SITE}$`, "m"));
    assert.match(mail.body, /^Message ID: +5003$/m);
    assert.match(mail.body, new RegExp(`^Run ID: +${failed.id}$`, "m"));
    assert.ok(mail.body.includes(site.dest), "the text names the missing folder");

    const opened = await waitFor("the alert webhook", () => hook.hooks.find((x) => x.kind === "backup-failed" && x.state === "opened"));
    assert.deepEqual(
      { site: opened.site, alert_id: opened.alert_id, severity: opened.severity, message_id: opened.message_id, run_id: opened.run_id },
      { site: SITE, alert_id: alert.id, severity: "critical", message_id: 5003, run_id: failed.id },
    );
    // Both deliveries are recorded with the alert.
    const notes = await waitFor("both deliveries recorded", async () => {
      const a = (await alerts(h)).find((x) => x.id === alert.id);
      const ok = new Set(a?.notifications.filter((n) => n.state === "opened" && n.ok === 1).map((n) => n.channel));
      return ok.has("email") && ok.has("webhook") ? a?.notifications : undefined;
    });
    assert.ok(notes.every((n) => n.ok === 1 && n.attempts === 1), JSON.stringify(notes));

    // The folder appears (the share is mounted): the next run succeeds and closes the alert.
    fs.mkdirSync(site.dest);
    const ok = await runNow(h);
    assert.equal(ok.status, "succeeded", JSON.stringify(ok.messages));
    assert.equal(messageIds(ok).at(-1), 5035);
    assert.ok(!(await alerts(h)).some((a) => a.kind === "backup-failed"), "no open backup-failed alert");
    const closed = (await alerts(h, true)).find((a) => a.id === alert.id);
    assert.ok(closed?.closed_at, `closed_at is set: ${JSON.stringify(closed)}`);
    assert.equal(closed.closed_by, ok.id, "closed by the successful run");

    const resolved = await waitFor("the RESOLVED email", () => smtp.mails.find((m) => /RESOLVED: backup failed \(5003\)/.test(m.subject)));
    assert.match(resolved.body, /closed/);
    const closedHook = await waitFor("the closed webhook", () => hook.hooks.find((x) => x.kind === "backup-failed" && x.state === "closed"));
    assert.equal(closedHook.alert_id, alert.id);
    assert.equal(closedHook.message_id, 5003);
  } finally {
    await h.stop();
    await smtp.close();
    await hook.close();
  }
});

test("each opening and closing is notified once per channel, though the start-up watch, the periodic watch and the run all dispatch", async () => {
  const { smtp, hook, site } = await siteWithoutDestination("once");
  const h = await serve(site);
  try {
    // At start: "no good backup yet" (5023) opens; a run fails (5003), then one succeeds: both close.
    assert.equal((await runNow(h)).status, "failed");
    fs.mkdirSync(site.dest);
    assert.equal((await runNow(h)).status, "succeeded");
    const all = await waitFor("every opening and closing delivered", async () => {
      const a = await alerts(h, true);
      return a.length === 2 && a.every((x) => x.closed_at && x.notified_close === 1) ? a : undefined;
    });
    await sleep(600); // a few more watch rounds
    const sent: Record<string, number> = {};
    for (const m of smtp.mails) {
      const k = `email ${/^X-Sitekeep-Alert: (.*?)\r?$/m.exec(m.raw)?.[1]}`;
      sent[k] = (sent[k] ?? 0) + 1;
    }
    for (const x of hook.hooks) {
      const k = `webhook ${x.alert_id} ${x.kind} ${x.state}`;
      sent[k] = (sent[k] ?? 0) + 1;
    }
    const expected: Record<string, number> = {};
    for (const a of all) for (const ch of ["email", "webhook"]) for (const st of ["opened", "closed"]) expected[`${ch} ${a.id} ${a.kind} ${st}`] = 1;
    assert.deepEqual(sent, expected, "received: each alert's opening and closing once on each channel");
    const recorded = (await alerts(h, true)).flatMap((a) => a.notifications.map((n) => `${n.channel} ${a.id} ${a.kind} ${n.state}`)).sort();
    assert.deepEqual(recorded, Object.keys(expected).sort(), "recorded: one delivery per alert, state and channel");
  } finally {
    await h.stop();
    await smtp.close();
    await hook.close();
  }
});

// ---- 3. the retention window on an injected clock -----------------------------------------------

/** A backup, then the service's clock moved 2 h on (window 1h): the warning opens; then a fresh backup. */
async function windowScenario(label: string): Promise<{ h: Served; alert: AlertWithNotes; fresh: RunWithMessages }> {
  const site = await makeSite(label);
  writeConfig(site, { backup: { retentionWindow: "1h" } });
  let offsetMs = 0;
  const clock: Clock = { now: () => new Date(Date.now() + offsetMs) };
  const h = await serve(site, { clock, watchIntervalMs: 100 });
  // No good backup yet: the window is already exceeded; the first backup closes that.
  const first = await runNow(h);
  assert.equal(first.status, "succeeded", JSON.stringify(first.messages));
  assert.ok(!(await alerts(h)).some((a) => a.kind === "retention-window-exceeded"), "a fresh backup: no window alert");
  let st = await h.api<Status>("GET", "/api/status");
  assert.equal(st.body.windowExceeded, false);

  // Two hours pass (on the service's clock only): the periodic watch opens the warning.
  offsetMs = 2 * 3600_000;
  const t = Date.now();
  const alert = await waitFor("the retention-window alert", async () => (await alerts(h)).find((a) => a.kind === "retention-window-exceeded"), 3000);
  assert.ok(Date.now() - t < 3000, "no waiting in real time");
  assert.equal(alert.severity, "warning");
  assert.equal(alert.message_id, 5023);
  assert.match(alert.text, /older than the retention window 1h/);
  const msgs = (await h.api<MessageRow[]>("GET", "/api/messages")).body;
  assert.ok(msgs.some((m) => m.message_id === 5023 && m.severity === "W" && /older than the retention window/.test(m.text)), JSON.stringify(msgs.slice(0, 5)));
  st = await h.api<Status>("GET", "/api/status");
  assert.equal(st.body.windowExceeded, true);
  assert.equal(st.body.healthy, false);
  assert.ok(h.logs.some((l) => l.level === "warn" && /older than the retention window/.test(String(l.msg))));

  const fresh = await runNow(h);
  assert.equal(fresh.status, "succeeded", JSON.stringify(fresh.messages));
  return { h, alert, fresh };
}

test("retention window: moving the clock past it opens warning 5023 without waiting; a fresh backup closes it", async (t) => {
  const { h, alert, fresh } = await windowScenario("window");
  t.after(() => h.stop());
  const closed = (await alerts(h, true)).find((a) => a.id === alert.id);
  assert.ok(closed?.closed_at, "the window alert is closed");
  assert.equal(closed.closed_by, fresh.id, "closed by the fresh backup");
});

test("retention window on the injected clock: after a fresh backup the alert stays closed and status says fresh", async (t) => {
  const { h } = await windowScenario("window-stays");
  t.after(() => h.stop());
  await sleep(400); // several watch rounds on the advanced clock
  const reopened = (await alerts(h)).filter((a) => a.kind === "retention-window-exceeded");
  assert.deepEqual(reopened.map((a) => ({ id: a.id, text: a.text })), [], "the backup made at the clock's now counts as fresh");
  const st = await h.api<Status>("GET", "/api/status");
  assert.equal(st.body.windowExceeded, false, "status agrees: the newest good backup is fresh");
});

// ---- 4. /metrics ----------------------------------------------------------------------------------

test("GET /metrics is strict Prometheus text with the last success, last run, active alerts and next run", async () => {
  const site = await makeSite("metrics");
  fs.rmSync(site.dest, { recursive: true });
  writeConfig(site, { backup: { schedule: "0 0 3 * * *" }, service: { catchUp: false } });
  const h = await serve(site);
  try {
    const scrape = async (): Promise<Map<string, Family>> => {
      const r = await h.api<string>("GET", "/metrics");
      assert.equal(r.status, 200);
      assert.match(r.headers.get("content-type") ?? "", /^text\/plain; version=0\.0\.4/);
      const f = parsePrometheus(r.text);
      for (const [name, fam] of f) {
        assert.ok(fam.help, `${name} has HELP`);
        for (const s of fam.samples) assert.equal(s.labels.site, SITE, `${name} has the site label`);
      }
      return f;
    };

    // Before any run.
    let m = await scrape();
    assert.equal(sampleOf(m, "sitekeep_last_success_timestamp_seconds"), 0, "never succeeded: 0");
    const next = sampleOf(m, "sitekeep_next_run_timestamp_seconds", { job: "backup" });
    assert.equal(next, (h.svc.nextRuns().backup as Date).getTime() / 1000);
    assert.ok(next > Date.now() / 1000 && next <= Date.now() / 1000 + 86_400, `the next 03:00 is within a day: ${next}`);
    assert.equal(new Date(next * 1000).getHours(), 3);

    // A failed run: a critical alert, last run not successful.
    const bad = await runNow(h);
    assert.equal(bad.status, "failed");
    m = await scrape();
    assert.equal(m.get("sitekeep_alerts_active")?.type, "gauge");
    assert.equal(sampleOf(m, "sitekeep_alerts_active", { severity: "critical" }), 1);
    assert.equal(sampleOf(m, "sitekeep_last_run_success"), 0);
    assert.equal(sampleOf(m, "sitekeep_last_success_timestamp_seconds"), 0);

    // A good run.
    fs.mkdirSync(site.dest);
    const before = Date.now() / 1000;
    const good = await runNow(h);
    assert.equal(good.status, "succeeded", JSON.stringify(good.messages));
    m = await scrape();
    const last = sampleOf(m, "sitekeep_last_success_timestamp_seconds");
    assert.ok(last >= before - 1 && last <= Date.now() / 1000 + 1, `last success is now: ${last}`);
    assert.equal(last, Date.parse(good.finished_at as string) / 1000);
    assert.equal(sampleOf(m, "sitekeep_last_run_success"), 1);
    assert.equal(sampleOf(m, "sitekeep_alerts_active", { severity: "critical" }), 0);
    assert.equal(sampleOf(m, "sitekeep_run_active"), 0);
    assert.ok(sampleOf(m, "sitekeep_last_run_duration_seconds") > 0);
    assert.ok(sampleOf(m, "sitekeep_backup_bytes_processed") > 0);
    assert.equal(sampleOf(m, "sitekeep_snapshots"), 1);
    assert.ok(sampleOf(m, "sitekeep_repository_size_bytes") > 0);
    assert.equal(sampleOf(m, "sitekeep_next_run_timestamp_seconds", { job: "backup" }), next);
    for (const [name, fam] of m) for (const s of fam.samples) assert.ok(Number.isFinite(s.value), `${name} is finite`);
  } finally {
    await h.stop();
  }
});

test("the parser is strict: it refuses undeclared metrics, bad values and stray lines", () => {
  const ok = "# HELP a_b A.\n# TYPE a_b gauge\na_b{x=\"1\",y=\"q\\\"\"} 1.5e3\n";
  assert.equal(sampleOf(parsePrometheus(ok), "a_b", { y: 'q"' }), 1500);
  for (const bad of [
    "a 1\n",
    "# TYPE a gauge\na one\n",
    "# TYPE a gauge\na{x=1} 1\n",
    "# TYPE a gauge\n\na 1\n",
    "# TYPE a gauge\n# hello\na 1\n",
    "# TYPE a gauge\na 1",
    "# TYPE a gauge\na 1\na 2\n",
    "# TYPE a gauge\n# TYPE b gauge\na 1\nb 1\na{x=\"2\"} 1\n",
  ]) {
    assert.throws(() => parsePrometheus(bad), Error, JSON.stringify(bad));
  }
});

test("GET /api/snapshots lists the site's snapshots (the repository password comes from the service's env)", async () => {
  const site = await makeSite("snapshots");
  writeConfig(site, {});
  const h = await serve(site);
  try {
    const run = await runNow(h);
    assert.equal(run.status, "succeeded", JSON.stringify(run.messages));
    assert.equal(process.env.SITEKEEP_PASSWORD, undefined, "the password is only in the service's env option");
    const r = await h.api<{ id: string; tags: string[] }[]>("GET", "/api/snapshots");
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(r.body.map((s) => s.id), [run.snapshot_id]);
    assert.ok(r.body[0].tags.includes(`site:${SITE}`));
  } finally {
    await h.stop();
  }
});

test("POST /api/recover: a polled run is 'running' until its report is there, then the deleted file is back", async () => {
  const site = await makeSite("recover-poll");
  writeConfig(site, {});
  const h = await serve(site);
  try {
    const backup = await runNow(h);
    assert.equal(backup.status, "succeeded", JSON.stringify(backup.messages));
    const doc = join(site.data, "docs", "doc1.txt");
    const before = fs.readFileSync(doc);
    fs.unlinkSync(doc);

    const r = await h.api<{ run_id: string; kind: string }>("POST", "/api/recover", { body: { only: ["files"], dryRun: false } });
    assert.equal(r.status, 202, r.text);
    // The console polls like this and reads the first answer that is not "running" as the end.
    // The run's record is finished inside the recovery, before the service keeps its report:
    // an answer in between must still say "running", or the console shows "no report".
    const seen: string[] = [];
    let last: RunWithMessages & { result?: { ok: boolean; dryRun: boolean; items: unknown[] } };
    for (const end = Date.now() + 30_000; ; ) {
      const g = await h.api<typeof last>("GET", `/api/runs/${r.body.run_id}`);
      assert.equal(g.status, 200, g.text);
      last = g.body;
      if (seen.at(-1) !== last.status) seen.push(last.status);
      if (last.status !== "running") break;
      assert.ok(Date.now() < end, "the recovery finished within 30 s");
    }
    assert.ok(last.result, `the first answer that is not "running" (${last.status}) carries the report; statuses seen: ${seen.join(" → ")}`);
    assert.equal(last.status, "succeeded");
    assert.equal(last.result.ok, true, JSON.stringify(last.result));
    assert.equal(last.result.dryRun, false);
    assert.deepEqual(fs.readFileSync(doc), before, "the deleted file is back with the same bytes");
  } finally {
    await h.stop();
  }
});

// ---- 5. reload ------------------------------------------------------------------------------------

test("reload: a bad control file is refused (422, 5002, config-invalid alert) and the old schedule stays; a good one closes the alert", async () => {
  const site = await makeSite("reload");
  writeConfig(site, { backup: { schedule: "0 0 3 * * *" }, service: { catchUp: false } });
  const h = await serve(site);
  try {
    const before = (await h.api<Status>("GET", "/api/status")).body.next_runs.backup;
    assert.ok(before && new Date(before).getHours() === 3, `next run at 03:00: ${before}`);

    // Every 5 s, and a key that does not exist: refused as a whole.
    writeConfig(site, { backup: { schedule: "*/5 * * * * *", maxDurationn: "1h" } });
    const r = h.svc.reload();
    assert.equal(r.ok, false);
    assert.match(r.error ?? "", /unknown key "maxDurationn"/);
    const api = await h.api<{ error: { code: string; message: string } }>("POST", "/api/reload");
    assert.equal(api.status, 422, api.text);
    assert.equal(api.body.error.code, "config.invalid");
    assert.match(api.body.error.message, /maxDurationn/);

    assert.equal(h.svc.config.backup.schedule, "0 0 3 * * *", "the previous control file stays in force");
    assert.equal((await h.api<Status>("GET", "/api/status")).body.next_runs.backup, before, "the schedule is unchanged");
    await sleep(300);
    assert.equal(h.svc.activeRun, undefined, "the refused every-5-s schedule did not start anything");

    const msgs = (await h.api<MessageRow[]>("GET", "/api/messages")).body.filter((m) => m.message_id === 5002);
    assert.equal(msgs.length, 2, "one 5002 per refused reload");
    assert.ok(msgs.every((m) => m.severity === "E" && /Reload refused, the previous control file stays in force/.test(m.text)), JSON.stringify(msgs));
    const open = (await alerts(h)).filter((a) => a.kind === "config-invalid");
    assert.equal(open.length, 1, "one alert for the ongoing condition");
    assert.equal(open[0].message_id, 5002);
    assert.ok(open[0].text.includes(site.config));
    assert.ok(h.logs.some((l) => l.level === "error" && /reload refused/.test(String(l.msg))));

    // Fixed (and changed): accepted, the new schedule is in force, the alert closed.
    writeConfig(site, { backup: { schedule: "0 30 4 * * *" }, service: { catchUp: false } });
    assert.deepEqual(h.svc.reload(), { ok: true });
    const after = (await h.api<Status>("GET", "/api/status")).body.next_runs.backup;
    assert.ok(after && new Date(after).getHours() === 4 && new Date(after).getMinutes() === 30, `next run at 04:30: ${after}`);
    const closed = (await alerts(h, true)).find((a) => a.id === open[0].id);
    assert.ok(closed?.closed_at, "the config-invalid alert is closed");
    assert.equal(closed.closed_by, "reload");
    const again = await h.api<{ reloaded: boolean }>("POST", "/api/reload");
    assert.equal(again.status, 200, again.text);
    assert.deepEqual(again.body, { reloaded: true });
  } finally {
    await h.stop();
  }
});

// ---- 6. auth and routing --------------------------------------------------------------------------

test("API: every endpoint needs the bearer token (401 + WWW-Authenticate); unknown path 404; wrong method 405", async () => {
  const site = await makeSite("auth");
  writeConfig(site, {});
  const h = await serve(site);
  try {
    const endpoints: [string, string, unknown?][] = [
      ["GET", "/api/status"],
      ["GET", "/api/runs"],
      ["POST", "/api/runs", { kind: "backup" }],
      ["GET", "/api/runs/20250101T000000Z-abcdef"],
      ["GET", "/api/messages"],
      ["GET", "/api/alerts"],
      ["GET", "/api/alerts?all"],
      ["POST", "/api/alerts/1/close"],
      ["POST", "/api/alerts/1/postpone", { for: "4h" }],
      ["GET", "/api/snapshots"],
      ["POST", "/api/drills"],
      ["POST", "/api/reload"],
      ["GET", "/metrics"],
      ["GET", "/api/config"],
      ["PUT", "/api/config", { backup: { schedule: "* * * * *" } }],
      ["GET", "/api/schedule/preview?cron=0+2+*+*+*"],
      ["GET", "/api/snapshots/abcd1234/tree"],
      ["GET", "/api/snapshots/abcd1234/file?path=/etc/passwd"],
      ["POST", "/api/snapshots/abcd1234/restore", { paths: ["/x"] }],
      ["GET", "/api/nope"],
      ["DELETE", "/api/status"],
    ];
    const wrong = "x".repeat(h.svc.token.length);
    for (const [method, path, body] of endpoints) {
      for (const auth of [null, `Bearer ${wrong}`, `Bearer ${h.svc.token}x`, `Basic ${Buffer.from(`u:${h.svc.token}`).toString("base64")}`, h.svc.token, "Bearer"]) {
        const r = await h.api<{ error: { code: string } }>(method, path, { body, auth });
        const what = `${method} ${path} with ${auth === null ? "no Authorization" : JSON.stringify(auth.slice(0, 12))}`;
        assert.equal(r.status, 401, what);
        assert.equal(r.headers.get("www-authenticate"), 'Bearer realm="sitekeep"', what);
        assert.equal(r.body.error.code, "api.unauthorized", what);
        assert.ok(!r.text.includes(h.svc.token), "the answer does not leak the token");
      }
    }
    const runs = StateStore.open(site.state);
    try {
      assert.deepEqual(runs.runs(SITE), [], "no unauthorized request started anything");
    } finally {
      runs.close();
    }
    assert.equal(h.svc.activeRun, undefined);

    for (const path of ["/api/nope", "/api/runs/x/y", "/metrics/x", "/api/alerts/abc/close"]) {
      const r = await h.api<{ error: { code: string } }>("GET", path);
      assert.equal(r.status, 404, path);
      assert.equal(r.body.error.code, "api.notfound", path);
    }
    for (const [method, path, allowed] of [
      ["DELETE", "/api/status", "GET"],
      ["GET", "/api/reload", "POST"],
      ["PUT", "/api/runs", "GET or POST"],
      ["GET", "/api/drills", "POST"],
      ["POST", "/metrics", "GET"],
      ["GET", "/api/alerts/1/close", "POST"],
    ]) {
      const r = await h.api<{ error: { code: string; message: string; hint: string } }>(method, path);
      assert.equal(r.status, 405, `${method} ${path}`);
      assert.equal(r.body.error.code, "api.method");
      assert.equal(r.body.error.hint, `use ${allowed}`);
    }
    assert.equal((await h.api("GET", "/api/status")).status, 200);
  } finally {
    await h.stop();
  }
});

// ---- 7. maxDuration -------------------------------------------------------------------------------

test("backup.maxDuration: a run still going after 2 s is stopped, reported with 5021 naming maxDuration, writers thawed", async () => {
  const site = await makeSite("maxduration");
  const pidFile = join(site.root, "freeze-b.pid");
  // b's freeze hangs (10 s, inside its 60 s timeout): only maxDuration can end the run early.
  writeConfig(site, { backup: { maxDuration: "2s" }, writers: [writer(site, "a"), writer(site, "b", `echo $$ > ${pidFile}; exec sleep 10`)] });
  const h = await serve(site);
  try {
    const r = await h.api<{ run_id: string }>("POST", "/api/runs", { body: { kind: "backup" } });
    assert.equal(r.status, 202);
    const t = Date.now();
    const run = await finished(h, r.body.run_id, 9000);
    const took = Date.parse(run.finished_at as string) - Date.parse(run.started_at);
    assert.ok(took >= 1800 && took < 5000, `stopped after about 2 s, not after the 10 s freeze: ${took} ms`);
    assert.ok(Date.now() - t < 7000);
    assert.ok(["interrupted", "failed"].includes(run.status), run.status);
    assert.equal(run.snapshot_id, null, "nothing committed");
    assert.match(run.error ?? "", /backup\.maxDuration \(2s\)/);
    const last = run.messages.at(-1) as MessageRow;
    assert.equal(last.message_id, 5021);
    assert.match(last.text, /exceeded backup\.maxDuration \(2s\).*writers were thawed/);
    assert.deepEqual(events(site), ["freeze-a", "freeze-b", "thaw-b", "thaw-a"], "both writers thawed, in reverse order");
    const pid = Number(fs.readFileSync(pidFile, "utf8"));
    await waitFor("the hanging freeze command to be gone", () => (processGone(pid) ? true : undefined), 2000);
    const alert = (await alerts(h)).find((a) => a.kind === "backup-failed");
    assert.equal(alert?.severity, "critical");
    assert.equal(alert.message_id, 5021);
    const snaps = join(site.dest, "snapshots");
    assert.deepEqual(fs.existsSync(snaps) ? fs.readdirSync(snaps) : [], [], "no snapshot in the destination");
    assert.equal(h.svc.activeRun, undefined, "the service is idle again");
  } finally {
    await h.stop();
  }
});

// ---- 8. stopping the service during a run ------------------------------------------------------------

test("stop() during a run stops it safely: writers thawed, run interrupted, port closed", async () => {
  const site = await makeSite("stop");
  const pidFile = join(site.root, "freeze-b.pid");
  writeConfig(site, { writers: [writer(site, "a"), writer(site, "b", `echo $$ > ${pidFile}; exec sleep 10`)] });
  const h = await serve(site);
  const port = Number(new URL(h.svc.url).port);
  const r = await h.api<{ run_id: string }>("POST", "/api/runs", { body: { kind: "backup" } });
  assert.equal(r.status, 202);
  await waitFor("writer b to be freezing", () => (fs.existsSync(pidFile) && fs.readFileSync(pidFile, "utf8").trim() ? true : undefined), 8000);
  const t = Date.now();
  await h.stop();
  assert.ok(Date.now() - t < 5000, `stop() returned after ${Date.now() - t} ms, not after the 10 s freeze`);
  assert.deepEqual(events(site), ["freeze-a", "freeze-b", "thaw-b", "thaw-a"], "both writers thawed, in reverse order");
  assert.ok(processGone(Number(fs.readFileSync(pidFile, "utf8"))), "the freeze command was killed");
  assert.ok(h.logs.some((l) => l.msg === "service stopped"));
  await assert.rejects(h.svc.startRun("backup"), /stopping/);

  const store = StateStore.open(site.state);
  try {
    const run = store.run(r.body.run_id) as RunRow;
    assert.equal(run.status, "interrupted");
    assert.match(run.error ?? "", /the service is stopping/);
    assert.equal(run.snapshot_id, null);
  } finally {
    store.close();
  }

  const refused = await new Promise<string>((resolve) => {
    const s = createConnection({ host: "127.0.0.1", port });
    s.once("connect", () => {
      s.destroy();
      resolve("connected");
    });
    s.once("error", (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
  });
  assert.equal(refused, "ECONNREFUSED", "the API port is closed");
});
