// Compares two directory trees the way a restore must reproduce a backup: names as raw bytes, file
// types, mode bits (incl. setuid/setgid/sticky), content, symlink targets, nanosecond times,
// ownership, xattrs, device numbers, hard-link structure and sparseness.
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import * as fs from "node:fs";

export interface CompareOptions {
  /** Compare access times (default false). */
  atime?: boolean;
  /** Compare uid/gid (default false). */
  ownership?: boolean;
  /** Compare extended attributes via getfattr; skipped when getfattr is missing (default false). */
  xattrs?: boolean;
  /** Compare directory times; with `atime`, also directory atimes (default true). */
  dirTimes?: boolean;
  /** Compare symlink mtimes (and atimes with `atime`) (default true). */
  symlinkTimes?: boolean;
  /** Compare the root directories' own metadata (mode, owner, times, xattrs) (default true). */
  rootMeta?: boolean;
  /** Check that sparse files stay sparse (default true). */
  sparse?: boolean;
}

type Kind = "file" | "dir" | "symlink" | "fifo" | "char" | "block" | "socket" | "unknown";

interface Entry {
  rel: Buffer;
  kind: Kind;
  st: fs.BigIntStats;
  sha256?: string;
  target?: Buffer;
  /** Hex key of the first (byte-order) path sharing this entry's inode; only for non-directories. */
  linkGroup?: string;
  xattrs?: Map<string, string>;
}

interface Snapshot {
  entries: Map<string, Entry>; // keyed by hex of the relative path ("" = root)
  xattrsAvailable: boolean;
}

const S_IFMT = 0o170000n;
const O_NOATIME = (fs.constants as Record<string, number>).O_NOATIME ?? 0;
const SLASH = Buffer.from("/");

function kindOf(mode: bigint): Kind {
  switch (mode & S_IFMT) {
    case 0o100000n:
      return "file";
    case 0o040000n:
      return "dir";
    case 0o120000n:
      return "symlink";
    case 0o010000n:
      return "fifo";
    case 0o020000n:
      return "char";
    case 0o060000n:
      return "block";
    case 0o140000n:
      return "socket";
    default:
      return "unknown";
  }
}

/** Human-readable path: JSON-quoted if valid UTF-8, else with \xNN escapes for the bad bytes. */
export function showPath(rel: Buffer): string {
  if (rel.length === 0) return ".";
  const s = rel.toString("utf8");
  if (Buffer.from(s, "utf8").equals(rel)) {
    return /^[\x21-\x7e\u00a0-\uffff]+$/u.test(s) && !s.includes('"') && !s.includes("\\")
      ? s
      : JSON.stringify(s);
  }
  let out = "";
  for (const b of rel) {
    out +=
      b >= 0x20 && b < 0x7f && b !== 0x5c && b !== 0x22
        ? String.fromCharCode(b)
        : `\\x${b.toString(16).padStart(2, "0")}`;
  }
  return `b"${out}"`;
}

function hashFile(p: Buffer): string {
  let fd: number;
  try {
    fd = fs.openSync(p, fs.constants.O_RDONLY | O_NOATIME);
  } catch {
    fd = fs.openSync(p, fs.constants.O_RDONLY); // O_NOATIME needs ownership or CAP_FOWNER
  }
  try {
    const h = createHash("sha256");
    const buf = Buffer.allocUnsafe(1024 * 1024);
    for (;;) {
      const n = fs.readSync(fd, buf, 0, buf.length, null);
      if (n === 0) break;
      h.update(buf.subarray(0, n));
    }
    return h.digest("hex");
  } finally {
    fs.closeSync(fd);
  }
}

/** Decodes getfattr's path escaping (\ooo octal, \\) back to bytes. */
function unescapeGetfattr(s: Buffer): Buffer {
  const out: number[] = [];
  for (let i = 0; i < s.length; i++) {
    const c = s[i];
    if (c === 0x5c && i + 3 < s.length && /^[0-7]{3}$/.test(s.subarray(i + 1, i + 4).toString("latin1"))) {
      out.push(parseInt(s.subarray(i + 1, i + 4).toString("latin1"), 8));
      i += 3;
    } else if (c === 0x5c && s[i + 1] === 0x5c) {
      out.push(0x5c);
      i += 1;
    } else {
      out.push(c);
    }
  }
  return Buffer.from(out);
}

