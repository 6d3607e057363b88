// The repository's key, derived while the command that needs it is still loading. A repository
// command's modules take 0.1-0.2 s to load on the main thread, and unlocking the key (scrypt)
// takes as long again on the thread pool: started first, the derivation is over when the command
// opens the repository, instead of starting then. main.ts starts it for the commands that open
// the repository the global options name; openRepository (context.ts) takes it over when the
// repository and the password are still the same. Only when the password reads quietly (a file,
// the environment): a prompt or a password command waits for the command as before.
import { openBackend } from "../backend/open.js";
import { type UnlockedKey, openWithPassword } from "../repo/keyfile.js";
import { type GlobalOptions, passwordReadsQuietly, repoPassword, repoUrl } from "./global-options.js";

interface KeyAhead {
  url: string;
  password: Promise<string>;
  key: Promise<UnlockedKey>;
}

let ahead: KeyAhead | undefined;

/** Starts unlocking the key of the repository `g` names, when its password reads quietly. */
export function deriveKeyAhead(g: GlobalOptions): void {
  ahead = undefined;
  const url = repoUrl(g);
  if (!url || !passwordReadsQuietly(g)) return;
  const password = repoPassword(g);
  const key = password.then(async (pw) => {
    const backend = openBackend(url);
    try {
      return await openWithPassword(backend, pw);
    } finally {
      await backend.close().catch(() => undefined); // an S3 client's sockets would keep the process up
    }
  });
  // Whatever fails here fails again, and is reported, where the command opens the repository
  // (or was never needed): neither promise may reject unhandled.
  password.catch(() => undefined);
  key.catch(() => undefined);
  ahead = { url, password, key };
}

/**
 * The key started for this repository and password, once: undefined when none was, or for another.
 * In a wrapper, so that it is handed over still on its way (its failure belongs to Repository.open).
 */
export async function takeKeyAhead(url: string, password: string): Promise<{ key: Promise<UnlockedKey> } | undefined> {
  const a = ahead;
  ahead = undefined;
  if (a === undefined || a.url !== url) return undefined;
  const same = await a.password.then(
    (pw) => pw === password,
    () => false,
  );
  return same ? { key: a.key } : undefined;
}
