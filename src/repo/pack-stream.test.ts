import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Handle, StagedFile } from "../backend/backend.js";
import { LocalBackend } from "../backend/local.js";
import { newRandomKey, open } from "./crypto.js";
import { hashHex, sha256 } from "./id.js";
import { parsePackTail, sealBlob } from "./pack.js";
import { SEGMENT_SIZE, StreamedPack } from "./pack-stream.js";

/** Tiny blobs, blobs just under and over half a segment (copied / written as they are), a 3 MiB one. */
function blobs(): Buffer[] {
  const sizes = [
    10,
    0,
    2000,
    SEGMENT_SIZE / 2 - 40,
    SEGMENT_SIZE / 2,
    3 << 20,
    77,
    SEGMENT_SIZE - 100,
    5,
    300_000,
    300_000,
    300_000,
    1,
  ];
  return sizes.map((n) => randomBytes(n));
}

function filesUnder(dir: string): string[] {
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile())
    .map((e) => join(e.parentPath, e.name));
}

test("a streamed pack lands whole under its SHA-256, with every blob and the header, and nothing else", async () => {
  const dir = mkdtempSync(join(tmpdir(), "sitekeep-pack-stream-"));
  try {
    const backend = new LocalBackend(dir);
    await backend.create();
    const key = newRandomKey();
    const plains = blobs();
    const pack = new StreamedPack("data", () => backend.stage("data"), []);
    // Added without waiting, as concurrent callers do: each takes its place in call order.
    await Promise.all(plains.map((p) => pack.add(sha256(p), sealBlob(key, p), 0)));
    const id = await pack.finish(key);
    const files = filesUnder(join(dir, "data"));
    assert.deepEqual(
      files,
      [join(dir, "data", id.slice(0, 2), id)],
      "one file, named by its ID; no staged file left",
    );
    const bytes = readFileSync(files[0]);
    assert.equal(hashHex(bytes), id);
    const entries = parsePackTail(key, bytes, bytes.length, id);
    assert.equal(entries.length, plains.length);
    entries.forEach((e, i) => {
      assert.deepEqual(e.id, sha256(plains[i]));
      assert.deepEqual(e, pack.blobs[i]);
      assert.deepEqual(open(key, bytes.subarray(e.offset, e.offset + e.length)), plains[i], `blob ${i}`);
    });

    const dropped = new StreamedPack("data", () => backend.stage("data"), []);
    await dropped.add(sha256(plains[5]), sealBlob(key, plains[5]), 0);
    await dropped.add(sha256(plains[0]), sealBlob(key, plains[0]), 0);
    assert.equal(filesUnder(join(dir, "data")).length, 2, "the second pack is staged meanwhile");
    await dropped.abort();
    assert.deepEqual(filesUnder(join(dir, "data")), files, "an aborted pack leaves nothing behind");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

/** A staged file in memory that records its calls; writes take `delayMs` and the `failAt`th fails. */
function fakeFile(opts: { delayMs?: number; failAt?: number } = {}) {
  const state = {
    written: [] as Buffer[],
    writes: 0,
    concurrent: 0,
    most: 0,
    committed: undefined as Handle | undefined,
    aborted: false,
  };
  const file: StagedFile = {
    async write(data) {
      state.writes++;
      state.concurrent++;
      state.most = Math.max(state.most, state.concurrent);
      try {
        if (opts.delayMs) await new Promise((r) => setTimeout(r, opts.delayMs));
        if (state.writes === opts.failAt)
          throw Object.assign(new Error("ENOSPC: no space left on device"), { code: "ENOSPC" });
        state.written.push(Buffer.from(data));
      } finally {
        state.concurrent--;
      }
    },
    async commit(h) {
      state.committed = h;
    },
    async abort() {
      state.aborted = true;
    },
  };
  return { file, state };
}

test("a streamed pack writes one piece at a time and holds at most two segments in writing, however fast blobs come", async () => {
  const key = newRandomKey();
  const { file, state } = fakeFile({ delayMs: 20 });
  const pool: Buffer[] = [];
  const pack = new StreamedPack("data", async () => file, pool);
  const plains = Array.from({ length: 200 }, () => randomBytes(40_000)); // ~8 MB: ~8 segments
  let pending = 0;
  let mostPending = 0;
  await Promise.all(
    plains.map(async (p) => {
      pending++;
      mostPending = Math.max(mostPending, pending);
      await pack.add(sha256(p), sealBlob(key, p), 0);
      pending--;
    }),
  );
  const id = await pack.finish(key);
  assert.equal(state.most, 1, "writes never overlap");
  assert.ok(mostPending > 100, "the blobs were added without waiting for each other");
  const bytes = Buffer.concat(state.written);
  assert.equal(hashHex(bytes), id);
  assert.deepEqual(state.committed, { type: "data", name: id });
  assert.ok(state.writes >= 8, `${state.writes} writes`);
  // Every segment ever allocated is back in the pool: at most the one being filled and two writing.
  assert.ok(pool.length >= 1 && pool.length <= 3, `${pool.length} segments were allocated`);
  entriesMatch(key, bytes, plains);
});

function entriesMatch(key: ReturnType<typeof newRandomKey>, bytes: Buffer, plains: Buffer[]): void {
  const entries = parsePackTail(key, bytes, bytes.length, "test");
  assert.equal(entries.length, plains.length);
  entries.forEach((e, i) =>
    assert.deepEqual(open(key, bytes.subarray(e.offset, e.offset + e.length)), plains[i]),
  );
}

test("a pack finished while its last blobs still wait for a segment holds them all, before its header", async () => {
  const key = newRandomKey();
  const { file, state } = fakeFile({ delayMs: 10 });
  const pack = new StreamedPack("data", async () => file, []);
  const plains = Array.from({ length: 100 }, (_, i) => randomBytes(i % 10 === 9 ? SEGMENT_SIZE : 30_000));
  const added = plains.map((p) => pack.add(sha256(p), sealBlob(key, p), 0)); // not awaited, as the repository does
  const id = await pack.finish(key);
  await Promise.all(added);
  const bytes = Buffer.concat(state.written);
  assert.equal(hashHex(bytes), id);
  entriesMatch(key, bytes, plains);
});

test("a failed write fails the pack: the blobs after it and finish reject, and the staged file is removed", async () => {
  const key = newRandomKey();
  const { file, state } = fakeFile({ failAt: 2 });
  const pack = new StreamedPack("data", async () => file, []);
  const big = randomBytes(SEGMENT_SIZE); // each written as it is
  await pack.add(sha256(big), sealBlob(key, big), 0);
  await assert.rejects(pack.add(sha256(big), sealBlob(key, big), 0), /ENOSPC/);
  await assert.rejects(
    pack.add(sha256(big), sealBlob(key, big), 0),
    /ENOSPC/,
    "nothing more is written after a failure",
  );
  await assert.rejects(pack.finish(key), /ENOSPC/);
  assert.equal(state.writes, 2);
  assert.equal(state.committed, undefined, "never published");
  assert.ok(state.aborted, "the staged file is removed");

  const opening = new StreamedPack("data", () => Promise.reject(new Error("EACCES: permission denied")), []);
  await assert.rejects(opening.add(sha256(big), sealBlob(key, big), 0), /EACCES/);
  await assert.rejects(opening.finish(key), /EACCES/);
});
