import { test } from "node:test";
import assert from "node:assert/strict";
import { formatTimeNs, formatTimeParts, parseTimeNs, parseTimeParts } from "./gotime.js";

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

test("parseTimeParts agrees with parseTimeNs, split by floor division (random times, offsets, fractions, odd and bad forms)", () => {
  const expected = (s: string): { sec: number; nsec: number } | undefined => {
    let ns: bigint;
    try {
      ns = parseTimeNs(s);
    } catch {
      return undefined;
    }
    const sec = ns / 1_000_000_000n - (ns % 1_000_000_000n < 0n ? 1n : 0n);
    return { sec: Number(sec), nsec: Number(ns - sec * 1_000_000_000n) };
  };
  const cases = [
    "2023-11-14T22:13:20Z",
    "2023-11-14T22:13:20.123456789Z",
    "2023-11-14t22:13:20.5z",
    "2023-11-14 22:13:20.000000001+00:00",
    "2023-11-15T00:13:20.5+02:00",
    "1969-12-31T23:59:59.999999999-01:30",
    "1938-04-24T22:13:20Z",
    "0000-01-01T00:00:00Z",
    "9999-12-31T23:59:59.9999999999999999999Z",
    "2023-11-14T22:13:20.1234567891234Z",
    "12023-11-14T22:13:20Z",
    "-0001-11-14T22:13:20.25Z",
    "2023-13-45T25:61:61Z",
    "2023-11-14T22:13:20.Z",
    "2023-11-14T22:13:20",
    "2023-11-14T22:13:20+0200",
    "2023-11-14T22:13:20+02:00x",
    "2023-11-14T22:13:20ZZ",
    "2023-11-14X22:13:20Z",
    "2023-1a-14T22:13:20Z",
    "+023-11-14T22:13:20Z",
    "2023-11-14T22:13:2０Z",
    "yesterday",
    "",
  ];
  for (const s of cases) assert.deepEqual(parseTimeParts(s), expected(s), s);
  assert.equal(parseTimeParts("2023-11-14T22:13:20Z")?.sec, 1700000000);
  let seed = 7;
  const rand = (n: number): number => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) % n);
  for (let k = 0; k < 5000; k++) {
    const ns = BigInt(rand(2 ** 30) - 2 ** 29) * 1_000_000_000_000n + BigInt(rand(1_000_000_000)) * 7n;
    let s = formatTimeNs(ns);
    if (k % 3 === 0) s = s.replace("Z", `${rand(2) ? "+" : "-"}${String(rand(24)).padStart(2, "0")}:${String(rand(60)).padStart(2, "0")}`);
    assert.deepEqual(parseTimeParts(s), expected(s), s);
  }
});
