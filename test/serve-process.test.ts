// `sitekeep serve` as the real process an operator runs: over TLS, driven by the CLI's `service`
// commands, reloaded with SIGHUP (an invalid file is refused and the old one kept), stopped with
// SIGTERM; and `service install` writes a unit that leaves the watchdog alive.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { request } from "node:https";
import { createServer } from "node:net";
import { join } from "node:path";
import { SITEKEEP_BIN, describeRun, runSitekeep, tempDir, type TempDir } from "./helpers/run.js";

let tmp: TempDir | undefined;
let serve: ChildProcess | undefined;

after(async () => {
  if (serve && serve.exitCode === null) serve.kill("SIGKILL");
  await tmp?.cleanup();
});

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

function get(url: string, token: string, ca: Buffer): Promise<{ status: number; json: unknown }> {
  return new Promise((resolve, reject) => {
    const req = request(url, { headers: { authorization: `Bearer ${token}` }, ca }, (res) => {
      let body = "";
      res.on("data", (d: Buffer) => (body += d.toString()));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, json: body ? (JSON.parse(body) as unknown) : null }));
    });
    req.on("error", reject);
    req.end();
  });
}

async function until<T>(what: string, fn: () => Promise<T | undefined>, ms = 20_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn().catch(() => undefined);
    if (v !== undefined) return v;
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 150));
  }
}

test("sitekeep serve over TLS: the CLI runs a backup through it, SIGHUP reloads (a bad file is refused), SIGTERM stops it", async () => {
  tmp = await tempDir("serve-process");
  const dir = tmp.path;
  const site = join(dir, "site");
  mkdirSync(site);
  writeFileSync(join(site, "index.html"), "<h1>served</h1>\n");
  mkdirSync(join(dir, "dest"));
  // A self-signed certificate for 127.0.0.1.
  const cert = join(dir, "cert.pem");
  const key = join(dir, "key.pem");
  execFileSync("openssl", ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", cert], { stdio: "ignore" });
  const port = await freePort();
  const config = join(dir, "sitekeep.yaml");
  const good = `# the service test's site
site: SRV
backup:
  destination: ${join(dir, "dest")}
files:
  - { path: ${site} }
service:
  listen: "127.0.0.1:${port}"
  catchUp: false
  tls: { certFile: ${cert}, keyFile: ${key} }
stateDir: ${join(dir, "state")}
`;
  writeFileSync(config, good);
  const env = { SITEKEEP_PASSWORD: "pw", SITEKEEP_SCRYPT_N: "1024", HOME: dir, NODE_EXTRA_CA_CERTS: cert };

  serve = spawn(process.execPath, [SITEKEEP_BIN, "serve", "--config", config], { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
  let stdout = "";
  let stderr = "";
  serve.stdout?.on("data", (d: Buffer) => (stdout += d.toString()));
  serve.stderr?.on("data", (d: Buffer) => (stderr += d.toString()));
  await until("the service to listen", async () => (/serving site SRV at https:\/\/127\.0\.0\.1:\d+/.test(stderr) ? true : undefined));
  const token = readFileSync(join(dir, "state", "service.token"), "utf8").trim();
  const ca = readFileSync(cert);
  const base = `https://127.0.0.1:${port}`;

  // Over TLS, with the token; without it, 401.
  assert.equal((await get(`${base}/api/status`, token, ca)).status, 200);
  assert.equal((await get(`${base}/api/status`, "wrong-token-wrong-token", ca)).status, 401);

  // The CLI asks the running service for a backup and sees it in the service's status.
  const run = await runSitekeep(["service", "run", "--config", config], { env });
  assert.equal(run.code, 0, describeRun(run));
  assert.match(run.stdout, /started backup \d{8}T\d{6}Z-[0-9a-f]{6}/);
  await until("the backup to succeed", async () => {
    const r = await get(`${base}/api/runs`, token, ca);
    const runs = r.json as { status: string; kind: string }[];
    return runs.some((x) => x.kind === "backup" && x.status === "succeeded") ? true : undefined;
  });
  const st = await runSitekeep(["service", "status", "--config", config], { env });
  assert.equal(st.code, 0, describeRun(st));
  assert.match(st.stdout, /site SRV: OK; last good backup .*; idle/);

  // SIGHUP with an invalid file: refused, the service keeps serving with the previous one.
  writeFileSync(config, good.replace("catchUp: false", "catchUp: false\n  bogusKey: 1"));
  serve.kill("SIGHUP");
  await until("the refused reload", async () => (/reload refused/.test(stdout) ? true : undefined));
  assert.equal((await get(`${base}/api/status`, token, ca)).status, 200, "still serving");
  const alerts = (await get(`${base}/api/alerts`, token, ca)).json as { kind: string; message_id: number }[];
  assert.ok(alerts.some((a) => a.kind === "config-invalid" && a.message_id === 5002), JSON.stringify(alerts));
  // Fixed and reloaded: the alert closes.
  writeFileSync(config, good);
  serve.kill("SIGHUP");
  await until("the good reload", async () => (/control file reloaded/.test(stdout) ? true : undefined));
  await until("the config alert to close", async () => {
    const open = (await get(`${base}/api/alerts`, token, ca)).json as { kind: string }[];
    return open.every((a) => a.kind !== "config-invalid") ? true : undefined;
  });

  // SIGTERM: a clean stop.
  const exited = new Promise<number | null>((r) => serve?.once("exit", (code) => r(code)));
  serve.kill("SIGTERM");
  assert.equal(await exited, 0, stderr);
  assert.match(stdout, /"msg":"service stopped"/);
  for (const line of stdout.trim().split("\n")) JSON.parse(line); // structured log: one JSON object per line
});

test("service install writes a systemd unit that reloads with SIGHUP and leaves the watchdog alive", async () => {
  const t = await tempDir("service-install");
  try {
    mkdirSync(join(t.path, "dest"));
    const config = join(t.path, "sitekeep.yaml");
    writeFileSync(config, `site: U1\nbackup:\n  destination: ${join(t.path, "dest")}\nstateDir: ${join(t.path, "state")}\n`);
    const out = join(t.path, "sitekeep-u1.service");
    const r = await runSitekeep(["service", "install", "--config", config, "--user", "backup", "--output", out], { env: { HOME: t.path } });
    assert.equal(r.code, 0, describeRun(r));
    const unit = readFileSync(out, "utf8");
    assert.match(unit, new RegExp(`^ExecStart=.* serve --config ${config.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}$`, "m"));
    assert.match(unit, /^ExecReload=\/bin\/kill -HUP \$MAINPID$/m);
    assert.match(unit, /^KillMode=process$/m);
    assert.match(unit, /^Environment=MALLOC_ARENA_MAX=2$/m);
    assert.match(unit, /^User=backup$/m);
    assert.match(unit, /^UMask=0077$/m);
    assert.match(r.stdout, /systemctl daemon-reload && systemctl enable --now sitekeep-u1\.service/);
  } finally {
    await t.cleanup();
  }
});
