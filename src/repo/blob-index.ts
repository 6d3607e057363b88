// The in-memory index of every blob in the repository: which pack holds it, where, how long.
// Kept in typed arrays with an open-addressing hash table keyed by the blob ID's first bytes, so a
// repository with millions of blobs costs about 60 bytes per blob rather than a Map of objects.
import type { BlobType } from "./pack.js";

export interface BlobLocation {
  packId: string;
  type: BlobType;
  offset: number;
  length: number;
  uncompressedLength: number;
}

const EMPTY = 0;

export class BlobIndex {
  private ids = new Uint8Array(32 * 1024);
  private packOf = new Uint32Array(1024);
  private offsets = new Uint32Array(1024);
  private lengths = new Uint32Array(1024);
  private ulens = new Uint32Array(1024);
  private types = new Uint8Array(1024);
  private table = new Int32Array(2048);
  private n = 0;
  private readonly packIds: string[] = [];
  private readonly packNumbers = new Map<string, number>();
  /** Entries dropped because the same blob was already known (duplicate copies in other packs). */
  duplicates = 0;

  get size(): number {
    return this.n;
  }

  get packCount(): number {
    return this.packIds.length;
  }

  packNumber(packId: string): number {
    let p = this.packNumbers.get(packId);
    if (p === undefined) {
      p = this.packIds.length;
      this.packIds.push(packId);
      this.packNumbers.set(packId, p);
    }
    return p;
  }

  private slot(id: Uint8Array, type: BlobType): number {
    const mask = this.table.length - 1;
    let h = ((id[0] | (id[1] << 8) | (id[2] << 16) | (id[3] << 24)) >>> 0) & mask;
    const t = type === "tree" ? 1 : 0;
    for (;;) {
      const e = this.table[h];
      if (e === EMPTY) return h;
      const i = e - 1;
      if (this.types[i] === t && this.sameId(i, id)) return h;
      h = (h + 1) & mask;
    }
  }

  private sameId(i: number, id: Uint8Array): boolean {
    const ids = this.ids;
    const base = i * 32;
    for (let k = 0; k < 32; k++) if (ids[base + k] !== id[k]) return false;
    return true;
  }

  /** Entry number of a blob, or -1. */
  find(id: Uint8Array, type: BlobType): number {
    const e = this.table[this.slot(id, type)];
    return e === EMPTY ? -1 : e - 1;
  }

  has(id: Uint8Array, type: BlobType): boolean {
    return this.find(id, type) >= 0;
  }

  get(id: Uint8Array, type: BlobType): BlobLocation | undefined {
    const i = this.find(id, type);
    return i < 0 ? undefined : this.at(i);
  }

  at(i: number): BlobLocation {
    return {
      packId: this.packIds[this.packOf[i]],
      type: this.types[i] === 1 ? "tree" : "data",
      offset: this.offsets[i],
      length: this.lengths[i],
      uncompressedLength: this.ulens[i],
    };
  }

  idAt(i: number): Buffer {
    return Buffer.from(this.ids.subarray(i * 32, i * 32 + 32));
  }

  /** Adds a blob; returns false when it was already indexed (the first location wins). */
  add(id: Uint8Array, type: BlobType, packId: string, offset: number, length: number, uncompressedLength: number): boolean {
    if ((this.n + 1) * 2 > this.table.length) this.grow();
    const s = this.slot(id, type);
    if (this.table[s] !== EMPTY) {
      this.duplicates++;
      return false;
    }
    const i = this.n++;
    this.ids.set(id.subarray(0, 32), i * 32);
    this.packOf[i] = this.packNumber(packId);
    this.offsets[i] = offset;
    this.lengths[i] = length;
    this.ulens[i] = uncompressedLength;
    this.types[i] = type === "tree" ? 1 : 0;
    this.table[s] = i + 1;
    return true;
  }

  private grow(): void {
    const cap = this.packOf.length * 2;
    const ids = new Uint8Array(cap * 32);
    ids.set(this.ids);
    this.ids = ids;
    for (const k of ["packOf", "offsets", "lengths", "ulens"] as const) {
      const a = new Uint32Array(cap);
      a.set(this[k]);
      this[k] = a;
    }
    const types = new Uint8Array(cap);
    types.set(this.types);
    this.types = types;
    this.table = new Int32Array(cap * 2);
    const mask = this.table.length - 1;
    for (let i = 0; i < this.n; i++) {
      const b = i * 32;
      let h = ((this.ids[b] | (this.ids[b + 1] << 8) | (this.ids[b + 2] << 16) | (this.ids[b + 3] << 24)) >>> 0) & mask;
      while (this.table[h] !== EMPTY) h = (h + 1) & mask;
      this.table[h] = i + 1;
    }
  }

  /** Every pack that holds at least one indexed blob. */
  packs(): string[] {
    return [...this.packIds];
  }

  *entries(): IterableIterator<{ id: Buffer } & BlobLocation> {
    for (let i = 0; i < this.n; i++) yield { id: this.idAt(i), ...this.at(i) };
  }
}
