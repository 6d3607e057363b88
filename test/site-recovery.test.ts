// Issue #7: a whole site comes back with `sitekeep site recover`, and `sitekeep site drill` proves a
// snapshot restores. One site with everything a site can hold (a PostgreSQL database with a foreign
// key, a MariaDB database, a SQLite file, a configuration capture and a files folder with a
// subfolder and symlinks) is backed up once through the real CLI; the tests then damage it and check
// that the recovery puts back exactly what was backed up (files byte for byte with their modes and
// times, the captured config, every row of every database), from this machine's control file and
// from the destination alone; that live databases are never overwritten without --replace; and that
// a drill passes on a good snapshot, fails (5082 + a critical alert) on a damaged one, and leaves
// no temporary databases or sandboxes behind.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { existsSync, promises as fsp, readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import Database from "better-sqlite3";
import {
  describeRun,
  runCommand,
  runSitekeep,
  tempDir,
  type RunOptions,
  type RunResult,
  type TempDir,
} from "./helpers/run.js";
import { compareTrees } from "./helpers/compare.js";
import { startMariadb, startPostgres, type MariaServer, type PgServer } from "./helpers/dbservers.js";
import { StateStore } from "../src/site/state.js";
import type { RecoveryReport } from "../src/site/recovery.js";
import type { DrillReport } from "../src/site/drill.js";
import type { AlertRow, MessageRow } from "../src/site/state.js";

const SITE = "RECO1";
const PASSWORD = "site-recovery-pw";

let tmp: TempDir;
let pg: PgServer;
let maria: MariaServer;
let env: Record<string, string>;
/** The site's files folder, the SQLite file, the captured config file (outside the site's folders). */
let www: string;
let sqlitePath: string;
let configFile: string;
let dest: string;
let stateDir: string;
let controlFile: string;
/** What the site was when it was backed up. */
let backedUp:
  { copy: string; config: string; pg: string; maria: string; sqlite: string; sqliteMode: number } | undefined;

const SQLITE_MODE = 0o640;
const ORIGINAL_CONFIG = "listen 8080\nworkers 4\n# über-config\n";

