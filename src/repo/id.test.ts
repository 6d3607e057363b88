import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { nativeAddon } from "../platform/native.js";
import { hashHex, hashHexAsync, sha256, sha256Async, sha256Stream, sha256Text } from "./id.js";

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

test("sha256Stream: pieces of any size hash to the whole's SHA-256; misuse is refused", async () => {
  if (process.env.SITEKEEP_NO_NATIVE !== "1") assert.ok(nativeAddon?.sha256Begin, "the native streaming hash is not loaded");
  const whole = randomBytes((3 << 20) + 5);
  for (const cuts of [[], [0], [1, 64, 65, 1000], [1 << 20, 2 << 20], [whole.length - 1]]) {
    const h = sha256Stream();
    let at = 0;
    for (const end of [...cuts, whole.length]) {
      await h.update(whole.subarray(at, end)); // views: not at the start of their memory
      at = end;
    }
    assert.equal(h.digestHex(), hashHex(whole), `cut at ${cuts.join(", ")}`);
  }
  assert.equal(sha256Stream().digestHex(), hashHex(Buffer.alloc(0)));
  const a = nativeAddon;
  if (!a?.sha256Begin || !a.sha256UpdateAsync || !a.sha256End) return;
  const h = a.sha256Begin();
  const first = a.sha256UpdateAsync(h, Buffer.from("a"));
  assert.throws(() => a.sha256UpdateAsync!(h, Buffer.from("b")), /still running/, "one update at a time");
  await first;
  assert.equal(a.sha256End(h).toString("hex"), hashHex(Buffer.from("a")));
  assert.throws(() => a.sha256End!(h), /has ended/);
  assert.throws(() => a.sha256UpdateAsync!(h, Buffer.from("c")), /has ended/);
  assert.throws(() => a.sha256UpdateAsync!({} as never, Buffer.from("c")), /a hash from sha256Begin/);
});

test("sha256Text hashes a string's UTF-8 bytes", () => {
  for (const text of ["", "plain\n", "é€😀", '{"nodes":[{"name":"caf\u00e9"}]}\n']) {
    assert.ok(sha256Text(text).equals(sha256(Buffer.from(text, "utf8"))), JSON.stringify(text));
  }
  assert.equal(sha256Text("abc").toString("hex"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
});
