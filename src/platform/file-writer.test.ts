import assert from "node:assert/strict";
import {
  closeSync,
  constants,
  existsSync,
  mkdtempSync,
  openSync,
  readFileSync,
  rmSync,
  statSync,
  statfsSync,
  writeSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { DIRECT_ALIGN, DirectWrites, FileWriter, STAGE_BYTES } from "./file-writer.js";
import { nativeAddon } from "./native.js";

const directPossible = constants.O_DIRECT !== undefined && nativeAddon?.alignedBuffer !== undefined;

/** Pieces of a file: data that is not block-aligned, a long run of zeros across stages, a zero tail. */
function pieces(): Buffer[] {
  const random = (n: number, seed: number): Buffer => {
    const b = Buffer.alloc(n);
    let x = seed;
    for (let i = 0; i < n; i++) {
      x = (x * 1103515245 + 12345) >>> 0;
      b[i] = x >>> 24;
    }
    return b;
  };
  return [
    random(1000, 1),
    random(STAGE_BYTES + 12345, 2), // crosses a stage boundary
    Buffer.alloc(3 * STAGE_BYTES), // zeros: holes
    random(5, 3),
    random(2 * STAGE_BYTES, 4),
    Buffer.alloc(10_000), // the file ends in zeros that are not a whole block
  ];
}

async function writeAll(
  path: Buffer,
  direct: DirectWrites | undefined,
  parts: Buffer[],
): Promise<{ length: number; wasDirect: boolean }> {
  const file = await FileWriter.create(path, direct);
  const wasDirect = file.isDirect;
  try {
    for (const p of parts) await file.write(p);
    return { length: await file.finish(), wasDirect };
  } finally {
    file.close();
  }
}

/** Whether this file system refuses an O_DIRECT write from misaligned memory (ext4 and xfs do). */
function enforcesAlignment(dir: string): boolean {
  const fd = openSync(
    join(dir, "probe"),
    constants.O_WRONLY | constants.O_CREAT | (constants.O_DIRECT ?? 0),
    0o600,
  );
  try {
    writeSync(
      fd,
      nativeAddon!.alignedBuffer!(2 * DIRECT_ALIGN, DIRECT_ALIGN).subarray(1, 1 + DIRECT_ALIGN),
      0,
      DIRECT_ALIGN,
      0,
    );
    return false;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EINVAL";
  } finally {
    closeSync(fd);
  }
}

test("a file written through the page cache and one written past it hold the same bytes, holes and length", async () => {
  const dir = mkdtempSync(join(tmpdir(), "sitekeep-file-writer-"));
  try {
    const parts = pieces();
    const expected = Buffer.concat(parts);
    const buffered = await writeAll(Buffer.from(join(dir, "buffered")), undefined, parts);
    const direct = new DirectWrites(true);
    const viaStage = await writeAll(Buffer.from(join(dir, "direct")), direct, parts);
    assert.equal(buffered.wasDirect, false);
    assert.equal(viaStage.wasDirect, directPossible, "O_DIRECT is used where the platform has it");
    for (const [name, r] of [["buffered", buffered] as const, ["direct", viaStage] as const]) {
      assert.equal(r.length, expected.length, name);
      assert.ok(readFileSync(join(dir, name)).equals(expected), `${name}: the bytes`);
      assert.equal(statSync(join(dir, name)).size, expected.length, `${name}: the length`);
      // The 3 MiB of zeros are a hole: the file takes well under its length on disk.
      assert.ok(
        statSync(join(dir, name)).blocks * 512 < expected.length - 2 * STAGE_BYTES,
        `${name}: zeros left as holes`,
      );
    }
    // A second file takes the first one's staging buffer back; a file of zeros only is all hole.
    const zeros = await writeAll(Buffer.from(join(dir, "zeros")), direct, [Buffer.alloc(STAGE_BYTES + 7)]);
    assert.equal(zeros.length, STAGE_BYTES + 7);
    assert.ok(readFileSync(join(dir, "zeros")).equals(Buffer.alloc(STAGE_BYTES + 7)));
    assert.equal(statSync(join(dir, "zeros")).blocks, 0);
    // An empty file.
    assert.equal((await writeAll(Buffer.from(join(dir, "empty")), direct, [])).length, 0);
    assert.equal(statSync(join(dir, "empty")).size, 0);
    assert.equal(direct.enabled, directPossible, "nothing refused direct writes");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("a direct write the file system refuses is written again through the page cache, and later files are not tried", async (t) => {
  if (!directPossible) return t.skip("no O_DIRECT or no addon here");
  const dir = mkdtempSync(join(tmpdir(), "sitekeep-file-writer-"));
  try {
    if (!enforcesAlignment(dir))
      return t.skip(`${dir}'s file system does not refuse misaligned direct writes`);
    // Staging memory one byte off alignment: the first direct write fails with EINVAL.
    const direct = new DirectWrites(true, (size) =>
      nativeAddon!.alignedBuffer!(size + DIRECT_ALIGN, DIRECT_ALIGN).subarray(1, 1 + size),
    );
    const parts = pieces();
    const r = await writeAll(Buffer.from(join(dir, "f")), direct, parts);
    assert.equal(r.wasDirect, true, "opened for direct writes");
    assert.equal(direct.enabled, false, "the refusal turned direct writes off");
    assert.ok(readFileSync(join(dir, "f")).equals(Buffer.concat(parts)));
    const next = await writeAll(Buffer.from(join(dir, "g")), direct, [Buffer.from("after")]);
    assert.equal(next.wasDirect, false);
    assert.equal(readFileSync(join(dir, "g"), "utf8"), "after");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("an existing file is not replaced", async () => {
  const dir = mkdtempSync(join(tmpdir(), "sitekeep-file-writer-"));
  try {
    const path = Buffer.from(join(dir, "f"));
    await writeAll(path, new DirectWrites(true), [Buffer.from("first")]);
    await assert.rejects(FileWriter.create(path, new DirectWrites(true)), { code: "EEXIST" });
    await assert.rejects(FileWriter.create(path), { code: "EEXIST" });
    assert.equal(readFileSync(path, "utf8"), "first");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("direct writes only when SITEKEEP_DIRECT_IO=1, and then on disk file systems only", (t) => {
  const dir = mkdtempSync(join(tmpdir(), "sitekeep-file-writer-"));
  try {
    process.env.SITEKEEP_DIRECT_IO = "1";
    try {
      if (existsSync("/dev/shm") && statfsSync("/dev/shm").type === 0x01021994) {
        assert.equal(
          DirectWrites.forFolder("/dev/shm").enabled,
          false,
          "tmpfs: no disk to write past the cache to",
        );
      }
      assert.equal(
        DirectWrites.forFolder(join(dir, "missing")).enabled,
        false,
        "a folder that cannot be looked at",
      );
      if (!directPossible || statfsSync(dir).type !== 0xef53) return t.skip(`${dir} is not on ext4 here`);
      assert.equal(DirectWrites.forFolder(dir).enabled, true, "ext4, asked");
      process.env.SITEKEEP_DIRECT_IO = "0";
      assert.equal(DirectWrites.forFolder(dir).enabled, false, "=0");
    } finally {
      delete process.env.SITEKEEP_DIRECT_IO;
    }
    assert.equal(DirectWrites.forFolder(dir).enabled, false, "off unless asked");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("without aligned memory for a stage, the file is written through the page cache", async () => {
  const dir = mkdtempSync(join(tmpdir(), "sitekeep-file-writer-"));
  try {
    const direct = new DirectWrites(true, () => {
      throw new Error("out of memory");
    });
    const r = await writeAll(Buffer.from(join(dir, "f")), direct, [Buffer.from("bytes")]);
    assert.equal(r.wasDirect, false);
    assert.equal(direct.enabled, false);
    assert.equal(readFileSync(join(dir, "f"), "utf8"), "bytes");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("a block of zeros but for bytes inside it is written; only an all-zero block becomes a hole", async () => {
  const dir = mkdtempSync(join(tmpdir(), "sitekeep-file-writer-"));
  try {
    // Three aligned blocks: zero at both ends with data inside, all zeros, a single byte in the middle.
    const data = Buffer.alloc(3 * DIRECT_ALIGN);
    data.fill(7, 100, DIRECT_ALIGN - 100);
    data[2 * DIRECT_ALIGN + DIRECT_ALIGN / 2] = 1;
    for (const [name, direct] of [["buffered", undefined], ["direct", new DirectWrites(true)]] as const) {
      const r = await writeAll(Buffer.from(join(dir, name)), direct, [data]);
      assert.equal(r.length, data.length, name);
      assert.ok(readFileSync(join(dir, name)).equals(data), `${name}: the bytes inside zero-ended blocks`);
      assert.ok(statSync(join(dir, name)).blocks * 512 < data.length, `${name}: the all-zero block is a hole`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
