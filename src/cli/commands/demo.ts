// `sitekeep demo [DIR]`: the main job on embedded defaults. Builds a small demo site (a SQLite site
// database with data, configuration files, a configuration capture, an install-media folder, a
// content library, package sources listed in the site database, a writer), writes its control
// file, runs the site backup task twice (the second incremental), restores the latest snapshot and
// proves it: files identical, the database copy intact with the row counts of the manifest, every
// byte of the repository verified.
import { promises as fsp, existsSync, readFileSync } from "node:fs";
import { createHash, randomBytes } from "node:crypto";
import { join, resolve } from "node:path";
import Database from "better-sqlite3";
import { LocalBackend } from "../../backend/local.js";
import { Repository } from "../../repo/repository.js";
import { Restorer } from "../../archive/restorer.js";
import { checkRepository } from "../../archive/checker.js";
import { SitekeepError } from "../../errors.js";
import { loadControlFile } from "../../site/control-file.js";
import { type SiteBackupResult, type SiteManifest, MANIFEST_PATH, runSiteBackup } from "../../site/task.js";
import { siteStatus } from "../../site/status.js";
import { type GlobalOptions, outputOptions } from "../context.js";
import { formatBytes, printJSON } from "../output.js";

const MARKER = ".sitekeep-demo";

