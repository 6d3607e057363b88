process.env.TZ = "UTC"; // buckets use local time; pin it before any Date is made

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { describe, it } from "node:test";

import { SitekeepError } from "../errors.js";
import type { Snapshot } from "../repo/snapshot.js";
import {
  applyPolicy,
  forgetPlan,
  groupSnapshots,
  isEmptyPolicy,
  parseDuration,
  PROTECTED_REASON,
  type KeepReason,
  type RetentionPolicy,
} from "./retention.js";

function snap(time: string, extra: Partial<Snapshot> = {}): Snapshot {
  const id = createHash("sha256")
    .update(time + JSON.stringify(extra))
    .digest("hex");
  return { id, time, tree: "0".repeat(64), paths: ["/srv"], hostname: "web1", username: "root", ...extra };
}

/** One snapshot every `stepHours` from start (inclusive) to end (inclusive), UTC. */
function series(start: string, end: string, stepHours: number, extra: Partial<Snapshot> = {}): Snapshot[] {
  const out: Snapshot[] = [];
  for (let t = Date.parse(start); t <= Date.parse(end); t += stepHours * 3_600_000) {
    out.push(snap(new Date(t).toISOString().replace(".000Z", "Z"), extra));
  }
  return out;
}

// Every 6 hours over two years: 2022-01-01T00:00Z .. 2023-12-31T18:00Z (2023-12-31 is a Sunday).
const TWO_YEARS = series("2022-01-01T00:00:00Z", "2023-12-31T18:00:00Z", 6);
// Shuffle-ish input order to make sure applyPolicy sorts.
const INPUT = [
  ...TWO_YEARS.filter((_, i) => i % 2 === 1),
  ...TWO_YEARS.filter((_, i) => i % 2 === 0).reverse(),
];

const times = (keep: KeepReason[]): string[] => keep.map((k) => k.snapshot.time);
const at18 = (...days: string[]): string[] => days.map((d) => `${d}T18:00:00Z`);
const reasonsOf = (keep: KeepReason[], time: string): string[] | undefined =>
  keep.find((k) => k.snapshot.time === time)?.matches;

function run(policy: RetentionPolicy, snaps = INPUT, opts = {}) {
  const r = applyPolicy(snaps, policy, opts);
  assert.equal(r.keep.length + r.remove.length, snaps.length);
  return r;
}

describe("parseDuration", () => {
  it("accepts restic durations", () => {
    assert.deepEqual(parseDuration("1y2m3d4h"), { years: 1, months: 2, days: 3, hours: 4 });
    assert.deepEqual(parseDuration("30d"), { years: 0, months: 0, days: 30, hours: 0 });
    assert.deepEqual(parseDuration("2h1y"), { years: 1, months: 0, days: 0, hours: 2 });
  });
  for (const bad of ["5x", "", "5", "d", "-1d", "1d 2h", "1d1d", "1.5d", "1D"]) {
    it(`rejects ${JSON.stringify(bad)}`, () => {
      assert.throws(
        () => parseDuration(bad),
        (e: unknown) => e instanceof SitekeepError && e.code === "forget.duration" && !!e.hint,
      );
    });
  }
});

describe("isEmptyPolicy", () => {
  it("recognises empty policies", () => {
    assert.equal(isEmptyPolicy({}), true);
    assert.equal(
      isEmptyPolicy({ keepLast: 0, keepDaily: 0, keepTags: [], keepWithin: "", keepWithinDaily: "0d" }),
      true,
    );
    assert.equal(isEmptyPolicy({ keepLast: -1 }), false);
    assert.equal(isEmptyPolicy({ keepWithin: "1h" }), false);
    assert.equal(isEmptyPolicy({ keepWithinYearly: "1y" }), false);
    assert.equal(isEmptyPolicy({ keepTags: [["a"]] }), false);
  });
  it("rejects invalid counts and durations", () => {
    assert.throws(() => isEmptyPolicy({ keepDaily: -2 }), { code: "forget.policy" });
    assert.throws(() => isEmptyPolicy({ keepDaily: 1.5 }), { code: "forget.policy" });
    assert.throws(() => isEmptyPolicy({ keepWithin: "5x" }), { code: "forget.duration" });
  });
  it("an empty policy keeps everything", () => {
    const r = run({});
    assert.equal(r.keep.length, TWO_YEARS.length);
    assert.deepEqual(r.keep[0].matches, ["policy is empty"]);
  });
});

