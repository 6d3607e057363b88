import assert from "node:assert/strict";
import { test } from "node:test";
import { Backlog, mapLimit } from "./concurrency.js";

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
