#!/usr/bin/env node
// Entry point. An installed package runs the compiled dist/. A source checkout runs dist/ too when
// it was built after every change to src/ (`npm run build`; `npm ci` builds it), and otherwise the
// TypeScript itself through tsx, so the CLI is never a stale build. The compiled code starts in
// ~80 ms instead of ~200 ms and saves tsx's ~35 MB.
//
// CommonJS on purpose (bin/package.json): it is loaded synchronously, so the thread pool size below
// is set before Node creates the pool. An ES module entry is read with asynchronous I/O, which
// creates the pool (with 4 threads) before the module's first line runs.
"use strict";

// Compression, encryption and hashing of large blobs run on libuv's thread pool next to file I/O;
// with 4 threads, reads and writes waited behind compression jobs. An explicit setting wins.
process.env.UV_THREADPOOL_SIZE ??= "6";

const { join } = require("node:path");
const { pathToFileURL } = require("node:url");
const { runsSource } = require("./dist-fresh.js");

async function main() {
  const root = join(__dirname, "..");
  const compiled = join(root, "dist", "cli", "main.js");
  if (runsSource(root)) {
    const { register } = await import("tsx/esm/api");
    register();
    await import(pathToFileURL(join(root, "src", "cli", "main.ts")).href);
  } else {
    await import(pathToFileURL(compiled).href);
  }
}

main().catch((err) => {
  process.stderr.write(`sitekeep: ${err && err.stack ? err.stack : String(err)}\n`);
  process.exitCode = 1;
});
