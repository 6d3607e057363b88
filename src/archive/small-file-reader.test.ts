import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { EncodedBatch } from "../repo/blob-codec.js";
import { READ_FIELDS, ReadField, canReadFiles } from "../platform/fsx.js";
import {
  type EncodeFn,
  type SmallFileReaderOptions,
  type SmallFilesShare,
  SmallFileReader,
} from "./small-file-reader.js";

/** Folders d0..d{n-1} of `files` files each, "d<i>/f<k>" holding "<i>:<k>". */
function folders(root: string, n: number, files: number): string[] {
  const dirs: string[] = [];
  for (let i = 0; i < n; i++) {
    const d = join(root, `d${i}`);
    mkdirSync(d);
    for (let k = 0; k < files; k++) writeFileSync(join(d, `f${k}`), `${i}:${k}`);
    dirs.push(d);
  }
  return dirs;
}

/**
 * An encoder that records each call's blob count and finishes only when told to. It "seals" each
 * blob as itself: `sealed` is a copy of the data read (the reader frees the data once encoded).
 */
function heldEncoder(): { encode: EncodeFn; calls: number[]; finish: () => void } {
  const calls: number[] = [];
  const waiting: (() => void)[] = [];
  const encode: EncodeFn = async (data, offsets, lengths) => {
    calls.push(lengths.length);
    await new Promise<void>((r) => waiting.push(r));
    const n = lengths.length;
    return {
      ids: new Uint8Array(32 * n),
      sealed: new Uint8Array(data),
      ends: Uint32Array.from(offsets, (o, i) => o + lengths[i]),
      ulens: new Uint32Array(n),
    } satisfies EncodedBatch;
  };
  return { encode, calls, finish: () => waiting.splice(0).forEach((r) => r()) };
}

/** Folders under root (see folders), a held encoder, and a reader on both (`encode` wraps the encoder when given). */
function setup(
  root: string,
  layout: { folders: number; files: number },
  opts: Omit<SmallFileReaderOptions, "maxBytes">,
  encode?: (held: EncodeFn) => EncodeFn,
): { dirs: string[]; enc: ReturnType<typeof heldEncoder>; reader: SmallFileReader } {
  const enc = heldEncoder();
  const reader = new SmallFileReader(encode ? encode(enc.encode) : enc.encode, {
    maxBytes: 1 << 20,
    ...opts,
  });
  return { dirs: folders(root, layout.folders, layout.files), enc, reader };
}

function request(reader: SmallFileReader, dir: string, files: number): Promise<SmallFilesShare> {
  const names = Array.from({ length: files }, (_, k) => Buffer.from(`f${k}`));
  return reader.read(
    Buffer.from(dir),
    Buffer.from("/"),
    names,
    names.map(() => 16),
  );
}

/** The bytes of file k of a share (its own numbering), as the held encoder "sealed" them. */
function text(s: SmallFilesShare, k: number): string {
  const b = (s.first + k) * READ_FIELDS;
  assert.equal(s.r.f[b + ReadField.errno], 0);
  const start = s.r.f[b + ReadField.offset];
  assert.equal(s.enc.ends[s.first + k], start + s.r.f[b + ReadField.length]);
  return Buffer.from(s.enc.sealed.subarray(start, s.enc.ends[s.first + k])).toString();
}

/** Waits until the encoder has been called n times (reads finish on the thread pool). */
async function calls(enc: { calls: number[] }, n: number): Promise<void> {
  for (let i = 0; i < 500 && enc.calls.length < n; i++) await new Promise((r) => setTimeout(r, 2));
  assert.ok(enc.calls.length >= n, `the encoder was called ${enc.calls.length} times, not ${n}`);
}

/** Time for a batch that could leave to be read and reach the encoder. */
const settle = (): Promise<void> => new Promise((r) => setTimeout(r, 100));

