// Cron jobs of the service: the site's backup schedule and its drill schedule, in local time, UTC or
// an IANA zone (seconds optional: 5 or 6 fields). A job never overlaps itself; a run missed while
// the service was down can be caught up once at start.
import { Cron } from "croner";

export interface Clock {
  now(): Date;
}

export const systemClock: Clock = { now: () => new Date() };

export interface JobSpec {
  name: "backup" | "drill";
  cron: string;
  /** "local", "UTC" or an IANA zone. */
  timezone: string;
  run: () => Promise<void>;
}

export class Scheduler {
  private readonly crons = new Map<string, Cron>();

  constructor(private readonly onError: (job: string, err: unknown) => void) {}

  start(jobs: JobSpec[]): void {
    this.stop();
    for (const j of jobs) {
      const cron = new Cron(j.cron, { timezone: j.timezone === "local" ? undefined : j.timezone, protect: true }, () => {
        // protect: true makes croner skip a tick while the previous one still runs.
        return j.run().catch((err: unknown) => this.onError(j.name, err));
      });
      this.crons.set(j.name, cron);
    }
  }

  stop(): void {
    for (const c of this.crons.values()) c.stop();
    this.crons.clear();
  }

  /** Next scheduled run of each job. */
  nextRuns(): Record<string, Date | null> {
    return Object.fromEntries([...this.crons.entries()].map(([name, c]) => [name, c.nextRun()]));
  }
}

/**
 * True when the schedule had an occurrence after `lastStart` (the last run's start, or undefined
 * when there never was one) and before `now`: a run was missed.
 */
export function missedRun(cronExpr: string, timezone: string, lastStart: Date | undefined, now: Date): boolean {
  if (!lastStart) return true;
  const c = new Cron(cronExpr, { timezone: timezone === "local" ? undefined : timezone, paused: true });
  const due = c.nextRun(lastStart);
  return due !== null && due.getTime() <= now.getTime();
}

/** The next occurrences of a schedule (for previews in status and the console). */
export function nextOccurrences(cronExpr: string, timezone: string, n: number, from = new Date()): Date[] {
  const c = new Cron(cronExpr, { timezone: timezone === "local" ? undefined : timezone, paused: true });
  return c.nextRuns(n, from);
}
