import { test } from "node:test";
import assert from "node:assert/strict";
import { promises as fsp, appendFileSync, mkdtempSync, existsSync, lstatSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { LocalBackend } from "../backend/local.js";
import { Repository } from "../repo/repository.js";
import { Archiver } from "./archiver.js";
import { type RestoreSummary, Restorer } from "./restorer.js";
import { encodeTree } from "./tree.js";
import { type NodeJSON, goModeFromUnix } from "./node.js";
import { canWriteFiles } from "../platform/fsx.js";

const kdf = { N: 1024, r: 8, p: 1 };

/** Backs `src` up into a new repository under `tmp` and restores it to `tmp`/target. */
async function backUpAndRestore(tmp: string, src: string): Promise<{ r: RestoreSummary; target: string }> {
  const repo = await Repository.init(new LocalBackend(join(tmp, "repo")), "pw", { kdf });
  await repo.loadIndex();
  const s = await new Archiver(repo, { paths: [src] }).run();
  const target = join(tmp, "target");
  const r = await new Restorer(repo, { target }).restore((await repo.loadSnapshot(s.snapshot_id)).tree);
  return { r, target };
}

test("restore never writes outside its target: stored names with .. or / are refused, planted links are replaced", async () => {
  const tmp = mkdtempSync(join(tmpdir(), "sitekeep-restore-safety-"));
  try {
    const repo = await Repository.init(new LocalBackend(join(tmp, "repo")), "pw", { kdf });
    const content = await repo.saveBlob("data", Buffer.from("owned\n"));
    const file = (name: string): NodeJSON => ({ name, type: "file", mode: 0o644, uid: 0, gid: 0, size: 6, content: [content.id.toString("hex")] });
    // A hostile tree: names that would climb out of the target, and a link that points outside.
    const inner = await repo.saveBlob("tree", encodeTree([file("ok.txt")]));
    const root = encodeTree([
      file(".."),
      file("../escaped.txt"),
      file("a/b.txt"),
      { name: "link", type: "symlink", mode: 0o777, uid: 0, gid: 0, linktarget: join(tmp, "outside"), content: null },
      { name: "dir", type: "dir", mode: 0o755, uid: 0, gid: 0, content: null, subtree: inner.id.toString("hex") },
    ]);
    const rootId = await repo.saveBlob("tree", root);
    await repo.flush();

    const target = join(tmp, "target");
    await fsp.mkdir(join(tmp, "outside"));
    await fsp.mkdir(target);
    // Planted before the restore: "dir" is a symlink to a folder outside the target.
    await fsp.symlink(join(tmp, "outside"), join(target, "dir"));

    const r = await new Restorer(repo, { target }).restore(rootId.id.toString("hex"));
    const refused = r.errors.map((e) => e.message).filter((m) => /escape the target/.test(m));
    assert.equal(refused.length, 3, JSON.stringify(r.errors));
    assert.equal(existsSync(join(tmp, "escaped.txt")), false);
    assert.deepEqual(await fsp.readdir(join(tmp, "outside")), [], "nothing was written through the planted link");
    assert.equal(lstatSync(join(target, "dir")).isDirectory(), true, "the planted link was replaced by a real folder");
    assert.equal(await fsp.readFile(join(target, "dir", "ok.txt"), "utf8"), "owned\n");
    assert.equal(lstatSync(join(target, "link")).isSymbolicLink(), true, "a stored symlink is restored as a link, not followed");
  } finally {
    await fsp.rm(tmp, { recursive: true, force: true });
  }
});

test("a file that changes while it is read is reported", async () => {
  const tmp = mkdtempSync(join(tmpdir(), "sitekeep-changing-"));
  try {
    const repo = await Repository.init(new LocalBackend(join(tmp, "repo")), "pw", { kdf });
    await repo.loadIndex();
    const src = join(tmp, "src");
    await fsp.mkdir(src);
    const big = join(src, "growing.bin");
    await fsp.writeFile(big, Buffer.alloc(24 * 1024 * 1024, 7));
    let appended = false;
    const s = await new Archiver(repo, {
      paths: [src],
      onProgress: () => {
        if (!appended) {
          appended = true;
          appendFileSync(big, "more"); // during the read: the first chunk has just been stored
        }
      },
    }).run();
    assert.equal(appended, true);
    assert.ok(s.warnings.some((w) => w.path === big && /changed while it was read/.test(w.message)), JSON.stringify(s.warnings));
  } finally {
    await fsp.rm(tmp, { recursive: true, force: true });
  }
});

test("a crafted tree that names one entry twice cannot redirect a later hard link outside the target", async () => {
  const tmp = mkdtempSync(join(tmpdir(), "sitekeep-restore-dup-"));
  try {
    const repo = await Repository.init(new LocalBackend(join(tmp, "repo")), "pw", { kdf });
    const content = await repo.saveBlob("data", Buffer.from("owned\n"));
    const linked = (name: string): NodeJSON => ({
      name, type: "file", mode: 0o644, uid: 0, gid: 0, size: 6, inode: 77, links: 2, device_id: 1, content: [content.id.toString("hex")],
    });
    const inner = await repo.saveBlob("tree", encodeTree([linked("first")]));
    // "d" is a folder (where the hard link's first copy goes), then again a symlink to the outside:
    // were the symlink to replace the folder, the second link would be made through it.
    const root = encodeTree([
      { name: "d", type: "dir", mode: 0o755, uid: 0, gid: 0, content: null, subtree: inner.id.toString("hex") },
      { name: "d", type: "symlink", mode: 0o777, uid: 0, gid: 0, linktarget: join(tmp, "outside"), content: null },
      linked("second"),
    ]);
    const rootId = await repo.saveBlob("tree", root);
    await repo.flush();
    const target = join(tmp, "target");
    await fsp.mkdir(join(tmp, "outside"));
    await fsp.mkdir(target);

    const r = await new Restorer(repo, { target }).restore(rootId.id.toString("hex"));
    assert.ok(r.errors.some((e) => /appears twice/.test(e.message)), JSON.stringify(r.errors));
    assert.equal(lstatSync(join(target, "d")).isDirectory(), true);
    assert.deepEqual(await fsp.readdir(join(tmp, "outside")), []);
    assert.equal(lstatSync(join(target, "second")).ino, lstatSync(join(target, "d", "first")).ino, "still a hard link pair");
  } finally {
    await fsp.rm(tmp, { recursive: true, force: true });
  }
});

test("files are written across folders at once, and hard links spread over folders stay one file", async () => {
  const tmp = mkdtempSync(join(tmpdir(), "sitekeep-restore-links-"));
  try {
    const src = join(tmp, "src");
    const { linkSync, mkdirSync, writeFileSync, readFileSync } = await import("node:fs");
    mkdirSync(src);
    writeFileSync(join(src, "shared"), "one inode\n");
    for (let d = 0; d < 6; d++) {
      const dir = join(src, `d${d}`, "sub");
      mkdirSync(dir, { recursive: true });
      for (let f = 0; f < 30; f++) writeFileSync(join(dir, `f${f}`), `folder ${d} file ${f}\n`.repeat(f + 1));
      linkSync(join(src, "shared"), join(dir, "link"));
    }
    const { r, target } = await backUpAndRestore(tmp, src);
    assert.deepEqual(r.errors, []);
    const out = join(target, src);
    const ino = lstatSync(join(out, "shared")).ino;
    for (let d = 0; d < 6; d++) {
      const dir = join(out, `d${d}`, "sub");
      assert.equal(lstatSync(join(dir, "link")).ino, ino, `d${d}/sub/link is the same file`);
      for (let f = 0; f < 30; f++) assert.equal(readFileSync(join(dir, `f${f}`), "utf8"), `folder ${d} file ${f}\n`.repeat(f + 1));
    }
    assert.equal(lstatSync(join(out, "shared")).nlink, 7);
    assert.equal(readFileSync(join(out, "shared"), "utf8"), "one inode\n");
  } finally {
    await fsp.rm(tmp, { recursive: true, force: true });
  }
});

test("small files are written in batches with their metadata; what stands in their place is replaced; a damaged blob fails only its file", async (t) => {
  // Batches need the addon's writefiles; without it (SITEKEEP_NO_NATIVE=1) every file takes the
  // one-at-a-time path, whose times are microseconds (the other tests here cover it).
  if (!canWriteFiles()) return t.skip("no native writefiles");
  const tmp = mkdtempSync(join(tmpdir(), "sitekeep-restore-small-"));
  try {
    const dir = join(tmp, "repo");
    const repo = await Repository.init(new LocalBackend(dir), "pw", { kdf });
    const nodes: NodeJSON[] = [];
    const bodies = new Map<string, Buffer>();
    const modes = new Map<string, number>();
    const add = async (name: string, body: Buffer, mode: number, mtime: string): Promise<void> => {
      modes.set(name, mode);
      const content = body.length ? [(await repo.saveBlob("data", body)).id.toString("hex")] : [];
      nodes.push({ name, type: "file", mode: goModeFromUnix(mode), mtime, atime: mtime, uid: 0, gid: 0, size: body.length, content });
      bodies.set(name, body);
    };
    // 150 files: three batches of one folder.
    for (let i = 0; i < 150; i++) await add(`f${i}`, Buffer.from(`file ${i}\n`.repeat(i + 1)), i % 2 ? 0o644 : 0o4751, `2021-03-04T05:06:${String(i % 60).padStart(2, "0")}.${String(100000000 + i * 7)}Z`);
    await add("empty", Buffer.alloc(0), 0o600, "1969-12-31T23:59:58.5Z");
    await add("zeros", Buffer.alloc(8192), 0o444, "2038-02-01T00:00:00.000000001Z");
    await add("bad", Buffer.from("a blob that will be damaged\n".repeat(50)), 0o644, "2021-01-01T00:00:00Z");
    const rootId = await repo.saveBlob("tree", encodeTree(nodes));
    await repo.flush();
    const loc = repo.lookup("data", (await import("../repo/id.js")).sha256(bodies.get("bad")!));
    assert.ok(loc);
    const pack = join(dir, "data", loc.packId.slice(0, 2), loc.packId);
    const bytes = readFileSync(pack);
    bytes[loc.offset + 20] ^= 0xff;
    writeFileSync(pack, bytes);

    const target = join(tmp, "target");
    await fsp.mkdir(target);
    writeFileSync(join(tmp, "outside"), "keep\n");
    await fsp.symlink(join(tmp, "outside"), join(target, "f3")); // planted: must be replaced, not followed
    writeFileSync(join(target, "f4"), "an older file");
    await fsp.mkdir(join(target, "f5")); // a folder where a file goes
    writeFileSync(join(target, "f5", "inside"), "x");

    const fresh = await Repository.open(new LocalBackend(dir), "pw");
    await fresh.loadIndex();
    const r = await new Restorer(fresh, { target }).restore(rootId.id.toString("hex"));
    assert.deepEqual(r.errors.map((e) => e.path), ["/bad"], JSON.stringify(r.errors));
    assert.match(r.errors[0].message, /damaged/);
    assert.equal(existsSync(join(target, "bad")), false, "no file is left for a blob that could not be read");
    assert.equal(r.files_restored, 152);
    assert.equal(readFileSync(join(tmp, "outside"), "utf8"), "keep\n");
    for (const n of nodes) {
      if (n.name === "bad") continue;
      const p = join(target, n.name);
      const st = lstatSync(p, { bigint: true });
      assert.ok(st.isFile(), n.name);
      assert.equal(Number(st.mode) & 0o7777, modes.get(n.name), n.name);
      // Whole seconds from Date, the fraction from the string: an independent reading of the time.
      const [, whole, frac] = /^(.*?)(?:\.(\d+))?Z$/.exec(n.mtime!)!;
      const ns = BigInt(Date.parse(`${whole}Z`)) * 1_000_000n + BigInt((frac ?? "").padEnd(9, "0"));
      assert.deepEqual([st.atimeNs, st.mtimeNs], [ns, ns], n.name);
      assert.deepEqual(readFileSync(p), bodies.get(n.name), n.name);
    }
    assert.equal(lstatSync(join(target, "zeros")).blocks, 0, "an all-zero file is a hole");
  } finally {
    await fsp.rm(tmp, { recursive: true, force: true });
  }
});

test("while the walk runs ahead of the writes, every folder gets its times after its files are written", async () => {
  const tmp = mkdtempSync(join(tmpdir(), "sitekeep-restore-ahead-"));
  try {
    const { mkdirSync, utimesSync, statSync } = await import("node:fs");
    const src = join(tmp, "src");
    const dirs: string[] = [];
    const files = new Map<string, Buffer>();
    for (let a = 0; a < 12; a++) {
      for (let b = 0; b < 4; b++) {
        const dir = join(src, `a${a}`, `b${b}`);
        mkdirSync(dir, { recursive: true });
        dirs.push(dir);
        for (let f = 0; f < 20; f++) files.set(join(dir, `f${f}`), Buffer.from(`${a}/${b}/${f}\n`.repeat(f * 50 + 1)));
        // Large files (written on slots of their own) in some folders,
        // next to small ones: the walk goes on to the next folders while they are written.
        if (b === 1) {
          const big = Buffer.alloc(3 * 1024 * 1024 + 333);
          for (let i = 0; i < big.length; i += 4096) big.writeUInt32LE((i * 2654435761) >>> 0, i);
          files.set(join(dir, "big"), big);
        }
      }
      dirs.push(join(src, `a${a}`));
    }
    for (const [path, data] of files) writeFileSync(path, data);
    // Deepest first, so that setting a folder's times does not change its parent's.
    dirs.forEach((d, i) => utimesSync(d, 1_000_000 + i, 1_500_000 + i));
    const { r, target } = await backUpAndRestore(tmp, src);
    assert.deepEqual(r.errors, []);
    assert.equal(r.files_restored, files.size);
    for (const [path, data] of files) assert.ok(readFileSync(join(target, path)).equals(data), path);
    for (const d of dirs) assert.equal(statSync(join(target, d)).mtimeMs, statSync(d).mtimeMs, `${d}: its time`);
  } finally {
    await fsp.rm(tmp, { recursive: true, force: true });
  }
});

test("restore with an anchored include loads only the folders on the way to what it includes", async () => {
  const tmp = mkdtempSync(join(tmpdir(), "sitekeep-restore-include-"));
  try {
    const src = join(tmp, "src");
    for (const d of ["keep/deep", "skip/a", "skip/b", "other"]) await fsp.mkdir(join(src, d), { recursive: true });
    writeFileSync(join(src, "keep/deep/wanted.txt"), "wanted\n");
    writeFileSync(join(src, "keep/deep/unwanted.txt"), "no\n");
    for (const d of ["skip/a", "skip/b", "other"]) writeFileSync(join(src, d, "f.txt"), d);
    const repo = await Repository.init(new LocalBackend(join(tmp, "repo")), "pw", { kdf });
    await repo.loadIndex();
    const s = await new Archiver(repo, { paths: [src] }).run();
    const tree = (await repo.loadSnapshot(s.snapshot_id)).tree;
    const trees: string[] = [];
    const load = repo.loadBlob.bind(repo);
    repo.loadBlob = (type, id) => {
      if (type === "tree") trees.push(Buffer.from(id).toString("hex"));
      return load(type, id);
    };
    const restore = async (includes: string[], target: string): Promise<number> => {
      trees.length = 0;
      const r = await new Restorer(repo, { target: join(tmp, target), includes }).restore(tree);
      assert.deepEqual(r.errors, []);
      return trees.length;
    };
    // The folders of src's own path, src, keep and keep/deep: not skip, skip/a, skip/b or other.
    const onTheWay = src.split("/").filter(Boolean).length + 3;
    assert.equal(await restore([join(src, "keep/deep/wanted.txt")], "t1"), onTheWay);
    assert.equal(readFileSync(join(tmp, "t1", src, "keep/deep/wanted.txt"), "utf8"), "wanted\n");
    assert.equal(existsSync(join(tmp, "t1", src, "keep/deep/unwanted.txt")), false);
    assert.equal(existsSync(join(tmp, "t1", src, "skip")), false);
    // A pattern that can match at any depth still finds its files everywhere.
    assert.equal(await restore(["f.txt"], "t2"), onTheWay + 4);
    assert.deepEqual(["skip/a", "skip/b", "other"].map((d) => readFileSync(join(tmp, "t2", src, d, "f.txt"), "utf8")), ["skip/a", "skip/b", "other"]);
    assert.equal(existsSync(join(tmp, "t2", src, "keep")), false);
  } finally {
    await fsp.rm(tmp, { recursive: true, force: true });
  }
});
