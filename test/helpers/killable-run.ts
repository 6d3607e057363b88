// A sitekeep run that a crash test can kill at a chosen moment: the repository is watched (inotify)
// while the process runs, `killOn` is asked at every event, and SIGKILL follows after the delay it
// returns. What the run had done when it was killed is part of the result.
import { spawn } from "node:child_process";
import { SITEKEEP_BIN, childEnv } from "./run.js";

/** ms from spawn of the first and last event of each kind, and counts. */
export interface Seen<E extends string> {
  first: Partial<Record<E, number>>;
  last: Partial<Record<E, number>>;
  count: Record<E, number>;
}

export interface KillableRun<E extends string> {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  seen: Seen<E>;
  /** ms from spawn until exit. */
  exitAt: number;
  /** ms from spawn when SIGKILL was sent (undefined: the run ended first; it may also end just before the signal lands). */
  killedAt?: number;
  /** What the run had done (as seen) when it was killed. */
  seenAtKill?: Record<E, number>;
}

export function killableRun<E extends string>(
  args: string[],
  env: Record<string, string>,
  events: readonly E[],
  watch: (onEvent: (e: E) => void) => () => void,
  killOn?: (e: E, seen: Seen<E>) => number | undefined,
): Promise<KillableRun<E>> {
  return new Promise((resolve, reject) => {
    const start = performance.now();
    const seen: Seen<E> = { first: {}, last: {}, count: Object.fromEntries(events.map((e) => [e, 0])) as Record<E, number> };
    let exited = false;
    let killTimer: NodeJS.Timeout | undefined;
    let killedAt: number | undefined;
    let seenAtKill: Record<E, number> | undefined;
    const kill = (): void => {
      if (exited || killedAt !== undefined) return;
      killedAt = performance.now() - start;
      seenAtKill = { ...seen.count };
      child.kill("SIGKILL");
    };
    const unwatch = watch((e) => {
      const now = performance.now() - start;
      seen.first[e] ??= now;
      seen.last[e] = now;
      seen.count[e]++;
      if (killTimer || killedAt !== undefined || !killOn) return;
      const delay = killOn(e, seen);
      if (delay === undefined) return;
      if (delay <= 0) kill();
      else killTimer = setTimeout(kill, delay);
    });
    const child = spawn(process.execPath, [SITEKEEP_BIN, ...args], { env: childEnv(env), stdio: ["ignore", "pipe", "pipe"] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on("data", (d: Buffer) => out.push(d));
    child.stderr.on("data", (d: Buffer) => err.push(d));
    const safety = setTimeout(kill, 60_000);
    const done = (): void => {
      exited = true;
      unwatch();
      clearTimeout(safety);
      if (killTimer) clearTimeout(killTimer);
    };
    child.on("error", (e) => {
      done();
      reject(e);
    });
    child.on("close", (code, signal) => {
      done();
      resolve({
        code,
        signal,
        stdout: Buffer.concat(out).toString("utf8"),
        stderr: Buffer.concat(err).toString("utf8"),
        seen,
        exitAt: performance.now() - start,
        killedAt,
        seenAtKill,
      });
    });
  });
}
