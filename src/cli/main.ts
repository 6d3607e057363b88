// The `sitekeep` command line: parses arguments and calls the operations underneath. Commands stay
// thin; every error becomes one line (or a JSON object with --json) and restic's exit codes.
import { Command, CommanderError, Option } from "commander";
import { printError } from "./output.js";
import { guardOutput, takeOutputFailure } from "./closed-output.js";
import { heapPolicyFor, keepHeapCompact } from "../platform/heap-policy.js";
import { returnLargeBuffersToTheSystem } from "../platform/native.js";
import type { GlobalOptions } from "./global-options.js";
import { PROGRAM_VERSION } from "../version.js";

const collect = (v: string, prev: string[] = []): string[] => [...prev, v];

function program(): Command {
  const p = new Command("sitekeep")
    .description("Backup and recovery for server sites, in restic-format repositories")
    .version(PROGRAM_VERSION.split(" ")[1], "-V, --version")
    .option("-r, --repo <url>", "repository: a path or s3:http(s)://host/bucket/prefix (env SITEKEEP_REPOSITORY)")
    .option("--password-file <file>", "read the repository password from a file (env SITEKEEP_PASSWORD_FILE)")
    .option("--password-command <cmd>", "run a command that prints the password (env SITEKEEP_PASSWORD_COMMAND)")
    .option("--json", "machine-readable output (restic's field names)")
    .option("-q, --quiet", "print only errors")
    .option("--no-cache", "do not use the local cache of index and snapshot files")
    .option("--append-only", "never delete anything (forget, prune and key removal are refused)")
    .option("--pack-size <MiB>", "target pack size in MiB (default 16)")
    .showHelpAfterError("(run with --help for usage)")
    .exitOverride();

  const g = (cmd: Command): GlobalOptions => cmd.optsWithGlobals<GlobalOptions>();
  const run = (fn: (...a: never[]) => Promise<number>) =>
    async (...args: unknown[]): Promise<void> => {
      process.exitCode = await (fn as (...a: unknown[]) => Promise<number>)(...args);
    };
  // The action of a command that opens the repository the global options name, given those options
  // first and then commander's arguments: its key is unlocked while the command's modules load
  // (key-ahead.ts, itself loaded here so that other commands, --help and --version do not load the
  // backends and the key files' code).
  const opensRepository = (fn: (gl: GlobalOptions, ...a: never[]) => Promise<number>) =>
    run(async (...args: never[]) => {
      const gl = g(args[args.length - 1] as Command); // commander passes the command last
      (await import("./key-ahead.js")).deriveKeyAhead(gl);
      return fn(gl, ...args);
    });

  p.command("init")
    .description("create a new repository")
    .addOption(new Option("--repository-version <v>", "format version: 2 (default) or 1"))
    .action(run(async (o: { repositoryVersion?: string }, cmd: Command) => (await import("./commands/init.js")).initCommand(g(cmd), o)));

  p.command("backup")
    .description("back up files and folders (or a command's output) into a new snapshot")
    .argument("[paths...]", "files and folders to back up")
    .option("--tag <tags>", "tag the snapshot (repeatable, comma-separated)", collect)
    .option("--host <name>", "hostname to record in the snapshot")
    .option("-e, --exclude <pattern>", "exclude paths matching the pattern (repeatable)", collect)
    .option("--exclude-file <file>", "read exclude patterns from a file (repeatable)", collect)
    .option("-x, --one-file-system", "do not cross filesystem boundaries")
    .option("--parent <snapshot>", "compare with this snapshot instead of the latest of the same host and paths")
    .option("-f, --force", "read every file, ignoring the parent snapshot")
    .option("--time <time>", "record this time instead of now (\"2006-01-02 15:04:05\", local time, or RFC 3339)")
    .option("--stdin-from-command <cmd>", "back up the standard output of a command, streamed")
    .option("--stdin-filename <name>", "file name for --stdin-from-command", "stdin")
    .action(opensRepository(async (gl, paths: string[], o) => (await import("./commands/backup.js")).backupCommand(gl, paths, o)));

  p.command("snapshots")
    .description("list snapshots")
    .argument("[ids...]", "only these snapshot IDs (prefixes)")
    .option("--host <name>", "only snapshots of this host (repeatable)", collect)
    .option("--tag <tags>", "only snapshots with these tags (repeatable)", collect)
    .option("--path <path>", "only snapshots of this path (repeatable)", collect)
    .action(opensRepository(async (gl, ids: string[], o) => (await import("./commands/snapshots.js")).snapshotsCommand(gl, ids, o)));

  p.command("ls")
    .description("list the files in a snapshot")
    .argument("<snapshot>", "snapshot ID, prefix or latest")
    .option("-l, --long", "long listing")
    .option("--host <name>", "with latest: only this host", collect)
    .option("--tag <tags>", "with latest: only these tags", collect)
    .option("--path <path>", "with latest: only this path", collect)
    .action(opensRepository(async (gl, ref: string, o) => (await import("./commands/snapshots.js")).lsCommand(gl, ref, o)));

  p.command("restore")
    .description("restore a snapshot")
    .argument("<snapshot>", "snapshot ID, prefix or latest")
    .requiredOption("-t, --target <dir>", "folder to restore into")
    .option("-i, --include <pattern>", "restore only paths matching the pattern (repeatable)", collect)
    .option("-e, --exclude <pattern>", "do not restore paths matching the pattern (repeatable)", collect)
    .option("--dry-run", "list what would be restored, write nothing")
    .option("-v, --verbose", "list every restored item")
    .option("--host <name>", "with latest: only this host", collect)
    .option("--tag <tags>", "with latest: only these tags", collect)
    .option("--path <path>", "with latest: only this path", collect)
    .action(opensRepository(async (gl, ref: string, o) => (await import("./commands/restore.js")).restoreCommand(gl, ref, o)));

  p.command("copy")
    .description("copy snapshots from another repository into this one (-r is the destination)")
    .argument("[snapshots...]", "only these snapshots (IDs, prefixes or latest); default all")
    .option("--from-repo <url>", "source repository (env SITEKEEP_FROM_REPOSITORY)")
    .option("--from-password-file <file>", "read the source password from a file (env SITEKEEP_FROM_PASSWORD_FILE; or SITEKEEP_FROM_PASSWORD)")
    .option("--from-password-command <cmd>", "run a command that prints the source password (env SITEKEEP_FROM_PASSWORD_COMMAND)")
    .option("--host <name>", "only snapshots of this host (repeatable)", collect)
    .option("--tag <tags>", "only snapshots with these tags (repeatable)", collect)
    .option("--path <path>", "only snapshots of this path (repeatable)", collect)
    .action(opensRepository(async (gl, ids: string[], o) => (await import("./commands/copy.js")).copyCommand(gl, ids, o)));

  p.command("check")
    .description("verify the repository's structure (and with --read-data every byte)")
    .option("--read-data", "read and verify all data")
    .option("--read-data-subset <subset>", "read a subset of the data: n/m or x%")
    .action(opensRepository(async (gl, o) => (await import("./commands/check.js")).checkCommand(gl, o)));

  const forget = p
    .command("forget")
    .description("remove snapshots by a retention policy (or by ID); the newest of each group is always kept")
    .argument("[ids...]", "remove these snapshots instead of applying a policy");
  for (const k of ["last", "hourly", "daily", "weekly", "monthly", "yearly"]) forget.option(`--keep-${k} <n>`, `keep the ${k === "last" ? "n newest snapshots" : `newest snapshot of the last n ${k} periods`} (-1: unlimited)`);
  for (const k of ["", "-hourly", "-daily", "-weekly", "-monthly", "-yearly"]) forget.option(`--keep-within${k} <duration>`, `keep ${k ? k.slice(1) + " snapshots" : "all snapshots"} within the duration (e.g. 1y2m7d) before the newest`);
  forget
    .option("--keep-tag <tags>", "keep snapshots with these tags (repeatable, comma-separated)", collect)
    .option("--group-by <fields>", "group snapshots by host, paths and/or tags", "host,paths")
    .option("--host <name>", "only snapshots of this host", collect)
    .option("--tag <tags>", "only snapshots with these tags", collect)
    .option("--path <path>", "only snapshots of this path", collect)
    .option("-n, --dry-run", "show what would be removed")
    .option("--prune", "prune the repository afterwards")
    .option("--max-unused <limit>", "with --prune: tolerated unused data (5%, 1G, unlimited)")
    .option("--max-repack-size <size>", "with --prune: repack at most this much")
    .action(opensRepository(async (gl, ids: string[], o) => (await import("./commands/forget.js")).forgetCommand(gl, ids, o)));

  p.command("prune")
    .description("remove data that no snapshot needs")
    .option("-n, --dry-run", "show what would be removed")
    .option("--max-unused <limit>", "tolerated unused data: a percentage, a size or unlimited", "5%")
    .option("--max-repack-size <size>", "repack at most this much data")
    .action(opensRepository(async (gl, o) => (await import("./commands/forget.js")).pruneCommand(gl, o)));

  p.command("unlock")
    .description("remove stale locks")
    .option("--remove-all", "remove all locks, also those of running processes")
    .action(opensRepository(async (gl, o) => (await import("./commands/unlock.js")).unlockCommand(gl, o)));

  const key = p.command("key").description("manage the passwords (keys) of the repository");
  key.command("list").description("list keys").action(opensRepository(async (gl) => (await import("./commands/key.js")).keyListCommand(gl)));
  key.command("add")
    .description("add a password (env SITEKEEP_NEW_PASSWORD or --new-password-file)")
    .option("--new-password-file <file>", "read the new password from a file")
    .action(opensRepository(async (gl, o) => (await import("./commands/key.js")).keyAddCommand(gl, o)));
  key.command("remove")
    .description("remove a key")
    .argument("<id>", "key ID (prefix)")
    .action(opensRepository(async (gl, id: string) => (await import("./commands/key.js")).keyRemoveCommand(gl, id)));
  key.command("passwd")
    .description("change the password: adds the new key and removes the current one")
    .option("--new-password-file <file>", "read the new password from a file")
    .action(opensRepository(async (gl, o) => (await import("./commands/key.js")).keyPasswdCommand(gl, o)));

  const site = p.command("site").description("the site backup task: control file, backups, status (see docs/control-file.md)");
  const siteCmd = (name: string, description: string): Command =>
    site.command(name).description(description).option("-c, --config <file>", "control file (env SITEKEEP_CONFIG; default ./sitekeep.yaml)");
  const siteOp = (mod: (m: typeof import("./commands/site.js")) => (...a: never[]) => Promise<number>) =>
    run(async (...a: unknown[]) => {
      const cmd = a[a.length - 1] as Command;
      const m = await import("./commands/site.js");
      return (mod(m) as (...x: unknown[]) => Promise<number>)(g(cmd), ...a.slice(0, -2), cmd.opts());
    });
  siteCmd("validate", "check the control file; every problem with file:line:col and a fix").action(siteOp((m) => m.siteValidateCommand));
  siteCmd("backup", "run the site backup task now")
    .option("-v, --verbose", "print the run log as it is written")
    .action(siteOp((m) => m.siteBackupCommand));
  siteCmd("status", "last runs, last good snapshot and its age against the retention window, open alerts").action(siteOp((m) => m.siteStatusCommand));
  siteCmd("messages", "status messages (newest last)")
    .option("-n, --limit <n>", "how many", "50")
    .option("--run <id>", "only this run's messages")
    .action(siteOp((m) => m.siteMessagesCommand));
  siteCmd("alerts", "open alerts")
    .option("--all", "closed ones too")
    .option("--close <id>", "close an alert")
    .action(siteOp((m) => m.siteAlertsCommand));
  siteCmd("freeze", "freeze the writers, run a command (another tool's snapshot), thaw")
    .requiredOption("--exec <cmd>", "the command to run while the writers are frozen")
    .action(siteOp((m) => m.siteFreezeCommand));
  siteCmd("recover", "recover the site from a snapshot: files, captures, databases (see docs/recovery.md)")
    .option("--snapshot <id>", "snapshot ID or prefix (default: the latest of the site)")
    .option("--before <time>", "the newest snapshot made before this time")
    .option("--only <what>", "files, captures, databases, or names of databases/captures (repeatable, comma-separated)", collect)
    .option("--root <dir>", "restore files under this folder instead of their original paths")
    .option("--replace", "replace existing databases and files")
    .option("--database <mode>", "restore (default), existing (verify one recovered by other means) or skip", "restore")
    .option("--database-name <name=new>", "restore a database under a new name (SQLite: a new path) (repeatable)", collect)
    .option("--dry-run", "show the plan, change nothing")
    .option("--from <url>", "recover from this destination (the control file is then optional)")
    .option("--site <code>", "with --from: which site, when the repository holds several")
    .action(siteOp((m) => m.siteRecoverCommand));
  siteCmd("drill", "restore a snapshot into a sandbox and prove it: files verified, databases restored and counted")
    .option("--snapshot <id>", "snapshot ID or prefix (default: the latest of the site)")
    .option("--keep-sandbox", "keep the restored sandbox for inspection")
    .action(siteOp((m) => m.siteDrillCommand));
  site.command("schema").description("print the control file's JSON Schema").action(run(async () => (await import("./commands/site.js")).siteSchemaCommand()));

  p.command("serve")
    .description("run the service: scheduler, alerts, HTTP API and /metrics (see docs/service.md)")
    .option("-c, --config <file>", "control file (env SITEKEEP_CONFIG; default ./sitekeep.yaml)")
    .option("--listen <host:port>", "override service.listen")
    .action(run(async (o, cmd: Command) => (await import("./commands/serve.js")).serveCommand(g(cmd), o)));
  const service = p.command("service").description("install the service, or talk to the running one");
  service.command("install")
    .description("write a systemd unit for `sitekeep serve`")
    .option("-c, --config <file>", "control file")
    .option("--user <name>", "run the service as this user")
    .option("--output <file>", "where to write the unit (default /etc/systemd/system/sitekeep-<site>.service)")
    .action(run(async (o, cmd: Command) => (await import("./commands/serve.js")).serviceInstallCommand(g(cmd), o)));
  service.command("status")
    .description("the running service's view: health, active run, next runs")
    .option("-c, --config <file>", "control file")
    .action(run(async (o, cmd: Command) => (await import("./commands/serve.js")).serviceStatusCommand(g(cmd), o)));
  service.command("run")
    .description("ask the running service to start a backup now (or a drill)")
    .option("-c, --config <file>", "control file")
    .option("--drill", "start a drill instead")
    .action(run(async (o, cmd: Command) => (await import("./commands/serve.js")).serviceRunCommand(g(cmd), o)));

  p.command("demo")
    .description("run the demo: generate a site folder, back it up twice, restore and verify it")
    .argument("[dir]", "folder for the demo (default ./sitekeep-demo)")
    .action(run(async (dir: string | undefined, _o, cmd: Command) => (await import("./commands/demo.js")).demoCommand(g(cmd), dir)));

  for (const c of [p, ...p.commands, ...key.commands]) c.exitOverride();
  // Before any command's action: the heap policy that command is measured with.
  p.hook("preAction", (_p, action) => keepHeapCompact(heapPolicyFor(action.name())));
  return p;
}

export async function main(argv: string[]): Promise<number> {
  returnLargeBuffersToTheSystem();
  guardOutput();
  const wantsJson = argv.includes("--json");
  let code: number;
  try {
    await program().parseAsync(argv, { from: "user" });
    code = typeof process.exitCode === "number" ? process.exitCode : 0;
  } catch (err) {
    if (err instanceof CommanderError) {
      // Help and version are not errors; usage errors already printed their message.
      return err.exitCode === 0 || err.code === "commander.helpDisplayed" || err.code === "commander.version" ? 0 : 1;
    }
    code = printError(err, wantsJson);
  }
  // A failed write is reported on the next turn of the event loop (Node emits the stream's error
  // then), so the last line's failure is seen too.
  await new Promise((resolve) => setImmediate(resolve));
  const failed = takeOutputFailure();
  return failed && code === 0 ? printError(failed, wantsJson) : code;
}

const code = await main(process.argv.slice(2));
process.exitCode = code;