/** All xattrs below `root` (incl. root), keyed by hex of relative path; null if getfattr is unavailable. */
function readAllXattrs(root: string): Map<string, Map<string, string>> | null {
  const r = spawnSync("getfattr", ["-R", "-P", "-h", "-d", "-m", "-", "-e", "hex", "."], {
    cwd: root,
    maxBuffer: 256 * 1024 * 1024,
  });
  if (r.error) return null;
  const result = new Map<string, Map<string, string>>();
  const out = r.stdout as Buffer;
  let current: Map<string, string> | null = null;
  let start = 0;
  while (start < out.length) {
    let end = out.indexOf(0x0a, start);
    if (end < 0) end = out.length;
    const line = out.subarray(start, end);
    start = end + 1;
    if (line.length === 0) continue;
    if (line.subarray(0, 8).toString("latin1") === "# file: ") {
      let rel = unescapeGetfattr(line.subarray(8));
      if (rel.length === 1 && rel[0] === 0x2e) rel = Buffer.alloc(0);
      else if (rel.length >= 2 && rel[0] === 0x2e && rel[1] === 0x2f) rel = rel.subarray(2);
      current = new Map();
      result.set(rel.toString("hex"), current);
      continue;
    }
    if (current === null) continue;
    const text = line.toString("latin1");
    const eq = text.indexOf("=");
    const name = eq < 0 ? text : text.slice(0, eq);
    const value = eq < 0 ? "" : text.slice(eq + 1);
    if (name === "security.selinux") continue; // labels depend on the location, not the data
    current.set(name, value === "" || value === "0x" ? "" : value);
  }
  return result;
}

function snapshot(root: string, opts: { xattrs: boolean; hash: boolean }): Snapshot {
  const entries = new Map<string, Entry>();
  const rootBuf = Buffer.from(root);

  const walk = (rel: Buffer): void => {
    const abs = rel.length === 0 ? rootBuf : Buffer.concat([rootBuf, SLASH, rel]);
    // lstat first: reading (readdir, readlink) may touch atime on some mounts.
    const st = fs.lstatSync(abs, { bigint: true });
    const kind = kindOf(st.mode);
    const e: Entry = { rel, kind, st };
    entries.set(rel.toString("hex"), e);
    if (kind === "file" && opts.hash) e.sha256 = hashFile(abs);
    else if (kind === "symlink") e.target = fs.readlinkSync(abs, { encoding: "buffer" });
    else if (kind === "dir") {
      const names = fs.readdirSync(abs, { encoding: "buffer" }).sort(Buffer.compare);
      for (const name of names) walk(rel.length === 0 ? name : Buffer.concat([rel, SLASH, name]));
    }
  };
  walk(Buffer.alloc(0));

  // Hard-link groups: entries sharing (dev, ino) get the hex key of the first path in byte order.
  const byInode = new Map<string, string[]>();
  for (const [key, e] of entries) {
    if (e.kind === "dir" || e.st.nlink < 2n) continue;
    const ino = `${e.st.dev}:${e.st.ino}`;
    const list = byInode.get(ino);
    if (list) list.push(key);
    else byInode.set(ino, [key]);
  }
  for (const keys of byInode.values()) {
    if (keys.length < 2) continue;
    const first = keys
      .map((k) => Buffer.from(k, "hex"))
      .sort(Buffer.compare)[0]
      .toString("hex");
    for (const k of keys) entries.get(k)!.linkGroup = first;
  }

  let xattrsAvailable = false;
  if (opts.xattrs) {
    const all = readAllXattrs(root);
    if (all !== null) {
      xattrsAvailable = true;
      for (const [key, e] of entries) e.xattrs = all.get(key) ?? new Map();
    }
  }
  return { entries, xattrsAvailable };
}

const perm = (st: fs.BigIntStats): string => (Number(st.mode) & 0o7777).toString(8).padStart(4, "0");

