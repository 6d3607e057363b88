// `sitekeep site drill`: proves a snapshot restores, without touching the live site. The snapshot
// is restored into a sandbox (a temporary folder in the state directory): file contents are
// verified against their blob hashes as they are written; SQLite copies must pass integrity_check
// with the manifest's row counts; PostgreSQL and MariaDB dumps are restored into temporary
// databases on the site's servers, counted, and dropped. Each item's time to recover is measured.
// A sample of files is compared with the live site to report drift. The result is recorded (runs,
// messages 5080-5082); a failed drill raises an alert, a passing one closes it.
import { createHash, randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync } from "node:fs";
import { join } from "node:path";
import { Restorer } from "../archive/restorer.js";
import { SitekeepError, errorMessage } from "../errors.js";
import { withLock } from "../repo/lock.js";
import { Repository } from "../repo/repository.js";
import { openBackend } from "../backend/open.js";
import type { LoadedControlFile } from "./control-file.js";
import { pickSnapshot } from "./recovery.js";
import { compareTables, mariaDrop, mariaRestoreInto, mariaTables, pgDrop, pgRestoreInto, pgTables, sqliteIntegrity, sqliteTables } from "./sources/restore-db.js";
import { type SiteManifest, SITE_DIR, newRunId, sitePassword } from "./task.js";
import { StateStore, stateDirFor } from "./state.js";
import { type MessageKey, messageDef } from "./status-messages.js";
import { dispatchAlerts } from "./alert-dispatch.js";

export interface DrillItem {
  kind: "files" | "capture" | "database";
  name: string;
  ok: boolean;
  detail: string;
  /** Time to recover this item, in ms. */
  rtoMs: number;
}

export interface DrillReport {
  id: string;
  site: string;
  snapshot: { id: string; time: string };
  ok: boolean;
  items: DrillItem[];
  /** Files whose live content differs from the snapshot (changed since: expected drift). */
  drift: { checked: number; differing: string[]; missing: string[] };
  rtoMs: number;
  sandbox?: string;
}

