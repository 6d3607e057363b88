// `sitekeep serve`: the long-running service of one site. It runs the backup (and drill) schedule,
// catches up a run missed while it was down, never overlaps runs, stops a run that exceeds
// backup.maxDuration safely, watches the retention window, delivers alerts, and serves the HTTP API
// and /metrics. SIGHUP reloads the control file (an invalid one is refused and the old one kept).
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { openBackend } from "../backend/open.js";
import { SitekeepError, errorMessage } from "../errors.js";
import { ControlFileError, type LoadedControlFile, loadControlFile } from "../site/control-file.js";
import { dispatchAlerts } from "../site/alert-dispatch.js";
import type { DeliverOptions } from "../site/notify.js";
import { parseDurationMs } from "../site/duration.js";
import { type DrillReport, runDrill } from "../site/drill.js";
import { type RecoverOptions, type RecoveryReport, recoverSite } from "../site/recovery.js";
import { StateStore, stateDirFor } from "../site/state.js";
import { messageDef } from "../site/status-messages.js";
import { type SiteBackupResult, type SiteProgress, newRunId, runSiteBackup, siteTag, sitePassword } from "../site/task.js";
import { checkRetentionWindow } from "../site/watch.js";
import { Repository } from "../repo/repository.js";
import { type RepoStats, renderMetrics } from "./metrics.js";
import { type Clock, Scheduler, missedRun, systemClock } from "./scheduler.js";
import { type HttpServer, startHttp } from "./http.js";

export interface ServiceOptions {
  configPath: string;
  /** Overrides service.listen (tests: "127.0.0.1:0"). */
  listen?: string;
  clock?: Clock;
  env?: NodeJS.ProcessEnv;
  /** How often the retention window is checked and pending alerts delivered (default 60 s). */
  watchIntervalMs?: number;
  deliver?: DeliverOptions;
  /** Structured log lines (default: JSON to stdout). */
  log?: (entry: Record<string, unknown>) => void;
}

export type RunKind = "backup" | "drill" | "recovery";

export class BusyError extends SitekeepError {
  constructor(active: { kind: RunKind; runId: string }) {
    super("service.busy", `a ${active.kind} (run ${active.runId}) is already running`, { hint: "wait for it to finish; runs never overlap", exitCode: 11 });
  }
}

export class SiteService {
  private loaded: LoadedControlFile;
  private readonly state: StateStore;
  private readonly scheduler: Scheduler;
  private http: HttpServer | undefined;
  private active: { kind: RunKind; runId: string; abort: AbortController; done: Promise<unknown>; started: number; progress?: SiteProgress } | undefined;
  private watchTimer: NodeJS.Timeout | undefined;
  private repoStats: RepoStats | undefined;
  private stopping = false;
  /** Results of recent runs started here (recovery plans have no run record): for the console. */
  private readonly results = new Map<string, unknown>();
  readonly token: string;

  private constructor(
    private readonly opts: ServiceOptions,
    loaded: LoadedControlFile,
  ) {
    this.loaded = loaded;
    this.state = StateStore.open(this.stateDir, { now: () => this.clock.now() });
    this.scheduler = new Scheduler((job, err) => this.log("error", `scheduled ${job} failed to start`, { error: errorMessage(err) }));
    this.token = loadOrCreateToken(loaded.config.service?.tokenFile ?? join(this.stateDir, "service.token"));
  }

  static async start(opts: ServiceOptions): Promise<SiteService> {
    const svc = new SiteService(opts, loadControlFile(opts.configPath, opts.env ?? process.env));
    await svc.begin();
    return svc;
  }

  get config(): LoadedControlFile["config"] {
    return this.loaded.config;
  }

  /** The environment runs and the API use (the repository password comes from it). */
  get env(): NodeJS.ProcessEnv {
    return this.opts.env ?? process.env;
  }

  get configPath(): string {
    return this.opts.configPath;
  }

  /** The console password (service.passwordFile), read on each login so a change needs no restart. */
  consolePassword(): string | undefined {
    const f = this.config.service?.passwordFile;
    if (!f) return undefined;
    try {
      return readFileSync(f, "utf8").replace(/\r?\n$/, "");
    } catch {
      return undefined;
    }
  }

  get stateDir(): string {
    return stateDirFor(this.loaded.config.stateDir);
  }

  get url(): string {
    return this.http?.url ?? "";
  }

  get clock(): Clock {
    return this.opts.clock ?? systemClock;
  }

  get store(): StateStore {
    return this.state;
  }

  /** The active run with its phase and progress (files, bytes, rate, ETA when known). */
  get activeRun(): { kind: RunKind; runId: string; progress?: SiteProgress & { rate?: number; etaSeconds?: number } } | undefined {
    if (!this.active) return undefined;
    const p = this.active.progress;
    const secs = (Date.now() - this.active.started) / 1000;
    const rate = p?.bytes !== undefined && secs > 0 ? p.bytes / secs : undefined;
    const eta = rate && p?.totalBytes && p.bytes !== undefined && p.totalBytes > p.bytes ? (p.totalBytes - p.bytes) / rate : undefined;
    return { kind: this.active.kind, runId: this.active.runId, ...(p ? { progress: { ...p, ...(rate !== undefined ? { rate } : {}), ...(eta !== undefined ? { etaSeconds: eta } : {}) } } : {}) };
  }