before(async () => {
  tmp = await tempDir("site-recovery");
  const [p, m] = await Promise.all([startPostgres(), startMariadb()]);
  pg = p;
  assert.ok(m, "MariaDB is not installed (scripts/test.sh installs mariadb-server)");
  maria = m;
  env = {
    SITEKEEP_PASSWORD: PASSWORD,
    SITEKEEP_SCRYPT_N: "1024",
    HOME: tmp.path,
    SITEKEEP_CACHE_DIR: join(tmp.path, "cache"),
  };

  // ---- files: several files with their own modes, a subfolder tree, symlinks, an empty file ----
  www = join(tmp.path, "srv", "app", "www");
  for (const d of ["bin", "config", "assets/css", "assets/img", "private"])
    await fsp.mkdir(join(www, d), { recursive: true });
  await fsp.writeFile(join(www, "index.html"), "<h1>Recovered?</h1>\n");
  await fsp.writeFile(join(www, "bin", "run.sh"), "#!/bin/sh\necho running\n");
  await fsp.chmod(join(www, "bin", "run.sh"), 0o755);
  await fsp.writeFile(join(www, "config", "settings.ini"), "[db]\nname = shop\n");
  await fsp.chmod(join(www, "config", "settings.ini"), 0o640);
  await fsp.writeFile(join(www, "assets", "css", "site.css"), "body { color: #333 }\n".repeat(50));
  // Incompressible and large: its pack is the repository's largest (the drill corrupts it).
  await fsp.writeFile(join(www, "assets", "img", "big.bin"), randomBytes(3 * 1024 * 1024));
  await fsp.writeFile(join(www, "private", "secret.txt"), "s3cr3t\n");
  await fsp.chmod(join(www, "private", "secret.txt"), 0o600);
  await fsp.chmod(join(www, "private"), 0o750);
  await fsp.writeFile(join(www, "empty.txt"), "");
  await fsp.symlink("index.html", join(www, "current"));
  configFile = join(tmp.path, "etc", "app.conf");
  await fsp.mkdir(join(tmp.path, "etc"));
  await fsp.writeFile(configFile, ORIGINAL_CONFIG);
  await fsp.symlink(configFile, join(www, "app.conf")); // absolute, pointing outside the site

  // ---- PostgreSQL: customers <- orders (foreign key), settings; sequences; odd values ----------
  await pg.createDb("shop");
  await pg.psql(
    `CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL, email text UNIQUE, note text,
                            created timestamptz NOT NULL DEFAULT '2024-01-02 03:04:05+00');
     CREATE TABLE orders (id serial PRIMARY KEY, customer_id int NOT NULL REFERENCES customers(id) ON DELETE CASCADE,
                          total numeric(10,2) NOT NULL, items jsonb, paid boolean NOT NULL DEFAULT false, receipt bytea);
     CREATE TABLE settings (key text PRIMARY KEY, value text);
     INSERT INTO customers (name, email, note) VALUES ('Ada', 'ada@example.org', E'first | line\\nsecond'),
       ('Bjørn Ødegård', 'b@example.org', NULL), ('Chen 陈', NULL, E'tab\\there');
     INSERT INTO orders (customer_id, total, items, paid, receipt)
       SELECT 1 + (g % 3), g * 1.25, jsonb_build_object('sku', 'S' || g, 'qty', g % 5), g % 2 = 0, decode(md5(g::text), 'hex')
       FROM generate_series(1, 250) g;
     INSERT INTO settings VALUES ('theme', 'dark'), ('empty', '');`,
    "shop",
  );

  // ---- MariaDB: authors <- posts (foreign key) ------------------------------------------------
  await maria.createDb("blog");
  const posts = Array.from({ length: 120 }, (_, i) => {
    const n = i + 1;
    return `(${1 + (n % 3)}, 'Post ${n} it''s here', ${n % 7 === 0 ? "NULL" : `'line one\\nline two ${n}'`}, '2024-03-${String(1 + (n % 28)).padStart(2, "0")} 10:${String(n % 60).padStart(2, "0")}:00', ${n}.25, UNHEX('${randomBytes(8).toString("hex")}'))`;
  });
  await maria.sql(
    `CREATE TABLE authors (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(100) NOT NULL, bio TEXT) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
     CREATE TABLE posts (id INT AUTO_INCREMENT PRIMARY KEY, author_id INT NOT NULL, title VARCHAR(200) NOT NULL, body MEDIUMTEXT,
                         published DATETIME, score DECIMAL(8,2), thumb BLOB,
                         CONSTRAINT posts_author FOREIGN KEY (author_id) REFERENCES authors (id)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
     INSERT INTO authors (name, bio) VALUES ('Ann', 'writes'), ('Émile', NULL), ('李', 'multi\\nline');
     INSERT INTO posts (author_id, title, body, published, score, thumb) VALUES ${posts.join(", ")};`,
    "blog",
  );

  // ---- SQLite, outside the files folder, with its own mode --------------------------------------
  sqlitePath = join(tmp.path, "srv", "app", "data", "app.sqlite");
  await fsp.mkdir(join(tmp.path, "srv", "app", "data"));
  const db = new Database(sqlitePath);
  db.exec(`CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL, avatar BLOB);
           CREATE TABLE sessions (id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL REFERENCES users(id), token TEXT, expires REAL);`);
  const addUser = db.prepare("INSERT INTO users (name, avatar) VALUES (?, ?)");
  const addSession = db.prepare("INSERT INTO sessions (user_id, token, expires) VALUES (?, ?, ?)");
  db.transaction(() => {
    for (let i = 1; i <= 40; i++) addUser.run(`user ${i} ✓`, i % 5 === 0 ? null : randomBytes(16));
    for (let i = 1; i <= 200; i++) addSession.run(1 + (i % 40), randomBytes(12).toString("hex"), i + 0.5);
  })();
  db.close();
  await fsp.chmod(sqlitePath, SQLITE_MODE);

  // ---- the control file (JSON is YAML), with its own state dir ---------------------------------
  dest = join(tmp.path, "dest");
  stateDir = join(tmp.path, "state");
  await fsp.mkdir(dest);
  controlFile = join(tmp.path, "sitekeep.yaml");
  await fsp.writeFile(
    controlFile,
    JSON.stringify(
      {
        site: SITE,
        backup: { destination: dest },
        databases: [
          { name: "shopdb", kind: "postgres", url: pg.url("shop") },
          { name: "blogdb", kind: "mariadb", url: "mysql://root@localhost/blog", socket: maria.socket },
          { name: "appdb", kind: "sqlite", path: sqlitePath },
        ],
        captures: [{ name: "appconf", export: `cat ${configFile}`, restore: `cat > ${configFile}` }],
        files: [{ path: www }],
        stateDir,
      },
      null,
      2,
    ),
  );
});

