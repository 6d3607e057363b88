// Where the repository password comes from: SITEKEEP_PASSWORD, --password-file,
// --password-command, or a prompt on the terminal. Never logged, never echoed.
import { readFileSync } from "node:fs";
import { execFileSync } from "node:child_process";
import { SitekeepError, errorMessage } from "../errors.js";

export interface PasswordSource {
  passwordFile?: string;
  passwordCommand?: string;
  envVar?: string;
}

/**
 * Whether readPassword reads a file or the environment: nothing a user would see or a system would
 * log (no prompt, no command run), so the password may be read ahead of need.
 */
export function readsQuietly(src: PasswordSource): boolean {
  if (src.passwordFile) return true;
  if (src.passwordCommand) return false;
  const env = process.env[src.envVar ?? "SITEKEEP_PASSWORD"];
  return env !== undefined && env !== "";
}

export async function readPassword(src: PasswordSource, prompt: string, opts: { confirm?: boolean } = {}): Promise<string> {
  if (src.passwordFile) {
    try {
      return firstLine(readFileSync(src.passwordFile, "utf8"));
    } catch (err) {
      throw new SitekeepError("password.file", `cannot read the password file ${src.passwordFile}: ${errorMessage(err)}`, {
        hint: "check the path and that this user may read it",
      });
    }
  }
  if (src.passwordCommand) {
    try {
      return firstLine(execFileSync("/bin/sh", ["-c", src.passwordCommand], { encoding: "utf8", stdio: ["ignore", "pipe", "inherit"] }));
    } catch (err) {
      throw new SitekeepError("password.command", `the password command failed: ${errorMessage(err).split("\n")[0]}`, {
        hint: "run the command by hand to see why",
      });
    }
  }
  const env = process.env[src.envVar ?? "SITEKEEP_PASSWORD"];
  if (env !== undefined && env !== "") return env;
  if (!process.stdin.isTTY) {
    throw new SitekeepError("password.none", "no password given and no terminal to ask for one", {
      hint: `set ${src.envVar ?? "SITEKEEP_PASSWORD"}, or pass --password-file or --password-command`,
    });
  }
  const pw = await promptHidden(prompt);
  if (opts.confirm) {
    const again = await promptHidden("enter password again: ");
    if (again !== pw) throw new SitekeepError("password.mismatch", "the passwords do not match", { hint: "run the command again" });
  }
  if (!pw) throw new SitekeepError("password.empty", "an empty password is not allowed", { hint: "type a password" });
  return pw;
}

function firstLine(s: string): string {
  const line = s.split(/\r?\n/)[0];
  if (!line) throw new SitekeepError("password.empty", "the password source gave an empty password", { hint: "put the password on its first line" });
  return line;
}

async function promptHidden(prompt: string): Promise<string> {
  process.stderr.write(prompt);
  const stdin = process.stdin;
  stdin.setRawMode?.(true);
  stdin.resume();
  let value = "";
  try {
    for await (const chunk of stdin as AsyncIterable<Buffer>) {
      for (const ch of chunk.toString("utf8")) {
        if (ch === "\r" || ch === "\n") return value;
        if (ch === "\u0003") throw new SitekeepError("interrupted", "interrupted", { exitCode: 130 });
        if (ch === "\u007f" || ch === "\b") value = value.slice(0, -1);
        else value += ch;
      }
    }
    return value;
  } finally {
    stdin.setRawMode?.(false);
    stdin.pause();
    process.stderr.write("\n");
  }
}
