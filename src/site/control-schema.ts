// The control file's schema (architecture doc section 5): one zod schema that validates the file,
// types the code, and is published as JSON Schema for editors (schema/sitekeep.schema.json).
// Key names are a contract: add keys freely, rename none.
import { z } from "zod";
import { parseDurationMs } from "./duration.js";

const duration = z
  .string()
  .refine((s) => parseDurationMs(s) !== undefined, { message: 'not a duration: use a number and a unit, like "90s", "5m", "2h", "5d"' })
  .describe('A duration: a number and a unit (ms, s, m, h, d, w), e.g. "90s", "5d", "1h30m"');

const name = z
  .string()
  .regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/, { message: "use letters, digits, '.', '_' and '-' (up to 64, starting with a letter or digit)" });

const absolutePath = z.string().refine((s) => s.startsWith("/"), { message: "must be an absolute path (starting with /)" });

const command = z.string().min(1).describe("A shell command, run with /bin/sh -c");

const retention = z
  .strictObject({
    keepLast: z.int().min(-1).optional(),
    keepHourly: z.int().min(-1).optional(),
    keepDaily: z.int().min(-1).optional(),
    keepWeekly: z.int().min(-1).optional(),
    keepMonthly: z.int().min(-1).optional(),
    keepYearly: z.int().min(-1).optional(),
    keepWithin: z.string().optional().describe('restic duration like "1y2m7d"'),
  })
  .describe("Which snapshots of this site to keep (restic's forget policy); the newest good one is always kept");

const backup = z.strictObject({
  enabled: z.boolean().default(true),
  schedule: z.string().optional().describe('cron expression, e.g. "0 2 * * 1,4"'),
  timezone: z.string().default("local").describe("local, UTC or an IANA zone such as Europe/Berlin"),
  destination: z.string().min(1).describe("Repository: a path, a mounted share, or s3:http(s)://host/bucket/prefix"),
  passwordFile: absolutePath.optional().describe("File holding the repository password (else SITEKEEP_PASSWORD)"),
  databaseDestination: z.string().min(1).optional().describe("A separate repository for database dumps"),
  retention: retention.optional(),
  retentionWindow: duration.default("5d").describe("Alert when the newest good backup is older than this"),
  alertOnFailure: z.boolean().default(true),
  afterBackup: absolutePath.optional().describe("Script run after a successful backup"),
  afterBackupTimeout: duration.default("1h"),
  maxDuration: duration.default("12h").describe("A run still going after this is stopped safely (writers thawed, nothing committed) and reported as failed"),
  maxFreeze: duration.default("10m").describe("Longest time writers may stay frozen while the changed files are read; a watchdog thaws them by then"),
  copyTo: z.array(z.string().min(1)).default([]).describe("Repositories that receive a copy of every new snapshot"),
  copyPasswordFile: absolutePath.optional().describe("Password of the copyTo repositories (default: the destination's)"),
  appendOnly: z
    .boolean()
    .default(false)
    .describe("Open the destinations append-only: backups add snapshots, nothing is ever deleted from here (retention then belongs to a trusted host)"),
  objectLock: z
    .strictObject({
      mode: z.enum(["governance", "compliance"]).default("governance"),
      days: z.int().min(1).max(36_500).describe("How long each stored file cannot be deleted or overwritten"),
    })
    .optional()
    .describe("S3 destinations: write every file but locks with an Object Lock retention (the bucket must have Object Lock enabled)"),
});

const sqliteDb = z.strictObject({
  name,
  kind: z.literal("sqlite"),
  path: absolutePath,
});

