// The repository's chunker polynomial: a random irreducible polynomial of degree 53 over GF(2),
// stored in the repository config as "chunker_polynomial" (lowercase hex, as restic writes it).
// restic feeds it to a Rabin fingerprint; Sitekeep derives its gear table from it (see chunker.ts),
// so each repository cuts files at its own, unpredictable boundaries.
//
// Polynomials are bigints: bit i is the coefficient of x^i. Addition in GF(2) is XOR.
import { randomBytes } from "node:crypto";
import { SitekeepError } from "../errors.js";

export const POLYNOMIAL_DEGREE = 53;

const MAX_TRIES = 1_000_000;

/** Degree of p (index of its highest set bit); -1 for the zero polynomial. */
export function polyDegree(p: bigint): number {
  if (p < 0n) throw new RangeError("negative polynomial");
  return p === 0n ? -1 : p.toString(2).length - 1;
}

/** Carry-less product a·b. */
export function polyMul(a: bigint, b: bigint): bigint {
  let r = 0n;
  while (b > 0n) {
    if (b & 1n) r ^= a;
    b >>= 1n;
    a <<= 1n;
  }
  return r;
}

/** Remainder of a divided by m. */
export function polyMod(a: bigint, m: bigint): bigint {
  const dm = polyDegree(m);
  if (dm < 0) throw new RangeError("division by the zero polynomial");
  let da = polyDegree(a);
  while (da >= dm) {
    a ^= m << BigInt(da - dm);
    da = polyDegree(a);
  }
  return a;
}

/** a·b mod m, reducing as it goes so intermediate values stay below degree deg(m)+1. */
export function polyMulMod(a: bigint, b: bigint, m: bigint): bigint {
  const dm = BigInt(polyDegree(m));
  if (dm < 0n) throw new RangeError("division by the zero polynomial");
  a = polyMod(a, m);
  b = polyMod(b, m);
  let r = 0n;
  while (b > 0n) {
    if (b & 1n) r ^= a;
    b >>= 1n;
    a <<= 1n;
    if ((a >> dm) & 1n) a ^= m;
  }
  return r;
}

export function polyGcd(a: bigint, b: bigint): bigint {
  while (b !== 0n) {
    const r = polyMod(a, b);
    a = b;
    b = r;
  }
  return a;
}

/**
 * Ben-Or's irreducibility test: p of degree d is irreducible iff gcd(p, x^(2^i) - x mod p) = 1 for
 * every i in 1..floor(d/2) (a factor of degree i would divide x^(2^i) - x). Minus is XOR in GF(2).
 */
export function isIrreducible(p: bigint): boolean {
  const d = polyDegree(p);
  if (d < 1) return false;
  const x = 2n;
  let h = x; // x^(2^i) mod p, squared once per round
  for (let i = 1; i <= d >> 1; i++) {
    h = polyMulMod(h, h, p);
    if (polyGcd(p, h ^ x) !== 1n) return false;
  }
  return true;
}

/**
 * A random irreducible polynomial of degree exactly 53, as restic's chunker draws it: random 64-bit
 * values masked to 54 bits with bit 53 set, retried until one is irreducible (about 1 in 53 is).
 */
export function randomPolynomial(random: (n: number) => Buffer = randomBytes): bigint {
  const mask = (1n << BigInt(POLYNOMIAL_DEGREE + 1)) - 1n;
  const top = 1n << BigInt(POLYNOMIAL_DEGREE);
  for (let i = 0; i < MAX_TRIES; i++) {
    const buf = random(8);
    if (buf.length < 8) throw new RangeError("random source returned fewer than 8 bytes");
    const p = (buf.readBigUInt64BE(0) & mask) | top;
    if (isIrreducible(p)) return p;
  }
  throw new SitekeepError("chunker.polynomial", "unable to find an irreducible chunker polynomial");
}

/** Lowercase hex without a prefix, e.g. "3da3358b4dc173" (restic's JSON form). */
export function formatPolynomial(p: bigint): string {
  if (p <= 0n || p >= 1n << 64n) throw new RangeError(`chunker polynomial out of range: ${p}`);
  return p.toString(16);
}

/** Inverse of formatPolynomial; also accepts upper case and a 0x prefix. */
export function parsePolynomial(s: string): bigint {
  if (!/^(0x)?[0-9a-f]{1,16}$/i.test(s)) {
    throw new SitekeepError("chunker.polynomial", `invalid chunker polynomial ${JSON.stringify(s)}`, {
      hint: "the repository config is damaged: chunker_polynomial must be a hexadecimal number",
    });
  }
  const p = BigInt(s.toLowerCase().startsWith("0x") ? s : `0x${s}`);
  if (p === 0n) {
    throw new SitekeepError("chunker.polynomial", "invalid chunker polynomial 0", {
      hint: "the repository config is damaged: chunker_polynomial must not be zero",
    });
  }
  return p;
}
