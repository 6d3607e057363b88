// One run of the site backup maintenance task (architecture doc section 6):
//  1. lock the site, 5055;  2. preflight (nothing is frozen yet);  3. capture online: paths found
//  at run time, database dumps, configuration captures, a first pass over the files;  4. freeze the
//  writers, read again only what changed since step 3, thaw (always), 5056 with the freeze window;
//  5. commit the snapshot(s), then retention, copies and the after-backup script;  6. 5035, or the
//  failure's own message and an alert.
// A failed run never deletes or damages an earlier snapshot: nothing is committed before step 5,
// and retention only runs after the new snapshot exists.
import { createHash, randomBytes } from "node:crypto";
import { mkdirSync, readFileSync, realpathSync, rmSync } from "node:fs";
import { hostname } from "node:os";
import { join, resolve } from "node:path";
import { Archiver, type BackupSummary, newArchiverMemo } from "../archive/archiver.js";
import type { ReadFn } from "../archive/chunk-reader.js";
import type { NodeJSON } from "../archive/node.js";
import { copySnapshots } from "../archive/copier.js";
import { prune } from "../archive/pruner.js";
import { forgetPlan, type RetentionPolicy } from "../archive/retention.js";
import { ExitCode, SitekeepError, errorMessage } from "../errors.js";
import type { Repository } from "../repo/repository.js";
import { withLock, withLockedIndex } from "../repo/lock.js";
import type { Snapshot } from "../repo/snapshot.js";
import { PROGRAM_VERSION } from "../version.js";
import { commandExists, commandOk, describeResult, runCommand } from "./command.js";
import { scriptProblems, type LoadedControlFile } from "./control-file.js";
import { type ControlFile, isCommandWriter } from "./control-schema.js";
import { startScan } from "../archive/scanner.js";
import { StepError, openDestination, preflightLocal } from "./destination.js";
import { parseDurationMs } from "./duration.js";
import { resolvePathsFrom } from "./paths-from.js";
import { SiteLock, processAlive } from "./site-lock.js";
import { SiteLog } from "./site-log.js";
import { checkPostgres, dumpPostgres } from "./sources/postgres.js";
import { checkSqlite, dumpSqlite } from "./sources/sqlite.js";
import { checkMariadb, dumpMariadb } from "./sources/mariadb.js";
import type { DatabaseManifestEntry, SourceContext } from "./sources/types.js";
import { hashingReader } from "./sources/types.js";
import { streamReader } from "../archive/chunk-reader.js";
import { streamCommand } from "./command.js";
import { type MessageRow, StateStore, stateDirFor } from "./state.js";
import { type MessageKey, messageDef } from "./status-messages.js";
import { type WriterEvent, WriterSet } from "./writers.js";
import { openWriterSocket, prepareWriters } from "./writer-setup.js";
import { dispatchAlerts } from "./alert-dispatch.js";
import type { WriterServer } from "./writer-server.js";

/** The folder at the root of every site snapshot holding the manifest, dumps and captures. */
export const SITE_DIR = ".sitekeep";
export const MANIFEST_PATH = `/${SITE_DIR}/manifest.json`;

export interface SiteBackupOptions {
  signal?: AbortSignal;
  /** Each status message as it is recorded. */
  onMessage?: (m: MessageRow) => void;
  /** Lines of the run log as they are written (for a verbose CLI). */
  onLog?: (line: string) => void;
  env?: NodeJS.ProcessEnv;
  /** The run's ID (the service hands it out before the run starts). */
  runId?: string;
  /** The clock of recorded times (the service's injectable clock). */
  now?: () => Date;
  /** The run's phase and, while files are read, how far it got (for the console and a TTY). */
  onProgress?: (p: SiteProgress) => void;
  /** With onProgress: count the files to read first, for totals and an ETA (a second walk; default false). */
  progressTotals?: boolean;
}

export interface SiteProgress {
  phase: "preflight" | "paths" | "databases" | "captures" | "files" | "frozen" | "commit" | "retention" | "copy" | "after-backup";
  files?: number;
  bytes?: number;
  totalFiles?: number;
  totalBytes?: number;
}

export interface SiteBackupResult {
  runId: string;
  site: string;
  status: "succeeded" | "failed" | "interrupted";
  /** The last status message: 5035 on success. */
  messageId: number;
  snapshotId?: string;
  dbSnapshotId?: string;
  freezeWindowMs?: number;
  warnings: string[];
  error?: { code: string; message: string; hint?: string };
  exitCode: number;
  logPath: string;
  stateDir: string;
  timings: Record<string, number>;
  files?: SiteFilesSummary;
}

interface Committed {
  snapshotId: string;
  dbSnapshotId?: string;
  freezeWindowMs?: number;
  files: SiteFilesSummary;
}

/** restic's backup summary fields for the site's files, plus what changed while frozen. */
export type SiteFilesSummary = Omit<BackupSummary, "message_type" | "warnings"> & { files_changed_while_frozen: number };

