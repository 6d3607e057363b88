// Throwaway database servers for integration tests: a private PostgreSQL or MariaDB instance in a
// fresh temp dir, listening on 127.0.0.1 (on a free port) and on a unix socket inside that dir.
//
// Nothing global is touched: no system service, no /etc config (MariaDB runs with --no-defaults),
// no shared socket dir. Every server is stopped and its dir removed by stop(); if a test forgets,
// a process 'exit' handler kills the server synchronously so no database outlives the test process.
//
// Running as root (as CI does): PostgreSQL refuses to run as root, so its temp dir is chowned to the
// `postgres` system user and initdb/pg_ctl run via `runuser -u postgres --`; that user must be able
// to traverse to the temp dir (fine under /tmp, not under e.g. /root). MariaDB runs as root with
// --user=root.
import { execFile, execFileSync, spawn, type ChildProcess } from "node:child_process";
import * as fs from "node:fs";
import * as fsp from "node:fs/promises";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";

const isRoot = (): boolean => typeof process.getuid === "function" && process.getuid() === 0;

// ---- shared plumbing ---------------------------------------------------------------------------

interface ExecResult {
  stdout: string;
  stderr: string;
}

class CommandError extends Error {
  constructor(
    message: string,
    readonly stdout: string,
    readonly stderr: string,
    readonly code: number | string | null,
  ) {
    super(message);
  }
}

function run(
  cmd: string,
  args: string[],
  opts?: { cwd?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number },
): Promise<ExecResult> {
  return new Promise((resolve, reject) => {
    const child = execFile(
      cmd,
      args,
      {
        cwd: opts?.cwd,
        env: opts?.env ?? process.env,
        timeout: opts?.timeoutMs ?? 60_000,
        killSignal: "SIGKILL",
        maxBuffer: 256 * 1024 * 1024,
        encoding: "utf8",
      },
      (err, stdout, stderr) => {
        if (err) {
          const e = err as Error & { code?: number | string | null; signal?: string | null };
          reject(
            new CommandError(
              `${cmd} ${args.join(" ")} failed (${e.code ?? e.signal ?? "?"}): ${stderr.trim() || e.message}`,
              stdout,
              stderr,
              e.code ?? null,
            ),
          );
        } else {
          resolve({ stdout, stderr });
        }
      },
    );
    child.stdin?.end();
  });
}

/** A TCP port that was free a moment ago (bound on 127.0.0.1 port 0, then released). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const addr = srv.address();
      const port = typeof addr === "object" && addr !== null ? addr.port : 0;
      srv.close(() => (port > 0 ? resolve(port) : reject(new Error("could not get a free port"))));
    });
  });
}

// One 'exit' handler for all servers; each server registers a synchronous emergency stop.
// 'exit' does not fire when the process is killed by a signal (e.g. the test runner's SIGTERM on
// Ctrl-C), so SIGINT/SIGTERM/SIGHUP also run the stops, then re-raise the signal if no one else
// handles it (so the process still dies of it). SIGKILL cannot be caught: then servers leak.
const emergencyStops = new Set<() => void>();
let handlersInstalled = false;

function runEmergencyStops(): void {
  for (const stop of [...emergencyStops]) {
    try {
      stop();
    } catch {
      // best effort: the process is going away anyway
    }
  }
  emergencyStops.clear();
}

function registerEmergencyStop(fn: () => void): () => void {
  if (!handlersInstalled) {
    handlersInstalled = true;
    process.on("exit", runEmergencyStops);
    for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
      const onSignal = (): void => {
        runEmergencyStops();
        process.removeListener(sig, onSignal);
        if (process.listenerCount(sig) === 0) process.kill(process.pid, sig);
      };
      process.on(sig, onSignal);
    }
  }
  emergencyStops.add(fn);
  return () => emergencyStops.delete(fn);
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function readTail(file: string, max = 4000): string {
  try {
    const text = fs.readFileSync(file, "utf8");
    return text.length > max ? text.slice(-max) : text;
  } catch {
    return "";
  }
}

function isExecutable(p: string): boolean {
  try {
    fs.accessSync(p, fs.constants.X_OK);
    return fs.statSync(p).isFile();
  } catch {
    return false;
  }
}

/** First executable among `dirs/name` and `$PATH/name`, or undefined. */
function findBinary(name: string, dirs: string[]): string | undefined {
  const pathDirs = (process.env.PATH ?? "").split(":").filter(Boolean);
  for (const dir of [...dirs, ...pathDirs]) {
    const p = path.join(dir, name);
    if (isExecutable(p)) return p;
  }
  return undefined;
}

