import { test } from "node:test";
import assert from "node:assert/strict";
import { newRandomKey, open, seal, verifies, keyFromJSON, keyToJSON } from "./crypto.js";

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
