// Writers quiesce the application while the snapshot is cut (the seed's SMS Writer / VSS writers).
// Command writers are frozen in order and thawed in reverse order, always: after an error, a
// timeout, a signal, and even when this process is killed with SIGKILL, because a watchdog process
// started before the first freeze outlives us and thaws whatever we did not report as thawed, as
// soon as our end of its pipe closes or the freeze deadline passes. It only thaws writers whose
// freeze was started (we say "freezing NAME" before each).
import { spawn } from "node:child_process";
import { SitekeepError } from "../errors.js";
import type { CommandWriterSpec } from "./control-schema.js";
import { parseDurationMs } from "./duration.js";
import { commandOk, describeResult, runCommand } from "./command.js";

export interface WriterEvent {
  writer: string;
  action: "freeze" | "thaw";
  ok: boolean;
  detail: string;
  durationMs: number;
}

export interface WriterSetOptions {
  /** The watchdog thaws by this many ms after the freeze began, whatever happens to us. */
  maxFreezeMs: number;
  /** Where the watchdog appends what it did. */
  watchdogLog: string;
  env?: NodeJS.ProcessEnv;
  onEvent?: (e: WriterEvent) => void;
  /** Tests: do not start the watchdog. */
  noWatchdog?: boolean;
}

/** The watchdog, run with `node -e`: plain JavaScript on purpose (no loader, no imports of ours). */
const WATCHDOG_SOURCE = String.raw`
const { spawn } = require("node:child_process");
const fs = require("node:fs");
let cfg = null, buf = "", fired = false, finished = false;
const thawed = new Set(), frozen = new Set();
const log = (s) => { try { fs.appendFileSync(cfg.log, new Date().toISOString() + " watchdog[" + process.pid + "] " + s + "\n"); } catch {} };
const runThaw = (w) => new Promise((res) => {
  const c = spawn("/bin/sh", ["-c", w.thaw], { stdio: "ignore", detached: true, env: cfg.env });
  const t = setTimeout(() => { try { process.kill(-c.pid, "SIGKILL"); } catch {} }, w.timeoutMs);
  c.on("error", () => { clearTimeout(t); res(127); });
  c.on("close", (code) => { clearTimeout(t); res(code); });
});
const fire = async (why) => {
  if (fired || finished || !cfg) return;
  fired = true;
  const left = cfg.writers.filter((w) => frozen.has(w.name) && !thawed.has(w.name)).reverse();
  log(why + "; thawing " + (left.map((w) => w.name).join(", ") || "nothing"));
  for (const w of left) { const code = await runThaw(w); log("thaw " + w.name + " exited " + code); }
  process.exit(0);
};
process.stdin.setEncoding("utf8");
process.stdin.on("data", (d) => {
  buf += d;
  let i;
  while ((i = buf.indexOf("\n")) >= 0) {
    const line = buf.slice(0, i); buf = buf.slice(i + 1);
    if (!cfg) { cfg = JSON.parse(line); setTimeout(() => fire("freeze deadline passed"), Math.max(0, cfg.deadline - Date.now())).unref(); continue; }
    if (line.startsWith("freezing ")) frozen.add(line.slice(9));
    else if (line.startsWith("thawed ")) thawed.add(line.slice(7));
    else if (line === "done") { finished = true; process.exit(0); }
  }
});
process.stdin.on("end", () => fire("the backup process ended without thawing"));
// Stopping a service sends SIGTERM to its whole process group or cgroup: that is when we are needed.
for (const sig of ["SIGTERM", "SIGINT", "SIGHUP"]) process.on(sig, () => fire("received " + sig));
process.stdin.on("error", () => fire("the pipe to the backup process broke"));
setInterval(() => {}, 1 << 30);
`;

/** How one writer's step went. */
export interface StepResult {
  ok: boolean;
  detail: string;
  durationMs: number;
}

/** A writer of either kind, as the set drives it. */
export interface Writer {
  name: string;
  /** The signal stops a freeze in progress (the run was interrupted). */
  freeze(signal?: AbortSignal): Promise<StepResult>;
  thaw(): Promise<StepResult>;
  /** What the watchdog runs to thaw it if this process dies (command writers). */
  watchdogThaw?: { thaw: string; timeoutMs: number };
}

