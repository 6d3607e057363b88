// The site's health at a glance: last runs, the last good snapshot and its age against the
// retention window, open alerts. Read by `site status`, the API and the console alike.
import type { ControlFile } from "./control-schema.js";
import { parseDurationMs } from "./duration.js";
import { type AlertRow, type RunRow, StateStore, stateDirFor } from "./state.js";

export interface SiteStatus {
  site: string;
  healthy: boolean;
  running: boolean;
  lastGood?: { runId: string; finishedAt: string; snapshotId: string | null; ageSeconds: number };
  retentionWindowSeconds: number;
  windowExceeded: boolean;
  runs: RunRow[];
  openAlerts: AlertRow[];
}

export function siteStatus(config: ControlFile, now = new Date()): SiteStatus {
  const state = StateStore.open(stateDirFor(config.stateDir));
  try {
    const runs = state.runs(config.site, 20);
    const good = state.lastGoodRun(config.site);
    const windowMs = parseDurationMs(config.backup.retentionWindow) ?? 5 * 86_400_000;
    const lastGood = good?.finished_at
      ? { runId: good.id, finishedAt: good.finished_at, snapshotId: good.snapshot_id, ageSeconds: Math.max(0, (now.getTime() - Date.parse(good.finished_at)) / 1000) }
      : undefined;
    const windowExceeded = !lastGood || lastGood.ageSeconds * 1000 > windowMs;
    const openAlerts = state.alerts(config.site, { open: true });
    return {
      site: config.site,
      healthy: !windowExceeded && openAlerts.length === 0,
      running: runs.some((r) => r.status === "running"),
      ...(lastGood ? { lastGood } : {}),
      retentionWindowSeconds: windowMs / 1000,
      windowExceeded,
      runs,
      openAlerts,
    };
  } finally {
    state.close();
  }
}
