// Throughput of Chunker.cut over 256 MiB of random data: node --import tsx bench/chunker.ts
import { randomFillSync } from "node:crypto";
import { Chunker } from "../src/repo/chunker.js";
import { randomPolynomial } from "../src/repo/polynomial.js";

const SIZE = 256 * 1024 * 1024;
const ROUNDS = 3;

const data = Buffer.allocUnsafe(SIZE);
for (let off = 0; off < SIZE; off += 1 << 30) randomFillSync(data, off, Math.min(1 << 30, SIZE - off));
const chunker = new Chunker(randomPolynomial());

function run(): { chunks: number; seconds: number } {
  const t0 = process.hrtime.bigint();
  let start = 0;
  let chunks = 0;
  while (start < SIZE) {
    start += chunker.cut(data, start, SIZE, SIZE - start <= chunker.options.max);
    chunks++;
  }
  return { chunks, seconds: Number(process.hrtime.bigint() - t0) / 1e9 };
}

run(); // warm-up
let best = Infinity;
let chunks = 0;
for (let r = 0; r < ROUNDS; r++) {
  const res = run();
  best = Math.min(best, res.seconds);
  chunks = res.chunks;
}
const mb = SIZE / 1e6;
console.log(
  `Chunker.cut: ${(mb / best).toFixed(0)} MB/s (${(SIZE / 1048576 / best).toFixed(0)} MiB/s), ` +
    `${chunks} chunks, average ${(SIZE / chunks / 1024).toFixed(0)} KiB, best of ${ROUNDS} over 256 MiB`,
);
