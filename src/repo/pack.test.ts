import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { newRandomKey, open } from "./crypto.js";
import { sha256 } from "./id.js";
import { PackBuilder, parsePackTail, sealBlob } from "./pack.js";
import { nativeAddon } from "../platform/native.js";

test("a pack that outgrows its buffer holds every blob, and the smaller buffer is freed at once", () => {
  const key = newRandomKey();
  const first = Buffer.allocUnsafeSlow(4096);
  const b = new PackBuilder("data", first, undefined, 64 * 1024);
  const plains = Array.from({ length: 12 }, (_, i) => randomBytes(1000 + 500 * i));
  for (const p of plains) b.add(sha256(p), sealBlob(key, p), 0);
  assert.notEqual(b.buffer, first, "the builder moved to a larger buffer");
  if (nativeAddon?.release) assert.equal(first.byteLength, 0, "the buffer it outgrew was released");
  const pack = Buffer.from(b.finish(key));
  const blobs = parsePackTail(key, pack.subarray(Math.max(0, pack.length - 64 * 1024)), pack.length, "test");
  assert.equal(blobs.length, plains.length);
  blobs.forEach((bl, i) => {
    assert.deepEqual(bl.id, sha256(plains[i]));
    assert.deepEqual(open(key, pack.subarray(bl.offset, bl.offset + bl.length)), plains[i]);
  });
});
