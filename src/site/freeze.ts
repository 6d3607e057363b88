// `sitekeep site freeze --exec CMD`: other backup software uses Sitekeep's writers (the seed's DPM
// case). The writers are frozen in order, CMD runs (a filesystem snapshot, another tool), and the
// writers are thawed in reverse order whatever CMD did — also on SIGINT/SIGTERM, and by the
// watchdog if this process is killed.
import { spawn } from "node:child_process";
import { ExitCode } from "../errors.js";
import type { ControlFile } from "./control-schema.js";
import { StateStore, stateDirFor } from "./state.js";
import { newRunId } from "./task.js";
import { SiteLock } from "./site-lock.js";
import { type WriterEvent, WriterSet } from "./writers.js";
import { openWriterSocket, prepareWriters } from "./writer-setup.js";
import type { WriterServer } from "./writer-server.js";

export interface FrozenResult {
  exitCode: number;
  freezeWindowMs?: number;
  thawFailed: string[];
}

export async function runFrozen(config: ControlFile, command: string, opts: { onLine?: (l: string) => void } = {}): Promise<FrozenResult> {
  const stateDir = stateDirFor(config.stateDir);
  const state = StateStore.open(stateDir);
  const runId = newRunId();
  const lock = SiteLock.acquire(stateDir, config.site, runId);
  const env = process.env;
  const onEvent = (e: WriterEvent): void => opts.onLine?.(`writer ${e.writer}: ${e.action} ${e.ok ? "ok" : "FAILED: " + e.detail} (${e.durationMs} ms)`);
  let writers = new WriterSet([], { maxFreezeMs: 0, watchdogLog: "" });
  let server: WriterServer | undefined;
  state.startRun({ id: runId, site: config.site, kind: "freeze" });
  let exitCode: number = ExitCode.failed;
  let thawFailed: string[] = [];
  let error: string | undefined;
  const forward: NodeJS.Signals[] = ["SIGINT", "SIGTERM"];
  let child: ReturnType<typeof spawn> | undefined;
  const abort = new AbortController();
  const onSignal = (sig: NodeJS.Signals): void => {
    abort.abort();
    child?.kill(sig);
  };
  for (const s of forward) process.on(s, onSignal);
  try {
    server = await openWriterSocket(config, stateDir, runId);
    const prepared = await prepareWriters(config, { stateDir, server, env, onEvent });
    writers = prepared.set;
    for (const name of prepared.absent) opts.onLine?.(`writer ${name}: not registered (required: false), not frozen`);
    await writers.freeze(abort.signal);
    if (abort.signal.aborted) throw new Error("interrupted before the command ran");
    opts.onLine?.(`writers frozen; running ${command}`);
    exitCode = await new Promise<number>((resolve) => {
      child = spawn("/bin/sh", ["-c", command], { stdio: "inherit" });
      child.on("error", () => resolve(127));
      child.on("close", (code, signal) => resolve(signal ? 128 + 2 : (code ?? 1)));
    });
  } catch (err) {
    error = err instanceof Error ? err.message : String(err);
    opts.onLine?.(`freeze failed: ${error}`);
  } finally {
    thawFailed = await writers.thaw();
    for (const s of forward) process.off(s, onSignal);
    await server?.close().catch(() => undefined);
    lock.release();
  }
  if (thawFailed.length) {
    error = `thaw failed for ${thawFailed.join(", ")}`;
    opts.onLine?.(error);
    exitCode = ExitCode.failed;
  }
  state.finishRun(runId, { status: error || exitCode !== 0 ? "failed" : "succeeded", freezeMs: writers.freezeWindowMs, ...(error ? { error } : {}) });
  state.close();
  return { exitCode: error && exitCode === 0 ? ExitCode.failed : exitCode, ...(writers.freezeWindowMs !== undefined ? { freezeWindowMs: writers.freezeWindowMs } : {}), thawFailed };
}
