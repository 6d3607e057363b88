// Alert delivery against real receivers on 127.0.0.1: an SMTP server (smtp-server, with STARTTLS,
// implicit TLS and AUTH PLAIN, a certificate made by openssl at test time), HTTP receivers
// (node:http) and shell commands.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer as createHttpServer, type IncomingMessage, type Server as HttpServer } from "node:http";
import {
  createServer as createNetServer,
  type AddressInfo,
  type Server as NetServer,
  type Socket,
} from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { SMTPServer, type SMTPServerOptions, type SMTPServerSession } from "smtp-server";
import { type AlertNotice, type AlertsConfig, deliverAlert } from "./notify.js";

const FAST = { retries: 2, backoffMs: 10, timeoutMs: 3000 };

const notice: AlertNotice = {
  site: "PS1",
  alertId: 17,
  kind: "backup-failed",
  severity: "critical",
  state: "opened",
  text: "Backup of site PS1 failed (message 5017): writing the snapshot failed",
  messageId: 5017,
  runId: "20250102-020000-ab12",
  time: "2025-01-02T02:03:04.000Z",
};

/** `notice` as the JSON that webhooks and commands receive (the documented field names). */
const noticeJSON = {
  site: "PS1",
  alert_id: 17,
  kind: "backup-failed",
  severity: "critical",
  state: "opened",
  text: notice.text,
  message_id: 5017,
  run_id: "20250102-020000-ab12",
  time: "2025-01-02T02:03:04.000Z",
};

let dir: string;
let key: Buffer;
let cert: Buffer;

before(() => {
  dir = mkdtempSync(join(tmpdir(), "sitekeep-notify-"));
  execFileSync(
    "openssl",
    [
      "req",
      "-x509",
      "-newkey",
      "ec",
      "-pkeyopt",
      "ec_paramgen_curve:prime256v1",
      "-nodes",
      "-days",
      "1",
      "-subj",
      "/CN=localhost",
      "-addext",
      "subjectAltName=IP:127.0.0.1,DNS:localhost",
      "-keyout",
      join(dir, "key.pem"),
      "-out",
      join(dir, "cert.pem"),
    ],
    { stdio: "ignore" },
  );
  key = readFileSync(join(dir, "key.pem"));
  cert = readFileSync(join(dir, "cert.pem"));
});

after(() => rmSync(dir, { recursive: true, force: true }));

// ---- SMTP ----------------------------------------------------------------------------------------

interface Received {
  raw: string;
  from: string;
  to: string[];
  secure: boolean;
  user?: string;
}

interface SmtpReceiver {
  port: number;
  mails: Received[];
  logins: { method: string; user?: string; pass?: string; secure: boolean }[];
  close(): Promise<void>;
}

