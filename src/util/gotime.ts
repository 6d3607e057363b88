// Times as Go's encoding/json writes them (RFC 3339 with up to nine fractional digits), held as
// nanoseconds since the epoch in a bigint so that no precision is lost.

const NS_PER_SEC = 1_000_000_000n;
const SEC_PER_DAY = 86_400n;

function daysFromCivil(y: number, m: number, d: number): number {
  // Howard Hinnant's algorithm: days since 1970-01-01 for a proleptic Gregorian date.
  const yy = m <= 2 ? y - 1 : y;
  const era = Math.floor(yy / 400);
  const yoe = yy - era * 400;
  const mp = (m + 9) % 12;
  const doy = Math.floor((153 * mp + 2) / 5) + d - 1;
  const doe = yoe * 365 + Math.floor(yoe / 4) - Math.floor(yoe / 100) + doy;
  return era * 146097 + doe - 719468;
}

function civilFromDays(z: number): [number, number, number] {
  const zz = z + 719468;
  const era = Math.floor(zz / 146097);
  const doe = zz - era * 146097;
  const yoe = Math.floor((doe - Math.floor(doe / 1460) + Math.floor(doe / 36524) - Math.floor(doe / 146096)) / 365);
  const doy = doe - (365 * yoe + Math.floor(yoe / 4) - Math.floor(yoe / 100));
  const mp = Math.floor((5 * doy + 2) / 153);
  const d = doy - Math.floor((153 * mp + 2) / 5) + 1;
  const m = mp < 10 ? mp + 3 : mp - 9;
  return [yoe + era * 400 + (m <= 2 ? 1 : 0), m, d];
}

const pad = (n: number, w = 2): string => String(n).padStart(w, "0");

/** Formats nanoseconds since the epoch as RFC 3339 in UTC, trailing fractional zeros trimmed (Go's RFC3339Nano). */
export function formatTimeNs(ns: bigint): string {
  const [secs, frac] = floorDivMod(ns, NS_PER_SEC);
  const [days, sod] = floorDivMod(secs, SEC_PER_DAY);
  const [y, mo, d] = civilFromDays(Number(days));
  const s = Number(sod);
  let out = `${pad(y, 4)}-${pad(mo)}-${pad(d)}T${pad(Math.floor(s / 3600))}:${pad(Math.floor((s % 3600) / 60))}:${pad(s % 60)}`;
  if (frac !== 0n) out += "." + frac.toString().padStart(9, "0").replace(/0+$/, "");
  return out + "Z";
}

/** "00".."59" */
const TWO_DIGITS = Array.from({ length: 60 }, (_, i) => String(i).padStart(2, "0"));
/** The date part ("2026-11-26T") of the last days formatted: a backup's files share few days. */
const datePrefixes = new Map<number, string>();

function datePrefix(days: number): string {
  let p = datePrefixes.get(days);
  if (p === undefined) {
    const [y, mo, d] = civilFromDays(days);
    p = `${pad(y, 4)}-${pad(mo)}-${pad(d)}T`;
    if (datePrefixes.size >= 4096) datePrefixes.clear();
    datePrefixes.set(days, p);
  }
  return p;
}

/** Nanoseconds 1..999999999 as Go writes the fraction: ".5", ".000001", trailing zeros trimmed. */
function fraction(nsec: number): string {
  let digits = 9;
  while (nsec % 10 === 0) {
    nsec /= 10;
    digits--;
  }
  return "." + String(nsec).padStart(digits, "0");
}

/**
 * formatTimeNs for a time given as whole seconds and nanoseconds (0..999999999), without BigInt.
 * The walk over unchanged files formats three times per file, hence the caches.
 */
export function formatTimeParts(sec: number, nsec: number): string {
  const days = Math.floor(sec / 86400);
  const sod = sec - days * 86400;
  const h = Math.floor(sod / 3600);
  const rest = sod - h * 3600;
  const min = Math.floor(rest / 60);
  const out = datePrefix(days) + TWO_DIGITS[h] + ":" + TWO_DIGITS[min] + ":" + TWO_DIGITS[rest - min * 60];
  return nsec === 0 ? out + "Z" : out + fraction(nsec) + "Z";
}

const RFC3339 = /^(-?\d{4,})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(Z|z|[+-]\d{2}:\d{2})$/;

