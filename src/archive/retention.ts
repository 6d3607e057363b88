// Retention policies: which snapshots `forget` keeps, with restic's semantics (cmd_forget /
// snapshot_policy), as pure functions over snapshot lists.
//
// Semantics, per group of snapshots:
//  - the group is sorted newest first (ties broken by id, so results are deterministic);
//  - keep-last N keeps the N newest snapshots;
//  - keep-hourly/daily/weekly/monthly/yearly N walk the list and keep the newest snapshot of each
//    bucket (hour, day, ISO 8601 week, month, year) until N buckets were used; buckets without
//    snapshots do not count; -1 means "no limit". When counts are left after the whole group was
//    walked, the oldest snapshot of the group is kept as well ("oldest daily snapshot"), which is
//    what restic ≥ 0.17 does to keep the history as long as the policy allows;
//  - keep-within D keeps every snapshot strictly newer than (reference − D); keep-within-<bucket> D
//    keeps the newest snapshot of each bucket among those snapshots (plus the oldest snapshot of
//    the group if it is itself within D). The reference is the newest snapshot of the group that
//    is not in the future (restic: relative to the latest snapshot, not to the clock); `now` only
//    decides what "in the future" means. D is subtracted like Go's time.AddDate: years, months and
//    days on the calendar (Mar 31 − 1m = "Feb 31" = Mar 3), then hours as elapsed time;
//  - keep-tag [a, b] keeps snapshots that carry all of a and b (an empty list matches every
//    snapshot; the tag "" matches snapshots without tags, like restic);
//  - a snapshot kept for several reasons lists them all; an empty policy keeps everything.
//
// Time zone: buckets use the local time zone of this process (JavaScript Date getters), which is
// what restic does for snapshots written on the same machine (Go keeps the writer's zone; our
// snapshot files are UTC, so the reader's zone is the only meaningful "local" one). Run with
// TZ=UTC for zone-independent results.
//
// Sitekeep's own safety rule: `protect(s)` true keeps s whatever the policy says, with the reason
// "protected: newest good snapshot" (protection never uses up bucket counts). forgetPlan also
// refuses, like restic, a non-empty policy that would remove every snapshot of a group.

import { SitekeepError } from "../errors.js";
import type { Snapshot } from "../repo/snapshot.js";
import { parseTimeNs } from "../util/gotime.js";

export interface RetentionPolicy {
  keepLast?: number;
  keepHourly?: number;
  keepDaily?: number;
  keepWeekly?: number;
  keepMonthly?: number;
  keepYearly?: number;
  /** Duration like "1y5m7d2h" (units y, m = months, d, h). */
  keepWithin?: string;
  keepWithinHourly?: string;
  keepWithinDaily?: string;
  keepWithinWeekly?: string;
  keepWithinMonthly?: string;
  keepWithinYearly?: string;
  /** Each inner list: all its tags must be present (restic --keep-tag a,b). */
  keepTags?: string[][];
}

export type GroupBy = { host: boolean; paths: boolean; tags: boolean };

export interface KeepReason {
  snapshot: Snapshot;
  /** e.g. "last snapshot", "daily snapshot", "oldest yearly snapshot", "within 7d", "daily within 30d", "has tags [a, b]". */
  matches: string[];
}

export interface PolicyResult {
  group: { hostname?: string; paths?: string[]; tags?: string[] };
  keep: KeepReason[];
  remove: Snapshot[];
}

export interface PolicyOptions {
  /** The clock: snapshots after it are not used as the keep-within reference. Default: new Date(). */
  now?: Date;
  /** Snapshots for which this returns true are always kept. */
  protect?: (s: Snapshot) => boolean;
}

export interface Duration {
  years: number;
  months: number;
  days: number;
  hours: number;
}

export const PROTECTED_REASON = "protected: newest good snapshot";

const DURATION_HINT =
  'write a duration as numbers with units y (years), m (months), d (days), h (hours), e.g. "1y5m7d2h" or "30d"';

