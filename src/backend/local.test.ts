// The local backend's staged files (Backend.stage): data packs written through the page cache and
// dropped from it once durable (past it with SITEKEEP_DIRECT_IO=1, where the file system allows),
// other files through it and kept there; either way the published file holds exactly the bytes
// written, read-only, and nothing is left behind.
import { test } from "node:test";
import assert from "node:assert/strict";
import { constants, existsSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync, statfsSync } from "node:fs";
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { LocalBackend } from "./local.js";
import type { FileType } from "./backend.js";
import { nativeAddon } from "../platform/native.js";

const O_DIRECT = constants.O_DIRECT ?? 0;
/** Where direct writes can happen here: Linux, the addon's aligned memory, a temp folder on ext4. */
const directHere =
  O_DIRECT !== 0 && nativeAddon?.alignedBuffer !== undefined && statfsSync(tmpdir()).type === 0xef53;
/** Where a dropped file's pages can be seen to go: the addon's dropCache, a disk file system, fincore(1). */
const dropSeenHere =
  nativeAddon?.dropCache !== undefined &&
  statfsSync(tmpdir()).type === 0xef53 &&
  spawnSync("fincore", ["--version"]).status === 0;

/** The open flags of this process's descriptor of `path` (from /proc/self/fdinfo). */
function openFlags(path: string): number {
  for (const fd of readdirSync("/proc/self/fd")) {
    let target: string;
    try {
      target = readlinkSync(`/proc/self/fd/${fd}`);
    } catch {
      continue; // the descriptor readdir itself used
    }
    if (target !== path) continue;
    const m = /^flags:\s+([0-7]+)$/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, "utf8"));
    return parseInt(m![1], 8);
  }
  throw new Error(`${path} is not open`);
}

