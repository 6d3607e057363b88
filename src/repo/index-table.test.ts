import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { ID_SIZE } from "./id.js";
import { UnindexedPacks } from "./index-file.js";
import { nativeAddon } from "../platform/native.js";
import { type IndexTable, scanIndex, scanIndexText } from "./index-table.js";
import type { PackedBlob } from "./pack.js";

interface BlobJSON {
  id: string;
  type: string;
  offset: number;
  length: number;
  uncompressed_length?: number;
}

/** What the JSON path makes of a (valid) index file, as a table. */
function expected(packs: { id: string; blobs: BlobJSON[] }[]): IndexTable {
  const blobs = packs.flatMap((p, i) => p.blobs.map((b) => ({ ...b, pack: i })));
  const ids = new Uint8Array(blobs.length * ID_SIZE);
  blobs.forEach((b, i) => ids.set(Buffer.from(b.id, "hex"), i * ID_SIZE));
  return {
    packs: packs.map((p) => p.id),
    count: blobs.length,
    packOf: Uint32Array.from(blobs.map((b) => b.pack)),
    ids,
    trees: Uint8Array.from(blobs.map((b) => (b.type === "tree" ? 1 : 0))),
    numbers: Float64Array.from(blobs.flatMap((b) => [b.offset, b.length, b.uncompressed_length ?? 0])),
  };
}

// Both readers, held to the same cases: the JavaScript one, and the addon's (native/sitekeep_index.c)
// where it is built (scanIndex uses it then).
const native = nativeAddon?.scanindexAsync !== undefined;
const readers: [string, (text: Uint8Array) => Promise<IndexTable | undefined>][] = [
  ["JavaScript", async (text) => scanIndexText(text)],
  ...(native ? [["addon", scanIndex] as [string, (text: Uint8Array) => Promise<IndexTable | undefined>]] : []),
];

/** The table both readers make of `text` (they must agree). */
async function scan(text: string | Uint8Array): Promise<IndexTable | undefined> {
  const bytes = typeof text === "string" ? Buffer.from(text) : text;
  const [first, ...rest] = await Promise.all(readers.map(([, read]) => read(bytes)));
  rest.forEach((t, i) => assert.deepEqual(t, first, `${readers[i + 1][0]} reads it as ${readers[0][0]} does: ${Buffer.from(bytes).toString().slice(0, 200)}`));
  return first;
}

const hex = (): string => randomBytes(32).toString("hex");

function randomPacks(n: number): { id: string; blobs: BlobJSON[] }[] {
  return Array.from({ length: n }, () => {
    let offset = 0;
    return {
      id: hex(),
      blobs: Array.from({ length: Math.floor(Math.random() * 40) }, () => {
        const length = 32 + Math.floor(Math.random() * 2 ** 24);
        const b: BlobJSON = { id: hex(), type: Math.random() < 0.2 ? "tree" : "data", offset, length };
        if (Math.random() < 0.5) b.uncompressed_length = Math.floor(Math.random() * 2 ** 30);
        offset += length;
        return b;
      }),
    };
  });
}

test("an index file as Sitekeep writes it reads the same as through JSON", async () => {
  const u = new UnindexedPacks();
  const packs = randomPacks(50);
  for (const p of packs) {
    u.add(
      p.id,
      p.blobs.map((b): PackedBlob => ({ id: Buffer.from(b.id, "hex"), type: b.type as "data" | "tree", offset: b.offset, length: b.length, uncompressedLength: b.uncompressed_length ?? 0 })),
    );
  }
  const text = u.take();
  assert.ok(text);
  assert.deepEqual(await scan(text), expected((JSON.parse(text.toString()) as { packs: { id: string; blobs: BlobJSON[] }[] }).packs));
  assert.deepEqual(await scan(text), expected(packs));
});

test("any spacing, key order, unknown keys and restic v1's bare list read the same as through JSON", async () => {
  for (let round = 0; round < 20; round++) {
    const packs = randomPacks(1 + (round % 7));
    const shuffled = packs.map((p) => {
      const blobs = p.blobs.map((b) => Object.fromEntries(Object.entries({ ...b, note: { deep: [1, -2.5e3, "x\"\\\u00e9\n", true, false, null, []] } }).sort(() => Math.random() - 0.5)));
      return Object.fromEntries(Object.entries({ extra: "a\\u0041", blobs, id: p.id }).sort(() => Math.random() - 0.5));
    });
    const doc = Math.random() < 0.5 ? { supersedes: [hex()], packs: shuffled, other: {} } : { packs: shuffled };
    const want = expected(packs);
    assert.deepEqual(await scan(JSON.stringify(doc)), want, "compact");
    assert.deepEqual(await scan(JSON.stringify(doc, null, round % 2 ? 2 : "\t") + "\n"), want, "spaced");
    assert.deepEqual(await scan(JSON.stringify(shuffled)), want, "v1: a bare list");
  }
  assert.deepEqual(await scan('{"packs":[]}'), expected([]));
  assert.deepEqual(await scan(' { "packs" : [ { "blobs" : [ ] , "id" : "' + "ab".repeat(32) + '" } ] } '), expected([{ id: "ab".repeat(32), blobs: [] }]));
  const big = { id: hex(), type: "data", offset: 2 ** 53 - 1, length: 4503599627370496 };
  assert.deepEqual(await scan(JSON.stringify({ packs: [{ id: "cd".repeat(32), blobs: [big] }] })), expected([{ id: "cd".repeat(32), blobs: [big] }]));
});