export async function runDrill(
  loaded: LoadedControlFile,
  opts: { snapshot?: string; keepSandbox?: boolean; env?: NodeJS.ProcessEnv; onLine?: (l: string) => void; sample?: number; runId?: string; now?: () => Date } = {},
): Promise<DrillReport> {
  const c = loaded.config;
  const env = opts.env ?? process.env;
  const say = (l: string): void => opts.onLine?.(l);
  const id = opts.runId ?? newRunId();
  const stateDir = stateDirFor(c.stateDir);
  const state = StateStore.open(stateDir, { now: opts.now });
  const sandbox = join(stateDir, "drills", id);
  const started = Date.now();
  const message = (key: MessageKey, text: string): void => {
    const def = messageDef(key);
    state.addMessage({ site: c.site, runId: id, messageId: def.id, severity: def.severity, text });
    say(`${def.id} ${def.severity} ${text}`);
  };
  state.startRun({ id, site: c.site, kind: "drill", destination: c.backup.destination });
  let repo: Repository | undefined;
  let dbRepo: Repository | undefined;
  const items: DrillItem[] = [];
  let report: DrillReport | undefined;
  try {
    // Inside the try: an unreachable destination or a wrong password is a failed drill (5082 and
    // an alert), not a run left "running" forever.
    const r0 = await Repository.open(openBackend(c.backup.destination), sitePassword(c, env));
    repo = r0;
    mkdirSync(sandbox, { recursive: true, mode: 0o700 });
    report = await withLock(r0, false, async () => {
      const repo = r0;
      await repo.loadIndex();
      const snap = await pickSnapshot(repo, c.site, { snapshot: opts.snapshot });
      message("drill-started", `Drill of site ${c.site}: restoring snapshot ${snap.id.slice(0, 8)} (${snap.time}) into a sandbox`);
      const root = join(sandbox, "root");

      // Files (and the .sitekeep folder with the dumps), verified against their hashes.
      let t = Date.now();
      const r = await new Restorer(repo, { target: root, ownership: false }).restore(snap.tree);
      items.push({
        kind: "files",
        name: "snapshot",
        ok: r.errors.length === 0,
        detail: r.errors.length
          ? `${r.errors.length} items could not be restored: ${r.errors.slice(0, 3).map((e) => `${e.path}: ${e.message}`).join("; ")}`
          : `${r.files_restored} files (${r.bytes_restored} bytes) restored, contents verified`,
        rtoMs: Date.now() - t,
      });
      const manifestPath = join(root, SITE_DIR, "manifest.json");
      if (!existsSync(manifestPath)) throw new SitekeepError("drill.manifest", "the snapshot's manifest could not be restored", { hint: "run `sitekeep check --read-data`" });
      const manifest = JSON.parse(readFileSync(manifestPath, "utf8")) as SiteManifest;
      if (manifest.databaseDestination) {
        t = Date.now();
        dbRepo = await Repository.open(openBackend(manifest.databaseDestination.url), sitePassword(c, env));
        await dbRepo.loadIndex();
        const dr = await new Restorer(dbRepo, { target: root, ownership: false }).restore((await dbRepo.loadSnapshot(manifest.databaseDestination.snapshotId)).tree);
        items.push({ kind: "files", name: "database snapshot", ok: dr.errors.length === 0, detail: dr.errors.length ? `${dr.errors[0].path}: ${dr.errors[0].message}` : `${dr.files_restored} dump files restored`, rtoMs: Date.now() - t });
      }

      for (const cap of manifest.captures) {
        const p = join(root, cap.file);
        const ok = existsSync(p) && createHash("sha256").update(readFileSync(p)).digest("hex") === cap.sha256;
        items.push({ kind: "capture", name: cap.name, ok, detail: ok ? `${cap.bytes} bytes, hash matches the manifest` : "missing or its hash differs from the manifest", rtoMs: 0 });
      }

      for (const entry of manifest.databases) {
        t = Date.now();
        const dump = join(root, entry.dump.file);
        const spec = c.databases.find((d) => d.name === entry.name);
        const tmpName = `sitekeep_drill_${randomBytes(4).toString("hex")}`;
        try {
          if (!existsSync(dump)) throw new Error(`the dump ${entry.dump.file} was not restored`);
          const sha = createHash("sha256").update(readFileSync(dump)).digest("hex");
          if (sha !== entry.dump.sha256) throw new Error("the dump's hash differs from the manifest");
          let got: Record<string, number>;
          if (entry.kind === "sqlite") {
            const integrity = sqliteIntegrity(dump);
            if (integrity !== "ok") throw new Error(`integrity_check: ${integrity}`);
            got = sqliteTables(dump);
          } else if (entry.kind === "postgres") {
            if (!spec || spec.kind !== "postgres") throw new Error("no postgres database of that name in the control file: no server to restore into");
            const target = { url: spec.url, passwordFile: spec.passwordFile };
            try {
              await pgRestoreInto(target, dump, tmpName);
              got = await pgTables(target, tmpName);
            } finally {
              await pgDrop(target, tmpName).catch(() => undefined);
            }
          } else {
            if (!spec || (spec.kind !== "mariadb" && spec.kind !== "mysql")) throw new Error("no mariadb database of that name in the control file: no server to restore into");
            const target = { url: spec.url, socket: spec.socket, passwordFile: spec.passwordFile };
            try {
              await mariaRestoreInto(target, dump, tmpName);
              got = await mariaTables(target, tmpName);
            } finally {
              await mariaDrop(target, tmpName).catch(() => undefined);
            }
          }
          const check = compareTables(entry.tables, got);
          const bad = [...check.missing.map((m) => `missing table ${m}`), ...check.mismatches];
          items.push({
            kind: "database",
            name: entry.name,
            ok: bad.length === 0,
            detail: bad.length ? bad.join("; ") : `${entry.kind} restored${entry.kind === "sqlite" ? "" : " into a temporary database"}; ${Object.keys(got).length} tables with the manifest's row counts`,
            rtoMs: Date.now() - t,
          });
        } catch (err) {
          items.push({ kind: "database", name: entry.name, ok: false, detail: errorMessage(err), rtoMs: Date.now() - t });
        }
      }

      const drift = spotCheck(root, manifest, opts.sample ?? 20);
      return {
        id,
        site: c.site,
        snapshot: { id: snap.id, time: snap.time },
        ok: items.every((i) => i.ok),
        items,
        drift,
        rtoMs: Date.now() - started,
        ...(opts.keepSandbox ? { sandbox } : {}),
      };
    });
  } catch (err) {
    items.push({ kind: "files", name: "snapshot", ok: false, detail: errorMessage(err), rtoMs: Date.now() - started });
    report = { id, site: c.site, snapshot: { id: "", time: "" }, ok: false, items, drift: { checked: 0, differing: [], missing: [] }, rtoMs: Date.now() - started };
  } finally {
    if (!opts.keepSandbox) rmSync(sandbox, { recursive: true, force: true });
    await repo?.backend.close().catch(() => undefined);
    await dbRepo?.backend.close().catch(() => undefined);
  }
  for (const i of report.items) say(`${i.ok ? "ok    " : "FAILED"} ${i.kind} ${i.name}: ${i.detail} (${i.rtoMs} ms)`);
  if (report.ok) {
    message("drill-passed", `Drill of site ${c.site} passed: snapshot ${report.snapshot.id.slice(0, 8)} restores; time to recover ${(report.rtoMs / 1000).toFixed(1)} s${report.drift.differing.length ? `; ${report.drift.differing.length} of ${report.drift.checked} sampled files changed since` : ""}`);
    state.closeAlerts(c.site, ["drill-failed"], id);
  } else {
    const failed = report.items.filter((i) => !i.ok);
    message("drill-failed", `Drill of site ${c.site} FAILED: ${failed.map((i) => `${i.kind} ${i.name}: ${i.detail}`).join("; ")}`);
    state.openAlert({ site: c.site, kind: "drill-failed", severity: "critical", runId: id, messageId: messageDef("drill-failed").id, text: `Restore drill of site ${c.site} failed: ${failed.map((i) => `${i.kind} ${i.name}`).join(", ")}` });
  }
  state.finishRun(id, { status: report.ok ? "succeeded" : "failed", snapshotId: report.snapshot.id || undefined, summary: report, ...(report.ok ? {} : { error: report.items.find((i) => !i.ok)?.detail }) });
  await dispatchAlerts(c, state, { env }).catch((err: unknown) => say(`alert delivery failed: ${errorMessage(err)}`));
  state.close();
  return report;
}

/** Compares a sample of restored files with the live site: drift is reported, not a failure. */
function spotCheck(root: string, manifest: SiteManifest, sample: number): DrillReport["drift"] {
  const candidates: string[] = [];
  const walk = (dir: string, depth: number): void => {
    if (candidates.length >= sample * 20 || depth > 12) return;
    let names: string[];
    try {
      names = readdirSync(dir).sort();
    } catch {
      return;
    }
    for (const n of names) {
      const p = join(dir, n);
      const st = statSync(p, { throwIfNoEntry: false });
      if (st?.isDirectory()) walk(p, depth + 1);
      else if (st?.isFile()) candidates.push(p);
    }
  };
  for (const f of manifest.files) walk(join(root, f.path), 0);
  const picked = candidates.filter((_, i) => i % Math.max(1, Math.floor(candidates.length / sample)) === 0).slice(0, sample);
  const differing: string[] = [];
  const missing: string[] = [];
  for (const p of picked) {
    const live = p.slice(root.length);
    if (!existsSync(live)) missing.push(live);
    else if (!readFileSync(live).equals(readFileSync(p))) differing.push(live);
  }
  return { checked: picked.length, differing, missing };
}
