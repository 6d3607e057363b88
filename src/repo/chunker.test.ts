import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { nativeAddon } from "../platform/native.js";
import { Chunker, DEFAULT_CHUNKER_OPTIONS, spreadMask, type ChunkerOptions } from "./chunker.js";
import {
  formatPolynomial,
  isIrreducible,
  parsePolynomial,
  polyDegree,
  polyMul,
  randomPolynomial,
} from "./polynomial.js";

const POL = 0x3da3358b4dc173n;
const SMALL: ChunkerOptions = { min: 2048, avg: 8192, max: 65536 };

/** Deterministic pseudo-random bytes (xorshift32). */
function pseudoRandom(size: number, seed: number): Buffer {
  const buf = Buffer.alloc(size);
  const words = new Uint32Array(buf.buffer, buf.byteOffset, size >>> 2);
  let x = seed | 0 || 1;
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    words[i] = x;
  }
  for (let i = words.length * 4; i < size; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    buf[i] = x & 0xff;
  }
  return buf;
}

/** Chunk lengths of a whole buffer, feeding cut() exactly as a streaming caller would. */
function chunkAll(c: Chunker, data: Uint8Array): number[] {
  const out: number[] = [];
  let start = 0;
  while (start < data.length) {
    const eof = data.length - start <= c.options.max;
    const n = c.cut(data, start, data.length, eof);
    out.push(n);
    start += n;
  }
  return out;
}

function chunkHashes(c: Chunker, data: Buffer): string[] {
  let off = 0;
  return chunkAll(c, data).map((n) => {
    const h = createHash("sha256").update(data.subarray(off, off + n)).digest("hex");
    off += n;
    return h;
  });
}

test("polynomial: irreducibility", () => {
  assert.equal(isIrreducible(POL), true);
  assert.equal(isIrreducible(0b111n), true); // x^2+x+1
  assert.equal(isIrreducible(0b101n), false); // x^2+1 = (x+1)^2
  assert.equal(isIrreducible(0b11n), true); // x+1
  assert.equal(isIrreducible(0b1011n), true); // x^3+x+1
  assert.equal(isIrreducible(0b110n), false); // x^2+x
  assert.equal(isIrreducible(1n), false);
  assert.equal(isIrreducible(0n), false);
  assert.equal(isIrreducible(polyMul(POL, 0b111n)), false);
  assert.equal(isIrreducible(polyMul(POL, POL)), false);
  assert.equal(isIrreducible(polyMul(0b1011n, 0b10011n)), false);
  // Count irreducible polynomials of degree 8: there are 30.
  let count = 0;
  for (let p = 256n; p < 512n; p++) if (isIrreducible(p)) count++;
  assert.equal(count, 30);
});

test("polynomial: random, format, parse", () => {
  for (let i = 0; i < 5; i++) {
    const p = randomPolynomial();
    assert.equal(polyDegree(p), 53);
    assert.equal(isIrreducible(p), true);
    assert.equal(parsePolynomial(formatPolynomial(p)), p);
  }
  // Deterministic with an injected random source.
  let seed = 7;
  const rnd = (n: number): Buffer => pseudoRandom(n, seed++);
  const a = randomPolynomial(rnd);
  seed = 7;
  assert.equal(randomPolynomial(rnd), a);

  assert.equal(formatPolynomial(POL), "3da3358b4dc173");
  assert.equal(parsePolynomial("3da3358b4dc173"), POL);
  assert.equal(parsePolynomial("0x3DA3358B4DC173"), POL);
  assert.throws(() => parsePolynomial(""));
  assert.throws(() => parsePolynomial("xyz"));
  assert.throws(() => parsePolynomial("0"));
  assert.throws(() => parsePolynomial("1".repeat(17)));
});

test("chunker: options and masks", () => {
  const c = new Chunker(POL);
  assert.deepEqual(c.options, DEFAULT_CHUNKER_OPTIONS);
  assert.deepEqual(new Chunker(POL, { max: 1 << 24 }).options, { ...DEFAULT_CHUNKER_OPTIONS, max: 1 << 24 });
  assert.throws(() => new Chunker(POL, { avg: 1000 }));
  assert.throws(() => new Chunker(POL, { min: 4096, avg: 2048, max: 8192 }));
  for (const n of [1, 8, 18, 22, 32]) {
    const m = spreadMask(n) >>> 0;
    assert.equal(m.toString(2).replace(/0/g, "").length, n);
    assert.ok(m & 0x80000000);
  }
  assert.equal(c.cut(Buffer.alloc(100), 0, 100, false), 0); // undecided: more bytes may come
  assert.equal(c.cut(Buffer.alloc(100), 0, 100, true), 100);
  assert.equal(c.cut(Buffer.alloc(100), 40, 100, true), 60);
});

test("chunker: deterministic, bounded, lossless", () => {
  const data = pseudoRandom(8 * 1024 * 1024 + 123, 1);
  const c = new Chunker(POL, SMALL);
  const a = chunkAll(c, data);
  assert.deepEqual(chunkAll(new Chunker(POL, SMALL), data), a);
  assert.ok(a.length > 100);
  a.forEach((n, i) => {
    assert.ok(n <= SMALL.max, `chunk ${i} too large: ${n}`);
    if (i < a.length - 1) assert.ok(n >= SMALL.min, `chunk ${i} too small: ${n}`);
  });
  let off = 0;
  const parts = a.map((n) => {
    const p = data.subarray(off, off + n);
    off += n;
    return p;
  });
  assert.ok(Buffer.concat(parts).equals(data));

  // Cutting a chunk out of a larger buffer (end beyond max) gives the same result.
  let start = 0;
  for (const n of a.slice(0, 20)) {
    const window = Buffer.concat([Buffer.alloc(5, 9), data.subarray(start, start + SMALL.max)]);
    assert.equal(c.cut(window, 5, window.length, false), n);
    start += n;
  }
});