/** Parses an RFC 3339 time (any offset, any number of fractional digits) into nanoseconds since the epoch. */
export function parseTimeNs(s: string): bigint {
  const m = RFC3339.exec(s);
  if (!m) throw new Error(`invalid RFC 3339 time: ${JSON.stringify(s)}`);
  const days = daysFromCivil(Number(m[1]), Number(m[2]), Number(m[3]));
  let secs = BigInt(days) * SEC_PER_DAY + BigInt(Number(m[4]) * 3600 + Number(m[5]) * 60 + Number(m[6]));
  const tz = m[8];
  if (tz !== "Z" && tz !== "z") {
    const sign = tz[0] === "-" ? -1 : 1;
    const off = Number(tz.slice(1, 3)) * 3600 + Number(tz.slice(4, 6)) * 60;
    secs -= BigInt(sign * off);
  }
  const frac = m[7] ? BigInt((m[7] + "000000000").slice(0, 9)) : 0n;
  return secs * NS_PER_SEC + frac;
}

/** A time as whole seconds since the epoch and nanoseconds in [0, 1e9), as futimens takes it. */
export interface TimeParts {
  sec: number;
  nsec: number;
}

const ZERO = 48;
/** The value of the ASCII digit at s[i], or NaN: NaN poisons every sum it enters. */
function digit(s: string, i: number): number {
  const d = s.charCodeAt(i) - ZERO;
  return d >= 0 && d <= 9 ? d : NaN;
}
const two = (s: string, i: number): number => digit(s, i) * 10 + digit(s, i + 1);

/**
 * parseTimeNs as seconds and nanoseconds, or undefined where parseTimeNs throws. A restore parses
 * two times per file: scanned by hand, without the regular expression's nine strings and the
 * BigInts, for four-digit years (parseTimeNs's way for the others). Seconds are exact for years
 * within ±285 million.
 */
export function parseTimeParts(s: string): TimeParts | undefined {
  const n = s.length;
  if (n < 20 || s[4] !== "-" || s[7] !== "-" || s[13] !== ":" || s[16] !== ":" || s.charCodeAt(0) === 45) return slowTimeParts(s);
  const t = s[10];
  if (t !== "T" && t !== "t" && t !== " ") return undefined;
  const year = two(s, 0) * 100 + two(s, 2);
  const days = daysFromCivil(year, two(s, 5), two(s, 8));
  let sec = days * 86400 + two(s, 11) * 3600 + two(s, 14) * 60 + two(s, 17);
  let i = 19;
  let nsec = 0;
  if (s[i] === ".") {
    const start = ++i;
    let scale = 100_000_000;
    for (; i < n; i++) {
      const d = digit(s, i);
      if (Number.isNaN(d)) break;
      nsec += d * scale;
      scale = scale > 1 ? scale / 10 : 0; // digits past the ninth are dropped, as parseTimeNs does
    }
    if (i === start) return undefined;
  }
  const zone = s[i];
  if (zone === "Z" || zone === "z") {
    if (i + 1 !== n) return undefined;
  } else if ((zone === "+" || zone === "-") && i + 6 === n && s[i + 3] === ":") {
    const off = two(s, i + 1) * 3600 + two(s, i + 4) * 60;
    sec -= zone === "-" ? -off : off;
  } else {
    return undefined;
  }
  return Number.isNaN(sec) ? undefined : { sec, nsec };
}

/** parseTimeParts for the rest (years of more than four digits, or before year 0). */
function slowTimeParts(s: string): TimeParts | undefined {
  let ns: bigint;
  try {
    ns = parseTimeNs(s);
  } catch {
    return undefined;
  }
  return splitTimeNs(ns);
}

/** Nanoseconds since the epoch as TimeParts (floor division: nsec stays in [0, 1e9) before 1970 too). */
export function splitTimeNs(ns: bigint): TimeParts {
  const [sec, nsec] = floorDivMod(ns, NS_PER_SEC);
  return { sec: Number(sec), nsec: Number(nsec) };
}

/** Quotient and remainder of a / b (b > 0) rounded toward minus infinity: BigInt's / truncates toward zero. */
function floorDivMod(a: bigint, b: bigint): [bigint, bigint] {
  const q = a / b;
  const r = a % b;
  return r < 0n ? [q - 1n, r + b] : [q, r];
}

export function nowNs(): bigint {
  return BigInt(Date.now()) * 1_000_000n;
}

export function formatDate(d: Date): string {
  return formatTimeNs(BigInt(d.getTime()) * 1_000_000n);
}

export function nsToDate(ns: bigint): Date {
  return new Date(Number(ns / 1_000_000n));
}
