// A tree node exactly as restic stores it (field names, Go os.FileMode bits, RFC 3339 times with
// nanoseconds, names quoted as Go's strconv.Quote), and its conversion from and to a file's stat.
import type { BigIntStats } from "node:fs";
import { goQuote, goUnquote, isValidUtf8 } from "../util/goquote.js";
import { type TimeParts, formatTimeNs, formatTimeParts, parseTimeNs, parseTimeParts } from "../util/gotime.js";
import { STAT_FIELDS, StatField } from "../platform/fsx.js";
import { groupName, userName } from "../platform/users.js";

export type NodeType = "file" | "dir" | "symlink" | "dev" | "chardev" | "fifo" | "socket";

export interface ExtendedAttributeJSON {
  name: string;
  /** base64 */
  value: string;
}

/** The JSON form of a node inside a tree blob. Key order follows restic's struct. */
export interface NodeJSON {
  name: string;
  type: NodeType;
  mode?: number;
  mtime?: string;
  atime?: string;
  ctime?: string;
  uid: number;
  gid: number;
  user?: string;
  group?: string;
  inode?: number;
  device_id?: number;
  size?: number;
  links?: number;
  linktarget?: string;
  linktarget_raw?: string;
  extended_attributes?: ExtendedAttributeJSON[];
  device?: number;
  content: string[] | null;
  subtree?: string;
  error?: string;
}

// Go's os.FileMode bits.
export const GoMode = {
  dir: 0x80000000,
  symlink: 0x08000000,
  device: 0x04000000,
  namedPipe: 0x02000000,
  socket: 0x01000000,
  setuid: 0x00800000,
  setgid: 0x00400000,
  charDevice: 0x00200000,
  sticky: 0x00100000,
} as const;

const S_IFMT = 0o170000;
const S_IFDIR = 0o040000;
const S_IFLNK = 0o120000;
const S_IFBLK = 0o060000;
const S_IFCHR = 0o020000;
const S_IFIFO = 0o010000;
const S_IFSOCK = 0o140000;
const S_IFREG = 0o100000;

export function nodeTypeOf(unixMode: number): NodeType {
  switch (unixMode & S_IFMT) {
    case S_IFDIR:
      return "dir";
    case S_IFLNK:
      return "symlink";
    case S_IFBLK:
      return "dev";
    case S_IFCHR:
      return "chardev";
    case S_IFIFO:
      return "fifo";
    case S_IFSOCK:
      return "socket";
    default:
      return "file";
  }
}

/** Unix st_mode -> Go os.FileMode (as restic stores it). */
export function goModeFromUnix(unixMode: number): number {
  let m = unixMode & 0o777;
  switch (unixMode & S_IFMT) {
    case S_IFDIR: m += GoMode.dir; break;
    case S_IFLNK: m += GoMode.symlink; break;
    case S_IFBLK: m += GoMode.device; break;
    case S_IFCHR: m += GoMode.device + GoMode.charDevice; break;
    case S_IFIFO: m += GoMode.namedPipe; break;
    case S_IFSOCK: m += GoMode.socket; break;
  }
  if (unixMode & 0o4000) m += GoMode.setuid;
  if (unixMode & 0o2000) m += GoMode.setgid;
  if (unixMode & 0o1000) m += GoMode.sticky;
  return m;
}

/** Go os.FileMode -> Unix permission and special bits (the file type comes from the node's type). */
export function unixPermFromGo(goMode: number): number {
  let m = goMode & 0o777;
  // Go's high bits do not fit JS's 32-bit signed bit operations reliably: test them by division.
  const bit = (b: number): boolean => Math.floor(goMode / b) % 2 === 1;
  if (bit(GoMode.setuid)) m |= 0o4000;
  if (bit(GoMode.setgid)) m |= 0o2000;
  if (bit(GoMode.sticky)) m |= 0o1000;
  return m;
}

export function unixTypeBits(type: NodeType): number {
  switch (type) {
    case "dir": return S_IFDIR;
    case "symlink": return S_IFLNK;
    case "dev": return S_IFBLK;
    case "chardev": return S_IFCHR;
    case "fifo": return S_IFIFO;
    case "socket": return S_IFSOCK;
    default: return S_IFREG;
  }
}

export function encodeName(raw: Buffer): string {
  return goQuote(raw);
}

export function decodeName(stored: string): Buffer {
  return goUnquote(stored);
}

/** Builds a node from lstat results (content/subtree are filled in by the archiver). */
export function nodeFromStat(rawName: Buffer, st: BigIntStats, linkTarget?: Buffer): NodeJSON {
  const type = nodeTypeOf(Number(st.mode));
  const uid = Number(st.uid);
  const gid = Number(st.gid);
  const node: NodeJSON = {
    name: encodeName(rawName),
    type,
    mode: goModeFromUnix(Number(st.mode)),
    mtime: formatTimeNs(st.mtimeNs),
    atime: formatTimeNs(st.atimeNs),
    ctime: formatTimeNs(st.ctimeNs),
    uid,
    gid,
    content: null,
  };
  addOwnerAndIdentity(node, Number(st.ino), Number(st.dev));
  if (type === "file") {
    node.size = Number(st.size) || undefined;
    node.links = Number(st.nlink);
  } else if (type === "symlink") {
    node.links = Number(st.nlink);
    if (linkTarget) {
      if (isValidUtf8(linkTarget)) node.linktarget = linkTarget.toString("utf8");
      else {
        // restic (0.16+) keeps targets that are not UTF-8 as raw bytes; older versions read the lossy string.
        node.linktarget = linkTarget.toString("utf8");
        node.linktarget_raw = linkTarget.toString("base64");
      }
    }
  } else if (type === "dev" || type === "chardev") {
    node.links = Number(st.nlink);
    node.device = Number(st.rdev);
  }
  return node;
}

