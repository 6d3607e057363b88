// Content-defined chunking, FastCDC style (Xia et al., "FastCDC: a Fast and Efficient Content-Defined
// Chunking Approach for Data Deduplication", USENIX ATC 2016).
//
// A chunk boundary is placed after byte i when a rolling "gear" hash of the bytes just before i has
// certain bits all zero. Because the decision depends only on nearby content, inserting or deleting
// bytes moves the boundaries around the edit and leaves the others (and so the blobs) unchanged.
//
// - Gear hash: h = (h << 1) + gear[byte], kept in 32 bits. Each step shifts older bytes one bit
//   further left, so after 32 steps a byte has left the hash entirely: bit k of h depends on the
//   last k+1 bytes only, and h as a whole on the last 32. One shift, one add, one table lookup per
//   byte, and it all stays in int32 arithmetic that V8 compiles to plain machine instructions.
// - Skipping min: no boundary may fall before `min`, so those bytes are not hashed at all (except
//   the 32 just before `min`, which prime the hash so every checked position sees a full window
//   and the decision is a function of the content alone, not of where the chunk started).
// - Normalized chunking: between min and avg the test uses maskS, with log2(avg)+2 one-bits (a cut
//   is 4x less likely than 1/avg); after avg it uses maskL, with log2(avg)-2 bits (4x more likely).
//   This squeezes the size distribution towards avg: fewer tiny and fewer huge chunks than a single
//   mask would give, which is what keeps deduplication good while min skipping saves time.
// - Mask bits are spread over the high bits of the hash and always include bit 31: the high bits
//   are the ones that depend on the widest window (bit 31 on all 32 bytes), and spreading rather
//   than packing them follows the paper's observation that it decorrelates neighbouring positions.
// - The gear table is derived from the repository's chunker polynomial (SHA-256 in counter mode
//   over its hex form), so different repositories cut differently, which hides file sizes and
//   boundaries from anyone comparing blob sizes across repositories, while one repository always
//   cuts the same way (required for deduplication).
import { createHash } from "node:crypto";
import { nativeAddon } from "../platform/native.js";
import { formatPolynomial } from "./polynomial.js";

export interface ChunkerOptions {
  min: number;
  avg: number;
  max: number;
}

export const DEFAULT_CHUNKER_OPTIONS: Readonly<ChunkerOptions> = Object.freeze({
  min: 512 * 1024,
  avg: 1024 * 1024,
  max: 8 * 1024 * 1024,
});

/** Bytes that influence the 32-bit gear hash at any position. */
const WINDOW = 32;
const TOP_BIT = 0x80000000 | 0;

const gearCache = new Map<string, Uint32Array>();

function* sha256Words(seed: string): Generator<number> {
  const counter = Buffer.alloc(4);
  for (let c = 0; ; c++) {
    counter.writeUInt32BE(c >>> 0, 0);
    const d = createHash("sha256").update(seed).update(counter).digest();
    for (let j = 0; j < 32; j += 4) yield d.readUInt32BE(j);
  }
}

/**
 * 256 pseudo-random 32-bit values derived from the polynomial. gear[0] is constrained: a run of
 * zero bytes settles on h = -gear[0] (mod 2^32), and requiring bit 31 of that to be set (every mask
 * contains bit 31) means zero-filled data (sparse files, empty disk images) never cuts before max,
 * instead of cutting at min over and over by bad luck of the draw.
 */
export function gearTable(polynomial: bigint): Uint32Array {
  const hex = formatPolynomial(polynomial);
  let gear = gearCache.get(hex);
  if (gear) return gear;
  gear = new Uint32Array(256);
  const words = sha256Words(`sitekeep gear v1 ${hex}\n`);
  const next = (): number => words.next().value as number;
  for (let b = 1; b < 256; b++) gear[b] = next();
  let g = next();
  while ((-g & TOP_BIT) === 0) g = next();
  gear[0] = g;
  gearCache.set(hex, gear);
  return gear;
}

/** A 32-bit mask with n one-bits spread evenly over the top min(32, 2n) bits, bit 31 included. */
export function spreadMask(n: number): number {
  if (!Number.isInteger(n) || n < 1 || n > 32) throw new RangeError(`mask bit count out of range: ${n}`);
  const span = Math.min(32, 2 * n);
  let m = 0;
  for (let j = 0; j < n; j++) m |= 1 << (31 - Math.floor((j * span) / n));
  return m | 0;
}

function validate(o: ChunkerOptions): number {
  for (const k of ["min", "avg", "max"] as const) {
    if (!Number.isSafeInteger(o[k]) || o[k] < 0) throw new RangeError(`chunker ${k} must be a non-negative integer`);
  }
  const bits = Math.log2(o.avg);
  if (!Number.isInteger(bits) || bits < 3 || bits > 30) {
    throw new RangeError(`chunker avg must be a power of two between 8 and 2^30, not ${o.avg}`);
  }
  if (!(o.min <= o.avg && o.avg <= o.max)) throw new RangeError("chunker sizes must satisfy min <= avg <= max");
  if (o.max > 0x7fffffff) throw new RangeError("chunker max must be below 2 GiB");
  return bits;
}

