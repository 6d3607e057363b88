// Loading and validating the control file: YAML -> ${ENV} expansion -> schema -> checks that need
// the whole file or the machine (cron and zone, paths that must exist, the backup must not contain
// its own destination). Every problem is reported with file:line:col and a fix, all at once.
import { existsSync, readFileSync, statSync } from "node:fs";
import { resolve } from "node:path";
import { Cron } from "croner";
import { LineCounter, type Node as YamlNode, isMap, isNode, isPair, isScalar, isSeq, parseDocument } from "yaml";
import type { z } from "zod";
import { SitekeepError } from "../errors.js";
import { type ControlFile, controlFileSchema } from "./control-schema.js";
import { formatDurationMs, parseDurationMs } from "./duration.js";

export interface ControlProblem {
  /** Where in the file: "backup.destination", "files[2].path". */
  path: string;
  line: number;
  col: number;
  message: string;
  hint: string;
}

export interface LoadedControlFile {
  file: string;
  /** The file as written (before ${ENV} expansion): what the manifest keeps. */
  text: string;
  config: ControlFile;
}

export class ControlFileError extends SitekeepError {
  constructor(
    readonly file: string,
    readonly problems: ControlProblem[],
  ) {
    super(
      "config.invalid",
      `${file}: ${problems.length} problem${problems.length === 1 ? "" : "s"}:\n` +
        problems.map((p) => `  ${file}:${p.line}:${p.col}: ${p.path ? p.path + ": " : ""}${p.message} (${p.hint})`).join("\n"),
      { hint: "fix the control file and run `sitekeep site validate`" },
    );
  }
}

/** The control file's path: --config, else SITEKEEP_CONFIG, else ./sitekeep.yaml. */
export function controlFilePath(flag?: string): string {
  return resolve(flag ?? process.env.SITEKEEP_CONFIG ?? "sitekeep.yaml");
}

export function loadControlFile(path: string, env: NodeJS.ProcessEnv = process.env): LoadedControlFile {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (err) {
    const missing = (err as NodeJS.ErrnoException).code === "ENOENT";
    throw new SitekeepError("config.missing", `cannot read the control file ${path}: ${missing ? "no such file" : (err as Error).message}`, {
      hint: missing ? "pass --config FILE, set SITEKEEP_CONFIG, or run in the folder holding sitekeep.yaml (`sitekeep demo` writes an example)" : "check the file's permissions",
    });
  }
  return parseControlFile(text, path, env);
}

/**
 * Parses and validates a control file. `machineChecks: false` skips the checks of this machine
 * (scripts and password files exist): for the copy stored in a snapshot, read on a new machine.
 */
