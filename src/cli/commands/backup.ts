import { readFileSync } from "node:fs";
import { Archiver, type BackupProgress } from "../../archive/archiver.js";
import { ExitCode, SitekeepError, errorMessage } from "../../errors.js";
import { type GlobalOptions, outputOptions, withRepository } from "../context.js";
import { ProgressLine, formatBytes, printJSON } from "../output.js";

export interface BackupFlags {
  tag?: string[];
  host?: string;
  exclude?: string[];
  excludeFile?: string[];
  oneFileSystem?: boolean;
  parent?: string;
  force?: boolean;
  stdinFromCommand?: string;
  stdinFilename?: string;
  time?: string;
}

function parseTime(s: string | undefined): Date | undefined {
  if (s === undefined) return undefined;
  const d = new Date(/^\d{4}-\d{2}-\d{2} \d{2}:\d{2}(:\d{2})?$/.test(s) ? s.replace(" ", "T") : s);
  if (Number.isNaN(d.getTime())) {
    throw new SitekeepError("backup.time", `invalid --time ${JSON.stringify(s)}`, { hint: 'use "2006-01-02 15:04:05" or RFC 3339' });
  }
  return d;
}

export async function backupCommand(g: GlobalOptions, paths: string[], f: BackupFlags): Promise<number> {
  const out = outputOptions(g);
  const excludes = [...(f.exclude ?? [])];
  for (const file of f.excludeFile ?? []) {
    try {
      excludes.push(...readFileSync(file, "utf8").split(/\r?\n/).map((l) => l.trim()).filter((l) => l && !l.startsWith("#")));
    } catch (err) {
      throw new SitekeepError("backup.excludefile", `cannot read exclude file ${file}: ${errorMessage(err)}`, { hint: "check the path" });
    }
  }
  if (f.stdinFromCommand === undefined && paths.length === 0) {
    throw new SitekeepError("backup.nopaths", "nothing to back up: no paths given", { hint: "name files or folders, or use --stdin-from-command" });
  }
  const time = parseTime(f.time);
  const tags = (f.tag ?? []).flatMap((t) => t.split(",")).filter(Boolean);
  const progress = new ProgressLine(out);
  const abort = new AbortController();
  const onSignal = (): void => abort.abort();
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);
  try {
    const summary = await withRepository(g, "shared", (repo) =>
      new Archiver(repo, {
        paths,
        tags,
        host: f.host,
        excludes,
        oneFileSystem: f.oneFileSystem,
        parent: f.force ? "none" : f.parent,
        stdinCommand: f.stdinFromCommand,
        stdinFilename: f.stdinFilename,
        time,
        signal: abort.signal,
        // Only with a progress line to show: progress starts a scan for the totals (the ETA),
        // a second walk over every file that costs as much as the backup's own on a re-run.
        ...(progress.enabled
          ? {
              onProgress: (p: BackupProgress) =>
                progress.update({ files: p.files, bytes: p.bytes, totalFiles: p.totalFiles, totalBytes: p.totalBytes, extra: `(${formatBytes(p.bytesAdded)} added)` }),
            }
          : {}),
      }).run(),
    );
    progress.done();
    for (const w of summary.warnings) {
      if (out.json) printJSON({ message_type: "error", error: { message: w.message }, during: "archival", item: w.path });
      else process.stderr.write(`warning: ${w.path}: ${w.message}\n`);
    }
    if (out.json) printJSON(summary);
    else if (!out.quiet) {
      process.stdout.write(
        `Files: ${summary.files_new} new, ${summary.files_changed} changed, ${summary.files_unmodified} unmodified\n` +
          `Dirs:  ${summary.dirs_new} new, ${summary.dirs_changed} changed, ${summary.dirs_unmodified} unmodified\n` +
          `Added to the repository: ${formatBytes(summary.data_added)}\n\n` +
          `processed ${summary.total_files_processed} files, ${formatBytes(summary.total_bytes_processed)} in ${summary.total_duration.toFixed(2)}s\n` +
          `snapshot ${summary.snapshot_id.slice(0, 8)} saved\n`,
      );
    }
    const unreadable = summary.warnings.some((w) => !w.message.startsWith("file changed"));
    return unreadable ? ExitCode.partial : 0;
  } finally {
    progress.done();
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
  }
}
