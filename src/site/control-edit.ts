// Changing the backup task's settings from the console: edits are applied to the YAML document
// (comments and layout kept), the result is validated as a whole, and written atomically with the
// previous version kept beside it (`sitekeep.yaml.prev`). The CLI user's file stays theirs.
import { closeSync, copyFileSync, existsSync, fsyncSync, openSync, renameSync, statSync, writeSync } from "node:fs";
import { parseDocument } from "yaml";
import { SitekeepError } from "../errors.js";
import { type LoadedControlFile, parseControlFile } from "./control-file.js";

/** The backup task settings the console edits (the seed's maintenance-task dialog). */
export interface TaskChanges {
  enabled?: boolean;
  schedule?: string | null;
  timezone?: string;
  destination?: string;
  retention?: Record<string, number | string> | null;
  retentionWindow?: string;
  alertOnFailure?: boolean;
  afterBackup?: string | null;
  copyTo?: string[];
}

const KEYS: (keyof TaskChanges)[] = ["enabled", "schedule", "timezone", "destination", "retention", "retentionWindow", "alertOnFailure", "afterBackup", "copyTo"];

/** Applies the changes to the file's text; null removes a key. Throws ControlFileError when the result is invalid. */
export function applyTaskChanges(text: string, file: string, changes: TaskChanges, env: NodeJS.ProcessEnv = process.env): { text: string; loaded: LoadedControlFile } {
  const doc = parseDocument(text);
  // Values from the console are literal: a "${NAME}" typed there must not read the service's
  // environment (and echo a secret back in an error message).
  const literal = (v: unknown): unknown =>
    typeof v === "string" ? v.replace(/\$\{/g, () => "$${") : Array.isArray(v) ? v.map(literal) : v && typeof v === "object" ? Object.fromEntries(Object.entries(v).map(([k, x]) => [k, literal(x)])) : v;
  for (const key of KEYS) {
    if (!(key in changes)) continue;
    const v = literal(changes[key]) as TaskChanges[typeof key];
    if (v === null || v === undefined || (key === "afterBackup" && v === "")) doc.deleteIn(["backup", key]);
    else doc.setIn(["backup", key], v);
  }
  const next = doc.toString();
  return { text: next, loaded: parseControlFile(next, file, env) };
}

/** Writes the control file atomically; the previous version is kept as FILE.prev. */
export function saveControlFile(path: string, text: string): void {
  if (!existsSync(path)) throw new SitekeepError("config.missing", `${path} does not exist`, { hint: "the console edits an existing control file" });
  const mode = statSync(path).mode & 0o777;
  const tmp = `${path}.sitekeep-tmp-${process.pid}`;
  const fd = openSync(tmp, "wx", mode);
  try {
    writeSync(fd, text);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  copyFileSync(path, `${path}.prev`);
  renameSync(tmp, path);
}
