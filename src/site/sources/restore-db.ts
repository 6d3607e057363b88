// Putting database dumps back (recovery) and proving them (drills): each engine restores into a
// database, counts the rows of every table the manifest lists, and compares. A replaced database is
// first restored under a temporary name and verified, so a failed restore leaves the old one as
// it was.
import { chmodSync, chownSync, closeSync, copyFileSync, existsSync, fsyncSync, mkdirSync, openSync, renameSync, rmSync, statSync } from "node:fs";
import { dirname, join, basename } from "node:path";
import Database from "better-sqlite3";
import pg from "pg";
import { readFileSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { SitekeepError, errorMessage } from "../../errors.js";
import { describeResult, runCommand } from "../command.js";
import { pgTool, pgToolConnection } from "./postgres.js";
import type { DatabaseManifestEntry } from "./types.js";

export interface TableCheck {
  /** Tables whose row count differs from the manifest's, as "name: got N, expected M". */
  mismatches: string[];
  /** Tables in the manifest that the database lacks. */
  missing: string[];
  tables: Record<string, number>;
}

export function compareTables(expected: Record<string, number>, got: Record<string, number>): TableCheck {
  const mismatches: string[] = [];
  const missing: string[] = [];
  for (const [t, n] of Object.entries(expected)) {
    if (!(t in got)) missing.push(t);
    else if (got[t] !== n) mismatches.push(`${t}: ${got[t]} rows, the manifest says ${n}`);
  }
  return { mismatches, missing, tables: got };
}

// ---- SQLite -------------------------------------------------------------------------------------

export function sqliteTables(path: string): Record<string, number> {
  const db = new Database(path, { readonly: true, fileMustExist: true });
  try {
    const out: Record<string, number> = {};
    for (const { name } of db.prepare("SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'").all() as { name: string }[]) {
      out[name] = (db.prepare(`SELECT count(*) AS n FROM "${name.replace(/"/g, '""')}"`).get() as { n: number }).n;
    }
    return out;
  } finally {
    db.close();
  }
}

export function sqliteIntegrity(path: string): string {
  const db = new Database(path, { readonly: true, fileMustExist: true });
  try {
    return String(db.pragma("integrity_check", { simple: true }));
  } finally {
    db.close();
  }
}

/** Puts a SQLite copy in place: checked beside the target first, then renamed over it. */
export function restoreSqlite(copy: string, target: string, entry: DatabaseManifestEntry, opts: { replace: boolean }): TableCheck {
  if (existsSync(target) && statSync(target).size > 0 && !opts.replace) {
    throw new SitekeepError("recover.exists", `database ${entry.name}: ${target} exists`, { hint: "add --replace to overwrite it, or restore it under another path with --database-name" });
  }
  mkdirSync(dirname(target), { recursive: true, mode: 0o755 }); // a new machine may lack the folder
  const tmp = join(dirname(target), `.${basename(target)}.sitekeep-restore`);
  copyFileSync(copy, tmp);
  const fd = openSync(tmp, "r+");
  fsyncSync(fd);
  closeSync(fd);
  const integrity = sqliteIntegrity(tmp);
  const check = compareTables(entry.tables, sqliteTables(tmp));
  if (integrity !== "ok" || check.missing.length || check.mismatches.length) {
    rmSync(tmp, { force: true });
    throw new SitekeepError("recover.verify", `database ${entry.name}: the restored copy does not match the manifest (${integrity !== "ok" ? integrity : [...check.missing.map((m) => `missing ${m}`), ...check.mismatches].join("; ")})`, { hint: "the snapshot may be damaged: run sitekeep check --read-data" });
  }
  // The file keeps the live file's mode and owner (or, on a new machine, the recorded ones).
  const like = existsSync(target) ? statSync(target) : entry.file;
  if (like) {
    chmodSync(tmp, like.mode & 0o7777);
    if (process.getuid?.() === 0) chownSync(tmp, like.uid, like.gid);
  }
  // A stale write-ahead log beside the new file would be applied to it: remove it first.
  for (const ext of ["-wal", "-shm", "-journal"]) rmSync(target + ext, { force: true });
  renameSync(tmp, target);
  return check;
}

// ---- PostgreSQL ---------------------------------------------------------------------------------

export interface PgTarget {
  url: string;
  passwordFile?: string;
}

function pgPassword(t: PgTarget): string | undefined {
  return t.passwordFile ? readFileSync(t.passwordFile, "utf8").replace(/\r?\n$/, "") : undefined;
}

function withDb(url: string, db: string): string {
  const u = new URL(url);
  u.pathname = "/" + encodeURIComponent(db);
  return u.toString();
}

export function pgDbName(url: string): string {
  return decodeURIComponent(new URL(url).pathname.replace(/^\//, ""));
}

async function pgQuery<T extends pg.QueryResultRow>(t: PgTarget, db: string, sql: string, params: unknown[] = []): Promise<T[]> {
  const c = new pg.Client({ connectionString: withDb(t.url, db), password: pgPassword(t), connectionTimeoutMillis: 15_000 });
  await c.connect();
  try {
    return (await c.query<T>(sql, params)).rows;
  } finally {
    await c.end().catch(() => undefined);
  }
}

export async function pgTables(t: PgTarget, db: string): Promise<Record<string, number>> {
  const list = await pgQuery<{ q: string; label: string }>(
    t,
    db,
    `SELECT format('%I.%I', n.nspname, c.relname) AS q, n.nspname || '.' || c.relname AS label
       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'`,
  );
  const out: Record<string, number> = {};
  for (const r of list) out[r.label] = Number((await pgQuery<{ n: string }>(t, db, `SELECT count(*)::text AS n FROM ${r.q}`))[0].n);
  return out;
}

async function pgDbExists(t: PgTarget, db: string): Promise<boolean> {
  return (await pgQuery(t, "postgres", "SELECT 1 FROM pg_database WHERE datname = $1", [db])).length > 0;
}

const ident = (s: string): string => `"${s.replace(/"/g, '""')}"`;

/** Restores a pg_dump custom-format file into database `db` (created; must not exist). */
export async function pgRestoreInto(t: PgTarget, dump: string, db: string): Promise<void> {
  await pgQuery(t, "postgres", `CREATE DATABASE ${ident(db)}`);
  const conn = pgToolConnection(withDb(t.url, db), t.passwordFile);
  const env = conn.env;
  const r = await runCommand(
    [pgTool("pg_restore"), "--no-owner", "--no-privileges", "--exit-on-error", "--no-password", `--dbname=${conn.url}`, dump].map(shq).join(" "),
    { timeoutMs: 24 * 3600_000, env },
  );
  if (r.code !== 0) {
    await pgQuery(t, "postgres", `DROP DATABASE IF EXISTS ${ident(db)}`).catch(() => undefined);
    throw new SitekeepError("recover.database", `pg_restore into ${db} failed: ${describeResult({ ...r, command: "pg_restore" })}`, { hint: "check the server log" });
  }
}

export async function pgDrop(t: PgTarget, db: string): Promise<void> {
  await pgQuery(t, "postgres", "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", [db]);
  await pgQuery(t, "postgres", `DROP DATABASE IF EXISTS ${ident(db)}`);
}

/** Roles first (errors for roles that already exist are expected and only reported). */
export async function pgApplyGlobals(t: PgTarget, globals: string): Promise<string[]> {
  const conn = pgToolConnection(withDb(t.url, "postgres"), t.passwordFile);
  const r = await runCommand([pgTool("psql"), "-X", "-q", "--no-password", `--dbname=${conn.url}`, "-f", globals].map(shq).join(" "), { timeoutMs: 600_000, env: conn.env });
  return r.stderr.split("\n").filter((l) => /ERROR/.test(l) && !/already exists/.test(l));
}

/**
 * Restores into the database the URL names. An existing database with tables is refused unless
 * `replace`; then the dump is restored under a temporary name and verified first, and only then
 * swapped in (the old one is dropped only when the new one is proven).
 */
export async function restorePostgres(t: PgTarget, dump: string, entry: DatabaseManifestEntry, opts: { replace: boolean; db?: string }): Promise<TableCheck> {
  const db = opts.db ?? pgDbName(t.url);
  let existing = false;
  try {
    existing = await pgDbExists(t, db);
  } catch (err) {
    throw new SitekeepError("recover.database", `database ${entry.name}: cannot reach the server at ${t.url.replace(/\/\/[^@]*@/, "//")}: ${errorMessage(err)}`, { hint: "start the server (or restore it first) and check the URL" });
  }
  if (existing && !opts.replace && Object.keys(await pgTables(t, db)).length > 0) {
    throw new SitekeepError("recover.exists", `database ${entry.name}: ${db} exists and has tables`, { hint: "add --replace to replace it, or restore under another name with --database-name" });
  }
  // A short random name: a long database name plus a suffix could be truncated by the server
  // back to the live name, and the drop below would hit the live database.
  const tmp = `sitekeep_restore_${randomBytes(4).toString("hex")}`;
  await pgDrop(t, tmp);
  await pgRestoreInto(t, dump, tmp);
  const check = compareTables(entry.tables, await pgTables(t, tmp));
  if (check.missing.length || check.mismatches.length) {
    await pgDrop(t, tmp);
    throw new SitekeepError("recover.verify", `database ${entry.name}: the restored database does not match the manifest (${[...check.missing.map((m) => `missing ${m}`), ...check.mismatches].join("; ")})`, { hint: "the snapshot may be damaged: run sitekeep check --read-data" });
  }
  if (existing) await pgDrop(t, db);
  await pgQuery(t, "postgres", `ALTER DATABASE ${ident(tmp)} RENAME TO ${ident(db)}`);
  return check;
}

// ---- MariaDB / MySQL ----------------------------------------------------------------------------

export interface MariaTarget {
  url: string;
  socket?: string;
  passwordFile?: string;
}

function mariaArgs(t: MariaTarget): string[] {
  const u = new URL(t.url.replace(/^mariadb:/, "mysql:"));
  const a = ["--no-defaults", "--batch", "--skip-column-names"];
  if (t.socket) a.push(`--socket=${t.socket}`);
  else if (u.hostname) a.push(`--host=${u.hostname}`, ...(u.port ? [`--port=${u.port}`] : []), ...(u.hostname !== "localhost" ? ["--protocol=TCP"] : []));
  if (u.username) a.push(`--user=${decodeURIComponent(u.username)}`);
  return a;
}

export function mariaDbName(url: string): string {
  return decodeURIComponent(new URL(url.replace(/^mariadb:/, "mysql:")).pathname.replace(/^\//, ""));
}

async function mariaSql(t: MariaTarget, sql: string, db?: string, stdinFile?: string): Promise<string> {
  const env = t.passwordFile ? { ...process.env, MYSQL_PWD: readFileSync(t.passwordFile, "utf8").replace(/\r?\n$/, "") } : process.env;
  const cmd = ["mariadb", ...mariaArgs(t), ...(db ? [`--database=${db}`] : []), ...(sql ? ["-e", sql] : [])].map(shq).join(" ") + (stdinFile ? ` < ${shq(stdinFile)}` : "");
  const r = await runCommand(cmd, { timeoutMs: 24 * 3600_000, env });
  if (r.code !== 0) throw new SitekeepError("recover.database", `mariadb: ${describeResult({ ...r, command: "mariadb" })}`, { hint: "check the server and the credentials" });
  return r.stdout;
}

export async function mariaTables(t: MariaTarget, db: string): Promise<Record<string, number>> {
  const names = (await mariaSql(t, `SELECT table_name FROM information_schema.tables WHERE table_schema = ${sqlString(db)} AND table_type = 'BASE TABLE'`)).split("\n").filter(Boolean);
  const out: Record<string, number> = {};
  for (const n of names) out[n] = Number((await mariaSql(t, `SELECT COUNT(*) FROM \`${n.replace(/`/g, "``")}\``, db)).trim());
  return out;
}

export async function mariaDrop(t: MariaTarget, db: string): Promise<void> {
  await mariaSql(t, `DROP DATABASE IF EXISTS \`${db.replace(/`/g, "``")}\``);
}

export async function mariaRestoreInto(t: MariaTarget, dump: string, db: string): Promise<void> {
  await mariaSql(t, `CREATE DATABASE \`${db.replace(/`/g, "``")}\``);
  try {
    await mariaSql(t, "", db, dump);
  } catch (err) {
    await mariaDrop(t, db).catch(() => undefined);
    throw err;
  }
}

