// `sitekeep site ...`: thin shells over src/site (validate, backup, status, messages, alerts, schema,
// freeze --exec). The console and the API call the same functions.
import { ControlFileError, controlFilePath, loadControlFile } from "../../site/control-file.js";
import { controlFileJSONSchema, isCommandWriter } from "../../site/control-schema.js";
import { type SiteProgress, runSiteBackup } from "../../site/task.js";
import { siteStatus } from "../../site/status.js";
import { StateStore, stateDirFor } from "../../site/state.js";
import { runFrozen } from "../../site/freeze.js";
import { existsSync, readFileSync } from "node:fs";
import { SitekeepError } from "../../errors.js";
import { type GlobalOptions, outputOptions } from "../context.js";
import { ProgressLine, formatBytes, formatDuration, printJSON } from "../output.js";

export interface SiteFlags {
  config?: string;
}

export async function siteValidateCommand(g: GlobalOptions, f: SiteFlags): Promise<number> {
  const out = outputOptions(g);
  const file = controlFilePath(f.config);
  try {
    const { config } = loadControlFile(file);
    if (out.json) printJSON({ valid: true, file, site: config.site });
    else if (!out.quiet) {
      process.stdout.write(
        `${file}: valid (site ${config.site}: ${config.databases.length} databases, ${config.captures.length} captures, ${config.files.length} file entries, ${config.writers.length} writers)\n`,
      );
    }
    return 0;
  } catch (err) {
    if (err instanceof ControlFileError && out.json) {
      printJSON({ valid: false, file, problems: err.problems });
      return 1;
    }
    throw err;
  }
}

export function siteSchemaCommand(): Promise<number> {
  process.stdout.write(JSON.stringify(controlFileJSONSchema(), null, 2) + "\n");
  return Promise.resolve(0);
}

export async function siteBackupCommand(g: GlobalOptions, f: SiteFlags & { verbose?: boolean }): Promise<number> {
  const out = outputOptions(g);
  const loaded = loadControlFile(controlFilePath(f.config));
  const abort = new AbortController();
  const onSignal = (): void => abort.abort();
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);
  try {
    const progress = new ProgressLine(out);
    const r = await runSiteBackup(loaded, {
      signal: abort.signal,
      onMessage: (m) => {
        progress.done();
        if (!out.json && !out.quiet) process.stdout.write(`${m.message_id} ${m.severity} ${m.text}\n`);
      },
      ...(progress.enabled
        ? { progressTotals: true, onProgress: (p: SiteProgress) => progress.update({ files: p.files ?? 0, bytes: p.bytes ?? 0, totalFiles: p.totalFiles, totalBytes: p.totalBytes, extra: `(${p.phase})` }) }
        : {}),
      onLog: f.verbose && !out.json ? (line) => process.stderr.write(`  ${line}\n`) : undefined,
    });
    progress.done();
    if (out.json) {
      printJSON({
        message_type: "site_summary",
        site: r.site,
        run_id: r.runId,
        status: r.status,
        message_id: r.messageId,
        snapshot_id: r.snapshotId,
        db_snapshot_id: r.dbSnapshotId,
        freeze_window_ms: r.freezeWindowMs,
        warnings: r.warnings,
        error: r.error,
        log: r.logPath,
        timings_ms: r.timings,
        ...(r.files ?? {}),
      });
    } else if (!out.quiet) {
      if (r.status === "succeeded") {
        const fs = r.files;
        process.stdout.write(
          `snapshot ${r.snapshotId}${r.dbSnapshotId ? ` (databases: ${r.dbSnapshotId})` : ""}` +
            (fs ? `: ${fs.total_files_processed} files, ${formatBytes(fs.total_bytes_processed)}, ${formatBytes(fs.data_added)} added` : "") +
            (r.freezeWindowMs !== undefined ? `; writers frozen ${r.freezeWindowMs} ms` : "") +
            ` in ${formatDuration((r.timings.totalMs ?? 0) / 1000)}\n`,
        );
        for (const w of r.warnings) process.stderr.write(`warning: ${w}\n`);
      } else {
        process.stderr.write(`sitekeep: ${r.error?.message ?? "backup failed"}${r.error?.hint ? ` (${r.error.hint})` : ""}\n`);
      }
      process.stdout.write(`log: ${r.logPath}\n`);
    }
    return r.exitCode;
  } finally {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
  }
}

export async function siteStatusCommand(g: GlobalOptions, f: SiteFlags): Promise<number> {
  const out = outputOptions(g);
  const { config } = loadControlFile(controlFilePath(f.config));
  const st = siteStatus(config);
  if (out.json) {
    printJSON(st);
    return 0;
  }
  const lines = [
    `site ${st.site}: ${st.healthy ? "OK" : "ATTENTION"}`,
    `  last good backup: ${st.lastGood ? `${st.lastGood.finishedAt} (snapshot ${st.lastGood.snapshotId?.slice(0, 8)}, ${formatDuration(st.lastGood.ageSeconds)} ago)` : "none yet"}`,
    `  retention window: ${config.backup.retentionWindow}${st.windowExceeded ? " — EXCEEDED: the newest good backup is older" : ""}`,
    `  last runs:`,
    ...st.runs.slice(0, 5).map((r) => `    ${r.started_at}  ${r.status.padEnd(11)} ${r.snapshot_id ? r.snapshot_id.slice(0, 8) : "        "}  ${r.error ?? ""}`),
    `  open alerts: ${st.openAlerts.length ? "" : "none"}`,
    ...st.openAlerts.map((a) => `    [${a.severity}] ${a.opened_at} ${a.text}`),
  ];
  process.stdout.write(lines.join("\n") + "\n");
  return 0;
}