  /** The result of a run started by this service (a recovery report, a drill report, a backup summary). */
  result(runId: string): unknown {
    return this.results.get(runId);
  }

  nextRuns(): Record<string, Date | null> {
    return this.scheduler.nextRuns();
  }

  private async begin(): Promise<void> {
    const c = this.config;
    const def = messageDef("component-started");
    this.state.addMessage({ site: c.site, messageId: def.id, severity: def.severity, text: `Sitekeep service started for site ${c.site} (PID ${process.pid})` });
    this.http = await startHttp(this, this.opts.listen ?? c.service?.listen ?? "127.0.0.1:8420", c.service?.tls);
    this.schedule();
    this.log("info", "service started", { url: this.url, next: this.nextRuns() });
    const every = this.opts.watchIntervalMs ?? 60_000;
    this.watchTimer = setInterval(() => void this.watch(), every);
    this.watchTimer.unref();
    void this.watch();
    // A run missed while the service was down runs once now.
    const b = c.backup;
    if (b.enabled && b.schedule && (c.service?.catchUp ?? true)) {
      const last = this.state.runs(c.site, 1, "backup")[0];
      if (missedRun(b.schedule, b.timezone, last ? new Date(last.started_at) : undefined, this.clock.now())) {
        this.log("info", "a scheduled backup was missed while the service was down: running it now");
        void this.startRun("backup").catch((err: unknown) => this.log("warn", "catch-up run not started", { error: errorMessage(err) }));
      }
    }
  }

  private schedule(): void {
    const c = this.config;
    const jobs = [];
    if (c.backup.enabled && c.backup.schedule) jobs.push({ name: "backup" as const, cron: c.backup.schedule, timezone: c.backup.timezone, run: () => this.scheduledRun("backup") });
    if (c.drill?.schedule) jobs.push({ name: "drill" as const, cron: c.drill.schedule, timezone: c.backup.timezone, run: () => this.scheduledRun("drill") });
    this.scheduler.start(jobs);
  }

  private async scheduledRun(kind: RunKind): Promise<void> {
    try {
      const { done } = await this.startRun(kind);
      await done;
    } catch (err) {
      if (err instanceof BusyError) this.log("warn", `scheduled ${kind} skipped: ${err.message}`);
      else throw err;
    }
  }

  /** Starts a run in the background; refuses while another runs (409 in the API). */
  async startRun(kind: RunKind, recover?: Omit<RecoverOptions, "loaded" | "env" | "onLine">): Promise<{ runId: string; done: Promise<SiteBackupResult | DrillReport | RecoveryReport> }> {
    if (this.stopping) throw new SitekeepError("service.stopping", "the service is stopping", { hint: "try again after it restarted" });
    if (this.active) throw new BusyError(this.active);
    const runId = newRunId(this.clock.now());
    const abort = new AbortController();
    const maxMs = parseDurationMs(this.config.backup.maxDuration) ?? 12 * 3600_000;
    const timer = setTimeout(() => abort.abort(`the run exceeded backup.maxDuration (${this.config.backup.maxDuration}) and was stopped`), maxMs);
    timer.unref();
    const loaded = this.loaded;
    const env = this.opts.env ?? process.env;
    this.log("info", `${kind} started`, { run: runId });
    const runIt = async (): Promise<SiteBackupResult | DrillReport | RecoveryReport> => {
      if (kind === "backup") {
        const r = await runSiteBackup(loaded, {
          signal: abort.signal,
          env,
          runId,
          now: () => this.clock.now(),
          onProgress: (p) => {
            if (this.active?.runId === runId) this.active.progress = p;
          },
        });
        this.log(r.status === "succeeded" ? "info" : "error", `backup ${r.status}`, { run: runId, message_id: r.messageId, snapshot: r.snapshotId, error: r.error?.message });
        await this.refreshRepoStats();
        return r;
      }
      if (kind === "recovery") {
        // Recovery from the console: the same function as `site recover`, never overlapping a run.
        const r = await recoverSite({ ...recover, loaded, env, runId });
        this.log(r.ok ? "info" : "error", `recovery ${r.dryRun ? "plan" : r.ok ? "completed" : "failed"}`, { run: r.id, report: r.reportFiles?.json });
        return r;
      }
      const d = await runDrill(loaded, { env, runId, now: () => this.clock.now() });
      this.log(d.ok ? "info" : "error", `drill ${d.ok ? "passed" : "failed"}`, { run: runId, rto_ms: d.rtoMs });
      return d;
    };
    const done = (async () => {
      try {
        // The result is kept before the run counts as finished: the console reads it from then on.
        const r = await runIt();
        this.results.set(runId, r);
        return r;
      } catch (err) {
        this.results.set(runId, { ok: false, error: { message: errorMessage(err), ...(err instanceof SitekeepError && err.hint ? { hint: err.hint } : {}) } });
        throw err;
      } finally {
        clearTimeout(timer);
        this.active = undefined;
        if (this.results.size > 20) this.results.delete(this.results.keys().next().value as string);
        await this.watch();
      }
    })();
    this.active = { kind, runId, abort, done, started: Date.now() };
    done.catch((err: unknown) => this.log("error", `${kind} crashed`, { run: runId, error: errorMessage(err) }));
    return { runId, done };
  }