/** Parses restic's duration format ("1y5m7d2h", "30d"); each unit at most once. */
export function parseDuration(s: string): Duration {
  const fail = (why: string): never => {
    throw new SitekeepError("forget.duration", `invalid duration ${JSON.stringify(s)}: ${why}`, {
      hint: DURATION_HINT,
    });
  };
  if (s === "") fail("empty");
  const d: Duration = { years: 0, months: 0, days: 0, hours: 0 };
  const seen = new Set<string>();
  const units: Record<string, keyof Duration> = { y: "years", m: "months", d: "days", h: "hours" };
  const re = /(\d+)([a-zA-Z]?)/y;
  let pos = 0;
  while (pos < s.length) {
    re.lastIndex = pos;
    const m = re.exec(s);
    if (!m) fail(`expected a number at ${JSON.stringify(s.slice(pos))}`);
    const [whole, digits, unit] = m as RegExpExecArray;
    if (unit === "") fail(`no unit after the number ${digits}`);
    const field = units[unit];
    if (field === undefined) fail(`unknown unit ${JSON.stringify(unit)}`);
    if (seen.has(unit)) fail(`unit ${JSON.stringify(unit)} given twice`);
    const n = Number(digits);
    if (!Number.isSafeInteger(n)) fail(`number ${digits} is too large`);
    seen.add(unit);
    d[field] = n;
    pos += whole.length;
  }
  return d;
}

/** Restic's rendering of a duration: non-zero units in y, m, d, h order ("1y2d"). */
export function formatDuration(d: Duration): string {
  const parts: string[] = [];
  if (d.years) parts.push(`${d.years}y`);
  if (d.months) parts.push(`${d.months}m`);
  if (d.days) parts.push(`${d.days}d`);
  if (d.hours) parts.push(`${d.hours}h`);
  return parts.join("") || "0h";
}

const isZero = (d: Duration): boolean => d.years === 0 && d.months === 0 && d.days === 0 && d.hours === 0;

type CountKey = "keepLast" | "keepHourly" | "keepDaily" | "keepWeekly" | "keepMonthly" | "keepYearly";
type WithinKey =
  "keepWithinHourly" | "keepWithinDaily" | "keepWithinWeekly" | "keepWithinMonthly" | "keepWithinYearly";

type Bucker = (t: Date, nr: number) => number;

const always: Bucker = (_t, nr) => nr;
const ymdh: Bucker = (t) =>
  t.getFullYear() * 1_000_000 + (t.getMonth() + 1) * 10_000 + t.getDate() * 100 + t.getHours();
const ymd: Bucker = (t) => t.getFullYear() * 10_000 + (t.getMonth() + 1) * 100 + t.getDate();
const yw: Bucker = (t) => isoWeek(t.getFullYear(), t.getMonth(), t.getDate());
const ym: Bucker = (t) => t.getFullYear() * 100 + (t.getMonth() + 1);
const y: Bucker = (t) => t.getFullYear();

const DAY_MS = 86_400_000;

function utcDay(year: number, month0: number, day: number): number {
  const d = new Date(0);
  d.setUTCFullYear(year, month0, day);
  return Math.round(d.getTime() / DAY_MS);
}

/** ISO 8601 week of a calendar date, as YYYYWW (the week's year is the year of its Thursday). */
function isoWeek(year: number, month0: number, day: number): number {
  const days = utcDay(year, month0, day);
  const weekday = (((days + 3) % 7) + 7) % 7; // 1970-01-01 was a Thursday; Monday = 0
  const thursday = days - weekday + 3;
  const isoYear = new Date(thursday * DAY_MS).getUTCFullYear();
  return isoYear * 100 + Math.floor((thursday - utcDay(isoYear, 0, 1)) / 7) + 1;
}

const COUNTS: { key: CountKey; bucker: Bucker; reason: string }[] = [
  { key: "keepLast", bucker: always, reason: "last snapshot" },
  { key: "keepHourly", bucker: ymdh, reason: "hourly snapshot" },
  { key: "keepDaily", bucker: ymd, reason: "daily snapshot" },
  { key: "keepWeekly", bucker: yw, reason: "weekly snapshot" },
  { key: "keepMonthly", bucker: ym, reason: "monthly snapshot" },
  { key: "keepYearly", bucker: y, reason: "yearly snapshot" },
];

