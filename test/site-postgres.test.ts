// The site task against a real PostgreSQL 15 server, through the real CLI: a dump taken while
// pgbench writes restores to a consistent database whose row counts match the manifest; dumps can go
// to their own database destination; an unreachable database stops the run before any writer is
// frozen. Every repository is verified with the reference restic binary.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, promises as fsp } from "node:fs";
import { join } from "node:path";
import { describeRun, runCommand, runRestic, runSitekeep, tempDir, type RunResult, type TempDir, ok } from "./helpers/run.js";
import { freePort, startPostgres, type PgServer } from "./helpers/dbservers.js";
import type { SiteManifest } from "../src/site/task.js";

const PASSWORD = "site-pg-pw";

let tmp: TempDir;
let pg: PgServer;
let env: Record<string, string>;
let passwordFile: string;
let siteFiles: string;
let pgbench: ChildProcess | undefined;

before(async () => {
  tmp = await tempDir("site-pg");
  pg = await startPostgres();
  env = {
    SITEKEEP_PASSWORD: PASSWORD,
    SITEKEEP_CACHE_DIR: join(tmp.path, "cache"),
    HOME: tmp.path,
    SITEKEEP_SCRYPT_N: "1024",
    SITEKEEP_STATE_DIR: join(tmp.path, "state-env"), // never the per-user default, whatever the file says
  };
  passwordFile = join(tmp.path, "password");
  await fsp.writeFile(passwordFile, PASSWORD + "\n", { mode: 0o600 });
  siteFiles = join(tmp.path, "site", "www");
  await fsp.mkdir(join(siteFiles, "uploads"), { recursive: true });
  await fsp.writeFile(join(siteFiles, "index.php"), "<?php echo 'hello';\n");
  await fsp.writeFile(join(siteFiles, "uploads", "logo.svg"), "<svg/>\n".repeat(200));
});

after(async () => {
  if (pgbench && pgbench.exitCode === null && pgbench.signalCode === null) pgbench.kill("SIGKILL");
  await pg?.stop();
  await tmp?.cleanup();
});

function lastJSON<T = Record<string, unknown>>(r: RunResult): T {
  return JSON.parse(r.stdout.trim().split("\n").pop() as string) as T;
}

/** A fresh, empty folder under the test's temp dir. */
async function dir(name: string): Promise<string> {
  const p = join(tmp.path, name);
  await fsp.mkdir(p, { recursive: true });
  return p;
}

