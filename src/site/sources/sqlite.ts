// SQLite databases, captured online with SQLite's backup API: a consistent copy even while other
// processes write (in WAL mode writers are not blocked; in rollback mode they wait for the copy).
// The API needs a destination database file, so the copy goes to the run's private scratch folder,
// is checked (quick_check, row counts) and streamed into the snapshot, then deleted.
import { createReadStream, existsSync, statSync } from "node:fs";
import { join } from "node:path";
import Database from "better-sqlite3";
import { streamReader } from "../../archive/chunk-reader.js";
import { SitekeepError, errorMessage } from "../../errors.js";
import { type DatabaseManifestEntry, type SourceContext, hashingReader } from "./types.js";

export interface SqliteSpec {
  name: string;
  path: string;
}

/** Preflight: the file exists and opens as a SQLite database. */
export function checkSqlite(spec: SqliteSpec): { engineVersion: string; bytes: number } {
  if (!existsSync(spec.path)) {
    throw new SitekeepError("database.unreachable", `database ${spec.name}: ${spec.path} does not exist`, { hint: "fix databases[].path in the control file" });
  }
  let db: Database.Database | undefined;
  try {
    db = new Database(spec.path, { readonly: true, fileMustExist: true });
    db.pragma("schema_version"); // reads the header: fails on a file that is not a database
    const engineVersion = (db.prepare("SELECT sqlite_version() AS v").get() as { v: string }).v;
    return { engineVersion, bytes: statSync(spec.path).size };
  } catch (err) {
    throw new SitekeepError("database.unreachable", `database ${spec.name}: cannot open ${spec.path}: ${errorMessage(err)}`, {
      hint: "check that it is a SQLite database readable by this user",
    });
  } finally {
    db?.close();
  }
}

export async function dumpSqlite(spec: SqliteSpec, ctx: SourceContext): Promise<DatabaseManifestEntry> {
  const started = Date.now();
  const startedAt = new Date().toISOString();
  const copy = join(ctx.tmpDir, `${spec.name}.sqlite`);
  let engineVersion: string;
  const src = new Database(spec.path, { readonly: true, fileMustExist: true });
  try {
    src.pragma("busy_timeout = 30000");
    engineVersion = (src.prepare("SELECT sqlite_version() AS v").get() as { v: string }).v;
    // One step copies every page: a copy in several steps restarts whenever another connection
    // writes, and may never finish under a steady stream of writes.
    await src.backup(copy, { progress: () => 0x7fffffff });
  } catch (err) {
    throw new SitekeepError("database.capture", `database ${spec.name}: the SQLite online backup of ${spec.path} failed: ${errorMessage(err)}`, {
      hint: "check free space in the state directory and that the database is not damaged",
    });
  } finally {
    src.close();
  }

  const tables: Record<string, number> = {};
  const check = new Database(copy, { readonly: true });
  try {
    const qc = check.pragma("quick_check", { simple: true });
    if (qc !== "ok") throw new SitekeepError("database.capture", `database ${spec.name}: the copy fails quick_check: ${String(qc)}`, { hint: "the live database may be damaged: run PRAGMA integrity_check on it" });
    const names = check.prepare("SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name").all() as { name: string }[];
    for (const { name } of names) {
      tables[name] = (check.prepare(`SELECT count(*) AS n FROM "${name.replace(/"/g, '""')}"`).get() as { n: number }).n;
    }
  } finally {
    check.close();
  }

  const file = `databases/${spec.name}.sqlite`;
  const h = hashingReader(streamReader(createReadStream(copy)));
  await ctx.store(file, h.read);
  const { bytes, sha256 } = h.result();
  ctx.log(`database ${spec.name}: SQLite ${engineVersion}, ${bytes} bytes, ${Object.keys(tables).length} tables`);
  return {
    name: spec.name,
    kind: "sqlite",
    engineVersion,
    dumpTool: "sqlite3 online backup API",
    dump: { file: `/.sitekeep/${file}`, format: "sqlite-database", bytes, sha256 },
    databaseBytes: statSync(spec.path).size,
    file: { mode: statSync(spec.path).mode & 0o7777, uid: statSync(spec.path).uid, gid: statSync(spec.path).gid },
    tables,
    startedAt,
    durationMs: Date.now() - started,
    location: spec.path,
  };
}
