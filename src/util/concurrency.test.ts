import assert from "node:assert/strict";
import { test } from "node:test";
import { Backlog, Semaphore, mapLimit, mapWithSpare } from "./concurrency.js";

test("a backlog lets its producer on while below the limit, and wakes it when work is done", async () => {
  const backlog = new Backlog(10);
  backlog.add(6);
  await backlog.below(); // 6 < 10: at once
  backlog.add(4);
  let woke = false;
  const waiting = backlog.below().then(() => (woke = true));
  await new Promise((r) => setImmediate(r));
  assert.equal(woke, false, "10 queued: the producer waits");
  backlog.done(4);
  await waiting;
  assert.equal(woke, true, "back to 6: the producer goes on");
});

test("mapLimit runs at most `limit` at once and throws the first error after the others settle", async () => {
  let running = 0;
  let most = 0;
  const settled: number[] = [];
  await assert.rejects(
    mapLimit([1, 2, 3, 4, 5, 6], 2, async (n) => {
      running++;
      most = Math.max(most, running);
      await new Promise((r) => setTimeout(r, n === 3 ? 1 : 5));
      running--;
      settled.push(n);
      if (n === 3) throw new Error("three");
    }),
    /three/,
  );
  assert.equal(most, 2);
  assert.equal(running, 0, "nothing still running when it throws");
  assert.ok(!settled.includes(6), "no new work after the failure");
});

/** A tree `depth` levels deep with `fanOut` children per node, walked with mapWithSpare. */
async function walkTree(depth: number, fanOut: number, spare: Semaphore): Promise<{ visited: number; mostLeaves: number; mostOpen: number }> {
  let open = 0;
  let leaves = 0;
  const r = { visited: 0, mostLeaves: 0, mostOpen: 0 };
  const visit = async (level: number): Promise<void> => {
    open++;
    r.visited++;
    r.mostOpen = Math.max(r.mostOpen, open);
    if (level === depth) {
      leaves++;
      r.mostLeaves = Math.max(r.mostLeaves, leaves);
      await new Promise((resolve) => setTimeout(resolve, 1));
      leaves--;
    } else {
      await mapWithSpare(Array.from({ length: fanOut }, () => level + 1), spare, visit);
    }
    open--;
  };
  await visit(0);
  return r;
}

test("mapWithSpare walks a tree with at most (spare units + 1) branches, and one branch without any", async () => {
  const all = (4 ** 5 - 1) / 3; // nodes of a 4-ary tree of depth 4
  const four = await walkTree(4, 4, new Semaphore(4));
  assert.equal(four.visited, all);
  assert.equal(four.mostLeaves, 5, "four spare units: five leaves at once");
  assert.ok(four.mostOpen <= 5 * 5, `at most (units + 1) x (depth + 1) open, was ${four.mostOpen}`);
  const none = await walkTree(4, 4, new Semaphore(0));
  assert.equal(none.visited, all);
  assert.equal(none.mostLeaves, 1, "no spare unit: depth first, one leaf at a time");
  assert.equal(none.mostOpen, 5);
  // Without a bound (mapLimit of 4 at every level) the same tree opens every leaf at once.
  const spare = new Semaphore(1_000_000);
  const wide = await walkTree(4, 4, spare);
  assert.equal(wide.mostLeaves, 4 ** 4);
  assert.equal(spare.tryAcquire(), true, "units are given back");
});

test("mapWithSpare stops at the first error and throws it once the work beside has settled", async () => {
  const spare = new Semaphore(1);
  const started: number[] = [];
  let running = 0;
  await assert.rejects(
    mapWithSpare([1, 2, 3, 4, 5], spare, async (n) => {
      started.push(n);
      running++;
      await new Promise((r) => setTimeout(r, n === 1 ? 20 : 1));
      running--;
      if (n === 2) throw new Error("two");
    }),
    /two/,
  );
  assert.equal(running, 0, "item 1, beside, finished before the error was thrown");
  assert.deepEqual(started, [1, 2], "nothing started after the failure");
  assert.equal(spare.tryAcquire(), true, "the unit came back");
});

test("mapWithSpare: work beside that fails while an item runs inline is reported, not left unhandled", async () => {
  const unhandled: unknown[] = [];
  const onUnhandled = (reason: unknown): void => {
    unhandled.push(reason);
  };
  process.on("unhandledRejection", onUnhandled);
  try {
    const started: number[] = [];
    await assert.rejects(
      mapWithSpare([1, 2, 3], new Semaphore(1), async (n) => {
        started.push(n);
        if (n === 1) throw new Error("one, beside");
        await new Promise((r) => setTimeout(r, 30)); // item 2, inline, outlives item 1's failure
      }),
      /one, beside/,
    );
    await new Promise((r) => setImmediate(r));
    assert.deepEqual(unhandled, []);
    assert.deepEqual(started, [1, 2], "nothing started after the failure");
  } finally {
    process.off("unhandledRejection", onUnhandled);
  }
});
