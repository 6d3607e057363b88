import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { Chunker, type ChunkerOptions } from "../repo/chunker.js";
import { forEachChunk, type ReadFn } from "./chunk-reader.js";

const POL = 0x3da3358b4dc173n;
const SMALL: ChunkerOptions = { min: 2048, avg: 8192, max: 65536 };

/** A source that hands out at most `step` bytes per read (as pipes and short reads do). */
function source(data: Buffer, step: number): ReadFn {
  let at = 0;
  return async (buf, offset, length) => {
    const n = Math.min(length, step, data.length - at);
    data.copy(buf, offset, at, at + n);
    at += n;
    return n;
  };
}

async function chunksOf(c: Chunker, data: Buffer, step: number, buffer?: Buffer): Promise<[string, string][]> {
  const out: [string, string][] = [];
  const total = await forEachChunk(
    c,
    source(data, step),
    async (chunk, id) => {
      out.push([createHash("sha256").update(chunk).digest("hex"), id.toString("hex")]);
    },
    buffer,
  );
  assert.equal(total, data.length);
  return out;
}

test("forEachChunk: the chunks of a stream are those of the whole buffer, each with its SHA-256", async () => {
  for (const [opts, size] of [
    [SMALL, 2 * 1024 * 1024 + 5],
    [undefined, 20 * 1024 * 1024 + 11],
  ] as const) {
    const c = new Chunker(POL, opts);
    const data = randomBytes(size);
    const whole = c.cutAndHashHere(data, 0, data.length, true);
    let off = 0;
    const want = whole.map((x) => {
      const h = createHash("sha256").update(data.subarray(off, (off += x.length))).digest("hex");
      assert.equal(h, x.id.toString("hex"));
      return [h, h];
    });
    assert.ok(want.length > 10);
    assert.deepEqual(await chunksOf(c, data, 1 << 30), want);
    assert.deepEqual(await chunksOf(c, data, 100_003), want); // short reads
    assert.deepEqual(await chunksOf(c, data, 1 << 30, Buffer.alloc(c.options.min)), want); // a buffer that must grow
    // The tightest buffer that still makes progress: one byte beyond a maximum chunk.
    assert.deepEqual(await chunksOf(c, data, 1 << 30, Buffer.alloc(c.options.max + 1)), want);
  }
  // Zeros have no boundary: every chunk is cut at the maximum, whatever the buffer's size.
  const flat = new Chunker(POL, SMALL);
  const zeros = Buffer.alloc(10 * SMALL.max + 123);
  const maxHash = createHash("sha256").update(zeros.subarray(0, SMALL.max)).digest("hex");
  const tailHash = createHash("sha256").update(zeros.subarray(0, 123)).digest("hex");
  const wantFlat: [string, string][] = [...Array.from({ length: 10 }, (): [string, string] => [maxHash, maxHash]), [tailHash, tailHash]];
  for (const buffer of [undefined, Buffer.alloc(SMALL.max + 1), Buffer.alloc(SMALL.max + 4096)]) {
    assert.deepEqual(await chunksOf(flat, zeros, 1 << 30, buffer), wantFlat);
    assert.deepEqual(await chunksOf(flat, zeros, 5000, buffer), wantFlat);
  }
  const c = new Chunker(POL, SMALL);
  assert.deepEqual(await chunksOf(c, Buffer.alloc(0), 10), []);
  const tiny = randomBytes(100);
  const h = createHash("sha256").update(tiny).digest("hex");
  assert.deepEqual(await chunksOf(c, tiny, 7), [[h, h]]);
});

test("forEachChunk: a held chunk keeps its bytes until its hold settles, also when a later chunk fails", async () => {
  const c = new Chunker(POL, SMALL);
  const data = randomBytes(40 * SMALL.max + 17); // a buffer of max + 1 MiB: two rounds; of max + 1: ~40
  const later = (ms: number): Promise<void> => new Promise((res) => setTimeout(res, ms));
  for (const failAt of [undefined, 25]) {
    const checks: Promise<void>[] = [];
    let n = 0;
    let holdsOpen = 0;
    const run = forEachChunk(
      c,
      source(data, 1 << 30),
      async (chunk, id, hold) => {
        if (n++ === failAt) throw new Error("failed here");
        holdsOpen++;
        // Read after a delay, as a job on the thread pool would: the bytes must still be the chunk's.
        const check = later(3).then(() => {
          assert.equal(createHash("sha256").update(chunk).digest("hex"), id.toString("hex"));
          holdsOpen--;
        });
        checks.push(check);
        hold(check);
      },
      Buffer.alloc(SMALL.max + 1),
    );
    if (failAt === undefined) assert.equal(await run, data.length);
    else await assert.rejects(run, /failed here/);
    assert.equal(holdsOpen, 0, "forEachChunk settled before the holds did");
    await Promise.all(checks);
    assert.ok(failAt === undefined ? n > 100 : n === failAt + 1, `${n} chunks`);
  }
});
