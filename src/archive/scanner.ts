// Counts what a backup will read (files and bytes) while the archiver works, so progress can show
// an ETA. It only stats; it shares the archiver's exclude rules and stops at other filesystems
// when asked to.
import { promises as fsp } from "node:fs";
import type { PathMatcher } from "./exclude.js";

export interface ScanTotals {
  files: number;
  bytes: number;
  done: boolean;
}

export function startScan(paths: string[], exclude: PathMatcher, signal?: AbortSignal): ScanTotals {
  const totals: ScanTotals = { files: 0, bytes: 0, done: false };
  const walk = async (p: Buffer): Promise<void> => {
    if (signal?.aborted) return;
    let st;
    try {
      st = await fsp.lstat(p);
    } catch {
      return;
    }
    if (st.isFile()) {
      totals.files++;
      totals.bytes += st.size;
    } else if (st.isDirectory()) {
      let names: Buffer[];
      try {
        names = await fsp.readdir(p, { encoding: "buffer" });
      } catch {
        return;
      }
      for (const n of names) {
        const child = Buffer.concat([p, Buffer.from("/"), n]);
        if (!exclude(child.toString("utf8"))) await walk(child);
      }
    }
  };
  void (async () => {
    for (const p of paths) await walk(Buffer.from(p));
    totals.done = true;
  })();
  return totals;
}