after(async () => {
  await Promise.allSettled([pg?.stop(), maria?.stop()]);
  await tmp?.cleanup();
});

// ---- helpers ------------------------------------------------------------------------------------

function sk(args: string[], opts: RunOptions = {}): Promise<RunResult> {
  return runSitekeep(args, { env, timeoutMs: 120_000, ...opts });
}

function lastJSON<T>(r: RunResult): T {
  const line = r.stdout.trim().split("\n").pop() ?? "";
  try {
    return JSON.parse(line) as T;
  } catch {
    assert.fail(`no JSON on stdout\n${describeRun(r)}`);
  }
}

async function recover(
  args: string[],
  opts: RunOptions = {},
): Promise<{ r: RunResult; report: RecoveryReport }> {
  const r = await sk(["site", "recover", ...args, "--json"], opts);
  return { r, report: lastJSON<RecoveryReport>(r) };
}

async function messages(): Promise<MessageRow[]> {
  const r = await sk(["site", "messages", "--config", controlFile, "--limit", "1000", "--json"]);
  assert.equal(r.code, 0, describeRun(r));
  return lastJSON<MessageRow[]>(r);
}

function summary(report: RecoveryReport | DrillReport): string {
  return JSON.stringify(report, null, 2);
}

/** Every row of every table, the constraints and the sequences' positions. */
async function pgState(db: string): Promise<string> {
  const parts: string[] = [];
  for (const t of ["customers", "orders", "settings"])
    parts.push(`-- ${t}\n${await pg.psql(`SELECT * FROM ${t} ORDER BY 1`, db)}`);
  parts.push(
    await pg.psql(
      "SELECT conrelid::regclass, conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2",
      db,
    ),
  );
  for (const s of ["customers_id_seq", "orders_id_seq"])
    parts.push(await pg.psql(`SELECT last_value, is_called FROM ${s}`, db));
  return parts.join("\n");
}

async function pgDatabases(like: string): Promise<string[]> {
  return (await pg.psql(`SELECT datname FROM pg_database WHERE datname LIKE '${like}' ORDER BY 1`))
    .split("\n")
    .filter(Boolean);
}

/** Every row (blobs as hex) and each table's full definition (keys, foreign keys, AUTO_INCREMENT). */
async function mariaState(db: string): Promise<string> {
  const parts: string[] = [];
  for (const t of ["authors", "posts"]) parts.push(await maria.sql(`SHOW CREATE TABLE ${t}`, db));
  parts.push(await maria.sql("SELECT * FROM authors ORDER BY id", db));
  parts.push(
    await maria.sql(
      "SELECT id, author_id, title, body, published, score, HEX(thumb) FROM posts ORDER BY id",
      db,
    ),
  );
  return parts.join("\n");
}

async function mariaDatabases(like: string): Promise<string[]> {
  return (
    await maria.sql(
      `SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE '${like}' ORDER BY 1`,
    )
  )
    .split("\n")
    .filter(Boolean);
}

function sqliteState(path: string): string {
  const db = new Database(path, { readonly: true, fileMustExist: true });
  try {
    const schema = db.prepare("SELECT type, name, sql FROM sqlite_schema ORDER BY name").all();
    const rows = ["users", "sessions"].map((t) => db.prepare(`SELECT * FROM ${t} ORDER BY id`).all());
    const fks = db.pragma("foreign_key_list(sessions)");
    return JSON.stringify({ schema, rows, fks }, (_k, v: unknown) =>
      v && typeof v === "object" && (v as { type?: string }).type === "Buffer"
        ? `hex:${Buffer.from((v as { data: number[] }).data).toString("hex")}`
        : v,
    );
  } finally {
    db.close();
  }
}

function sqliteExec(path: string, sql: string): void {
  const db = new Database(path, { fileMustExist: true });
  try {
    db.exec(sql);
  } finally {
    db.close();
  }
}

function need(): NonNullable<typeof backedUp> {
  assert.ok(backedUp, "the backup of the first test did not happen");
  return backedUp;
}

