// The retention-window watch: the seed's change-tracking period made an alert. When the newest
// good backup is older than backup.retentionWindow (or there is none yet), a warning alert is
// opened with message 5023; the next good backup closes it.
import type { ControlFile } from "./control-schema.js";
import { parseDurationMs } from "./duration.js";
import type { StateStore } from "./state.js";
import { messageDef } from "./status-messages.js";

export function checkRetentionWindow(config: ControlFile, state: StateStore, now = new Date()): { exceeded: boolean; opened: boolean } {
  const windowMs = parseDurationMs(config.backup.retentionWindow) ?? 5 * 86_400_000;
  const good = state.lastGoodRun(config.site);
  const age = good?.finished_at ? now.getTime() - Date.parse(good.finished_at) : Infinity;
  if (age <= windowMs) {
    state.closeAlerts(config.site, ["retention-window-exceeded"], "watch");
    return { exceeded: false, opened: false };
  }
  const def = messageDef("retention-window-exceeded");
  const text = good?.finished_at
    ? `The newest good backup of site ${config.site} is from ${good.finished_at}, older than the retention window ${config.backup.retentionWindow}`
    : `Site ${config.site} has no good backup yet (retention window ${config.backup.retentionWindow})`;
  const { opened } = state.openAlert({ site: config.site, kind: "retention-window-exceeded", severity: "warning", messageId: def.id, text });
  if (opened) state.addMessage({ site: config.site, messageId: def.id, severity: def.severity, text, time: now });
  return { exceeded: true, opened };
}