async function smtpReceiver(options: SMTPServerOptions): Promise<SmtpReceiver> {
  const mails: Received[] = [];
  const logins: SmtpReceiver["logins"] = [];
  const server = new SMTPServer({
    logger: false,
    disableReverseLookup: true,
    key,
    cert,
    onAuth(auth, session, cb) {
      logins.push({
        method: auth.method,
        user: auth.username,
        pass: auth.password ?? undefined,
        secure: session.secure,
      });
      if (auth.username === "alerts" && auth.password === "s3cret pass") cb(null, { user: auth.username });
      else cb(Object.assign(new Error("Invalid username or password"), { responseCode: 535 }));
    },
    onData(stream, session: SMTPServerSession, cb) {
      const chunks: Buffer[] = [];
      stream.on("data", (c: Buffer) => chunks.push(c));
      stream.on("end", () => {
        mails.push({
          raw: Buffer.concat(chunks).toString("utf8"),
          from: session.envelope.mailFrom ? session.envelope.mailFrom.address : "",
          to: session.envelope.rcptTo.map((r) => r.address),
          secure: session.secure,
          user: session.user as string | undefined,
        });
        cb();
      });
    },
    ...options,
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.server.address() as AddressInfo).port;
  return { port, mails, logins, close: () => new Promise<void>((resolve) => server.close(() => resolve())) };
}

/** Undo quoted-printable soft breaks and escapes (nodemailer may encode a long body line). */
function decodeBody(raw: string): string {
  if (!/Content-Transfer-Encoding: quoted-printable/i.test(raw)) return raw;
  return raw
    .replace(/=\r?\n/g, "")
    .replace(/=([0-9A-F]{2})/g, (_, h: string) => String.fromCharCode(parseInt(h, 16)));
}

function passwordFile(content: string): string {
  const file = join(dir, `pw-${Math.random().toString(36).slice(2)}`);
  writeFileSync(file, content, { mode: 0o600 });
  return file;
}

describe("email", () => {
  test("smtp:// upgrades with STARTTLS, verifies the certificate, logs in with AUTH PLAIN from passwordFile", async () => {
    const srv = await smtpReceiver({ authMethods: ["PLAIN"] });
    try {
      const alerts: AlertsConfig = {
        email: {
          to: ["ops@example.com", "oncall@example.com"],
          from: "sitekeep@example.com",
          smtp: `smtp://alerts@127.0.0.1:${srv.port}`,
          passwordFile: passwordFile("s3cret pass\n"),
        },
      };
      const [r] = await deliverAlert(alerts, notice, { ...FAST, smtpCa: cert });
      assert.deepEqual(r, {
        channel: "email",
        target: `ops@example.com, oncall@example.com via smtp://alerts@127.0.0.1:${srv.port}`,
        ok: true,
        attempts: 1,
      });
      assert.deepEqual(srv.logins, [{ method: "PLAIN", user: "alerts", pass: "s3cret pass", secure: true }]);
      assert.equal(srv.mails.length, 1);
      const m = srv.mails[0];
      assert.equal(m.secure, true, "the message went over TLS");
      assert.equal(m.user, "alerts");
      assert.equal(m.from, "sitekeep@example.com");
      assert.deepEqual(m.to, ["ops@example.com", "oncall@example.com"]);
      const body = decodeBody(m.raw);
      assert.match(m.raw, /^Subject: \[Sitekeep PS1\] CRITICAL: backup failed \(5017\)\r?$/m);
      assert.match(body, /^Site: +PS1$/m);
      assert.match(body, /^Alert: +backup-failed \(critical, opened; alert 17\)$/m);
      assert.match(body, /^Message ID: +5017$/m);
      assert.match(body, /^Run ID: +20250102-020000-ab12$/m);
      assert.match(body, /^Time: +2025-01-02T02:03:04.000Z$/m);
      assert.ok(body.includes(notice.text), body);
      assert.ok(body.includes("sitekeep site status"));
      assert.ok(!m.raw.includes("s3cret"), "no password in the message");
    } finally {
      await srv.close();
    }
  });

  test("smtps:// is TLS from the first byte; a closed alert says RESOLVED", async () => {
    const srv = await smtpReceiver({ secure: true, authOptional: true });
    try {
      const [r] = await deliverAlert(
        {
          email: {
            to: ["ops@example.com"],
            from: "sitekeep@example.com",
            smtp: `smtps://127.0.0.1:${srv.port}`,
          },
        },
        { ...notice, state: "closed" },
        { ...FAST, smtpCa: cert },
      );
      assert.equal(r.ok, true, r.error);
      assert.equal(srv.mails[0].secure, true);
      assert.match(srv.mails[0].raw, /^Subject: \[Sitekeep PS1\] RESOLVED: backup failed \(5017\)\r?$/m);
    } finally {
      await srv.close();
    }
  });

  test("opportunistic STARTTLS still verifies the certificate: an untrusted one fails", async () => {
    const srv = await smtpReceiver({ authOptional: true });
    try {
      const [r] = await deliverAlert(
        { email: { to: ["ops@example.com"], from: "s@example.com", smtp: `smtp://127.0.0.1:${srv.port}` } },
        notice,
        { ...FAST, retries: 0 },
      );
      assert.equal(r.ok, false);
      assert.match(r.error ?? "", /certificate/i);
      assert.equal(srv.mails.length, 0);
    } finally {
      await srv.close();
    }
  });

  test("without STARTTLS on offer: opportunistic sends in clear, starttls=required refuses", async () => {
    const srv = await smtpReceiver({ disabledCommands: ["STARTTLS"], authOptional: true });
    try {
      const base = { to: ["ops@example.com"], from: "s@example.com" };
      const [plain] = await deliverAlert(
        { email: { ...base, smtp: `smtp://127.0.0.1:${srv.port}` } },
        notice,
        FAST,
      );
      assert.equal(plain.ok, true, plain.error);
      assert.equal(srv.mails[0].secure, false);
      const [strict] = await deliverAlert(
        { email: { ...base, smtp: `smtp://127.0.0.1:${srv.port}?starttls=required` } },
        notice,
        { ...FAST, retries: 0, smtpCa: cert },
      );
      assert.equal(strict.ok, false);
      assert.match(strict.error ?? "", /STARTTLS/);
      assert.equal(srv.mails.length, 1, "nothing sent without TLS");
    } finally {
      await srv.close();
    }
  });

  test("a wrong password is a permanent failure (not retried)", async () => {
    const srv = await smtpReceiver({ authMethods: ["PLAIN"] });
    try {
      const [r] = await deliverAlert(
        {
          email: {
            to: ["ops@example.com"],
            from: "s@example.com",
            smtp: `smtp://alerts@127.0.0.1:${srv.port}`,
            passwordFile: passwordFile("wrong\n"),
          },
        },
        notice,
        { ...FAST, smtpCa: cert },
      );
      assert.equal(r.ok, false);
      assert.equal(r.attempts, 1);
      assert.match(r.error ?? "", /535/);
      assert.ok(!(r.error ?? "").includes("wrong"));
    } finally {
      await srv.close();
    }
  });

  test("a password in the URL is refused without connecting; the result does not repeat it", async () => {
    const [r] = await deliverAlert(
      {
        email: { to: ["ops@example.com"], from: "s@example.com", smtp: "smtp://alerts:hunter2@127.0.0.1:1" },
      },
      notice,
      FAST,
    );
    assert.equal(r.ok, false);
    assert.equal(r.attempts, 1);
    assert.match(r.error ?? "", /passwordFile/);
    assert.ok(!JSON.stringify(r).includes("hunter2"), JSON.stringify(r));
  });

  test("a dead SMTP port fails fast with the connection error, after the retries", async () => {
    const port = await freePort();
    const t0 = Date.now();
    const [r] = await deliverAlert(
      { email: { to: ["ops@example.com"], from: "s@example.com", smtp: `smtp://127.0.0.1:${port}` } },
      notice,
      FAST,
    );
    assert.equal(r.ok, false);
    assert.equal(r.attempts, 3);
    assert.match(r.error ?? "", /ECONNREFUSED/);
    // Waiting out the timeout on each of the 3 attempts would take 9 s.
    assert.ok(Date.now() - t0 < 6000, `took ${Date.now() - t0} ms`);
  });

  test("a server that never greets is given up on after timeoutMs", async () => {
    const sockets: Socket[] = [];
    const silent: NetServer = createNetServer((s) => sockets.push(s));
    await new Promise<void>((resolve) => silent.listen(0, "127.0.0.1", resolve));
    try {
      const t0 = Date.now();
      const [r] = await deliverAlert(
        {
          email: {
            to: ["ops@example.com"],
            from: "s@example.com",
            smtp: `smtp://127.0.0.1:${(silent.address() as AddressInfo).port}`,
          },
        },
        notice,
        { retries: 0, timeoutMs: 300 },
      );
      assert.equal(r.ok, false);
      assert.match(r.error ?? "", /greeting|time/i);
      assert.ok(Date.now() - t0 < 10_000, `took ${Date.now() - t0} ms`);
    } finally {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => silent.close(() => resolve()));
    }
  });
});