/**
 * The node of a regular file (its name as encodeName stores it) from lstatDirAsync's numbers: the same node nodeFromStat makes from a
 * BigInt lstat, without the BigInts (the walk over unchanged files allocates nothing else).
 */
export function fileNodeFromNumbers(storedName: string, f: Float64Array, i: number): NodeJSON {
  const b = i * STAT_FIELDS;
  const uid = f[b + StatField.uid];
  const gid = f[b + StatField.gid];
  const node: NodeJSON = {
    name: storedName,
    type: "file",
    mode: goModeFromUnix(f[b + StatField.mode]),
    mtime: formatTimeParts(f[b + StatField.mtimeSec], f[b + StatField.mtimeNsec]),
    atime: formatTimeParts(f[b + StatField.atimeSec], f[b + StatField.atimeNsec]),
    ctime: formatTimeParts(f[b + StatField.ctimeSec], f[b + StatField.ctimeNsec]),
    uid,
    gid,
    content: null,
  };
  addOwnerAndIdentity(node, f[b + StatField.ino], f[b + StatField.dev]);
  node.size = f[b + StatField.size] || undefined;
  node.links = f[b + StatField.nlink];
  return node;
}

/** User and group names of the node's uid/gid, inode and device (each only when there is one). */
function addOwnerAndIdentity(node: NodeJSON, ino: number, dev: number): void {
  const user = userName(node.uid);
  if (user) node.user = user;
  const group = groupName(node.gid);
  if (group) node.group = group;
  if (ino) node.inode = ino;
  if (dev) node.device_id = dev;
}

/** restic's field order. */
const NODE_KEYS: readonly (keyof NodeJSON)[] = [
  "name", "type", "mode", "mtime", "atime", "ctime", "uid", "gid", "user", "group", "inode", "device_id",
  "size", "links", "linktarget", "linktarget_raw", "extended_attributes", "device", "content", "subtree", "error",
];

/** Whether a field is written: restic omits empty strings and zeros, except for these. */
function written(k: keyof NodeJSON, v: unknown): boolean {
  return v !== undefined && (k === "content" || k === "uid" || k === "gid" || (v !== "" && v !== 0));
}

/** JSON key order matters only for tree IDs being stable; keep restic's order. */
export function orderedNode(n: NodeJSON): NodeJSON {
  const o: Partial<NodeJSON> = {};
  for (const k of NODE_KEYS) {
    const v = n[k];
    if (written(k, v)) (o as Record<string, unknown>)[k] = v;
  }
  if (!("content" in o)) o.content = null;
  return o as NodeJSON;
}

/**
 * True when `cur` (made from the file system now) says nothing `prev` (from the parent snapshot's
 * tree) does not: the archiver then keeps prev itself, and a folder whose entries are all kept
 * keeps its parent tree's ID without encoding and hashing the tree again. Extended attributes are
 * compared by identity (the archiver copies prev's when they cannot have changed).
 */
export function sameNode(prev: NodeJSON, cur: NodeJSON): boolean {
  // Spelled out rather than looped over NODE_KEYS: this runs for every unchanged file.
  return (
    prev.name === cur.name &&
    prev.type === cur.type &&
    opt(prev.mode) === opt(cur.mode) &&
    opt(prev.mtime) === opt(cur.mtime) &&
    opt(prev.atime) === opt(cur.atime) &&
    opt(prev.ctime) === opt(cur.ctime) &&
    prev.uid === cur.uid &&
    prev.gid === cur.gid &&
    opt(prev.user) === opt(cur.user) &&
    opt(prev.group) === opt(cur.group) &&
    opt(prev.inode) === opt(cur.inode) &&
    opt(prev.device_id) === opt(cur.device_id) &&
    opt(prev.size) === opt(cur.size) &&
    opt(prev.links) === opt(cur.links) &&
    opt(prev.linktarget) === opt(cur.linktarget) &&
    opt(prev.linktarget_raw) === opt(cur.linktarget_raw) &&
    prev.extended_attributes === cur.extended_attributes &&
    opt(prev.device) === opt(cur.device) &&
    sameContent(prev.content, cur.content) &&
    opt(prev.subtree) === opt(cur.subtree) &&
    opt(prev.error) === opt(cur.error)
  );
}

/** A field as written: restic omits zeros and empty strings (see orderedNode). */
function opt<T>(v: T): T | undefined {
  return v === 0 || v === "" ? undefined : v;
}

/** Content lists compared by value; a missing one is written as null, which is not []. */
function sameContent(a: string[] | null | undefined, b: string[] | null | undefined): boolean {
  if (a === b) return true;
  if (a == null || b == null) return (a == null) === (b == null);
  return a.length === b.length && a.every((h, i) => h === b[i]);
}

export function linkTargetBytes(n: NodeJSON): Buffer {
  if (n.linktarget_raw) return Buffer.from(n.linktarget_raw, "base64");
  return Buffer.from(n.linktarget ?? "", "utf8");
}

/** timeNs as seconds and nanoseconds, without BigInts (a restore takes two per small file). */
export function timeParts(s: string | undefined): TimeParts | undefined {
  return s ? parseTimeParts(s) : undefined;
}

export function timeNs(s: string | undefined): bigint | undefined {
  if (!s) return undefined;
  try {
    return parseTimeNs(s);
  } catch {
    return undefined;
  }
}
