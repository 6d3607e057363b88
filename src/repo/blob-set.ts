// A set of blob IDs (with their type) in typed arrays: open addressing over the IDs' bytes. Each
// member has an ordinal (insertion order), which BlobIndex uses to keep locations beside it. A Set
// of hex strings cost ~150 bytes per blob, this ~45.
import type { BlobType } from "./pack.js";

export class BlobSet {
  private ids = new Uint8Array(32 * 1024);
  private types = new Uint8Array(1024);
  private table = new Int32Array(2048);
  private n = 0;

  get size(): number {
    return this.n;
  }

  has(id: Uint8Array, type: BlobType): boolean {
    return this.find(id, type) >= 0;
  }

  /** The member's ordinal, or -1. */
  find(id: Uint8Array, type: BlobType): number {
    return this.table[this.slot(id, 0, type === "tree" ? 1 : 0)] - 1;
  }

  /** The ID of member i (a view valid until the next add). */
  idAt(i: number): Uint8Array {
    return this.ids.subarray(i * 32, i * 32 + 32);
  }

  typeAt(i: number): BlobType {
    return this.types[i] === 1 ? "tree" : "data";
  }

  /** Adds the ID (as ordinal size - 1); false when it was already there. */
  add(id: Uint8Array, type: BlobType): boolean {
    return this.addAt(id, 0, type === "tree" ? 1 : 0);
  }

  /**
   * add for the ID at src[at..at + 32) and a type as a number (1: tree, 0: data), without a view
   * per ID: an index file's table adds tens of thousands at once.
   */
  addAt(src: Uint8Array, at: number, t: number): boolean {
    const s = this.slot(src, at, t);
    if (this.table[s] !== 0) return false;
    if (this.n === this.types.length) this.grow(this.n + 1);
    this.ids.set(src.subarray(at, at + 32), this.n * 32);
    this.types[this.n] = t;
    this.n++;
    if (this.n * 2 > this.table.length) this.rehash(this.n);
    else this.table[s] = this.n;
    return true;
  }

  /** Makes room for `more` members beyond the current ones at once (not needed for correctness). */
  reserve(more: number): void {
    const n = this.n + more;
    if (n > this.types.length) this.grow(n);
    if (n * 2 > this.table.length) this.rehash(n);
  }

  /** Every member, in insertion order (the ID is a view valid until the next add). */
  *entries(): Generator<[Uint8Array, BlobType]> {
    for (let i = 0; i < this.n; i++) yield [this.idAt(i), this.typeAt(i)];
  }

  /** The table slot of the ID at src[at..at + 32) with type t: its member's, or the empty one where it would go. */
  private slot(src: Uint8Array, at: number, t: number): number {
    const mask = this.table.length - 1;
    // IDs are SHA-256 digests: their first bytes are already uniformly spread.
    let h = ((src[at] | (src[at + 1] << 8) | (src[at + 2] << 16) | (src[at + 3] << 24)) >>> 0) & mask;
    for (;;) {
      const e = this.table[h];
      if (e === 0) return h;
      const i = e - 1;
      if (this.types[i] === t && this.same(i, src, at)) return h;
      h = (h + 1) & mask;
    }
  }

  private same(i: number, src: Uint8Array, at: number): boolean {
    const o = i * 32;
    for (let k = 0; k < 32; k++) if (this.ids[o + k] !== src[at + k]) return false;
    return true;
  }

  /** Capacity for at least `n` members (doubling). */
  private grow(n: number): void {
    let cap = this.types.length * 2;
    while (cap < n) cap *= 2;
    const ids = new Uint8Array(cap * 32);
    ids.set(this.ids);
    this.ids = ids;
    const types = new Uint8Array(cap);
    types.set(this.types);
    this.types = types;
  }

  /** A table of at least twice `n` slots, every member placed again. */
  private rehash(n: number): void {
    let size = this.table.length * 2;
    while (size < n * 2) size *= 2;
    this.table = new Int32Array(size);
    const mask = this.table.length - 1;
    for (let i = 0; i < this.n; i++) {
      const o = i * 32;
      let h = ((this.ids[o] | (this.ids[o + 1] << 8) | (this.ids[o + 2] << 16) | (this.ids[o + 3] << 24)) >>> 0) & mask;
      while (this.table[h] !== 0) h = (h + 1) & mask;
      this.table[h] = i + 1;
    }
  }
}
