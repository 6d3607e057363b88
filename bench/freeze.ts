// The freeze window of the site task (issue #5): with a ~2 GB site and a handful of files changed
// between the online pass and the freeze, how long are the writers frozen? Target: under 1 s.
// Prints figures; never fails a build.
//
//   node --import tsx bench/freeze.ts [--scale 1] [--changed 5] [--work /tmp/sitekeep-freeze] [--runs 3] [--keep]
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { generateDataset, listTree, treeStats } from "./dataset.js";
import { parseControlFile } from "../src/site/control-file.js";
import { runSiteBackup } from "../src/site/task.js";

const { values } = parseArgs({
  options: {
    scale: { type: "string", default: "1" },
    changed: { type: "string", default: "5" },
    work: { type: "string", default: "/tmp/sitekeep-freeze" },
    runs: { type: "string", default: "3" },
    keep: { type: "boolean", default: false },
  },
});
const scale = Number(values.scale);
const changed = Number(values.changed);
const work = values.work as string;
const site = join(work, "site");
const dest = join(work, "dest");
const state = join(work, "state");

mkdirSync(work, { recursive: true });
const marker = join(work, `dataset-${scale}.done`);
if (!existsSync(marker)) {
  console.log(`generating the mixed dataset at scale ${scale} in ${site} ...`);
  generateDataset(site, { set: "mixed", scale, seed: 1 }, (s) => console.log(`  ${s}`));
  writeFileSync(marker, "");
}
const stats = treeStats(site);
console.log(`site: ${stats.files} files, ${(stats.bytes / 1e9).toFixed(2)} GB`);

// The writer's freeze changes a handful of files, as the application would have between the
// online pass and the freeze: exactly these must be read again while frozen.
const files = listTree(site).files.filter((f) => f.endsWith(".txt") || f.endsWith(".md")).slice(0, changed);
const touch = join(work, "change-some.sh");
writeFileSync(touch, `#!/bin/sh\n${files.map((f) => `echo "changed $(date +%s%N)" >> '${join(site, f)}'`).join("\n")}\n`, { mode: 0o755 });

rmSync(dest, { recursive: true, force: true });
rmSync(state, { recursive: true, force: true });
mkdirSync(dest);
const config = `site: BENCH
backup:
  destination: ${dest}
files:
  - { path: ${site} }
writers:
  - { name: app, freeze: "${touch}", thaw: "true", timeout: 60s }
stateDir: ${state}
`;
const loaded = parseControlFile(config, join(work, "sitekeep.yaml"), { ...process.env, SITEKEEP_PASSWORD: "bench" });
const env = { ...process.env, SITEKEEP_PASSWORD: "bench" };
const rows: string[] = [];
for (let i = 0; i < Number(values.runs) + 1; i++) {
  const label = i === 0 ? "first run (empty repository)" : `run ${i + 1} (incremental)`;
  const t0 = performance.now();
  const r = await runSiteBackup(loaded, { env });
  const total = (performance.now() - t0) / 1000;
  if (r.status !== "succeeded") {
    console.log(`${label}: FAILED: ${r.error?.message}`);
    process.exit(0);
  }
  const row = `${label.padEnd(30)} total ${total.toFixed(1).padStart(6)} s   online files ${(r.timings.filesOnlineMs / 1000).toFixed(1).padStart(6)} s   freeze window ${String(r.freezeWindowMs).padStart(5)} ms   files changed while frozen ${r.files?.files_changed_while_frozen}`;
  console.log(row);
  rows.push(row);
}
const log = readFileSync(join(dest, "sitekeep.log"), "utf8").split("\n").filter((l) => l.includes("ID=5056")).slice(-1)[0];
console.log(`\nlast 5056: ${log?.replace(/^.*TEXT=/, "")}`);
console.log(`target: freeze window under 1000 ms with ${changed} changed files`);
if (!values.keep) rmSync(dest, { recursive: true, force: true });