/** Writes a control file (JSON is YAML) with its own state dir; returns its path. */
async function controlFile(name: string, cfg: Record<string, unknown>): Promise<string> {
  const file = join(tmp.path, `${name}.yaml`);
  await fsp.writeFile(file, JSON.stringify({ stateDir: await dir(`state-${name}`), ...cfg }, null, 2));
  return file;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

const pgArgs = (): string[] => ["-h", pg.host, "-p", String(pg.port), "-U", pg.user];
const num = async (sql: string, db: string): Promise<number> => Number((await pg.psql(sql, db)).trim());

/** Restores the snapshot's /.sitekeep folder into a fresh folder; returns that folder's .sitekeep. */
async function restoreSiteDir(repo: string, name: string): Promise<string> {
  const target = join(tmp.path, name);
  ok(await runSitekeep(["-r", repo, "restore", "latest", "--target", target, "--include", "/.sitekeep"], { env }));
  return join(target, ".sitekeep");
}

async function readManifest(siteDir: string): Promise<SiteManifest> {
  return JSON.parse(await fsp.readFile(join(siteDir, "manifest.json"), "utf8")) as SiteManifest;
}

interface SnapshotJSON {
  id: string;
  tags?: string[];
  paths: string[];
}

async function snapshots(repo: string): Promise<SnapshotJSON[]> {
  return lastJSON<SnapshotJSON[]>(ok(await runSitekeep(["-r", repo, "snapshots", "--json"], { env })));
}

async function resticCheck(repo: string): Promise<void> {
  ok(await runRestic(["-r", repo, "--password-file", passwordFile, "--no-cache", "check", "--read-data"], { timeoutMs: 60_000 }));
}

test("a backup taken while pgbench writes restores to a consistent database matching the manifest", async () => {
  await pg.createDb("bench");
  ok(await runCommand(join(pg.binDir, "pgbench"), [...pgArgs(), "-i", "-s", "2", "-q", "bench"], { timeoutMs: 60_000 }));

  // Writers for the whole backup: pgbench runs far longer than the backup and is stopped after it.
  let pgbenchErr = "";
  pgbench = spawn(join(pg.binDir, "pgbench"), [...pgArgs(), "-c", "4", "-j", "2", "-T", "120", "-n", "bench"], {
    stdio: ["ignore", "ignore", "pipe"],
  });
  pgbench.stderr?.on("data", (d: Buffer) => (pgbenchErr += d.toString()));
  const bench = pgbench;
  const exited = new Promise<void>((resolve) => bench.once("exit", () => resolve()));
  for (let i = 0; (await num("SELECT count(*) FROM pgbench_history", "bench")) < 200; i++) {
    assert.ok(i < 100 && bench.exitCode === null, `pgbench is not writing: ${pgbenchErr}`);
    await sleep(100);
  }

  const dest = await dir("dest-bench");
  const cfg = await controlFile("bench", {
    site: "bench",
    backup: { destination: dest, passwordFile },
    databases: [{ name: "benchdb", kind: "postgres", url: pg.url("bench") }],
    files: [{ path: siteFiles }],
  });
  const historyBefore = await num("SELECT count(*) FROM pgbench_history", "bench");
  const run = await runSitekeep(["site", "backup", "--config", cfg, "--json"], { env, timeoutMs: 90_000 });
  const historyAfter = await num("SELECT count(*) FROM pgbench_history", "bench");
  const stillWriting = bench.exitCode === null && bench.signalCode === null;
  bench.kill("SIGINT");
  await exited;
  pgbench = undefined;
  assert.ok(stillWriting, `pgbench stopped before the backup finished: ${pgbenchErr}`);
  assert.ok(historyAfter > historyBefore, "pgbench wrote while the backup ran");
  ok(run);
  const summary = lastJSON(run);
  assert.equal(summary.status, "succeeded", describeRun(run));
  assert.equal(summary.message_id, 5035, describeRun(run));

  const siteDir = await restoreSiteDir(dest, "restore-bench");
  const manifest = await readManifest(siteDir);
  assert.equal(manifest.format, "sitekeep-site-manifest/1");
  assert.equal(manifest.site, "bench");
  assert.equal(manifest.databases.length, 1);
  const db = manifest.databases[0];
  assert.equal(db.name, "benchdb");
  assert.equal(db.kind, "postgres");
  assert.match(db.engineVersion, /^15/);
  assert.equal(db.dump.file, "/.sitekeep/databases/benchdb.pgdump");
  assert.equal(manifest.databaseDestination, undefined);
  assert.deepEqual(manifest.files.map((f) => f.path), [siteFiles]);

  // The dump and the globals are in the snapshot, byte for byte as the manifest describes them.
  const dumpFile = join(siteDir, "databases", "benchdb.pgdump");
  const dumpBytes = await fsp.readFile(dumpFile);
  assert.equal(dumpBytes.length, db.dump.bytes);
  assert.equal(dumpBytes.subarray(0, 5).toString("latin1"), "PGDMP", "a pg_dump custom-format archive");
  assert.ok(db.globals, "the manifest names the globals file");
  assert.equal(db.globals.file, "/.sitekeep/databases/benchdb.globals.sql");
  const globals = await fsp.readFile(join(siteDir, "databases", "benchdb.globals.sql"), "utf8");
  assert.match(globals, /CREATE ROLE/);

  // The site's files are in the same snapshot.
  const ls = ok(await runSitekeep(["-r", dest, "ls", "latest"], { env })).stdout.split("\n");
  assert.ok(ls.includes(join(siteFiles, "index.php")), ls.join("\n"));
  assert.ok(ls.includes(join(siteFiles, "uploads", "logo.svg")), ls.join("\n"));

  // Restore into a new database: pgbench keeps the four sums equal only in a consistent copy.
  await pg.createDb("bench_restored");
  ok(await runCommand(join(pg.binDir, "pg_restore"), [...pgArgs(), "--no-owner", "-d", "bench_restored", dumpFile], { timeoutMs: 60_000 }));
  const sums = (await pg.psql(
    `SELECT (SELECT sum(abalance) FROM pgbench_accounts), (SELECT sum(tbalance) FROM pgbench_tellers),
            (SELECT sum(bbalance) FROM pgbench_branches), (SELECT coalesce(sum(delta), 0) FROM pgbench_history)`,
    "bench_restored",
  )).trim().split("|").map(Number);
  assert.equal(sums.length, 4);
  assert.deepEqual(sums, [sums[3], sums[3], sums[3], sums[3]], `accounts|tellers|branches|history sums differ: ${sums.join(" | ")}`);
  const restoredHistory = await num("SELECT count(*) FROM pgbench_history", "bench_restored");
  assert.ok(restoredHistory > 0, "the dump holds pgbench's transactions");
  const finalHistory = await num("SELECT count(*) FROM pgbench_history", "bench");
  assert.ok(restoredHistory < finalHistory, `writes continued after the dump's snapshot (${restoredHistory} < ${finalHistory})`);

  // Row counts recorded in the manifest come from the dump's own snapshot.
  const tables = Object.keys(db.tables).sort();
  assert.deepEqual(tables, ["public.pgbench_accounts", "public.pgbench_branches", "public.pgbench_history", "public.pgbench_tellers"]);
  assert.equal(db.tables["public.pgbench_history"], restoredHistory);
  for (const t of tables) {
    const [schema, name] = t.split(".");
    assert.equal(await num(`SELECT count(*) FROM "${schema}"."${name}"`, "bench_restored"), db.tables[t], `rows of ${t}`);
  }

  await resticCheck(dest);
});

test("backup.databaseDestination: dumps go to their own snapshot, tied to the site snapshot by run tag", async () => {
  await pg.createDb("shop");
  await pg.psql("CREATE TABLE orders (id int PRIMARY KEY, item text); INSERT INTO orders SELECT g, 'item ' || g FROM generate_series(1, 1234) g", "shop");
  const dest = await dir("dest-split");
  const dbDest = await dir("dest-split-db");
  const cfg = await controlFile("split", {
    site: "split",
    backup: { destination: dest, databaseDestination: dbDest, passwordFile },
    databases: [{ name: "shop", kind: "postgres", url: pg.url("shop") }],
    files: [{ path: siteFiles }],
  });
  const run = ok(await runSitekeep(["site", "backup", "--config", cfg, "--json"], { env, timeoutMs: 90_000 }));
  const summary = lastJSON(run);
  assert.equal(summary.message_id, 5035, describeRun(run));

  const [siteSnap, ...moreSite] = await snapshots(dest);
  const [dbSnap, ...moreDb] = await snapshots(dbDest);
  assert.equal(moreSite.length, 0);
  assert.equal(moreDb.length, 0);
  assert.equal(summary.snapshot_id, siteSnap.id);
  assert.equal(summary.db_snapshot_id, dbSnap.id);
  const runTag = siteSnap.tags?.find((t) => t.startsWith("run:"));
  assert.ok(runTag, `site snapshot tags: ${siteSnap.tags?.join(",")}`);
  assert.equal(runTag, `run:${String(summary.run_id)}`);
  assert.ok(dbSnap.tags?.includes(runTag), `database snapshot tags ${dbSnap.tags?.join(",")} lack ${runTag}`);
  assert.ok(dbSnap.tags?.includes("site:split"));

  // The site snapshot's manifest points at the database snapshot and holds no dump.
  const siteDir = await restoreSiteDir(dest, "restore-split");
  const manifest = await readManifest(siteDir);
  assert.deepEqual(manifest.databaseDestination, { url: dbDest, snapshotId: dbSnap.id });
  assert.equal(manifest.databases[0].tables["public.orders"], 1234);
  assert.equal(existsSync(join(siteDir, "databases")), false, "no databases folder in the site snapshot");
  const siteLs = ok(await runSitekeep(["-r", dest, "ls", "latest"], { env })).stdout;
  assert.doesNotMatch(siteLs, /\/\.sitekeep\/databases\//);
  assert.doesNotMatch(siteLs, /\.pgdump$/m);
  assert.match(siteLs, /^\/\.sitekeep\/manifest\.json$/m);
  assert.ok(siteLs.split("\n").includes(join(siteFiles, "index.php")), siteLs);

  // The database snapshot holds the dump the manifest describes.
  const dbLs = ok(await runSitekeep(["-r", dbDest, "ls", "latest"], { env })).stdout;
  assert.match(dbLs, /^\/\.sitekeep\/databases\/shop\.pgdump$/m);
  assert.doesNotMatch(dbLs, /index\.php/);
  const dbDir = await restoreSiteDir(dbDest, "restore-split-db");
  const dump = await fsp.readFile(join(dbDir, "databases", "shop.pgdump"));
  assert.equal(createHash("sha256").update(dump).digest("hex"), manifest.databases[0].dump.sha256);
  await pg.createDb("shop_restored");
  ok(await runCommand(join(pg.binDir, "pg_restore"), [...pgArgs(), "--no-owner", "-d", "shop_restored", join(dbDir, "databases", "shop.pgdump")]));
  assert.equal(await num("SELECT count(*) FROM orders", "shop_restored"), 1234);

  await resticCheck(dest);
  await resticCheck(dbDest);
});

test("an unreachable database fails the run in the preflight: nothing frozen, no snapshot, message 5008", async () => {
  const port = await freePort(); // free a moment ago: nothing listens there
  const dest = await dir("dest-down");
  const events = join(tmp.path, "down-events");
  const cfg = await controlFile("down", {
    site: "down",
    backup: { destination: dest, passwordFile },
    databases: [{ name: "gone", kind: "postgres", url: `postgres://postgres@127.0.0.1:${port}/gone` }],
    files: [{ path: siteFiles }],
    writers: [{ name: "app", freeze: `echo frozen >> ${events}`, thaw: `echo thawed >> ${events}` }],
  });
  const run = await runSitekeep(["site", "backup", "--config", cfg, "--json"], { env, timeoutMs: 60_000 });
  assert.notEqual(run.code, 0, describeRun(run));
  const summary = lastJSON(run);
  assert.equal(summary.status, "failed", describeRun(run));
  assert.equal(summary.message_id, 5008, describeRun(run));
  assert.equal(summary.snapshot_id, undefined);
  assert.equal(existsSync(events), false, "no writer was frozen or thawed");

  const messages = lastJSON<{ message_id: number; run_id: string; text: string }[]>(
    ok(await runSitekeep(["site", "messages", "--config", cfg, "--json"], { env })),
  );
  const ids = messages.map((m) => m.message_id);
  assert.ok(ids.includes(5008), `messages: ${ids.join(",")}`);
  assert.ok(!ids.includes(5056) && !ids.includes(5035), `messages: ${ids.join(",")}`);
  assert.match(messages.find((m) => m.message_id === 5008)?.text ?? "", /gone/);

  // No snapshot in the destination.
  const snapDir = join(dest, "snapshots");
  const snaps = existsSync(snapDir) ? await fsp.readdir(snapDir) : [];
  assert.deepEqual(snaps, []);
});