// ---- PostgreSQL --------------------------------------------------------------------------------

export interface PgServer {
  /** Always "127.0.0.1". */
  readonly host: string;
  readonly port: number;
  /** Superuser name: "postgres" (trust authentication, no password). */
  readonly user: string;
  /** The server's temp dir (removed by stop()). Holds data/, the log file and the unix socket. */
  readonly dir: string;
  /** The data directory (`dir`/data). */
  readonly dataDir: string;
  /** Directory of the unix socket (`dir`/socket). */
  readonly socketDir: string;
  /** Directory of the server's binaries (initdb, pg_ctl, pg_dump, psql, ... of the same version). */
  readonly binDir: string;
  /** The server's log file (`dir`/postgres.log). */
  readonly logFile: string;
  /** PGHOST/PGPORT/PGUSER for child processes (merge over process.env). */
  readonly env: Readonly<Record<string, string>>;
  /** `postgres://postgres@127.0.0.1:PORT/db`. */
  url(db?: string): string;
  /** Runs SQL with psql (-X -At, ON_ERROR_STOP) as the superuser; resolves to psql's stdout. */
  psql(sql: string, db?: string): Promise<string>;
  /** CREATE DATABASE "name". */
  createDb(name: string): Promise<void>;
  /** Stops the server (immediate mode) and removes its temp dir. Idempotent. */
  stop(): Promise<void>;
}

/** Directory of the newest installed PostgreSQL (15 preferred), or undefined if none. */
export function findPostgresBinDir(): string | undefined {
  const root = "/usr/lib/postgresql";
  const ok = (v: string): boolean =>
    ["initdb", "pg_ctl", "postgres"].every((b) => isExecutable(path.join(root, v, "bin", b)));
  if (ok("15")) return path.join(root, "15", "bin");
  let versions: string[] = [];
  try {
    versions = fs.readdirSync(root).filter((v) => /^\d+(\.\d+)?$/.test(v) && ok(v));
  } catch {
    return undefined;
  }
  versions.sort((a, b) => parseFloat(b) - parseFloat(a));
  return versions.length > 0 ? path.join(root, versions[0], "bin") : undefined;
}

