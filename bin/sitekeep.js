#!/usr/bin/env node
// Entry point. In a source checkout (src/ and tsx present) it runs the TypeScript directly, so the
// CLI can never be a stale build; an installed package runs the compiled dist/.
//
// CommonJS on purpose (bin/package.json): it is loaded synchronously, so the thread pool size below
// is set before Node creates the pool. An ES module entry is read with asynchronous I/O, which
// creates the pool (with 4 threads) before the module's first line runs.
"use strict";

// Compression, encryption and hashing of large blobs run on libuv's thread pool next to file I/O;
// with 4 threads, reads and writes waited behind compression jobs. An explicit setting wins.
process.env.UV_THREADPOOL_SIZE ??= "6";

const { existsSync } = require("node:fs");
const { join } = require("node:path");
const { pathToFileURL } = require("node:url");

async function main() {
  const root = join(__dirname, "..");
  const source = join(root, "src", "cli", "main.ts");
  const tsx = join(root, "node_modules", "tsx");
  if (existsSync(source) && existsSync(tsx)) {
    const { register } = await import("tsx/esm/api");
    register();
    await import(pathToFileURL(source).href);
  } else {
    await import(pathToFileURL(join(root, "dist", "cli", "main.js")).href);
  }
}

main().catch((err) => {
  process.stderr.write(`sitekeep: ${err && err.stack ? err.stack : String(err)}\n`);
  process.exitCode = 1;
});
