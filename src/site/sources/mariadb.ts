// MariaDB/MySQL databases: mariadb-dump (or mysqldump) with --single-transaction, streamed into
// the snapshot. The per-table row counts of the manifest are counted from the dump stream itself
// (the tuples of each table's INSERT statements), so they describe exactly what the dump holds.
import { existsSync, writeFileSync, readFileSync } from "node:fs";
import { join } from "node:path";
import type { ReadFn } from "../../archive/chunk-reader.js";
import { streamReader } from "../../archive/chunk-reader.js";
import { SitekeepError } from "../../errors.js";
import { describeResult, runCommand, streamCommand } from "../command.js";
import { type DatabaseManifestEntry, type SourceContext, hashingReader, redactUrl } from "./types.js";

export interface MariadbSpec {
  name: string;
  kind: "mariadb" | "mysql";
  url: string;
  socket?: string;
  passwordFile?: string;
}

interface Conn {
  user?: string;
  host?: string;
  port?: string;
  database: string;
}

function parse(spec: MariadbSpec): Conn {
  const u = new URL(spec.url.replace(/^mariadb:/, "mysql:"));
  const database = decodeURIComponent(u.pathname.replace(/^\//, ""));
  if (!database) throw new SitekeepError("database.unreachable", `database ${spec.name}: the URL names no database`, { hint: "mysql://user@host:port/dbname" });
  return { user: u.username ? decodeURIComponent(u.username) : undefined, host: u.hostname || undefined, port: u.port || undefined, database };
}

/** The client tools: MariaDB's names first, MySQL's as a fallback. */
function tool(names: string[]): string {
  for (const dir of ["/usr/bin", "/usr/local/bin", "/usr/sbin"]) {
    for (const n of names) if (existsSync(join(dir, n))) return join(dir, n);
  }
  return names[0];
}

/** Connection options; the password goes through a private defaults file, never the command line. */
function connArgs(spec: MariadbSpec, tmpDir: string): string[] {
  const c = parse(spec);
  const args: string[] = [];
  if (spec.passwordFile) {
    const pw = readFileSync(spec.passwordFile, "utf8").replace(/\r?\n$/, "");
    const f = join(tmpDir, `${spec.name}.my.cnf`);
    writeFileSync(f, `[client]\npassword="${pw.replace(/\\/g, "\\\\").replace(/"/g, '\\"')}"\n`, { mode: 0o600 });
    args.push(`--defaults-extra-file=${f}`);
  } else args.push("--no-defaults");
  if (spec.socket) args.push(`--socket=${spec.socket}`);
  else {
    if (c.host) args.push(`--host=${c.host}`);
    if (c.port) args.push(`--port=${c.port}`);
    if (c.host && c.host !== "localhost") args.push("--protocol=TCP");
  }
  if (c.user) args.push(`--user=${c.user}`);
  return args;
}

export async function checkMariadb(spec: MariadbSpec, tmpDir: string): Promise<{ engineVersion: string; bytes: number }> {
  const c = parse(spec);
  const client = tool(["mariadb", "mysql"]);
  const q = `SELECT VERSION(), COALESCE((SELECT SUM(data_length + index_length) FROM information_schema.tables WHERE table_schema = DATABASE()), 0)`;
  const r = await runCommand([client, ...connArgs(spec, tmpDir), "--batch", "--skip-column-names", `--database=${c.database}`, "-e", q].map(shq).join(" "), { timeoutMs: 30_000 });
  if (r.code !== 0) {
    throw new SitekeepError("database.unreachable", `database ${spec.name}: cannot connect to ${redactUrl(spec.url)}: ${describeResult({ ...r, command: "mariadb" })}`, {
      hint: "check that the server runs, the URL or socket, and the password (passwordFile)",
    });
  }
  const [engineVersion, bytes] = r.stdout.trim().split("\t");
  return { engineVersion, bytes: Number(bytes) || 0 };
}

export async function dumpMariadb(spec: MariadbSpec, ctx: SourceContext): Promise<DatabaseManifestEntry> {
  const started = Date.now();
  const startedAt = new Date().toISOString();
  const { engineVersion, bytes: databaseBytes } = await checkMariadb(spec, ctx.tmpDir);
  const c = parse(spec);
  const dumper = tool(["mariadb-dump", "mysqldump"]);
  const args = [
    ...connArgs(spec, ctx.tmpDir),
    "--single-transaction", // one consistent snapshot of InnoDB tables, without locking them
    "--quick",
    "--routines",
    "--triggers",
    "--events",
    "--hex-blob",
    "--default-character-set=utf8mb4",
    c.database,
  ];
  const run = streamCommand({ file: dumper, args }, { timeoutMs: 24 * 3600_000, signal: ctx.signal });
  const counter = new InsertCounter();
  const h = hashingReader(countingReader(streamReader(run.stdout), counter));
  const file = `databases/${spec.name}.sql`;
  try {
    await ctx.store(file, h.read);
  } catch (err) {
    run.kill();
    throw err;
  }
  const res = await run.done;
  if (res.code !== 0) {
    throw new SitekeepError("database.capture", `database ${spec.name}: ${dumper} failed: ${describeResult({ ...res, command: dumper })}`, {
      hint: "check that the dump user may read every table, routine and event (SELECT, SHOW VIEW, TRIGGER, EVENT, LOCK TABLES)",
    });
  }
  const dumped = h.result();
  ctx.log(`database ${spec.name}: ${spec.kind} ${engineVersion}, dump ${dumped.bytes} bytes, ${counter.tables.size} tables`);
  return {
    name: spec.name,
    kind: spec.kind,
    engineVersion,
    dumpTool: `${dumper} --single-transaction`,
    dump: { file: `/.sitekeep/${file}`, format: "sql", ...dumped },
    databaseBytes,
    tables: Object.fromEntries([...counter.tables.entries()].sort(([a], [b]) => a.localeCompare(b))),
    startedAt,
    durationMs: Date.now() - started,
    location: spec.socket ? `${redactUrl(spec.url)} (socket ${spec.socket})` : redactUrl(spec.url),
  };
}

function countingReader(read: ReadFn, counter: InsertCounter): ReadFn {
  return async (buf, offset, length) => {
    const n = await read(buf, offset, length);
    if (n > 0) counter.feed(buf.subarray(offset, offset + n));
    return n;
  };
}

/**
 * Counts rows per table in a mysqldump/mariadb-dump stream: every `CREATE TABLE \`t\`` starts a
 * table at 0, every `INSERT INTO \`t\` VALUES (...),(...);` adds its tuples, whether the dump puts
 * them on one line (mysqldump) or one per line (mariadb-dump 10.11+). Tuples are parentheses opened
 * at depth 0 outside quoted strings; the statement ends at a ';' at depth 0 outside strings.
 */
export class InsertCounter {
  readonly tables = new Map<string, number>();
  private head: number[] = [];
  private mode: "head" | "skip" | "insert" = "head";
  private table = "";
  private inString = false;
  private escaped = false;
  private depth = 0;

  feed(chunk: Uint8Array): void {
    for (let i = 0; i < chunk.length; i++) {
      const b = chunk[i];
      if (this.mode === "head") {
        if (b === 0x0a) {
          this.lineEnd();
          continue;
        }
        this.head.push(b);
        if (b === 0x28 /* ( */ && endsWith(this.head, VALUES_PAREN)) {
          if (this.startInsert(this.head.length - 1)) this.tuple(b);
        } else if (this.head.length > 600) this.mode = "skip"; // a long line that starts no INSERT
        continue;
      }
      if (this.mode === "skip") {
        if (b === 0x0a) this.reset();
        continue;
      }
      if (this.inString) {
        if (this.escaped) this.escaped = false;
        else if (b === 0x5c /* \ */) this.escaped = true;
        else if (b === 0x27 /* ' */) this.inString = false;
        continue;
      }
      if (b === 0x3b /* ; */ && this.depth === 0) {
        this.mode = "skip"; // the rest of the line, then the next statement
        continue;
      }
      this.tuple(b);
    }
  }

  private tuple(b: number): void {
    if (b === 0x27) this.inString = true;
    else if (b === 0x28) {
      if (this.depth === 0) this.tables.set(this.table, (this.tables.get(this.table) ?? 0) + 1);
      this.depth++;
    } else if (b === 0x29) this.depth = Math.max(0, this.depth - 1);
  }

  /** A line ended while still reading its head: a CREATE TABLE, or an INSERT whose tuples follow. */
  private lineEnd(): void {
    const line = Buffer.from(this.head).toString("utf8");
    const create = /^CREATE TABLE `((?:[^`]|``)+)`/.exec(line);
    if (create) {
      const t = create[1].replace(/``/g, "`");
      if (!this.tables.has(t)) this.tables.set(t, 0);
    } else if (/ VALUES\s*$/.test(line) && this.startInsert(this.head.length)) {
      return;
    }
    this.reset();
  }

  /** Enters INSERT mode when head[0, end) is `INSERT INTO \`t\` [(cols)] VALUES`. */
  private startInsert(end: number): boolean {
    const line = Buffer.from(this.head.slice(0, end)).toString("utf8");
    const m = /^INSERT INTO `((?:[^`]|``)+)` (?:\([^)]*\) )?VALUES\s*$/.exec(line);
    if (!m) {
      this.mode = "skip";
      return false;
    }
    this.table = m[1].replace(/``/g, "`");
    this.mode = "insert";
    this.head = [];
    return true;
  }

  private reset(): void {
    this.head = [];
    this.mode = "head";
    this.table = "";
    this.inString = false;
    this.escaped = false;
    this.depth = 0;
  }
}

const VALUES_PAREN = Buffer.from(" VALUES (");

function endsWith(head: number[], tail: Buffer): boolean {
  if (head.length < tail.length) return false;
  for (let i = 0; i < tail.length; i++) if (head[head.length - tail.length + i] !== tail[i]) return false;
  return true;
}

function shq(s: string): string {
  return /^[A-Za-z0-9_./=:@%+-]+$/.test(s) ? s : `'${s.replace(/'/g, "'\\''")}'`;
}
