// The policy is checked on a real V8 heap: a child process runs a workload that keeps a window of
// recent objects alive (as a backup keeps the entries of folders in flight) and reports how large
// the young and old generations grew, with the policy, and with it turned off.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { test } from "node:test";
import { fileURLToPath, pathToFileURL } from "node:url";

const policyUrl = pathToFileURL(fileURLToPath(new URL("./heap-policy.ts", import.meta.url))).href;

const WORKLOAD = `
import v8 from "node:v8";
const { keepHeapCompact, heapPolicyFor } = await import(${JSON.stringify(policyUrl)});
keepHeapCompact(heapPolicyFor(process.env.COMMAND ?? "backup"));
const window = new Array(150000);
let newSpace = 0, oldSpace = 0;
for (let i = 0; i < 4000000; i++) {
  window[i % window.length] = { name: "file-" + i, size: i, parts: [i, i + 1, i + 2] };
  if (i % 10000 === 0) {
    for (const s of v8.getHeapSpaceStatistics()) {
      if (s.space_name === "new_space") newSpace = Math.max(newSpace, s.space_size);
      if (s.space_name === "old_space") oldSpace = Math.max(oldSpace, s.space_size);
    }
    await new Promise((r) => setImmediate(r));
  }
}
console.log(JSON.stringify({ newSpace, oldSpace }));
`;

function heapGrowth(
  env: Record<string, string>,
  nodeArgs: string[] = [],
): { newSpace: number; oldSpace: number } {
  const r = spawnSync(
    process.execPath,
    [...nodeArgs, "--import", "tsx", "--input-type=module", "-e", WORKLOAD],
    {
      env: { ...process.env, NODE_OPTIONS: "", ...env },
      encoding: "utf8",
    },
  );
  assert.equal(r.status, 0, r.stderr);
  return JSON.parse(r.stdout) as { newSpace: number; oldSpace: number };
}

const MiB = 1024 * 1024;

test("the policy holds the young generation at 2 × 8 MiB and the old one well under V8's default", () => {
  const compact = heapGrowth({});
  const usual = heapGrowth({ SITEKEEP_COMPACT_HEAP: "0" });
  assert.equal(compact.newSpace, 16 * MiB);
  assert.ok(usual.newSpace > 16 * MiB, `V8's default young generation: ${usual.newSpace / MiB} MiB`);
  assert.ok(
    compact.oldSpace < usual.oldSpace * 0.7,
    `old space ${compact.oldSpace / MiB} MiB against ${usual.oldSpace / MiB} MiB`,
  );
});

test("a semi-space size given to Node wins over the policy", () => {
  const given = heapGrowth({}, ["--max-semi-space-size=16"]);
  assert.ok(given.newSpace > 16 * MiB, `young generation ${given.newSpace / MiB} MiB`);
});

test("check and restore hold the young generation at 2 × 2 MiB; other commands at 2 × 8 MiB", () => {
  assert.equal(heapGrowth({ COMMAND: "check" }).newSpace, 4 * MiB);
  assert.equal(heapGrowth({ COMMAND: "restore" }).newSpace, 4 * MiB);
  assert.equal(heapGrowth({ COMMAND: "forget" }).newSpace, 16 * MiB);
});
