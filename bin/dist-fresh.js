// Whether bin/sitekeep.js runs the TypeScript source instead of dist/: in a checkout with tsx,
// when dist/ is not the build of the current source (its stamp, dist/.built, written by
// `npm run build`, is older than a file under src/ or the package and TypeScript configuration).
// bin/sitekeep.js asks it at each start; the bench refuses to measure the source (it would time
// tsx's start-up and memory, not Sitekeep's).
"use strict";

const { existsSync, readdirSync, statSync } = require("node:fs");
const { join } = require("node:path");

/** False when anything cannot be read (then the source runs). */
function distIsFresh(root) {
  try {
    const built = statSync(join(root, "dist", ".built")).mtimeMs;
    const newer = (dir) =>
      readdirSync(dir, { withFileTypes: true }).some((e) => {
        const p = join(dir, e.name);
        return e.isDirectory() ? newer(p) : statSync(p).mtimeMs > built;
      });
    const configs = ["package.json", "tsconfig.json", "tsconfig.build.json"].map((f) => join(root, f));
    return configs.every((f) => !existsSync(f) || statSync(f).mtimeMs <= built) && !newer(join(root, "src"));
  } catch {
    return false;
  }
}

/** Whether bin/sitekeep.js runs the TypeScript source (a checkout with tsx whose dist/ is stale or missing). */
function runsSource(root) {
  return existsSync(join(root, "src", "cli", "main.ts")) && existsSync(join(root, "node_modules", "tsx")) && !distIsFresh(root);
}

module.exports = { runsSource };