export async function siteMessagesCommand(g: GlobalOptions, f: SiteFlags & { limit?: string; run?: string }): Promise<number> {
  const out = outputOptions(g);
  const { config } = loadControlFile(controlFilePath(f.config));
  const state = StateStore.open(stateDirFor(config.stateDir));
  try {
    const rows = state.messages(config.site, { limit: Number(f.limit ?? 50), runId: f.run }).reverse();
    if (out.json) printJSON(rows);
    else for (const m of rows) process.stdout.write(`${m.time}  ${m.message_id} ${m.severity}  ${m.text}\n`);
  } finally {
    state.close();
  }
  return 0;
}

export async function siteAlertsCommand(g: GlobalOptions, f: SiteFlags & { all?: boolean; close?: string }): Promise<number> {
  const out = outputOptions(g);
  const { config } = loadControlFile(controlFilePath(f.config));
  const state = StateStore.open(stateDirFor(config.stateDir));
  try {
    if (f.close !== undefined) {
      const ok = state.closeAlert(Number(f.close), "operator");
      if (!ok) throw new SitekeepError("site.alert", `no open alert with ID ${f.close}`, { hint: "see `sitekeep site alerts`" });
      if (!out.quiet && !out.json) process.stdout.write(`alert ${f.close} closed\n`);
      return 0;
    }
    const rows = state.alerts(config.site, { open: !f.all });
    if (out.json) printJSON(rows);
    else if (!rows.length) process.stdout.write(f.all ? "no alerts\n" : "no open alerts\n");
    else for (const a of rows) process.stdout.write(`${a.id}  [${a.severity}] ${a.opened_at}${a.closed_at ? ` (closed ${a.closed_at} by ${a.closed_by})` : ""}  ${a.text}\n`);
  } finally {
    state.close();
  }
  return 0;
}

export async function siteFreezeCommand(g: GlobalOptions, f: SiteFlags & { exec: string }): Promise<number> {
  const out = outputOptions(g);
  const { config } = loadControlFile(controlFilePath(f.config));
  const r = await runFrozen(config, f.exec, {
    onLine: (l) => {
      if (!out.json && !out.quiet) process.stderr.write(`${l}\n`);
    },
  });
  if (out.json) printJSON({ message_type: "freeze", writers: config.writers.filter(isCommandWriter).map((w) => w.name), exit_code: r.exitCode, freeze_window_ms: r.freezeWindowMs, thaw_failed: r.thawFailed });
  return r.exitCode;
}

export interface RecoverFlags extends SiteFlags {
  snapshot?: string;
  before?: string;
  only?: string[];
  root?: string;
  replace?: boolean;
  database?: string;
  databaseName?: string[];
  dryRun?: boolean;
  from?: string;
  site?: string;
}

export async function siteRecoverCommand(g: GlobalOptions, f: RecoverFlags): Promise<number> {
  const out = outputOptions(g);
  const { recoverSite } = await import("../../site/recovery.js");
  const configPath = controlFilePath(f.config);
  // With --from, the control file is optional: the snapshot carries its own copy.
  const loaded = f.from && !f.config && !process.env.SITEKEEP_CONFIG && !existsSync(configPath) ? undefined : loadControlFile(configPath);
  const mode = f.database ?? "restore";
  if (!["restore", "existing", "skip"].includes(mode)) {
    throw new SitekeepError("recover.flag", `--database must be restore, existing or skip, got ${JSON.stringify(mode)}`, { hint: "restore (default), existing (verify a database recovered by other means) or skip" });
  }
  const names: Record<string, string> = {};
  for (const pair of f.databaseName ?? []) {
    const i = pair.indexOf("=");
    if (i <= 0) throw new SitekeepError("recover.flag", `--database-name takes NAME=NEWNAME, got ${JSON.stringify(pair)}`, { hint: "e.g. --database-name site=site_restored (a new path for SQLite)" });
    names[pair.slice(0, i)] = pair.slice(i + 1);
  }
  let before: Date | undefined;
  if (f.before) {
    before = new Date(f.before);
    if (Number.isNaN(before.getTime())) throw new SitekeepError("recover.flag", `--before: not a time: ${f.before}`, { hint: 'e.g. --before "2026-11-20 18:00" or an RFC 3339 time' });
  }
  const report = await recoverSite({
    loaded,
    from: f.from,
    site: f.site,
    snapshot: f.snapshot,
    before,
    only: f.only?.flatMap((o) => o.split(",")),
    root: f.root,
    replace: f.replace,
    database: mode as "restore" | "existing" | "skip",
    databaseNames: names,
    dryRun: f.dryRun,
    password: g.passwordFile ? readFileSync(g.passwordFile, "utf8").replace(/\r?\n$/, "") : undefined,
    onLine: out.json || out.quiet ? undefined : (l) => process.stdout.write(l + "\n"),
  });
  if (out.json) printJSON(report);
  else if (!out.quiet) {
    const { reportMarkdown } = await import("../../site/recovery.js");
    process.stdout.write("\n" + reportMarkdown(report));
    if (report.reportFiles) process.stdout.write(`report saved: ${report.reportFiles.markdown} (and .json)\n`);
  }
  return report.ok ? 0 : 1;
}

export async function siteDrillCommand(g: GlobalOptions, f: SiteFlags & { snapshot?: string; keepSandbox?: boolean }): Promise<number> {
  const out = outputOptions(g);
  const { runDrill } = await import("../../site/drill.js");
  const loaded = loadControlFile(controlFilePath(f.config));
  const report = await runDrill(loaded, {
    snapshot: f.snapshot,
    keepSandbox: f.keepSandbox,
    onLine: out.json || out.quiet ? undefined : (l) => process.stdout.write(l + "\n"),
  });
  if (out.json) printJSON(report);
  return report.ok ? 0 : 1;
}
