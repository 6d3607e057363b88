// What a site source (a database, a capture) hands to the task: file nodes for the snapshot and an
// entry for the site manifest. Sources never touch the repository; they stream bytes to `store`.
import { createHash, type Hash } from "node:crypto";
import type { ReadFn } from "../../archive/chunk-reader.js";
import type { NodeJSON } from "../../archive/node.js";

/** Stores a stream as a file of the snapshot's .sitekeep folder; resolves to its node. */
export type StoreStream = (relPath: string, read: ReadFn) => Promise<NodeJSON>;

export interface SourceContext {
  store: StoreStream;
  /** A private (0700) scratch folder for this run, removed afterwards. */
  tmpDir: string;
  signal?: AbortSignal;
  log: (line: string) => void;
}

export interface DumpFile {
  /** Path inside the snapshot, e.g. "/.sitekeep/databases/site.pgdump". */
  file: string;
  format: string;
  bytes: number;
  sha256: string;
}

export interface DatabaseManifestEntry {
  name: string;
  kind: string;
  engineVersion: string;
  dumpTool: string;
  dump: DumpFile;
  /** Roles and tablespaces (PostgreSQL). */
  globals?: DumpFile;
  /** Size of the live database when it was dumped. */
  databaseBytes?: number;
  /** Rows per table at dump time, from the same consistent view as the dump. */
  tables: Record<string, number>;
  startedAt: string;
  durationMs: number;
  /** Where it came from, without any password. */
  location: string;
  /** SQLite: the database file's permission bits and owner, restored with it on a new machine. */
  file?: { mode: number; uid: number; gid: number };
}

/** Wraps a ReadFn so that the bytes passing through are hashed and counted. */
export function hashingReader(read: ReadFn): { read: ReadFn; result: () => { bytes: number; sha256: string } } {
  const h: Hash = createHash("sha256");
  let bytes = 0;
  return {
    read: async (buf, offset, length) => {
      const n = await read(buf, offset, length);
      if (n > 0) {
        h.update(buf.subarray(offset, offset + n));
        bytes += n;
      }
      return n;
    },
    result: () => ({ bytes, sha256: h.digest("hex") }),
  };
}

/** A URL with its password (if any) removed, for manifests and logs. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = "***";
    return u.toString();
  } catch {
    return url.replace(/\/\/([^/:@]+):[^@]*@/, "//$1:***@");
  }
}