export interface SiteManifest {
  format: "sitekeep-site-manifest/1";
  site: string;
  runId: string;
  createdAt: string;
  host: string;
  sitekeepVersion: string;
  controlFile: { path: string; sha256: string; copy: string };
  tools: Record<string, string>;
  destination: string;
  databaseDestination?: { url: string; snapshotId: string };
  databases: DatabaseManifestEntry[];
  captures: { name: string; file: string; bytes: number; sha256: string; restore?: string; durationMs: number }[];
  files: { path: string; role: string; exclude: string[]; discoveredBy?: string }[];
  writers: { name: string; kind: "command" | "socket" }[];
  freezeWindowMs?: number;
  timings: Record<string, number>;
}

export function newRunId(now = new Date()): string {
  return `${now.toISOString().replace(/[-:]/g, "").replace(/\.\d+Z$/, "Z")}-${randomBytes(3).toString("hex")}`;
}

export function siteTag(site: string): string {
  return `site:${site}`;
}

/** The repository password: backup.passwordFile, else SITEKEEP_PASSWORD, else SITEKEEP_PASSWORD_FILE. */
export function sitePassword(c: ControlFile, env: NodeJS.ProcessEnv = process.env): string {
  const file = c.backup.passwordFile ?? env.SITEKEEP_PASSWORD_FILE;
  if (file) {
    try {
      return readFileSync(file, "utf8").replace(/\r?\n$/, "");
    } catch (err) {
      throw new StepError("destination-unusable", `cannot read the password file ${file}: ${errorMessage(err)}`, "create it (mode 0600) holding the repository password");
    }
  }
  if (env.SITEKEEP_PASSWORD !== undefined) return env.SITEKEEP_PASSWORD;
  throw new StepError("destination-unusable", "no repository password: backup.passwordFile is not set and neither is SITEKEEP_PASSWORD", "set backup.passwordFile in the control file, or SITEKEEP_PASSWORD in the environment");
}

/** Per-entry excludes: absolute globs as they are, relative ones match below the entry's path. */
export function entryExcludes(path: string, exclude: string[]): string[] {
  const base = resolve(path).replace(/\/$/, "");
  return exclude.map((p) => (p.startsWith("/") ? p : `${base}/**/${p}`));
}

