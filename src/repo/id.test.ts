import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { nativeAddon } from "../platform/native.js";
import { hashHex, hashHexAsync, sha256, sha256Async } from "./id.js";

test("sha256Async (native on the thread pool where built) equals sha256, for Buffers and views", async () => {
  if (process.env.SITEKEEP_NO_NATIVE !== "1") assert.ok(nativeAddon?.sha256, "the native sha256 is not loaded");
  for (const n of [0, 1, 55, 56, 63, 64, 65, 1 << 20, (17 << 20) + 3]) {
    const b = randomBytes(n + 7);
    const view = new Uint8Array(b.buffer, b.byteOffset + 7, n); // not at the start of its memory
    const want = sha256(view);
    assert.ok((await sha256Async(view)).equals(want), `view of ${n} bytes`);
    assert.ok((await sha256Async(Buffer.from(view))).equals(want), `Buffer of ${n} bytes`);
    assert.equal(await hashHexAsync(view), hashHex(view));
  }
  assert.equal((await sha256Async(Buffer.alloc(0))).toString("hex"), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
});
