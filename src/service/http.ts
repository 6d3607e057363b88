// The service's HTTP API (docs/openapi.yaml) and /metrics. Every request needs the bearer token
// (the console adds a session on top); anything else gets 401. JSON in, JSON out, errors as
// {error: {code, message, hint}}.
import { randomBytes, timingSafeEqual } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { extname, join, normalize } from "node:path";
import { fileURLToPath } from "node:url";
import { type IncomingMessage, type ServerResponse, createServer as createHttpServer } from "node:http";
import { createServer as createHttpsServer } from "node:https";
import type { AddressInfo } from "node:net";
import { SitekeepError, errorMessage } from "../errors.js";
import { openBackend } from "../backend/open.js";
import { Repository } from "../repo/repository.js";
import { withLockedIndex } from "../repo/lock.js";
import { parseDurationMs } from "../site/duration.js";
import { siteStatus } from "../site/status.js";
import { siteTag, sitePassword } from "../site/task.js";
import { fileContent, findNode, listDir } from "../archive/browse.js";
import { diffSnapshots } from "../archive/diff.js";
import { Restorer } from "../archive/restorer.js";
import { ControlFileError } from "../site/control-file.js";
import { type TaskChanges, applyTaskChanges, saveControlFile } from "../site/control-edit.js";
import { nextOccurrences } from "./scheduler.js";
import type { SiteService } from "./service.js";
import { BusyError } from "./service.js";

export interface HttpServer {
  url: string;
  close(): Promise<void>;
}

