// `sitekeep demo [DIR]`: the main job on embedded defaults. Generates a small site folder, creates
// an encrypted repository, backs the folder up twice (the second run incremental), restores the
// latest snapshot, proves the restore equals the source and verifies every byte of the repository.
import { promises as fsp, existsSync } from "node:fs";
import { createHash, randomBytes } from "node:crypto";
import { join, resolve } from "node:path";
import { LocalBackend } from "../../backend/local.js";
import { Repository } from "../../repo/repository.js";
import { Archiver } from "../../archive/archiver.js";
import { Restorer } from "../../archive/restorer.js";
import { checkRepository } from "../../archive/checker.js";
import { SitekeepError } from "../../errors.js";
import { type GlobalOptions, outputOptions } from "../context.js";
import { formatBytes, printJSON } from "../output.js";

const MARKER = ".sitekeep-demo";

export async function demoCommand(g: GlobalOptions, dirArg: string | undefined): Promise<number> {
  const out = outputOptions(g);
  const dir = resolve(dirArg ?? "sitekeep-demo");
  const say = (s: string): void => {
    if (!out.json && !out.quiet) process.stdout.write(s + "\n");
  };
  await prepareDir(dir);
  const site = join(dir, "site");
  const repoDir = join(dir, "repository");
  const passwordFile = join(dir, "password");
  const password = randomBytes(18).toString("base64url");
  await fsp.writeFile(passwordFile, password + "\n", { mode: 0o600 });

  say(`Sitekeep demo in ${dir}`);
  const files = await makeSite(site);
  say(`1. generated a site folder: ${files.count} files, ${formatBytes(files.bytes)} in ${site}`);

  const repo = await Repository.init(new LocalBackend(repoDir), password);
  say(`2. created an encrypted repository (restic format v2) at ${repoDir}`);

  const first = await new Archiver(repo, { paths: [site], tags: ["demo"] }).run();
  say(`3. backup: snapshot ${first.snapshot_id.slice(0, 8)}, ${first.files_new} files, ${formatBytes(first.data_added)} stored after dedup and compression`);

  await fsp.appendFile(join(site, "config", "app.conf"), "# changed after the first backup\nworkers = 8\n");
  const second = await new Archiver(repo, { paths: [site], tags: ["demo"] }).run();
  say(`4. incremental backup: snapshot ${second.snapshot_id.slice(0, 8)}, ${second.files_changed} changed, ${second.files_unmodified} unchanged (not read again), ${formatBytes(second.data_added)} added`);

  const target = join(dir, "restored");
  const snap = await repo.loadSnapshot(second.snapshot_id);
  const restored = await new Restorer(repo, { target }).restore(snap.tree);
  if (restored.errors.length) throw new SitekeepError("demo.restore", `restore reported errors: ${restored.errors[0].path}: ${restored.errors[0].message}`);
  const same = (await digestTree(site)) === (await digestTree(join(target, site)));
  if (!same) throw new SitekeepError("demo.verify", "the restored folder differs from the site folder");
  say(`5. restored the latest snapshot to ${join(target, site)}: identical to the site (every file hashed)`);

  const check = await checkRepository(repo, { readData: true });
  if (check.errors.length) throw new SitekeepError("demo.check", `repository check found ${check.errors.length} errors`);
  say(`6. check --read-data: ${check.packsRead} packs, ${formatBytes(check.bytesRead)} read and verified, no errors`);
  await fsp.writeFile(join(dir, MARKER), "made by sitekeep demo; safe to delete\n");

  say("");
  say("Try it yourself:");
  say(`  export SITEKEEP_REPOSITORY=${repoDir} SITEKEEP_PASSWORD_FILE=${passwordFile}`);
  say("  npx sitekeep snapshots");
  say("  npx sitekeep ls latest");
  say(`  restic -r ${repoDir} --password-file ${passwordFile} snapshots   # restic reads it too`);
  if (out.json) {
    printJSON({ message_type: "demo", dir, repository: repoDir, password_file: passwordFile, snapshots: [first.snapshot_id, second.snapshot_id], restored_identical: same, check_errors: 0 });
  }
  return 0;
}

async function prepareDir(dir: string): Promise<void> {
  if (existsSync(dir)) {
    const entries = await fsp.readdir(dir);
    if (entries.length && !entries.includes(MARKER)) {
      throw new SitekeepError("demo.dir", `${dir} exists and is not an earlier demo folder`, {
        hint: "name an empty or new folder: `sitekeep demo /tmp/sitekeep-demo`",
      });
    }
    await fsp.rm(dir, { recursive: true, force: true });
  }
  await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
}

async function makeSite(site: string): Promise<{ count: number; bytes: number }> {
  let count = 0;
  let bytes = 0;
  const write = async (rel: string, data: string | Buffer): Promise<void> => {
    const p = join(site, rel);
    await fsp.mkdir(join(p, ".."), { recursive: true });
    await fsp.writeFile(p, data);
    count++;
    bytes += Buffer.byteLength(data);
  };
  await write("config/app.conf", "[server]\nlisten = 127.0.0.1:8080\nworkers = 4\n");
  await write("config/database.conf", "engine = sqlite\npath = data/site.db\n");
  for (let i = 0; i < 200; i++) {
    await write(`content/pages/page-${String(i).padStart(3, "0")}.html`, `<h1>Page ${i}</h1>\n` + "<p>Lorem ipsum dolor sit amet.</p>\n".repeat(50 + (i % 30)));
  }
  await write("content/media/logo.bin", randomBytes(256 * 1024));
  await write("content/media/video.bin", randomBytes(3 * 1024 * 1024));
  await write("data/export.csv", Array.from({ length: 20000 }, (_, i) => `${i},customer-${i},${(i * 37) % 1000}.00`).join("\n") + "\n");
  await fsp.mkdir(join(site, "logs"), { recursive: true });
  await fsp.symlink("../config/app.conf", join(site, "content", "current.conf"));
  return { count, bytes };
}

async function digestTree(root: string): Promise<string> {
  const h = createHash("sha256");
  const walk = async (dir: string, rel: string): Promise<void> => {
    for (const e of (await fsp.readdir(dir, { withFileTypes: true })).sort((a, b) => (a.name < b.name ? -1 : 1))) {
      const p = join(dir, e.name);
      const st = await fsp.lstat(p);
      h.update(`${rel}/${e.name}\0${st.mode}\0${st.mtimeMs}\0`);
      if (e.isSymbolicLink()) h.update(await fsp.readlink(p));
      else if (e.isDirectory()) await walk(p, `${rel}/${e.name}`);
      else if (e.isFile()) h.update(await fsp.readFile(p));
    }
  };
  await walk(root, "");
  return h.digest("hex");
}
