import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { LocalBackend } from "../backend/local.js";
import { FaultyBackend } from "../backend/faulty.js";
import { SitekeepError } from "../errors.js";
import { Repository } from "./repository.js";
import { PackBuilder } from "./pack.js";
import { sha256 } from "./id.js";
import type { BlobLocation } from "./blob-index.js";
import { nativeAddon } from "../platform/native.js";
import { decodeFromFiles } from "./blob-codec.js";

/** Flips a byte inside a stored blob's bytes in its pack file. */
function damageBlob(dir: string, loc: BlobLocation): void {
  const file = join(dir, "data", loc.packId.slice(0, 2), loc.packId);
  const bytes = readFileSync(file);
  bytes[loc.offset + 20] ^= 0xff;
  writeFileSync(file, bytes);
}

/** A new repository (index loaded) in a temp folder that is removed when `fn` ends. */
async function withNewRepo(prefix: string, packSize: number | undefined, fn: (repo: Repository, dir: string) => Promise<void>): Promise<void> {
  const tmp = mkdtempSync(join(tmpdir(), prefix));
  try {
    const dir = join(tmp, "repo");
    const repo = await Repository.init(new LocalBackend(dir), "pw", { kdf: { N: 1024, r: 8, p: 1 }, ...(packSize ? { packSize } : {}) });
    await repo.loadIndex();
    await fn(repo, dir);
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

/** The repository at `dir` opened afresh (no cache of what was read before), index loaded. */
async function reopen(dir: string): Promise<Repository> {
  const repo = await Repository.open(new LocalBackend(dir), "pw");
  await repo.loadIndex();
  return repo;
}

test("tree blobs are read a window of their pack at a time, and a damaged one is still reported", async () => {
  await withNewRepo("sitekeep-tree-window-", undefined, async (repo, dir) => {
    // Incompressible bodies, so the pack is as large as the blobs: ~600 KiB, three windows.
    const trees = Array.from({ length: 300 }, (_, i) => Buffer.from(JSON.stringify({ nodes: [{ name: `f${i}`, pad: randomBytes(1000).toString("base64") }] })));
    for (const t of trees) await repo.saveBlob("tree", t);
    await repo.flush();

    const faulty = new FaultyBackend(new LocalBackend(dir));
    const again = await Repository.open(faulty, "pw");
    await again.loadIndex();
    const order = trees.map((_, i) => i).sort(() => Math.random() - 0.5);
    for (const i of order) assert.deepEqual(await again.loadBlob("tree", sha256(trees[i])), trees[i]);
    const reads = faulty.log.filter((e) => e.op === "load" && e.type === "data").length;
    assert.ok(reads <= 3 + 3, `300 tree blobs took ${reads} reads (windows of 256 KiB plus blobs across their edges)`);

    // Damage one blob: it fails with the pack named; its neighbour in the same window still loads.
    const loc = again.lookup("tree", sha256(trees[7]));
    assert.ok(loc);
    damageBlob(dir, loc);
    const fresh = await reopen(dir);
    await assert.rejects(fresh.loadBlob("tree", sha256(trees[7])), (err) => err instanceof SitekeepError && err.code === "repo.damaged" && err.message.includes(loc.packId));
    assert.deepEqual(await fresh.loadBlob("tree", sha256(trees[8])), trees[8]);
  });
});

test("tree blobs loaded many at once from more windows than are kept come back whole (window buffers are reused)", async () => {
  await withNewRepo("sitekeep-tree-window-reuse-", 32 * 1024 * 1024, async (repo, dir) => {
    // ~12 MiB of incompressible trees: ~48 windows of 256 KiB, more than the 32 kept, so windows
    // are dropped while loads still read from them and their buffers take other windows.
    const trees = Array.from({ length: 6000 }, (_, i) => Buffer.from(JSON.stringify({ nodes: [{ name: `t${i}`, pad: randomBytes(1500).toString("base64") }] })));
    for (const t of trees) await repo.saveBlob("tree", t);
    await repo.flush();
    const again = await reopen(dir);
    assert.ok(again.backend.loadInto, "the local backend reads into given buffers");
    for (let round = 0; round < 2; round++) {
      const order = trees.map((_, i) => i).sort(() => Math.random() - 0.5);
      for (let k = 0; k < order.length; k += 200) {
        const batch = order.slice(k, k + 200);
        const got = await Promise.all(batch.map((i) => again.loadBlob("tree", sha256(trees[i]))));
        got.forEach((g, j) => assert.deepEqual(g, trees[batch[j]], `tree ${batch[j]}`));
      }
    }
  });
});

test("packs built one after another in the same reused memory each hold their own blobs", async () => {
  await withNewRepo("sitekeep-pack-reuse-", 64 * 1024, async (repo, dir) => {
    // Small packs: 60 blobs make over 10; blobs of different sizes, one larger than a whole pack.
    const blobs = Array.from({ length: 60 }, (_, i) => randomBytes(i === 30 ? 3 * 1024 * 1024 : 5000 + ((i * 7919) % 20000)));
    for (const b of blobs) await repo.queueBlob("data", b, sha256(b));
    await repo.flush();
    const packs = new Set(blobs.map((b) => repo.lookup("data", sha256(b))?.packId));
    assert.ok(packs.size >= 10, `${packs.size} packs`);
    const again = await reopen(dir);
    for (const b of blobs) assert.deepEqual(await again.loadBlob("data", sha256(b)), b);
    // Every pack file is named by the SHA-256 of its bytes.
    for (const id of packs) assert.equal(sha256(readFileSync(join(dir, "data", id!.slice(0, 2), id!))).toString("hex"), id);
  });
});

test("tree packs are staged as read soon (kept in the page cache), data packs are not", async () => {
  const tmp = mkdtempSync(join(tmpdir(), "sitekeep-read-soon-"));
  try {
    const local = new LocalBackend(join(tmp, "repo"));
    const staged: string[] = [];
    const backend = Object.assign(Object.create(local) as LocalBackend, {
      stage: (type: "data", readSoon?: boolean) => {
        staged.push(`${type}${readSoon ? " read soon" : ""}`);
        return local.stage(type, readSoon);
      },
    });
    const repo = await Repository.init(backend, "pw", { kdf: { N: 1024, r: 8, p: 1 } });
    await repo.loadIndex();
    const data = randomBytes(10_000);
    const tree = Buffer.from(JSON.stringify({ nodes: [] }) + "\n");
    await repo.saveBlob("data", data);
    await repo.saveBlob("tree", tree);
    await repo.flush();
    assert.deepEqual(staged.sort(), ["data", "data read soon"]);
    const again = await reopen(join(tmp, "repo"));
    assert.deepEqual(await again.loadBlob("data", sha256(data)), data);
    assert.deepEqual(await again.loadBlob("tree", sha256(tree)), tree);
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
});

test("a blob queued as disposable is freed once sealed and stored whole; one that is not is left alone", async () => {
  await withNewRepo("sitekeep-disposable-", undefined, async (repo, dir) => {
    const originals = [Buffer.alloc(600_000, 7), randomBytes(300_000), randomBytes(400_000), Buffer.alloc(500_000, 3)];
    const [given, lent] = originals.map((b) => Buffer.from(b)); // each with memory of its own
    assert.ok(await repo.queueBlob("data", given, sha256(originals[0]), undefined, "free"));
    assert.ok(await repo.queueBlob("data", lent, sha256(originals[1])));
    // Views of a reused buffer: overwritten as soon as the repository says it has read them.
    const reused = Buffer.concat([originals[2], originals[3]]);
    const readDone: Promise<void>[] = [];
    for (const [k, view] of [reused.subarray(0, 400_000), reused.subarray(400_000)].entries()) {
      assert.ok(await repo.queueBlob("data", view, sha256(originals[2 + k]), undefined, (p) => readDone.push(p)));
    }
    if (readDone.length > 0) {
      await Promise.all(readDone);
      reused.fill(0xee);
    } else assert.ok(!nativeAddon?.sealblobAsync, "blobs sealed on the thread pool hand out a promise");
    await repo.flush();
    if (nativeAddon?.release) assert.equal(given.length, 0, "the given blob's memory was freed");
    assert.deepEqual(lent, originals[1], "the lent blob is as it was");
    const again = await reopen(dir);
    for (const b of originals) assert.deepEqual(await again.loadBlob("data", sha256(b)), b);
  });
});

test("loadBlobs reads neighbouring blobs of a pack together and returns each in the order asked", async () => {
  await withNewRepo("sitekeep-load-blobs-", 64 * 1024, async (repo, dir) => {
    // 120 blobs over several packs, some compressible (stored shorter than their plaintext).
    const blobs = Array.from({ length: 120 }, (_, i) => (i % 3 ? randomBytes(500 + ((i * 7919) % 9000)) : Buffer.alloc(3000 + i, i)));
    for (const b of blobs) await repo.queueBlob("data", b, sha256(b));
    await repo.flush();
    const packs = new Set(blobs.map((b) => repo.lookup("data", sha256(b))?.packId));
    assert.ok(packs.size >= 3, `${packs.size} packs`);

    const faulty = new FaultyBackend(new LocalBackend(dir));
    const again = await Repository.open(faulty, "pw");
    await again.loadIndex();
    // Shuffled, with one blob asked for twice.
    const order = blobs.map((_, i) => i).sort(() => Math.random() - 0.5);
    order.push(order[5]);
    const got = await again.loadBlobs("data", order.map((i) => sha256(blobs[i])));
    assert.equal(got.length, order.length);
    order.forEach((i, k) => assert.deepEqual(got[k], blobs[i], `blob ${i} at position ${k}`));
    const reads = faulty.log.filter((e) => e.op === "load" && e.type === "data").length;
    assert.equal(reads, packs.size, "one read per pack: the blobs of a pack lie next to each other");

    await assert.rejects(again.loadBlobs("data", [sha256(blobs[0]), sha256(Buffer.from("not stored"))]), (err) => err instanceof SitekeepError && err.code === "repo.noblob");

    // A damaged blob fails the call with its pack named.
    const loc = again.lookup("data", sha256(blobs[40]));
    assert.ok(loc);
    damageBlob(dir, loc);
    const fresh = await reopen(dir);
    await assert.rejects(fresh.loadBlobs("data", [sha256(blobs[39]), sha256(blobs[40])]), (err) => err instanceof SitekeepError && err.code === "repo.damaged" && err.message.includes(loc.packId));
    assert.deepEqual(await fresh.loadBlobs("data", [sha256(blobs[41])]), [blobs[41]]);
  });
});

test("loadBlobs over a local path reads the packs' ranges by descriptor, and fails clearly on a damaged or short pack", async (t) => {
  if (!decodeFromFiles) return t.skip("no native codec");
  await withNewRepo("sitekeep-load-files-", 64 * 1024, async (repo, dir) => {
    const blobs = Array.from({ length: 90 }, (_, i) => (i % 2 ? randomBytes(700 + ((i * 7919) % 7000)) : Buffer.alloc(2000 + i, i)));
    for (const b of blobs) await repo.queueBlob("data", b, sha256(b));
    await repo.flush();
    const locs = blobs.map((b) => repo.lookup("data", sha256(b))!);
    assert.ok(new Set(locs.map((l) => l.packId)).size >= 3);

    // The local backend's descriptors are used (and each given back): no load() of a data pack.
    const backend = new LocalBackend(dir);
    let opened = 0;
    let released = 0;
    const openFile = backend.openFile.bind(backend);
    backend.openFile = async (h) => {
      const f = await openFile(h);
      opened++;
      return { fd: f.fd, release: () => (released++, f.release()) };
    };
    const load = backend.load.bind(backend);
    backend.load = (h, offset, length) => (h.type === "data" ? Promise.reject(new Error("load() of a data pack")) : load(h, offset, length));
    const again = await Repository.open(backend, "pw");
    await again.loadIndex();
    const order = blobs.map((_, i) => i).sort(() => Math.random() - 0.5);
    order.push(order[3]);
    const got = await again.loadBlobs("data", order.map((i) => sha256(blobs[i])));
    order.forEach((i, k) => assert.deepEqual(got[k], blobs[i], `blob ${i} at position ${k}`));
    assert.ok(opened >= 3 && released === opened, `${opened} opened, ${released} given back`);
    await backend.close();

    // A damaged blob names its pack; a pack cut short says so; both keep the other packs readable.
    damageBlob(dir, locs[10]);
    const damaged = await reopen(dir);
    await assert.rejects(damaged.loadBlobs("data", [sha256(blobs[11]), sha256(blobs[10])]), (err) => err instanceof SitekeepError && err.code === "repo.damaged" && err.message.includes(locs[10].packId));
    await damaged.backend.close();
    const short = locs.find((l) => l.packId !== locs[10].packId)!;
    const file = join(dir, "data", short.packId.slice(0, 2), short.packId);
    writeFileSync(file, readFileSync(file).subarray(0, short.offset + 5));
    const cut = await reopen(dir);
    await assert.rejects(cut.loadBlobs("data", [sha256(blobs[locs.indexOf(short)])]), (err) => err instanceof SitekeepError && err.code === "repo.damaged" && /shorter than the index says/.test(err.message));
    const elsewhere = blobs.findIndex((_, i) => locs[i].packId !== short.packId && locs[i].packId !== locs[10].packId);
    assert.deepEqual(await cut.loadBlobs("data", [sha256(blobs[elsewhere])]), [blobs[elsewhere]]);
    await cut.backend.close();
  });
});

test("trees queued in batches are each stored once and read back by their ID; abandoned ones are never written", async () => {
  await withNewRepo("sitekeep-tree-batch-", undefined, async (repo, dir) => {
    // 150 trees: two full batches and a last one that only flush sends; one large tree; repeats;
    // names of two-, three- and four-byte characters (the text's UTF-8 bytes are the blob).
    const trees = Array.from({ length: 150 }, (_, i) => JSON.stringify({ nodes: [{ name: i % 3 ? `f${i}` : `é€😀${i}`, pad: (i === 70 ? "y" : "x").repeat(i === 70 ? 2_000_000 : i) }] }) + "\n");
    const id = (t: string): Buffer => sha256(Buffer.from(t));
    let stored = 0;
    let added = 0;
    for (const t of [...trees, ...trees.slice(0, 10)]) if (await repo.queueTree(t, id(t), () => stored++)) added++;
    assert.equal(added, 150, "a tree queued twice is stored once");
    await repo.flush();
    assert.equal(stored, 150);
    const again = await reopen(dir);
    for (const t of trees) assert.deepEqual(await again.loadBlob("tree", id(t)), Buffer.from(t));

    await withNewRepo("sitekeep-tree-abandon-", undefined, async (other) => {
      for (const t of trees.slice(0, 10)) await other.queueTree(t, id(t));
      await other.abandonWrites();
      await assert.rejects(other.flush());
      assert.deepEqual(await other.listIds("data"), [], "nothing of an abandoned batch reaches the repository");
    });
  });
});

test("a pack write that fails while the next full pack waits its turn: the error reaches the caller and no staged pack is left, the open tree pack's neither", async () => {
  const tmp = mkdtempSync(join(tmpdir(), "sitekeep-upload-fails-"));
  try {
    const dir = join(tmp, "repo");
    await Repository.init(new LocalBackend(dir), "pw", { kdf: { N: 1024, r: 8, p: 1 } });
    // One pack written at a time; the first fails after 300 ms (a disk that filled up), while the
    // second, full, waits for its turn and meets the failure there rather than in a later call.
    const faulty = new FaultyBackend(new LocalBackend(dir), [{ op: "save", type: "data", nth: 1, code: "ENOSPC", delayMs: 300 }]);
    const repo = await Repository.open(faulty, "pw", { packSize: 32 * 1024, uploadConcurrency: 1, compression: "off" });
    await repo.loadIndex();
    await repo.saveBlob("tree", Buffer.from('{"nodes":[]}\n')); // a tree pack, open and staged
    await repo.saveBlob("data", randomBytes(64 * 1024)); // fills pack 1, whose write starts
    await assert.rejects(repo.saveBlob("data", randomBytes(64 * 1024)), /no space left/);
    assert.deepEqual(faulty.log.filter((e) => e.failed).map((e) => e.failed), ["ENOSPC"]);
    assert.deepEqual(readdirSync(dir, { recursive: true }).map(String).filter((n) => n.includes("-tmp-")), []);
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
});

test("a backup faster than its storage holds at most uploadConcurrency + 1 data packs in memory (packs built whole), and loses none", async () => {
  const tmp = mkdtempSync(join(tmpdir(), "sitekeep-pack-slots-"));
  // Packs in memory = packs started (a builder given its first blob) - packs written.
  const started = new Set<PackBuilder>();
  let written = 0;
  let most = 0;
  const add = PackBuilder.prototype.add;
  PackBuilder.prototype.add = function (this: PackBuilder, ...a: Parameters<PackBuilder["add"]>) {
    started.add(this);
    most = Math.max(most, started.size - written);
    return add.apply(this, a);
  };
  try {
    const dir = join(tmp, "repo");
    await Repository.init(new LocalBackend(dir), "pw", { kdf: { N: 1024, r: 8, p: 1 } });
    // Slow pack writes; each 64 KiB blob fills a 32 KiB pack on its own.
    // Packs built in memory (as on S3); streamed packs hold segments only (pack-stream.test.ts).
    const slow = new FaultyBackend(new LocalBackend(dir), [{ op: "save", type: "data", delayMs: 100 }], { staging: false });
    const save = slow.save.bind(slow);
    slow.save = async (h, data) => {
      await save(h, data);
      if (h.type === "data") written++;
    };
    const repo = await Repository.open(slow, "pw", { packSize: 32 * 1024, uploadConcurrency: 2, compression: "off" });
    await repo.loadIndex();
    const blobs = Array.from({ length: 12 }, () => randomBytes(64 * 1024));
    await Promise.all(blobs.map((b) => repo.saveBlob("data", b)));
    await repo.flush();
    assert.equal(started.size, 12);
    assert.equal(written, 12);
    assert.ok(most <= 3, `${most} data packs were in memory at once (at most 3: one filling, two being written)`);
    const again = await reopen(dir);
    for (const b of blobs) assert.deepEqual(await again.loadBlob("data", sha256(b)), b);
  } finally {
    PackBuilder.prototype.add = add;
    rmSync(tmp, { recursive: true, force: true });
  }
});
