// `sitekeep site recover`: puts a site back from one of its snapshots, on the same machine or a
// new one. The snapshot's own /.sitekeep folder (manifest + the control file as it was) says what
// the site was, so the destination and the password are enough. Files go back to their original
// paths (or under --root); captures are re-imported with their restore commands; databases are
// restored (refusing to overwrite a non-empty one unless --replace; a replaced database is proven
// under a temporary name first), restored under a new name, verified in place, or skipped. Writers
// are frozen while it runs. A report says what was done, what was checked and what is left to do.
import { existsSync, mkdirSync, readFileSync, realpathSync, rmSync, writeFileSync } from "node:fs";
import { hostname } from "node:os";
import { join, resolve } from "node:path";
import { Restorer } from "../archive/restorer.js";
import { openBackend } from "../backend/open.js";
import { ExitCode, SitekeepError, errorMessage } from "../errors.js";
import { Repository } from "../repo/repository.js";
import { withLock } from "../repo/lock.js";
import type { Snapshot } from "../repo/snapshot.js";
import { commandOk, describeResult, runCommand } from "./command.js";
import { type LoadedControlFile, parseControlFile } from "./control-file.js";
import type { ControlFile } from "./control-schema.js";
import { type SiteManifest, SITE_DIR, newRunId, siteTag, sitePassword } from "./task.js";
import { StateStore, stateDirFor } from "./state.js";
import { messageDef, type MessageKey } from "./status-messages.js";
import { type TableCheck, mariaDbName, mariaTables, pgDbName, pgTables, restoreMariadb, restorePostgres, restoreSqlite, sqliteIntegrity, sqliteTables, compareTables, pgApplyGlobals } from "./sources/restore-db.js";
import { prepareWriters } from "./writer-setup.js";
import { SiteLock } from "./site-lock.js";
import type { DatabaseManifestEntry } from "./sources/types.js";

export type DatabaseMode = "restore" | "existing" | "skip";

export interface RecoverOptions {
  /** The control file of this machine; without it, --from and the snapshot's own copy are used. */
  loaded?: LoadedControlFile;
  /** A destination to recover from (default: the control file's). */
  from?: string;
  /** With --from and several sites in one repository. */
  site?: string;
  /** Snapshot ID (prefix) or "latest" (default). */
  snapshot?: string;
  /** The newest snapshot made before this time. */
  before?: Date;
  /** files, captures, databases, or names of databases/captures; default everything. */
  only?: string[];
  /** Restore files under this folder instead of their original paths. */
  root?: string;
  replace?: boolean;
  database?: DatabaseMode;
  /** Database name -> new database name (PostgreSQL/MariaDB) or new path (SQLite). */
  databaseNames?: Record<string, string>;
  dryRun?: boolean;
  stateDir?: string;
  /** The run's ID (the service hands it out before the recovery starts). */
  runId?: string;
  /** The repository password (--password-file); else the control file's, else SITEKEEP_PASSWORD(_FILE). */
  password?: string;
  env?: NodeJS.ProcessEnv;
  onLine?: (line: string) => void;
}

export interface RecoveryItem {
  kind: "files" | "capture" | "database";
  name: string;
  action: string;
  ok: boolean;
  detail: string;
  checks: string[];
  durationMs: number;
}

export interface RecoveryReport {
  id: string;
  site: string;
  snapshot: { id: string; time: string; runId?: string };
  from: string;
  host: string;
  startedAt: string;
  durationMs: number;
  dryRun: boolean;
  ok: boolean;
  items: RecoveryItem[];
  warnings: string[];
  todo: string[];
  reportFiles?: { json: string; markdown: string };
}

/** Everything the recovery needs to know about the site, from this machine or from the snapshot. */
interface SiteSource {
  repo: Repository;
  snapshot: Snapshot;
  manifest: SiteManifest;
  config: ControlFile;
  /** Where /.sitekeep of the snapshot (and of the database snapshot) was restored to. */
  scratch: string;
}