describe("applyPolicy counts", () => {
  it("keep-last 3", () => {
    const r = run({ keepLast: 3 });
    assert.deepEqual(times(r.keep), ["2023-12-31T18:00:00Z", "2023-12-31T12:00:00Z", "2023-12-31T06:00:00Z"]);
    assert.deepEqual(r.keep[0].matches, ["last snapshot"]);
    assert.equal(r.remove[0].time, "2023-12-31T00:00:00Z"); // newest first
    assert.equal(r.remove.at(-1)?.time, "2022-01-01T00:00:00Z");
  });

  it("keep-daily 7", () => {
    const r = run({ keepDaily: 7 });
    assert.deepEqual(
      times(r.keep),
      at18("2023-12-31", "2023-12-30", "2023-12-29", "2023-12-28", "2023-12-27", "2023-12-26", "2023-12-25"),
    );
    assert.ok(r.keep.every((k) => k.matches.join() === "daily snapshot"));
  });

  it("keep-hourly counts only hours that have snapshots", () => {
    const r = run({ keepHourly: 3 });
    assert.deepEqual(times(r.keep), ["2023-12-31T18:00:00Z", "2023-12-31T12:00:00Z", "2023-12-31T06:00:00Z"]);
  });

  it("keep-weekly 4 uses ISO weeks across a year boundary", () => {
    // 2020 has an ISO week 53: Mon 2020-12-28 .. Sun 2021-01-03.
    const snaps = series("2020-11-01T00:00:00Z", "2021-01-10T18:00:00Z", 6);
    const r = run({ keepWeekly: 4 }, snaps);
    assert.deepEqual(times(r.keep), at18("2021-01-10", "2021-01-03", "2020-12-27", "2020-12-20"));
    // Nothing from Dec 28-31 is kept: it shares 2020-W53 with Jan 1-3.
    assert.ok(!times(r.keep).some((t) => t.startsWith("2020-12-31")));
  });

  it("keep-weekly on the two-year series", () => {
    const r = run({ keepWeekly: 4 });
    assert.deepEqual(times(r.keep), at18("2023-12-31", "2023-12-24", "2023-12-17", "2023-12-10"));
  });

  it("keep-monthly 12", () => {
    const r = run({ keepMonthly: 12 });
    const months = [
      "12-31",
      "11-30",
      "10-31",
      "09-30",
      "08-31",
      "07-31",
      "06-30",
      "05-31",
      "04-30",
      "03-31",
      "02-28",
      "01-31",
    ];
    assert.deepEqual(times(r.keep), at18(...months.map((m) => `2023-${m}`)));
  });

  it("keep-yearly keeps the oldest snapshot when counts are left", () => {
    const two = run({ keepYearly: 2 });
    assert.deepEqual(times(two.keep), at18("2023-12-31", "2022-12-31"));
    const five = run({ keepYearly: 5 });
    assert.deepEqual(times(five.keep), [...at18("2023-12-31", "2022-12-31"), "2022-01-01T00:00:00Z"]);
    assert.deepEqual(five.keep[2].matches, ["oldest yearly snapshot"]);
  });

  it("restic's documented example: daily 7, weekly 5, monthly 12, yearly 75", () => {
    const r = run({ keepDaily: 7, keepWeekly: 5, keepMonthly: 12, keepYearly: 75 });
    const expected = [
      ...at18(
        "2023-12-31",
        "2023-12-30",
        "2023-12-29",
        "2023-12-28",
        "2023-12-27",
        "2023-12-26",
        "2023-12-25",
      ),
      ...at18("2023-12-24", "2023-12-17", "2023-12-10", "2023-12-03"),
      ...at18(
        "2023-11-30",
        "2023-10-31",
        "2023-09-30",
        "2023-08-31",
        "2023-07-31",
        "2023-06-30",
        "2023-05-31",
      ),
      ...at18("2023-04-30", "2023-03-31", "2023-02-28", "2023-01-31"),
      ...at18("2022-12-31"),
      "2022-01-01T00:00:00Z",
    ];
    assert.deepEqual(times(r.keep), expected);
    assert.deepEqual(reasonsOf(r.keep, "2023-12-31T18:00:00Z"), [
      "daily snapshot",
      "weekly snapshot",
      "monthly snapshot",
      "yearly snapshot",
    ]);
    assert.deepEqual(reasonsOf(r.keep, "2023-12-25T18:00:00Z"), ["daily snapshot"]);
    assert.deepEqual(reasonsOf(r.keep, "2023-12-24T18:00:00Z"), ["weekly snapshot"]);
    assert.deepEqual(reasonsOf(r.keep, "2023-11-30T18:00:00Z"), ["monthly snapshot"]);
    assert.deepEqual(reasonsOf(r.keep, "2022-12-31T18:00:00Z"), ["yearly snapshot"]);
    assert.deepEqual(reasonsOf(r.keep, "2022-01-01T00:00:00Z"), ["oldest yearly snapshot"]);
  });

  it("-1 means unlimited", () => {
    const daily = run({ keepDaily: -1 });
    assert.equal(daily.keep.length, 730 + 1); // every day's newest, plus the oldest snapshot
    assert.deepEqual(daily.keep.at(-1)?.matches, ["oldest daily snapshot"]);
    assert.equal(run({ keepLast: -1 }).remove.length, 0);
    assert.equal(run({ keepMonthly: -1 }).keep.length, 24 + 1);
  });
});