const postgresDb = z.strictObject({
  name,
  kind: z.literal("postgres"),
  url: z.string().regex(/^postgres(ql)?:\/\//, { message: "must be a postgres://user@host:port/dbname URL" }),
  passwordFile: absolutePath.optional(),
  globals: z.boolean().default(true).describe("Also dump roles and tablespaces (pg_dumpall --globals-only)"),
});

const mariadbDb = z.strictObject({
  name,
  kind: z.enum(["mariadb", "mysql"]),
  url: z.string().regex(/^(mariadb|mysql):\/\//, { message: "must be a mysql://user@host:port/dbname URL" }),
  socket: absolutePath.optional(),
  passwordFile: absolutePath.optional(),
});

const database = z.discriminatedUnion("kind", [sqliteDb, postgresDb, mariadbDb]);

const capture = z.strictObject({
  name,
  export: command.describe("Prints the configuration on stdout; stored in the snapshot"),
  restore: command.optional().describe("Re-imports it at recovery: gets the exported bytes on stdin"),
  timeout: duration.default("5m"),
});

const pathsFromSql = z.strictObject({
  database: name.describe("A database of this control file"),
  query: z.string().min(1).describe("SQL returning one path per row in the first column"),
});

const fileEntry = z
  .strictObject({
    path: absolutePath.optional(),
    pathsFrom: z.union([command, pathsFromSql]).optional().describe("Paths found at run time: a command printing one per line, or a SQL query"),
    exclude: z.array(z.string().min(1)).default([]).describe('Globs: absolute ones as they are; relative ones ("*.tmp", "logs/**") match at any depth below this entry'),
    role: z.string().regex(/^[a-z][a-z0-9-]*$/).default("files").describe("What the folder is: files, install-media, content-library, package-source, ..."),
  })
  .refine((f) => (f.path === undefined) !== (f.pathsFrom === undefined), { message: "give either path or pathsFrom (one of them)" });

const commandWriter = z.strictObject({
  name,
  freeze: command,
  thaw: command,
  timeout: duration.default("60s"),
});

const socketWriter = z.strictObject({
  name,
  socket: z.literal(true).describe("The application registers over the task's writer socket"),
  required: z.boolean().default(true).describe("Fail the run when it has not registered"),
  timeout: duration.default("60s"),
});

const writer = z.union([commandWriter, socketWriter]);

const alerts = z.strictObject({
  email: z
    .strictObject({
      to: z.array(z.string().min(3)).min(1),
      from: z.string().min(3),
      smtp: z.string().regex(/^smtps?:\/\//, { message: "must be smtp://host:port or smtps://host:port" }),
      passwordFile: absolutePath.optional(),
    })
    .optional(),
  webhook: z.strictObject({ url: z.string().regex(/^https?:\/\//, { message: "must be an http(s) URL" }), tokenFile: absolutePath.optional() }).optional(),
  command: command.optional().describe("Run with the alert as JSON on stdin"),
});

export const controlFileSchema = z
  .strictObject({
    site: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$/, { message: "a site code: letters, digits, '_' and '-' (up to 32)" }),
    backup,
    databases: z.array(database).default([]),
    captures: z.array(capture).default([]),
    files: z.array(fileEntry).default([]),
    writers: z.array(writer).default([]),
    drill: z
      .strictObject({
        schedule: z.string().optional(),
        keepSandbox: z.boolean().default(false),
      })
      .optional(),
    alerts: alerts.optional(),
    service: z
      .strictObject({
        listen: z.string().default("127.0.0.1:8420").describe("host:port of the HTTP API, console and /metrics"),
        tokenFile: absolutePath.optional().describe("Bearer token of the API (default <stateDir>/service.token, created 0600 on first start)"),
        passwordFile: absolutePath.optional().describe("Password of the web console (else log in with the service token)"),
        catchUp: z.boolean().default(true).describe("Run a backup at start when a scheduled one was missed while the service was down"),
        tls: z.strictObject({ certFile: absolutePath, keyFile: absolutePath }).optional(),
      })
      .optional(),
    stateDir: absolutePath.optional().describe("Runs, messages, alerts, drills (or SITEKEEP_STATE_DIR)"),
  })
  .describe("Sitekeep backup control file");

export type ControlFile = z.output<typeof controlFileSchema>;
export type DatabaseSpec = ControlFile["databases"][number];
export type CaptureSpec = ControlFile["captures"][number];
export type FileSpec = ControlFile["files"][number];
export type WriterSpec = ControlFile["writers"][number];
export type CommandWriterSpec = z.output<typeof commandWriter>;
export type SocketWriterSpec = z.output<typeof socketWriter>;

export function isCommandWriter(w: WriterSpec): w is CommandWriterSpec {
  return "freeze" in w;
}

/** The JSON Schema published for editors (`sitekeep site schema`, schema/sitekeep.schema.json). */
export function controlFileJSONSchema(): Record<string, unknown> {
  return {
    ...z.toJSONSchema(controlFileSchema, { io: "input", unrepresentable: "any" }),
    $id: "https://sitekeep.dev/schema/sitekeep.schema.json",
    title: "Sitekeep control file",
  };
}
