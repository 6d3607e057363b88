import { test } from "node:test";
import assert from "node:assert/strict";
import { formatTimeNs, formatTimeParts, parseTimeNs } from "./gotime.js";

test("times keep every nanosecond, like Go's RFC3339Nano", () => {
  assert.equal(formatTimeNs(1700000000123456789n), "2023-11-14T22:13:20.123456789Z");
  assert.equal(formatTimeNs(1700000000120000000n), "2023-11-14T22:13:20.12Z");
  assert.equal(formatTimeNs(0n), "1970-01-01T00:00:00Z");
  assert.equal(formatTimeNs(-1n), "1969-12-31T23:59:59.999999999Z");
  assert.equal(parseTimeNs("2023-11-14T22:13:20.123456789Z"), 1700000000123456789n);
  assert.equal(parseTimeNs("2023-11-15T00:13:20.5+02:00"), 1700000000500000000n);
  assert.equal(parseTimeNs("1938-04-24T22:13:20Z"), -1000000000000000000n);
  for (const ns of [4102444800000000001n, -2208988800999999999n, 951782400000000000n]) {
    assert.equal(parseTimeNs(formatTimeNs(ns)), ns);
  }
  assert.throws(() => parseTimeNs("yesterday"), /invalid RFC 3339/);
});

test("formatTimeParts formats as formatTimeNs does (random times, before 1970, every fraction length)", () => {
  const nsecs = [0, 1, 10, 500_000_000, 123_456_789, 999_999_999, 100_000, 120_000_000];
  for (let i = 0; i < 20_000; i++) {
    const sec = Math.floor((Math.random() - 0.2) * 5e9);
    const nsec = i < nsecs.length * 10 ? nsecs[i % nsecs.length] : Math.floor(Math.random() * 1e9);
    assert.equal(formatTimeParts(sec, nsec), formatTimeNs(BigInt(sec) * 1_000_000_000n + BigInt(nsec)), `${sec} ${nsec}`);
  }
});