/** Everything the site lost: both server databases dropped, the SQLite file gone, files and config damaged. */
async function damageEverything(opts: { wipeFiles: boolean }): Promise<void> {
  await pg.psql("DROP DATABASE shop WITH (FORCE)");
  await maria.sql("DROP DATABASE blog");
  await fsp.rm(sqlitePath);
  if (opts.wipeFiles) await fsp.rm(www, { recursive: true });
  else {
    await fsp.rm(join(www, "index.html"));
    await fsp.rm(join(www, "assets", "css"), { recursive: true });
    await fsp.rm(join(www, "current"));
    await fsp.writeFile(join(www, "config", "settings.ini"), "[db]\nname = hacked\n");
    await fsp.chmod(join(www, "bin", "run.sh"), 0o600);
    await fsp.rm(join(www, "app.conf"));
    await fsp.symlink("/etc/passwd", join(www, "app.conf"));
    // Same size, same mtime, one byte different: a recovery must not trust size and time.
    const big = join(www, "assets", "img", "big.bin");
    const st = statSync(big);
    const fh = await fsp.open(big, "r+");
    const b = Buffer.alloc(1);
    await fh.read(b, 0, 1, 1000);
    b[0] ^= 0xff;
    await fh.write(b, 0, 1, 1000);
    await fh.close();
    await fsp.utimes(big, st.atime, st.mtime);
    // Added after the backup: the runbook says it is left alone.
    await fsp.writeFile(join(www, "added-later.txt"), "new\n");
  }
  await fsp.writeFile(configFile, "listen 9999\n");
}

/** The site is exactly as it was backed up (apart from `allowed` differences in the file tree). */
async function assertSiteAsBackedUp(allowed: string[] = []): Promise<void> {
  const b = need();
  const diffs = (await compareTrees(b.copy, www)).filter((d) => !allowed.includes(d));
  assert.deepEqual(diffs, [], "the site's files differ from the backed-up copy");
  assert.equal(readFileSync(configFile, "utf8"), b.config, "the captured config file is back");
  assert.equal(await pgState("shop"), b.pg, "PostgreSQL rows, constraints and sequences as backed up");
  assert.equal(await mariaState("blog"), b.maria, "MariaDB rows and table definitions as backed up");
  assert.equal(sqliteState(sqlitePath), b.sqlite, "SQLite rows and schema as backed up");
}

function assertAllItemsOk(report: RecoveryReport): void {
  const got = report.items.map((i) => `${i.kind} ${i.name} ${i.ok ? "ok" : "FAILED"}`).sort();
  assert.deepEqual(
    got,
    [
      "capture appconf ok",
      "database appdb ok",
      "database blogdb ok",
      "database shopdb ok",
      `files ${www} ok`,
    ],
    summary(report),
  );
  assert.equal(report.ok, true, summary(report));
}

// ---- 1. back up, damage everything, recover in place ------------------------------------------

