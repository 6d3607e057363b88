// `sitekeep copy --from-repo URL [SNAPSHOT...]`: copies snapshots from another repository into
// the one given by -r/--repo, as restic's copy does. Running it again copies nothing new.
import { copySnapshots } from "../../archive/copier.js";
import { openBackend } from "../../backend/open.js";
import { CachedBackend, cacheDirFor, defaultCacheDir } from "../../backend/cache.js";
import { SitekeepError } from "../../errors.js";
import { withLock } from "../../repo/lock.js";
import { Repository } from "../../repo/repository.js";
import type { Snapshot } from "../../repo/snapshot.js";
import { type GlobalOptions, outputOptions, packSizeBytes, withRepository } from "../context.js";
import { ProgressLine, formatBytes, printJSON } from "../output.js";
import { readPassword } from "../password.js";
import { type SnapshotFilter, matchesFilter } from "./snapshots.js";

export interface CopyFlags extends SnapshotFilter {
  fromRepo?: string;
  fromPasswordFile?: string;
  fromPasswordCommand?: string;
}

/** Errors about the source repository say so: "source repository: wrong password ...". */
function aboutSource(err: unknown): unknown {
  if (err instanceof SitekeepError && !err.message.startsWith("source repository")) {
    const hint = err.code === "repo.password" ? "check SITEKEEP_FROM_PASSWORD, --from-password-file or --from-password-command" : err.hint;
    return new SitekeepError(err.code, `source repository: ${err.message}`, { hint, exitCode: err.exitCode, cause: err });
  }
  return err;
}

async function openSource(g: GlobalOptions, f: CopyFlags): Promise<Repository> {
  const url = f.fromRepo ?? process.env.SITEKEEP_FROM_REPOSITORY ?? "";
  if (!url) {
    throw new SitekeepError("copy.nosource", "copy needs the source repository", { hint: "pass --from-repo URL or set SITEKEEP_FROM_REPOSITORY" });
  }
  try {
    const backend = openBackend(url);
    const password = await readPassword(
      {
        passwordFile: f.fromPasswordFile ?? process.env.SITEKEEP_FROM_PASSWORD_FILE,
        passwordCommand: f.fromPasswordCommand ?? process.env.SITEKEEP_FROM_PASSWORD_COMMAND,
        envVar: "SITEKEEP_FROM_PASSWORD",
      },
      "enter password for source repository: ",
    );
    const useCache = g.cache !== false && !process.env.SITEKEEP_NO_CACHE;
    return await Repository.open(backend, password, {
      wrapBackend: useCache ? (b, id) => new CachedBackend(b, cacheDirFor(defaultCacheDir(), id)) : undefined,
    });
  } catch (err) {
    throw aboutSource(err);
  }
}

async function selectSnapshots(src: Repository, refs: string[], f: SnapshotFilter): Promise<Snapshot[]> {
  const filter = (s: Snapshot): boolean => matchesFilter(s, f);
  if (!refs.length) return (await src.listSnapshots()).filter(filter);
  const out: Snapshot[] = [];
  for (const ref of refs) out.push(await src.findSnapshot(ref, filter));
  return out;
}

export async function copyCommand(g: GlobalOptions, refs: string[], f: CopyFlags): Promise<number> {
  const out = outputOptions(g);
  packSizeBytes(g); // validates --pack-size before any work
  const src = await openSource(g, f);
  const progress = new ProgressLine(out);
  const say = (line: string): void => {
    if (out.json || out.quiet) return;
    progress.done();
    process.stdout.write(line + "\n");
  };
  const describe = (s: Snapshot): string => `snapshot ${s.id.slice(0, 8)} of [${s.paths.join(" ")}] at ${s.time}`;

  const result = await withRepository(g, "shared", async (dst) => {
    if (dst.id === src.id) {
      throw new SitekeepError("copy.same", "the source and the destination are the same repository", { hint: "give another --from-repo or -r" });
    }
    return withLock(src, false, async () => {
      let snaps: Snapshot[];
      try {
        await src.loadIndex();
        snaps = await selectSnapshots(src, refs, f);
      } catch (err) {
        throw aboutSource(err);
      }
      return copySnapshots(src, dst, snaps, {
        onProgress: (p) => progress.update({ files: p.trees, bytes: p.bytesCopied, extra: `trees, ${p.blobsCopied} blobs copied (snapshot ${p.snapshot.slice(0, 8)})` }),
        onSkipped: (s, existing) => say(`${describe(s)}: skipped, already in the destination as ${existing.id.slice(0, 8)}`),
        onCopied: (s, to) => say(`${describe(s)}: copied to ${to.slice(0, 8)}`),
      });
    }).catch((err: unknown) => {
      throw err instanceof SitekeepError && err.code === "repo.locked" && !err.message.startsWith("source") ? aboutSource(err) : err;
    });
  });
  progress.done();
  if (out.json) {
    printJSON({ copied: result.copied, skipped: result.skipped, blobs_copied: result.blobsCopied, bytes_copied: result.bytesCopied });
  } else if (!out.quiet) {
    process.stdout.write(
      `${result.copied.length} snapshots copied, ${result.skipped.length} skipped; ${result.blobsCopied} blobs (${formatBytes(result.bytesCopied)}) copied\n`,
    );
  }
  return 0;
}
