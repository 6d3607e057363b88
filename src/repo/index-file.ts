// Index files (index/<id>): JSON listing packs and the blobs inside each, encrypted, and in v2
// compressed. Written after the packs they describe are durable.

import type { BlobType } from "./pack.js";

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
