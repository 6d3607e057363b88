// Index files (index/<id>): JSON listing packs and the blobs inside each, encrypted, and in v2
// compressed. Written after the packs they describe are durable.

import type { BlobType, PackedBlob } from "./pack.js";

export interface IndexBlobJSON {
  id: string;
  type: BlobType;
  offset: number;
  length: number;
  uncompressed_length?: number;
}

export interface IndexPackJSON {
  id: string;
  blobs: IndexBlobJSON[];
}

export interface IndexFileJSON {
  supersedes?: string[];
  packs: IndexPackJSON[];
}

export function parseIndexFile(raw: unknown, name: string): IndexFileJSON {
  // restic v1 repositories may still hold the old format: a bare array of packs.
  const obj = Array.isArray(raw) ? { packs: raw } : (raw as IndexFileJSON);
  if (!obj || !Array.isArray(obj.packs)) throw new Error(`index ${name}: no "packs" list`);
  return obj;
}

/** Most bytes one blob's entry takes in an index file's text (numbers of up to 16 digits). */
const MAX_ENTRY_TEXT = '{"id":"","type":"data","offset":,"length":,"uncompressed_length":}'.length + 64 + 3 * 16 + 1;

interface PackBlobs {
  id: string;
  /** The blobs' IDs back to back, 32 bytes each. */
  ids: Buffer;
  /** 1 for a tree blob, 0 for data. */
  trees: Uint8Array;
  /** offset, length, uncompressed length (0: not compressed) per blob. */
  numbers: Float64Array;
}

/**
 * Blobs of durable packs that no index file names yet, held compact until their index file is
 * written: as JSON objects with hex IDs, 50,000 blobs were ~8 MiB of live objects, and
 * stringifying them made an 8 MiB string besides the file's bytes.
 */
export class UnindexedPacks {
  private packs: PackBlobs[] = [];
  private blobCount = 0;

  get packCount(): number {
    return this.packs.length;
  }

  /** Blobs in the packs held. */
  get blobs(): number {
    return this.blobCount;
  }

  add(packId: string, blobs: readonly PackedBlob[]): void {
    const n = blobs.length;
    const ids = Buffer.allocUnsafeSlow(32 * n);
    const trees = new Uint8Array(n);
    const numbers = new Float64Array(3 * n);
    for (let i = 0; i < n; i++) {
      const b = blobs[i];
      ids.set(b.id, 32 * i);
      trees[i] = b.type === "tree" ? 1 : 0;
      numbers[3 * i] = b.offset;
      numbers[3 * i + 1] = b.length;
      numbers[3 * i + 2] = b.uncompressedLength;
    }
    this.packs.push({ id: packId, ids, trees, numbers });
    this.blobCount += n;
  }

  /**
   * Takes every pack held and returns the index file's plaintext, the bytes JSON.stringify gives
   * an IndexFileJSON of them; undefined when none is held.
   */
  take(): Buffer | undefined {
    const packs = this.packs;
    if (packs.length === 0) return undefined;
    this.packs = [];
    this.blobCount = 0;
    let most = '{"packs":[]}'.length;
    for (const p of packs) most += '{"id":"","blobs":[]},'.length + p.id.length + p.trees.length * (MAX_ENTRY_TEXT + 1);
    // Room for the longest numbers (a write past the end would be cut short, silently); only the
    // pages written are touched.
    const out = Buffer.allocUnsafeSlow(most);
    let at = out.write('{"packs":[', 0, "latin1");
    packs.forEach((p, k) => {
      at += out.write(`${k ? "," : ""}{"id":"${p.id}","blobs":[`, at, "latin1");
      const nums = p.numbers;
      for (let i = 0; i < p.trees.length; i++) {
        const ulen = nums[3 * i + 2] ? `,"uncompressed_length":${nums[3 * i + 2]}` : "";
        const hex = p.ids.toString("hex", 32 * i, 32 * i + 32);
        at += out.write(`${i ? "," : ""}{"id":"${hex}","type":"${p.trees[i] ? "tree" : "data"}","offset":${nums[3 * i]},"length":${nums[3 * i + 1]}${ulen}}`, at, "latin1");
      }
      at += out.write("]}", at, "latin1");
    });
    at += out.write("]}", at, "latin1");
    return out.subarray(0, at);
  }
}
