import { type GroupBy, type RetentionPolicy, forgetPlan, isEmptyPolicy, groupSnapshots } from "../../archive/retention.js";
import { prune } from "../../archive/pruner.js";
import type { Snapshot } from "../../repo/snapshot.js";
import { SitekeepError } from "../../errors.js";
import { type GlobalOptions, outputOptions, withRepository } from "../context.js";
import { formatBytes, printJSON } from "../output.js";
import { type SnapshotFilter, matchesFilter, snapshotJSON } from "./snapshots.js";

export interface ForgetFlags extends SnapshotFilter {
  keepLast?: string;
  keepHourly?: string;
  keepDaily?: string;
  keepWeekly?: string;
  keepMonthly?: string;
  keepYearly?: string;
  keepWithin?: string;
  keepWithinHourly?: string;
  keepWithinDaily?: string;
  keepWithinWeekly?: string;
  keepWithinMonthly?: string;
  keepWithinYearly?: string;
  keepTag?: string[];
  groupBy?: string;
  dryRun?: boolean;
  prune?: boolean;
  maxUnused?: string;
  maxRepackSize?: string;
}

function count(v: string | undefined, flag: string): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < -1) throw new SitekeepError("forget.flag", `${flag} needs a whole number (or -1 for unlimited), got ${JSON.stringify(v)}`, { hint: `e.g. ${flag} 7` });
  return n;
}

export function policyFromFlags(f: ForgetFlags): RetentionPolicy {
  return {
    keepLast: count(f.keepLast, "--keep-last"),
    keepHourly: count(f.keepHourly, "--keep-hourly"),
    keepDaily: count(f.keepDaily, "--keep-daily"),
    keepWeekly: count(f.keepWeekly, "--keep-weekly"),
    keepMonthly: count(f.keepMonthly, "--keep-monthly"),
    keepYearly: count(f.keepYearly, "--keep-yearly"),
    keepWithin: f.keepWithin,
    keepWithinHourly: f.keepWithinHourly,
    keepWithinDaily: f.keepWithinDaily,
    keepWithinWeekly: f.keepWithinWeekly,
    keepWithinMonthly: f.keepWithinMonthly,
    keepWithinYearly: f.keepWithinYearly,
    keepTags: f.keepTag?.map((t) => t.split(",")),
  };
}

function parseGroupBy(s: string | undefined): GroupBy {
  const parts = (s ?? "host,paths").split(",").map((p) => p.trim()).filter(Boolean);
  for (const p of parts) {
    if (!["host", "paths", "tags"].includes(p)) throw new SitekeepError("forget.groupby", `unknown --group-by field ${JSON.stringify(p)}`, { hint: "use host, paths and/or tags" });
  }
  return { host: parts.includes("host"), paths: parts.includes("paths"), tags: parts.includes("tags") };
}

export async function forgetCommand(g: GlobalOptions, ids: string[], f: ForgetFlags): Promise<number> {
  const out = outputOptions(g);
  const policy = policyFromFlags(f);
  const by = parseGroupBy(f.groupBy);
  if (ids.length === 0 && isEmptyPolicy(policy)) {
    throw new SitekeepError("forget.nopolicy", "no policy given: forget would remove nothing", {
      hint: "give --keep-last/--keep-daily/... or snapshot IDs",
    });
  }
  return withRepository(g, "exclusive", async (repo) => {
    if (!f.dryRun) repo.assertMayDelete("forget");
    const all = (await repo.listSnapshots()).filter((s) => matchesFilter(s, f));
    // Sitekeep's rule: the newest snapshot of each group is never removed, whatever the policy says.
    const newest = new Set([...groupSnapshots(all, by).values()].map((list) => [...list].sort((a, b) => Date.parse(b.time) - Date.parse(a.time))[0]?.id));
    const protect = (s: Snapshot): boolean => newest.has(s.id);
    let remove: Snapshot[];
    const report: unknown[] = [];
    if (ids.length) {
      remove = ids.map((p) => {
        const m = all.filter((s) => s.id.startsWith(p));
        if (m.length !== 1) throw new SitekeepError("forget.id", m.length ? `snapshot prefix ${p} is ambiguous` : `no snapshot matches ${p}`, { hint: "see `sitekeep snapshots`" });
        if (protect(m[0])) throw new SitekeepError("forget.protected", `refusing to remove ${p}: it is the newest snapshot of its group`, { hint: "make a newer backup first" });
        return m[0];
      });
    } else {
      const plan = forgetPlan(all, policy, by, { protect });
      remove = plan.flatMap((p) => p.remove);
      for (const p of plan) {
        report.push({
          ...p.group,
          keep: p.keep.map((k) => snapshotJSON(k.snapshot)),
          remove: p.remove.map(snapshotJSON),
          reasons: p.keep.map((k) => ({ snapshot: snapshotJSON(k.snapshot), matches: k.matches })),
        });
        if (!out.json && !out.quiet) {
          process.stdout.write(`group ${JSON.stringify(p.group)}: keep ${p.keep.length}, remove ${p.remove.length}\n`);
          for (const k of p.keep) process.stdout.write(`  keep   ${k.snapshot.id.slice(0, 8)} ${k.snapshot.time}  ${k.matches.join(", ")}\n`);
          for (const r of p.remove) process.stdout.write(`  remove ${r.id.slice(0, 8)} ${r.time}\n`);
        }
      }
    }
    if (!f.dryRun) {
      repo.assertLockHeld();
      for (const s of remove) await repo.backend.remove({ type: "snapshots", name: s.id });
    }
    let pruned;
    if (f.prune && remove.length && !f.dryRun) {
      await repo.loadIndex();
      pruned = await prune(repo, { maxUnused: f.maxUnused, maxRepackSize: f.maxRepackSize });
    }
    if (out.json) printJSON(ids.length ? { removed: remove.map((s) => s.id), dry_run: Boolean(f.dryRun) } : report);
    else if (!out.quiet) {
      process.stdout.write(`${f.dryRun ? "would remove" : "removed"} ${remove.length} snapshot${remove.length === 1 ? "" : "s"}\n`);
      if (pruned) process.stdout.write(`prune: removed ${pruned.packs_removed + pruned.packs_unreferenced_removed} packs, repacked ${pruned.packs_repacked}, freed ${formatBytes(pruned.bytes_removed - pruned.bytes_repacked)}\n`);
    }
    return 0;
  }, { loadIndex: false });
}

export async function pruneCommand(g: GlobalOptions, f: { dryRun?: boolean; maxUnused?: string; maxRepackSize?: string }): Promise<number> {
  const out = outputOptions(g);
  const stats = await withRepository(g, "exclusive", (repo) => prune(repo, f));
  if (out.json) printJSON(stats);
  else if (!out.quiet) {
    process.stdout.write(
      `${stats.dry_run ? "would remove" : "removed"} ${stats.packs_removed + stats.packs_unreferenced_removed} packs and repack ${stats.packs_repacked}` +
        ` (used ${formatBytes(stats.bytes_used)}, unused ${formatBytes(stats.bytes_unused_before)}, ${formatBytes(stats.bytes_removed - stats.bytes_repacked)} freed)\n`,
    );
  }
  return 0;
}
