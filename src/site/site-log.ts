// The run log in the destination (`sitekeep.log`, beside the repository's folders), the seed's
// Smsbkup.log: one line per event and a `STATMSG: ID=... SEV=...` line per status message, so
// existing log watchers keep working. Rotated when it grows past 4 MiB (5 old files kept).
import { appendFileSync, existsSync, mkdirSync, renameSync, statSync } from "node:fs";
import { join } from "node:path";
import type { Severity } from "./status-messages.js";

const ROTATE_AT = 4 * 1024 * 1024;
const KEEP = 5;

export class SiteLog {
  private broken = false;

  constructor(
    readonly path: string,
    private readonly site: string,
    private readonly runId: string,
  ) {}

  /** The log of a local destination, or one in the state directory for remote (s3:) destinations. */
  static forDestination(destination: string, stateDir: string, site: string, runId: string): SiteLog {
    if (!destination.startsWith("s3:")) return new SiteLog(join(destination, "sitekeep.log"), site, runId);
    // Our own folder: created here (a local destination's folder never is: a missing one is an error).
    const dir = join(stateDir, "logs", site);
    try {
      mkdirSync(dir, { recursive: true, mode: 0o700 });
    } catch {
      // reported by the first write
    }
    return new SiteLog(join(dir, "sitekeep.log"), site, runId);
  }

  /** Rotates an oversized log before a run starts writing. */
  rotate(): void {
    try {
      if (!existsSync(this.path) || statSync(this.path).size < ROTATE_AT) return;
      for (let i = KEEP - 1; i >= 1; i--) {
        if (existsSync(`${this.path}.${i}`)) renameSync(`${this.path}.${i}`, `${this.path}.${i + 1}`);
      }
      renameSync(this.path, `${this.path}.1`);
    } catch {
      // a log that cannot rotate still takes lines
    }
  }

  line(text: string): void {
    this.write(`${new Date().toISOString()} [${this.site} ${this.runId}] ${text}`);
  }

  statmsg(id: number, sev: Severity, text: string): void {
    const t = new Date().toISOString();
    this.write(`${t} [${this.site} ${this.runId}] STATMSG: ID=${id} SEV=${sev} SITE=${this.site} RUN=${this.runId} TIME=${t} TEXT=${JSON.stringify(text)}`);
  }

  /** Whether the last write failed (the destination vanished or is read-only). */
  get failed(): boolean {
    return this.broken;
  }

  private write(line: string): void {
    try {
      appendFileSync(this.path, line.replace(/\n/g, " ") + "\n", { mode: 0o600 });
      this.broken = false;
    } catch {
      // The destination may be missing (that is what the preflight reports): the state database
      // still has every message.
      this.broken = true;
    }
  }
}