/** Runs the site backup task once. Never throws: the outcome is in the result (and the state database). */
export async function runSiteBackup(loaded: LoadedControlFile, opts: SiteBackupOptions = {}): Promise<SiteBackupResult> {
  const c = loaded.config;
  const fullEnv = opts.env ?? process.env;
  // Commands of the control file (writers, captures, pathsFrom, hooks) get no repository password.
  const env: NodeJS.ProcessEnv = { ...fullEnv, SITEKEEP_PASSWORD: undefined };
  const site = c.site;
  const runId = opts.runId ?? newRunId();
  const stateDir = stateDirFor(c.stateDir);
  const state = StateStore.open(stateDir, { now: opts.now });
  const log = SiteLog.forDestination(c.backup.destination, stateDir, site, runId);
  log.rotate();
  const warnings: string[] = [];
  const timings: Record<string, number> = {};
  const t0 = Date.now();
  const mark = (name: string, since: number): void => {
    timings[name] = Date.now() - since;
  };
  const logLine = (text: string): void => {
    log.line(text);
    opts.onLog?.(text);
  };
  let lastMessage = 0;
  const message = (key: MessageKey, text: string): void => {
    const def = messageDef(key);
    const row = state.addMessage({ site, runId, messageId: def.id, severity: def.severity, text });
    log.statmsg(def.id, def.severity, text);
    lastMessage = def.id;
    opts.onMessage?.(row);
  };

  // Runs that were still "running" when their process died (SIGKILL, power loss) are closed first.
  for (const orphan of state.orphanedRuns(site, processAlive)) {
    state.finishRun(orphan.id, { status: "interrupted", errorCode: "site.backup-interrupted", error: "the process running it ended without finishing (killed or crashed); its writers were thawed by the watchdog" });
    const def = messageDef("backup-interrupted");
    const text = `Run ${orphan.id} was interrupted: its process (PID ${orphan.pid}) ended without finishing; no snapshot was made by it`;
    state.addMessage({ site, runId: orphan.id, messageId: def.id, severity: def.severity, text });
    // Log watchers saw the run start in sitekeep.log: they must see it end there too.
    if (orphan.kind === "backup") SiteLog.forDestination(orphan.destination ?? c.backup.destination, stateDir, site, orphan.id).statmsg(def.id, def.severity, text);
  }

  let lock: SiteLock;
  try {
    lock = SiteLock.acquire(stateDir, site, runId);
  } catch (err) {
    const se = err instanceof SitekeepError ? err : undefined;
    // 5001 only for a run that is really active; a state directory we cannot write is another story.
    message(se?.code === "site.busy" ? "site-busy" : "backup-failed", `Backup of site ${site} not started: ${errorMessage(err)}`);
    state.close();
    return {
      runId, site, status: "failed", messageId: lastMessage, warnings, exitCode: se?.exitCode ?? ExitCode.locked, logPath: log.path, stateDir, timings,
      error: { code: se?.code ?? "site.busy", message: errorMessage(err), hint: se?.hint },
    };
  }

  state.startRun({ id: runId, site, kind: "backup", destination: c.backup.destination });
  message("backup-started", `Backup of site ${site} started (run ${runId}, ${PROGRAM_VERSION} on ${hostname()})`);
  logLine(`control file ${loaded.file}`);

  const tmpDir = join(stateDir, "tmp", runId);
  let writers = new WriterSet([], { maxFreezeMs: 0, watchdogLog: "" });
  let writerServer: WriterServer | undefined;
  const onWriterEvent = (e: WriterEvent): void => logLine(`writer ${e.writer}: ${e.action} ${e.ok ? "ok" : "FAILED"} in ${e.durationMs} ms${e.ok ? "" : `: ${e.detail}`}`);
  const opened: Repository[] = [];
  let result: SiteBackupResult;
  try {
    const r = await backupSteps();
    result = r;
  } catch (err) {
    const interrupted = opts.signal?.aborted || (err instanceof SitekeepError && err.exitCode === ExitCode.interrupted);
    // A service that stops a run (maxDuration, shutdown) says why in the signal's reason.
    const reason = typeof opts.signal?.reason === "string" ? opts.signal.reason : undefined;
    const step = interrupted
      ? reason
        ? new StepError("backup-interrupted", `${reason}; nothing was committed and the writers were thawed`, "see the run log", { exitCode: ExitCode.interrupted })
        : StepError.from("backup-interrupted", err)
      : StepError.from("backup-failed", err);
    // Writers are thawed on every path out of the run (backupSteps thaws too; this is the backstop).
    const thawFailed = await writers.thaw();
    if (thawFailed.length) message("writer-thaw-failed", `Thaw failed for ${thawFailed.join(", ")}: the application may still be quiesced`);
    message(step.key, `Backup of site ${site} failed: ${step.message}`);
    logLine(`Backup failed: ${step.message}${step.hint ? ` (${step.hint})` : ""}`);
    if (c.backup.alertOnFailure) state.openAlert({ site, kind: "backup-failed", severity: "critical", runId, messageId: messageDef(step.key).id, text: `Backup of site ${site} failed (message ${messageDef(step.key).id}): ${step.message}` });
    state.finishRun(runId, { status: interrupted ? "interrupted" : "failed", errorCode: step.code, error: step.message, warnings: warnings.length, freezeMs: writers.freezeWindowMs });
    result = {
      runId, site, status: interrupted ? "interrupted" : "failed", messageId: lastMessage, warnings,
      error: { code: step.code, message: step.message, hint: step.hint },
      exitCode: interrupted ? ExitCode.interrupted : step.exitCode === ExitCode.ok ? ExitCode.failed : step.exitCode,
      logPath: log.path, stateDir, timings, ...(writers.freezeWindowMs !== undefined ? { freezeWindowMs: writers.freezeWindowMs } : {}),
    };
  } finally {
    rmSync(tmpDir, { recursive: true, force: true });
    for (const r of opened) await r.backend.close().catch(() => undefined);
    await writerServer?.close().catch(() => undefined);
    lock.release();
  }
  // Alerts this run opened or closed reach their channels now (a backup started by cron, without
  // the service, notifies too). A delivery failure is recorded, never the run's failure.
  await dispatchAlerts(c, state, { env }).catch((err: unknown) => logLine(`alert delivery failed: ${errorMessage(err)}`));
  state.close();
  return result;

  async function backupSteps(): Promise<SiteBackupResult> {
    // ---- 2. preflight ----------------------------------------------------------------------------
    const t = Date.now();
    opts.onProgress?.({ phase: "preflight" });
    mkdirSync(tmpDir, { recursive: true, mode: 0o700 });
    const password = sitePassword(c, fullEnv);
    const dest = c.backup.destination;
    const dbDest = c.backup.databaseDestination;
    const localDests = [[dest, "destination"], ...(dbDest ? [[dbDest, "database destination"]] : [])].filter(([u]) => !u.startsWith("s3:"));
    const destStates = localDests.map(([u, role]) => preflightLocal(u, role));
    // An empty destination where this site's repository used to be is most likely an unmounted
    // share (its mount point is an empty folder): initializing there would back up to the wrong disk.
    for (const s of destStates) {
      if (!s.hasRepository && state.runs(site, 1000, "backup").some((r) => r.status === "succeeded" && r.destination === s.url)) {
        throw new StepError("destination-missing", `the destination ${s.url} holds no repository, but earlier runs of site ${site} wrote one there`, "is the share mounted? Mount it; to start a new repository on purpose, move the old state directory away");
      }
    }
    if (c.backup.afterBackup) {
      const p = scriptProblems(c.backup.afterBackup, ["backup", "afterBackup"]);
      if (p.length) throw new StepError("config-invalid", `backup.afterBackup: ${p[0].message}`, p[0].hint);
    }
    let dbBytes = 0;
    for (const d of c.databases) {
      try {
        if (d.kind === "sqlite") dbBytes += checkSqlite(d).bytes;
        else if (d.kind === "postgres") dbBytes += (await checkPostgres(d)).bytes;
        else dbBytes += (await checkMariadb(d, tmpDir)).bytes;
      } catch (err) {
        throw StepError.from("database-unreachable", err);
      }
    }
    try {
      writerServer = await openWriterSocket(c, stateDir, runId);
    } catch (err) {
      throw StepError.from("writer-missing", err);
    }
    const prepared = await prepareWriters(c, { stateDir, server: writerServer, env, onEvent: onWriterEvent });
    writers = prepared.set;
    for (const name of prepared.absent) {
      warnings.push(`writer ${name} did not register; the site was backed up without freezing it`);
      logLine(`writer ${name}: not registered (required: false), not frozen`);
    }
    for (const cap of c.captures) {
      if (!(await commandExists(cap.export, env))) throw new StepError("capture-failed", `capture ${cap.name}: the command ${JSON.stringify(cap.export)} cannot run here (not found)`, "install it or fix the capture's export command");
    }
    for (const f of c.files) {
      const clash = f.path ? destinationInside(f.path) : undefined;
      if (clash) throw new StepError("config-invalid", `files: ${f.path} contains the destination ${clash} (through a symbolic link)`, "put the destination outside every folder under files");
    }
    const estimate = await estimateBytes(state, site, dbBytes, c.files.flatMap((f) => (f.path ? [f.path] : [])), opts.signal);
    for (const s of destStates) {
      if (s.freeBytes !== undefined && s.freeBytes < estimate) {
        throw new StepError("destination-full", `the destination ${s.url} has ${fmtBytes(s.freeBytes)} free; this run is estimated to need ${fmtBytes(estimate)}`, "free space there (forget + prune old snapshots) or move the destination");
      }
    }
    mark("preflightMs", t);
    logLine(`preflight ok (estimate ${fmtBytes(estimate)})`);

    // ---- open the repositories -------------------------------------------------------------------
    const destOpts = { appendOnly: c.backup.appendOnly, ...(c.backup.objectLock ? { objectLock: c.backup.objectLock } : {}) };
    const repo = await openDestination(dest, password, "destination", destOpts);
    opened.push(repo);
    const dbRepo = dbDest ? await openDestination(dbDest, password, "database destination", destOpts) : undefined;
    if (dbRepo) opened.push(dbRepo);
    // Shared locks while capturing (as restic's backup); retention takes its own exclusive one.
    // Each index is read while its lock waits out its conflict check.
    const cut = await withLockedIndex(repo, false, () => {
      if (!dbRepo) return capture(repo, undefined);
      return withLockedIndex(dbRepo, false, () => capture(repo, dbRepo));
    });
    return finish(repo, dbRepo, cut);
  }

  async function capture(repo: Repository, dbRepo: Repository | undefined): Promise<Committed> {
    const tags = [siteTag(site), `run:${runId}`];
    const previous = await latestSiteSnapshot(repo, site);

    // ---- 3a. paths found at run time -------------------------------------------------------------
    let t = Date.now();
    opts.onProgress?.({ phase: "paths" });
    const fileEntries: SiteManifest["files"] = [];
    for (const f of c.files) {
      if (f.path) fileEntries.push({ path: f.path, role: f.role, exclude: f.exclude });
      else if (f.pathsFrom) {
        let found: string[];
        try {
          found = await resolvePathsFrom(f.pathsFrom, c.databases, env);
        } catch (err) {
          throw StepError.from("paths-discovery-failed", err, "run the pathsFrom command or query by hand");
        }
        const by = typeof f.pathsFrom === "string" ? f.pathsFrom : `${f.pathsFrom.database}: ${f.pathsFrom.query}`;
        logLine(`pathsFrom ${JSON.stringify(by)}: ${found.length} paths`);
        for (const p of found) {
          const clash = destinationInside(p);
          if (clash) throw new StepError("paths-discovery-failed", `pathsFrom ${JSON.stringify(by)} found ${p}, which contains the destination ${clash}`, "the backup must not contain its own destination: fix the command or query");
          fileEntries.push({ path: p, role: f.role, exclude: f.exclude, discoveredBy: by });
        }
      }
    }
    const paths = [...new Set(fileEntries.map((e) => resolve(e.path)))];
    const excludes = fileEntries.flatMap((e) => entryExcludes(e.path, e.exclude));
    mark("pathsFromMs", t);

    // ---- 3b. databases and captures, online --------------------------------------------------------
    // The .sitekeep folder is assembled from streams; with a database destination the dumps go there.
    const siteArchiver = new Archiver(repo, { paths, excludes, host: site, tags, signal: opts.signal });
    const dbArchiver = dbRepo ? new Archiver(dbRepo, { paths: [], host: site, tags: [...tags, "databases"], signal: opts.signal }) : undefined;
    const siteFiles = new Map<string, NodeJSON>();
    const dbFiles = new Map<string, NodeJSON>();
    const storeIn = (arch: Archiver, into: Map<string, NodeJSON>) => async (rel: string, read: ReadFn): Promise<NodeJSON> => {
      const node = await arch.streamFileNode(rel.split("/").pop() as string, read);
      into.set(rel, node); // a retried store (pg_dumpall without passwords) replaces the first
      return node;
    };
    const dbCtx: SourceContext = { store: dbArchiver ? storeIn(dbArchiver, dbFiles) : storeIn(siteArchiver, siteFiles), tmpDir, signal: opts.signal, log: logLine };
    t = Date.now();
    opts.onProgress?.({ phase: "databases" });
    const databases: DatabaseManifestEntry[] = [];
    for (const d of c.databases) {
      checkAbort();
      try {
        if (d.kind === "sqlite") databases.push(await dumpSqlite(d, dbCtx));
        else if (d.kind === "postgres") databases.push(await dumpPostgres(d, dbCtx));
        else databases.push(await dumpMariadb(d, dbCtx));
      } catch (err) {
        throw StepError.from("database-capture-failed", err);
      }
    }
    mark("databasesMs", t);

    t = Date.now();
    opts.onProgress?.({ phase: "captures" });
    const captures: SiteManifest["captures"] = [];
    for (const cap of c.captures) {
      checkAbort();
      const rel = `captures/${cap.name}.out`;
      const run = streamCommand(cap.export, { timeoutMs: parseDurationMs(cap.timeout) ?? 300_000, env, signal: opts.signal });
      const h = hashingReader(streamReader(run.stdout));
      try {
        await storeIn(siteArchiver, siteFiles)(rel, h.read);
      } catch (err) {
        run.kill();
        throw StepError.from("capture-failed", err);
      }
      const res = await run.done;
      if (!commandOk(res)) throw new StepError("capture-failed", `capture ${cap.name}: ${describeResult(res)}`, "run the export command by hand; it must print the configuration and exit 0");
      const { bytes, sha256 } = h.result();
      captures.push({ name: cap.name, file: `/${SITE_DIR}/${rel}`, bytes, sha256, ...(cap.restore ? { restore: cap.restore } : {}), durationMs: res.durationMs });
      logLine(`capture ${cap.name}: ${bytes} bytes`);
    }
    mark("capturesMs", t);

    // ---- 3c. files, online; 4. frozen: only what changed ---------------------------------------
    t = Date.now();
    let tree: { tree: string; paths: string[]; nodes: NodeJSON[] } | undefined;
    let onlineArchiver: Archiver | undefined;
    // The online pass leaves its decoded trees and stats to the frozen pass: unchanged files and
    // folders are then recognized without formatting, decoding or encoding anything again.
    const memo = newArchiverMemo();
    let onlineStarted = Date.now();
    let frozenArchiver: Archiver | undefined;
    if (paths.length) {
      // The previous snapshot's root holds the site's folders and .sitekeep; the archiver only
      // looks up the names it meets, so it serves as the parent tree as it is.
      opts.onProgress?.({ phase: "files" });
      onlineStarted = Date.now();
      onlineArchiver = new Archiver(repo, {
        paths,
        excludes,
        memo,
        host: site,
        signal: opts.signal,
        ...(previous ? { parentTree: previous.tree } : { parent: "none" }),
        ...(opts.onProgress
          ? { scanTotals: Boolean(opts.progressTotals), onProgress: (p) => opts.onProgress?.({ phase: "files", files: p.files, bytes: p.bytes, totalFiles: p.totalFiles, totalBytes: p.totalBytes }) }
          : {}),
      });
      try {
        tree = await onlineArchiver.buildTree();
        // The frozen pass reads this tree as its parent: its blobs must be loadable, not still
        // in a pack being filled. Flushing also makes everything read so far durable.
        await repo.flush();
      } catch (err) {
        throw failed("file-capture-failed", err);
      }
    }
    mark("filesOnlineMs", t);

    t = Date.now();
    if (writers.count) {
      opts.onProgress?.({ phase: "frozen" });
      // Files changed within a second or so of the online pass's start may look unchanged while
      // frozen (same clock tick): they are read again.
      memo.racySince = Math.floor(onlineStarted / 1000) - 1;
      try {
        await writers.freeze(opts.signal);
      } catch (err) {
        throw failed("writer-freeze-failed", err);
      }
      let frozenErr: unknown;
      // The frozen pass gets maxFreeze, no more: by then the watchdog (and socket writers
      // themselves) thaw, and a snapshot read after that would not be consistent.
      const frozenAbort = new AbortController();
      const onOuterAbort = (): void => frozenAbort.abort(opts.signal?.reason);
      opts.signal?.addEventListener("abort", onOuterAbort, { once: true });
      let overran = false;
      // Counted from the first freeze (when socket writers got their deadline), less a margin, so
      // the pass ends before any writer thaws itself.
      const maxFreezeMs = parseDurationMs(c.backup.maxFreeze) ?? 600_000;
      const left = maxFreezeMs - (Date.now() - (writers.frozenSince ?? Date.now())) - Math.min(5_000, maxFreezeMs / 10);
      const freezeTimer = setTimeout(() => {
        overran = true;
        frozenAbort.abort("maxFreeze");
      }, Math.max(0, left));
      try {
        if (paths.length) {
          // Unchanged files (size, mtime, ctime, inode) reuse the first pass's content: only what
          // changed since is read while the application is quiesced.
          frozenArchiver = new Archiver(repo, { paths, excludes, memo, host: site, signal: frozenAbort.signal, ...(tree ? { parentTree: tree.tree } : {}) });
          tree = await frozenArchiver.buildTree();
        }
      } catch (err) {
        frozenErr = err;
      } finally {
        clearTimeout(freezeTimer);
        opts.signal?.removeEventListener("abort", onOuterAbort);
      }
      const thawFailed = await writers.thaw();
      if (thawFailed.length) throw new StepError("writer-thaw-failed", `thaw failed for ${thawFailed.join(", ")}`, "the application may still be quiesced: run the thaw command by hand now");
      if (overran) {
        throw new StepError("writer-freeze-failed", `the frozen pass took longer than backup.maxFreeze (${c.backup.maxFreeze}); the writers were thawed and nothing was committed`, "raise backup.maxFreeze, or exclude fast-changing files so fewer are read while frozen");
      }
      if (frozenErr) throw failed("file-capture-failed", frozenErr);
    }
    mark("frozenMs", t);
    const freezeWindowMs = writers.freezeWindowMs;
    message("snapshot-cut", writers.count
      ? `Snapshot of site ${site} cut; ${writers.count} writer${writers.count === 1 ? "" : "s"} thawed after a freeze window of ${freezeWindowMs} ms`
      : `Snapshot of site ${site} cut (no writers to freeze)`);

    // ---- 5. commit -----------------------------------------------------------------------------
    opts.onProgress?.({ phase: "commit" });
    t = Date.now();
    let dbSnapshotId: string | undefined;
    if (dbArchiver && dbRepo) {
      const dbDir = await dbArchiver.dirNode("databases", [...dbFiles.values()]);
      const root = await dbArchiver.dirNode(SITE_DIR, [dbDir]);
      try {
        dbSnapshotId = (await dbArchiver.commit({ tree: await dbArchiver.rootTree([root]), paths: [`/${SITE_DIR}`] })).snapshot_id;
      } catch (err) {
        throw failed("snapshot-failed", err);
      }
      logLine(`database snapshot ${dbSnapshotId} in ${c.backup.databaseDestination}`);
    }
    const manifest: SiteManifest = {
      format: "sitekeep-site-manifest/1",
      site,
      runId,
      createdAt: new Date().toISOString(),
      host: hostname(),
      sitekeepVersion: PROGRAM_VERSION,
      controlFile: { path: loaded.file, sha256: createHash("sha256").update(loaded.text).digest("hex"), copy: `/${SITE_DIR}/sitekeep.yaml` },
      tools: { node: process.version, ...Object.fromEntries(databases.map((d) => [`${d.kind}:${d.name}`, `${d.engineVersion} (${d.dumpTool})`])) },
      destination: c.backup.destination,
      ...(dbSnapshotId ? { databaseDestination: { url: c.backup.databaseDestination as string, snapshotId: dbSnapshotId } } : {}),
      databases,
      captures,
      files: fileEntries,
      writers: c.writers.map((w) => ({ name: w.name, kind: isCommandWriter(w) ? ("command" as const) : ("socket" as const) })),
      ...(freezeWindowMs !== undefined ? { freezeWindowMs } : {}),
      timings: { ...timings },
    };
    const store = storeIn(siteArchiver, siteFiles);
    await store("sitekeep.yaml", bufferReader(Buffer.from(loaded.text)));
    await store("manifest.json", bufferReader(Buffer.from(JSON.stringify(manifest, null, 2) + "\n")));
    const children: NodeJSON[] = [];
    const top = [...siteFiles.entries()].filter(([rel]) => !rel.includes("/")).map(([, n]) => n);
    children.push(...top);
    for (const sub of ["databases", "captures"]) {
      const inner = [...siteFiles.entries()].filter(([rel]) => rel.startsWith(sub + "/")).map(([, n]) => n);
      if (inner.length) children.push(await siteArchiver.dirNode(sub, inner));
    }
    const siteDir = await siteArchiver.dirNode(SITE_DIR, children);
    const rootNodes = [...(tree?.nodes ?? []).filter((n) => n.name !== SITE_DIR), siteDir];
    let summary: BackupSummary;
    try {
      summary = await siteArchiver.commit({ tree: await siteArchiver.rootTree(rootNodes), paths: [...(tree?.paths ?? []), `/${SITE_DIR}`].sort(), ...(previous ? { parent: previous } : {}) });
    } catch (err) {
      // The database snapshot of this run would be an orphan no site snapshot names: it goes (it is
      // this run's own, never an earlier one).
      // (Unless the site snapshot was stored after all and only its answer was lost.)
      if (dbRepo && dbSnapshotId) {
        const committed = await repo.listSnapshots(() => undefined).then((all) => all.some((x) => x.tags?.includes(`run:${runId}`)), () => true);
        // An append-only destination keeps even this orphan (nothing is deleted from here); prune ignores it.
        if (!committed && !dbRepo.appendOnly) await dbRepo.backend.remove({ type: "snapshots", name: dbSnapshotId }).catch(() => undefined);
      }
      throw failed("snapshot-failed", err);
    }
    mark("commitMs", t);
    // File statistics compare with the previous snapshot (the online pass); what changed while
    // frozen is counted apart. Data added is everything any pass stored.
    const online = onlineArchiver?.totals;
    const frozen = frozenArchiver?.totals;
    const fileWarnings = [...(online?.warnings ?? []), ...(frozen?.warnings ?? [])];
    const seenWarn = new Set<string>();
    for (const w of fileWarnings) {
      const line = `${w.path}: ${w.message}`;
      if (!seenWarn.has(line)) warnings.push(line);
      seenWarn.add(line);
    }
    if (seenWarn.size) {
      const paths = [...new Set(fileWarnings.map((w) => w.path))];
      message("files-unreadable", `${paths.length} file${paths.length === 1 ? "" : "s"} or folder${paths.length === 1 ? "" : "s"} could not be read and are not (fully) in the snapshot: ${paths.slice(0, 3).join(", ")}${paths.length > 3 ? ", ..." : ""}`);
    }
    const { message_type: _m, warnings: _w, ...committed } = summary;
    const files = {
      ...committed,
      ...(online?.stats ?? {}),
      data_added: summary.data_added + (online?.stats.data_added ?? 0) + (frozen?.stats.data_added ?? 0),
      files_changed_while_frozen: frozen ? frozen.stats.files_new + frozen.stats.files_changed : 0,
    };
    logLine(`snapshot ${summary.snapshot_id} committed (${files.total_files_processed} files, ${fmtBytes(files.total_bytes_processed)}; ${fmtBytes(files.data_added)} new)`);
    return { snapshotId: summary.snapshot_id, dbSnapshotId, freezeWindowMs, files };
  }

  /** After the snapshot exists: retention, copies, the hook (their failures are warnings), 5035. */
  async function finish(repo: Repository, dbRepo: Repository | undefined, cut: Committed): Promise<SiteBackupResult> {
    const { snapshotId, dbSnapshotId, freezeWindowMs, files } = cut;
    let t: number;
    if (c.backup.retention) {
      opts.onProgress?.({ phase: "retention" });
      t = Date.now();
      try {
        const removed = await applyRetention(repo, site, c.backup.retention, snapshotId);
        // Database snapshots follow the site snapshots they belong to (same run tag), not the
        // policy on their own: each kept site snapshot keeps its databases.
        if (dbRepo && dbSnapshotId) await applyRetention(dbRepo, site, c.backup.retention, dbSnapshotId, await runTagsOf(repo, site));
        logLine(`retention: ${removed} snapshot${removed === 1 ? "" : "s"} removed`);
      } catch (err) {
        warnings.push(`retention: ${errorMessage(err)}`);
        message("retention-failed", `Retention for site ${site} failed; the new snapshot is safe: ${errorMessage(err)}`);
      }
      mark("retentionMs", t);
    }
    let copyFailed = false;
    for (const target of c.backup.copyTo) {
      opts.onProgress?.({ phase: "copy" });
      t = Date.now();
      try {
        const pw = c.backup.copyPasswordFile ? readFileSync(c.backup.copyPasswordFile, "utf8").replace(/\r?\n$/, "") : password();
        const dst = await openDestination(target, pw, "copy destination", { appendOnly: c.backup.appendOnly });
        opened.push(dst);
        const snap = await repo.loadSnapshot(snapshotId);
        await withLock(repo, false, () =>
          withLock(dst, false, async () => {
            await dst.loadIndex();
            await copySnapshots(repo, dst, [snap]);
          }),
        );
        logLine(`copied snapshot ${snapshotId.slice(0, 8)} to ${target}`);
      } catch (err) {
        warnings.push(`copy to ${target}: ${errorMessage(err)}`);
        message("copy-failed", `Copy of snapshot ${snapshotId.slice(0, 8)} to ${target} failed; the snapshot is safe: ${errorMessage(err)}`);
        copyFailed = true;
        state.openAlert({ site, kind: "copy-failed", severity: "warning", runId, messageId: messageDef("copy-failed").id, text: `Copy of site ${site}'s snapshot to ${target} failed: ${errorMessage(err)}` });
      }
      mark("copyMs", t);
    }
    if (c.backup.copyTo.length && !copyFailed) state.closeAlerts(site, ["copy-failed"], runId);
    if (c.backup.afterBackup) {
      opts.onProgress?.({ phase: "after-backup" });
      t = Date.now();
      message("after-backup-started", `After-backup script ${c.backup.afterBackup} started`);
      const r = await runCommand(shellQuote(c.backup.afterBackup), {
        timeoutMs: parseDurationMs(c.backup.afterBackupTimeout) ?? 3600_000,
        env: {
          ...env,
          SITEKEEP_SITE: site,
          SITEKEEP_RUN_ID: runId,
          SITEKEEP_SNAPSHOT_ID: snapshotId,
          SITEKEEP_DESTINATION: c.backup.destination,
          SITEKEEP_LOG: log.path,
          ...(dbSnapshotId ? { SITEKEEP_DB_SNAPSHOT_ID: dbSnapshotId, SITEKEEP_DB_DESTINATION: c.backup.databaseDestination } : {}),
          SITEKEEP_PASSWORD: undefined, // the hook gets no secrets it did not ask for
        },
      });
      for (const line of (r.stdout + r.stderr).split("\n").filter(Boolean).slice(-20)) logLine(`afterBackup: ${line}`);
      if (!commandOk(r)) {
        warnings.push(`afterBackup: ${describeResult(r)}`);
        message("after-backup-failed", `After-backup script failed; the snapshot is kept: ${describeResult(r)}`);
        state.openAlert({ site, kind: "after-backup-failed", severity: "warning", runId, messageId: messageDef("after-backup-failed").id, text: `After-backup script of site ${site} failed: ${describeResult(r)}` });
      } else state.closeAlerts(site, ["after-backup-failed"], runId);
      mark("afterBackupMs", t);
    }

    mark("totalMs", t0);
    message("backup-completed", `Backup of site ${site} completed with no errors (${warnings.length} warning${warnings.length === 1 ? "" : "s"}); snapshot ${snapshotId}`);
    logLine("Backup completed");
    state.closeAlerts(site, ["backup-failed", "retention-window-exceeded"], runId);
    state.finishRun(runId, { status: "succeeded", snapshotId, dbSnapshotId, freezeMs: freezeWindowMs, warnings: warnings.length, summary: { ...files, timings } });
    return {
      runId, site, status: "succeeded", messageId: lastMessage, snapshotId, ...(dbSnapshotId ? { dbSnapshotId } : {}),
      ...(freezeWindowMs !== undefined ? { freezeWindowMs } : {}), warnings, exitCode: ExitCode.ok, logPath: log.path, stateDir, timings, files,
    };
  }

  function password(): string {
    return sitePassword(c, fullEnv);
  }

  /** The step error for err: its own message key, unless the run was interrupted. */
  function failed(key: MessageKey, err: unknown): StepError {
    return StepError.from(opts.signal?.aborted ? "backup-interrupted" : key, err);
  }

  /** The destination inside `path` (symlinks resolved), if any. */
  function destinationInside(path: string): string | undefined {
    const real = (p: string): string => {
      try {
        return realpathSync(p);
      } catch {
        return resolve(p);
      }
    };
    const base = real(path).replace(/\/$/, "");
    for (const d of [c.backup.destination, c.backup.databaseDestination]) {
      if (!d || d.startsWith("s3:")) continue;
      const dr = real(d);
      if (dr === base || dr.startsWith(base + "/")) return d;
    }
    return undefined;
  }

  function checkAbort(): void {
    if (opts.signal?.aborted) throw new StepError("backup-interrupted", "interrupted; no snapshot was written", "run the backup again", { exitCode: ExitCode.interrupted });
  }
}

