// What a backup's work costs at the least: the single-thread throughput of each primitive the
// repository format requires (chunking, SHA-256 of every chunk, zstd, AES-256-CTR, Poly1305, SHA-256
// of every pack), measured on a sample of a benchmark dataset, and the CPU time they add up to for
// the whole dataset. Divided by the cores, that is a floor no implementation of the format beats
// on this machine (reading, walking, trees and the runtime come on top).
//
//   node --import tsx bench/primitives.ts [--set mixed|many] [--scale 1] [--work /tmp/sitekeep-bench] [--sample-mib 256]
import { createCipheriv, createHash, randomBytes } from "node:crypto";
import { cpus } from "node:os";
import { closeSync, openSync, readSync, readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import sodium from "sodium-native";
import { Compressor } from "zstd-napi";
import { Chunker } from "../src/repo/chunker.js";
import { ZSTD_LEVEL } from "../src/repo/compression.js";
import { randomPolynomial } from "../src/repo/polynomial.js";
import { parseSet, type DatasetOptions } from "./dataset.js";
import { ensureDataset } from "./run.js";

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(name);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

function listFiles(dir: string, out: string[] = []): string[] {
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) listFiles(p, out);
    else if (e.isFile()) out.push(p);
  }
  return out;
}

/**
 * A sample of about `budget` bytes that keeps the dataset's mix of chunk sizes: every nth small
 * file whole (small files are one chunk each, and per-call costs matter for them), and of each
 * large file a slice from the middle in proportion.
 */
function sample(files: string[], budget: number): { parts: Buffer[]; bytes: number } {
  const sizes = files.map((f) => statSync(f).size);
  const total = sizes.reduce((a, b) => a + b, 0);
  const share = Math.min(1, budget / total);
  const every = Math.max(1, Math.round(1 / share));
  const parts: Buffer[] = [];
  let bytes = 0;
  let small = 0;
  files.forEach((f, i) => {
    const size = sizes[i];
    let take: number;
    if (size < 1024 * 1024) take = small++ % every === 0 ? size : 0;
    else take = Math.floor(size * share);
    if (take <= 0) return;
    const buf = Buffer.allocUnsafe(take);
    const fd = openSync(f, "r");
    let n = 0;
    const from = Math.floor((size - take) / 2);
    while (n < take) {
      const r = readSync(fd, buf, n, take - n, from + n);
      if (r === 0) break;
      n += r;
    }
    closeSync(fd);
    parts.push(buf.subarray(0, n));
    bytes += n;
  });
  return { parts, bytes };
}

function time(fn: () => void): number {
  const t = process.hrtime.bigint();
  fn();
  return Number(process.hrtime.bigint() - t) / 1e9;
}

const set = parseSet(arg("--set", "mixed"));
const scale = Number(arg("--scale", "1"));
const work = arg("--work", "/tmp/sitekeep-bench");
const opts: DatasetOptions = { set, scale, seed: 1 };
const { data, stats } = ensureDataset(join(work, `dataset-${set}-${scale}-1`), opts);
const files = listFiles(data);
const totalBytes = stats.bytes;
const { parts, bytes } = sample(files, Number(arg("--sample-mib", "256")) * 1024 * 1024);

// Chunks as the archiver makes them: small files whole, large ones cut by the chunker.
const chunker = new Chunker(randomPolynomial());
const chunks: Buffer[] = [];
const tChunk = time(() => {
  for (const p of parts) {
    if (p.length < chunker.options.min) {
      chunks.push(p);
      continue;
    }
    for (let start = 0; start < p.length; ) {
      const len = chunker.cut(p, start, p.length, true);
      chunks.push(p.subarray(start, start + len));
      start += len;
    }
  }
});
const tSha = time(() => {
  for (const c of chunks) createHash("sha256").update(c).digest();
});
const z = new Compressor();
z.setParameters({ compressionLevel: ZSTD_LEVEL });
const stored: Buffer[] = [];
const tZstd = time(() => {
  for (const c of chunks) {
    const out = z.compress(c);
    stored.push(out.length < c.length ? out : c);
  }
});
const storedBytes = stored.reduce((a, b) => a + b.length, 0);
const key = randomBytes(32);
const tAes = time(() => {
  for (const s of stored) {
    const c = createCipheriv("aes-256-ctr", key, randomBytes(16));
    c.update(s);
    c.final();
  }
});
const mac = Buffer.alloc(16);
const otk = randomBytes(32);
const tPoly = time(() => {
  for (const s of stored) sodium.crypto_onetimeauth(mac, s, otk);
});
const tPack = time(() => {
  const h = createHash("sha256");
  for (const s of stored) h.update(s);
  h.digest();
});

const ratio = storedBytes / bytes;
const rows: [string, number, number][] = [
  ["chunking (FastCDC, JS)", tChunk, bytes],
  ["SHA-256 of each chunk", tSha, bytes],
  [`zstd level ${ZSTD_LEVEL}`, tZstd, bytes],
  ["AES-256-CTR", tAes, storedBytes],
  ["Poly1305", tPoly, storedBytes],
  ["SHA-256 of each pack", tPack, storedBytes],
];
const mb = (n: number): string => (n / 1e6).toFixed(0);
console.log(`${set} set at scale ${scale}: ${mb(totalBytes)} MB in ${files.length} files; sample ${mb(bytes)} MB in ${chunks.length} chunks, stored ${(ratio * 100).toFixed(0)} % of it\n`);
console.log("| primitive | throughput (one core) | CPU for the whole dataset |");
console.log("|---|--:|--:|");
let cpu = 0;
for (const [name, t, n] of rows) {
  const rate = n / t;
  const whole = (name.startsWith("AES") || name.startsWith("Poly") || name.includes("pack") ? totalBytes * ratio : totalBytes) / rate;
  cpu += whole;
  console.log(`| ${name} | ${mb(rate)} MB/s | ${whole.toFixed(2)} s |`);
}
const cores = cpus().length;
console.log(`| **sum** |  | **${cpu.toFixed(2)} s** |`);
console.log(`\nOn ${cores} cores, perfectly parallel: at least ${(cpu / cores).toFixed(2)} s of wall time for the initial backup, before reading files, walking folders, writing packs, trees and the runtime's own costs.`);
