import { test } from "node:test";
import assert from "node:assert/strict";
import { Gatherer } from "./gather.js";

/** A runner that records each batch and settles it only when told to. */
function heldRunner(): {
  run: (b: number[]) => Promise<string[]>;
  batches: number[][];
  finish: (err?: Error) => void;
} {
  const batches: number[][] = [];
  const held: { resolve: () => void; reject: (e: Error) => void }[] = [];
  const run = async (b: number[]): Promise<string[]> => {
    batches.push([...b]);
    await new Promise<void>((resolve, reject) => held.push({ resolve, reject }));
    return b.map((q) => `r${q}`);
  };
  const finish = (err?: Error): void => {
    const h = held.shift();
    if (err) h?.reject(err);
    else h?.resolve();
  };
  return { run, batches, finish };
}

const until = async (cond: () => boolean): Promise<void> => {
  for (let i = 0; i < 100 && !cond(); i++) await new Promise((r) => setImmediate(r));
  assert.ok(cond(), "timed out");
};

const sizeLimit = (max: number) => ({
  fits: (b: readonly number[], q: number) => b.reduce((s, x) => s + x, 0) + q <= max,
  full: (b: readonly number[]) => b.reduce((s, x) => s + x, 0) >= max,
});

test("a request leaves at once when nothing is out; later ones gather until a batch comes back", async () => {
  const r = heldRunner();
  const g = new Gatherer(r.run, { eager: 1, ...sizeLimit(100) });
  const first = g.add(1);
  assert.deepEqual(r.batches, [[1]]);
  const rest = [g.add(2), g.add(3), g.add(4)];
  assert.deepEqual(r.batches, [[1]], "one batch is out: the others wait");
  r.finish();
  assert.equal(await first, "r1");
  await until(() => r.batches.length === 2);
  assert.deepEqual(r.batches[1], [2, 3, 4]);
  r.finish();
  assert.deepEqual(await Promise.all(rest), ["r2", "r3", "r4"]);
});

test("with `eager` batches allowed out, that many leave before requests gather", async () => {
  const r = heldRunner();
  const g = new Gatherer(r.run, { eager: 2, ...sizeLimit(100) });
  const all = [g.add(1), g.add(2), g.add(3), g.add(4)];
  assert.deepEqual(r.batches, [[1], [2]]);
  r.finish();
  await until(() => r.batches.length === 3);
  assert.deepEqual(r.batches[2], [3, 4]);
  r.finish();
  r.finish();
  assert.deepEqual(await Promise.all(all), ["r1", "r2", "r3", "r4"]);
});

test("a full batch leaves without waiting, and a request that does not fit starts the next one", async () => {
  const r = heldRunner();
  const g = new Gatherer(r.run, { eager: 1, ...sizeLimit(10) });
  const all = [g.add(1), g.add(4), g.add(6), g.add(7), g.add(5)];
  // [1] leaves (nothing was out); [4, 6] is full at 10 and leaves; 7 opens a batch that 5 does
  // not fit (12 > 10): [7] leaves when 5 arrives, and [5] waits for a batch to come back.
  assert.deepEqual(r.batches, [[1], [4, 6], [7]]);
  for (let i = 0; i < 3; i++) r.finish();
  await until(() => r.batches.length === 4);
  assert.deepEqual(r.batches[3], [5]);
  r.finish();
  assert.deepEqual(await Promise.all(all), ["r1", "r4", "r6", "r7", "r5"]);
});

test("a failed batch fails each of its requests; the next batch still runs", async () => {
  const r = heldRunner();
  const g = new Gatherer(r.run, { eager: 0, ...sizeLimit(100) }); // eager 0 acts as 1: nothing hangs
  const first = g.add(1);
  const failed = [g.add(2), g.add(3)].map((p) => p.then(String, (e: Error) => e.message));
  r.finish();
  assert.equal(await first, "r1");
  await until(() => r.batches.length === 2);
  r.finish(new Error("broken"));
  assert.deepEqual(await Promise.all(failed), ["broken", "broken"]);
  const later = g.add(5);
  assert.deepEqual(r.batches[2], [5]);
  r.finish();
  assert.equal(await later, "r5");
});