/** A chunk found by cutAndHash: its length and its SHA-256 (the blob ID). */
export interface HashedChunk {
  length: number;
  id: Buffer;
}

const nativeChunkHash = nativeAddon?.chunkhash;

/** Bytes of cutAndHash's records per chunk: uint32 length, then the SHA-256. */
const RECORD = 36;

export class Chunker {
  readonly options: ChunkerOptions;
  private readonly gear: Uint32Array;
  private readonly maskS: number;
  private readonly maskL: number;
  private readonly min: number;
  private readonly avg: number;
  private readonly max: number;

  constructor(polynomial: bigint, options?: Partial<ChunkerOptions>) {
    const o: ChunkerOptions = { ...DEFAULT_CHUNKER_OPTIONS };
    for (const k of ["min", "avg", "max"] as const) {
      const v = options?.[k];
      if (v !== undefined) o[k] = v;
    }
    const bits = validate(o);
    this.options = Object.freeze(o);
    this.gear = gearTable(polynomial);
    this.maskS = spreadMask(bits + 2);
    this.maskL = spreadMask(bits - 2);
    this.min = o.min;
    this.avg = o.avg;
    this.max = o.max;
  }

  /** The gear table, sizes and masks as native/sitekeep_chunk.c takes them (built on first use). */
  private nativeParams?: Buffer;

  /**
   * Every chunk that starts at data[start] and follows, as cut() finds them until one is not decided
   * by the bytes up to end (or, with eof, up to end), with their SHA-256. On the thread pool when the native
   * addon is there (several times the speed of cut() and node:crypto here, and off the main thread);
   * `data` must not change until the promise settles.
   */
  async cutAndHash(data: Buffer, start: number, end: number, eof: boolean): Promise<HashedChunk[]> {
    if (!(start >= 0 && start <= end && end <= data.length)) {
      throw new RangeError(`Chunker.cutAndHash: bad range [${start}, ${end}) of ${data.length} bytes`);
    }
    if (nativeChunkHash) {
      const chunks: HashedChunk[] = [];
      const records = await nativeChunkHash(data, start, end, eof, this.paramsForNative());
      for (let r = 0; r < records.length; r += RECORD) {
        chunks.push({ length: records.readUInt32LE(r), id: records.subarray(r + 4, r + RECORD) });
      }
      return chunks;
    }
    return this.cutAndHashHere(data, start, end, eof);
  }

  /** cutAndHash on this thread with cut() and node:crypto (the fallback without the addon). */
  cutAndHashHere(data: Buffer, start: number, end: number, eof: boolean): HashedChunk[] {
    const chunks: HashedChunk[] = [];
    for (let at = start; at < end; ) {
      const length = this.cut(data, at, end, eof);
      if (length === 0) break;
      chunks.push({ length, id: createHash("sha256").update(data.subarray(at, at + length)).digest() });
      at += length;
    }
    return chunks;
  }

  private paramsForNative(): Buffer {
    if (this.nativeParams) return this.nativeParams;
    const params = Buffer.alloc((256 + 5) * 4);
    const words = new Uint32Array(params.buffer, params.byteOffset, 256 + 5); // host byte order, as C reads it
    words.set(this.gear);
    words.set([this.min, this.avg, this.max, this.maskS >>> 0, this.maskL >>> 0], 256);
    return (this.nativeParams = params);
  }

  /**
   * Length of the chunk that starts at data[start], in [1, max] (at eof, possibly fewer than min:
   * the tail), or 0 when the bytes up to `end` do not decide it: no boundary among them, fewer than
   * `max` of them and more to come (not `eof`). A boundary depends only on the bytes before it, so
   * a chunk found in a short window is the one a longer window finds: callers need not hold `max`
   * bytes of look-ahead, only refill and call again on 0.
   */
  cut(data: Uint8Array, start: number, end: number, eof: boolean): number {
    const avail = end - start;
    if (!(start >= 0 && end <= data.length && avail > 0)) {
      throw new RangeError(`Chunker.cut: bad range [${start}, ${end}) of ${data.length} bytes`);
    }
    const min = this.min;
    const max = this.max;
    // Without eof, fewer than max bytes decide the chunk only where a boundary lies among them.
    const open = avail < max && !eof;
    const limit = avail < max ? avail : max;
    if (limit <= min) return open ? 0 : limit;

    const gear = this.gear;
    const maskS = this.maskS;
    const maskL = this.maskL;
    const first = start + min;
    const normal = start + (this.avg < limit ? this.avg : limit);
    const stop = start + limit;
    let h = 0;
    let i = min > WINDOW ? first - WINDOW : start;
    // Prime the hash with the window just before min; no boundary is possible there.
    for (; i < first; i++) h = ((h << 1) + gear[data[i]]) | 0;
    // min..avg: the strict mask (cuts 4x rarer than 1/avg).
    for (; i < normal; i++) {
      h = ((h << 1) + gear[data[i]]) | 0;
      if ((h & maskS) === 0) return i - start + 1;
    }
    // avg..max: the loose mask (cuts 4x more often than 1/avg).
    for (; i < stop; i++) {
      h = ((h << 1) + gear[data[i]]) | 0;
      if ((h & maskL) === 0) return i - start + 1;
    }
    return open ? 0 : limit;
  }
}