export async function demoCommand(g: GlobalOptions, dirArg: string | undefined): Promise<number> {
  const out = outputOptions(g);
  const dir = resolve(dirArg ?? "sitekeep-demo");
  const say = (s: string): void => {
    if (!out.json && !out.quiet) process.stdout.write(s + "\n");
  };
  await prepareDir(dir);
  const site = join(dir, "site");
  const backupDir = join(dir, "backup");
  const passwordFile = join(dir, "password");
  await fsp.writeFile(passwordFile, randomBytes(18).toString("base64url") + "\n", { mode: 0o600 });
  await fsp.mkdir(backupDir, { mode: 0o700 });

  say(`Sitekeep demo in ${dir}`);
  const made = await makeSite(dir, site);
  const configFile = join(dir, "sitekeep.yaml");
  await fsp.writeFile(configFile, controlFile(dir, site, backupDir, passwordFile), { mode: 0o600 });
  await fsp.writeFile(join(dir, "after-backup.sh"), `#!/bin/sh\n# runs after every successful backup (like AfterBackup.bat)\necho "$(date -u +%FT%TZ) snapshot $SITEKEEP_SNAPSHOT_ID of site $SITEKEEP_SITE" >> "${join(dir, "after-backup.out")}"\n`, { mode: 0o700 });
  say(`1. built a demo site in ${site}: ${made.files} files (${formatBytes(made.bytes)}), a SQLite site database with ${made.rows} rows, a writer and a configuration capture`);
  say(`   its control file: ${configFile}`);

  const loaded = loadControlFile(configFile, { ...process.env, SITEKEEP_PASSWORD: undefined, SITEKEEP_STATE_DIR: undefined });
  const show = (r: SiteBackupResult): void => {
    if (r.status !== "succeeded") throw new SitekeepError("demo.backup", `the demo backup failed: ${r.error?.message}`, { hint: r.error?.hint });
  };
  const messages: string[] = [];
  const first = await runSiteBackup(loaded, { onMessage: (m) => messages.push(`   ${m.message_id} ${m.severity} ${m.text}`) });
  show(first);
  say(`2. site backup: snapshot ${first.snapshotId?.slice(0, 8)} in ${backupDir}, writers frozen for ${first.freezeWindowMs} ms; status messages:`);
  for (const m of messages.splice(0)) say(m);

  // Work goes on at the site: a new row in the database and a changed configuration file.
  const db = new Database(join(site, "app", "data", "site.db"));
  db.prepare("INSERT INTO orders (customer, amount) VALUES (?, ?)").run("demo-customer", 42.5);
  db.close();
  await fsp.appendFile(join(site, "app", "config", "app.conf"), "# changed after the first backup\nworkers = 8\n");
  const second = await runSiteBackup(loaded, { onMessage: (m) => messages.push(`   ${m.message_id} ${m.severity} ${m.text}`) });
  show(second);
  const f = second.files;
  say(`3. second (incremental) backup: snapshot ${second.snapshotId?.slice(0, 8)}, ${f?.files_changed ?? 0} file(s) changed, ${f?.files_unmodified ?? 0} unchanged and not read again, ${formatBytes(f?.data_added ?? 0)} added; ${messages.at(-1)?.trim()}`);

  const password = readFileSync(passwordFile, "utf8").trim();
  const repo = await Repository.open(new LocalBackend(backupDir), password);
  await repo.loadIndex();
  const snap = await repo.loadSnapshot(second.snapshotId as string);
  const target = join(dir, "restored");
  const restored = await new Restorer(repo, { target }).restore(snap.tree);
  if (restored.errors.length) throw new SitekeepError("demo.restore", `restore reported errors: ${restored.errors[0].path}: ${restored.errors[0].message}`);
  for (const part of ["app/config", "cd.latest", "content", "sources"]) {
    if ((await digestTree(join(site, part))) !== (await digestTree(join(target, site, part)))) {
      throw new SitekeepError("demo.verify", `the restored ${part} differs from the site's`);
    }
  }
  const manifest = JSON.parse(await fsp.readFile(join(target, MANIFEST_PATH), "utf8")) as SiteManifest;
  const dbEntry = manifest.databases[0];
  const copy = new Database(join(target, dbEntry.dump.file), { readonly: true });
  try {
    const ok = copy.pragma("integrity_check", { simple: true });
    const orders = (copy.prepare("SELECT count(*) AS n FROM orders").get() as { n: number }).n;
    if (ok !== "ok" || orders !== dbEntry.tables.orders) throw new SitekeepError("demo.verify", `the restored database copy is not intact (${String(ok)}, ${orders} orders)`);
  } finally {
    copy.close();
  }
  say(`4. restored the latest snapshot to ${target}: files identical to the site, database copy passes integrity_check with the manifest's row counts (orders: ${dbEntry.tables.orders})`);

  const check = await checkRepository(repo, { readData: true });
  await repo.backend.close();
  if (check.errors.length) throw new SitekeepError("demo.check", `repository check found ${check.errors.length} errors`);
  say(`5. check --read-data: ${check.packsRead} packs, ${formatBytes(check.bytesRead)} read and verified, no errors`);
  await fsp.writeFile(join(dir, MARKER), "made by sitekeep demo; safe to delete\n");

  const status = siteStatus(loaded.config);
  say("");
  say(`Site ${status.site}: ${status.healthy ? "OK" : "ATTENTION"}, last good backup ${status.lastGood?.finishedAt}, run log ${second.logPath}`);
  say("Try it yourself:");
  say(`  export SITEKEEP_CONFIG=${configFile}`);
  say("  npx sitekeep site status            # health, last runs, alerts");
  say("  npx sitekeep site messages          # status messages (5055, 5056, 5035, 5040, ...)");
  say("  npx sitekeep site backup            # run the task again");
  say(`  SITEKEEP_PASSWORD_FILE=${passwordFile} npx sitekeep -r ${backupDir} snapshots`);
  say(`  restic -r ${backupDir} --password-file ${passwordFile} snapshots   # restic reads it too`);
  if (out.json) {
    printJSON({
      message_type: "demo",
      dir,
      control_file: configFile,
      destination: backupDir,
      password_file: passwordFile,
      snapshots: [first.snapshotId, second.snapshotId],
      message_id: second.messageId,
      restored_identical: true,
      check_errors: 0,
    });
  }
  return 0;
}

async function prepareDir(dir: string): Promise<void> {
  if (existsSync(dir)) {
    const entries = await fsp.readdir(dir);
    if (entries.length && !entries.includes(MARKER)) {
      throw new SitekeepError("demo.dir", `${dir} exists and is not an earlier demo folder`, {
        hint: "name an empty or new folder: `sitekeep demo /tmp/sitekeep-demo`",
      });
    }
    await fsp.rm(dir, { recursive: true, force: true });
  }
  await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
}