test("anything else is left to JSON: undefined, never a wrong table", async () => {
  const id = "ab".repeat(32);
  const blob = (extra: string): string => `{"packs":[{"id":"${id}","blobs":[{"id":"${id}","type":"data","offset":0,"length":40${extra}}]}]}`;
  const cases: [string, string][] = [
    [blob(',"uncompressed_length":null'), "a null length"],
    [blob(',"uncompressed_length":1.5'), "a fraction"],
    [blob(',"uncompressed_length":1e3'), "an exponent"],
    [blob(',"uncompressed_length":-1'), "a negative number"],
    [blob(',"uncompressed_length":012'), "a leading zero (JSON refuses it)"],
    [blob(',"uncompressed_length":99999999999999999'), "beyond 2^53"],
    [blob(',"x":tru'), "a broken literal in an unknown key"],
    [blob(',"x":"\\q"'), "a bad escape in an unknown key"],
    [blob(',"x":"a\nb"'), "a raw newline in a string"],
    [blob('}'), "one brace too many"],
    [blob('') + "x", "text after the document"],
    [blob('').slice(0, -3), "cut short"],
    [blob('').replace(`"id":"${id}","type"`, `"id":"${id.toUpperCase()}","type"`), "an uppercase ID"],
    [blob('').replace(`"id":"${id}","type"`, `"id":"\\u0061${id.slice(1)}","type"`), "an escaped ID"],
    [blob('').replace(`"id":"${id}","type"`, `"id":"${id.slice(2)}","type"`), "a short ID"],
    [blob('').replace('"type":"data"', '"type":"other"'), "an unknown type"],
    [blob('').replace('"type":"data",', ""), "no type"],
    [blob('').replace('"offset":0,', ""), "no offset"],
    [`{"packs":[{"blobs":[]}]}`, "a pack without an ID"],
    [`{"packs":[{"id":"${id}"}]}`, "a pack without blobs"],
    [`{"packs":[{"id":"${id}","blobs":[],"blobs":[]}]}`, "blobs twice"],
    [`{"packs":[],"packs":[]}`, "packs twice"],
    [`{"supersedes":[]}`, "no packs"],
    [`{"packs":null}`, "packs null"],
    [`{"p\\u0061cks":[]}`, "an escaped key"],
    ["", "empty"],
  ];
  for (const [text, what] of cases) assert.equal(await scan(text), undefined, what);
});

test("damaged text: both readers give the same table or both leave it to JSON, and what they read JSON reads alike", { skip: !native && "the addon is not built" }, async () => {
  const valid = JSON.stringify({ supersedes: [hex()], packs: randomPacks(3).map((p) => ({ ...p, note: [1.5e-3, "x\\u00e9\\n", null, { a: [true] }] })) }, null, 1);
  const alphabet = Buffer.from('{}[],:" \n\\0123456789aefnlrstu.-+E');
  let read = 0;
  for (let round = 0; round < 3000; round++) {
    const bytes = Buffer.from(valid);
    let text: Buffer = bytes;
    const at = Math.floor(Math.random() * bytes.length);
    const what = round % 4;
    if (what === 0) bytes[at] = alphabet[Math.floor(Math.random() * alphabet.length)];
    else if (what === 1) text = bytes.subarray(0, at); // cut short
    else if (what === 2) text = Buffer.concat([bytes.subarray(0, at), bytes.subarray(at + 1 + Math.floor(Math.random() * 8))]);
    else text = Buffer.concat([bytes.subarray(0, at), alphabet.subarray(Math.floor(Math.random() * alphabet.length)).subarray(0, 3), bytes.subarray(at)]);
    const table = await scan(text); // asserts that both agree
    if (table === undefined) continue;
    read++;
    // Whatever is read must be what JSON.parse makes of the text.
    const doc = JSON.parse(text.toString()) as { packs: { id: string; blobs: BlobJSON[] }[] };
    assert.deepEqual(table, expected(doc.packs));
  }
  assert.ok(read > 0, "some damage leaves valid JSON of the same shape (a changed digit, an added space)");
});