export async function startPostgres(opts?: { dir?: string }): Promise<PgServer> {
  const binDir = findPostgresBinDir();
  if (binDir === undefined) {
    throw new Error(
      "PostgreSQL server binaries not found under /usr/lib/postgresql (apt-get install postgresql)",
    );
  }
  const root = isRoot();
  const parent = opts?.dir ?? os.tmpdir();
  await fsp.mkdir(parent, { recursive: true });
  const dir = await fsp.mkdtemp(path.join(parent, "sitekeep-pg-"));
  const dataDir = path.join(dir, "data");
  const socketDir = path.join(dir, "socket");
  const logFile = path.join(dir, "postgres.log");
  await fsp.mkdir(socketDir);

  let pgUid = -1;
  let pgGid = -1;
  if (root) {
    const ids = await run("id", ["-u", "postgres"]).then(
      async (u) => [Number(u.stdout.trim()), Number((await run("id", ["-g", "postgres"])).stdout.trim())],
      () => undefined,
    );
    if (ids === undefined) {
      await fsp.rm(dir, { recursive: true, force: true });
      throw new Error("running as root but there is no 'postgres' user to run PostgreSQL as");
    }
    [pgUid, pgGid] = ids;
    await fsp.chown(dir, pgUid, pgGid);
    await fsp.chown(socketDir, pgUid, pgGid);
    // The postgres user must be able to reach the dir: every parent needs o+x (true under /tmp).
    try {
      await run("runuser", ["-u", "postgres", "--", "test", "-w", dir, "-a", "-x", dir], { cwd: "/" });
    } catch (err) {
      await fsp.rm(dir, { recursive: true, force: true });
      throw new Error(
        `user postgres cannot reach ${dir} (a parent dir lacks o+x?), or runuser is missing: ${(err as Error).message}`,
      );
    }
  }

  // As root: runuser -u postgres -- BIN ARGS; cwd is the temp dir (the caller's cwd may be unreadable).
  const asPgArgv = (bin: string, args: string[]): [string, string[]] =>
    root
      ? ["runuser", ["-u", "postgres", "--", path.join(binDir, bin), ...args]]
      : [path.join(binDir, bin), args];
  const env: NodeJS.ProcessEnv = { ...process.env, LC_ALL: "C.UTF-8", LANG: "C.UTF-8" };
  for (const k of Object.keys(env)) if (k.startsWith("PG")) delete env[k];
  const runPg = (bin: string, args: string[], timeoutMs = 60_000): Promise<ExecResult> => {
    const [cmd, argv] = asPgArgv(bin, args);
    return run(cmd, argv, { cwd: dir, env, timeoutMs });
  };
  const stopSync = (): void => {
    const [cmd, argv] = asPgArgv("pg_ctl", ["-D", dataDir, "-m", "immediate", "-w", "stop"]);
    try {
      execFileSync(cmd, argv, { cwd: dir, env, stdio: "ignore", timeout: 30_000 });
    } catch {
      // Fall back to killing the postmaster named in postmaster.pid.
      try {
        const pid = Number(fs.readFileSync(path.join(dataDir, "postmaster.pid"), "utf8").split("\n")[0]);
        if (pid > 0) process.kill(pid, "SIGKILL");
      } catch {
        // not running
      }
    }
    fs.rmSync(dir, { recursive: true, force: true });
  };

  let started = false;
  const unregister = registerEmergencyStop(stopSync);
  try {
    const initArgs = ["-D", dataDir, "--auth=trust", "-U", "postgres", "--encoding=UTF8", "--no-sync"];
    try {
      await runPg("initdb", [...initArgs, "--locale=C.UTF-8"]);
    } catch {
      await fsp.rm(dataDir, { recursive: true, force: true });
      await runPg("initdb", [...initArgs, "--no-locale"]);
    }

    // The free port can be taken by someone else before the server binds it: retry with a new one.
    let port = 0;
    for (let attempt = 1; ; attempt++) {
      port = await freePort();
      const serverOpts = [
        "-c listen_addresses=127.0.0.1",
        `-c port=${port}`,
        `-c unix_socket_directories=${socketDir}`,
        "-c fsync=off",
        "-c synchronous_commit=off",
        "-c full_page_writes=off",
      ].join(" ");
      try {
        await runPg(
          "pg_ctl",
          ["-D", dataDir, "-l", logFile, "-o", serverOpts, "-w", "-t", "60", "start"],
          90_000,
        );
        break;
      } catch (err) {
        const log = readTail(logFile);
        if (attempt < 3 && /could not bind|address already in use/i.test(log)) continue;
        throw new Error(`${(err as Error).message}\n--- ${logFile} ---\n${log}`);
      }
    }
    started = true;

    const host = "127.0.0.1";
    const user = "postgres";
    const pgEnv = { PGHOST: host, PGPORT: String(port), PGUSER: user };
    const psqlBin = isExecutable(path.join(binDir, "psql")) ? path.join(binDir, "psql") : "/usr/bin/psql";
    let stopped = false;

    const server: PgServer = {
      host,
      port,
      user,
      dir,
      dataDir,
      socketDir,
      binDir,
      logFile,
      env: pgEnv,
      url: (db = "postgres") => `postgres://${user}@${host}:${port}/${encodeURIComponent(db)}`,
      psql: async (sql, db = "postgres") => {
        const args = ["-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", host, "-p", String(port), "-U", user];
        const r = await run(psqlBin, [...args, "-d", db, "-c", sql], { env: { ...env, ...pgEnv } });
        return r.stdout;
      },
      createDb: async (name) => {
        await server.psql(`CREATE DATABASE "${name.replace(/"/g, '""')}"`);
      },
      stop: async () => {
        if (stopped) return;
        stopped = true;
        try {
          await runPg("pg_ctl", ["-D", dataDir, "-m", "immediate", "-w", "stop"], 30_000);
        } catch (err) {
          stopSync(); // kills via postmaster.pid if pg_ctl could not, removes the dir
          unregister();
          throw err;
        }
        await fsp.rm(dir, { recursive: true, force: true });
        unregister();
      },
    };
    return server;
  } finally {
    if (!started) {
      unregister();
      stopSync();
    }
  }
}

