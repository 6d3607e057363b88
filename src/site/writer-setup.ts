// Builds the writers of a run from the control file, in its order: command writers as they are,
// socket writers once their application has registered on the task's writer socket. Shared by the
// backup task and `site freeze --exec`.
import { join } from "node:path";
import { commandExists } from "./command.js";
import { type ControlFile, isCommandWriter } from "./control-schema.js";
import { StepError } from "./destination.js";
import { parseDurationMs } from "./duration.js";
import { WriterServer } from "./writer-server.js";
import { type Writer, type WriterEvent, WriterSet, commandWriter } from "./writers.js";

export interface PreparedWriters {
  set: WriterSet;
  server?: WriterServer;
  /** Optional socket writers that did not register (the run goes on without them). */
  absent: string[];
}

/** Starts listening for socket writers (call early, so applications can register while preflight runs). */
export async function openWriterSocket(c: ControlFile, stateDir: string, runId: string): Promise<WriterServer | undefined> {
  if (!c.writers.some((w) => !isCommandWriter(w))) return undefined;
  return WriterServer.listen(stateDir, c.site, runId);
}

/** Checks every writer can take part and returns the set to freeze; throws writer-missing. */
export async function prepareWriters(
  c: ControlFile,
  opts: { stateDir: string; server?: WriterServer; env: NodeJS.ProcessEnv; onEvent?: (e: WriterEvent) => void; maxFreezeMs?: number },
): Promise<PreparedWriters> {
  const maxFreezeMs = opts.maxFreezeMs ?? parseDurationMs(c.backup.maxFreeze) ?? 600_000;
  const socketWriters = c.writers.filter((w) => !isCommandWriter(w));
  let registeredMissing: string[] = [];
  if (socketWriters.length && opts.server) {
    const wait = Math.max(...socketWriters.map((w) => parseDurationMs(w.timeout) ?? 60_000));
    registeredMissing = await opts.server.waitFor(socketWriters.map((w) => w.name), wait);
  }
  const writers: Writer[] = [];
  const absent: string[] = [];
  let budget = maxFreezeMs;
  for (const w of c.writers) {
    const timeout = parseDurationMs(w.timeout) ?? 60_000;
    budget += 2 * timeout;
    if (isCommandWriter(w)) {
      for (const cmd of [w.freeze, w.thaw]) {
        if (!(await commandExists(cmd, opts.env))) {
          throw new StepError("writer-missing", `writer ${w.name}: the command ${JSON.stringify(cmd)} cannot run here (not found)`, "install it or fix the writer's command in the control file");
        }
      }
      writers.push(commandWriter(w, opts.env));
    } else if (registeredMissing.includes(w.name) || !opts.server) {
      if (w.required) {
        throw new StepError("writer-missing", `writer ${w.name} did not register on ${opts.server?.path ?? "the writer socket"} within ${w.timeout}`, "start the application (it registers with sitekeep/writer's startWriter), or set required: false");
      }
      absent.push(w.name);
    } else {
      writers.push(opts.server.writer(w.name, timeout, maxFreezeMs));
    }
  }
  const set = new WriterSet(writers, { maxFreezeMs: budget, watchdogLog: join(opts.stateDir, "watchdog.log"), env: opts.env, onEvent: opts.onEvent });
  return { set, ...(opts.server ? { server: opts.server } : {}), absent };
}
