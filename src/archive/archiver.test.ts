import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { LocalBackend } from "../backend/local.js";
import { Repository } from "../repo/repository.js";
import { setXattr } from "../platform/fsx.js";
import { Archiver } from "./archiver.js";
import { loadTree } from "./tree.js";

test("an incremental backup sees a changed extended attribute (it changes the ctime) and keeps unchanged ones", async () => {
  const tmp = mkdtempSync(join(tmpdir(), "sitekeep-xattr-incr-"));
  try {
    const repo = await Repository.init(new LocalBackend(join(tmp, "repo")), "pw", { kdf: { N: 1024, r: 8, p: 1 } });
    await repo.loadIndex();
    const a = join(tmp, "a.txt");
    writeFileSync(a, "a\n");
    writeFileSync(join(tmp, "b.txt"), "b\n");
    try {
      setXattr(a, "user.tag", Buffer.from("one"));
      setXattr(join(tmp, "b.txt"), "user.tag", Buffer.from("keep"));
    } catch {
      return; // no user xattrs on this filesystem
    }
    const attrs = async (snapTree: string): Promise<Record<string, string>> => {
      const root = await loadTree(repo, snapTree);
      const out: Record<string, string> = {};
      for (const n of root) out[n.name] = Buffer.from(n.extended_attributes?.[0]?.value ?? "", "base64").toString();
      return out;
    };
    const first = await new Archiver(repo, { paths: [a, join(tmp, "b.txt")] }).run();
    const snap1 = await repo.loadSnapshot(first.snapshot_id);
    /** The tree of the folder holding the two files (snapshots keep the absolute path's chain). */
    const tmpTree = async (id: string): Promise<string> => {
      let tree = id;
      for (const part of tmp.split("/").filter(Boolean)) {
        const n = (await loadTree(repo, tree)).find((x) => x.name === part);
        assert.ok(n?.subtree, part);
        tree = n.subtree;
      }
      return tree;
    };
    assert.deepEqual(await attrs(await tmpTree(snap1.tree)), { "a.txt": "one", "b.txt": "keep" });
    setXattr(a, "user.tag", Buffer.from("two"));
    const second = await new Archiver(repo, { paths: [a, join(tmp, "b.txt")] }).run();
    const snap2 = await repo.loadSnapshot(second.snapshot_id);
    assert.equal(second.parent, first.snapshot_id);
    assert.deepEqual(await attrs(await tmpTree(snap2.tree)), { "a.txt": "two", "b.txt": "keep" });
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
});

test("the fast directory walk makes the same file nodes as lstat (so unchanged trees keep their IDs)", async () => {
  const { lstatDirAsync, nativeAvailable } = await import("../platform/fsx.js");
  const { encodeName, fileNodeFromNumbers, nodeFromStat } = await import("./node.js");
  const { lstatSync, symlinkSync, chmodSync, utimesSync } = await import("node:fs");
  if (!nativeAvailable) return; // the addon is not built: the walk uses lstat itself
  const tmp = mkdtempSync(join(tmpdir(), "sitekeep-lstatdir-"));
  try {
    writeFileSync(join(tmp, "empty"), "");
    writeFileSync(join(tmp, "data.bin"), Buffer.alloc(123_457, 7));
    writeFileSync(join(tmp, "naïve name.txt"), "x");
    writeFileSync(join(tmp, "old"), "y");
    utimesSync(join(tmp, "old"), new Date("1999-12-31T23:59:59.5Z"), new Date("1970-01-01T00:00:01Z"));
    chmodSync(join(tmp, "data.bin"), 0o4751);
    symlinkSync("data.bin", join(tmp, "link"));
    const d = await lstatDirAsync(Buffer.from(tmp));
    assert.ok(d);
    const names = d.names.map((n) => n.toString());
    assert.deepEqual([...names].sort(), ["data.bin", "empty", "link", "naïve name.txt", "old"]);
    for (let i = 0; i < d.names.length; i++) {
      if (names[i] === "link") continue; // the fast path is for regular files only
      const viaLstat = nodeFromStat(d.names[i], lstatSync(join(tmp, names[i]), { bigint: true }));
      assert.deepEqual(fileNodeFromNumbers(encodeName(d.names[i]), d.stats, i), viaLstat, names[i]);
    }
    assert.equal(d.simpleNames, undefined, "a name that is not plain ASCII: no shortcut");
    await assert.rejects(lstatDirAsync(Buffer.from(join(tmp, "missing"))), /ENOENT/);
    // Plain ASCII names come as the strings restic stores; a '"' or a control character needs quoting.
    const { mkdirSync } = await import("node:fs");
    for (const [dir, names, simple] of [
      ["plain", ["a.txt", "b c", "~x-1"], true],
      ["quote", ["a.txt", 'say "hi"'], false],
      ["control", ["a.txt", "tab\there"], false],
      ["nothing", [], true],
    ] as const) {
      mkdirSync(join(tmp, dir));
      for (const n of names) writeFileSync(join(tmp, dir, n), "");
      const l = await lstatDirAsync(Buffer.from(join(tmp, dir)));
      assert.ok(l);
      assert.equal(l.count, names.length);
      if (simple) assert.deepEqual([...(l.simpleNames ?? ["?"])].sort(), [...names].sort(), dir);
      else assert.equal(l.simpleNames, undefined, dir);
      assert.deepEqual(l.names.map((n) => n.toString()).sort(), [...names].sort(), dir);
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
});

test("an unchanged re-run keeps the parent's trees; a changed mode or atime deep down changes each tree above it, and only those", async () => {
  const { mkdirSync, chmodSync, utimesSync, statSync } = await import("node:fs");
  const tmp = mkdtempSync(join(tmpdir(), "sitekeep-keep-trees-"));
  try {
    const repo = await Repository.init(new LocalBackend(join(tmp, "repo")), "pw", { kdf: { N: 1024, r: 8, p: 1 } });
    await repo.loadIndex();
    const src = join(tmp, "src");
    mkdirSync(join(src, "a", "deep"), { recursive: true });
    mkdirSync(join(src, "b"));
    writeFileSync(join(src, "a", "x.txt"), "x\n");
    writeFileSync(join(src, "a", "deep", "y.txt"), "y\n");
    writeFileSync(join(src, "b", "z.txt"), "z\n");
    const backup = async (): Promise<{ trees: Record<string, string>; added: number }> => {
      const s = await new Archiver(repo, { paths: [src] }).run();
      let tree = (await repo.loadSnapshot(s.snapshot_id)).tree;
      for (const part of src.split("/").filter(Boolean)) tree = (await loadTree(repo, tree)).find((n) => n.name === part)?.subtree as string;
      const trees: Record<string, string> = { src: tree };
      for (const n of await loadTree(repo, tree)) trees[n.name] = n.subtree as string;
      trees.deep = (await loadTree(repo, trees.a)).find((n) => n.name === "deep")?.subtree as string;
      return { trees, added: s.tree_blobs };
    };
    await backup(); // reading a new folder sets its atime once (relatime), which the next run records
    // The root tree records the temporary folder's mtime, which tests running alongside change:
    // then that one tree is new (seen once in CI), and nothing else may be.
    const tmpMtime = (): number => statSync(tmpdir()).mtimeMs;
    const before = tmpMtime();
    const first = await backup();
    const again = await backup();
    assert.deepEqual(again.trees, first.trees);
    const allowed = tmpMtime() === before ? 0 : 1;
    assert.ok(again.added <= allowed, `${again.added} tree blobs added by an unchanged re-run (at most ${allowed})`);

    chmodSync(join(src, "a", "deep", "y.txt"), 0o600);
    const chmodded = await backup();
    for (const k of ["src", "a", "deep"]) assert.notEqual(chmodded.trees[k], first.trees[k], k);
    assert.equal(chmodded.trees.b, first.trees.b, "the untouched folder keeps its tree");
    const y = (await loadTree(repo, chmodded.trees.deep)).find((n) => n.name === "y.txt");
    assert.equal((y?.mode ?? 0) & 0o777, 0o600);

    // Only the atime changes (restic stores it): the folder's tree must change with it.
    const x = join(src, "b", "z.txt");
    utimesSync(x, new Date("2001-02-03T04:05:06Z"), statSync(x).mtime);
    const touched = await backup();
    assert.notEqual(touched.trees.b, first.trees.b);
    const z = (await loadTree(repo, touched.trees.b)).find((n) => n.name === "z.txt");
    assert.equal(z?.atime?.slice(0, 19), "2001-02-03T04:05:06");
    assert.equal(touched.trees.a, chmodded.trees.a);
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
});