describe("applyPolicy durations", () => {
  it("keep-within 2d is relative to the newest snapshot, exclusive", () => {
    const r = run({ keepWithin: "2d" });
    assert.deepEqual(times(r.keep), [
      "2023-12-31T18:00:00Z",
      "2023-12-31T12:00:00Z",
      "2023-12-31T06:00:00Z",
      "2023-12-31T00:00:00Z",
      "2023-12-30T18:00:00Z",
      "2023-12-30T12:00:00Z",
      "2023-12-30T06:00:00Z",
      "2023-12-30T00:00:00Z",
    ]); // 2023-12-29T18:00 is exactly 2d before: not within
    assert.deepEqual(r.keep[0].matches, ["within 2d"]);
  });

  it("keep-within ignores the clock unless a snapshot is in the future", () => {
    const future = snap("2030-01-01T00:00:00Z");
    const r = run({ keepWithin: "1d" }, [...INPUT, future], { now: new Date("2024-06-01T00:00:00Z") });
    // the reference stays 2023-12-31T18:00; the future snapshot is newer than it, so kept too
    assert.deepEqual(times(r.keep), [
      "2030-01-01T00:00:00Z",
      "2023-12-31T18:00:00Z",
      "2023-12-31T12:00:00Z",
      "2023-12-31T06:00:00Z",
      "2023-12-31T00:00:00Z",
    ]);
    // with a clock after the future snapshot, it becomes the reference
    const later = run({ keepWithin: "1d" }, [...INPUT, future], { now: new Date("2031-01-01T00:00:00Z") });
    assert.deepEqual(times(later.keep), ["2030-01-01T00:00:00Z"]);
  });

  it("keep-within subtracts months on the calendar like Go's AddDate", () => {
    // 2023-03-31 minus 1 month is "2023-02-31", i.e. 2023-03-03.
    const snaps = [
      "2023-03-31T12:00:00Z",
      "2023-03-03T18:00:00Z",
      "2023-03-03T12:00:00Z",
      "2023-03-03T06:00:00Z",
      "2023-02-28T12:00:00Z",
    ].map((t) => snap(t));
    const r = run({ keepWithin: "1m" }, snaps);
    assert.deepEqual(times(r.keep), ["2023-03-31T12:00:00Z", "2023-03-03T18:00:00Z"]);
    const h = run({ keepWithin: "1m7h" }, snaps); // 2023-03-03T05:00
    assert.equal(h.keep.length, 4);
  });

  it("keep-within-daily keeps each day's newest within the duration", () => {
    const r = run({ keepWithinDaily: "3d" });
    assert.deepEqual(times(r.keep), at18("2023-12-31", "2023-12-30", "2023-12-29"));
    assert.deepEqual(r.keep[0].matches, ["daily within 3d"]);
  });

  it("keep-within-monthly with a long duration", () => {
    const r = run({ keepWithinMonthly: "1y" });
    // 2022-12-31T18:00 is exactly one year before the newest: excluded
    assert.equal(r.keep.length, 12);
    assert.deepEqual(times(r.keep).slice(-2), at18("2023-02-28", "2023-01-31"));
  });

  it("keep-within-yearly on a short series keeps the oldest too", () => {
    const snaps = series("2023-12-30T00:00:00Z", "2023-12-31T18:00:00Z", 6);
    const r = run({ keepWithinYearly: "5y" }, snaps);
    assert.deepEqual(times(r.keep), ["2023-12-31T18:00:00Z", "2023-12-30T00:00:00Z"]);
    assert.deepEqual(r.keep[1].matches, ["oldest yearly within 5y"]);
  });
});