function controlFile(dir: string, site: string, backupDir: string, passwordFile: string): string {
  const q = (s: string): string => JSON.stringify(s);
  return `# Sitekeep control file of the demo site (see docs/control-file.md)
site: DEMO
backup:
  destination: ${q(backupDir)}
  passwordFile: ${q(passwordFile)}
  schedule: "0 2 * * *"
  retention: { keepLast: 5 }
  retentionWindow: 2d
  afterBackup: ${q(join(dir, "after-backup.sh"))}
databases:
  - { name: site, kind: sqlite, path: ${q(join(site, "app", "data", "site.db"))} }
captures:
  - name: app-settings
    export: ${q(`cat ${join(dir, "etc", "demo-app.conf")}`)}
    restore: ${q(`cat > ${join(dir, "etc", "demo-app.conf")}`)}
files:
  - { path: ${q(join(site, "app"))}, exclude: ["data/**", "MAINTENANCE", "*.tmp"] }
  - { path: ${q(join(site, "cd.latest"))}, role: install-media }
  - { path: ${q(join(site, "content"))}, role: content-library }
  - pathsFrom: { database: site, query: "SELECT source_path FROM packages ORDER BY id" }
    role: package-source
writers:
  - name: app
    freeze: ${q(`touch ${join(site, "app", "MAINTENANCE")}`)}
    thaw: ${q(`rm -f ${join(site, "app", "MAINTENANCE")}`)}
    timeout: 30s
stateDir: ${q(join(dir, "state"))}
`;
}

async function makeSite(dir: string, site: string): Promise<{ files: number; bytes: number; rows: number }> {
  let files = 0;
  let bytes = 0;
  const write = async (rel: string, data: string | Buffer): Promise<void> => {
    const p = join(site, rel);
    await fsp.mkdir(join(p, ".."), { recursive: true });
    await fsp.writeFile(p, data);
    files++;
    bytes += Buffer.byteLength(data);
  };
  await write("app/config/app.conf", "[server]\nlisten = 127.0.0.1:8080\nworkers = 4\n");
  await write("app/config/database.conf", "engine = sqlite\npath = data/site.db\n");
  await write("app/bin/start.sh", "#!/bin/sh\nexec ./server --config config/app.conf\n");
  await fsp.chmod(join(site, "app/bin/start.sh"), 0o755);
  await write("cd.latest/setup.bin", randomBytes(2 * 1024 * 1024));
  await write("cd.latest/README.txt", "Install media of the demo application, version 5.0.2\n");
  for (let i = 0; i < 200; i++) {
    await write(`content/pages/page-${String(i).padStart(3, "0")}.html`, `<h1>Page ${i}</h1>\n` + "<p>Lorem ipsum dolor sit amet.</p>\n".repeat(50 + (i % 30)));
  }
  await write("content/media/logo.bin", randomBytes(256 * 1024));
  await fsp.symlink("../app/config/app.conf", join(site, "content", "current.conf"));
  const sources = [join(site, "sources", "pkg-office"), join(site, "sources", "pkg-drivers")];
  for (const s of sources) await write(`sources/${s.split("/").pop()}/package.xml`, `<package name="${s}"/>\n`);
  await fsp.mkdir(join(dir, "etc"), { recursive: true });
  await fsp.writeFile(join(dir, "etc", "demo-app.conf"), "# settings outside the site folders, exported by a capture\nlicense = DEMO-1234\nmode = production\n");

  const db = new Database(join(await mkdirp(join(site, "app", "data")), "site.db"));
  try {
    db.pragma("journal_mode = WAL");
    db.exec(`CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT NOT NULL, amount REAL NOT NULL);
             CREATE TABLE packages (id INTEGER PRIMARY KEY, name TEXT NOT NULL, source_path TEXT NOT NULL);`);
    const ins = db.prepare("INSERT INTO orders (customer, amount) VALUES (?, ?)");
    db.transaction(() => {
      for (let i = 0; i < 5000; i++) ins.run(`customer-${i}`, (i * 37) % 1000);
    })();
    const pkg = db.prepare("INSERT INTO packages (name, source_path) VALUES (?, ?)");
    for (const s of sources) pkg.run(s.split("/").pop(), s);
  } finally {
    db.close();
  }
  return { files, bytes, rows: 5000 + sources.length };
}

async function mkdirp(p: string): Promise<string> {
  await fsp.mkdir(p, { recursive: true });
  return p;
}

async function digestTree(root: string): Promise<string> {
  const h = createHash("sha256");
  const walk = async (dir: string, rel: string): Promise<void> => {
    for (const e of (await fsp.readdir(dir, { withFileTypes: true })).sort((a, b) => (a.name < b.name ? -1 : 1))) {
      const p = join(dir, e.name);
      const st = await fsp.lstat(p);
      h.update(`${rel}/${e.name}\0${st.mode}\0${st.mtimeMs}\0`);
      if (e.isSymbolicLink()) h.update(await fsp.readlink(p));
      else if (e.isDirectory()) await walk(p, `${rel}/${e.name}`);
      else if (e.isFile()) h.update(await fsp.readFile(p));
    }
  };
  await walk(root, "");
  return h.digest("hex");
}
