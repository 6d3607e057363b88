// /metrics in the Prometheus text format (version 0.0.4). Every series carries the site label.
import type { ControlFile } from "../site/control-schema.js";
import type { StateStore } from "../site/state.js";

export interface RepoStats {
  snapshots: number;
  bytes: number;
}

function esc(v: string): string {
  return v.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");
}

export function renderMetrics(config: ControlFile, state: StateStore, extra: { nextRuns: Record<string, Date | null>; repo?: RepoStats; running: boolean }): string {
  const site = `site="${esc(config.site)}"`;
  const lines: string[] = [];
  const metric = (name: string, type: "gauge" | "counter", help: string, samples: [labels: string, value: number][]): void => {
    lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
    for (const [labels, value] of samples) lines.push(`${name}{${labels}} ${Number.isFinite(value) ? value : "NaN"}`);
  };
  const runs = state.runs(config.site, 50, "backup").filter((r) => r.status !== "running");
  const last = runs[0];
  const good = state.lastGoodRun(config.site);
  const summary = good?.summary ? (JSON.parse(good.summary) as { data_added?: number; total_bytes_processed?: number }) : undefined;
  const ts = (s: string | null | undefined): number => (s ? Date.parse(s) / 1000 : 0);
  metric("sitekeep_last_success_timestamp_seconds", "gauge", "End of the last successful backup (0: never).", [[site, ts(good?.finished_at)]]);
  metric("sitekeep_last_run_timestamp_seconds", "gauge", "End of the last finished backup run.", [[site, ts(last?.finished_at)]]);
  metric("sitekeep_last_run_success", "gauge", "1 when the last finished backup run succeeded (5035), else 0.", [[site, last?.status === "succeeded" ? 1 : 0]]);
  metric("sitekeep_last_run_duration_seconds", "gauge", "Duration of the last finished backup run.", [[site, last?.finished_at ? (Date.parse(last.finished_at) - Date.parse(last.started_at)) / 1000 : 0]]);
  metric("sitekeep_freeze_window_seconds", "gauge", "How long the writers were frozen in the last successful run.", [[site, (good?.freeze_ms ?? 0) / 1000]]);
  metric("sitekeep_data_added_bytes", "gauge", "Bytes added to the repository by the last successful run.", [[site, summary?.data_added ?? 0]]);
  metric("sitekeep_backup_bytes_processed", "gauge", "Bytes of site files read or checked by the last successful run.", [[site, summary?.total_bytes_processed ?? 0]]);
  metric("sitekeep_run_active", "gauge", "1 while a run of this site is active.", [[site, extra.running ? 1 : 0]]);
  if (extra.repo) {
    metric("sitekeep_snapshots", "gauge", "Snapshots of this site in the destination.", [[site, extra.repo.snapshots]]);
    metric("sitekeep_repository_size_bytes", "gauge", "Size of the destination repository's pack files.", [[site, extra.repo.bytes]]);
  }
  const open = state.alerts(config.site, { open: true });
  metric("sitekeep_alerts_active", "gauge", "Open alerts by severity.", [
    [`${site},severity="critical"`, open.filter((a) => a.severity === "critical").length],
    [`${site},severity="warning"`, open.filter((a) => a.severity === "warning").length],
  ]);
  metric(
    "sitekeep_next_run_timestamp_seconds",
    "gauge",
    "Next scheduled run of each job (0: none).",
    Object.entries(extra.nextRuns).map(([job, d]) => [`${site},job="${esc(job)}"`, d ? d.getTime() / 1000 : 0]),
  );
  const drill = state.runs(config.site, 1, "drill").find((r) => r.status !== "running");
  if (drill) {
    metric("sitekeep_last_drill_success", "gauge", "1 when the last restore drill passed.", [[site, drill.status === "succeeded" ? 1 : 0]]);
    const rto = drill.summary ? (JSON.parse(drill.summary) as { rtoMs?: number }).rtoMs : undefined;
    metric("sitekeep_last_drill_rto_seconds", "gauge", "Time to recover measured by the last drill.", [[site, (rto ?? 0) / 1000]]);
  }
  return lines.join("\n") + "\n";
}