// ---- webhook -------------------------------------------------------------------------------------

interface Hit {
  method: string;
  url: string;
  headers: IncomingMessage["headers"];
  body: string;
}

async function httpReceiver(
  answer: (hit: Hit, n: number) => number,
): Promise<{ base: string; hits: Hit[]; close(): Promise<void> }> {
  const hits: Hit[] = [];
  const server: HttpServer = createHttpServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const hit = {
        method: req.method ?? "",
        url: req.url ?? "",
        headers: req.headers,
        body: Buffer.concat(chunks).toString("utf8"),
      };
      hits.push(hit);
      const status = answer(hit, hits.length);
      res.writeHead(status, { "Content-Type": "text/plain" });
      res.end(status >= 300 ? "receiver says no" : "ok");
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    base: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    hits,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

describe("webhook", () => {
  test("POSTs the JSON notice with the bearer token from tokenFile", async () => {
    const rx = await httpReceiver(() => 204);
    try {
      const tokenFile = passwordFile("tok-123\n");
      const [r] = await deliverAlert(
        { webhook: { url: `${rx.base}/hooks/sitekeep?team=ops`, tokenFile } },
        notice,
        FAST,
      );
      assert.deepEqual(r, { channel: "webhook", target: `${rx.base}/…`, ok: true, attempts: 1 });
      assert.equal(rx.hits.length, 1);
      const h = rx.hits[0];
      assert.equal(h.method, "POST");
      assert.equal(h.url, "/hooks/sitekeep?team=ops");
      assert.equal(h.headers["content-type"], "application/json");
      assert.equal(h.headers.authorization, "Bearer tok-123");
      assert.match(h.headers["user-agent"] ?? "", /^sitekeep\//);
      assert.deepEqual(JSON.parse(h.body), noticeJSON);
      // Absent message and run IDs are null; no token file, no Authorization.
      await deliverAlert(
        { webhook: { url: `${rx.base}/x` } },
        { ...notice, messageId: undefined, runId: undefined },
        FAST,
      );
      const second = JSON.parse(rx.hits[1].body) as Record<string, unknown>;
      assert.equal(second.message_id, null);
      assert.equal(second.run_id, null);
      assert.equal(rx.hits[1].headers.authorization, undefined);
    } finally {
      await rx.close();
    }
  });

  test("500, 500, then 200: delivered on the third attempt", async () => {
    const rx = await httpReceiver((_, n) => (n <= 2 ? 500 : 200));
    try {
      const [r] = await deliverAlert({ webhook: { url: `${rx.base}/h` } }, notice, FAST);
      assert.equal(r.ok, true, r.error);
      assert.equal(r.attempts, 3);
      assert.equal(rx.hits.length, 3);
    } finally {
      await rx.close();
    }
  });

  test("always 503: not delivered, the error names the status", async () => {
    const rx = await httpReceiver(() => 503);
    try {
      const [r] = await deliverAlert({ webhook: { url: `${rx.base}/h` } }, notice, FAST);
      assert.equal(r.ok, false);
      assert.equal(r.attempts, 3);
      assert.match(r.error ?? "", /HTTP 503 Service Unavailable: receiver says no/);
    } finally {
      await rx.close();
    }
  });

  test("401 is not retried; a redirect is not followed", async () => {
    const rx = await httpReceiver((hit) => (hit.url === "/moved" ? 301 : 401));
    try {
      const [denied] = await deliverAlert({ webhook: { url: `${rx.base}/h` } }, notice, FAST);
      assert.equal(denied.ok, false);
      assert.equal(denied.attempts, 1);
      assert.match(denied.error ?? "", /HTTP 401/);
      const [moved] = await deliverAlert({ webhook: { url: `${rx.base}/moved` } }, notice, {
        ...FAST,
        retries: 0,
      });
      assert.equal(moved.ok, false);
      assert.match(moved.error ?? "", /HTTP 301.*not followed/);
    } finally {
      await rx.close();
    }
  });

  test("an unreachable receiver reports the connection error", async () => {
    const port = await freePort();
    const [r] = await deliverAlert({ webhook: { url: `http://127.0.0.1:${port}/h` } }, notice, {
      ...FAST,
      retries: 1,
    });
    assert.equal(r.ok, false);
    assert.equal(r.attempts, 2);
    assert.match(r.error ?? "", /ECONNREFUSED/);
  });

  test("slack preset: { text } only, the preset parameter removed, others kept", async () => {
    const rx = await httpReceiver(() => 200);
    try {
      const [r] = await deliverAlert(
        { webhook: { url: `${rx.base}/services/T1/B2/xyz?preset=slack&a=1` } },
        notice,
        FAST,
      );
      assert.equal(r.ok, true, r.error);
      assert.equal(r.target, `${rx.base}/… (slack)`);
      const h = rx.hits[0];
      assert.equal(h.url, "/services/T1/B2/xyz?a=1");
      assert.equal(h.headers["content-type"], "application/json");
      const body = JSON.parse(h.body) as Record<string, unknown>;
      assert.deepEqual(Object.keys(body), ["text"]);
      assert.match(String(body.text), /\[Sitekeep PS1\] CRITICAL: backup failed \(5017\)/);
      assert.ok(String(body.text).includes(notice.text));
    } finally {
      await rx.close();
    }
  });

  test("ntfy preset: plain text with Title, Priority and Tags", async () => {
    const rx = await httpReceiver(() => 200);
    try {
      const [r] = await deliverAlert(
        { webhook: { url: `${rx.base}/sitekeep-ps1?preset=ntfy` } },
        notice,
        FAST,
      );
      assert.equal(r.ok, true, r.error);
      const h = rx.hits[0];
      assert.equal(h.url, "/sitekeep-ps1");
      assert.match(String(h.headers["content-type"]), /^text\/plain/);
      assert.equal(h.headers.title, "[Sitekeep PS1] CRITICAL: backup failed (5017)");
      assert.equal(h.headers.priority, "urgent");
      assert.equal(h.headers.tags, "rotating_light,sitekeep");
      assert.ok(h.body.includes(notice.text));
      assert.match(h.body, /Message ID: +5017/);

      await deliverAlert(
        { webhook: { url: `${rx.base}/sitekeep-ps1?preset=ntfy` } },
        { ...notice, kind: "rétention", severity: "warning", state: "closed" },
        FAST,
      );
      const c = rx.hits[1];
      assert.equal(c.headers.priority, "default");
      assert.equal(c.headers.tags, "white_check_mark,sitekeep");
      const title = String(c.headers.title);
      assert.match(title, /^=\?UTF-8\?B\?(.*)\?=$/);
      assert.equal(
        Buffer.from(title.slice(10, -2), "base64").toString("utf8"),
        "[Sitekeep PS1] RESOLVED: rétention (5017)",
      );
    } finally {
      await rx.close();
    }
  });

  test("healthchecks preset: /fail for an opened critical alert, the bare URL when closed, /log for a warning", async () => {
    const rx = await httpReceiver(() => 200);
    try {
      const url = `${rx.base}/ping/0a1b2c3d/?preset=healthchecks`;
      const results = [
        ...(await deliverAlert({ webhook: { url } }, notice, FAST)),
        ...(await deliverAlert({ webhook: { url } }, { ...notice, state: "closed" }, FAST)),
        ...(await deliverAlert(
          { webhook: { url } },
          { ...notice, kind: "retention-window-exceeded", severity: "warning" },
          FAST,
        )),
      ];
      assert.ok(results.every((r) => r.ok));
      assert.deepEqual(
        rx.hits.map((h) => `${h.method} ${h.url}`),
        ["POST /ping/0a1b2c3d/fail", "POST /ping/0a1b2c3d", "POST /ping/0a1b2c3d/log"],
      );
      assert.ok(rx.hits[0].body.includes(notice.text));
    } finally {
      await rx.close();
    }
  });

  test("an unknown preset is a configuration error, reported at once", async () => {
    const [r] = await deliverAlert({ webhook: { url: "http://127.0.0.1:1/h?preset=teams" } }, notice, FAST);
    assert.equal(r.ok, false);
    assert.equal(r.attempts, 1);
    assert.match(r.error ?? "", /unknown webhook preset "teams"/);
  });
});

// ---- command -------------------------------------------------------------------------------------

describe("command", () => {
  test("gets the notice as JSON on stdin and SITEKEEP_ALERT_* variables", async () => {
    const out = join(dir, "stdin.json");
    const envOut = join(dir, "env.txt");
    const command = `cat > '${out}' && env | grep '^SITEKEEP_ALERT_' | sort > '${envOut}'`;
    const [r] = await deliverAlert({ command }, notice, { ...FAST, env: { PATH: process.env.PATH } });
    assert.deepEqual(r, { channel: "command", target: "cat …", ok: true, attempts: 1 });
    assert.deepEqual(JSON.parse(readFileSync(out, "utf8")), noticeJSON);
    assert.deepEqual(readFileSync(envOut, "utf8").trim().split("\n"), [
      "SITEKEEP_ALERT_ID=17",
      "SITEKEEP_ALERT_KIND=backup-failed",
      "SITEKEEP_ALERT_MESSAGE_ID=5017",
      "SITEKEEP_ALERT_RUN_ID=20250102-020000-ab12",
      "SITEKEEP_ALERT_SEVERITY=critical",
      "SITEKEEP_ALERT_SITE=PS1",
      "SITEKEEP_ALERT_STATE=opened",
      "SITEKEEP_ALERT_TIME=2025-01-02T02:03:04.000Z",
    ]);
  });

  test("a non-zero exit is retried and reported; a hung command is killed at the timeout", async () => {
    const [failed] = await deliverAlert({ command: "echo 'pager unreachable' >&2; exit 3" }, notice, FAST);
    assert.equal(failed.ok, false);
    assert.equal(failed.attempts, 3);
    assert.match(failed.error ?? "", /exited with status 3: pager unreachable/);
    const t0 = Date.now();
    const [hung] = await deliverAlert({ command: "sleep 30" }, notice, { retries: 0, timeoutMs: 200 });
    assert.equal(hung.ok, false);
    assert.match(hung.error ?? "", /timed out/);
    assert.ok(Date.now() - t0 < 10_000, "killed at the timeout, not after the 30 s sleep");
  });
});

// ---- all together --------------------------------------------------------------------------------

test("every configured channel is tried, each reported on its own; none configured, nothing to do", async () => {
  const rx = await httpReceiver(() => 500);
  const srv = await smtpReceiver({ disabledCommands: ["STARTTLS"], authOptional: true });
  try {
    const results = await deliverAlert(
      {
        email: { to: ["ops@example.com"], from: "s@example.com", smtp: `smtp://127.0.0.1:${srv.port}` },
        webhook: { url: `${rx.base}/h` },
        command: "true",
      },
      notice,
      FAST,
    );
    assert.deepEqual(
      results.map((r) => [r.channel, r.ok, r.attempts]),
      [
        ["email", true, 1],
        ["webhook", false, 3],
        ["command", true, 1],
      ],
    );
    assert.equal(srv.mails.length, 1);
  } finally {
    await rx.close();
    await srv.close();
  }
  assert.deepEqual(await deliverAlert(undefined, notice), []);
  assert.deepEqual(await deliverAlert({}, notice), []);
});

async function freePort(): Promise<number> {
  const s = createNetServer();
  await new Promise<void>((resolve) => s.listen(0, "127.0.0.1", resolve));
  const port = (s.address() as AddressInfo).port;
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return port;
}
