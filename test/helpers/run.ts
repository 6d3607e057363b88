// Runs the sitekeep CLI and the reference restic binary as child processes, and makes temp dirs.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import * as fsp from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";

/** Absolute path of the repository root. */
export const REPO_ROOT = fileURLToPath(new URL("../../", import.meta.url));
/** Absolute path of bin/sitekeep.js (runs dist/ when built, else src/ via tsx). */
export const SITEKEEP_BIN = path.join(REPO_ROOT, "bin", "sitekeep.js");

export interface RunOptions {
  /**
   * Extra environment, merged over the inherited one (a value of undefined removes a variable).
   * Inherited RESTIC_* and SITEKEEP_* variables are dropped so tests are hermetic; NO_COLOR=1 is set.
   */
  env?: Record<string, string | undefined>;
  /** Written to stdin, which is then closed (stdin is always closed, so prompts never hang). */
  input?: string | Buffer;
  cwd?: string;
  /** Kill (SIGKILL) after this long; default 120 s. */
  timeoutMs?: number;
}

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** Raw stdout, for binary output (e.g. dump). */
  stdoutBuffer: Buffer;
  /** The process was killed because timeoutMs elapsed. */
  timedOut: boolean;
}

export function childEnv(extra?: Record<string, string | undefined>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (k.startsWith("RESTIC_") || k.startsWith("SITEKEEP_")) continue;
    env[k] = v;
  }
  env.NO_COLOR = "1";
  for (const [k, v] of Object.entries(extra ?? {})) {
    if (v === undefined) delete env[k];
    else env[k] = v;
  }
  return env;
}

/** Runs `command args…` and collects its output; rejects only if it cannot be started. */
export function runCommand(command: string, args: string[], opts?: RunOptions): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, {
      cwd: opts?.cwd,
      env: childEnv(opts?.env),
      stdio: ["pipe", "pipe", "pipe"],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill("SIGKILL");
    }, opts?.timeoutMs ?? 120_000);
    child.stdout.on("data", (d: Buffer) => out.push(d));
    child.stderr.on("data", (d: Buffer) => err.push(d));
    child.on("error", (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      const stdoutBuffer = Buffer.concat(out);
      resolve({
        code,
        signal,
        stdout: stdoutBuffer.toString("utf8"),
        stderr: Buffer.concat(err).toString("utf8"),
        stdoutBuffer,
        timedOut,
      });
    });
    child.stdin.on("error", () => {
      /* the child may exit without reading stdin (EPIPE) */
    });
    child.stdin.end(opts?.input ?? "");
  });
}

/** Runs `node bin/sitekeep.js args…`. */
export function runSitekeep(args: string[], opts?: RunOptions): Promise<RunResult> {
  return runCommand(process.execPath, [SITEKEEP_BIN, ...args], opts);
}

/** Runs the reference `restic` (or $RESTIC_BIN); pass RESTIC_PASSWORD etc. in opts.env. */
export function runRestic(args: string[], opts?: RunOptions): Promise<RunResult> {
  return runCommand(process.env.RESTIC_BIN ?? "restic", args, opts);
}

/** Formats a result for assertion messages. */
export function describeRun(r: RunResult): string {
  return `exit ${r.code ?? r.signal}${r.timedOut ? " (timed out)" : ""}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`;
}

/** Asserts that the command exited 0 (the message shows its output otherwise); returns the result. */
export function ok(r: RunResult): RunResult {
  assert.equal(r.code, 0, describeRun(r));
  return r;
}

export interface TempDir {
  path: string;
  /** Removes the directory (kept, with its path printed, when SITEKEEP_KEEP_TMP is set). */
  cleanup(): Promise<void>;
}

/** A fresh directory under the OS temp dir, named sitekeep-<prefix>-XXXXXX. */
export async function tempDir(prefix = "test"): Promise<TempDir> {
  const p = await fsp.mkdtemp(path.join(os.tmpdir(), `sitekeep-${prefix}-`));
  return {
    path: p,
    async cleanup() {
      if (process.env.SITEKEEP_KEEP_TMP) {
        process.stderr.write(`tempDir: keeping ${p}\n`);
        return;
      }
      try {
        await fsp.rm(p, { recursive: true, force: true });
      } catch {
        // Read-only directories (non-root runs) block removal: make everything writable, retry.
        await runCommand("chmod", ["-R", "u+rwx", p]).catch(() => undefined);
        await fsp.rm(p, { recursive: true, force: true });
      }
    },
  };
}