export async function recoverSite(opts: RecoverOptions): Promise<RecoveryReport> {
  const env = opts.env ?? process.env;
  const started = Date.now();
  const id = opts.runId ?? newRunId();
  const say = (l: string): void => opts.onLine?.(l);
  const local = opts.loaded?.config;
  const url = opts.from ?? local?.backup.destination;
  if (!url) throw new SitekeepError("recover.source", "nothing to recover from: no control file and no --from", { hint: "pass --config FILE or --from DESTINATION (with SITEKEEP_PASSWORD)" });
  const stateDir = stateDirFor(opts.stateDir ?? local?.stateDir);
  const work = join(stateDir, "recoveries", id);
  mkdirSync(work, { recursive: true, mode: 0o700 });
  const password = opts.password ?? (local ? sitePassword(local, env) : passwordFromEnv(env));

  // A recovery and a backup of the same site must not overlap (a plan changes nothing: no lock).
  const siteLock = opts.dryRun || !local ? undefined : SiteLock.acquire(stateDir, local.site, id);
  let repo: Repository;
  try {
    repo = await Repository.open(openBackend(url), password);
  } catch (err) {
    siteLock?.release();
    throw err;
  }
  const state = StateStore.open(stateDir);
  let dbRepo: Repository | undefined;
  try {
    return await withLock(repo, false, async () => {
      await repo.loadIndex();
      const snapshot = await pickSnapshot(repo, opts.site ?? local?.site, opts);
      const scratch = join(work, "snapshot");
      await restoreSiteDir(repo, snapshot, scratch);
      const manifestPath = join(scratch, SITE_DIR, "manifest.json");
      if (!existsSync(manifestPath)) {
        throw new SitekeepError("recover.manifest", `snapshot ${snapshot.id.slice(0, 8)} has no site manifest (${join("/", SITE_DIR, "manifest.json")})`, { hint: "choose a snapshot made by `sitekeep site backup`" });
      }
      const manifest = JSON.parse(readFileSync(manifestPath, "utf8")) as SiteManifest;
      // The control file as it was at backup time, unless this machine has one.
      const config = local ?? parseControlFile(readFileSync(join(scratch, SITE_DIR, "sitekeep.yaml"), "utf8"), `${snapshot.id.slice(0, 8)}:/.sitekeep/sitekeep.yaml`, env, { machineChecks: false }).config;
      if (manifest.databaseDestination && wants(opts, "databases")) {
        dbRepo = await Repository.open(openBackend(manifest.databaseDestination.url), password);
        await dbRepo.loadIndex();
        const dbSnap = await dbRepo.loadSnapshot(manifest.databaseDestination.snapshotId);
        await restoreSiteDir(dbRepo, dbSnap, scratch);
      }
      const src: SiteSource = { repo, snapshot, manifest, config, scratch };
      const message = (key: MessageKey, text: string): void => {
        const def = messageDef(key);
        if (!opts.dryRun) state.addMessage({ site: manifest.site, runId: id, messageId: def.id, severity: def.severity, text });
        say(`${def.id} ${def.severity} ${text}`);
      };
      if (!opts.dryRun) state.startRun({ id, site: manifest.site, kind: "recovery", destination: url });
      if (opts.dryRun) say(`plan for recovering site ${manifest.site} from snapshot ${snapshot.id.slice(0, 8)} (${snapshot.time}):`);
      else message("recovery-started", `Recovery of site ${manifest.site} from snapshot ${snapshot.id.slice(0, 8)} (${snapshot.time}) started`);
      const report = await runRecovery(src, opts, { id, url, started, say, stateDir, env, work });
      report.reportFiles = writeReport(work, report);
      if (opts.dryRun) say(`plan only (--dry-run): nothing was changed; ${report.items.length} items would be recovered`);
      else if (report.ok) message("recovery-completed", `Recovery of site ${manifest.site} completed: ${report.items.length} items; report ${report.reportFiles.markdown}`);
      else message("recovery-failed", `Recovery of site ${manifest.site} finished with failures: ${report.items.filter((i) => !i.ok).map((i) => `${i.kind} ${i.name}`).join(", ")}`);
      if (!opts.dryRun) state.finishRun(id, { status: report.ok ? "succeeded" : "failed", snapshotId: snapshot.id, summary: { items: report.items.length, report: report.reportFiles.json } });
      return report;
    });
  } finally {
    rmSync(join(work, "snapshot"), { recursive: true, force: true }); // dumps: possibly large, and sensitive
    siteLock?.release();
    state.close();
    await repo.backend.close().catch(() => undefined);
    await dbRepo?.backend.close().catch(() => undefined);
  }
}

