import { test } from "node:test";
import assert from "node:assert/strict";
import { formatTimeNs, parseTimeNs } from "./gotime.js";

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
