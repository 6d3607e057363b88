// Self-test of the fixture and the tree comparer: an exact copy (cp -a) compares equal, and each
// kind of modification of the copy is reported, which proves compareTrees can actually fail.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { after, before, describe, it } from "node:test";
import { compareTrees, treeDigest } from "./compare.js";
import { makeEveryCaseTree, setTimesNs, type FixtureInfo } from "./fixture.js";
import { tempDir, type TempDir } from "./run.js";

const ALL = { atime: true, ownership: true, xattrs: true, dirTimes: true } as const;

function sh(cmd: string, args: string[]): void {
  const r = spawnSync(cmd, args, { encoding: "utf8" });
  assert.equal(r.status, 0, `${cmd} ${args.join(" ")} failed: ${r.stderr}`);
}

function copyTree(src: string, dst: string): void {
  sh("cp", ["-a", "--sparse=always", src, dst]);
}

describe("every-case fixture and compareTrees", () => {
  let tmp: TempDir;
  let src: string;
  let info: FixtureInfo;

  before(async () => {
    tmp = await tempDir("fixture");
    src = path.join(tmp.path, "src");
    info = await makeEveryCaseTree(src, { bigFileMiB: 8 });
  });
  after(async () => {
    await tmp?.cleanup();
  });

  it("creates the advertised entries", () => {
    assert.ok(info.fifoMade, "fifo");
    assert.equal(info.deviceMade, info.isRoot && info.deviceMade);
    assert.equal(fs.statSync(path.join(src, "big.bin")).size, 8 * 1024 * 1024);
    const sparse = fs.statSync(path.join(src, "sparse.img"));
    assert.equal(sparse.size, 64 * 1024 * 1024);
    assert.ok(sparse.blocks * 512 < 1024 * 1024, `sparse.img allocates ${sparse.blocks * 512} bytes`);
    const pa = fs.lstatSync(path.join(src, info.paths.hardlinkPairA));
    const pb = fs.lstatSync(path.join(src, info.paths.hardlinkPairB));
    assert.equal(pa.ino, pb.ino);
    assert.equal(fs.lstatSync(path.join(src, "modes/setuid")).mode & 0o7777, 0o4755);
    assert.equal(fs.lstatSync(path.join(src, "modes/sticky-dir")).mode & 0o7777, 0o1777);
    const nonUtf8 = Buffer.concat([Buffer.from(src + "/"), info.nonUtf8File]);
    assert.ok(fs.existsSync(nonUtf8));
    const st = fs.lstatSync(path.join(src, "small.txt"), { bigint: true });
    assert.ok(st.mtimeNs % 1_000_000_000n !== 0n, "mtime keeps nanoseconds");
    if (info.isRoot) assert.ok(info.ownershipSet, "ownership set as root");
  });

  it("an exact copy compares equal", async () => {
    const copy = path.join(tmp.path, "copy-exact");
    copyTree(src, copy);
    assert.deepEqual(await compareTrees(src, copy, ALL), []);
    assert.equal(treeDigest(src, ALL), treeDigest(copy, ALL));
    // Reading both trees (cp, compare) must not have disturbed the atimes compared above.
    assert.deepEqual(await compareTrees(src, copy, ALL), []);
  });

  it("reports every kind of modification", async () => {
    const copy = path.join(tmp.path, "copy-modified");
    copyTree(src, copy);
    const expected: RegExp[] = [];

    // 1. One byte of content, same size and times.
    {
      const p = path.join(copy, info.paths.random3MiB);
      const fd = fs.openSync(p, "r+");
      const b = Buffer.alloc(1);
      fs.readSync(fd, b, 0, 1, 1000);
      b[0] ^= 0xff;
      fs.writeSync(fd, b, 0, 1, 1000);
      fs.closeSync(fd);
      sh("touch", ["-h", "-r", path.join(src, info.paths.random3MiB), p]);
      expected.push(/^random-3MiB\.bin: content differs/);
    }
    // 2. Mode.
    fs.chmodSync(path.join(copy, info.paths.private), 0o640);
    expected.push(/^modes\/private: mode 0600 != 0640$/);
    // 3. mtime, by one nanosecond.
    {
      const p = path.join(copy, info.paths.small);
      const st = fs.lstatSync(p, { bigint: true });
      const ns = st.mtimeNs + 1n;
      const atime = `${st.atimeNs / 1_000_000_000n}.${String(st.atimeNs % 1_000_000_000n).padStart(9, "0")}`;
      const mtime = `${ns / 1_000_000_000n}.${String(ns % 1_000_000_000n).padStart(9, "0")}`;
      setTimesNs([{ path: p, mtime, atime }]);
      expected.push(/^small\.txt: mtime \d+\.\d{9} != \d+\.\d{9}$/);
    }
    // 4. atime.
    {
      const p = path.join(copy, info.paths.deep);
      const st = fs.lstatSync(p, { bigint: true });
      const mtime = `${st.mtimeNs / 1_000_000_000n}.${String(st.mtimeNs % 1_000_000_000n).padStart(9, "0")}`;
      setTimesNs([{ path: p, mtime, atime: "4100000000.000000001" }]);
      expected.push(/^nested\/a\/b\/c\/deep\.txt: atime /);
    }
    // 5. Symlink target (same length, so only the target differs; keep its times).
    {
      const p = path.join(copy, info.paths.symlinkDangling);
      fs.unlinkSync(p);
      fs.symlinkSync("does/not/exisT", p);
      sh("touch", ["-h", "-r", path.join(src, info.paths.symlinkDangling), p]);
      sh("touch", ["-h", "-r", path.join(src, "links"), path.join(copy, "links")]);
      expected.push(/^links\/dangling: symlink target/);
    }
    // 6. A broken hard link (same content and metadata, separate inode).
    {
      const p = path.join(copy, info.paths.hardlinkPairB);
      sh("cp", ["-a", p, p + ".tmp"]);
      fs.renameSync(p + ".tmp", p);
      sh("touch", ["-h", "-r", path.join(src, "hardlinks"), path.join(copy, "hardlinks")]);
      expected.push(/^hardlinks\/pair-a\.txt: hard links differ/);
    }
    // 7. An extra file in a non-UTF-8 directory (and that directory's mtime).
    {
      const d = Buffer.concat([Buffer.from(copy + "/"), info.nonUtf8Dir]);
      fs.writeFileSync(Buffer.concat([d, Buffer.from("/extra")]), "x");
      expected.push(/^b"names\/dir\\xe9\/extra": only in b \(file\)$/);
      expected.push(/^b"names\/dir\\xe9": mtime /);
    }
    // 8. Ownership and xattrs, where the machine allows them.
    if (info.isRoot) {
      fs.lchownSync(path.join(copy, info.paths.ownedLink), 0, 0);
      expected.push(/^owned\/link: owner 1234:5678 != 0:0$/);
    }
    if (info.xattrs) {
      sh("setfattr", ["-n", "user.sitekeep", "-v", "changed", path.join(copy, info.paths.xattrFile)]);
      expected.push(/^xattr\/file\.txt: xattr user\.sitekeep 0x[0-9a-f]+ != 0x[0-9a-f]+$/);
    }

    const diffs = await compareTrees(src, copy, ALL);
    for (const re of expected) {
      assert.ok(
        diffs.some((d) => re.test(d)),
        `expected a difference matching ${re}, got:\n${diffs.join("\n")}`,
      );
    }
    assert.equal(diffs.length, expected.length, `unexpected differences:\n${diffs.join("\n")}`);
    assert.notEqual(treeDigest(src, ALL), treeDigest(copy, ALL));
  });

  it("detects a file that is no longer sparse", async () => {
    const copy = path.join(tmp.path, "copy-dense");
    copyTree(src, copy);
    const p = path.join(copy, info.paths.sparse);
    sh("cp", ["-a", "--sparse=never", p, p + ".tmp"]);
    fs.renameSync(p + ".tmp", p);
    sh("touch", ["-h", "-r", src, copy]);
    const diffs = await compareTrees(src, copy, ALL);
    assert.deepEqual(
      diffs.map((d) => d.replace(/:.*/, "")),
      ["sparse.img"],
      diffs.join("\n"),
    );
    assert.match(diffs[0], /not sparse/);
  });
});
