// bin/dist-fresh.js: when bin/sitekeep.js runs the TypeScript source instead of dist/ (and when the
// bench refuses to measure). A checkout laid out in a temp folder, its files' times set by hand.
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync, utimesSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { test } from "node:test";

const { runsSource } = createRequire(import.meta.url)("../bin/dist-fresh.js") as { runsSource: (root: string) => boolean };

test("the source runs where dist/ is missing or older than src/ or the configuration, and only in a checkout with tsx", () => {
  const root = mkdtempSync(join(tmpdir(), "sitekeep-dist-fresh-"));
  const file = (rel: string, seconds: number): void => {
    const p = join(root, rel);
    mkdirSync(dirname(p), { recursive: true });
    writeFileSync(p, "");
    utimesSync(p, seconds, seconds);
  };
  try {
    file("src/cli/main.ts", 1000);
    file("src/repo/deep/module.ts", 1000);
    file("package.json", 1000);
    mkdirSync(join(root, "node_modules", "tsx"), { recursive: true });
    assert.equal(runsSource(root), true, "no dist/ at all");
    file("dist/.built", 2000);
    assert.equal(runsSource(root), false, "built after every source");
    file("src/repo/deep/module.ts", 3000);
    assert.equal(runsSource(root), true, "a source changed after the build");
    file("dist/.built", 4000);
    assert.equal(runsSource(root), false, "built again");
    file("tsconfig.json", 5000);
    assert.equal(runsSource(root), true, "the TypeScript configuration changed after the build");
    rmSync(join(root, "node_modules"), { recursive: true });
    assert.equal(runsSource(root), false, "without tsx (an installed package) dist/ runs whatever its age");
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
