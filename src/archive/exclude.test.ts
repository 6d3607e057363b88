import { test } from "node:test";
import assert from "node:assert/strict";
import { compileExcludes, compileMayMatchBelow } from "./exclude.js";

test("exclude patterns match like restic's: anchored with a leading slash, else any trailing part", () => {
  const m = compileExcludes(["*.tmp", "logs", "/srv/app/cache/**", "build/*.o", "# a comment", ""]);
  assert.equal(m("/srv/app/a.tmp"), true);
  assert.equal(m("/srv/app/a.tmp.keep"), false);
  assert.equal(m("/srv/app/logs"), true);
  assert.equal(m("/srv/app/mylogs"), false);
  assert.equal(m("/srv/app/cache/x/y"), true);
  assert.equal(m("/other/srv/app/cache/x"), false);
  assert.equal(m("/src/build/main.o"), true);
  assert.equal(m("/src/build/sub/main.o"), false);
  assert.equal(compileExcludes([])("/anything"), false);
  assert.equal(compileExcludes(["file[0-9].txt"])("/d/file7.txt"), true);
  assert.equal(compileExcludes(["file[!0-9].txt"])("/d/file7.txt"), false);
});

test("include patterns prune folders below which nothing can match; unanchored or crossing patterns prune nothing", () => {
  const below = compileMayMatchBelow(["/srv/app/conf/site.yml", "/var/lib/db?/data/", "# comment"]);
  assert.equal(below("/"), true);
  assert.equal(below("/srv"), true);
  assert.equal(below("/srv/app/conf"), true);
  assert.equal(below("/srv/app/conf/site.yml"), false, "the file itself is matched, not something below it");
  assert.equal(below("/srv/other"), false);
  assert.equal(below("/usr"), false);
  assert.equal(below("/var/lib/db1"), true);
  assert.equal(below("/var/lib/db12"), false);
  assert.equal(below("/var/lib/db1/data"), false);
  for (const p of ["site.yml", "/srv/**/site.yml", "/srv/app/[cd]onf/x", "/srv/a\\*b/x"]) {
    assert.equal(compileMayMatchBelow(["/srv/app/conf/site.yml", p])("/usr/share/deep"), true, p);
  }
  assert.equal(compileMayMatchBelow([])("/anything"), false);
});