/** As restorePostgres: verified under a temporary name first; MariaDB cannot rename a database, so the proven dump is then loaded into the real one. */
export async function restoreMariadb(t: MariaTarget, dump: string, entry: DatabaseManifestEntry, opts: { replace: boolean; db?: string; safetyDir?: string }): Promise<TableCheck> {
  const db = opts.db ?? mariaDbName(t.url);
  const exists = (await mariaSql(t, `SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name = ${sqlString(db)}`)).trim() !== "0";
  if (exists && !opts.replace && Object.keys(await mariaTables(t, db)).length > 0) {
    throw new SitekeepError("recover.exists", `database ${entry.name}: ${db} exists and has tables`, { hint: "add --replace to replace it, or restore under another name with --database-name" });
  }
  const tmp = `sitekeep_restore_${randomBytes(4).toString("hex")}`;
  await mariaDrop(t, tmp);
  await mariaRestoreInto(t, dump, tmp);
  const check = compareTables(entry.tables, await mariaTables(t, tmp));
  await mariaDrop(t, tmp);
  if (check.missing.length || check.mismatches.length) {
    throw new SitekeepError("recover.verify", `database ${entry.name}: the restored database does not match the manifest (${[...check.missing.map((m) => `missing ${m}`), ...check.mismatches].join("; ")})`, { hint: "the snapshot may be damaged: run sitekeep check --read-data" });
  }
  if (exists) {
    // MariaDB cannot rename a database: the live one is dumped first, so a failed load can put it back.
    const safety = join(opts.safetyDir ?? dirname(dump), `${db.replace(/[^A-Za-z0-9_.-]/g, "_")}.before-recovery.sql`);
    await mariaDumpTo(t, db, safety);
    await mariaDrop(t, db);
    try {
      await mariaRestoreInto(t, dump, db);
    } catch (err) {
      await mariaRestoreInto(t, safety, db).catch(() => undefined);
      throw new SitekeepError("recover.database", `database ${entry.name}: loading the dump into ${db} failed (${errorMessage(err)}); the previous database was put back from ${safety}`, { hint: "check the server's free space and log" });
    }
  } else await mariaRestoreInto(t, dump, db);
  return compareTables(entry.tables, await mariaTables(t, db));
}

