import { listKeys } from "../../repo/keyfile.js";
import { SitekeepError } from "../../errors.js";
import { readPassword } from "../password.js";
import { type GlobalOptions, outputOptions, withRepository } from "../context.js";
import { printJSON } from "../output.js";

async function newPassword(f: { newPasswordFile?: string }): Promise<string> {
  return readPassword({ passwordFile: f.newPasswordFile, envVar: "SITEKEEP_NEW_PASSWORD" }, "enter new password: ", { confirm: true });
}

export async function keyListCommand(g: GlobalOptions): Promise<number> {
  const out = outputOptions(g);
  const rows = await withRepository(g, "shared", async (repo) =>
    (await listKeys(repo.backend)).map((k) => ({ current: k.id === repo.keyId, id: k.id, userName: k.file.username, hostName: k.file.hostname, created: k.file.created })),
  { loadIndex: false });
  if (out.json) printJSON(rows);
  else {
    process.stdout.write(" ID        User      Host          Created\n");
    for (const r of rows) process.stdout.write(`${r.current ? "*" : " "}${r.id.slice(0, 8)}  ${r.userName.padEnd(8)}  ${r.hostName.padEnd(12)}  ${r.created}\n`);
  }
  return 0;
}

export async function keyAddCommand(g: GlobalOptions, f: { newPasswordFile?: string }): Promise<number> {
  const out = outputOptions(g);
  const id = await withRepository(g, "shared", async (repo) => repo.addPassword(await newPassword(f)), { loadIndex: false });
  if (out.json) printJSON({ message_type: "key_added", id });
  else if (!out.quiet) process.stdout.write(`saved new key as ${id.slice(0, 8)}\n`);
  return 0;
}

export async function keyRemoveCommand(g: GlobalOptions, ref: string): Promise<number> {
  const out = outputOptions(g);
  const id = await withRepository(g, "exclusive", async (repo) => {
    repo.assertMayDelete("removing a key");
    const matches = (await listKeys(repo.backend)).filter((k) => k.id.startsWith(ref));
    if (matches.length !== 1) {
      throw new SitekeepError("key.notfound", matches.length ? `key prefix ${ref} is ambiguous` : `no key matches ${ref}`, { hint: "see `sitekeep key list`" });
    }
    if (matches[0].id === repo.keyId) {
      throw new SitekeepError("key.current", "refusing to remove the key that opened the repository", {
        hint: "open the repository with another password to remove this one, or use `key passwd`",
      });
    }
    await repo.backend.remove({ type: "keys", name: matches[0].id });
    return matches[0].id;
  }, { loadIndex: false });
  if (out.json) printJSON({ message_type: "key_removed", id });
  else if (!out.quiet) process.stdout.write(`removed key ${id.slice(0, 8)}\n`);
  return 0;
}

export async function keyPasswdCommand(g: GlobalOptions, f: { newPasswordFile?: string }): Promise<number> {
  const out = outputOptions(g);
  const id = await withRepository(g, "exclusive", async (repo) => {
    repo.assertMayDelete("changing the password (it removes the old key)");
    const pw = await newPassword(f);
    const newId = await repo.addPassword(pw);
    await repo.backend.remove({ type: "keys", name: repo.keyId });
    return newId;
  }, { loadIndex: false });
  if (out.json) printJSON({ message_type: "key_changed", id });
  else if (!out.quiet) process.stdout.write(`saved new password as key ${id.slice(0, 8)}; the old key was removed\n`);
  return 0;
}
