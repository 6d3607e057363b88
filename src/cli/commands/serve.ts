// `sitekeep serve` (the long-running service), `sitekeep service install` (its systemd unit) and
// `sitekeep service status|run` (the CLI talking to a running service over its API).
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { SitekeepError, errorMessage } from "../../errors.js";
import { controlFilePath, loadControlFile } from "../../site/control-file.js";
import { stateDirFor } from "../../site/state.js";
import { type GlobalOptions, outputOptions } from "../context.js";
import { printJSON } from "../output.js";

export async function serveCommand(_g: GlobalOptions, f: { config?: string; listen?: string }): Promise<number> {
  const { SiteService } = await import("../../service/service.js");
  const svc = await SiteService.start({ configPath: controlFilePath(f.config), listen: f.listen });
  process.stderr.write(`sitekeep: serving site ${svc.config.site} at ${svc.url} (token in ${svc.config.service?.tokenFile ?? join(svc.stateDir, "service.token")})\n`);
  process.on("SIGHUP", () => void svc.reload());
  await new Promise<void>((resolveStop) => {
    const stop = (): void => {
      process.off("SIGINT", stop);
      process.off("SIGTERM", stop);
      void svc.stop().then(resolveStop);
    };
    process.on("SIGINT", stop);
    process.on("SIGTERM", stop);
  });
  return 0;
}

export async function serviceInstallCommand(_g: GlobalOptions, f: { config?: string; user?: string; output?: string }): Promise<number> {
  const config = controlFilePath(f.config);
  const { config: c } = loadControlFile(config);
  const bin = resolve(process.argv[1] ?? "sitekeep");
  const unit = `# Sitekeep service for site ${c.site} (written by \`sitekeep service install\`)
[Unit]
Description=Sitekeep backup service for site ${c.site}
Documentation=https://github.com/sitekeep/sitekeep/blob/main/docs/service.md
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
ExecStart=${process.execPath} ${bin} serve --config ${config}
ExecReload=/bin/kill -HUP $MAINPID
KillSignal=SIGTERM
# Only the service itself gets SIGTERM: it stops a run safely (writers thawed). Its watchdog and
# a thaw command in progress must outlive it, so they are not killed with it.
KillMode=process
TimeoutStopSec=15min
Restart=on-failure
RestartSec=30s
${f.user ? `User=${f.user}\n` : ""}Environment=SITEKEEP_STATE_DIR=${stateDirFor(c.stateDir)}
# Thread-pool threads that compress each get a malloc arena and keep what they freed; two arenas
# lowered a 2 GB backup's peak memory by ~60 MiB (glibc reads this only at start).
Environment=MALLOC_ARENA_MAX=2
UMask=0077

[Install]
WantedBy=multi-user.target
`;
  const out = f.output ?? `/etc/systemd/system/sitekeep-${c.site.toLowerCase()}.service`;
  writeFileSync(out, unit, { mode: 0o644 });
  process.stdout.write(`wrote ${out}\nnext: systemctl daemon-reload && systemctl enable --now ${out.split("/").pop()}\n`);
  return 0;
}

/** Calls the running service's API with the token from its token file. */
async function callService(f: { config?: string }, method: string, path: string, body?: unknown): Promise<{ status: number; json: unknown }> {
  const { config: c } = loadControlFile(controlFilePath(f.config));
  const tokenFile = c.service?.tokenFile ?? join(stateDirFor(c.stateDir), "service.token");
  if (!existsSync(tokenFile)) throw new SitekeepError("service.token", `no service token at ${tokenFile}`, { hint: "start the service first (`sitekeep serve`), or run as the user that owns it" });
  const listen = c.service?.listen ?? "127.0.0.1:8420";
  const url = `${c.service?.tls ? "https" : "http"}://${listen.replace(/^0\.0\.0\.0:/, "127.0.0.1:")}${path}`;
  let res: Response;
  try {
    res = await fetch(url, { method, headers: { authorization: `Bearer ${readFileSync(tokenFile, "utf8").trim()}`, "content-type": "application/json" }, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (err) {
    throw new SitekeepError("service.unreachable", `the service at ${url} does not answer: ${errorMessage(err)}`, { hint: "is `sitekeep serve` running? (systemctl status sitekeep-...)" });
  }
  return { status: res.status, json: await res.json().catch(() => null) };
}

export async function serviceStatusCommand(g: GlobalOptions, f: { config?: string }): Promise<number> {
  const r = await callService(f, "GET", "/api/status");
  if (outputOptions(g).json) printJSON(r.json);
  else {
    const s = r.json as { site: string; healthy: boolean; active: { kind: string; runId: string } | null; next_runs: Record<string, string | null>; lastGood?: { finishedAt: string } };
    process.stdout.write(`site ${s.site}: ${s.healthy ? "OK" : "ATTENTION"}; last good backup ${s.lastGood?.finishedAt ?? "none"}; ${s.active ? `running ${s.active.kind} ${s.active.runId}` : "idle"}\n`);
    for (const [job, at] of Object.entries(s.next_runs)) process.stdout.write(`  next ${job}: ${at ?? "-"}\n`);
  }
  return r.status === 200 ? 0 : 1;
}

export async function serviceRunCommand(g: GlobalOptions, f: { config?: string; drill?: boolean }): Promise<number> {
  const r = await callService(f, "POST", "/api/runs", { kind: f.drill ? "drill" : "backup" });
  if (outputOptions(g).json) printJSON(r.json);
  else if (r.status === 202) process.stdout.write(`started ${(r.json as { kind: string; run_id: string }).kind} ${(r.json as { run_id: string }).run_id}\n`);
  else process.stderr.write(`sitekeep: ${(r.json as { error?: { message: string; hint?: string } })?.error?.message ?? `HTTP ${r.status}`}\n`);
  return r.status === 202 ? 0 : r.status === 409 ? 11 : 1;
}
