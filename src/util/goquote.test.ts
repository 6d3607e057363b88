import { test } from "node:test";
import assert from "node:assert/strict";
import { goQuote, goUnquote, isValidUtf8 } from "./goquote.js";

test("names restic stores as Go quoted strings read back to the same bytes", () => {
  // Forms taken from a tree written by restic 0.14.
  assert.deepEqual(goUnquote('a\\"b\\\\c'), Buffer.from('a"b\\c'));
  assert.deepEqual(goUnquote("f\\xff\\xfe.t"), Buffer.from([0x66, 0xff, 0xfe, 0x2e, 0x74]));
  assert.deepEqual(goUnquote("new\\nline"), Buffer.from("new\nline"));
  assert.deepEqual(goUnquote("\\u00e9\\U0001f600\\101"), Buffer.from("é😀A"));
});

test("goQuote writes what restic writes for the common cases and round-trips any bytes", () => {
  assert.equal(goQuote(Buffer.from('a"b\\c')), 'a\\"b\\\\c');
  assert.equal(goQuote(Buffer.from([0x66, 0xff, 0xfe, 0x2e, 0x74])), "f\\xff\\xfe.t");
  assert.equal(goQuote(Buffer.from("new\nline\ttab")), "new\\nline\\ttab");
  assert.equal(goQuote(Buffer.from("ünïcödé-文件")), "ünïcödé-文件");
  for (let i = 0; i < 500; i++) {
    const raw = Buffer.from(Array.from({ length: 1 + (i % 17) }, (_, k) => (i * 31 + k * 97) % 256));
    assert.deepEqual(goUnquote(goQuote(raw)), raw, raw.toString("hex"));
  }
});

test("isValidUtf8 rejects overlong forms, surrogates and truncated sequences", () => {
  assert.equal(isValidUtf8(Buffer.from("héllo 文件 😀")), true);
  assert.equal(isValidUtf8(Buffer.from([0xc0, 0xaf])), false);
  assert.equal(isValidUtf8(Buffer.from([0xed, 0xa0, 0x80])), false);
  assert.equal(isValidUtf8(Buffer.from([0xe6, 0x96])), false);
});
