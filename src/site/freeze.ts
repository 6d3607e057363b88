// `sitekeep site freeze --exec CMD`: other backup software uses Sitekeep's writers (the seed's DPM
// case). The writers are frozen in order, CMD runs (a filesystem snapshot, another tool), and the
// writers are thawed in reverse order whatever CMD did — also on SIGINT/SIGTERM, and by the
// watchdog if this process is killed.
import { spawn } from "node:child_process";
import { join } from "node:path";
import { ExitCode } from "../errors.js";
import { type ControlFile, isCommandWriter } from "./control-schema.js";
import { parseDurationMs } from "./duration.js";
import { StateStore, stateDirFor } from "./state.js";
import { newRunId } from "./task.js";
import { SiteLock } from "./site-lock.js";
import { WriterSet } from "./writers.js";

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
  const cmdWriters = config.writers.filter(isCommandWriter);
  const writers = new WriterSet(cmdWriters, {
    maxFreezeMs: parseDurationMs(config.backup.maxFreeze) ?? 600_000,
    watchdogLog: join(stateDir, "watchdog.log"),
    onEvent: (e) => opts.onLine?.(`writer ${e.writer}: ${e.action} ${e.ok ? "ok" : "FAILED: " + e.detail} (${e.durationMs} ms)`),
  });
  state.startRun({ id: runId, site: config.site, kind: "freeze" });
  let exitCode: number = ExitCode.failed;
  let thawFailed: string[] = [];
  let error: string | undefined;
  const forward: NodeJS.Signals[] = ["SIGINT", "SIGTERM"];
  let child: ReturnType<typeof spawn> | undefined;
  const onSignal = (sig: NodeJS.Signals): void => {
    child?.kill(sig);
  };
  for (const s of forward) process.on(s, onSignal);
  try {
    await writers.freeze();
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