async function mariaDumpTo(t: MariaTarget, db: string, file: string): Promise<void> {
  const env = t.passwordFile ? { ...process.env, MYSQL_PWD: readFileSync(t.passwordFile, "utf8").replace(/\r?\n$/, "") } : process.env;
  const args = mariaArgs(t).filter((a) => a !== "--batch" && a !== "--skip-column-names");
  const r = await runCommand([existsSync("/usr/bin/mariadb-dump") ? "mariadb-dump" : "mysqldump", ...args, "--single-transaction", "--routines", "--triggers", "--events", "--hex-blob", "--default-character-set=utf8mb4", db].map(shq).join(" ") + ` > ${shq(file)}`, { timeoutMs: 24 * 3600_000, env });
  if (r.code !== 0) throw new SitekeepError("recover.database", `cannot save the live database ${db} before replacing it: ${describeResult({ ...r, command: "mariadb-dump" })}`, { hint: "nothing was replaced; check the server" });
}

/** A MariaDB string literal (default sql_mode: backslash escapes are active). */
function sqlString(v: string): string {
  return `'${v.replace(/\\/g, "\\\\").replace(/'/g, "''")}'`;
}

function shq(s: string): string {
  return /^[A-Za-z0-9_./=:@%+-]+$/.test(s) ? s : `'${s.replace(/'/g, "'\\''")}'`;
}