  private watching: Promise<void> | undefined;

  /** The retention window and pending alert deliveries (one round at a time). */
  watch(): Promise<void> {
    this.watching ??= this.watchOnce().finally(() => {
      this.watching = undefined;
    });
    return this.watching;
  }

  private async watchOnce(): Promise<void> {
    try {
      const r = checkRetentionWindow(this.config, this.state, this.clock.now());
      if (r.opened) this.log("warn", "the newest good backup is older than the retention window");
      // Alert commands get no repository password.
      await dispatchAlerts(this.config, this.state, { ...this.opts.deliver, env: { ...this.env, SITEKEEP_PASSWORD: undefined }, now: this.clock.now() });
    } catch (err) {
      this.log("error", "watch failed", { error: errorMessage(err) });
    }
  }

  /** Re-reads the control file; an invalid one is refused and the running one kept. */
  reload(): { ok: boolean; error?: string } {
    const c = this.config;
    try {
      const next = loadControlFile(this.opts.configPath, this.opts.env ?? process.env);
      if (next.config.site !== c.site) throw new SitekeepError("service.reload", `the site code changed (${c.site} -> ${next.config.site})`, { hint: "restart the service to serve another site" });
      this.loaded = next;
      this.schedule();
      this.state.closeAlerts(c.site, ["config-invalid"], "reload");
      this.log("info", "control file reloaded", { next: this.nextRuns() });
      return { ok: true };
    } catch (err) {
      const text = err instanceof ControlFileError ? err.message.split("\n").slice(0, 4).join(" ") : errorMessage(err);
      const def = messageDef("config-invalid");
      this.state.addMessage({ site: c.site, messageId: def.id, severity: def.severity, text: `Reload refused, the previous control file stays in force: ${text}` });
      this.state.openAlert({ site: c.site, kind: "config-invalid", severity: "warning", messageId: def.id, text: `The control file ${this.opts.configPath} is invalid; the service keeps the previous one: ${text}` });
      this.log("error", "reload refused: the control file is invalid; keeping the previous one", { error: text });
      void this.watch();
      return { ok: false, error: text };
    }
  }

  /** Stops scheduling, stops a running run safely (writers thawed), closes the API. */
  async stop(): Promise<void> {
    this.stopping = true;
    this.scheduler.stop();
    if (this.watchTimer) clearInterval(this.watchTimer);
    if (this.active) {
      this.active.abort.abort("the service is stopping");
      await this.active.done.catch(() => undefined);
    }
    await this.http?.close();
    this.state.close();
    this.log("info", "service stopped");
  }

  /** Snapshot count and repository size for /metrics, refreshed after each run. */
  async refreshRepoStats(): Promise<void> {
    try {
      const backend = openBackend(this.config.backup.destination);
      try {
        let bytes = 0;
        for await (const f of backend.list("data")) bytes += f.size;
        const repo = await Repository.open(backend, sitePassword(this.config, this.opts.env ?? process.env));
        const snaps = (await repo.listSnapshots(() => undefined)).filter((s) => s.tags?.includes(siteTag(this.config.site)));
        this.repoStats = { snapshots: snaps.length, bytes };
      } finally {
        await backend.close().catch(() => undefined);
      }
    } catch (err) {
      this.log("warn", "repository statistics unavailable", { error: errorMessage(err) });
    }
  }

  metrics(): string {
    return renderMetrics(this.config, this.state, { nextRuns: this.nextRuns(), repo: this.repoStats, running: Boolean(this.active) });
  }

  log(level: "info" | "warn" | "error", msg: string, fields: Record<string, unknown> = {}): void {
    const entry = { time: this.clock.now().toISOString(), level, site: this.loaded.config.site, msg, ...fields };
    if (this.opts.log) this.opts.log(entry);
    else process.stdout.write(JSON.stringify(entry) + "\n");
  }
}

/** The API's bearer token: read from its file, or created there (0600) on first start. */
function loadOrCreateToken(file: string): string {
  if (existsSync(file)) {
    const t = readFileSync(file, "utf8").trim();
    if (t.length < 16) throw new SitekeepError("service.token", `the token in ${file} is too short`, { hint: "delete the file: a new token is created at the next start" });
    return t;
  }
  mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
  const t = randomBytes(32).toString("base64url");
  writeFileSync(file, t + "\n", { mode: 0o600, flag: "wx" });
  return t;
}