/** The newest snapshot of this site in a repository. */
export async function latestSiteSnapshot(repo: Repository, site: string): Promise<Snapshot | undefined> {
  const all = await repo.listSnapshots(() => undefined);
  return all.filter((s) => s.tags?.includes(siteTag(site))).sort((a, b) => Date.parse(b.time) - Date.parse(a.time))[0];
}

/** forget + prune for this site's snapshots; the snapshot just made is always kept. */
/** The run tags of the site's snapshots in a repository. */
async function runTagsOf(repo: Repository, site: string): Promise<Set<string>> {
  const snaps = (await repo.listSnapshots()).filter((s) => s.tags?.includes(siteTag(site)));
  return new Set(snaps.flatMap((s) => s.tags?.filter((t) => t.startsWith("run:")) ?? []));
}

/**
 * forget + prune for this site's snapshots; the snapshot just made is always kept. With
 * `followRuns`, the snapshots kept are exactly those whose run tag is in the set (database
 * snapshots follow their site snapshots).
 */
async function applyRetention(repo: Repository, site: string, policy: RetentionPolicy, keep: string, followRuns?: Set<string>): Promise<number> {
  // forget and prune need the exclusive lock (another process may be backing up): wait a while.
  return withLock(
    repo,
    true,
    async () => {
      const mine = (await repo.listSnapshots()).filter((s) => s.tags?.includes(siteTag(site)));
      const remove = followRuns
        ? mine.filter((s) => s.id !== keep && !s.tags?.some((t) => followRuns.has(t)))
        : forgetPlan(mine, policy, { host: false, paths: false, tags: false }, { protect: (s) => s.id === keep })
            .flatMap((p) => p.remove)
            .filter((s) => s.id !== keep);
      if (!remove.length) return 0;
      repo.assertMayDelete("retention");
      for (const s of remove) await repo.backend.remove({ type: "snapshots", name: s.id });
      await repo.loadIndex();
      await prune(repo);
      return remove.length;
    },
    { retryMs: 120_000 },
  );
}

