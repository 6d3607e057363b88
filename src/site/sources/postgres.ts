// PostgreSQL databases: pg_dump in custom format, streamed into the snapshot, inside one snapshot
// transaction that Sitekeep opens itself. The transaction exports its snapshot (pg_export_snapshot)
// and pg_dump joins it with --snapshot, so the per-table row counts in the manifest are counted
// from exactly the data the dump holds. Roles and tablespaces come from pg_dumpall --globals-only.
import { existsSync, readFileSync, readdirSync } from "node:fs";
import pg from "pg";
import { streamReader } from "../../archive/chunk-reader.js";
import { SitekeepError, errorMessage } from "../../errors.js";
import { describeResult, streamCommand } from "../command.js";
import { type DatabaseManifestEntry, type SourceContext, hashingReader, redactUrl } from "./types.js";

export interface PostgresSpec {
  name: string;
  url: string;
  passwordFile?: string;
  globals: boolean;
}

function password(spec: PostgresSpec): string | undefined {
  if (!spec.passwordFile) return undefined;
  return readFileSync(spec.passwordFile, "utf8").replace(/\r?\n$/, "");
}

/**
 * A URL and environment for the PostgreSQL tools: a password never goes on their command line
 * (where `ps` shows it). One written into the URL (through a ${ENV} reference) moves to PGPASSWORD.
 */
export function pgToolConnection(url: string, passwordFile?: string): { url: string; env: NodeJS.ProcessEnv } {
  const u = new URL(url);
  const inUrl = u.password ? decodeURIComponent(u.password) : undefined;
  u.password = "";
  const pw = passwordFile ? readFileSync(passwordFile, "utf8").replace(/\r?\n$/, "") : inUrl;
  return { url: u.toString(), env: { ...process.env, ...(pw !== undefined ? { PGPASSWORD: pw } : {}), PGCONNECT_TIMEOUT: "15" } };
}


async function connect(spec: PostgresSpec): Promise<pg.Client> {
  const client = new pg.Client({ connectionString: spec.url, password: password(spec), connectionTimeoutMillis: 15_000, application_name: "sitekeep" });
  try {
    await client.connect();
  } catch (err) {
    await client.end().catch(() => undefined);
    throw new SitekeepError("database.unreachable", `database ${spec.name}: cannot connect to ${redactUrl(spec.url)}: ${errorMessage(err)}`, {
      hint: "check that the server runs, the URL, and the password (passwordFile or PGPASSWORD)",
    });
  }
  return client;
}

/** The pg_dump/pg_dumpall of the server's major version when installed side by side (Debian), else PATH's. */
export function pgTool(tool: "pg_dump" | "pg_dumpall" | "pg_restore" | "psql", serverMajor?: number): string {
  const base = "/usr/lib/postgresql";
  if (existsSync(base)) {
    const majors = readdirSync(base).map(Number).filter((n) => Number.isInteger(n)).sort((a, b) => b - a);
    const pick = serverMajor !== undefined && majors.includes(serverMajor) ? serverMajor : majors.find((m) => serverMajor === undefined || m >= serverMajor);
    if (pick !== undefined && existsSync(`${base}/${pick}/bin/${tool}`)) return `${base}/${pick}/bin/${tool}`;
  }
  return tool;
}

/** Preflight: the server answers; returns its version and the database's size. */
export async function checkPostgres(spec: PostgresSpec): Promise<{ engineVersion: string; bytes: number }> {
  const client = await connect(spec);
  try {
    const r = await client.query<{ v: string; size: string }>("SELECT current_setting('server_version') AS v, pg_database_size(current_database())::text AS size");
    return { engineVersion: r.rows[0].v, bytes: Number(r.rows[0].size) };
  } finally {
    await client.end().catch(() => undefined);
  }
}