/** Bytes of `path` in the page cache (fincore(1), util-linux). */
function cachedBytes(path: string): number {
  const r = spawnSync("fincore", ["--bytes", "--noheadings", "--output", "RES", path], { encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
  return Number(r.stdout.trim());
}

/** Pieces of odd sizes, one larger than a 1 MiB stage: nothing in them is block-aligned. */
const pieces = (): Buffer[] => [1, 4095, 3 * 1024 * 1024 + 7, 100, 1024 * 1024].map((n) => randomBytes(n));

async function stageAndCommit(
  root: string,
  type: FileType,
  readSoon?: boolean,
): Promise<{ flags: number; written: Buffer; path: string; cached: number | undefined }> {
  const backend = new LocalBackend(root);
  await backend.create();
  const staged = await backend.stage(type, readSoon);
  const parts = pieces();
  for (const p of parts) await staged.write(p);
  const tmp = readdirSync(join(root, type), { recursive: true })
    .map(String)
    .find((n) => n.includes("-tmp-"));
  const flags = openFlags(join(root, type, tmp!));
  const written = Buffer.concat(parts);
  const name = randomBytes(32).toString("hex");
  await staged.commit({ type, name });
  await backend.close();
  const path = backend.path({ type, name });
  // Looked at before anything reads the file back.
  return { flags, written, path, cached: dropSeenHere ? cachedBytes(path) : undefined };
}

function assertPublished(root: string, r: { written: Buffer; path: string }): void {
  assert.ok(readFileSync(r.path).equals(r.written), "the published file holds the bytes written");
  assert.equal(statSync(r.path).size, r.written.length);
  assert.equal(statSync(r.path).mode & 0o777, 0o400, "read-only");
  const left = readdirSync(root, { recursive: true }).map(String).filter((n) => n.includes("-tmp-"));
  assert.deepEqual(left, [], "no temporary file left");
}

test("a data pack goes through the page cache and leaves it once durable; a pack read soon and other files stay in it", { skip: process.platform !== "linux" }, async (t) => {
  const root = mkdtempSync(join(tmpdir(), "sk-local-"));
  try {
    const data = await stageAndCommit(join(root, "repo"), "data");
    assertPublished(join(root, "repo"), data);
    assert.equal(data.flags & O_DIRECT, 0, "not past the cache unless asked");
    const tree = await stageAndCommit(join(root, "repo"), "data", true);
    assertPublished(join(root, "repo"), tree);
    assert.equal(tree.flags & O_DIRECT, 0, "a pack read soon (trees) goes through the page cache");
    const index = await stageAndCommit(join(root, "repo"), "index");
    assertPublished(join(root, "repo"), index);
    assert.equal(index.flags & O_DIRECT, 0, "an index file goes through the page cache");
    if (!dropSeenHere) return t.skip("no fincore, addon or disk file system here: only the bytes were checked");
    assert.equal(data.cached, 0, "the data pack's pages were dropped from the cache");
    assert.ok(tree.cached! >= tree.written.length - 4096, `the tree pack stays cached (${tree.cached} bytes)`);
    assert.ok(index.cached! >= index.written.length - 4096, `the index file stays cached (${index.cached} bytes)`);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test("SITEKEEP_DIRECT_IO=1 writes data packs past the page cache on a disk file system, never on tmpfs", { skip: process.platform !== "linux" }, async (t) => {
  const root = mkdtempSync(join(tmpdir(), "sk-local-"));
  process.env.SITEKEEP_DIRECT_IO = "1";
  try {
    const data = await stageAndCommit(join(root, "repo"), "data");
    assertPublished(join(root, "repo"), data);
    if (existsSync("/dev/shm") && statfsSync("/dev/shm").type === 0x01021994) {
      const shm = mkdtempSync("/dev/shm/sk-local-");
      try {
        const onShm = await stageAndCommit(join(shm, "repo"), "data");
        assertPublished(join(shm, "repo"), onShm);
        assert.equal(onShm.flags & O_DIRECT, 0, "tmpfs has no disk to write past the cache to");
      } finally {
        rmSync(shm, { recursive: true, force: true });
      }
    }
    if (!directHere) return t.skip("no O_DIRECT here (not ext4, or no addon): only the bytes were checked");
    assert.equal(data.flags & O_DIRECT, O_DIRECT, "the data pack was open with O_DIRECT");
  } finally {
    delete process.env.SITEKEEP_DIRECT_IO;
    rmSync(root, { recursive: true, force: true });
  }
});

/** Runs `fn` on a new local repository in a temporary folder, removed afterwards. */
async function withNewBackend(fn: (backend: LocalBackend, root: string) => Promise<void>): Promise<void> {
  const root = mkdtempSync(join(tmpdir(), "sk-local-"));
  try {
    const backend = new LocalBackend(root);
    await backend.create();
    await fn(backend, root);
    await backend.close();
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
}

test("an aborted data pack leaves nothing behind", () =>
  withNewBackend(async (backend, root) => {
    const staged = await backend.stage("data");
    await staged.write(randomBytes(2 * 1024 * 1024 + 3));
    await staged.abort();
    await staged.abort(); // twice is harmless
    await assert.rejects(staged.write(Buffer.from("x")), /committed or aborted/);
    assert.deepEqual(readdirSync(root, { recursive: true }).map(String).filter((n) => n.includes("-tmp-")), []);
  }),
);

test("without data/xx folders (a repository another tool made), a saved file and a staged pack create theirs", () =>
  withNewBackend(async (backend, root) => {
    for (const d of readdirSync(join(root, "data"))) rmSync(join(root, "data", d), { recursive: true });
    const saved = { type: "data" as const, name: randomBytes(32).toString("hex") };
    await backend.save(saved, Buffer.from("saved whole"));
    const staged = await backend.stage("data");
    await staged.write(Buffer.from("staged"));
    const committed = { type: "data" as const, name: randomBytes(32).toString("hex") };
    await staged.commit(committed);
    assert.equal(readFileSync(backend.path(saved), "utf8"), "saved whole");
    assert.equal(readFileSync(backend.path(committed), "utf8"), "staged");
  }),
);

test("a lock on a local file system looks for other locks again at once; on a share (here procfs, not known to be local) after 200 ms", { skip: process.platform !== "linux" }, async () => {
  const shm = mkdtempSync("/dev/shm/sk-lag-");
  try {
    assert.equal(await new LocalBackend(shm).listingLagMs(), 0);
    assert.equal(await new LocalBackend("/proc/self").listingLagMs(), 200);
    assert.equal(await new LocalBackend(join(shm, "not-yet-made")).listingLagMs(), 200, "a path statfs cannot examine is not known to be local");
  } finally {
    rmSync(shm, { recursive: true, force: true });
  }
});