test("recover puts every file, the captured config and all three databases back as they were backed up", async () => {
  const b = await sk(["site", "backup", "--config", controlFile, "--json"]);
  assert.equal(b.code, 0, describeRun(b));
  assert.equal(lastJSON<{ message_id: number }>(b).message_id, 5035, describeRun(b));

  // What the site was, taken right after the backup.
  const copy = join(tmp.path, "expected", "www");
  await fsp.mkdir(join(tmp.path, "expected"));
  const cp = await runCommand("cp", ["-a", www, copy]);
  assert.equal(cp.code, 0, describeRun(cp));
  backedUp = {
    copy,
    config: readFileSync(configFile, "utf8"),
    pg: await pgState("shop"),
    maria: await mariaState("blog"),
    sqlite: sqliteState(sqlitePath),
    sqliteMode: statSync(sqlitePath).mode & 0o7777,
  };
  assert.equal(backedUp.config, ORIGINAL_CONFIG);
  assert.match(backedUp.pg, /FOREIGN KEY \(customer_id\) REFERENCES customers\(id\) ON DELETE CASCADE/);
  assert.match(backedUp.maria, /FOREIGN KEY \(`author_id`\) REFERENCES `authors` \(`id`\)/);

  await damageEverything({ wipeFiles: false });
  assert.deepEqual(await pgDatabases("shop"), []);
  assert.deepEqual(await mariaDatabases("blog"), []);
  assert.equal(existsSync(sqlitePath), false);
  assert.notDeepEqual(await compareTrees(copy, www), []);

  // The databases are gone (the SQLite file missing): no --replace is needed.
  const { r, report } = await recover(["--config", controlFile]);
  assert.equal(r.code, 0, describeRun(r));
  assertAllItemsOk(report);
  assert.equal(report.dryRun, false);
  assert.equal(report.site, SITE);
  assert.ok(Array.isArray(report.todo) && report.todo.length > 0, `a to-do list: ${summary(report)}`);
  assert.ok(
    report.reportFiles && existsSync(report.reportFiles.json) && existsSync(report.reportFiles.markdown),
    summary(report),
  );
  assert.equal(report.reportFiles.json, join(stateDir, "recoveries", report.id, "report.json"));
  assert.equal(
    existsSync(join(stateDir, "recoveries", report.id, "snapshot")),
    false,
    "the scratch copy of the dumps is removed",
  );

  // The file added after the backup is left alone; everything else is exactly as backed up.
  assert.equal(readFileSync(join(www, "added-later.txt"), "utf8"), "new\n");
  await assertSiteAsBackedUp(["added-later.txt: only in b (file)"]);
  await assert.rejects(
    pg.psql("INSERT INTO orders (customer_id, total) VALUES (999999, 1)", "shop"),
    /foreign key/,
    "the foreign key is enforced again",
  );
  await assert.rejects(
    maria.sql("INSERT INTO posts (author_id, title) VALUES (999999, 'x')", "blog"),
    /foreign key constraint fails/i,
  );
  assert.deepEqual(await pgDatabases("%sitekeep%"), [], "no temporary PostgreSQL database left");
  assert.deepEqual(await mariaDatabases("%sitekeep%"), [], "no temporary MariaDB database left");
  assert.deepEqual(
    readdirSync(join(tmp.path, "srv", "app", "data")),
    ["app.sqlite"],
    "no temporary SQLite file left",
  );

  const mine = (await messages()).filter((m) => m.run_id === report.id).map((m) => m.message_id);
  assert.ok(
    mine.includes(5070) && mine.includes(5071) && !mine.includes(5072),
    `messages of the recovery: ${mine.join(",")}`,
  );

  // docs/recovery.md: "SQLite: ... the file keeps its mode and owner" (the manifest records them).
  assert.equal(
    (statSync(sqlitePath).mode & 0o7777).toString(8),
    backedUp.sqliteMode.toString(8),
    "the restored SQLite file keeps its mode",
  );
});

// ---- 2. a new machine: only the destination and the password ----------------------------------

test("recover --from DEST with no control file and an empty state dir brings the same site back", async () => {
  const b = need();
  await damageEverything({ wipeFiles: true });
  // A new machine: no control file anywhere, a fresh state dir, an empty working directory.
  const hidden = `${controlFile}.away`;
  await fsp.rename(controlFile, hidden);
  const freshState = join(tmp.path, "state-new");
  const cwd = join(tmp.path, "new-machine");
  await fsp.mkdir(freshState);
  await fsp.mkdir(cwd);
  const recoveriesBefore = readdirSync(join(stateDir, "recoveries")).sort();
  let result: { r: RunResult; report: RecoveryReport };
  try {
    result = await recover(["--from", dest], {
      cwd,
      env: { ...env, SITEKEEP_STATE_DIR: freshState, SITEKEEP_CONFIG: undefined },
    });
  } finally {
    await fsp.rename(hidden, controlFile);
  }
  const { r, report } = result;
  assert.equal(r.code, 0, describeRun(r));
  assertAllItemsOk(report);
  assert.equal(report.from, dest);
  assert.ok(report.todo.length > 0, summary(report));

  await assertSiteAsBackedUp();

  // The run is recorded in the new state dir, not in the one the snapshot's control file names.
  assert.equal(report.reportFiles?.json, join(freshState, "recoveries", report.id, "report.json"));
  assert.ok(existsSync(join(freshState, "recoveries", report.id, "report.json")));
  assert.deepEqual(readdirSync(join(stateDir, "recoveries")).sort(), recoveriesBefore);
  const state = StateStore.open(freshState);
  try {
    const ids = state.messages(SITE, { runId: report.id }).map((m) => m.message_id);
    assert.ok(ids.includes(5070) && ids.includes(5071), `messages in the new state dir: ${ids.join(",")}`);
  } finally {
    state.close();
  }
  assert.equal(b.config, readFileSync(configFile, "utf8"));
});

