// The state database (SQLite, in the state directory): runs, status messages, alerts and drills.
// One file, WAL mode, mode 0600. The CLI, the scheduler and the console all read and write it
// through this module, so they can never disagree.
import { chmodSync, existsSync, mkdirSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";
import Database from "better-sqlite3";
import { SitekeepError, errorMessage } from "../errors.js";
import type { Severity } from "./status-messages.js";

export type RunKind = "backup" | "drill" | "freeze" | "recovery";
export type RunStatus = "running" | "succeeded" | "failed" | "interrupted";

export interface RunRow {
  id: string;
  site: string;
  kind: RunKind;
  status: RunStatus;
  started_at: string;
  finished_at: string | null;
  pid: number;
  snapshot_id: string | null;
  db_snapshot_id: string | null;
  destination: string | null;
  freeze_ms: number | null;
  warnings: number;
  error_code: string | null;
  error: string | null;
  summary: string | null;
}

export interface MessageRow {
  seq: number;
  time: string;
  site: string;
  run_id: string | null;
  message_id: number;
  severity: Severity;
  text: string;
}

export interface AlertRow {
  id: number;
  site: string;
  kind: string;
  severity: "critical" | "warning";
  opened_at: string;
  closed_at: string | null;
  closed_by: string | null;
  run_id: string | null;
  text: string;
  message_id: number | null;
  postponed_until: string | null;
  notified_open: number;
  notified_close: number;
  notify_tries: number;
}

export interface NotificationRow {
  id: number;
  alert_id: number;
  state: "opened" | "closed";
  channel: string;
  target: string;
  ok: number;
  attempts: number;
  error: string | null;
  time: string;
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS runs (
  id TEXT PRIMARY KEY,
  site TEXT NOT NULL,
  kind TEXT NOT NULL,
  status TEXT NOT NULL,
  started_at TEXT NOT NULL,
  finished_at TEXT,
  pid INTEGER NOT NULL,
  snapshot_id TEXT,
  db_snapshot_id TEXT,
  destination TEXT,
  freeze_ms REAL,
  warnings INTEGER NOT NULL DEFAULT 0,
  error_code TEXT,
  error TEXT,
  summary TEXT
);
CREATE INDEX IF NOT EXISTS runs_site_started ON runs(site, started_at);
CREATE TABLE IF NOT EXISTS messages (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  time TEXT NOT NULL,
  site TEXT NOT NULL,
  run_id TEXT,
  message_id INTEGER NOT NULL,
  severity TEXT NOT NULL,
  text TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_site ON messages(site, seq);
CREATE TABLE IF NOT EXISTS alerts (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  site TEXT NOT NULL,
  kind TEXT NOT NULL,
  severity TEXT NOT NULL,
  opened_at TEXT NOT NULL,
  closed_at TEXT,
  closed_by TEXT,
  run_id TEXT,
  text TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_open ON alerts(site, closed_at);
CREATE TABLE IF NOT EXISTS notifications (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  alert_id INTEGER NOT NULL,
  state TEXT NOT NULL,
  channel TEXT NOT NULL,
  target TEXT NOT NULL,
  ok INTEGER NOT NULL,
  attempts INTEGER NOT NULL,
  error TEXT,
  time TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS notifications_alert ON notifications(alert_id);
`;

/** Columns added after the first release: added to older state databases when they are opened. */
const ADDED_COLUMNS: [table: string, column: string, decl: string][] = [
  ["alerts", "message_id", "INTEGER"],
  ["alerts", "postponed_until", "TEXT"],
  ["alerts", "notified_open", "INTEGER NOT NULL DEFAULT 0"],
  ["alerts", "notified_close", "INTEGER NOT NULL DEFAULT 0"],
  ["alerts", "notify_tries", "INTEGER NOT NULL DEFAULT 0"],
  ["alerts", "notify_claimed_at", "TEXT"],
];

/** The state directory: the control file's stateDir, else SITEKEEP_STATE_DIR, else a per-user default. */
export function stateDirFor(configured?: string): string {
  if (configured) return configured;
  if (process.env.SITEKEEP_STATE_DIR) return process.env.SITEKEEP_STATE_DIR;
  if (process.getuid?.() === 0) return "/var/lib/sitekeep";
  return join(process.env.XDG_STATE_HOME || join(homedir(), ".local", "state"), "sitekeep");
}

export class StateStore {
  private constructor(
    readonly dir: string,
    private readonly db: Database.Database,
    /** The clock of every time recorded (the service's injectable clock in tests). */
    private readonly now: () => Date,
  ) {}

  static open(dir: string, opts: { now?: () => Date } = {}): StateStore {
    try {
      mkdirSync(dir, { recursive: true, mode: 0o700 });
      const file = join(dir, "state.db");
      const fresh = !existsSync(file);
      const db = new Database(file);
      if (fresh) chmodSync(file, 0o600);
      db.pragma("journal_mode = WAL");
      db.pragma("busy_timeout = 5000");
      db.exec(SCHEMA);
      for (const [table, column, decl] of ADDED_COLUMNS) {
        const cols = db.prepare(`PRAGMA table_info(${table})`).all() as { name: string }[];
        if (!cols.some((c) => c.name === column)) db.exec(`ALTER TABLE ${table} ADD COLUMN ${column} ${decl}`);
      }
      return new StateStore(dir, db, opts.now ?? (() => new Date()));
    } catch (err) {
      throw new SitekeepError("state.open", `cannot open the state database in ${dir}: ${errorMessage(err)}`, {
        hint: "set stateDir in the control file (or SITEKEEP_STATE_DIR) to a folder this user can write",
      });
    }
  }

  close(): void {
    this.db.close();
  }

  // ---- runs --------------------------------------------------------------------------------------

  startRun(r: { id: string; site: string; kind: RunKind; destination?: string }): void {
    this.db
      .prepare("INSERT INTO runs (id, site, kind, status, started_at, pid, destination) VALUES (?, ?, ?, 'running', ?, ?, ?)")
      .run(r.id, r.site, r.kind, this.now().toISOString(), process.pid, r.destination ?? null);
  }

  finishRun(
    id: string,
    r: { status: Exclude<RunStatus, "running">; snapshotId?: string; dbSnapshotId?: string; freezeMs?: number; warnings?: number; errorCode?: string; error?: string; summary?: unknown },
  ): void {
    this.db
      .prepare(
        "UPDATE runs SET status = ?, finished_at = ?, snapshot_id = ?, db_snapshot_id = ?, freeze_ms = ?, warnings = ?, error_code = ?, error = ?, summary = ? WHERE id = ?",
      )
      .run(
        r.status,
        this.now().toISOString(),
        r.snapshotId ?? null,
        r.dbSnapshotId ?? null,
        r.freezeMs ?? null,
        r.warnings ?? 0,
        r.errorCode ?? null,
        r.error ?? null,
        r.summary === undefined ? null : JSON.stringify(r.summary),
        id,
      );
  }

  run(id: string): RunRow | undefined {
    return this.db.prepare("SELECT * FROM runs WHERE id = ?").get(id) as RunRow | undefined;
  }

  runs(site: string, limit = 50, kind?: RunKind): RunRow[] {
    if (kind) return this.db.prepare("SELECT * FROM runs WHERE site = ? AND kind = ? ORDER BY started_at DESC, rowid DESC LIMIT ?").all(site, kind, limit) as RunRow[];
    return this.db.prepare("SELECT * FROM runs WHERE site = ? ORDER BY started_at DESC, rowid DESC LIMIT ?").all(site, limit) as RunRow[];
  }

  lastGoodRun(site: string): RunRow | undefined {
    return this.db
      .prepare("SELECT * FROM runs WHERE site = ? AND kind = 'backup' AND status = 'succeeded' ORDER BY finished_at DESC LIMIT 1")
      .get(site) as RunRow | undefined;
  }

  /** Runs still marked running whose process is gone: a crash or SIGKILL. */
  orphanedRuns(site: string, alive: (pid: number) => boolean): RunRow[] {
    const rows = this.db.prepare("SELECT * FROM runs WHERE site = ? AND status = 'running'").all(site) as RunRow[];
    return rows.filter((r) => !alive(r.pid));
  }

  // ---- messages ----------------------------------------------------------------------------------

  addMessage(m: { site: string; runId?: string; messageId: number; severity: Severity; text: string; time?: Date }): MessageRow {
    const time = (m.time ?? this.now()).toISOString();
    const info = this.db
      .prepare("INSERT INTO messages (time, site, run_id, message_id, severity, text) VALUES (?, ?, ?, ?, ?, ?)")
      .run(time, m.site, m.runId ?? null, m.messageId, m.severity, m.text);
    return { seq: Number(info.lastInsertRowid), time, site: m.site, run_id: m.runId ?? null, message_id: m.messageId, severity: m.severity, text: m.text };
  }

  messages(site: string, opts: { limit?: number; runId?: string; sinceSeq?: number } = {}): MessageRow[] {
    const where = ["site = ?"];
    const args: (string | number)[] = [site];
    if (opts.runId) {
      where.push("run_id = ?");
      args.push(opts.runId);
    }
    if (opts.sinceSeq !== undefined) {
      where.push("seq > ?");
      args.push(opts.sinceSeq);
    }
    args.push(opts.limit ?? 200);
    return this.db.prepare(`SELECT * FROM messages WHERE ${where.join(" AND ")} ORDER BY seq DESC LIMIT ?`).all(...args) as MessageRow[];
  }

  // ---- alerts ------------------------------------------------------------------------------------

  /** Opens an alert unless one of the same kind is already open; returns it and whether it is new. */
  openAlert(a: { site: string; kind: string; severity: AlertRow["severity"]; runId?: string; text: string; messageId?: number }): { alert: AlertRow; opened: boolean } {
    const existing = this.db.prepare("SELECT * FROM alerts WHERE site = ? AND kind = ? AND closed_at IS NULL").get(a.site, a.kind) as AlertRow | undefined;
    if (existing) {
      // The same ongoing condition: one alert, kept current, not a new one (and no new notification).
      this.db.prepare("UPDATE alerts SET text = ?, run_id = ?, message_id = COALESCE(?, message_id) WHERE id = ?").run(a.text, a.runId ?? null, a.messageId ?? null, existing.id);
      return { alert: this.alert(existing.id) as AlertRow, opened: false };
    }
    const opened_at = this.now().toISOString();
    const info = this.db
      .prepare("INSERT INTO alerts (site, kind, severity, opened_at, run_id, text, message_id) VALUES (?, ?, ?, ?, ?, ?, ?)")
      .run(a.site, a.kind, a.severity, opened_at, a.runId ?? null, a.text, a.messageId ?? null);
    return { alert: this.alert(Number(info.lastInsertRowid)) as AlertRow, opened: true };
  }

  alert(id: number): AlertRow | undefined {
    return this.db.prepare("SELECT * FROM alerts WHERE id = ?").get(id) as AlertRow | undefined;
  }

  /** Hides an open alert from notifications and the open list until `until`. */
  postponeAlert(id: number, until: Date): boolean {
    return this.db.prepare("UPDATE alerts SET postponed_until = ? WHERE id = ? AND closed_at IS NULL").run(until.toISOString(), id).changes > 0;
  }

  /** Alerts whose opening or closing has not been notified yet. */
  alertsToNotify(site: string, now = this.now()): { alert: AlertRow; state: "opened" | "closed" }[] {
    const rows = this.db.prepare("SELECT * FROM alerts WHERE site = ? AND (notified_open = 0 OR (closed_at IS NOT NULL AND notified_close = 0)) ORDER BY id").all(site) as AlertRow[];
    const out: { alert: AlertRow; state: "opened" | "closed" }[] = [];
    for (const a of rows) {
      if (a.closed_at !== null && a.notified_open === 0) {
        this.markNotified(a.id, "closed"); // closed before anyone was told: nothing to say
        continue;
      }
      if (a.closed_at === null && a.postponed_until && Date.parse(a.postponed_until) > now.getTime()) continue;
      out.push({ alert: a, state: a.closed_at === null ? "opened" : "closed" });
    }
    return out;
  }

  markNotified(id: number, state: "opened" | "closed"): void {
    if (state === "opened") this.db.prepare("UPDATE alerts SET notified_open = 1, notify_tries = 0, notify_claimed_at = NULL WHERE id = ?").run(id);
    else this.db.prepare("UPDATE alerts SET notified_open = 1, notified_close = 1, notify_tries = 0, notify_claimed_at = NULL WHERE id = ?").run(id);
  }

  /**
   * Claims the delivery of an alert's opening or closing for this caller. Several dispatchers
   * (the service's watch, a run's own dispatch, a `site backup` from cron) may look at the same
   * alert at once: only the one whose claim succeeds sends. A claim older than 10 minutes is
   * abandoned (its process died) and may be taken again.
   */
  claimNotify(id: number, state: "opened" | "closed"): boolean {
    const now = this.now();
    const stale = new Date(now.getTime() - 10 * 60_000).toISOString();
    const cond = state === "opened" ? "notified_open = 0" : "notified_close = 0 AND closed_at IS NOT NULL";
    return this.db.prepare(`UPDATE alerts SET notify_claimed_at = ? WHERE id = ? AND ${cond} AND (notify_claimed_at IS NULL OR notify_claimed_at < ?)`).run(now.toISOString(), id, stale).changes === 1;
  }

  /** Counts a delivery round in which every channel failed (and drops the claim); returns the rounds so far. */
  notifyFailed(id: number): number {
    this.db.prepare("UPDATE alerts SET notify_tries = notify_tries + 1, notify_claimed_at = NULL WHERE id = ?").run(id);
    return (this.alert(id) as AlertRow).notify_tries;
  }

  addNotification(n: Omit<NotificationRow, "id" | "time"> & { time?: string }): void {
    this.db
      .prepare("INSERT INTO notifications (alert_id, state, channel, target, ok, attempts, error, time) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
      .run(n.alert_id, n.state, n.channel, n.target, n.ok, n.attempts, n.error, n.time ?? this.now().toISOString());
  }

  notifications(alertId: number): NotificationRow[] {
    return this.db.prepare("SELECT * FROM notifications WHERE alert_id = ? ORDER BY id").all(alertId) as NotificationRow[];
  }

  /** Closes open alerts of these kinds (by = a run ID, "operator", ...); returns how many. */
  closeAlerts(site: string, kinds: string[], by: string): number {
    let n = 0;
    const stmt = this.db.prepare("UPDATE alerts SET closed_at = ?, closed_by = ? WHERE site = ? AND kind = ? AND closed_at IS NULL");
    for (const k of kinds) n += stmt.run(this.now().toISOString(), by, site, k).changes;
    return n;
  }

  closeAlert(id: number, by: string): boolean {
    return this.db.prepare("UPDATE alerts SET closed_at = ?, closed_by = ? WHERE id = ? AND closed_at IS NULL").run(this.now().toISOString(), by, id).changes > 0;
  }

  alerts(site: string, opts: { open?: boolean; limit?: number } = {}): AlertRow[] {
    const cond = opts.open ? " AND closed_at IS NULL" : "";
    return this.db.prepare(`SELECT * FROM alerts WHERE site = ?${cond} ORDER BY id DESC LIMIT ?`).all(site, opts.limit ?? 100) as AlertRow[];
  }
}
