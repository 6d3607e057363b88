// uid/gid <-> names from /etc/passwd and /etc/group, read once (Node has no getpwuid).
import { readFileSync } from "node:fs";

let users: Map<number, string> | undefined;
let groups: Map<number, string> | undefined;

function parse(path: string): Map<number, string> {
  const m = new Map<number, string>();
  try {
    for (const line of readFileSync(path, "utf8").split("\n")) {
      const f = line.split(":");
      if (f.length >= 3 && f[0] && !m.has(Number(f[2]))) m.set(Number(f[2]), f[0]);
    }
  } catch {
    // No such database (containers, other systems): names stay empty, numbers still work.
  }
  return m;
}

export function userName(uid: number): string | undefined {
  users ??= parse("/etc/passwd");
  return users.get(uid);
}

export function groupName(gid: number): string | undefined {
  groups ??= parse("/etc/group");
  return groups.get(gid);
}
