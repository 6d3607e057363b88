// The in-memory index of every blob in the repository: which pack holds it, where, how long.
// Kept in typed arrays (a BlobSet for the IDs, an array per field beside it), so a repository with
// millions of blobs costs about 60 bytes per blob rather than a Map of objects.
import { BlobSet } from "./blob-set.js";
import { ID_SIZE } from "./id.js";
import type { IndexTable } from "./index-table.js";
import type { BlobType } from "./pack.js";

export interface BlobLocation {
  packId: string;
  type: BlobType;
  offset: number;
  length: number;
  uncompressedLength: number;
}

/** The blobs' IDs live in a BlobSet; their locations in arrays indexed by the set's ordinals. */
export class BlobIndex {
  private readonly keys = new BlobSet();
  private packOf = new Uint32Array(1024);
  private offsets = new Uint32Array(1024);
  private lengths = new Uint32Array(1024);
  private ulens = new Uint32Array(1024);
  private readonly packIds: string[] = [];
  private readonly packNumbers = new Map<string, number>();
  /** Entries dropped because the same blob was already known (duplicate copies in other packs). */
  duplicates = 0;

  get size(): number {
    return this.keys.size;
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

  /** Entry number of a blob, or -1. */
  find(id: Uint8Array, type: BlobType): number {
    return this.keys.find(id, type);
  }

  has(id: Uint8Array, type: BlobType): boolean {
    return this.keys.has(id, type);
  }

  get(id: Uint8Array, type: BlobType): BlobLocation | undefined {
    const i = this.find(id, type);
    return i < 0 ? undefined : this.at(i);
  }

  at(i: number): BlobLocation {
    return {
      packId: this.packIds[this.packOf[i]],
      type: this.keys.typeAt(i),
      offset: this.offsets[i],
      length: this.lengths[i],
      uncompressedLength: this.ulens[i],
    };
  }

  /** Entry i's pack, stored length and uncompressed length (0: not compressed), without a location object. */
  packIdAt(i: number): string {
    return this.packIds[this.packOf[i]];
  }

  lengthAt(i: number): number {
    return this.lengths[i];
  }

  uncompressedLengthAt(i: number): number {
    return this.ulens[i];
  }

  offsetAt(i: number): number {
    return this.offsets[i];
  }

  typeAt(i: number): BlobType {
    return this.keys.typeAt(i);
  }

  idAt(i: number): Buffer {
    return Buffer.from(this.keys.idAt(i));
  }

  /** Entry i's ID as a view into the index (valid until the next add): for copying, without a buffer per call. */
  idBytesAt(i: number): Uint8Array {
    return this.keys.idAt(i);
  }

  /** Adds a blob; returns false when it was already indexed (the first location wins). */
  add(id: Uint8Array, type: BlobType, packId: string, offset: number, length: number, uncompressedLength: number): boolean {
    if (!this.keys.add(id, type)) {
      this.duplicates++;
      return false;
    }
    const i = this.keys.size - 1;
    if (i === this.packOf.length) this.grow();
    this.packOf[i] = this.packNumber(packId);
    this.offsets[i] = offset;
    this.lengths[i] = length;
    this.ulens[i] = uncompressedLength;
    return true;
  }

  /**
   * add for every blob of an index file's table, in its order: the arrays grow once and each pack
   * is looked up once, and no view is made per ID.
   */
  addTable(t: IndexTable): void {
    this.keys.reserve(t.count);
    if (this.keys.size + t.count > this.packOf.length) this.grow(this.keys.size + t.count);
    // A pack is numbered at its first blob added, as add does (one whose blobs were all known is not).
    const packs = new Int32Array(t.packs.length).fill(-1);
    for (let b = 0; b < t.count; b++) {
      if (!this.keys.addAt(t.ids, b * ID_SIZE, t.trees[b])) {
        this.duplicates++;
        continue;
      }
      const i = this.keys.size - 1;
      const p = t.packOf[b];
      if (packs[p] < 0) packs[p] = this.packNumber(t.packs[p]);
      this.packOf[i] = packs[p];
      this.offsets[i] = t.numbers[3 * b];
      this.lengths[i] = t.numbers[3 * b + 1];
      this.ulens[i] = t.numbers[3 * b + 2];
    }
  }

  /** Capacity for at least `n` entries (doubling). */
  private grow(n = this.packOf.length + 1): void {
    let cap = this.packOf.length * 2;
    while (cap < n) cap *= 2;
    for (const k of ["packOf", "offsets", "lengths", "ulens"] as const) {
      const a = new Uint32Array(cap);
      a.set(this[k]);
      this[k] = a;
    }
  }

  /** Every pack that holds at least one indexed blob. */
  packs(): string[] {
    return [...this.packIds];
  }

  *entries(): IterableIterator<{ id: Buffer } & BlobLocation> {
    for (let i = 0; i < this.size; i++) yield { id: this.idAt(i), ...this.at(i) };
  }
}
