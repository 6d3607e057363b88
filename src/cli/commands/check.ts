import { type CheckOptions, formatProblem, startCheck } from "../../archive/checker.js";
import { SitekeepError } from "../../errors.js";
import { type GlobalOptions, outputOptions, withPreparedRepository } from "../context.js";
import { ProgressLine, formatBytes, printJSON } from "../output.js";

export async function checkCommand(g: GlobalOptions, f: { readData?: boolean; readDataSubset?: string }): Promise<number> {
  const out = outputOptions(g);
  if (f.readDataSubset && !/^(\d+\/\d+|\d+(\.\d+)?%)$/.test(f.readDataSubset)) {
    throw new SitekeepError("check.subset", `invalid --read-data-subset ${JSON.stringify(f.readDataSubset)}`, {
      hint: "use n/m (e.g. 1/5) or a percentage (e.g. 10%)",
    });
  }
  const progress = new ProgressLine(out);
  const opts: CheckOptions = {
    readData: f.readData,
    readDataSubset: f.readDataSubset,
    onProgress: (p) => progress.update({ files: p.done, totalFiles: p.total, bytes: p.bytes ?? 0, extra: p.phase }),
  };
  // The checker loads the index itself (it must survive damaged index files), while the lock
  // waits out its conflict check. Never through the local cache: check must read what the
  // repository holds now.
  const result = await withPreparedRepository(
    { ...g, cache: false },
    "shared",
    (repo) => startCheck(repo, opts),
    (_repo, started) => started.indexChanged(),
    (_repo, started) => started.finish(),
  );
  progress.done();
  if (out.json) {
    printJSON({ message_type: "summary", num_errors: result.errors.length, errors: result.errors, notices: result.notices, packs: result.packs, snapshots: result.snapshots, packs_read: result.packsRead, bytes_read: result.bytesRead });
  } else {
    for (const n of result.notices) process.stdout.write(`notice: ${n}\n`);
    for (const e of result.errors) process.stdout.write(formatProblem(e) + "\n");
    if (!out.quiet) {
      process.stdout.write(`checked ${result.snapshots} snapshots, ${result.packs} packs${result.packsRead ? `, read ${result.packsRead} packs (${formatBytes(result.bytesRead)})` : ""}\n`);
      process.stdout.write(result.errors.length ? `${result.errors.length} errors found\n` : "no errors were found\n");
    }
  }
  return result.errors.length ? 1 : 0;
}