export function parseControlFile(text: string, file: string, env: NodeJS.ProcessEnv = process.env, opts: { machineChecks?: boolean } = {}): LoadedControlFile {
  const lc = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lc, prettyErrors: false, uniqueKeys: true });
  const problems: ControlProblem[] = [];
  const at = (offset: number): { line: number; col: number } => lc.linePos(offset);

  for (const e of doc.errors) {
    const { line, col } = at(e.pos[0]);
    problems.push({ path: "", line, col, message: `YAML: ${e.message.split("\n")[0]}`, hint: "fix the YAML syntax (indentation with spaces, quotes around values with ': ' or '#')" });
  }
  if (problems.length) throw new ControlFileError(file, problems);

  const locate = (path: (string | number)[], key = false): { line: number; col: number } => {
    let node: unknown = doc.contents;
    let best: { line: number; col: number } = { line: 1, col: 1 };
    for (let i = 0; i < path.length; i++) {
      const seg = path[i];
      if (isMap(node)) {
        const pair = node.items.find((p) => isPair(p) && isScalar(p.key) && p.key.value === seg);
        if (!pair) break;
        const keyNode = pair.key as YamlNode;
        if (keyNode.range) best = at(keyNode.range[0]);
        if (i === path.length - 1 && key) return best;
        node = pair.value;
      } else if (isSeq(node) && typeof seg === "number") {
        node = node.items[seg];
      } else break;
      if (isNode(node) && node.range) best = at(node.range[0]);
    }
    return best;
  };

  // ${ENV} references: secrets and machine-specific values stay out of the file.
  const raw: unknown = doc.toJS();
  const expanded = expandEnv(raw, [], env, (path, message, hint) => problems.push({ path: fmtPath(path), ...locate(path), message, hint }));

  const parsed = controlFileSchema.safeParse(expanded ?? {});
  if (!parsed.success) {
    for (const issue of flattenIssues(parsed.error.issues)) {
      if (issue.code === "unrecognized_keys") {
        for (const k of issue.keys) {
          const path = [...issue.path, k] as (string | number)[];
          problems.push({ path: fmtPath(path), ...locate(path, true), message: `unknown key "${k}"`, hint: unknownKeyHint(k, issue.path as (string | number)[]) });
        }
        continue;
      }
      const path = issue.path as (string | number)[];
      problems.push({ path: fmtPath(path), ...locate(path), message: issueMessage(issue, path, raw), hint: issueHint(issue, path) });
    }
    throw new ControlFileError(file, sortProblems(problems));
  }
  if (problems.length) throw new ControlFileError(file, sortProblems(problems));

  const config = parsed.data;
  for (const p of semanticProblems(config, text, opts.machineChecks !== false)) problems.push({ ...p, path: fmtPath(p.path), ...locate(p.path, p.atKey) });
  if (problems.length) throw new ControlFileError(file, sortProblems(problems));
  return { file, text, config };
}

// ---- ${ENV} -------------------------------------------------------------------------------------

function expandEnv(
  v: unknown,
  path: (string | number)[],
  env: NodeJS.ProcessEnv,
  problem: (path: (string | number)[], message: string, hint: string) => void,
): unknown {
  if (typeof v === "string") {
    // $${NAME} is a literal ${NAME} (for shell commands that want the shell to expand it).
    return v.replace(/\$?\$\{([A-Za-z_][A-Za-z0-9_]*)\}/g, (m, name: string) => {
      if (m.startsWith("$$")) return m.slice(1);
      const val = env[name];
      if (val === undefined) {
        problem(path, `\${${name}} is used but the environment variable ${name} is not set`, `set ${name} in the environment of sitekeep (or write $\${${name}} for a literal)`);
        return "";
      }
      return val;
    });
  }
  if (Array.isArray(v)) return v.map((x, i) => expandEnv(x, [...path, i], env, problem));
  if (v && typeof v === "object") {
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, expandEnv(x, [...path, k], env, problem)]));
  }
  return v;
}

// ---- schema issues -> messages with fixes --------------------------------------------------------

type Issue = z.core.$ZodIssue;

/** A union that failed reports every branch's issues; keep those of the branch that came closest. */
function flattenIssues(issues: readonly Issue[]): Issue[] {
  const out: Issue[] = [];
  for (const i of issues) {
    if (i.code === "invalid_union" && i.errors.length > 0) {
      const best = [...i.errors].sort((a, b) => score(a) - score(b))[0];
      out.push(...flattenIssues(best.map((x) => ({ ...x, path: [...i.path, ...x.path] }) as Issue)));
    } else out.push(i);
  }
  return out;
}

function score(branch: readonly Issue[]): number {
  // A branch failing only on missing fields is closer than one that rejects keys as unknown.
  return branch.reduce((n, i) => n + (i.code === "unrecognized_keys" ? 10 * i.keys.length : 1), 0);
}

const KNOWN_KEYS: Record<string, string[]> = {
  "": ["site", "backup", "databases", "captures", "files", "writers", "drill", "alerts", "service", "stateDir"],
  backup: [
    "enabled", "schedule", "timezone", "destination", "passwordFile", "databaseDestination", "retention", "retentionWindow",
    "alertOnFailure", "afterBackup", "afterBackupTimeout", "maxDuration", "maxFreeze", "copyTo", "copyPasswordFile",
  ],
  "backup.retention": ["keepLast", "keepHourly", "keepDaily", "keepWeekly", "keepMonthly", "keepYearly", "keepWithin"],
  databases: ["name", "kind", "path", "url", "socket", "passwordFile", "globals"],
  captures: ["name", "export", "restore", "timeout"],
  files: ["path", "pathsFrom", "exclude", "role"],
  writers: ["name", "freeze", "thaw", "timeout", "socket", "required"],
  alerts: ["email", "webhook", "command"],
  service: ["listen", "tokenFile", "passwordFile", "catchUp", "tls"],
  drill: ["schedule", "keepSandbox"],
};

