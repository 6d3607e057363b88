// The site task against a real MariaDB server: a --single-transaction dump taken while transfers
// run restores to a database whose balances add up, and whose row counts equal the manifest's
// (counted from the dump stream itself).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { promises as fsp, readFileSync } from "node:fs";
import { join } from "node:path";
import { describeRun, runCommand, runRestic, runSitekeep, tempDir, type TempDir } from "./helpers/run.js";
import { startMariadb, type MariaServer } from "./helpers/dbservers.js";
import type { SiteManifest } from "../src/site/task.js";

let tmp: TempDir;
let db: MariaServer | undefined;
let writer: ChildProcess | undefined;

before(async () => {
  tmp = await tempDir("site-mariadb");
  db = await startMariadb();
});

after(async () => {
  writer?.kill("SIGKILL");
  await db?.stop();
  await tmp?.cleanup();
});

test("a MariaDB dump taken while transfers run is consistent and its row counts match the manifest", async (t) => {
  if (!db) {
    t.skip("MariaDB is not installed (scripts/test.sh installs mariadb-server)");
    return;
  }
  const m = db;
  await m.createDb("shop");
  await m.sql(
    `CREATE TABLE accounts (id INT PRIMARY KEY, balance BIGINT NOT NULL) ENGINE=InnoDB;
     CREATE TABLE transfers (id INT AUTO_INCREMENT PRIMARY KEY, amount INT NOT NULL, note TEXT) ENGINE=InnoDB;
     INSERT INTO accounts VALUES (1, 500000), (2, 500000), (3, 0);
     INSERT INTO transfers (amount, note) VALUES (0, 'it''s (a) start');`,
    "shop",
  );
  // Transfers keep the total at 1,000,000 in every committed state; only a dump that mixes two
  // moments in time could see another total.
  const sql = "START TRANSACTION; UPDATE accounts SET balance = balance - 7 WHERE id = 1; INSERT INTO transfers (amount, note) VALUES (7, 'move (x)'); UPDATE accounts SET balance = balance + 7 WHERE id = 3; COMMIT;";
  const loop = `while true; do mariadb ${m.clientArgs.join(" ")} shop -e "${sql}" || exit 1; done`;
  writer = spawn("/bin/sh", ["-c", loop], { stdio: "ignore" });
  const count = async (): Promise<number> => Number((await m.sql("SELECT COUNT(*) FROM transfers", "shop")).trim());
  const deadline = Date.now() + 20_000;
  while ((await count()) < 30 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));

  const site = join(tmp.path, "site");
  await fsp.mkdir(site);
  await fsp.writeFile(join(site, "index.html"), "<h1>shop</h1>\n");
  await fsp.mkdir(join(tmp.path, "dest"));
  const config = join(tmp.path, "sitekeep.yaml");
  await fsp.writeFile(
    config,
    `site: SHOP
backup:
  destination: ${join(tmp.path, "dest")}
databases:
  - { name: shop, kind: mariadb, url: "mysql://root@localhost/shop", socket: ${m.socket} }
files:
  - { path: ${site} }
stateDir: ${join(tmp.path, "state")}
`,
  );
  const env = { SITEKEEP_PASSWORD: "pw", SITEKEEP_SCRYPT_N: "1024", HOME: tmp.path };
  const r = await runSitekeep(["site", "backup", "--json", "--config", config], { env });
  const during = await count();
  writer.kill("SIGKILL");
  writer = undefined;
  assert.equal(r.code, 0, describeRun(r));
  assert.equal(JSON.parse(r.stdout).message_id, 5035);

  const target = join(tmp.path, "restored");
  const rs = await runSitekeep(["restore", "latest", "--target", target, "--include", "/.sitekeep", "-r", join(tmp.path, "dest")], { env });
  assert.equal(rs.code, 0, describeRun(rs));
  const manifest = JSON.parse(readFileSync(join(target, ".sitekeep", "manifest.json"), "utf8")) as SiteManifest;
  const entry = manifest.databases[0];
  assert.equal(entry.kind, "mariadb");
  assert.match(entry.engineVersion, /MariaDB/);
  assert.ok(entry.tables.transfers > 1 && entry.tables.transfers <= during, `manifest count ${entry.tables.transfers}, live ${during}`);

  await m.createDb("restored");
  const load = await runCommand("/bin/sh", ["-c", `mariadb ${m.clientArgs.join(" ")} restored < ${join(target, entry.dump.file)}`]);
  assert.equal(load.code, 0, describeRun(load));
  const total = (await m.sql("SELECT SUM(balance) FROM accounts", "restored")).trim();
  assert.equal(total, "1000000", "the dump is one consistent moment");
  const moved = (await m.sql("SELECT (SELECT balance FROM accounts WHERE id = 3) = (SELECT SUM(amount) FROM transfers)", "restored")).trim();
  assert.equal(moved, "1", "accounts and transfers come from the same moment");
  for (const [table, rows] of Object.entries(entry.tables)) {
    assert.equal(Number((await m.sql(`SELECT COUNT(*) FROM \`${table}\``, "restored")).trim()), rows, `rows of ${table}`);
  }
  const check = await runRestic(["-r", join(tmp.path, "dest"), "check", "--read-data"], { env: { RESTIC_PASSWORD: "pw", HOME: tmp.path } });
  assert.equal(check.code, 0, describeRun(check));
});