const WITHINS: { key: WithinKey; bucker: Bucker; reason: string }[] = [
  { key: "keepWithinHourly", bucker: ymdh, reason: "hourly within" },
  { key: "keepWithinDaily", bucker: ymd, reason: "daily within" },
  { key: "keepWithinWeekly", bucker: yw, reason: "weekly within" },
  { key: "keepWithinMonthly", bucker: ym, reason: "monthly within" },
  { key: "keepWithinYearly", bucker: y, reason: "yearly within" },
];

interface Normalized {
  counts: number[]; // parallel to COUNTS, 0 = unused
  within: Duration | undefined;
  withins: (Duration | undefined)[]; // parallel to WITHINS
  tags: string[][];
}

function normalize(p: RetentionPolicy): Normalized {
  const counts = COUNTS.map(({ key }) => {
    const v = p[key] ?? 0;
    if (!Number.isInteger(v) || v < -1) {
      throw new SitekeepError(
        "forget.policy",
        `invalid ${key} ${String(v)}: expected a whole number ≥ 0, or -1 for unlimited`,
        {
          hint: "use a count such as 7, 0 to disable the rule, or -1 to keep every bucket",
        },
      );
    }
    return v;
  });
  const dur = (s: string | undefined): Duration | undefined => {
    if (s === undefined || s === "") return undefined;
    const d = parseDuration(s);
    return isZero(d) ? undefined : d;
  };
  return {
    counts,
    within: dur(p.keepWithin),
    withins: WITHINS.map(({ key }) => dur(p[key])),
    tags: p.keepTags ?? [],
  };
}

function emptyNormalized(n: Normalized): boolean {
  return (
    n.counts.every((c) => c === 0) &&
    n.within === undefined &&
    n.withins.every((w) => w === undefined) &&
    n.tags.length === 0
  );
}

/**
 * True when the policy keeps nothing by rule (no counts, no durations, no tag lists), in which case
 * applyPolicy keeps everything and callers must refuse to run forget. Throws on an invalid policy.
 */
export function isEmptyPolicy(p: RetentionPolicy): boolean {
  return emptyNormalized(normalize(p));
}

function hasTags(s: Snapshot, list: string[]): boolean {
  const tags = s.tags ?? [];
  for (const t of list) {
    if (t === "" && tags.length === 0) return true;
    if (!tags.includes(t)) return false;
  }
  return true;
}

interface Entry {
  snap: Snapshot;
  ns: bigint;
  date: Date;
}

function sortNewestFirst(snaps: Snapshot[]): Entry[] {
  const entries = snaps.map((snap) => {
    const ns = parseTimeNs(snap.time);
    return { snap, ns, date: new Date(Number(ns / 1_000_000n)) };
  });
  entries.sort((a, b) =>
    a.ns === b.ns ? (a.snap.id < b.snap.id ? -1 : a.snap.id > b.snap.id ? 1 : 0) : a.ns > b.ns ? -1 : 1,
  );
  return entries;
}

/** The instant D before the reference, as nanoseconds (calendar part in local time, like Go's AddDate). */
function subtractDuration(refNs: bigint, d: Duration): bigint {
  const refMs = Number(refNs / 1_000_000n);
  const t = new Date(refMs);
  t.setFullYear(t.getFullYear() - d.years, t.getMonth() - d.months, t.getDate() - d.days);
  const ms = t.getTime() - d.hours * 3_600_000;
  return refNs + BigInt(ms - refMs) * 1_000_000n;
}