/** A literal path as an exclude pattern. */
function globEscape(p: string): string {
  return p.replace(/[*?[\]\\]/g, "\\$&");
}

function passwordFromEnv(env: NodeJS.ProcessEnv): string {
  if (env.SITEKEEP_PASSWORD !== undefined) return env.SITEKEEP_PASSWORD;
  if (env.SITEKEEP_PASSWORD_FILE) return readFileSync(env.SITEKEEP_PASSWORD_FILE, "utf8").replace(/\r?\n$/, "");
  throw new SitekeepError("recover.password", "no repository password", { hint: "set SITEKEEP_PASSWORD or SITEKEEP_PASSWORD_FILE", exitCode: ExitCode.wrongPassword });
}

function wants(opts: RecoverOptions, what: "files" | "captures" | "databases", name?: string): boolean {
  if (!opts.only?.length) return true;
  return opts.only.includes(what) || (name !== undefined && opts.only.includes(name));
}

export async function pickSnapshot(repo: Repository, site: string | undefined, opts: { snapshot?: string; before?: Date }): Promise<Snapshot> {
  const all = (await repo.listSnapshots(() => undefined)).filter((s) => s.tags?.some((t) => t.startsWith("site:")) && !s.tags.includes("databases"));
  const sites = [...new Set(all.flatMap((s) => s.tags?.filter((t) => t.startsWith("site:")) ?? []))];
  let mine = all;
  if (site) mine = all.filter((s) => s.tags?.includes(siteTag(site)));
  else if (sites.length > 1) {
    throw new SitekeepError("recover.site", `the repository holds several sites (${sites.map((s) => s.slice(5)).join(", ")})`, { hint: "name one with --site CODE" });
  }
  if (opts.before) mine = mine.filter((s) => Date.parse(s.time) < (opts.before as Date).getTime());
  mine.sort((a, b) => Date.parse(b.time) - Date.parse(a.time));
  if (!opts.snapshot || opts.snapshot === "latest") {
    if (!mine.length) throw new SitekeepError("recover.snapshot", `no site snapshot${site ? ` of site ${site}` : ""}${opts.before ? ` before ${opts.before.toISOString()}` : ""} in the repository`, { hint: "list them with `sitekeep snapshots --tag site:CODE`" });
    return mine[0];
  }
  const m = mine.filter((s) => s.id.startsWith(opts.snapshot as string));
  if (m.length !== 1) throw new SitekeepError("recover.snapshot", m.length ? `snapshot prefix ${opts.snapshot} is ambiguous` : `no site snapshot matches ${opts.snapshot}`, { hint: "see `sitekeep snapshots --tag site:CODE`" });
  return m[0];
}

async function restoreSiteDir(repo: Repository, snap: Snapshot, target: string): Promise<void> {
  const r = await new Restorer(repo, { target, includes: [`/${SITE_DIR}`], ownership: false }).restore(snap.tree);
  if (r.errors.length) {
    throw new SitekeepError("recover.read", `cannot read ${r.errors[0].path} from snapshot ${snap.id.slice(0, 8)}: ${r.errors[0].message}`, { hint: "run `sitekeep check --read-data`; try an earlier snapshot with --snapshot" });
  }
}

interface Ctx {
  id: string;
  url: string;
  started: number;
  say: (l: string) => void;
  stateDir: string;
  env: NodeJS.ProcessEnv;
  /** This recovery's private folder (report; safety dumps of replaced MariaDB databases). */
  work: string;
}

