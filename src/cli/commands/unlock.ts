import { removeAllLocks, removeStaleLocks } from "../../repo/lock.js";
import { type GlobalOptions, outputOptions, withRepository } from "../context.js";
import { printJSON } from "../output.js";

export async function unlockCommand(g: GlobalOptions, f: { removeAll?: boolean }): Promise<number> {
  const out = outputOptions(g);
  const n = await withRepository(g, "none", (repo) => (f.removeAll ? removeAllLocks(repo) : removeStaleLocks(repo)), { loadIndex: false });
  if (out.json) printJSON({ message_type: "unlock", removed: n });
  else if (!out.quiet) process.stdout.write(`removed ${n} ${f.removeAll ? "" : "stale "}lock${n === 1 ? "" : "s"}\n`);
  return 0;
}
