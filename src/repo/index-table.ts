// Reads an index file's JSON text straight into arrays, without the objects JSON.parse builds.
// Every command loads the index: parsed as JSON, the many-files set's 320,000 blobs were that many
// objects and hex strings (plus each file's text as a string), and the heap grew by ~40 MiB to
// hold them for a moment (bench/README.md, "What session 16 changed").
//
// Only the shape restic and Sitekeep write is read here ({"supersedes": [...], "packs": [{"id",
// "blobs": [{"id", "type", "offset", "length", "uncompressed_length"?}]}]}, keys in any order,
// unknown keys skipped, or restic v1's bare list of packs). Anything else (an escape in an ID,
// uppercase hex, a number with a fraction, a missing field, text that is not JSON) gives
// undefined, and the caller parses the file as JSON, which reports or tolerates it as before.
//
// The addon reads the same shape in C on the thread pool (native/sitekeep_index.c): this reader
// took 80-140 ms of the main thread for the mixed set's 66,000 blobs (9.6 MB of text) while the
// other core idled, the addon 16-21 ms on the pool. scanIndex picks one; the tests hold both to the
// same cases.
import { nativeAddon } from "../platform/native.js";
import { ID_SIZE } from "./id.js";

/** The blobs of one index file, in file order. */
export interface IndexTable {
  /** Pack IDs (hex), in the order their entries appear (a pack may appear twice). */
  packs: string[];
  /** Blobs in the table. */
  count: number;
  /** Per blob: its pack's place in `packs`. */
  packOf: Uint32Array;
  /** ID_SIZE bytes per blob. */
  ids: Uint8Array;
  /** Per blob: 1 for a tree blob, 0 for data. */
  trees: Uint8Array;
  /** Per blob: offset, length, uncompressed length (0: not compressed). */
  numbers: Float64Array;
}

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const COMMA = 0x2c;
const COLON = 0x3a;
const OPEN_OBJECT = 0x7b;
const CLOSE_OBJECT = 0x7d;
const OPEN_ARRAY = 0x5b;
const CLOSE_ARRAY = 0x5d;

/** Thrown inside the scanner when the text is not in the known shape (never leaves this module). */
const UNFIT = Symbol("unfit");

const enum Key {
  Other,
  Id,
  Type,
  Offset,
  Length,
  UncompressedLength,
  Packs,
  Blobs,
}

const KEYS: [Uint8Array, Key][] = (
  [
    ["id", Key.Id],
    ["type", Key.Type],
    ["offset", Key.Offset],
    ["length", Key.Length],
    ["uncompressed_length", Key.UncompressedLength],
    ["packs", Key.Packs],
    ["blobs", Key.Blobs],
  ] as const
).map(([k, v]) => [Buffer.from(k), v]);

/** Hex digit values by byte (lowercase only, as isIdHex), -1 otherwise. */
const HEX = new Int8Array(256).fill(-1);
for (let i = 0; i < 10; i++) HEX[0x30 + i] = i;
for (let i = 0; i < 6; i++) HEX[0x61 + i] = 10 + i;

const DATA = Buffer.from('"data"');
const TREE = Buffer.from('"tree"');

class Scanner {
  pos = 0;
  // Growable per-blob arrays.
  count = 0;
  packs: string[] = [];
  packOf = new Uint32Array(1024);
  ids = new Uint8Array(1024 * ID_SIZE);
  trees = new Uint8Array(1024);
  numbers = new Float64Array(3 * 1024);

  constructor(private readonly t: Uint8Array) {}

  table(): IndexTable {
    const n = this.count;
    return {
      packs: this.packs,
      count: n,
      packOf: this.packOf.slice(0, n),
      ids: this.ids.slice(0, n * ID_SIZE),
      trees: this.trees.slice(0, n),
      numbers: this.numbers.slice(0, 3 * n),
    };
  }

  /** The next byte that is not whitespace (-1 at the end). */
  peek(): number {
    const t = this.t;
    let p = this.pos;
    while (p < t.length) {
      const c = t[p];
      if (c !== 0x20 && c !== 0x0a && c !== 0x0d && c !== 0x09) break;
      p++;
    }
    this.pos = p;
    return p < t.length ? t[p] : -1;
  }

  expect(c: number): void {
    if (this.peek() !== c) throw UNFIT;
    this.pos++;
  }

  /** After an element: true when another follows (a comma), false at `close`. */
  more(close: number): boolean {
    const c = this.peek();
    this.pos++;
    if (c === COMMA) return true;
    if (c === close) return false;
    throw UNFIT;
  }

  /** Whether the container opened just before is empty (consumes its close). */
  empty(close: number): boolean {
    if (this.peek() !== close) return false;
    this.pos++;
    return true;
  }

