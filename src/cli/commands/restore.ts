import { type RestoreProgress, Restorer } from "../../archive/restorer.js";
import { SitekeepError } from "../../errors.js";
import { type GlobalOptions, outputOptions, withRepository } from "../context.js";
import { ProgressLine, formatBytes, printJSON } from "../output.js";
import { type SnapshotFilter, matchesFilter } from "./snapshots.js";

export interface RestoreFlags extends SnapshotFilter {
  target?: string;
  include?: string[];
  exclude?: string[];
  dryRun?: boolean;
  verbose?: boolean;
}

export async function restoreCommand(g: GlobalOptions, ref: string, f: RestoreFlags): Promise<number> {
  const out = outputOptions(g);
  if (!f.target) throw new SitekeepError("restore.notarget", "restore needs --target DIR", { hint: "say where to put the restored files" });
  const progress = new ProgressLine(out);
  const summary = await withRepository(g, "shared", async (repo) => {
    const snap = await repo.findSnapshot(ref, (s) => matchesFilter(s, f));
    if (!out.json && !out.quiet) process.stdout.write(`restoring snapshot ${snap.id.slice(0, 8)} of [${snap.paths.join(" ")}] at ${snap.time} to ${f.target}\n`);
    return new Restorer(repo, {
      target: f.target as string,
      includes: f.include,
      excludes: f.exclude,
      dryRun: f.dryRun,
      // Progress plans the restore first (a pass over the trees for the totals): only with a line to show.
      ...(progress.enabled ? { onProgress: (p: RestoreProgress) => progress.update({ files: p.files, bytes: p.bytes, totalFiles: p.totalFiles, totalBytes: p.totalBytes }) } : {}),
      onItem: f.dryRun || f.verbose ? (path, node) => {
        if (out.json) printJSON({ message_type: "verbose_status", action: f.dryRun ? "would restore" : "restored", item: path, type: node.type, size: node.size ?? 0 });
        else process.stdout.write(`${f.dryRun ? "would restore" : "restored"} ${path}${node.type === "dir" ? "/" : ""}\n`);
      } : undefined,
    }).restore(snap.tree);
  });
  progress.done();
  for (const e of summary.errors) {
    if (out.json) printJSON({ message_type: "error", error: { message: e.message }, during: "restore", item: e.path });
    else process.stderr.write(`error: ${e.path}: ${e.message}\n`);
  }
  if (out.json) printJSON(summary);
  else if (!out.quiet) {
    process.stdout.write(
      `${summary.dry_run ? "would restore" : "restored"} ${summary.dry_run ? summary.total_files : summary.files_restored} files, ${summary.dirs_restored} dirs, ${formatBytes(summary.dry_run ? summary.total_bytes : summary.bytes_restored)}\n`,
    );
    if (summary.errors.length) process.stdout.write(`${summary.errors.length} items could not be restored (listed above)\n`);
  }
  return summary.errors.length ? 1 : 0;
}