async function estimateBytes(state: StateStore, site: string, dbBytes: number, paths: string[], signal?: AbortSignal): Promise<number> {
  // Later runs add about what earlier ones added; a first run needs room for the whole site
  // (compression and deduplication usually make it smaller: this errs on the safe side).
  const recent = state.runs(site, 5, "backup").filter((r) => r.status === "succeeded" && r.summary);
  const added = recent.map((r) => Number((JSON.parse(r.summary as string) as { data_added?: number }).data_added ?? 0));
  if (added.length) return 2 * Math.max(...added) + 16 * 1024 * 1024;
  const scan = startScan(paths, () => false, signal);
  while (!scan.done && !signal?.aborted) await new Promise((r) => setTimeout(r, 20));
  return Math.ceil((dbBytes + scan.bytes) * 1.05) + 16 * 1024 * 1024;
}

function bufferReader(data: Buffer): ReadFn {
  let pos = 0;
  return async (buf, offset, length) => {
    const n = Math.min(length, data.length - pos);
    data.copy(buf, offset, pos, pos + n);
    pos += n;
    return n;
  };
}

function shellQuote(s: string): string {
  return `'${s.replace(/'/g, "'\\''")}'`;
}

function fmtBytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(i ? 1 : 0)} ${units[i]}`;
}