function describeGroup(snap: Snapshot, e: Entry): string {
  if (e.linkGroup === undefined) return "no other links in tree";
  const others: string[] = [];
  for (const [, o] of snap.entries) {
    if (o !== e && o.linkGroup === e.linkGroup) others.push(showPath(o.rel));
  }
  return `linked with ${others.join(", ")}`;
}

function diffSnapshots(a: Snapshot, b: Snapshot, opts: Required<CompareOptions>): string[] {
  const diffs: string[] = [];
  const keys = new Set([...a.entries.keys(), ...b.entries.keys()]);
  const sorted = [...keys].map((k) => Buffer.from(k, "hex")).sort(Buffer.compare);
  const missingPrefixes: Buffer[] = [];
  const underMissing = (rel: Buffer): boolean =>
    missingPrefixes.some(
      (p) => rel.length > p.length && rel[p.length] === 0x2f && rel.subarray(0, p.length).equals(p),
    );
  const reportedGroups = new Set<string>();
  const xattrs = opts.xattrs && a.xattrsAvailable && b.xattrsAvailable;

  for (const rel of sorted) {
    const key = rel.toString("hex");
    const ea = a.entries.get(key);
    const eb = b.entries.get(key);
    const name = showPath(rel);
    if (!ea || !eb) {
      if (!underMissing(rel)) {
        diffs.push(`${name}: only in ${ea ? "a" : "b"} (${(ea ?? eb)!.kind})`);
        missingPrefixes.push(rel);
      }
      continue;
    }
    if (ea.kind !== eb.kind) {
      diffs.push(`${name}: type ${ea.kind} != ${eb.kind}`);
      continue;
    }
    const sa = ea.st;
    const sb = eb.st;
    const isRoot = rel.length === 0;
    const meta = !isRoot || opts.rootMeta;
    const kind = ea.kind;

    if (meta && kind !== "symlink" && (sa.mode & 0o7777n) !== (sb.mode & 0o7777n)) {
      diffs.push(`${name}: mode ${perm(sa)} != ${perm(sb)}`);
    }
    if (meta && opts.ownership && (sa.uid !== sb.uid || sa.gid !== sb.gid)) {
      diffs.push(`${name}: owner ${sa.uid}:${sa.gid} != ${sb.uid}:${sb.gid}`);
    }
    if (kind === "file" || kind === "symlink") {
      if (sa.size !== sb.size) diffs.push(`${name}: size ${sa.size} != ${sb.size}`);
    }
    if (kind === "file" && ea.sha256 !== undefined && eb.sha256 !== undefined && ea.sha256 !== eb.sha256) {
      diffs.push(
        `${name}: content differs (sha256 ${ea.sha256.slice(0, 16)}… != ${eb.sha256.slice(0, 16)}…)`,
      );
    }
    if (kind === "symlink" && !ea.target!.equals(eb.target!)) {
      diffs.push(`${name}: symlink target ${showPath(ea.target!)} != ${showPath(eb.target!)}`);
    }
    if ((kind === "char" || kind === "block") && sa.rdev !== sb.rdev) {
      diffs.push(`${name}: rdev ${sa.rdev} != ${sb.rdev}`);
    }
    const times = meta && (kind === "dir" ? opts.dirTimes : kind === "symlink" ? opts.symlinkTimes : true);
    if (times && sa.mtimeNs !== sb.mtimeNs) {
      diffs.push(`${name}: mtime ${fmtNs(sa.mtimeNs)} != ${fmtNs(sb.mtimeNs)}`);
    }
    if (times && opts.atime && sa.atimeNs !== sb.atimeNs) {
      diffs.push(`${name}: atime ${fmtNs(sa.atimeNs)} != ${fmtNs(sb.atimeNs)}`);
    }
    if (meta && xattrs) {
      const xa = ea.xattrs ?? new Map<string, string>();
      const xb = eb.xattrs ?? new Map<string, string>();
      for (const n of new Set([...xa.keys(), ...xb.keys()])) {
        const va = xa.get(n);
        const vb = xb.get(n);
        if (va === undefined) diffs.push(`${name}: xattr ${n} only in b`);
        else if (vb === undefined) diffs.push(`${name}: xattr ${n} only in a`);
        else if (va !== vb) diffs.push(`${name}: xattr ${n} ${va} != ${vb}`);
      }
    }
    if (kind !== "dir" && ea.linkGroup !== eb.linkGroup) {
      const g = ea.linkGroup !== undefined ? `a:${ea.linkGroup}` : `b:${eb.linkGroup}`; // once per group
      if (!reportedGroups.has(g)) {
        reportedGroups.add(g);
        diffs.push(`${name}: hard links differ: in a ${describeGroup(a, ea)}; in b ${describeGroup(b, eb)}`);
      }
    }
    if (kind === "file" && opts.sparse) {
      const allocA = sa.blocks * 512n;
      const allocB = sb.blocks * 512n;
      if (allocB > 2n * allocA + 1048576n) {
        diffs.push(`${name}: not sparse: ${allocB} bytes allocated != ${allocA} (apparent size ${sa.size})`);
      }
    }
  }
  return diffs;
}