// ---- 3. live databases are safe ---------------------------------------------------------------

test("live databases are never overwritten without --replace; --database-name and --dry-run leave them alone", async () => {
  const b = need();
  // The site lives on after the backup: each database has a row the backup does not have.
  await pg.psql("INSERT INTO customers (name, email) VALUES ('LIVE-ONLY', 'live@example.org')", "shop");
  await maria.sql("INSERT INTO authors (name) VALUES ('LIVE-ONLY')", "blog");
  sqliteExec(sqlitePath, "INSERT INTO users (name) VALUES ('LIVE-ONLY')");
  const live = {
    pg: await pgState("shop"),
    maria: await mariaState("blog"),
    sqlite: sqliteState(sqlitePath),
  };
  assert.notEqual(live.pg, b.pg);
  assert.notEqual(live.maria, b.maria);
  assert.notEqual(live.sqlite, b.sqlite);
  const assertLiveUntouched = async (when: string): Promise<void> => {
    assert.equal(await pgState("shop"), live.pg, `PostgreSQL untouched ${when}`);
    assert.equal(await mariaState("blog"), live.maria, `MariaDB untouched ${when}`);
    assert.equal(sqliteState(sqlitePath), live.sqlite, `SQLite untouched ${when}`);
  };
  await fsp.writeFile(join(www, "index.html"), "damaged\n");
  await fsp.writeFile(configFile, "listen 1\n");
  const messagesBefore = (await messages()).length;

  // --dry-run (even with --replace) plans and changes nothing.
  const dry = await recover(["--config", controlFile, "--dry-run", "--replace"]);
  assert.equal(dry.r.code, 0, describeRun(dry.r));
  assert.equal(dry.report.dryRun, true);
  assert.equal(dry.report.items.length, 5, summary(dry.report));
  for (const i of dry.report.items) assert.match(i.detail, /^would /, summary(dry.report));
  await assertLiveUntouched("by --dry-run");
  assert.equal(readFileSync(join(www, "index.html"), "utf8"), "damaged\n", "--dry-run restores no file");
  assert.equal(readFileSync(configFile, "utf8"), "listen 1\n", "--dry-run runs no capture restore");
  assert.equal((await messages()).length, messagesBefore, "--dry-run records no messages");

  // Without --replace: each database item fails naming --replace, the live data stays; exit 1, 5072.
  const refused = await recover(["--config", controlFile]);
  assert.equal(refused.r.code, 1, describeRun(refused.r));
  assert.equal(refused.report.ok, false);
  for (const name of ["shopdb", "blogdb", "appdb"]) {
    const item = refused.report.items.find((i) => i.kind === "database" && i.name === name);
    assert.ok(item && !item.ok, `database ${name} refused: ${summary(refused.report)}`);
    assert.match(item.detail, /--replace/, `database ${name}: ${item.detail}`);
  }
  await assertLiveUntouched("without --replace");
  const refusedIds = (await messages())
    .filter((m) => m.run_id === refused.report.id)
    .map((m) => m.message_id);
  assert.ok(refusedIds.includes(5072) && !refusedIds.includes(5071), `messages: ${refusedIds.join(",")}`);
  assert.deepEqual(await pgDatabases("%sitekeep%"), []);
  assert.deepEqual(await mariaDatabases("%sitekeep%"), []);

  // --database-name: the backup comes back beside the live database, which stays as it is.
  const copy = await recover([
    "--config",
    controlFile,
    "--only",
    "shopdb",
    "--database-name",
    "shopdb=shop_copy",
  ]);
  assert.equal(copy.r.code, 0, describeRun(copy.r));
  assert.deepEqual(
    copy.report.items.map((i) => `${i.kind} ${i.name} ${i.ok}`),
    ["database shopdb true"],
    summary(copy.report),
  );
  assert.ok(
    copy.report.todo.some((t) => t.includes("shop_copy")),
    summary(copy.report),
  );
  assert.equal(await pgState("shop_copy"), b.pg, "the copy holds the backed-up rows");
  await assertLiveUntouched("by --database-name");

  // --replace: the backed-up databases replace the live ones.
  const replaced = await recover(["--config", controlFile, "--replace"]);
  assert.equal(replaced.r.code, 0, describeRun(replaced.r));
  assertAllItemsOk(replaced.report);
  await assertSiteAsBackedUp(["added-later.txt: only in b (file)"]);
  const replacedIds = (await messages())
    .filter((m) => m.run_id === replaced.report.id)
    .map((m) => m.message_id);
  assert.ok(replacedIds.includes(5071), `messages: ${replacedIds.join(",")}`);
  assert.deepEqual(await pgDatabases("%sitekeep%"), []);
  assert.deepEqual(await mariaDatabases("%sitekeep%"), []);
});

