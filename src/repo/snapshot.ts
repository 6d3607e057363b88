// Snapshot files (snapshots/<id>): the root of one backup, restic's JSON fields.

export interface SnapshotJSON {
  time: string;
  parent?: string;
  tree: string;
  paths: string[];
  hostname: string;
  username: string;
  uid?: number;
  gid?: number;
  excludes?: string[];
  tags?: string[];
  original?: string;
  program_version?: string;
}

export interface Snapshot extends SnapshotJSON {
  id: string;
}

export function shortSnapshot(s: Snapshot): { id: string; short_id: string } & SnapshotJSON {
  return { ...s, id: s.id, short_id: s.id.slice(0, 8) };
}

/** Newest first comparator by snapshot time (RFC 3339 strings in UTC compare lexically only when equal offsets; parse). */
export function byTimeDesc(a: Snapshot, b: Snapshot): number {
  return Date.parse(b.time) - Date.parse(a.time) || (a.id < b.id ? -1 : 1);
}