function fmtNs(ns: bigint): string {
  const s = ns / 1_000_000_000n;
  const frac = (ns % 1_000_000_000n).toString().padStart(9, "0");
  return `${s}.${frac}`;
}

function withDefaults(opts?: CompareOptions): Required<CompareOptions> {
  return {
    atime: opts?.atime ?? false,
    ownership: opts?.ownership ?? false,
    xattrs: opts?.xattrs ?? false,
    dirTimes: opts?.dirTimes ?? true,
    symlinkTimes: opts?.symlinkTimes ?? true,
    rootMeta: opts?.rootMeta ?? true,
    sparse: opts?.sparse ?? true,
  };
}

/**
 * Differences between trees `a` and `b`, one human-readable line each ("<path>: <what> <a> != <b>",
 * "<path>: only in a"); empty when identical under the given options. When xattrs are requested but
 * getfattr is missing, xattrs are not compared (a note is printed to stderr).
 */
export async function compareTrees(a: string, b: string, opts?: CompareOptions): Promise<string[]> {
  const o = withDefaults(opts);
  const sa = snapshot(a, { xattrs: o.xattrs, hash: true });
  const sb = snapshot(b, { xattrs: o.xattrs, hash: true });
  if (o.xattrs && !(sa.xattrsAvailable && sb.xattrsAvailable)) {
    process.stderr.write("compareTrees: getfattr not available; xattrs not compared\n");
  }
  return diffSnapshots(sa, sb, o);
}

/**
 * SHA-256 over a canonical description of the tree (same properties and options as compareTrees,
 * except sparseness and the root's name): equal digests mean compareTrees would report nothing.
 */
export function treeDigest(dir: string, opts?: CompareOptions): string {
  const o = withDefaults(opts);
  const snap = snapshot(dir, { xattrs: o.xattrs, hash: true });
  const h = createHash("sha256");
  const sorted = [...snap.entries.values()].sort((x, y) => Buffer.compare(x.rel, y.rel));
  for (const e of sorted) {
    const st = e.st;
    const isRoot = e.rel.length === 0;
    const meta = !isRoot || o.rootMeta;
    const times = meta && (e.kind === "dir" ? o.dirTimes : e.kind === "symlink" ? o.symlinkTimes : true);
    const fields: string[] = [e.rel.toString("hex"), e.kind];
    if (meta && e.kind !== "symlink") fields.push(perm(st));
    if (meta && o.ownership) fields.push(`${st.uid}:${st.gid}`);
    if (e.kind === "file" || e.kind === "symlink") fields.push(String(st.size));
    if (e.sha256 !== undefined) fields.push(e.sha256);
    if (e.target !== undefined) fields.push(e.target.toString("hex"));
    if (e.kind === "char" || e.kind === "block") fields.push(String(st.rdev));
    if (times) fields.push(String(st.mtimeNs));
    if (times && o.atime) fields.push(String(st.atimeNs));
    if (e.linkGroup !== undefined) fields.push(`link:${e.linkGroup}`);
    if (meta && e.xattrs) {
      for (const [n, v] of [...e.xattrs].sort(([x], [y]) => (x < y ? -1 : x > y ? 1 : 0)))
        fields.push(`${n}=${v}`);
    }
    h.update(fields.join("\x00") + "\n");
  }
  return h.digest("hex");
}
