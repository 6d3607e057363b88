#!/usr/bin/env node
// Entry point. In a source checkout (src/ and tsx present) it runs the TypeScript directly, so the
// CLI can never be a stale build; an installed package runs the compiled dist/.
import { existsSync } from "node:fs";
import { fileURLToPath, pathToFileURL } from "node:url";
import { dirname, join } from "node:path";

// Compression, encryption and pack hashing run on libuv's thread pool next to file I/O; with the
// default 4 threads, reads and writes waited behind compression jobs. Set before anything uses
// the pool (it is created on first use); an explicit setting wins.
process.env.UV_THREADPOOL_SIZE ??= "6";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const source = join(root, "src", "cli", "main.ts");
const tsx = join(root, "node_modules", "tsx");
if (existsSync(source) && existsSync(tsx)) {
  const { register } = await import("tsx/esm/api");
  register();
  await import(pathToFileURL(source).href);
} else {
  await import(pathToFileURL(join(root, "dist", "cli", "main.js")).href);
}