/** The console's static files: console/ at the package root (beside src/ and dist/). */
const CONSOLE_DIR = fileURLToPath(new URL("../../console/", import.meta.url));
const MIME: Record<string, string> = { ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png" };
const SESSION_COOKIE = "sitekeep_session";
const SESSION_TTL_MS = 12 * 3600_000;

interface Session {
  csrf: string;
  expires: number;
}

type Handler = (req: IncomingMessage, params: string[], body: unknown) => Promise<{ status?: number; json?: unknown; text?: string; type?: string }>;

export async function startHttp(svc: SiteService, listen: string, tls?: { certFile: string; keyFile: string }): Promise<HttpServer> {
  const m = /^(.*):(\d+)$/.exec(listen);
  if (!m) throw new SitekeepError("service.listen", `service.listen must be host:port, got ${JSON.stringify(listen)}`, { hint: 'e.g. "127.0.0.1:8420"' });
  const host = m[1].replace(/^\[|\]$/g, "");
  const port = Number(m[2]);

  const routes: [method: string, pattern: RegExp, handler: Handler][] = [
    ["GET", /^\/api\/status$/, async () => ({ json: { ...siteStatus(svc.config, svc.clock.now()), active: svc.activeRun ?? null, next_runs: svc.nextRuns() } })],
    ["GET", /^\/api\/runs$/, async (req) => ({ json: svc.store.runs(svc.config.site, limit(req, 50)) })],
    [
      "POST",
      /^\/api\/runs$/,
      async (_req, _p, body) => {
        const kind = (body as { kind?: string } | undefined)?.kind ?? "backup";
        if (kind !== "backup" && kind !== "drill") return { status: 400, json: apiError("api.kind", `unknown run kind ${JSON.stringify(kind)}`, 'use "backup" or "drill"') };
        const { runId } = await svc.startRun(kind);
        return { status: 202, json: { run_id: runId, kind } };
      },
    ],
    ["POST", /^\/api\/drills$/, async () => ({ status: 202, json: { run_id: (await svc.startRun("drill")).runId, kind: "drill" } })],
    ["GET", /^\/api\/runs\/([^/]+)$/, async (_req, [id]) => {
      const run = svc.store.run(id);
      const result = svc.result(id);
      // A run of this service is running until its result is kept: a recovery or a backup finishes
      // its record before it returns (and releases its locks), and a poller that read "succeeded"
      // without a result in between would take the run as ended with no report.
      const active = svc.activeRun?.runId === id && result === undefined ? svc.activeRun : undefined;
      if (!run && result === undefined && !active) return { status: 404, json: apiError("api.notfound", `no run ${id}`, "see GET /api/runs") };
      const base = run ?? { id, kind: active?.kind ?? "recovery", status: (result as { ok?: boolean } | undefined)?.ok === false ? "failed" : "succeeded" };
      const messages = svc.store.messages(svc.config.site, { runId: id, limit: 500 }).reverse();
      return { json: { ...base, ...(active ? { status: "running" } : {}), messages, ...(result !== undefined ? { result } : {}) } };
    }],
    ["GET", /^\/api\/messages$/, async (req) => {
      const q = query(req);
      return { json: svc.store.messages(svc.config.site, { limit: limit(req, 200), ...(q.get("run") ? { runId: q.get("run") as string } : {}) }) };
    }],
    ["GET", /^\/api\/alerts$/, async (req) => {
      const rows = svc.store.alerts(svc.config.site, { open: query(req).get("all") === null, limit: limit(req, 100) });
      return { json: rows.map((a) => ({ ...a, notifications: svc.store.notifications(a.id) })) };
    }],
    ["POST", /^\/api\/alerts\/(\d+)\/close$/, async (_req, [id]) => {
      return svc.store.closeAlert(Number(id), "operator") ? { json: { closed: Number(id) } } : { status: 404, json: apiError("api.notfound", `no open alert ${id}`, "see GET /api/alerts") };
    }],
    ["POST", /^\/api\/alerts\/(\d+)\/postpone$/, async (_req, [id], body) => {
      const dur = (body as { for?: string } | undefined)?.for ?? "1d";
      const ms = parseDurationMs(dur);
      if (ms === undefined) return { status: 400, json: apiError("api.duration", `not a duration: ${JSON.stringify(dur)}`, 'e.g. {"for": "4h"}') };
      const until = new Date(svc.clock.now().getTime() + ms);
      return svc.store.postponeAlert(Number(id), until) ? { json: { postponed: Number(id), until: until.toISOString() } } : { status: 404, json: apiError("api.notfound", `no open alert ${id}`, "see GET /api/alerts") };
    }],
    ["GET", /^\/api\/snapshots$/, async () => {
      const backend = openBackend(svc.config.backup.destination);
      try {
        const repo = await Repository.open(backend, sitePassword(svc.config, svc.env));
        const snaps = (await repo.listSnapshots(() => undefined)).filter((s) => s.tags?.includes(siteTag(svc.config.site)));
        return { json: snaps.sort((a, b) => Date.parse(b.time) - Date.parse(a.time)).map((s) => ({ id: s.id, short_id: s.id.slice(0, 8), time: s.time, tags: s.tags ?? [], paths: s.paths, hostname: s.hostname })) };
      } finally {
        await backend.close().catch(() => undefined);
      }
    }],
    ["POST", /^\/api\/reload$/, async () => {
      const r = svc.reload();
      return r.ok ? { json: { reloaded: true } } : { status: 422, json: apiError("config.invalid", r.error ?? "invalid control file", "fix it and reload again; the previous one stays in force") };
    }],
    ["GET", /^\/metrics$/, async () => ({ text: svc.metrics(), type: "text/plain; version=0.0.4; charset=utf-8" })],
    ["GET", /^\/api\/config$/, async () => {
      const file = svc.configPath;
      return { json: { file, text: readFileSync(file, "utf8"), backup: svc.config.backup, site: svc.config.site } };
    }],
    ["PUT", /^\/api\/config$/, async (_req, _p, body) => {
      const changes = ((body as { backup?: TaskChanges } | undefined)?.backup ?? {}) as TaskChanges;
      const file = svc.configPath;
      let next: string;
      try {
        next = applyTaskChanges(readFileSync(file, "utf8"), file, changes).text;
      } catch (err) {
        if (err instanceof ControlFileError) return { status: 422, json: { ...apiError(err.code, "the changes make the control file invalid", "fix the fields named in problems"), problems: err.problems } };
        throw err;
      }
      saveControlFile(file, next);
      const r = svc.reload();
      if (!r.ok) return { status: 422, json: apiError("config.invalid", r.error ?? "reload failed", "the previous file is kept as .prev") };
      return { json: { saved: file, previous: `${file}.prev`, next_runs: svc.nextRuns() } };
    }],
    ["GET", /^\/api\/schedule\/preview$/, async (req) => {
      const q = query(req);
      const cron = q.get("cron") ?? "";
      const tz = q.get("timezone") ?? "local";
      try {
        return { json: { next: nextOccurrences(cron, tz, Math.min(10, Number(q.get("n") ?? 5) || 5), svc.clock.now()).map((d) => d.toISOString()) } };
      } catch (err) {
        return { status: 422, json: apiError("schedule.invalid", `not a schedule: ${errorMessage(err)}`, 'five fields (minute hour day month weekday), e.g. "0 2 * * 1,4"') };
      }
    }],
    ["GET", /^\/api\/snapshots\/diff$/, async (req) => {
      const q = query(req);
      const a = q.get("a") ?? "";
      const b = q.get("b") ?? "";
      if (!/^[0-9a-f]{4,64}$/.test(a) || !/^[0-9a-f]{4,64}$/.test(b)) return { status: 400, json: apiError("api.snapshots", "give two snapshot IDs as ?a=…&b=…", "the older first") };
      return withSnapshot(svc, a, async (repo, ta) => {
        const sb = await repo.findSnapshot(b);
        if (!sb.tags?.includes(siteTag(svc.config.site))) throw new SitekeepError("browse.notfound", `snapshot ${b} is not one of site ${svc.config.site}`, { hint: "see GET /api/snapshots" });
        const d = await diffSnapshots(repo, ta, sb.tree);
        return { json: { a, b: sb.id, ...d } };
      });
    }],
    ["POST", /^\/api\/recover$/, async (_req, _p, body) => {
      const o = (body ?? {}) as { snapshot?: string; only?: string[]; root?: string; replace?: boolean; database?: string; databaseNames?: Record<string, string>; dryRun?: boolean };
      if (o.database !== undefined && !["restore", "existing", "skip"].includes(o.database)) return { status: 400, json: apiError("api.database", "database must be restore, existing or skip", "see docs/recovery.md") };
      if (o.root !== undefined && o.root !== "" && !o.root.startsWith("/")) return { status: 400, json: apiError("api.root", "root must be an absolute folder", 'e.g. "/srv/restore"') };
      const { runId } = await svc.startRun("recovery", {
        snapshot: o.snapshot || undefined,
        only: Array.isArray(o.only) && o.only.length ? o.only : undefined,
        root: o.root || undefined,
        replace: Boolean(o.replace),
        database: (o.database as "restore" | "existing" | "skip" | undefined) ?? "restore",
        databaseNames: o.databaseNames ?? {},
        dryRun: o.dryRun !== false, // a plan unless explicitly asked to act
      });
      return { status: 202, json: { run_id: runId, kind: "recovery" } };
    }],
    ["GET", /^\/api\/snapshots\/([0-9a-f]{4,64})\/tree$/, async (req, [id]) => {
      const path = query(req).get("path") ?? "/";
      return withSnapshot(svc, id, async (repo, tree) => ({ json: { path, entries: await listDir(repo, tree, path) } }));
    }],
    ["POST", /^\/api\/snapshots\/([0-9a-f]{4,64})\/restore$/, async (_req, [id], body) => {
      const b = (body ?? {}) as { paths?: string[]; target?: string };
      if (!Array.isArray(b.paths) || !b.paths.length || b.paths.some((p) => typeof p !== "string" || !p.startsWith("/"))) {
        return { status: 400, json: apiError("api.paths", "paths must be a non-empty list of absolute paths in the snapshot", '{"paths": ["/srv/app/config.yml"], "target": "original"}') };
      }
      const target = !b.target || b.target === "original" ? "/" : b.target;
      if (!target.startsWith("/")) return { status: 400, json: apiError("api.target", "target must be \"original\" or an absolute folder", 'e.g. "/tmp/restore"') };
      return withSnapshot(svc, id, async (repo, tree) => {
        for (const p of b.paths as string[]) await findNode(repo, tree, p); // 404 before anything is written
        const escaped = (b.paths as string[]).map((p) => p.replace(/[*?[\]\\]/g, "\\$&"));
        const r = await new Restorer(repo, { target, includes: escaped, keepAncestors: target === "/" }).restore(tree);
        svc.log("info", "restored from the console", { snapshot: id, paths: b.paths, target, files: r.files_restored, errors: r.errors.length });
        return { status: r.errors.length ? 500 : 200, json: r };
      });
    }],
  ];

  const sessions = new Map<string, Session>();
  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const send = (status: number, payload: string, type = "application/json; charset=utf-8"): void => {
      res.writeHead(status, { "content-type": type, "cache-control": "no-store", "x-content-type-options": "nosniff" });
      res.end(payload);
    };
    try {
      const urlPath = new URL(req.url ?? "/", "http://x").pathname;
      // Public: the console's static shell and the login call (no data in either).
      if (req.method === "GET" && (urlPath.startsWith("/assets/") || urlPath === "/login")) return serveStatic(urlPath === "/login" ? "/index.html" : urlPath.slice("/assets".length), res);
      if (urlPath === "/api/session") return await sessionEndpoint(req, res, sessions, svc, Boolean(tls));
      const bearer = authorized(req, svc.token);
      const session = bearer ? undefined : sessionOf(req, sessions);
      if (!bearer && !session) {
        if (req.method === "GET" && !urlPath.startsWith("/api/") && urlPath !== "/metrics") {
          res.writeHead(302, { location: "/login" });
          res.end();
          return;
        }
        res.setHeader("www-authenticate", 'Bearer realm="sitekeep"');
        return send(401, JSON.stringify(apiError("api.unauthorized", "missing or wrong bearer token", `send "Authorization: Bearer <token>" (the token is in ${svc.config.service?.tokenFile ?? "<stateDir>/service.token"}) or log in to the console`)));
      }
      if (session && req.method !== "GET" && req.method !== "HEAD" && !sameSite(req, session)) {
        return send(403, JSON.stringify(apiError("api.csrf", "cross-site request refused", "the console sends X-CSRF-Token from the same origin")));
      }
      if (req.method === "GET" && (urlPath === "/" || urlPath === "/index.html")) return serveStatic("/index.html", res);
      const path = new URL(req.url ?? "/", "http://x").pathname;
      const file = /^\/api\/snapshots\/([0-9a-f]{4,64})\/file$/.exec(path);
      if (file && req.method === "GET") return await download(svc, file[1], query(req).get("path") ?? "", res);
      const candidates = routes.filter(([, re]) => re.test(path));
      if (!candidates.length) return send(404, JSON.stringify(apiError("api.notfound", `no such endpoint ${path}`, "see docs/openapi.yaml")));
      const route = candidates.find(([method]) => method === req.method);
      if (!route) return send(405, JSON.stringify(apiError("api.method", `${req.method} is not allowed on ${path}`, `use ${candidates.map(([mm]) => mm).join(" or ")}`)));
      const body = req.method === "POST" || req.method === "PUT" ? await readJson(req) : undefined;
      const params = (route[1].exec(path) as RegExpExecArray).slice(1);
      const r = await route[2](req, params, body);
      if (r.text !== undefined) return send(r.status ?? 200, r.text, r.type);
      send(r.status ?? 200, JSON.stringify(r.json));
    } catch (err) {
      if (err instanceof BusyError) return send(409, JSON.stringify(apiError(err.code, err.message, err.hint)));
      if (err instanceof SitekeepError && /notfound|notdir|notfile|snapshot\.notfound|repo\.nosnapshot/.test(err.code)) return send(404, JSON.stringify(apiError(err.code, err.message, err.hint)));
      if (res.headersSent) {
        res.destroy(err instanceof Error ? err : undefined);
        return;
      }
      if (err instanceof SyntaxError) return send(400, JSON.stringify(apiError("api.json", "the request body is not JSON", "send a JSON object")));
      const se = err instanceof SitekeepError ? err : undefined;
      svc.log("error", "API request failed", { path: req.url, error: errorMessage(err) });
      send(500, JSON.stringify(apiError(se?.code ?? "internal", errorMessage(err), se?.hint)));
    }
  };

  const server = tls
    ? createHttpsServer({ cert: readFileSync(tls.certFile), key: readFileSync(tls.keyFile) }, (q, s) => void handle(q, s))
    : createHttpServer((q, s) => void handle(q, s));
  await new Promise<void>((resolve, reject) => {
    server.once("error", (err) =>
      reject(new SitekeepError("service.listen", `cannot listen on ${listen}: ${errorMessage(err)}`, { hint: "another program uses the port, or the address is not this machine's: change service.listen" })),
    );
    server.listen(port, host, () => resolve());
  });
  const addr = server.address() as AddressInfo;
  const shown = addr.family === "IPv6" ? `[${addr.address}]` : addr.address;
  return {
    url: `${tls ? "https" : "http"}://${shown}:${addr.port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections?.();
      }),
  };
}

function apiError(code: string, message: string, hint?: string): { error: { code: string; message: string; hint?: string } } {
  return { error: { code, message, ...(hint ? { hint } : {}) } };
}

function authorized(req: IncomingMessage, token: string): boolean {
  const h = req.headers.authorization ?? "";
  const m = /^Bearer\s+(\S+)$/i.exec(h);
  if (!m) return false;
  const a = Buffer.from(m[1]);
  const b = Buffer.from(token);
  return a.length === b.length && timingSafeEqual(a, b);
}

function query(req: IncomingMessage): URLSearchParams {
  return new URL(req.url ?? "/", "http://x").searchParams;
}

function limit(req: IncomingMessage, def: number): number {
  const n = Number(query(req).get("limit") ?? def);
  return Number.isInteger(n) && n > 0 && n <= 10_000 ? n : def;
}

async function readJson(req: IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const c of req) {
    size += (c as Buffer).length;
    if (size > 1 << 20) throw new SitekeepError("api.body", "request body too large", { hint: "send less than 1 MiB" });
    chunks.push(c as Buffer);
  }
  const text = Buffer.concat(chunks).toString("utf8").trim();
  return text ? (JSON.parse(text) as unknown) : undefined;
}

function serveStatic(rel: string, res: ServerResponse): void {
  const p = normalize(join(CONSOLE_DIR, rel));
  if (!p.startsWith(CONSOLE_DIR) || !existsSync(p)) {
    res.writeHead(404, { "content-type": "text/plain" });
    res.end("not found");
    return;
  }
  res.writeHead(200, {
    "content-type": MIME[extname(p)] ?? "application/octet-stream",
    "cache-control": "no-cache",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "content-security-policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
    "referrer-policy": "no-referrer",
  });
  res.end(readFileSync(p));
}

function cookies(req: IncomingMessage): Map<string, string> {
  const out = new Map<string, string>();
  for (const part of (req.headers.cookie ?? "").split(";")) {
    const i = part.indexOf("=");
    if (i > 0) out.set(part.slice(0, i).trim(), part.slice(i + 1).trim());
  }
  return out;
}

function sessionOf(req: IncomingMessage, sessions: Map<string, Session>): Session | undefined {
  const id = cookies(req).get(SESSION_COOKIE);
  if (!id) return undefined;
  const s = sessions.get(id);
  if (!s || s.expires < Date.now()) {
    sessions.delete(id);
    return undefined;
  }
  return s;
}

/** A state-changing request with a session must come from the console itself: same origin, CSRF token. */
function sameSite(req: IncomingMessage, s: Session): boolean {
  const origin = req.headers.origin;
  if (origin && new URL(origin).host !== req.headers.host) return false;
  const sent = req.headers["x-csrf-token"];
  return typeof sent === "string" && sent.length === s.csrf.length && timingSafeEqual(Buffer.from(sent), Buffer.from(s.csrf));
}

/** POST /api/session {password} or {token}: log in; GET: the session's CSRF token; DELETE: log out. */
async function sessionEndpoint(req: IncomingMessage, res: ServerResponse, sessions: Map<string, Session>, svc: SiteService, secure: boolean): Promise<void> {
  const json = (status: number, body: unknown, headers: Record<string, string> = {}): void => {
    res.writeHead(status, { "content-type": "application/json; charset=utf-8", "cache-control": "no-store", ...headers });
    res.end(JSON.stringify(body));
  };
  if (req.method === "GET") {
    const s = sessionOf(req, sessions);
    return s ? json(200, { csrf: s.csrf, site: svc.config.site }) : json(401, apiError("api.unauthorized", "not logged in", "POST /api/session with the password"));
  }
  if (req.method === "DELETE") {
    const id = cookies(req).get(SESSION_COOKIE);
    if (id) sessions.delete(id);
    return json(200, { logged_out: true }, { "set-cookie": `${SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0` });
  }
  if (req.method !== "POST") return json(405, apiError("api.method", "use GET, POST or DELETE", "POST {\"password\": ...} logs in"));
  const origin = req.headers.origin;
  if (origin && new URL(origin).host !== req.headers.host) return json(403, apiError("api.csrf", "cross-site login refused", "log in from the console itself"));
  const body = ((await readJson(req)) ?? {}) as { password?: string; token?: string };
  const password = svc.consolePassword();
  const ok =
    (typeof body.token === "string" && safeEqual(body.token, svc.token)) || (password !== undefined && typeof body.password === "string" && safeEqual(body.password, password));
  if (!ok) {
    await new Promise((r) => setTimeout(r, 400)); // slows guessing
    svc.log("warn", "console login refused", { from: req.socket.remoteAddress });
    return json(401, apiError("api.login", "wrong password", password === undefined ? "no console password is set (service.passwordFile): log in with the service token" : "check the password in service.passwordFile"));
  }
  const id = randomBytes(32).toString("base64url");
  const csrf = randomBytes(24).toString("base64url");
  sessions.set(id, { csrf, expires: Date.now() + SESSION_TTL_MS });
  svc.log("info", "console login", { from: req.socket.remoteAddress });
  json(200, { csrf, site: svc.config.site }, { "set-cookie": `${SESSION_COOKIE}=${id}; Path=/; HttpOnly; SameSite=Strict; Max-Age=${SESSION_TTL_MS / 1000}${secure ? "; Secure" : ""}` });
}

function safeEqual(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

async function withSnapshot<T>(svc: SiteService, id: string, fn: (repo: Repository, tree: string) => Promise<T>): Promise<T> {
  const backend = openBackend(svc.config.backup.destination);
  try {
    const repo = await Repository.open(backend, sitePassword(svc.config, svc.env));
    // A shared lock, as the CLI's restore: a prune elsewhere must not delete packs read here.
    return await withLockedIndex(repo, false, async () => {
      const snap = await repo.findSnapshot(id);
      if (!snap.tags?.includes(siteTag(svc.config.site))) throw new SitekeepError("browse.notfound", `snapshot ${id} is not one of site ${svc.config.site}`, { hint: "see GET /api/snapshots" });
      return fn(repo, snap.tree);
    });
  } finally {
    await backend.close().catch(() => undefined);
  }
}

async function download(svc: SiteService, id: string, path: string, res: ServerResponse): Promise<void> {
  await withSnapshot(svc, id, async (repo, tree) => {
    const { node } = await findNode(repo, tree, path);
    if (!node || node.type !== "file") throw new SitekeepError("browse.notfile", `${path} is not a file`, { hint: "browse folders with /tree" });
    const name = path.split("/").pop() ?? "file";
    res.writeHead(200, {
      "content-type": "application/octet-stream",
      "content-length": String(node.size ?? 0),
      "content-disposition": `attachment; filename*=UTF-8''${encodeURIComponent(name)}`,
      "cache-control": "no-store",
      "x-content-type-options": "nosniff",
    });
    for await (const chunk of fileContent(repo, node)) {
      if (!res.write(chunk)) await new Promise((r) => res.once("drain", r));
    }
    res.end();
  });
}
