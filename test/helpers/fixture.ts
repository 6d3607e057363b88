// Builds a directory tree that exercises every case a backup must capture and a restore must
// reproduce: file sizes from empty to multi-chunk, sparse files, every file type, special mode bits,
// ownership, nanosecond times, xattrs with binary values, and hostile names (including non-UTF-8).
//
// Times are fixed (not "now"), so two trees built by this helper differ only in random content.
// Access times are deliberately set in the FUTURE: on relatime mounts (the Linux default) the kernel
// then never bumps them when the tree is read, so a backup, `cp -a` or compareTrees() reading the
// source does not change the atimes a later atime comparison relies on.
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";

export interface FixtureInfo {
  /** Absolute path of the tree's root. */
  dir: string;
  /** Running as root (uid 0). */
  isRoot: boolean;
  /** user.* extended attributes are supported and were set (setfattr present, fs allows them). */
  xattrs: boolean;
  /** The char device `special/null-dev` (c 1 3) was created (needs root / CAP_MKNOD). */
  deviceMade: boolean;
  /** The fifo `special/fifo` was created. */
  fifoMade: boolean;
  /** Some entries (see paths.owned*) were chowned to 1234:5678 (needs root). */
  ownershipSet: boolean;
  /** Size of `big.bin` in MiB. */
  bigFileMiB: number;
  /** Relative path (bytes) of the file whose name is not valid UTF-8. */
  nonUtf8File: Buffer;
  /** Relative path (bytes) of the directory whose name is not valid UTF-8 (contains `inner.txt`). */
  nonUtf8Dir: Buffer;
  /** Relative paths (UTF-8) of notable entries, for tests that pick one to inspect or modify. */
  paths: Record<string, string>;
  /** Number of entries created below the root (files, dirs, links, specials). */
  entryCount: number;
}

export const FIXTURE_UID = 1234;
export const FIXTURE_GID = 5678;
/** Value of the `user.sitekeep` xattr: contains a NUL byte on purpose. */
export const FIXTURE_XATTR_VALUE = Buffer.from("binary\0value", "latin1");

const MiB = 1024 * 1024;
const MTIME_BASE = 1_700_000_000; // 2023-11-14, in the past
const ATIME_BASE = 4_000_000_000; // 2096-10-02, in the future (see header comment)

interface TimeTarget {
  abs: Buffer;
  isDir: boolean;
  depth: number;
}