export async function dumpPostgres(spec: PostgresSpec, ctx: SourceContext): Promise<DatabaseManifestEntry> {
  const started = Date.now();
  const startedAt = new Date().toISOString();
  const client = await connect(spec);
  try {
    await client.query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY");
    const info = await client.query<{ snap: string; v: string; num: string; size: string }>(
      "SELECT pg_export_snapshot() AS snap, current_setting('server_version') AS v, current_setting('server_version_num') AS num, pg_database_size(current_database())::text AS size",
    );
    const { snap, v: engineVersion } = info.rows[0];
    const major = Math.floor(Number(info.rows[0].num) / 10000);
    const tables: Record<string, number> = {};
    const list = await client.query<{ q: string; label: string }>(
      `SELECT format('%I.%I', n.nspname, c.relname) AS q, n.nspname || '.' || c.relname AS label
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'
        ORDER BY 2`,
    );
    for (const t of list.rows) {
      const r = await client.query<{ n: string }>(`SELECT count(*)::text AS n FROM ${t.q}`);
      tables[t.label] = Number(r.rows[0].n);
    }

    const { url: toolUrl, env } = pgToolConnection(spec.url, spec.passwordFile);
    const pgDump = pgTool("pg_dump", major);
    const file = `databases/${spec.name}.pgdump`;
    const dump = streamCommand({ file: pgDump, args: ["--format=custom", `--snapshot=${snap}`, "--no-password", `--dbname=${toolUrl}`] }, { timeoutMs: 24 * 3600_000, env, signal: ctx.signal });
    const h = hashingReader(streamReader(dump.stdout));
    try {
      await ctx.store(file, h.read);
    } catch (err) {
      dump.kill();
      throw err;
    }
    const res = await dump.done;
    if (res.code !== 0) {
      throw new SitekeepError("database.capture", `database ${spec.name}: pg_dump failed: ${describeResult({ ...res, command: "pg_dump" })}`, {
        hint: "check the server log and that the dump user may read every table",
      });
    }
    const dumped = h.result();
    await client.query("COMMIT");

    let globals: DatabaseManifestEntry["globals"];
    if (spec.globals) globals = await dumpGlobals(spec, toolUrl, env, major, ctx);
    ctx.log(`database ${spec.name}: PostgreSQL ${engineVersion}, dump ${dumped.bytes} bytes, ${list.rows.length} tables`);
    return {
      name: spec.name,
      kind: "postgres",
      engineVersion,
      dumpTool: `${pgDump} --format=custom`,
      dump: { file: `/.sitekeep/${file}`, format: "pg_dump-custom", ...dumped },
      ...(globals ? { globals } : {}),
      databaseBytes: Number(info.rows[0].size),
      tables,
      startedAt,
      durationMs: Date.now() - started,
      location: redactUrl(spec.url),
    };
  } catch (err) {
    if (err instanceof SitekeepError) throw err;
    throw new SitekeepError("database.capture", `database ${spec.name}: ${errorMessage(err)}`, { hint: "check the server log" });
  } finally {
    await client.end().catch(() => undefined);
  }
}

/** Roles need superuser to read their passwords; without it, roles are dumped without passwords. */
async function dumpGlobals(spec: PostgresSpec, toolUrl: string, env: NodeJS.ProcessEnv, major: number, ctx: SourceContext): Promise<DatabaseManifestEntry["globals"]> {
  const tool = pgTool("pg_dumpall", major);
  const file = `databases/${spec.name}.globals.sql`;
  for (const extra of [[], ["--no-role-passwords"]]) {
    const run = streamCommand({ file: tool, args: ["--globals-only", "--no-password", ...extra, `--dbname=${toolUrl}`] }, { timeoutMs: 600_000, env, signal: ctx.signal });
    const h = hashingReader(streamReader(run.stdout));
    await ctx.store(file, h.read);
    const res = await run.done;
    if (res.code === 0) {
      if (extra.length) ctx.log(`database ${spec.name}: roles dumped without passwords (the dump user is not a superuser)`);
      return { file: `/.sitekeep/${file}`, format: extra.length ? "sql-globals-without-passwords" : "sql-globals", ...h.result() };
    }
    if (!/permission denied/i.test(res.stderr)) {
      throw new SitekeepError("database.capture", `database ${spec.name}: pg_dumpall --globals-only failed: ${describeResult({ ...res, command: "pg_dumpall" })}`, {
        hint: "set globals: false for this database if roles are managed elsewhere",
      });
    }
  }
  throw new SitekeepError("database.capture", `database ${spec.name}: cannot read roles even without passwords`, { hint: "set globals: false, or grant the dump user pg_read_all_settings" });
}
