// The global options of every command, and the repository and password they name. Kept apart from
// context.ts (which loads the repository's whole engine) so that key-ahead.ts can read them before
// a command's modules are loaded.
import { readPassword, readsQuietly } from "./password.js";

export interface GlobalOptions {
  repo?: string;
  passwordFile?: string;
  passwordCommand?: string;
  json?: boolean;
  quiet?: boolean;
  cache?: boolean; // commander turns --no-cache into cache: false
  appendOnly?: boolean;
  packSize?: string;
}

export function repoUrl(g: GlobalOptions): string {
  return g.repo ?? process.env.SITEKEEP_REPOSITORY ?? "";
}

function passwordSource(g: GlobalOptions): { passwordFile?: string; passwordCommand?: string } {
  return { passwordFile: g.passwordFile ?? process.env.SITEKEEP_PASSWORD_FILE, passwordCommand: g.passwordCommand ?? process.env.SITEKEEP_PASSWORD_COMMAND };
}

export async function repoPassword(g: GlobalOptions, confirm = false): Promise<string> {
  return readPassword(passwordSource(g), "enter password for repository: ", { confirm });
}

/** Whether repoPassword reads a file or the environment (see readsQuietly). */
export function passwordReadsQuietly(g: GlobalOptions): boolean {
  return readsQuietly(passwordSource(g));
}