function unknownKeyHint(key: string, parent: (string | number)[]): string {
  if (/^(password|secret|token|key)$/i.test(key) || /password$/i.test(key)) {
    return "secrets are never written in the control file: use passwordFile (a file only root can read), or ${ENV} references";
  }
  const section = parent.filter((p) => typeof p === "string").join(".");
  const known = KNOWN_KEYS[section] ?? [];
  const near = known.map((k) => ({ k, d: editDistance(k.toLowerCase(), key.toLowerCase()) })).sort((a, b) => a.d - b.d)[0];
  if (near && near.d <= Math.max(2, Math.floor(key.length / 3))) return `did you mean "${near.k}"?`;
  return known.length ? `remove it; known keys here: ${known.join(", ")}` : "remove it";
}

function issueMessage(issue: Issue, path: (string | number)[], raw: unknown): string {
  if (issue.code === "invalid_type") {
    const got = valueAt(raw, path);
    if (got === undefined) return "is required";
    return `expected ${issue.expected}, got ${describe(got)}`;
  }
  if (issue.code === "invalid_union" && "discriminator" in issue) {
    return `unknown ${String(path[path.length - 1])} ${JSON.stringify(valueAt(raw, path))}: expected one of ${(issue as { options?: unknown[] }).options?.join(", ") ?? "?"}`;
  }
  if (issue.code === "invalid_value") return `must be one of ${issue.values.map((v) => JSON.stringify(v)).join(", ")}`;
  if (issue.code === "too_small" && issue.origin === "array") return `needs at least ${String(issue.minimum)} entr${issue.minimum === 1 ? "y" : "ies"}`;
  if (issue.code === "too_small" && issue.origin === "string") return "must not be empty";
  if (issue.code === "invalid_format") return issue.message.replace(/^Invalid string: must match pattern .*/, "has the wrong form");
  return issue.message;
}

const EXAMPLES: Record<string, string> = {
  site: "site: PS1",
  destination: "destination: /srv/backup/PS1",
  kind: "kind: sqlite (or postgres, mariadb, mysql)",
  name: "name: site",
  path: "path: /srv/app",
  url: 'url: "postgres://sitekeep@localhost/site"',
  export: 'export: "systemctl cat app"',
  freeze: 'freeze: "systemctl stop app"',
  thaw: 'thaw: "systemctl start app"',
};

function issueHint(issue: Issue, path: (string | number)[]): string {
  const last = String(path[path.length - 1] ?? "");
  if (issue.code === "invalid_type" && EXAMPLES[last]) return `write it like ${EXAMPLES[last]}`;
  if (issue.code === "invalid_type") return `give a ${issue.expected}`;
  if (issue.code === "invalid_format" && last === "site") return "a short code like PS1";
  if (issue.code === "invalid_union") return "see docs/control-file.md for the entry kinds";
  if (/duration/.test(issue.message)) return 'e.g. "60s", "5m", "5d"';
  if (/absolute path/.test(issue.message)) return "write the full path from /";
  return "see docs/control-file.md";
}

// ---- checks that need the whole file or the machine ----------------------------------------------

interface SemanticProblem {
  path: (string | number)[];
  atKey?: boolean;
  message: string;
  hint: string;
}

