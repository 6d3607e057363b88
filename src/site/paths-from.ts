// Paths discovered at run time (the seed finds package source folders with a query against the
// site database): a command printing one path per line, or a SQL query against a site database
// whose first column is a path. Every path must be absolute; blank lines are ignored.
import { isAbsolute } from "node:path";
import Database from "better-sqlite3";
import pg from "pg";
import { readFileSync } from "node:fs";
import { SitekeepError, errorMessage } from "../errors.js";
import { commandOk, describeResult, runCommand } from "./command.js";
import type { DatabaseSpec } from "./control-schema.js";

export type PathsFrom = string | { database: string; query: string };

export async function resolvePathsFrom(from: PathsFrom, databases: DatabaseSpec[], env: NodeJS.ProcessEnv): Promise<string[]> {
  let raw: string[];
  if (typeof from === "string") {
    const r = await runCommand(from, { timeoutMs: 300_000, env });
    if (!commandOk(r)) throw new SitekeepError("site.paths-from", `pathsFrom command ${describeResult(r)}`, { hint: "it must print one absolute path per line and exit 0" });
    raw = r.stdout.split("\n");
  } else {
    raw = await queryPaths(from, databases);
  }
  const paths = raw.map((l) => l.trim()).filter(Boolean);
  const bad = paths.filter((p) => !isAbsolute(p));
  if (bad.length) {
    throw new SitekeepError("site.paths-from", `pathsFrom returned relative paths: ${bad.slice(0, 3).map((p) => JSON.stringify(p)).join(", ")}`, { hint: "return absolute paths (starting with /)" });
  }
  return [...new Set(paths)];
}

async function queryPaths(from: { database: string; query: string }, databases: DatabaseSpec[]): Promise<string[]> {
  const db = databases.find((d) => d.name === from.database);
  if (!db) throw new SitekeepError("site.paths-from", `pathsFrom names database ${from.database}, which the control file does not declare`, { hint: "declare it under databases" });
  try {
    if (db.kind === "sqlite") {
      const conn = new Database(db.path, { readonly: true, fileMustExist: true });
      try {
        return conn.prepare(from.query).raw(true).all().map((row) => String((row as unknown[])[0]));
      } finally {
        conn.close();
      }
    }
    if (db.kind === "postgres") {
      const password = db.passwordFile ? readFileSync(db.passwordFile, "utf8").replace(/\r?\n$/, "") : undefined;
      const client = new pg.Client({ connectionString: db.url, password, connectionTimeoutMillis: 15_000 });
      await client.connect();
      try {
        const r = await client.query({ text: from.query, rowMode: "array" });
        return r.rows.map((row: unknown[]) => String(row[0]));
      } finally {
        await client.end().catch(() => undefined);
      }
    }
    if (db.kind === "mariadb" || db.kind === "mysql") {
      const u = new URL(db.url.replace(/^mariadb:/, "mysql:"));
      const args = ["--no-defaults", "--batch", "--skip-column-names", "--raw"];
      if (db.socket) args.push(`--socket=${db.socket}`);
      else if (u.hostname) args.push(`--host=${u.hostname}`, ...(u.port ? [`--port=${u.port}`] : []));
      if (u.username) args.push(`--user=${decodeURIComponent(u.username)}`);
      args.push(`--database=${decodeURIComponent(u.pathname.slice(1))}`, "-e", from.query);
      const env = db.passwordFile ? { ...process.env, MYSQL_PWD: readFileSync(db.passwordFile, "utf8").replace(/\r?\n$/, "") } : process.env;
      const r = await runCommand(["mariadb", ...args].map((a) => `'${a.replace(/'/g, "'\\''")}'`).join(" "), { timeoutMs: 120_000, env });
      if (!commandOk(r)) throw new Error(describeResult(r));
      return r.stdout.split("\n").map((l) => l.split("\t")[0]);
    }
  } catch (err) {
    throw new SitekeepError("site.paths-from", `pathsFrom query on database ${from.database} failed: ${errorMessage(err)}`, { hint: "run the query by hand; its first column must be a path" });
  }
  throw new SitekeepError("site.paths-from", `pathsFrom queries on ${db.kind} databases are not supported`, { hint: "use a command instead" });
}