  /** An object key followed by its colon. */
  key(): Key {
    this.expect(QUOTE);
    const t = this.t;
    const start = this.pos;
    let p = start;
    while (p < t.length && t[p] !== QUOTE) {
      if (t[p] === BACKSLASH || t[p] < 0x20) throw UNFIT; // an escaped key: let JSON.parse read it
      p++;
    }
    if (p >= t.length) throw UNFIT;
    this.pos = p + 1;
    this.expect(COLON);
    const len = p - start;
    for (const [k, v] of KEYS) {
      if (k.length !== len) continue;
      let same = true;
      for (let i = 0; i < len && same; i++) same = t[start + i] === k[i];
      if (same) return v;
    }
    return Key.Other;
  }

  /** A 64-digit lowercase hex string, its bytes written to `into` at `at`. */
  hexId(into: Uint8Array, at: number): void {
    this.expect(QUOTE);
    const t = this.t;
    const p = this.pos;
    if (p + 2 * ID_SIZE >= t.length || t[p + 2 * ID_SIZE] !== QUOTE) throw UNFIT;
    for (let i = 0; i < ID_SIZE; i++) {
      const hi = HEX[t[p + 2 * i]];
      const lo = HEX[t[p + 2 * i + 1]];
      if (hi < 0 || lo < 0) throw UNFIT;
      into[at + i] = (hi << 4) | lo;
    }
    this.pos = p + 2 * ID_SIZE + 1;
  }

  /** 1 for "tree", 0 for "data". */
  blobType(): number {
    this.peek();
    if (this.literal(TREE)) return 1;
    if (this.literal(DATA)) return 0;
    throw UNFIT;
  }

  private literal(bytes: Uint8Array): boolean {
    const t = this.t;
    const p = this.pos;
    if (p + bytes.length > t.length) return false;
    for (let i = 0; i < bytes.length; i++) if (t[p + i] !== bytes[i]) return false;
    this.pos = p + bytes.length;
    return true;
  }

  /** A non-negative integer as JSON writes it (no sign, fraction or exponent; at most 2^53). */
  integer(): number {
    this.peek();
    const t = this.t;
    let p = this.pos;
    const start = p;
    let n = 0;
    while (p < t.length && t[p] >= 0x30 && t[p] <= 0x39) n = n * 10 + (t[p++] - 0x30);
    const digits = p - start;
    if (digits === 0 || digits > 16 || (digits > 1 && t[start] === 0x30) || n > Number.MAX_SAFE_INTEGER) throw UNFIT;
    if (p < t.length && (t[p] === 0x2e || t[p] === 0x65 || t[p] === 0x45)) throw UNFIT; // 1.5, 1e3
    this.pos = p;
    return n;
  }

  /** Skips any JSON value (strictly: what JSON.parse would refuse is unfit). */
  skipValue(depth = 0): void {
    if (depth > 64) throw UNFIT;
    const c = this.peek();
    if (c === QUOTE) return this.skipString();
    if (c === OPEN_OBJECT || c === OPEN_ARRAY) {
      const close = c === OPEN_OBJECT ? CLOSE_OBJECT : CLOSE_ARRAY;
      this.pos++;
      if (this.empty(close)) return;
      do {
        if (close === CLOSE_OBJECT) this.key();
        this.skipValue(depth + 1);
      } while (this.more(close));
      return;
    }
    for (const lit of LITERALS) if (this.literal(lit)) return;
    this.skipNumber();
  }

  private skipString(): void {
    const t = this.t;
    let p = this.pos + 1;
    for (;;) {
      if (p >= t.length || t[p] < 0x20) throw UNFIT;
      if (t[p] === QUOTE) break;
      if (t[p] === BACKSLASH) {
        const e = t[p + 1];
        if (e === 0x75) {
          for (let i = 2; i < 6; i++) if (!isHexDigit(t[p + i])) throw UNFIT;
          p += 6;
        } else if (ESCAPES.includes(e)) p += 2;
        else throw UNFIT;
      } else {
        p++;
      }
    }
    this.pos = p + 1;
  }

  private skipNumber(): void {
    const m = NUMBER.exec(Buffer.from(this.t.buffer, this.t.byteOffset + this.pos, Math.min(64, this.t.length - this.pos)).toString("latin1"));
    if (!m || m[0].length === 64) throw UNFIT;
    this.pos += m[0].length;
  }