async function runRecovery(src: SiteSource, opts: RecoverOptions, ctx: Ctx): Promise<RecoveryReport> {
  const { manifest, config, snapshot, scratch } = src;
  const items: RecoveryItem[] = [];
  const warnings: string[] = [];
  const todo: string[] = [];
  const item = async (kind: RecoveryItem["kind"], name: string, action: string, fn: () => Promise<{ detail: string; checks?: string[] }>): Promise<void> => {
    const t = Date.now();
    if (opts.dryRun) {
      items.push({ kind, name, action, ok: true, detail: "would " + action, checks: [], durationMs: 0 });
      ctx.say(`plan: ${kind} ${name}: ${action}`);
      return;
    }
    try {
      const r = await fn();
      items.push({ kind, name, action, ok: true, detail: r.detail, checks: r.checks ?? [], durationMs: Date.now() - t });
      ctx.say(`${kind} ${name}: ${r.detail}`);
    } catch (err) {
      const se = err instanceof SitekeepError ? err : undefined;
      items.push({ kind, name, action, ok: false, detail: `${errorMessage(err)}${se?.hint ? ` (${se.hint})` : ""}`, checks: [], durationMs: Date.now() - t });
      ctx.say(`${kind} ${name}: FAILED: ${errorMessage(err)}`);
    }
  };

  // Writers: the application is quiesced while its data is put back.
  // No watchdog deadline here: a recovery may take hours, and thawing (restarting) the application
  // while its database is being replaced would be worse than waiting.
  const prepared = opts.dryRun || !config.writers.length ? undefined : await prepareWriters(config, { stateDir: ctx.stateDir, env: ctx.env, maxFreezeMs: 7 * 24 * 3600_000 }).catch((err: unknown) => {
    warnings.push(`writers not frozen during recovery: ${errorMessage(err)}`);
    return undefined;
  });
  await prepared?.set.freeze().catch((err: unknown) => warnings.push(`writers not frozen during recovery: ${errorMessage(err)}`));
  try {
    // ---- files ---------------------------------------------------------------------------------
    if (wants(opts, "files") && manifest.files.length) {
      const paths = [...new Set(manifest.files.map((f) => f.path))];
      const target = opts.root ? resolve(opts.root) : "/";
      await item("files", paths.length === 1 ? paths[0] : `${paths.length} paths`, `restore ${paths.join(", ")} ${opts.root ? `under ${target}` : "to their original paths"}`, async () => {
        // SQLite databases inside the site's folders are the database step's business: the file
        // pass holds a raw copy taken while the application wrote, and restoring it here would
        // overwrite a live database that --replace was meant to protect.
        // Every spelling of the file the snapshot may hold: as configured, normalized, and with
        // symbolic links resolved.
        const spellings = (p: string): string[] => {
          const out = new Set([p, resolve(p)]);
          try {
            out.add(realpathSync(p));
          } catch {
            // gone from this machine: the other spellings remain
          }
          return [...out];
        };
        const excludes = manifest.databases
          .filter((d) => d.kind === "sqlite")
          .flatMap((d) => spellings(d.location))
          .flatMap((p) => ["", "-wal", "-shm", "-journal"].map((x) => globEscape(p + x)));
        const r = await new Restorer(src.repo, { target, includes: paths, excludes, keepAncestors: true }).restore(snapshot.tree);
        if (r.errors.length) throw new SitekeepError("recover.files", `${r.errors.length} items could not be restored: ${r.errors.slice(0, 3).map((e) => `${e.path}: ${e.message}`).join("; ")}`, { hint: "see the report; other files were restored" });
        return { detail: `${r.files_restored} files, ${r.dirs_restored} folders, ${r.bytes_restored} bytes restored and verified against their hashes`, checks: [`${r.files_restored} files restored with verified content`] };
      });
      if (!wants(opts, "databases")) {
        for (const d of manifest.databases.filter((x) => x.kind === "sqlite")) todo.push(`the SQLite database ${d.name} (${d.location}) is restored by the database step, which --only left out`);
      }
      for (const f of manifest.files.filter((x) => x.role === "content-library" || x.role === "package-source")) {
        todo.push(`redistribute the ${f.role} at ${f.path} to where it is served (it is restored, not republished)`);
      }
    }

    // ---- captures ------------------------------------------------------------------------------
    for (const cap of manifest.captures) {
      if (!wants(opts, "captures", cap.name)) continue;
      if (!cap.restore) {
        todo.push(`capture ${cap.name} has no restore command: apply ${cap.file} (in the snapshot) by hand`);
        continue;
      }
      await item("capture", cap.name, `re-import with ${JSON.stringify(cap.restore)}`, async () => {
        const data = readFileSync(join(scratch, cap.file));
        const r = await runCommand(cap.restore as string, { timeoutMs: 600_000, input: data, env: ctx.env });
        if (!commandOk(r)) throw new SitekeepError("recover.capture", `restore command ${describeResult(r)}`, { hint: "run it by hand with the captured file on stdin" });
        return { detail: `${data.length} bytes re-imported` };
      });
    }

    // ---- databases -----------------------------------------------------------------------------
    const mode = opts.database ?? "restore";
    for (const entry of manifest.databases) {
      if (!wants(opts, "databases", entry.name)) continue;
      const spec = config.databases.find((d) => d.name === entry.name);
      if (mode === "skip") {
        items.push({ kind: "database", name: entry.name, action: "skip", ok: true, detail: "skipped (--database skip)", checks: [], durationMs: 0 });
        todo.push(`database ${entry.name} was skipped: restore it or point the application at a recovered copy`);
        continue;
      }
      if (!spec) {
        items.push({ kind: "database", name: entry.name, action: mode, ok: false, detail: `no database named ${entry.name} in the control file: cannot tell where to restore it`, checks: [], durationMs: 0 });
        continue;
      }
      const dump = join(scratch, entry.dump.file);
      const newName = opts.databaseNames?.[entry.name];
      if (mode === "existing") {
        await item("database", entry.name, "verify the database recovered by other means", async () => verifyExisting(spec, entry));
        continue;
      }
      const describeTarget = newName ? `under the new name ${newName}` : "in place";
      await item("database", entry.name, `restore ${entry.kind} dump ${describeTarget}`, async () => {
        let check: TableCheck;
        if (spec.kind === "sqlite") check = restoreSqlite(dump, newName ? resolve(newName) : spec.path, entry, { replace: Boolean(opts.replace) });
        else if (spec.kind === "postgres") {
          const t = { url: spec.url, passwordFile: spec.passwordFile };
          if (entry.globals) {
            const errs = await pgApplyGlobals(t, join(scratch, entry.globals.file));
            if (errs.length) warnings.push(`database ${entry.name}: roles: ${errs.slice(0, 3).join(" | ")}`);
          }
          check = await restorePostgres(t, dump, entry, { replace: Boolean(opts.replace), db: newName });
        } else check = await restoreMariadb({ url: spec.url, socket: spec.socket, passwordFile: spec.passwordFile }, dump, entry, { replace: Boolean(opts.replace), db: newName, safetyDir: ctx.work });
        const n = Object.keys(entry.tables).length;
        return { detail: `restored ${describeTarget}; ${n} tables with the row counts of the manifest`, checks: Object.entries(check.tables).map(([t, rows]) => `${t}: ${rows} rows`) };
      });
      if (newName) todo.push(`database ${entry.name} was restored as ${newName}: point the application at it, or rename it`);
    }
  } finally {
    const failed = (await prepared?.set.thaw()) ?? [];
    if (failed.length) warnings.push(`thaw failed for ${failed.join(", ")}: start the application by hand`);
  }

  // What the backup cannot hold: secrets and machine-specific things.
  const secretFiles = [config.backup.passwordFile, ...config.databases.map((d) => ("passwordFile" in d ? d.passwordFile : undefined))].filter((x): x is string => Boolean(x));
  for (const f of new Set(secretFiles)) if (!existsSync(f)) todo.push(`create ${f} (a secret: never stored in the backup)`);
  if (config.backup.afterBackup && !existsSync(config.backup.afterBackup)) todo.push(`restore the after-backup script ${config.backup.afterBackup} (it is not part of the site's files)`);
  todo.push("install or check TLS certificates and keys that live outside the site's folders");
  if (config.writers.length) todo.push(`check that the application is running again (writers: ${config.writers.map((w) => w.name).join(", ")})`);
  todo.push("run `sitekeep site backup` once the site is up, so the next recovery starts from here");

  return {
    id: ctx.id,
    site: manifest.site,
    snapshot: { id: snapshot.id, time: snapshot.time, ...(manifest.runId ? { runId: manifest.runId } : {}) },
    from: ctx.url,
    host: hostname(),
    startedAt: new Date(ctx.started).toISOString(),
    durationMs: Date.now() - ctx.started,
    dryRun: Boolean(opts.dryRun),
    ok: items.every((i) => i.ok),
    items,
    warnings,
    todo,
  };
}

