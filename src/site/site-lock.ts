// One run per site at a time: a lock file in the state directory, created exclusively. A lock left
// by a process that no longer exists on this host is taken over.
import { closeSync, mkdirSync, openSync, readFileSync, renameSync, statSync, unlinkSync, writeSync } from "node:fs";
import { hostname } from "node:os";
import { join } from "node:path";
import { SitekeepError } from "../errors.js";

interface LockBody {
  pid: number;
  host: string;
  runId: string;
  started: string;
}

export function processAlive(pid: number): boolean {
  if (!Number.isSafeInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

export class SiteLock {
  private constructor(private readonly path: string) {}

  static acquire(stateDir: string, site: string, runId: string): SiteLock {
    const dir = join(stateDir, "locks");
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const path = join(dir, `${site}.lock`);
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        const fd = openSync(path, "wx", 0o600);
        const body: LockBody = { pid: process.pid, host: hostname(), runId, started: new Date().toISOString() };
        writeSync(fd, JSON.stringify(body));
        closeSync(fd);
        return new SiteLock(path);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
      }
      let other: Partial<LockBody> = {};
      try {
        other = JSON.parse(readFileSync(path, "utf8")) as LockBody;
      } catch {
        // being written right now, or garbage: treat as held unless it is garbage twice
      }
      const stale = other.host === hostname() && typeof other.pid === "number" && !processAlive(other.pid);
      if (stale || (attempt === 0 && other.pid === undefined && safeAgeMs(path) > 60_000)) {
        // Take the stale lock out of the way with a rename: of two processes racing here only
        // one rename succeeds, so the other cannot remove the lock the winner creates next.
        try {
          const aside = `${path}.stale-${process.pid}`;
          renameSync(path, aside);
          unlinkSync(aside);
        } catch {
          // someone else moved it first; try to create ours (and lose to theirs if it is there)
        }
        continue;
      }
      throw new SitekeepError("site.busy", `another backup of site ${site} is running (run ${other.runId ?? "?"}, PID ${other.pid ?? "?"} on ${other.host ?? "?"}, since ${other.started ?? "?"})`, {
        hint: "wait for it to finish; runs of one site never overlap",
        exitCode: 11,
      });
    }
    throw new SitekeepError("site.busy", `cannot take the run lock ${path}`, { hint: "remove it if no sitekeep process is running", exitCode: 11 });
  }

  release(): void {
    try {
      unlinkSync(this.path);
    } catch {
      // already gone
    }
  }
}

function safeAgeMs(path: string): number {
  try {
    return Date.now() - statSync(path).mtimeMs;
  } catch {
    return 0;
  }
}