/** A test of real reads (skipped without the addon) in a fresh temporary folder, removed afterwards. */
function readTest(name: string, fn: (root: string) => Promise<void>): void {
  test(name, { skip: !canReadFiles() }, async () => {
    const root = mkdtempSync(join(tmpdir(), "sitekeep-smallfiles-"));
    try {
      await fn(root);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
}

readTest(
  "folders that arrive while a batch is out share the next batch, and each gets its own files",
  async (root) => {
    const { dirs, enc, reader } = setup(root, { folders: 5, files: 3 }, { maxFiles: 64, slots: 4, eager: 1 });
    const shares = dirs.map((d) => request(reader, d, 3));
    await calls(enc, 1);
    assert.deepEqual(enc.calls, [3], "the first folder left alone: nothing was out");
    enc.finish();
    await calls(enc, 2);
    enc.finish();
    const got = await Promise.all(shares);
    assert.deepEqual(enc.calls, [3, 12], "the other four folders went in one batch");
    got.forEach((s, i) => {
      for (let k = 0; k < 3; k++) assert.equal(text(s, k), `${i}:${k}`);
    });
    assert.equal(got[1].r, got[4].r, "one read for the shared batch");
    assert.equal(got[1].r.data.length, 0, "the bytes read are freed once encoded");
    for (const s of got.slice(1, 4)) s.release();
    assert.ok(got[4].enc.sealed.length > 0, "the encoded batch stays while a share is held");
    got[4].release();
    assert.equal(got[4].enc.sealed.length, 0, "and is freed when its last share is released");
    got[0].release();
  },
);

readTest(
  "a full batch leaves without waiting, and a batch's slot returns only when all its shares are released",
  async (root) => {
    const { dirs, enc, reader } = setup(root, { folders: 6, files: 2 }, { maxFiles: 4, slots: 2, eager: 1 });
    const first = request(reader, dirs[0], 2); // leaves at once
    const pair = [request(reader, dirs[1], 2), request(reader, dirs[2], 2)]; // fills a batch: leaves too
    await calls(enc, 2);
    assert.deepEqual([...enc.calls].sort(), [2, 4]);
    const later = [request(reader, dirs[3], 2), request(reader, dirs[4], 2)]; // full, but both slots are taken
    enc.finish();
    const a = await first;
    const [b, c] = await Promise.all(pair);
    await settle();
    assert.equal(enc.calls.length, 2, "no slot: the full batch has not been read");
    b.release();
    await settle();
    assert.equal(enc.calls.length, 2, "one of two shares released: the slot is still held");
    c.release();
    await calls(enc, 3);
    assert.equal(enc.calls[2], 4);
    enc.finish();
    const [d, e] = await Promise.all(later);
    assert.equal(text(d, 1), "3:1");
    assert.equal(text(e, 0), "4:0");
    for (const s of [a, d, e]) s.release();
    a.release(); // a second release of a share changes nothing
    const last = request(reader, dirs[5], 2);
    await calls(enc, 4);
    enc.finish();
    assert.equal(text(await last, 0), "5:0");
  },
);

readTest(
  "when a batch cannot be encoded every folder in it is told, and later batches still work",
  async (root) => {
    let n = 0;
    const { dirs, enc, reader } = setup(
      root,
      { folders: 4, files: 1 },
      { maxFiles: 8, slots: 1, eager: 1 },
      (held) => (data, offsets, lengths) =>
        ++n === 2 ? Promise.reject(new Error("worker died")) : held(data, offsets, lengths),
    );
    const first = request(reader, dirs[0], 1);
    // These two wait for the first batch, then leave together.
    const failed = [request(reader, dirs[1], 1), request(reader, dirs[2], 1)].map((p) =>
      p.then(
        () => "read",
        (err: Error) => err.message,
      ),
    );
    await calls(enc, 1);
    enc.finish();
    (await first).release();
    assert.deepEqual(await Promise.all(failed), ["worker died", "worker died"]);
    const ok = request(reader, dirs[3], 1); // the failed batch gave its slot back
    await calls(enc, 2);
    enc.finish();
    assert.equal(text(await ok, 0), "3:0");
  },
);