async function verifyExisting(spec: ControlFile["databases"][number], entry: DatabaseManifestEntry): Promise<{ detail: string; checks: string[] }> {
  let got: Record<string, number>;
  if (spec.kind === "sqlite") {
    const ok = sqliteIntegrity(spec.path);
    if (ok !== "ok") throw new SitekeepError("recover.verify", `integrity_check: ${ok}`, { hint: "the database is damaged: restore it from the snapshot" });
    got = sqliteTables(spec.path);
  } else if (spec.kind === "postgres") got = await pgTables({ url: spec.url, passwordFile: spec.passwordFile }, pgDbName(spec.url));
  else got = await mariaTables({ url: spec.url, socket: spec.socket, passwordFile: spec.passwordFile }, mariaDbName(spec.url));
  const check = compareTables(entry.tables, got);
  if (check.missing.length) throw new SitekeepError("recover.verify", `the database answers but lacks tables of the backup: ${check.missing.join(", ")}`, { hint: "restore it from the snapshot (--database restore)" });
  // Rows may have changed since the backup; the schema is what must match.
  return { detail: `answers; all ${Object.keys(entry.tables).length} tables of the backup are there`, checks: check.mismatches.map((m) => `differs from the backup: ${m}`) };
}

function writeReport(dir: string, r: RecoveryReport): { json: string; markdown: string } {
  const json = join(dir, "report.json");
  const markdown = join(dir, "report.md");
  writeFileSync(json, JSON.stringify(r, null, 2) + "\n", { mode: 0o600 });
  writeFileSync(markdown, reportMarkdown(r), { mode: 0o600 });
  return { json, markdown };
}

