// Delivers alert notifications: every alert opened (and later closed) is announced once on each
// configured channel. Runs at the end of each backup, recovery and drill, and periodically in the
// service, so alerts raised by a backup started from cron reach someone too. A round in which every
// channel failed is retried on the next dispatch (up to MAX_ROUNDS); each attempt is recorded.
import type { ControlFile } from "./control-schema.js";
import { type DeliverOptions, type DeliveryResult, deliverAlert } from "./notify.js";
import type { StateStore } from "./state.js";

const MAX_ROUNDS = 5;

export interface DispatchResult {
  alertId: number;
  state: "opened" | "closed";
  results: DeliveryResult[];
}

export async function dispatchAlerts(config: ControlFile, state: StateStore, opts: DeliverOptions & { now?: Date } = {}): Promise<DispatchResult[]> {
  const out: DispatchResult[] = [];
  const channels = config.alerts && (config.alerts.email || config.alerts.webhook || config.alerts.command);
  for (const { alert, state: what } of state.alertsToNotify(config.site, opts.now)) {
    if (!channels) {
      state.markNotified(alert.id, what); // nowhere to send: the console and `site alerts` show it
      continue;
    }
    if (!state.claimNotify(alert.id, what)) continue; // another dispatcher is sending it
    const results = await deliverAlert(config.alerts, {
      site: alert.site,
      alertId: alert.id,
      kind: alert.kind,
      severity: alert.severity,
      state: what,
      text: alert.text,
      ...(alert.message_id !== null ? { messageId: alert.message_id } : {}),
      ...(alert.run_id ? { runId: alert.run_id } : {}),
      time: what === "opened" ? alert.opened_at : (alert.closed_at as string),
    }, opts);
    for (const r of results) {
      state.addNotification({ alert_id: alert.id, state: what, channel: r.channel, target: r.target, ok: r.ok ? 1 : 0, attempts: r.attempts, error: r.error ?? null });
    }
    if (results.some((r) => r.ok) || state.notifyFailed(alert.id) >= MAX_ROUNDS) state.markNotified(alert.id, what);
    out.push({ alertId: alert.id, state: what, results });
  }
  return out;
}