// ---- 4. drills ----------------------------------------------------------------------------------

test("site drill passes on the good snapshot and fails, with 5082 and a critical alert, on a corrupted one", async () => {
  need();
  const drills = join(stateDir, "drills");
  const leftovers = async (): Promise<string[]> => [
    ...(await pgDatabases("sitekeep_drill_%")),
    ...(await mariaDatabases("sitekeep\\_drill\\_%")),
  ];

  const good = await sk(["site", "drill", "--config", controlFile, "--json"]);
  assert.equal(good.code, 0, describeRun(good));
  const ok = lastJSON<DrillReport>(good);
  assert.equal(ok.ok, true, summary(ok));
  const names = ok.items.map((i) => `${i.kind} ${i.name} ${i.ok}`).sort();
  assert.deepEqual(
    names,
    [
      "capture appconf true",
      "database appdb true",
      "database blogdb true",
      "database shopdb true",
      "files snapshot true",
    ],
    summary(ok),
  );
  assert.ok(ok.rtoMs > 0);
  assert.ok(
    (await messages()).some((m) => m.run_id === ok.id && m.message_id === 5081),
    "message 5081",
  );
  assert.deepEqual(await leftovers(), [], "no sitekeep_drill_* databases left");
  assert.deepEqual(existsSync(drills) ? readdirSync(drills) : [], [], "the sandbox is removed");

  // Flip one byte in the middle of the largest data pack: it holds file contents (big.bin).
  const packs: { path: string; size: number }[] = [];
  for (const sub of readdirSync(join(dest, "data"))) {
    for (const f of readdirSync(join(dest, "data", sub)))
      packs.push({ path: join(dest, "data", sub, f), size: statSync(join(dest, "data", sub, f)).size });
  }
  packs.sort((a, b) => b.size - a.size);
  const pack = packs[0];
  assert.ok(pack && pack.size > 2 * 1024 * 1024, `largest pack: ${JSON.stringify(pack)}`);
  const fh = await fsp.open(pack.path, "r+");
  try {
    const byte = Buffer.alloc(1);
    const at = Math.floor(pack.size / 2);
    await fh.read(byte, 0, 1, at);
    byte[0] ^= 0xff;
    await fh.write(byte, 0, 1, at);
  } finally {
    await fh.close();
  }

  const bad = await sk(["site", "drill", "--config", controlFile, "--json"]);
  assert.equal(bad.code, 1, describeRun(bad));
  const failed = lastJSON<DrillReport>(bad);
  assert.equal(failed.ok, false, summary(failed));
  const failing = failed.items.filter((i) => !i.ok);
  assert.ok(failing.length > 0, summary(failed));
  assert.ok(
    failing.some((i) => i.kind === "files"),
    `the damaged file content fails the files item: ${summary(failed)}`,
  );
  const m5082 = (await messages()).find((m) => m.run_id === failed.id && m.message_id === 5082);
  assert.ok(m5082, "message 5082");
  for (const i of failing)
    assert.ok(m5082.text.includes(`${i.kind} ${i.name}`), `5082 names ${i.kind} ${i.name}: ${m5082.text}`);

  const al = await sk(["site", "alerts", "--config", controlFile, "--json"]);
  assert.equal(al.code, 0, describeRun(al));
  const alerts = lastJSON<AlertRow[]>(al);
  const alert = alerts.find((a) => a.kind === "drill-failed");
  assert.ok(alert, `open alerts: ${JSON.stringify(alerts)}`);
  assert.equal(alert.severity, "critical");
  assert.equal(alert.closed_at, null);
  assert.equal(alert.run_id, failed.id);
  assert.deepEqual(await leftovers(), [], "no sitekeep_drill_* databases left after a failed drill");
  assert.deepEqual(
    existsSync(drills) ? readdirSync(drills) : [],
    [],
    "the sandbox is removed after a failed drill",
  );
});