test("chunker: average size on 64 MiB with default options", () => {
  const data = pseudoRandom(64 * 1024 * 1024, 42);
  const c = new Chunker(POL);
  const sizes = chunkAll(c, data);
  const avg = data.length / sizes.length;
  const ratio = avg / c.options.avg;
  assert.ok(ratio >= 0.6 && ratio <= 1.6, `average ${avg} is ${ratio.toFixed(2)}x of ${c.options.avg}`);
  sizes.slice(0, -1).forEach((n) => assert.ok(n >= c.options.min && n <= c.options.max));
});

test("chunker: average size with small options", () => {
  const data = pseudoRandom(32 * 1024 * 1024, 3);
  const sizes = chunkAll(new Chunker(POL, SMALL), data);
  const ratio = data.length / sizes.length / SMALL.avg;
  assert.ok(ratio >= 0.8 && ratio <= 1.4, `ratio ${ratio}`);
});

test("chunker: shift resistance", () => {
  const data = pseudoRandom(16 * 1024 * 1024, 5);
  const c = new Chunker(POL, SMALL);
  const before = chunkHashes(c, data);
  const edited = Buffer.concat([data.subarray(0, 1000), pseudoRandom(100, 99), data.subarray(1000)]);
  const after = new Set(chunkHashes(c, edited));
  const kept = before.filter((h) => after.has(h)).length;
  assert.ok(kept >= before.length - 3, `only ${kept} of ${before.length} chunks survived`);
});

test("chunker: different polynomials cut differently", () => {
  const data = pseudoRandom(4 * 1024 * 1024, 11);
  const a = chunkAll(new Chunker(POL, SMALL), data);
  const other = randomPolynomial();
  const b = chunkAll(new Chunker(other, SMALL), data);
  assert.notDeepEqual(a, b);
  // Boundaries mostly differ.
  const ends = (s: number[]): Set<number> => {
    let o = 0;
    return new Set(s.map((n) => (o += n)));
  };
  const ea = ends(a);
  const shared = [...ends(b)].filter((e) => ea.has(e)).length;
  assert.ok(shared < a.length / 4, `${shared} of ${a.length} boundaries shared`);
});

test("chunker: zero data cuts at max", () => {
  for (const pol of [POL, randomPolynomial(), randomPolynomial()]) {
    const c = new Chunker(pol);
    const zeros = Buffer.alloc(3 * c.options.max + 5);
    assert.deepEqual(chunkAll(c, zeros), [c.options.max, c.options.max, c.options.max, 5]);
    const s = new Chunker(pol, SMALL);
    const sizes = chunkAll(s, Buffer.alloc(10 * SMALL.max));
    assert.ok(sizes.every((n) => n === SMALL.max));
  }
});

test("chunker: cutAndHash (native on the thread pool, and here) cuts and hashes exactly like cut()", async () => {
  // The addon is built for every test run (scripts/test.sh); without it this would compare the
  // fallback with itself.
  if (process.env.SITEKEEP_NO_NATIVE !== "1") assert.ok(nativeAddon?.chunkhash, "native chunkhash is not loaded");
  const cases: [ChunkerOptions | undefined, Buffer][] = [
    [SMALL, pseudoRandom(3 * 1024 * 1024 + 77, 21)],
    [undefined, pseudoRandom(40 * 1024 * 1024 + 3, 22)],
    [{ min: 16, avg: 64, max: 1024 }, pseudoRandom(300_001, 23)], // min below the 32-byte window
    [{ min: 0, avg: 8, max: 32 }, pseudoRandom(5000, 24)],
    [SMALL, Buffer.alloc(10 * SMALL.max + 9)],
  ];
  for (const [opts, data] of cases) {
    const c = new Chunker(POL, opts);
    const want = chunkAll(c, data);
    const wantIds = chunkHashes(c, data);
    const show = (cs: { length: number; id: Buffer }[]): [number, string][] => cs.map((x) => [x.length, x.id.toString("hex")]);
    for (const run of [(...a: Parameters<Chunker["cutAndHash"]>) => c.cutAndHash(...a), async (...a: Parameters<Chunker["cutAndHash"]>) => c.cutAndHashHere(...a)]) {
      // Everything at once, at eof, from an offset into a larger buffer.
      const framed = Buffer.concat([Buffer.alloc(7, 1), data, Buffer.alloc(5, 2)]);
      const all = await run(framed, 7, 7 + data.length, true);
      assert.deepEqual(show(all), want.map((n, i) => [n, wantIds[i]]));
      // Not at eof: every chunk but the tail (whose end only eof decides) is found, the same, and
      // the tail is shorter than max; a window that ends just past a boundary finds that chunk.
      const some = await run(data, 0, data.length, false);
      const used = some.reduce((t, x) => t + x.length, 0);
      assert.ok(data.length - used < c.options.max && data.length - used > 0);
      assert.deepEqual(show(some), show(all).slice(0, all.length - 1));
      if (all.length > 2) {
        const firstTwo = all[0]!.length + all[1]!.length;
        assert.deepEqual(show(await run(data, 0, firstTwo, false)), show(all).slice(0, 2));
        assert.deepEqual(show(await run(data, 0, firstTwo - 1, false)), show(all).slice(0, 1));
      }
      assert.deepEqual(await run(data, 5, 5, true), []);
    }
  }
  await assert.rejects(() => new Chunker(POL).cutAndHash(Buffer.alloc(10), 4, 11, true), RangeError);
});
