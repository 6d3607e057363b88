// Commands from the control file (freeze, thaw, export, restore, pathsFrom, afterBackup): run with
// /bin/sh -c in their own process group, with a timeout that kills the whole group, their output
// kept (bounded) for the log.
import { type ChildProcess, spawn } from "node:child_process";
import type { Readable } from "node:stream";

const KEEP_OUTPUT = 64 * 1024;

export interface CommandResult {
  command: string;
  /** Exit status; null when killed by a signal or the timeout. */
  code: number | null;
  signal: NodeJS.Signals | null;
  timedOut: boolean;
  stdout: string;
  stderr: string;
  durationMs: number;
}

export interface CommandOptions {
  timeoutMs: number;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** Written to the command's stdin, which is then closed. */
  input?: Buffer | string;
  signal?: AbortSignal;
}

export function commandOk(r: CommandResult): boolean {
  return r.code === 0 && !r.timedOut;
}

/** One line saying how a command ended, with the tail of its stderr. */
export function describeResult(r: CommandResult): string {
  const how = r.timedOut ? "timed out" : r.signal ? `was killed by ${r.signal}` : `exited with status ${r.code}`;
  const tail = r.stderr.trim().split("\n").slice(-3).join(" | ");
  return `${JSON.stringify(r.command)} ${how}${tail ? `: ${tail}` : ""}`;
}

/** Runs a shell command to completion and returns its outcome (never throws for a failing command). */
export function runCommand(command: string, opts: CommandOptions): Promise<CommandResult> {
  const started = Date.now();
  const child = spawnShell(command, opts, opts.input !== undefined ? "pipe" : "ignore");
  let stdout = "";
  let stderr = "";
  child.stdout?.on("data", (d: Buffer) => {
    if (stdout.length < KEEP_OUTPUT) stdout += d.toString();
  });
  child.stderr?.on("data", (d: Buffer) => {
    if (stderr.length < KEEP_OUTPUT) stderr += d.toString();
  });
  if (opts.input !== undefined && child.stdin) {
    child.stdin.on("error", () => undefined); // the command may not read its input
    child.stdin.end(opts.input);
  }
  return waitFor(child, command, opts, started).then((end) => ({ ...end, stdout, stderr }));
}

/**
 * Starts a shell command whose stdout is consumed as a stream (a dump); `done` settles when it has
 * exited. The caller must read `stdout` to the end.
 */
export function streamCommand(
  command: string | { file: string; args: string[] },
  opts: CommandOptions,
): { stdout: Readable; done: Promise<CommandResult>; kill: () => void } {
  const started = Date.now();
  const child = typeof command === "string" ? spawnShell(command, opts, "ignore") : spawnFile(command.file, command.args, opts);
  let stderr = "";
  child.stderr?.on("data", (d: Buffer) => {
    if (stderr.length < KEEP_OUTPUT) stderr += d.toString();
  });
  const label = typeof command === "string" ? command : [command.file, ...command.args].join(" ");
  const done = waitFor(child, label, opts, started).then((end) => ({ ...end, stdout: "", stderr }));
  return { stdout: child.stdout as Readable, done, kill: () => killGroup(child) };
}

function spawnShell(command: string, opts: CommandOptions, stdin: "pipe" | "ignore"): ChildProcess {
  return spawn("/bin/sh", ["-c", command], {
    stdio: [stdin, "pipe", "pipe"],
    env: opts.env ?? process.env,
    cwd: opts.cwd,
    detached: true, // its own process group: a timeout kills the command and everything it started
  });
}

function spawnFile(file: string, args: string[], opts: CommandOptions): ChildProcess {
  return spawn(file, args, { stdio: ["ignore", "pipe", "pipe"], env: opts.env ?? process.env, cwd: opts.cwd, detached: true });
}

function killGroup(child: ChildProcess): void {
  if (child.pid === undefined || child.exitCode !== null) return;
  try {
    process.kill(-child.pid, "SIGKILL");
  } catch {
    child.kill("SIGKILL");
  }
}

function waitFor(child: ChildProcess, command: string, opts: CommandOptions, started: number): Promise<Omit<CommandResult, "stdout" | "stderr">> {
  return new Promise((resolve) => {
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      killGroup(child);
    }, opts.timeoutMs);
    const onAbort = (): void => killGroup(child);
    opts.signal?.addEventListener("abort", onAbort, { once: true });
    const finish = (code: number | null, signal: NodeJS.Signals | null): void => {
      clearTimeout(timer);
      opts.signal?.removeEventListener("abort", onAbort);
      resolve({ command, code: timedOut ? null : code, signal, timedOut, durationMs: Date.now() - started });
    };
    child.on("error", () => finish(127, null));
    child.on("close", finish);
  });
}

/** True when the first word of a shell command names something that can run here. */
export async function commandExists(command: string, env: NodeJS.ProcessEnv = process.env): Promise<boolean> {
  const first = command.trim().match(/^(?:[A-Za-z_][A-Za-z0-9_]*=\S*\s+)*("[^"]+"|'[^']+'|\S+)/)?.[1];
  if (!first) return false;
  const word = first.replace(/^["']|["']$/g, "");
  const r = await runCommand(`command -v -- '${word.replace(/'/g, "'\\''")}' >/dev/null 2>&1`, { timeoutMs: 5000, env });
  return r.code === 0;
}
