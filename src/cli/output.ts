// How commands talk to people and scripts: one clear line per error (or a JSON object with
// --json), figures in human units, and a progress line that only a terminal sees.
import { SitekeepError, errorMessage } from "../errors.js";

export interface OutputOptions {
  json: boolean;
  quiet: boolean;
}

export function formatBytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${v} ${units[u]}` : `${v.toFixed(v < 10 ? 2 : v < 100 ? 1 : 0)} ${units[u]}`;
}

export function formatDuration(sec: number): string {
  const s = Math.max(0, Math.round(sec));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const r = s % 60;
  return h ? `${h}:${String(m).padStart(2, "0")}:${String(r).padStart(2, "0")}` : `${m}:${String(r).padStart(2, "0")}`;
}

export function printJSON(obj: unknown): void {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

/** A warning on stderr: one line, or a JSON object with --json. */
export function printWarning(message: string, json: boolean): void {
  if (json) process.stderr.write(JSON.stringify({ message_type: "warning", message }) + "\n");
  else process.stderr.write(`warning: ${message}\n`);
}

export function printError(err: unknown, json: boolean): number {
  const se = err instanceof SitekeepError ? err : undefined;
  const code = se?.code ?? "internal";
  const message = se ? se.message : errorMessage(err);
  if (json) {
    process.stderr.write(JSON.stringify({ message_type: "error", code, message, hint: se?.hint, exit_code: se?.exitCode ?? 1 }) + "\n");
  } else {
    process.stderr.write(`sitekeep: ${message}${se?.hint ? ` (${se.hint})` : ""}\n`);
    if (!se && process.env.SITEKEEP_DEBUG && err instanceof Error) process.stderr.write(`${err.stack}\n`);
  }
  return se?.exitCode ?? 1;
}

/** A single self-rewriting status line on a TTY; silent when stderr is not a terminal or with --json/--quiet. */
export class ProgressLine {
  /** False when nothing is shown (no terminal, --json, --quiet): callers then skip what only feeds it. */
  readonly enabled: boolean;
  private readonly started = Date.now();
  private shown = false;

  constructor(out: OutputOptions) {
    this.enabled = Boolean(process.stderr.isTTY) && !out.json && !out.quiet;
  }

  update(p: { files: number; bytes: number; totalFiles?: number; totalBytes?: number; extra?: string }): void {
    if (!this.enabled) return;
    const elapsed = (Date.now() - this.started) / 1000;
    const rate = elapsed > 0 ? p.bytes / elapsed : 0;
    let line = `[${formatDuration(elapsed)}] ${p.files}${p.totalFiles ? "/" + p.totalFiles : ""} files, ${formatBytes(p.bytes)}`;
    if (p.totalBytes) line += ` of ${formatBytes(p.totalBytes)}`;
    line += `, ${formatBytes(rate)}/s`;
    if (p.totalBytes && rate > 0 && p.bytes < p.totalBytes) line += `, ETA ${formatDuration((p.totalBytes - p.bytes) / rate)}`;
    if (p.extra) line += ` ${p.extra}`;
    const width = process.stderr.columns || 100;
    process.stderr.write("\r\x1b[K" + line.slice(0, width - 1));
    this.shown = true;
  }

  done(): void {
    if (this.shown) process.stderr.write("\r\x1b[K");
    this.shown = false;
  }
}