describe("applyPolicy tags, combinations and protection", () => {
  const tagged = [
    snap("2024-01-04T00:00:00Z", { tags: ["daily", "db"] }),
    snap("2024-01-03T00:00:00Z", { tags: ["db"] }),
    snap("2024-01-02T00:00:00Z", { tags: ["weekly"] }),
    snap("2024-01-01T00:00:00Z"),
  ];

  it("keep-tag needs every tag of a list", () => {
    const r = run({ keepTags: [["db", "daily"]] }, tagged);
    assert.deepEqual(times(r.keep), ["2024-01-04T00:00:00Z"]);
    assert.deepEqual(r.keep[0].matches, ["has tags [db, daily]"]);
  });

  it("keep-tag lists are alternatives, each reported", () => {
    const r = run({ keepTags: [["db"], ["weekly"], ["daily"]] }, tagged);
    assert.deepEqual(times(r.keep), ["2024-01-04T00:00:00Z", "2024-01-03T00:00:00Z", "2024-01-02T00:00:00Z"]);
    assert.deepEqual(r.keep[0].matches, ["has tags [db]", "has tags [daily]"]);
    assert.deepEqual(times(run({ keepTags: [[""]] }, tagged).keep), ["2024-01-01T00:00:00Z"]);
  });

  it("lists every reason a snapshot is kept for", () => {
    const r = run(
      { keepLast: 1, keepDaily: 1, keepWithin: "1h", keepWithinDaily: "1d", keepTags: [["db"]] },
      tagged,
    );
    assert.deepEqual(r.keep[0].matches, [
      "has tags [db]",
      "within 1h",
      "last snapshot",
      "daily snapshot",
      "daily within 1d",
    ]);
    assert.deepEqual(times(r.keep), ["2024-01-04T00:00:00Z", "2024-01-03T00:00:00Z"]);
  });

  it("protect keeps a snapshot the policy would remove", () => {
    const target = TWO_YEARS[TWO_YEARS.length - 5];
    const r = run({ keepLast: 1 }, INPUT, { protect: (s: Snapshot) => s.id === target.id });
    assert.deepEqual(times(r.keep), ["2023-12-31T18:00:00Z", target.time]);
    assert.deepEqual(r.keep[1].matches, [PROTECTED_REASON]);
    assert.equal(PROTECTED_REASON, "protected: newest good snapshot");
    // protection does not use up counts, and adds to other reasons
    const both = run({ keepLast: 2 }, INPUT, { protect: (s: Snapshot) => s.time === "2023-12-31T18:00:00Z" });
    assert.deepEqual(both.keep[0].matches, ["last snapshot", PROTECTED_REASON]);
    assert.equal(both.keep.length, 2);
  });

  it("handles an empty list", () => {
    assert.deepEqual(applyPolicy([], { keepLast: 3 }), { keep: [], remove: [] });
  });
});

