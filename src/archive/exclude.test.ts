import { test } from "node:test";
import assert from "node:assert/strict";
import { compileExcludes } from "./exclude.js";

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
