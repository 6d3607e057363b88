import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { MESSAGES } from "./status-messages.js";

test("message IDs are unique and the fixed ones keep their meaning", () => {
  assert.equal(new Set(MESSAGES.map((m) => m.id)).size, MESSAGES.length);
  assert.equal(new Set(MESSAGES.map((m) => m.key)).size, MESSAGES.length);
  const byId = new Map(MESSAGES.map((m) => [m.id, m]));
  assert.equal(byId.get(5035)?.key, "backup-completed");
  assert.equal(byId.get(5040)?.key, "after-backup-started");
  assert.equal(byId.get(5055)?.key, "backup-started");
  assert.equal(byId.get(5056)?.key, "snapshot-cut");
  assert.equal(byId.get(500)?.key, "component-started");
  // Backup failures are in 5000-5060 (architecture doc); recovery and drills have their own ranges.
  for (const m of MESSAGES.filter((x) => x.severity !== "I")) assert.ok((m.id >= 5000 && m.id <= 5060) || (m.id >= 5070 && m.id <= 5089), `${m.id} in range`);
});

test("docs/status-messages.md lists every message with its severity and meaning", () => {
  const doc = readFileSync(fileURLToPath(new URL("../../docs/status-messages.md", import.meta.url)), "utf8");
  for (const m of MESSAGES) {
    const row = doc.split("\n").find((l) => l.startsWith(`| ${m.id} |`));
    assert.ok(row, `${m.id} is in the catalog`);
    assert.ok(row.includes(`| ${m.severity} (`) && row.includes(`\`${m.key}\``) && row.includes(m.meaning), `${m.id}'s row is current: ${row}`);
  }
});