function semanticProblems(c: ControlFile, text: string, machine: boolean): SemanticProblem[] {
  const out: SemanticProblem[] = [];
  const b = c.backup;

  if (b.timezone !== "local" && b.timezone !== "UTC") {
    try {
      new Intl.DateTimeFormat("en", { timeZone: b.timezone });
    } catch {
      out.push({ path: ["backup", "timezone"], message: `unknown time zone "${b.timezone}"`, hint: "use local, UTC or an IANA zone like Europe/Berlin" });
    }
  }
  if (b.schedule !== undefined) {
    const gap = cronMaxGapMs(b.schedule, b.timezone);
    if (gap === "invalid") {
      out.push({ path: ["backup", "schedule"], message: `"${b.schedule}" is not a cron expression`, hint: 'five fields: minute hour day-of-month month day-of-week, e.g. "0 2 * * 1,4"' });
    } else {
      const window = parseDurationMs(b.retentionWindow) ?? 0;
      if (gap === "never") {
        out.push({ path: ["backup", "schedule"], message: `"${b.schedule}" never runs`, hint: "pick a schedule that fires, e.g. \"0 2 * * *\"" });
      } else if (gap > window) {
        out.push({
          path: ["backup", "schedule"],
          message: `runs as rarely as every ${formatDurationMs(gap)}, longer than retentionWindow ${b.retentionWindow}: the newest backup would routinely be too old`,
          hint: `schedule backups at least every ${b.retentionWindow}, or raise retentionWindow`,
        });
      }
    }
  }

  if (b.appendOnly && b.retention) {
    out.push({
      path: ["backup", "retention"],
      message: "retention removes snapshots, which appendOnly: true forbids on this host",
      hint: "remove retention (and run forget/prune from a trusted host), or set appendOnly: false",
    });
  }
  if (b.objectLock) {
    for (const [key, url] of [["destination", b.destination], ["databaseDestination", b.databaseDestination]] as const) {
      if (url !== undefined && !url.startsWith("s3:")) {
        out.push({ path: ["backup", key], message: `objectLock needs S3 destinations; ${url} is not one`, hint: "use an s3: destination whose bucket has Object Lock enabled, or remove objectLock" });
      }
    }
  }

  // Names are how recovery addresses things: they must be unique.
  for (const [section, list] of [
    ["databases", c.databases],
    ["captures", c.captures],
    ["writers", c.writers],
  ] as const) {
    const seen = new Set<string>();
    list.forEach((e, i) => {
      if (seen.has(e.name)) out.push({ path: [section, i, "name"], message: `the name "${e.name}" is used twice`, hint: "give each entry its own name" });
      seen.add(e.name);
    });
  }

  const dbNames = new Set(c.databases.map((d) => d.name));
  c.files.forEach((f, i) => {
    if (f.pathsFrom && typeof f.pathsFrom === "object" && !dbNames.has(f.pathsFrom.database)) {
      out.push({ path: ["files", i, "pathsFrom", "database"], message: `no database named "${f.pathsFrom.database}"`, hint: `use one of: ${[...dbNames].join(", ") || "(none declared under databases)"}` });
    }
    if (f.path === "/") out.push({ path: ["files", i, "path"], message: "backing up / as a whole is not a site backup", hint: "list the site's folders" });
  });

  // The backup must never contain its own destination (it would back itself up, growing forever).
  const destinations: [string, (string | number)[]][] = [[b.destination, ["backup", "destination"]]];
  if (b.databaseDestination) destinations.push([b.databaseDestination, ["backup", "databaseDestination"]]);
  for (const [dest, path] of destinations) {
    if (dest.startsWith("s3:")) continue;
    if (!dest.startsWith("/")) {
      out.push({ path, message: "must be an absolute path or an s3: URL", hint: "write the full path from /" });
      continue;
    }
    const d = resolve(dest);
    c.files.forEach((f) => {
      if (f.path && (d === resolve(f.path) || d.startsWith(resolve(f.path).replace(/\/$/, "") + "/"))) {
        out.push({ path, message: `${dest} is inside the backed-up folder ${f.path}`, hint: "put the destination outside every folder under files, or exclude it there" });
      }
    });
  }

  if (machine && b.afterBackup) out.push(...scriptProblems(b.afterBackup, ["backup", "afterBackup"]));
  if (machine && b.passwordFile && !existsSync(b.passwordFile)) {
    out.push({ path: ["backup", "passwordFile"], message: `${b.passwordFile} does not exist`, hint: "create it (mode 0600) with the repository password, or remove the key and set SITEKEEP_PASSWORD" });
  }

  // Passwords written into URLs are secrets in the file; ${ENV} references are fine.
  const urlWithPassword = /\b(postgres(?:ql)?|mysql|mariadb|smtps?):\/\/[^/\s:@]+:(?!\$\{)[^@\s]+@/;
  if (urlWithPassword.test(text)) {
    c.databases.forEach((d, i) => {
      if ("url" in d && /:\/\/[^/:@]+:[^@]+@/.test(d.url)) out.push({ path: ["databases", i, "url"], message: "the URL holds a password", hint: "remove it from the URL and use passwordFile, or a ${ENV} reference" });
    });
    if (c.alerts?.email && /:\/\/[^/:@]+:[^@]+@/.test(c.alerts.email.smtp)) {
      out.push({ path: ["alerts", "email", "smtp"], message: "the URL holds a password", hint: "use alerts.email.passwordFile, or a ${ENV} reference" });
    }
  }
  return out;
}

/** A hook script must exist, be executable, and be writable by nobody but its owner (and root). */
export function scriptProblems(script: string, path: (string | number)[]): SemanticProblem[] {
  let st;
  try {
    st = statSync(script);
  } catch {
    return [{ path, message: `${script} does not exist`, hint: "create the script (chmod 700), or remove the key" }];
  }
  if (!st.isFile()) return [{ path, message: `${script} is not a regular file`, hint: "point it at a script" }];
  if ((st.mode & 0o111) === 0) return [{ path, message: `${script} is not executable`, hint: `chmod 700 ${script}` }];
  if (st.mode & 0o022) return [{ path, message: `${script} is writable by other users (mode ${(st.mode & 0o777).toString(8)})`, hint: `chmod go-w ${script}: anyone who can change it runs code as sitekeep` }];
  const uid = process.getuid?.();
  if (uid !== undefined && st.uid !== uid && st.uid !== 0) {
    return [{ path, message: `${script} belongs to another user (uid ${st.uid})`, hint: `chown it to the user running sitekeep or to root` }];
  }
  return [];
}

/**
 * The longest time between two runs of a cron schedule over the next year and a bit: a schedule
 * like "0 2 * * 1,4" has gaps of 3 and 4 days; "0 0 1 * *" up to 31 days.
 */
export function cronMaxGapMs(expr: string, timezone: string, from = new Date()): number | "invalid" | "never" {
  let cron: Cron;
  try {
    cron = new Cron(expr, { timezone: timezone === "local" ? undefined : timezone, paused: true });
  } catch {
    return "invalid";
  }
  const horizon = from.getTime() + 400 * 86_400_000;
  let prev = cron.nextRun(from);
  if (!prev) return "never";
  let max = 0;
  for (let i = 0; i < 20_000; i++) {
    const next = cron.nextRun(prev);
    if (!next) return i === 0 ? "never" : max;
    max = Math.max(max, next.getTime() - prev.getTime());
    if (next.getTime() > horizon) break;
    prev = next;
  }
  return max;
}

// ---- small helpers ------------------------------------------------------------------------------

function fmtPath(path: readonly (string | number | symbol)[]): string {
  let s = "";
  for (const p of path) s += typeof p === "number" ? `[${p}]` : s ? `.${String(p)}` : String(p);
  return s;
}

function valueAt(raw: unknown, path: (string | number)[]): unknown {
  let v = raw;
  for (const p of path) {
    if (v === null || typeof v !== "object") return undefined;
    v = (v as Record<string | number, unknown>)[p];
  }
  return v;
}

function describe(v: unknown): string {
  if (v === null) return "null (an empty value)";
  if (Array.isArray(v)) return "a list";
  if (typeof v === "object") return "a mapping";
  return `${typeof v} ${JSON.stringify(v)}`;
}

function sortProblems(p: ControlProblem[]): ControlProblem[] {
  return p.sort((a, b) => a.line - b.line || a.col - b.col);
}

function editDistance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...Array<number>(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) d[0][j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
  }
  return d[a.length][b.length];
}
