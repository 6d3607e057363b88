import { test } from "node:test";
import assert from "node:assert/strict";
import { createCipheriv, randomBytes } from "node:crypto";
import { createRequire } from "node:module";
import { nativeAddon } from "../platform/native.js";
import { keyBytes, newRandomKey, open, seal, sealAsync, verifies, keyFromJSON, keyToJSON } from "./crypto.js";

test("sealed data opens with its key, and any flipped bit or other key is refused", () => {
  const key = newRandomKey();
  const plain = Buffer.from("the quick brown fox ".repeat(1000));
  const sealed = seal(key, plain);
  assert.equal(sealed.length, plain.length + 32);
  assert.deepEqual(open(key, sealed), plain);
  assert.notDeepEqual(seal(key, plain).subarray(0, 16), sealed.subarray(0, 16), "every seal has a fresh IV");
  for (const pos of [0, 15, 16, 500, sealed.length - 1]) {
    const bad = Buffer.from(sealed);
    bad[pos] ^= 1;
    assert.throws(() => open(key, bad), /verification failed/);
    assert.equal(verifies(key, bad), false);
  }
  assert.throws(() => open(newRandomKey(), sealed), /verification failed/);
  assert.deepEqual(open(keyFromJSON(keyToJSON(key)), sealed), plain);
  assert.deepEqual(open(key, seal(key, Buffer.alloc(0))), Buffer.alloc(0));
});

test("sealAsync (AES-CTR on the thread pool) makes what open() and a counter crossing 64 bits expect", async () => {
  const key = newRandomKey();
  for (const size of [0, 1, 16, 1000, 3 * 1024 * 1024 + 7]) {
    const plain = Buffer.alloc(size, 0x5a);
    for (let i = 0; i < size; i += 997) plain[i] = i & 0xff;
    const sealed = await sealAsync(key, plain);
    assert.equal(sealed.length, size + 32);
    assert.deepEqual(open(key, sealed), plain);
  }
  // sealAsync relies on WebCrypto's AES-CTR with a 128-bit counter counting like node's
  // aes-256-ctr (used by open(), and checked against restic by the interop tests), also when the
  // low 64 bits of the counter wrap and carry into the high half.
  const { createCipheriv } = await import("node:crypto");
  const { webcrypto } = await import("node:crypto");
  const iv = Buffer.from("0102030405060708fffffffffffffffe", "hex");
  const k = await webcrypto.subtle.importKey("raw", key.encrypt, "AES-CTR", false, ["encrypt"]);
  const viaWeb = Buffer.from(await webcrypto.subtle.encrypt({ name: "AES-CTR", counter: iv, length: 128 }, k, Buffer.alloc(4096, 7)));
  const c = createCipheriv("aes-256-ctr", key.encrypt, iv);
  assert.deepEqual(viaWeb, Buffer.concat([c.update(Buffer.alloc(4096, 7)), c.final()]));
});

test("the addon's Poly1305-AES gives libsodium's tags (each is the MAC in one form of the program)", { skip: nativeAddon?.poly1305aes ? false : "needs the addon" }, () => {
  const sodium = createRequire(import.meta.url)("sodium-native") as { crypto_onetimeauth(out: Buffer, msg: Buffer, key: Buffer): void };
  for (let t = 0; t < 100; t++) {
    const key = newRandomKey();
    const iv = randomBytes(16);
    const msg = randomBytes(t * 37);
    const aes = createCipheriv("aes-128-ecb", key.macK, null).setAutoPadding(false);
    const expected = Buffer.alloc(16);
    sodium.crypto_onetimeauth(expected, msg, Buffer.concat([key.macR, aes.update(iv)]));
    const got = nativeAddon!.poly1305aes!(keyBytes(key), iv, msg);
    assert.ok(got.equals(expected), `message of ${msg.length} bytes`);
  }
  assert.throws(() => nativeAddon!.poly1305aes!(Buffer.alloc(64), Buffer.alloc(15), Buffer.alloc(1)), /"iv" is out of range/);
});
