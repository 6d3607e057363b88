// Self-test of the throwaway database servers: each starts, serves a database with a table over the
// helper's client and over TCP, and after stop() is gone together with its temp dir.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import * as fs from "node:fs";
import * as net from "node:net";
import { describe, it } from "node:test";
import { promisify } from "node:util";
import { startMariadb, startPostgres } from "./dbservers.js";

const execFileP = promisify(execFile);

/** Resolves true if something accepts TCP connections on 127.0.0.1:port. */
function tcpOpen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = net.connect({ host: "127.0.0.1", port });
    sock.once("connect", () => {
      sock.destroy();
      resolve(true);
    });
    sock.once("error", () => resolve(false));
  });
}

describe("throwaway database servers", () => {
  it("PostgreSQL: start, create db and table, insert/select, stop", async (t) => {
    let t0 = Date.now();
    const pg = await startPostgres();
    const startMs = Date.now() - t0;
    try {
      assert.equal(pg.host, "127.0.0.1");
      assert.equal(pg.user, "postgres");
      assert.equal(pg.url(), `postgres://postgres@127.0.0.1:${pg.port}/postgres`);
      assert.equal(pg.env.PGPORT, String(pg.port));
      assert.ok(fs.existsSync(pg.dir));
      assert.ok(await tcpOpen(pg.port));

      assert.match(await pg.psql("SHOW server_version"), /^\d+/);
      await pg.createDb("shop");
      assert.equal(pg.url("shop"), `postgres://postgres@127.0.0.1:${pg.port}/shop`);
      await pg.psql(
        "CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL);" +
          "INSERT INTO items VALUES (1, 'apple'), (2, 'pear'), (3, 'ünïcode');",
        "shop",
      );
      assert.equal(
        await pg.psql("SELECT id, name FROM items ORDER BY id", "shop"),
        "1|apple\n2|pear\n3|ünïcode\n",
      );

      // An SQL error rejects (ON_ERROR_STOP).
      await assert.rejects(pg.psql("SELECT * FROM no_such_table", "shop"), /no_such_table/);

      // Child processes reach the server through pg.env (pg_dump of the same version as the server).
      const { stdout } = await execFileP(`${pg.binDir}/pg_dump`, ["-d", "shop", "-t", "items"], {
        env: { ...process.env, ...pg.env },
      });
      assert.match(stdout, /CREATE TABLE public\.items/);
      assert.match(stdout, /ünïcode/);
    } finally {
      t0 = Date.now();
      await pg.stop();
      t.diagnostic(`postgres start ${startMs} ms, stop ${Date.now() - t0} ms`);
    }
    assert.ok(!fs.existsSync(pg.dir), "temp dir removed");
    assert.ok(!(await tcpOpen(pg.port)), "port closed");
    await pg.stop(); // idempotent
  });

  it("PostgreSQL: two servers run side by side", async () => {
    const [a, b] = await Promise.all([startPostgres(), startPostgres()]);
    try {
      assert.notEqual(a.port, b.port);
      await a.psql("CREATE TABLE only_in_a (x int)");
      assert.equal(await a.psql("SELECT count(*) FROM pg_tables WHERE tablename = 'only_in_a'"), "1\n");
      assert.equal(await b.psql("SELECT count(*) FROM pg_tables WHERE tablename = 'only_in_a'"), "0\n");
    } finally {
      await Promise.all([a.stop(), b.stop()]);
    }
    assert.ok(!fs.existsSync(a.dir) && !fs.existsSync(b.dir));
  });

  it("MariaDB: start, create db and table, insert/select, stop", async (t) => {
    let t0 = Date.now();
    const maria = await startMariadb();
    const startMs = Date.now() - t0;
    if (maria === undefined) {
      t.skip("MariaDB is not installed (apt-get install mariadb-server mariadb-client)");
      return;
    }
    try {
      assert.equal(maria.host, "127.0.0.1");
      assert.ok(fs.existsSync(maria.socket));
      assert.ok(await tcpOpen(maria.port));

      assert.match(await maria.sql("SELECT VERSION()"), /MariaDB/);
      await maria.createDb("shop");
      await maria.sql(
        "CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(50) NOT NULL) DEFAULT CHARSET=utf8mb4;" +
          "INSERT INTO items VALUES (1, 'apple'), (2, 'pear'), (3, 'ünïcode');",
        "shop",
      );
      assert.equal(
        await maria.sql("SELECT id, name FROM items ORDER BY id", "shop"),
        "1\tapple\n2\tpear\n3\tünïcode\n",
      );
      await assert.rejects(maria.sql("SELECT * FROM no_such_table", "shop"), /no_such_table/);

      // root has no password and is a real user (no --skip-grant-tables), so mariadb-dump works as usual,
      // over the socket and over TCP.
      const { stdout } = await execFileP("mariadb-dump", [...maria.clientArgs, "shop", "items"]);
      assert.match(stdout, /CREATE TABLE `items`/);
      assert.match(stdout, /ünïcode/);
      const tcp = await execFileP("mariadb", [
        "--no-defaults",
        "-h",
        "127.0.0.1",
        "-P",
        String(maria.port),
        "-u",
        "root",
        "-N",
        "-B",
        "-e",
        "SELECT COUNT(*) FROM shop.items",
      ]);
      assert.equal(tcp.stdout, "3\n");
    } finally {
      t0 = Date.now();
      await maria.stop();
      t.diagnostic(`mariadb start ${startMs} ms, stop ${Date.now() - t0} ms`);
    }
    assert.ok(!fs.existsSync(maria.dir), "temp dir removed");
    assert.ok(!(await tcpOpen(maria.port)), "port closed");
    await maria.stop(); // idempotent
  });
});
