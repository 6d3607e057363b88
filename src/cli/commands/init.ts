import { openBackend } from "../../backend/open.js";
import { Repository } from "../../repo/repository.js";
import { type GlobalOptions, outputOptions, repoPassword, repoUrl, packSizeBytes } from "../context.js";
import { printJSON } from "../output.js";
import { SitekeepError } from "../../errors.js";

export async function initCommand(g: GlobalOptions, o: { repositoryVersion?: string }): Promise<number> {
  const out = outputOptions(g);
  const version = o.repositoryVersion === undefined || o.repositoryVersion === "latest" || o.repositoryVersion === "stable" ? 2 : Number(o.repositoryVersion);
  if (version !== 1 && version !== 2) {
    throw new SitekeepError("init.version", `unknown repository version ${o.repositoryVersion}`, { hint: "use 1 or 2 (the default)" });
  }
  const backend = openBackend(repoUrl(g));
  const password = await repoPassword(g, true);
  const repo = await Repository.init(backend, password, { version, packSize: packSizeBytes(g) });
  if (out.json) printJSON({ message_type: "initialized", id: repo.id, repository: backend.location, version });
  else if (!out.quiet) {
    process.stdout.write(`created sitekeep repository ${repo.id.slice(0, 10)} at ${backend.location}\n\n`);
    process.stdout.write("Please note that knowledge of your password is required to access\nthe repository. Losing your password means that your data is\nirrecoverably lost.\n");
  }
  return 0;
}