// ---- MariaDB -----------------------------------------------------------------------------------

export interface MariaServer {
  /** Always "127.0.0.1". */
  readonly host: string;
  readonly port: number;
  /** Path of the unix socket. */
  readonly socket: string;
  /** Database superuser: "root" with no password (reachable over the socket and 127.0.0.1). */
  readonly user: string;
  /** The server's temp dir (removed by stop()). Holds data/, the socket and the error log. */
  readonly dir: string;
  readonly dataDir: string;
  /** The server's error log. */
  readonly logFile: string;
  /** Connection arguments for mariadb / mariadb-dump / mariadb-admin: --no-defaults --socket=… -u root. */
  readonly clientArgs: readonly string[];
  /** Runs SQL with `mariadb -N -B` as root; resolves to its stdout (tab-separated, no header). */
  sql(sql: string, db?: string): Promise<string>;
  /** CREATE DATABASE `name`. */
  createDb(name: string): Promise<void>;
  /** Shuts the server down (SIGKILL if it does not exit in time) and removes its temp dir. Idempotent. */
  stop(): Promise<void>;
}

interface MariaBins {
  mariadbd: string;
  installDb: string;
  client: string;
  admin: string;
}

/** Paths of the MariaDB server and client programs, or undefined if any is missing. */
export function findMariadbBinaries(): MariaBins | undefined {
  const dirs = ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"];
  const mariadbd = findBinary("mariadbd", dirs) ?? findBinary("mysqld", dirs);
  const installDb = findBinary("mariadb-install-db", dirs) ?? findBinary("mysql_install_db", dirs);
  const client = findBinary("mariadb", dirs);
  const admin = findBinary("mariadb-admin", dirs) ?? findBinary("mysqladmin", dirs);
  if (!mariadbd || !installDb || !client || !admin) return undefined;
  return { mariadbd, installDb, client, admin };
}