describe("grouping", () => {
  const mixed = [
    snap("2024-01-01T00:00:00Z", { hostname: "a", paths: ["/srv", "/etc"], tags: ["x"] }),
    snap("2024-01-02T00:00:00Z", { hostname: "a", paths: ["/etc", "/srv"], tags: ["y"] }),
    snap("2024-01-03T00:00:00Z", { hostname: "a", paths: ["/var"], tags: ["x"] }),
    snap("2024-01-04T00:00:00Z", { hostname: "b", paths: ["/srv", "/etc"] }),
    snap("2024-01-05T00:00:00Z", { hostname: "b", paths: ["/etc", "/srv"], tags: ["y", "x"] }),
  ];

  it("groups by host and paths (path order ignored)", () => {
    const g = groupSnapshots(mixed, { host: true, paths: true, tags: false });
    assert.deepEqual(
      [...g].map(([k, v]) => [JSON.parse(k), v.map((s) => s.time.slice(8, 10))]),
      [
        [{ hostname: "a", paths: ["/etc", "/srv"] }, ["01", "02"]],
        [{ hostname: "a", paths: ["/var"] }, ["03"]],
        [{ hostname: "b", paths: ["/etc", "/srv"] }, ["04", "05"]],
      ],
    );
  });

  it("groups by tags (tag order ignored) and by nothing", () => {
    const g = groupSnapshots(mixed, { host: false, paths: false, tags: true });
    assert.deepEqual(
      [...g].map(([k, v]) => [JSON.parse(k), v.length]),
      [
        [{ tags: ["x", "y"] }, 1],
        [{ tags: ["x"] }, 2],
        [{ tags: ["y"] }, 1],
        [{ tags: [] }, 1],
      ],
    );
    assert.deepEqual(
      [...groupSnapshots(mixed, { host: false, paths: false, tags: false }).values()].map((v) => v.length),
      [5],
    );
  });

  it("forgetPlan applies the policy per group", () => {
    const plan = forgetPlan(mixed, { keepLast: 1 }, { host: true, paths: true, tags: false });
    assert.deepEqual(
      plan.map((p) => [p.group, times(p.keep), p.remove.map((s) => s.time)]),
      [
        [{ hostname: "a", paths: ["/etc", "/srv"] }, ["2024-01-02T00:00:00Z"], ["2024-01-01T00:00:00Z"]],
        [{ hostname: "a", paths: ["/var"] }, ["2024-01-03T00:00:00Z"], []],
        [{ hostname: "b", paths: ["/etc", "/srv"] }, ["2024-01-05T00:00:00Z"], ["2024-01-04T00:00:00Z"]],
      ],
    );
    const byHost = forgetPlan(mixed, { keepLast: 1 }, { host: true, paths: false, tags: false });
    assert.deepEqual(
      byHost.map((p) => [p.group, times(p.keep)]),
      [
        [{ hostname: "a" }, ["2024-01-03T00:00:00Z"]],
        [{ hostname: "b" }, ["2024-01-05T00:00:00Z"]],
      ],
    );
  });

  it("forgetPlan refuses to remove a whole group, unless protected", () => {
    const by = { host: true, paths: true, tags: false };
    assert.throws(() => forgetPlan(mixed, { keepTags: [["nomatch"]] }, by), { code: "forget.keep-none" });
    const plan = forgetPlan(mixed, { keepTags: [["nomatch"]] }, by, {
      protect: (s: Snapshot) => s.tags?.includes("y") || s.paths[0] === "/var",
    });
    assert.deepEqual(
      plan.map((p) => p.keep.length),
      [1, 1, 1],
    );
    assert.equal(forgetPlan(mixed, {}, by).flatMap((p) => p.remove).length, 0);
  });
});