/** A writer made of two shell commands. */
export function commandWriter(w: CommandWriterSpec, env?: NodeJS.ProcessEnv): Writer {
  const run = async (cmd: string, signal?: AbortSignal): Promise<StepResult> => {
    const r = await runCommand(cmd, { timeoutMs: timeoutMs(w), env, signal });
    const interrupted = signal?.aborted && !commandOk(r);
    return { ok: commandOk(r), detail: interrupted ? `${JSON.stringify(cmd)} was stopped: the run was interrupted` : describeResult(r), durationMs: r.durationMs };
  };
  // Thaw gets no signal: once started it must finish, whatever else happens.
  return { name: w.name, freeze: (signal) => run(w.freeze, signal), thaw: () => run(w.thaw), watchdogThaw: { thaw: w.thaw, timeoutMs: timeoutMs(w) } };
}

export class WriterSet {
  private readonly frozen: Writer[] = [];
  private watchdog: ReturnType<typeof spawn> | undefined;
  private frozenAt: number | undefined;
  private thawedAt: number | undefined;

  constructor(
    private readonly writers: Writer[],
    private readonly opts: WriterSetOptions,
  ) {}

  get count(): number {
    return this.writers.length;
  }

  /** When the first writer's freeze began (ms since the epoch), undefined before. */
  get frozenSince(): number | undefined {
    return this.frozenAt;
  }

  /** Milliseconds between the first freeze and the last thaw (undefined before both happened). */
  get freezeWindowMs(): number | undefined {
    return this.frozenAt !== undefined && this.thawedAt !== undefined ? this.thawedAt - this.frozenAt : undefined;
  }

  /**
   * Freezes every writer in order. When one fails, everything frozen so far (and the failing one,
   * which may be half-frozen) is thawed before the error is thrown.
   */
  async freeze(signal?: AbortSignal): Promise<void> {
    if (!this.writers.length) return;
    this.startWatchdog();
    this.frozenAt = Date.now();
    for (const w of this.writers) {
      if (signal?.aborted) {
        const thawErrors = await this.thaw();
        throw new SitekeepError("writer.interrupted", `interrupted while freezing the writers; everything frozen was thawed${thawErrors.length ? ` (thaw failed for ${thawErrors.join(", ")})` : ""}`, {
          hint: "run the backup again",
          exitCode: 130,
        });
      }
      this.frozen.push(w); // before running: a half-done freeze must be thawed too
      this.tellWatchdog(`freezing ${w.name}`);
      const r = await w.freeze(signal);
      this.opts.onEvent?.({ writer: w.name, action: "freeze", ...r });
      if (!r.ok) {
        const thawErrors = await this.thaw();
        throw new SitekeepError("writer.freeze", `writer ${w.name} failed to freeze: ${r.detail}${thawErrors.length ? `; thaw also failed for ${thawErrors.join(", ")}` : "; everything frozen was thawed"}`, {
          hint: "run the freeze command by hand to see why; raise the writer's timeout if it is slow",
        });
      }
    }
  }

  /** Thaws frozen writers in reverse order; every one is tried. Returns the names that failed. */
  async thaw(): Promise<string[]> {
    const failed: string[] = [];
    while (this.frozen.length) {
      const w = this.frozen.pop() as Writer;
      const r = await w.thaw();
      this.tellWatchdog(`thawed ${w.name}`);
      this.opts.onEvent?.({ writer: w.name, action: "thaw", ...r });
      if (!r.ok) failed.push(`${w.name} (${r.detail})`);
    }
    if (this.frozenAt !== undefined && this.thawedAt === undefined) this.thawedAt = Date.now();
    this.stopWatchdog();
    return failed;
  }

  private startWatchdog(): void {
    const guarded = this.writers.filter((w) => w.watchdogThaw);
    if (this.opts.noWatchdog || this.watchdog || !guarded.length) return;
    const child = spawn(process.execPath, ["-e", WATCHDOG_SOURCE], { stdio: ["pipe", "ignore", "ignore"], detached: true });
    child.stdin?.on("error", () => undefined);
    child.unref();
    const cfg = {
      deadline: Date.now() + this.opts.maxFreezeMs,
      log: this.opts.watchdogLog,
      env: this.opts.env ?? process.env,
      writers: guarded.map((w) => ({ name: w.name, ...w.watchdogThaw })),
    };
    child.stdin?.write(JSON.stringify(cfg) + "\n");
    this.watchdog = child;
  }

  private tellWatchdog(line: string): void {
    this.watchdog?.stdin?.write(line + "\n");
  }

  private stopWatchdog(): void {
    if (!this.watchdog) return;
    this.tellWatchdog("done");
    this.watchdog.stdin?.end();
    this.watchdog = undefined;
  }
}

function timeoutMs(w: CommandWriterSpec): number {
  return parseDurationMs(w.timeout) ?? 60_000;
}