/** Applies the policy to one group of snapshots. keep and remove are newest first. */
export function applyPolicy(
  snaps: Snapshot[],
  policy: RetentionPolicy,
  opts: PolicyOptions = {},
): { keep: KeepReason[]; remove: Snapshot[] } {
  const p = normalize(policy);
  const list = sortNewestFirst(snaps);
  const protect = opts.protect;
  const keep: KeepReason[] = [];
  const remove: Snapshot[] = [];

  if (emptyNormalized(p)) {
    for (const { snap } of list) {
      const matches = ["policy is empty"];
      if (protect?.(snap)) matches.push(PROTECTED_REASON);
      keep.push({ snapshot: snap, matches });
    }
    return { keep, remove };
  }
  if (list.length === 0) return { keep, remove };

  // Reference for keep-within*: the newest snapshot that is not in the future. Without one, every
  // snapshot counts as within (Go's zero time minus a duration precedes all snapshots).
  const nowNs = BigInt((opts.now ?? new Date()).getTime()) * 1_000_000n;
  const latest = list.find((e) => e.ns < nowNs)?.ns;
  const threshold = (d: Duration): bigint | undefined =>
    latest === undefined ? undefined : subtractDuration(latest, d);
  const isWithin = (ns: bigint, t: bigint | undefined): boolean => t === undefined || ns > t;

  const withinLimit = p.within && threshold(p.within);
  const withinText = p.within && formatDuration(p.within);
  const counts = COUNTS.map((c, i) => ({ ...c, count: p.counts[i], last: NaN }));
  const withins = WITHINS.flatMap((w, i) => {
    const d = p.withins[i];
    return d ? [{ ...w, limit: threshold(d), text: formatDuration(d), last: NaN }] : [];
  });
  const oldest = list.length - 1;

  list.forEach(({ snap, ns, date }, nr) => {
    const matches: string[] = [];

    for (const l of p.tags) {
      if (hasTags(snap, l)) matches.push(`has tags [${l.join(", ")}]`);
    }

    if (p.within && isWithin(ns, withinLimit)) matches.push(`within ${withinText}`);

    for (const b of counts) {
      if (b.count === 0) continue;
      const val = b.bucker(date, nr);
      if (val !== b.last || nr === oldest) {
        matches.push(val === b.last ? `oldest ${b.reason}` : b.reason);
        b.last = val;
        if (b.count > 0) b.count--;
      }
    }

    for (const b of withins) {
      if (!isWithin(ns, b.limit)) continue;
      const val = b.bucker(date, nr);
      if (val !== b.last || nr === oldest) {
        matches.push(`${val === b.last ? "oldest " : ""}${b.reason} ${b.text}`);
        b.last = val;
      }
    }

    if (protect?.(snap)) matches.push(PROTECTED_REASON);

    if (matches.length > 0) keep.push({ snapshot: snap, matches });
    else remove.push(snap);
  });

  return { keep, remove };
}

function groupOf(s: Snapshot, by: GroupBy): PolicyResult["group"] {
  const g: PolicyResult["group"] = {};
  if (by.host) g.hostname = s.hostname;
  if (by.paths) g.paths = [...(s.paths ?? [])].sort();
  if (by.tags) g.tags = [...(s.tags ?? [])].sort();
  return g;
}

/**
 * Splits snapshots into groups by host, paths and/or tags (paths and tags compared as sorted sets,
 * like restic). Keys are JSON of the group; the map is ordered by key; each group keeps input order.
 */
export function groupSnapshots(snaps: Snapshot[], by: GroupBy): Map<string, Snapshot[]> {
  const groups = new Map<string, Snapshot[]>();
  for (const s of snaps) {
    const key = JSON.stringify(groupOf(s, by));
    const list = groups.get(key);
    if (list) list.push(s);
    else groups.set(key, [s]);
  }
  return new Map([...groups].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
}

/**
 * Groups the snapshots and applies the policy to each group. Throws "forget.keep-none" when a
 * non-empty policy would remove every snapshot of a group (restic's safety net, e.g. for a
 * --keep-tag that matches nothing).
 */
export function forgetPlan(
  snaps: Snapshot[],
  policy: RetentionPolicy,
  by: GroupBy,
  opts: PolicyOptions = {},
): PolicyResult[] {
  const empty = isEmptyPolicy(policy);
  const results: PolicyResult[] = [];
  for (const [key, list] of groupSnapshots(snaps, by)) {
    const { keep, remove } = applyPolicy(list, policy, opts);
    if (!empty && keep.length === 0 && remove.length > 0) {
      throw new SitekeepError("forget.keep-none", `refusing to remove every snapshot of group ${key}`, {
        hint: "the policy keeps none of this group's snapshots; check --keep-tag spellings or add a --keep-last rule",
      });
    }
    results.push({ group: JSON.parse(key) as PolicyResult["group"], keep, remove });
  }
  return results;
}