export function reportMarkdown(r: RecoveryReport): string {
  const lines = [
    `# Recovery of site ${r.site}${r.dryRun ? " (dry run)" : ""}`,
    "",
    `- Snapshot: ${r.snapshot.id.slice(0, 8)} of ${r.snapshot.time}${r.snapshot.runId ? ` (run ${r.snapshot.runId})` : ""}, from ${r.from}`,
    `- On ${r.host}, started ${r.startedAt}, took ${(r.durationMs / 1000).toFixed(1)} s`,
    `- Result: **${r.dryRun ? "plan only, nothing changed" : r.ok ? "recovered" : "FAILED (see below)"}**`,
    "",
    "## What was restored",
    "",
    "| item | action | result | time |",
    "|---|---|---|---|",
    ...r.items.map((i) => `| ${i.kind} ${i.name} | ${i.action} | ${i.ok ? "ok" : "**failed**"}: ${i.detail.replace(/\|/g, "\\|")} | ${(i.durationMs / 1000).toFixed(1)} s |`),
    "",
  ];
  const checks = r.items.flatMap((i) => i.checks.map((c) => `- ${i.kind} ${i.name}: ${c}`));
  if (checks.length) lines.push("## Checks", "", ...checks, "");
  if (r.warnings.length) lines.push("## Warnings", "", ...r.warnings.map((w) => `- ${w}`), "");
  lines.push("## What you still have to do", "", ...r.todo.map((t) => `- [ ] ${t}`), "");
  return lines.join("\n");
}
