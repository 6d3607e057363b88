// The service's HTTP API (docs/openapi.yaml) and /metrics. Every request needs the bearer token
// (the console adds a session on top); anything else gets 401. JSON in, JSON out, errors as
// {error: {code, message, hint}}.
import { timingSafeEqual } from "node:crypto";
import { readFileSync } from "node:fs";
import { type IncomingMessage, type ServerResponse, createServer as createHttpServer } from "node:http";
import { createServer as createHttpsServer } from "node:https";
import type { AddressInfo } from "node:net";
import { SitekeepError, errorMessage } from "../errors.js";
import { openBackend } from "../backend/open.js";
import { Repository } from "../repo/repository.js";
import { parseDurationMs } from "../site/duration.js";
import { siteStatus } from "../site/status.js";
import { siteTag, sitePassword } from "../site/task.js";
import type { SiteService } from "./service.js";
import { BusyError } from "./service.js";

export interface HttpServer {
  url: string;
  close(): Promise<void>;
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
      return run ? { json: { ...run, messages: svc.store.messages(svc.config.site, { runId: id, limit: 500 }).reverse() } } : { status: 404, json: apiError("api.notfound", `no run ${id}`, "see GET /api/runs") };
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
        const repo = await Repository.open(backend, sitePassword(svc.config));
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
  ];

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const send = (status: number, payload: string, type = "application/json; charset=utf-8"): void => {
      res.writeHead(status, { "content-type": type, "cache-control": "no-store", "x-content-type-options": "nosniff" });
      res.end(payload);
    };
    try {
      if (!authorized(req, svc.token)) {
        res.setHeader("www-authenticate", 'Bearer realm="sitekeep"');
        return send(401, JSON.stringify(apiError("api.unauthorized", "missing or wrong bearer token", `send "Authorization: Bearer <token>" (the token is in ${svc.config.service?.tokenFile ?? "<stateDir>/service.token"})`)));
      }
      const path = new URL(req.url ?? "/", "http://x").pathname;
      const candidates = routes.filter(([, re]) => re.test(path));
      if (!candidates.length) return send(404, JSON.stringify(apiError("api.notfound", `no such endpoint ${path}`, "see docs/openapi.yaml")));
      const route = candidates.find(([method]) => method === req.method);
      if (!route) return send(405, JSON.stringify(apiError("api.method", `${req.method} is not allowed on ${path}`, `use ${candidates.map(([mm]) => mm).join(" or ")}`)));
      const body = req.method === "POST" ? await readJson(req) : undefined;
      const params = (route[1].exec(path) as RegExpExecArray).slice(1);
      const r = await route[2](req, params, body);
      if (r.text !== undefined) return send(r.status ?? 200, r.text, r.type);
      send(r.status ?? 200, JSON.stringify(r.json));
    } catch (err) {
      if (err instanceof BusyError) return send(409, JSON.stringify(apiError(err.code, err.message, err.hint)));
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