  grow(): void {
    const cap = 2 * this.packOf.length;
    const packOf = new Uint32Array(cap);
    packOf.set(this.packOf);
    this.packOf = packOf;
    const ids = new Uint8Array(cap * ID_SIZE);
    ids.set(this.ids);
    this.ids = ids;
    const trees = new Uint8Array(cap);
    trees.set(this.trees);
    this.trees = trees;
    const numbers = new Float64Array(3 * cap);
    numbers.set(this.numbers);
    this.numbers = numbers;
  }
}

const LITERALS = ["true", "false", "null"].map((s) => Buffer.from(s));
const ESCAPES = [0x22, 0x5c, 0x2f, 0x62, 0x66, 0x6e, 0x72, 0x74];
const NUMBER = /^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?/;

function isHexDigit(c: number | undefined): boolean {
  return c !== undefined && ((c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x46) || (c >= 0x61 && c <= 0x66));
}

function scanBlob(s: Scanner, pack: number): void {
  if (s.count === s.packOf.length) s.grow();
  const i = s.count;
  let seen = 0;
  let ulen = 0;
  s.expect(OPEN_OBJECT);
  if (!s.empty(CLOSE_OBJECT)) {
    do {
      switch (s.key()) {
        case Key.Id:
          s.hexId(s.ids, i * ID_SIZE);
          seen |= 1;
          break;
        case Key.Type:
          s.trees[i] = s.blobType();
          seen |= 2;
          break;
        case Key.Offset:
          s.numbers[3 * i] = s.integer();
          seen |= 4;
          break;
        case Key.Length:
          s.numbers[3 * i + 1] = s.integer();
          seen |= 8;
          break;
        case Key.UncompressedLength:
          ulen = s.integer();
          break;
        default:
          s.skipValue();
      }
    } while (s.more(CLOSE_OBJECT));
  }
  if (seen !== 15) throw UNFIT;
  s.numbers[3 * i + 2] = ulen;
  s.packOf[i] = pack;
  s.count++;
}

function scanPack(s: Scanner): void {
  const pack = s.packs.length;
  s.packs.push("");
  let id: string | undefined;
  let blobs = false;
  s.expect(OPEN_OBJECT);
  if (!s.empty(CLOSE_OBJECT)) {
    do {
      switch (s.key()) {
        case Key.Id: {
          const bytes = new Uint8Array(ID_SIZE);
          s.hexId(bytes, 0);
          id = Buffer.from(bytes).toString("hex");
          break;
        }
        case Key.Blobs:
          if (blobs) throw UNFIT; // twice: JSON.parse keeps the last list, this reader both
          blobs = true;
          s.expect(OPEN_ARRAY);
          if (!s.empty(CLOSE_ARRAY)) {
            do scanBlob(s, pack);
            while (s.more(CLOSE_ARRAY));
          }
          break;
        default:
          s.skipValue();
      }
    } while (s.more(CLOSE_OBJECT));
  }
  if (id === undefined || !blobs) throw UNFIT;
  s.packs[pack] = id;
}

function scanPacks(s: Scanner): void {
  s.expect(OPEN_ARRAY);
  if (s.empty(CLOSE_ARRAY)) return;
  do scanPack(s);
  while (s.more(CLOSE_ARRAY));
}

/** scanIndexText on the thread pool when the addon is built, on this thread otherwise. `text` must not change until it settles. */
export async function scanIndex(text: Uint8Array): Promise<IndexTable | undefined> {
  const scan = nativeAddon?.scanindexAsync;
  if (!scan) return scanIndexText(text);
  const result = await scan(text);
  if (result === null) return undefined;
  const [ids, packOf, trees, numbers, packIds] = result;
  const hex = Buffer.from(packIds.buffer, packIds.byteOffset, packIds.length);
  const packs: string[] = [];
  for (let at = 0; at < hex.length; at += ID_SIZE) packs.push(hex.toString("hex", at, at + ID_SIZE));
  return { packs, count: trees.length, packOf, ids, trees, numbers };
}

/** The blobs of an index file's text, or undefined when it is not in the shape read here. */
export function scanIndexText(text: Uint8Array): IndexTable | undefined {
  const s = new Scanner(text);
  try {
    if (s.peek() === OPEN_ARRAY) {
      scanPacks(s); // restic v1: a bare list of packs
    } else {
      let packs = false;
      s.expect(OPEN_OBJECT);
      if (!s.empty(CLOSE_OBJECT)) {
        do {
          if (s.key() === Key.Packs) {
            if (packs) throw UNFIT;
            packs = true;
            scanPacks(s);
          } else {
            s.skipValue();
          }
        } while (s.more(CLOSE_OBJECT));
      }
      if (!packs) throw UNFIT;
    }
    if (s.peek() !== -1) throw UNFIT;
  } catch (err) {
    if (err === UNFIT) return undefined;
    throw err;
  }
  return s.table();
}