export async function makeEveryCaseTree(dir: string, opts?: { bigFileMiB?: number }): Promise<FixtureInfo> {
  const bigFileMiB = opts?.bigFileMiB ?? 20;
  const root = path.resolve(dir);
  fs.mkdirSync(root, { recursive: true });
  const isRoot = typeof process.getuid === "function" && process.getuid() === 0;

  const timeTargets: TimeTarget[] = [];
  const paths: Record<string, string> = {};
  let entryCount = 0;

  const abs = (rel: string | Buffer): Buffer =>
    Buffer.concat([Buffer.from(root + "/"), typeof rel === "string" ? Buffer.from(rel) : rel]);
  const depthOf = (rel: string | Buffer): number =>
    (typeof rel === "string" ? Buffer.from(rel) : rel).filter((b) => b === 0x2f).length + 1;
  const track = (rel: string | Buffer, isDir: boolean, name?: string): Buffer => {
    const p = abs(rel);
    timeTargets.push({ abs: p, isDir, depth: depthOf(rel) });
    entryCount++;
    if (name !== undefined && typeof rel === "string") paths[name] = rel;
    return p;
  };
  const mkdir = (rel: string | Buffer, mode = 0o755, name?: string): void => {
    const p = track(rel, true, name);
    fs.mkdirSync(p);
    fs.chmodSync(p, mode);
  };
  const file = (rel: string | Buffer, content: Buffer | string, mode = 0o644, name?: string): void => {
    const p = track(rel, false, name);
    fs.writeFileSync(p, content);
    fs.chmodSync(p, mode);
  };
  const symlink = (rel: string, target: string, name?: string): void => {
    fs.symlinkSync(target, track(rel, false, name));
  };
  const hardlink = (existingRel: string, rel: string, name?: string): void => {
    // Same inode: its times are set (identically) through either name; track it for the count only.
    fs.linkSync(abs(existingRel), abs(rel));
    entryCount++;
    if (name !== undefined) paths[name] = rel;
  };

  // ---- regular files of every size class ----------------------------------------------------
  file("empty.txt", Buffer.alloc(0), 0o644, "empty");
  file("small.txt", "hello, sitekeep\n", 0o644, "small");
  file("random-3MiB.bin", randomBytes(3 * MiB), 0o644, "random3MiB");
  {
    // Half random (incompressible, several content-defined chunks), half repetitive text (compresses well).
    const p = track("big.bin", false, "big");
    const total = bigFileMiB * MiB;
    const randomPart = Math.floor(total / 2);
    const fd = fs.openSync(p, "w", 0o644);
    try {
      for (let off = 0; off < randomPart; off += MiB) {
        fs.writeSync(fd, randomBytes(Math.min(MiB, randomPart - off)));
      }
      let line = 0;
      for (let off = randomPart; off < total;) {
        const parts: string[] = [];
        let len = 0;
        while (len < MiB) {
          const s = `sitekeep repetitive line ${line++}: the quick brown fox jumps over the lazy dog\n`;
          parts.push(s);
          len += s.length;
        }
        const chunk = Buffer.from(parts.join("")).subarray(0, Math.min(MiB, total - off));
        fs.writeSync(fd, chunk);
        off += chunk.length;
      }
    } finally {
      fs.closeSync(fd);
    }
    fs.chmodSync(p, 0o644);
  }
  {
    // Sparse: 64 MiB apparent size, one 4 KiB data extent at 32 MiB.
    const p = track("sparse.img", false, "sparse");
    const fd = fs.openSync(p, "w", 0o644);
    try {
      fs.ftruncateSync(fd, 64 * MiB);
      fs.writeSync(fd, randomBytes(4096), 0, 4096, 32 * MiB);
    } finally {
      fs.closeSync(fd);
    }
    fs.chmodSync(p, 0o644);
  }

  // ---- directories ------------------------------------------------------------------------
  mkdir("empty-dir", 0o755, "emptyDir");
  mkdir("nested");
  mkdir("nested/a");
  mkdir("nested/a/b");
  mkdir("nested/a/b/c", 0o750);
  file("nested/a/mid.txt", "middle\n");
  file("nested/a/b/c/deep.txt", "deep down\n", 0o640, "deep");

  // ---- symlinks -----------------------------------------------------------------------------
  mkdir("links");
  symlink("links/relative", "../small.txt", "symlinkRelative");
  symlink("links/absolute", path.join(root, "small.txt"), "symlinkAbsolute");
  symlink("links/dangling", "does/not/exist", "symlinkDangling");
  symlink("links/to-dir", "../nested", "symlinkToDir");

  // ---- hard links ---------------------------------------------------------------------------
  mkdir("hardlinks");
  file("hardlinks/pair-a.txt", "hard link pair in one directory\n", 0o644, "hardlinkPairA");
  hardlink("hardlinks/pair-a.txt", "hardlinks/pair-b.txt", "hardlinkPairB");
  file("hardlinks/across-src.txt", "hard link across directories\n", 0o644, "hardlinkAcrossA");
  hardlink("hardlinks/across-src.txt", "nested/a/b/across-link.txt", "hardlinkAcrossB");

  // ---- special files --------------------------------------------------------------------------
  mkdir("special");
  let fifoMade = false;
  {
    const r = spawnSync("mkfifo", ["-m", "0644", abs("special/fifo").toString()], { stdio: "ignore" });
    if (r.status === 0) {
      track("special/fifo", false, "fifo");
      fifoMade = true;
    }
  }
  let deviceMade = false;
  if (isRoot) {
    const r = spawnSync("mknod", ["-m", "0644", abs("special/null-dev").toString(), "c", "1", "3"], {
      stdio: "ignore",
    });
    if (r.status === 0) {
      track("special/null-dev", false, "device");
      deviceMade = true;
    }
  }

  // ---- ownership (before chmod: chown clears setuid/setgid) ----------------------------------
  mkdir("owned");
  file("owned/file.txt", "owned by 1234:5678\n", 0o644, "ownedFile");
  mkdir("owned/dir", 0o755, "ownedDir");
  symlink("owned/link", "file.txt", "ownedLink");
  let ownershipSet = false;
  if (isRoot) {
    try {
      for (const rel of ["owned/file.txt", "owned/dir", "owned/link"]) {
        fs.lchownSync(abs(rel), FIXTURE_UID, FIXTURE_GID);
      }
      ownershipSet = true;
    } catch {
      ownershipSet = false;
    }
  }

  // ---- mode bits ------------------------------------------------------------------------------
  mkdir("modes");
  file("modes/setuid", "#!/bin/sh\necho setuid\n", 0o4755, "setuid");
  file("modes/setgid", "#!/bin/sh\necho setgid\n", 0o2755, "setgid");
  file("modes/private", "secret\n", 0o600, "private");
  file("modes/readonly", "read only\n", 0o444, "readonly");
  mkdir("modes/sticky-dir", 0o755, "stickyDir");
  file("modes/sticky-dir/inside.txt", "in a sticky dir\n");
  mkdir("modes/setgid-dir", 0o755, "setgidDir");
  // Directory special bits last (after their children exist).
  fs.chmodSync(abs("modes/sticky-dir"), 0o1777);
  fs.chmodSync(abs("modes/setgid-dir"), 0o2755);

  // ---- extended attributes --------------------------------------------------------------------
  mkdir("xattr");
  file("xattr/file.txt", "has extended attributes\n", 0o644, "xattrFile");
  mkdir("xattr/dir", 0o755, "xattrDir");
  let xattrs = false;
  {
    const hex = "0x" + FIXTURE_XATTR_VALUE.toString("hex");
    const set = (rel: string, args: string[]): boolean =>
      spawnSync("setfattr", [...args, abs(rel).toString()], { stdio: "ignore" }).status === 0;
    if (set("xattr/file.txt", ["-n", "user.sitekeep", "-v", hex])) {
      xattrs =
        set("xattr/file.txt", ["-n", "user.empty"]) && // empty value
        set("xattr/dir", [
          "-n",
          "user.sitekeep.dir",
          "-v",
          "0x" + Buffer.from("on a directory").toString("hex"),
        ]);
    }
  }

  // ---- hostile names --------------------------------------------------------------------------
  mkdir("names");
  file("names/ünïcödé-文件", "unicode name\n", 0o644, "unicode");
  file("names/with space.txt", "space\n", 0o644, "space");
  file("names/new\nline", "newline in name\n", 0o644, "newline");
  file('names/back\\slash"quote', "backslash and quote\n", 0o644, "backslashQuote");
  const nonUtf8File = Buffer.concat([Buffer.from("names/"), Buffer.from([0x66, 0xff, 0xfe, 0x2e, 0x74])]);
  file(nonUtf8File, "name is not UTF-8\n");
  const nonUtf8Dir = Buffer.concat([Buffer.from("names/"), Buffer.from([0x64, 0x69, 0x72, 0xe9])]); // "dir\xe9" (latin-1 é)
  mkdir(nonUtf8Dir);
  file(Buffer.concat([nonUtf8Dir, Buffer.from("/inner.txt")]), "inside a non-UTF-8 directory\n");

  // ---- times, with nanoseconds; files first, then directories deepest first, root last ------
  timeTargets.push({ abs: Buffer.from(root), isDir: true, depth: 0 });
  const ordered = [
    ...timeTargets.filter((t) => !t.isDir),
    ...timeTargets.filter((t) => t.isDir).sort((x, y) => y.depth - x.depth),
  ];
  setTimesNs(
    ordered.map((t, i) => {
      const ns = String((123_456_789 + i * 1_000_003) % 1_000_000_000).padStart(9, "0");
      return { path: t.abs, mtime: `${MTIME_BASE + i * 60}.${ns}`, atime: `${ATIME_BASE + i * 60}.${ns}` };
    }),
  );

  return {
    dir: root,
    isRoot,
    xattrs,
    deviceMade,
    fifoMade,
    ownershipSet,
    bigFileMiB,
    nonUtf8File,
    nonUtf8Dir,
    paths,
    entryCount,
  };
}