// ---- 5-7. SQLite files in awkward places (a site with no servers, so these are quick) -----------
// Many sites keep their SQLite file inside the folder they serve (www/app.sqlite); on a new machine
// the folder of a SQLite file outside the site's folders does not exist yet.

interface SqliteSite {
  www: string;
  inner: string;
  outer: string;
  control: string;
  backedUp: { inner: string; outer: string };
}
let sqliteSitePromise: Promise<SqliteSite> | undefined;

function sqliteSite(): Promise<SqliteSite> {
  sqliteSitePromise ??= (async () => {
    const root = join(tmp.path, "site2");
    const www2 = join(root, "www");
    const inner = join(www2, "app.sqlite");
    const outer = join(root, "data", "other.sqlite");
    await fsp.mkdir(www2, { recursive: true });
    await fsp.mkdir(join(root, "data"));
    await fsp.writeFile(join(www2, "index.html"), "<h1>two</h1>\n");
    for (const p of [inner, outer]) {
      const db = new Database(p);
      db.exec(`CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL, avatar BLOB);
               CREATE TABLE sessions (id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL REFERENCES users(id), token TEXT, expires REAL);
               INSERT INTO users (name) VALUES ('a'), ('b'), ('c');
               INSERT INTO sessions (user_id, token, expires) VALUES (1, 'x', 1.5), (3, 'y', 2.5);`);
      db.close();
    }
    await fsp.mkdir(join(tmp.path, "dest2"));
    const control = join(tmp.path, "site2.yaml");
    await fsp.writeFile(
      control,
      JSON.stringify({
        site: "RECO2",
        backup: { destination: join(tmp.path, "dest2") },
        databases: [
          { name: "inner", kind: "sqlite", path: inner },
          { name: "outer", kind: "sqlite", path: outer },
        ],
        files: [{ path: www2 }],
        stateDir: join(tmp.path, "state2"),
      }),
    );
    const b = await sk(["site", "backup", "--config", control, "--json"]);
    assert.equal(b.code, 0, describeRun(b));
    assert.equal(lastJSON<{ message_id: number }>(b).message_id, 5035, describeRun(b));
    return {
      www: www2,
      inner,
      outer,
      control,
      backedUp: { inner: sqliteState(inner), outer: sqliteState(outer) },
    };
  })();
  return sqliteSitePromise;
}

test("a live SQLite database inside the site's files folder is not overwritten without --replace", async () => {
  const s = await sqliteSite();
  sqliteExec(s.inner, "INSERT INTO users (name) VALUES ('LIVE-ONLY')");
  sqliteExec(s.outer, "INSERT INTO users (name) VALUES ('LIVE-ONLY')");
  const live = { inner: sqliteState(s.inner), outer: sqliteState(s.outer) };
  const { r, report } = await recover(["--config", s.control]);
  assert.equal(r.code, 1, describeRun(r));
  for (const name of ["inner", "outer"]) {
    const item = report.items.find((i) => i.kind === "database" && i.name === name);
    assert.ok(
      item && !item.ok && /--replace/.test(item.detail),
      `database ${name} refused: ${summary(report)}`,
    );
  }
  assert.equal(sqliteState(s.outer), live.outer, "the SQLite file outside the files folder is untouched");
  // The files pass must not put the snapshot's raw copy of the database file over the live one.
  assert.equal(
    sqliteState(s.inner),
    live.inner,
    "the live SQLite file inside the files folder is untouched without --replace",
  );
});

test("after a total loss, a SQLite database inside the site's files folder comes back without --replace", async () => {
  const s = await sqliteSite();
  await fsp.rm(s.www, { recursive: true });
  await fsp.rm(s.outer);
  const { r, report } = await recover(["--config", s.control]);
  assert.equal(r.code, 0, describeRun(r));
  assert.equal(report.ok, true, summary(report));
  assert.equal(sqliteState(s.inner), s.backedUp.inner);
  assert.equal(sqliteState(s.outer), s.backedUp.outer);
});

test("on a new machine, a SQLite database whose folder does not exist comes back (the folder is created)", async () => {
  const s = await sqliteSite();
  await fsp.rm(join(s.outer, ".."), { recursive: true });
  const { r, report } = await recover(["--config", s.control, "--only", "outer"]);
  assert.equal(r.code, 0, describeRun(r));
  assert.equal(report.ok, true, summary(report));
  assert.equal(sqliteState(s.outer), s.backedUp.outer);
});