/** Starts a throwaway MariaDB server; resolves to undefined when MariaDB is not installed. */
export async function startMariadb(opts?: { dir?: string }): Promise<MariaServer | undefined> {
  const bins = findMariadbBinaries();
  if (bins === undefined) return undefined;
  const root = isRoot();
  const parent = opts?.dir ?? os.tmpdir();
  await fsp.mkdir(parent, { recursive: true });
  const dir = await fsp.mkdtemp(path.join(parent, "sitekeep-maria-"));
  const dataDir = path.join(dir, "data");
  const socket = path.join(dir, "mysqld.sock");
  const logFile = path.join(dir, "mariadbd.err");
  const pidFile = path.join(dir, "mariadbd.pid");
  const userArgs = root ? ["--user=root"] : [];
  const clientArgs = ["--no-defaults", `--socket=${socket}`, "-u", "root"];
  const env: NodeJS.ProcessEnv = { ...process.env };
  for (const k of ["MYSQL_HOST", "MYSQL_TCP_PORT", "MYSQL_UNIX_PORT", "MYSQL_PWD"]) delete env[k];

  let child: ChildProcess | undefined;
  let exited = false;
  const killSync = (): void => {
    if (child?.pid !== undefined && !exited) {
      try {
        process.kill(child.pid, "SIGKILL");
      } catch {
        // already gone
      }
    }
    fs.rmSync(dir, { recursive: true, force: true });
  };
  const unregister = registerEmergencyStop(killSync);

  let started = false;
  try {
    await run(
      bins.installDb,
      [
        "--no-defaults",
        `--datadir=${dataDir}`,
        "--auth-root-authentication-method=normal",
        "--skip-test-db",
        ...userArgs,
      ],
      { cwd: dir, env, timeoutMs: 120_000 },
    );

    let port = 0;
    for (let attempt = 1; ; attempt++) {
      port = await freePort();
      exited = false;
      const proc = spawn(
        bins.mariadbd,
        [
          "--no-defaults",
          `--datadir=${dataDir}`,
          `--socket=${socket}`,
          `--port=${port}`,
          "--bind-address=127.0.0.1",
          `--pid-file=${pidFile}`,
          `--log-error=${logFile}`,
          "--innodb-buffer-pool-size=32M",
          "--innodb-flush-log-at-trx-commit=0",
          "--innodb-doublewrite=0",
          ...userArgs,
        ],
        { cwd: dir, env, stdio: "ignore" },
      );
      child = proc;
      proc.unref(); // a forgotten server must not keep the test process alive; the exit handler kills it
      proc.once("exit", () => {
        exited = true;
      });
      proc.once("error", () => {
        exited = true;
      });

      const deadline = Date.now() + 30_000;
      let alive = false;
      while (!exited && Date.now() < deadline) {
        try {
          await run(bins.admin, [...clientArgs, "ping"], { env, timeoutMs: 5_000 });
          alive = true;
          break;
        } catch {
          await sleep(100);
        }
      }
      if (alive) break;
      const log = readTail(logFile);
      if (exited && attempt < 3 && /bind|address already in use/i.test(log)) continue;
      if (!exited) killSync();
      throw new Error(
        `mariadbd ${exited ? "exited during startup" : "did not accept connections within 30 s"}\n--- ${logFile} ---\n${log}`,
      );
    }
    started = true;

    const proc = child!;
    let stopped = false;
    const server: MariaServer = {
      host: "127.0.0.1",
      port,
      socket,
      user: "root",
      dir,
      dataDir,
      logFile,
      clientArgs,
      sql: async (sql, db) => {
        const args = [...clientArgs, "-N", "-B", ...(db !== undefined ? ["-D", db] : []), "-e", sql];
        return (await run(bins.client, args, { env })).stdout;
      },
      createDb: async (name) => {
        await server.sql(`CREATE DATABASE \`${name.replace(/`/g, "``")}\``);
      },
      stop: async () => {
        if (stopped) return;
        stopped = true;
        if (!exited) {
          const gone = new Promise<void>((resolve) => {
            if (exited) resolve();
            else proc.once("exit", () => resolve());
          });
          try {
            await run(bins.admin, [...clientArgs, "--shutdown-timeout=0", "shutdown"], {
              env,
              timeoutMs: 30_000,
            });
          } catch {
            // fall through to the kill below
          }
          const timer = setTimeout(() => {
            try {
              if (!exited && proc.pid !== undefined) process.kill(proc.pid, "SIGKILL");
            } catch {
              // exited meanwhile
            }
          }, 10_000);
          await gone;
          clearTimeout(timer);
        }
        await fsp.rm(dir, { recursive: true, force: true });
        unregister();
      },
    };
    return server;
  } finally {
    if (!started) {
      unregister();
      killSync();
    }
  }
}