/** printf(1) format reproducing `bytes` exactly: every byte as a 3-digit octal escape. */
function printfFormat(bytes: Buffer): string {
  let s = "";
  for (const b of bytes) s += "\\" + b.toString(8).padStart(3, "0");
  return s;
}

/**
 * Sets mtime/atime with nanosecond precision (Node's utimes goes through a double and loses it) on
 * each path, without following symlinks, in the order given. One `sh` process runs `touch -h` for all
 * paths; paths (any bytes, even non-UTF-8 or with newlines) are rebuilt in the shell with printf.
 * Times are "<seconds>.<9 digits>" strings.
 */
export function setTimesNs(items: { path: string | Buffer; mtime: string; atime?: string }[]): void {
  const lines: string[] = [];
  for (const it of items) {
    const p = typeof it.path === "string" ? Buffer.from(it.path) : it.path;
    // The trailing "x" keeps command substitution from eating trailing newlines of the name.
    lines.push(`p="$(printf '${printfFormat(p)}'; echo x)"; p="\${p%x}"`);
    lines.push(`touch -h -m -d '@${it.mtime}' -- "$p"`);
    if (it.atime !== undefined) lines.push(`touch -h -a -d '@${it.atime}' -- "$p"`);
  }
  const r = spawnSync("sh", ["-e"], { input: lines.join("\n") + "\n", encoding: "utf8" });
  if (r.error) throw r.error;
  if (r.status !== 0) throw new Error(`setting times failed (sh exit ${r.status}): ${r.stderr}`);
}
