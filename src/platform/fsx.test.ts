// Real syscalls on real files in a temp dir: what restore depends on is that the kernel ends up with
// exactly the times, node types, modes and xattrs we asked for.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { fileURLToPath, pathToFileURL } from "node:url";
import {
  getXattr,
  isUnsupportedXattrError,
  listXattrs,
  lutimesNs,
  makeDev,
  mknod,
  nativeAvailable,
  READ_FIELDS,
  ReadField,
  readFiles,
  setXattr,
  WRITE_META,
  WriteStep,
  writeFiles,
} from "./fsx.js";
import { nativeAddon, releaseBuffer } from "./native.js";
import { type TimeParts, splitTimeNs } from "../util/gotime.js";

const { S_IFIFO, S_IFCHR } = fs.constants;
const isRoot = process.getuid?.() === 0;

let dir: string;
before(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "sitekeep-fsx-"));
});
after(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

function file(name: string): string {
  const p = path.join(dir, name);
  fs.writeFileSync(p, "x");
  return p;
}

function times(p: string | Buffer): [bigint, bigint] {
  const st = fs.lstatSync(p, { bigint: true });
  return [st.atimeNs, st.mtimeNs];
}

/** Runs `body` with umask 0 so mode bits can be checked exactly. */
function withUmask0(body: () => void): void {
  const old = process.umask(0);
  try {
    body();
  } finally {
    process.umask(old);
  }
}

function throwsErrno(fn: () => unknown, code: string, syscall: string, p: string): void {
  assert.throws(fn, (err: NodeJS.ErrnoException) => {
    assert.ok(err instanceof Error);
    assert.equal(err.code, code);
    assert.equal(err.syscall, syscall);
    assert.equal(err.errno, -(os.constants.errno as Record<string, number>)[code]);
    assert.equal(err.path, p);
    assert.ok(err.message.startsWith(`${code}: `), err.message);
    assert.ok(err.message.endsWith(`, ${syscall} '${p}'`), err.message);
    return true;
  });
}

test("the addon is built and loaded", () => {
  assert.equal(nativeAvailable, true, "run `npx node-gyp rebuild` first");
});

describe("lutimesNs", () => {
  test("sets nanosecond atime and mtime on a file", () => {
    const p = file("times");
    lutimesNs(p, 1_700_000_000_123_456_789n, 1_600_000_000_987_654_321n);
    assert.deepEqual(times(p), [1_700_000_000_123_456_789n, 1_600_000_000_987_654_321n]);
  });

  test("sets the symlink's own times and leaves the target's alone", () => {
    const target = file("target");
    lutimesNs(target, 1_000_000_000_000_000_001n, 1_000_000_000_000_000_002n);
    const link = path.join(dir, "link");
    fs.symlinkSync(target, link);
    lutimesNs(link, 1_234_567_890_111_111_111n, 1_234_567_890_222_222_222n);
    assert.deepEqual(times(link), [1_234_567_890_111_111_111n, 1_234_567_890_222_222_222n]);
    assert.deepEqual(times(target), [1_000_000_000_000_000_001n, 1_000_000_000_000_000_002n]);
  });

  test("handles times before 1970 and after 2038", () => {
    const p = file("extremes");
    // -1 ns is 1969-12-31T23:59:59.999999999: seconds -1, nanoseconds 999999999.
    lutimesNs(p, -1n, -1_000_000_000_123_456_789n); // and 1938
    assert.deepEqual(times(p), [-1n, -1_000_000_000_123_456_789n]);
    lutimesNs(p, 2_147_483_648_000_000_001n, 4_102_444_800_999_999_999n); // 2038 + 1s, 2100
    assert.deepEqual(times(p), [2_147_483_648_000_000_001n, 4_102_444_800_999_999_999n]);
  });

  test("throws a Node-style error for a missing path", () => {
    const p = path.join(dir, "missing");
    throwsErrno(() => lutimesNs(p, 0n, 0n), "ENOENT", "lutimes", p);
    assert.throws(() => lutimesNs(p, 0n, 0n), {
      message: `ENOENT: no such file or directory, lutimes '${p}'`,
    });
  });

  test("refuses a path with an embedded NUL", () => {
    assert.throws(() => lutimesNs(path.join(dir, "a\0b"), 0n, 0n), {
      name: "TypeError",
      code: "ERR_INVALID_ARG_VALUE",
    });
  });
});

describe("mknod", () => {
  test("creates a fifo with the requested permission bits", () => {
    const p = path.join(dir, "fifo");
    withUmask0(() => mknod(p, S_IFIFO | 0o754, 0n));
    const st = fs.lstatSync(p);
    assert.ok(st.isFIFO());
    assert.equal(st.mode & 0o7777, 0o754);
  });

  test("creates a character device (root only)", { skip: !isRoot && "needs root" }, () => {
    const p = path.join(dir, "null");
    const dev = makeDev(1, 3);
    assert.equal(dev, fs.statSync("/dev/null", { bigint: true }).rdev); // makeDev matches the kernel's encoding
    withUmask0(() => mknod(p, S_IFCHR | 0o600, dev));
    const st = fs.lstatSync(p, { bigint: true });
    assert.ok(st.isCharacterDevice());
    assert.equal(st.rdev, dev);
    assert.equal(st.mode & 0o7777n, 0o600n);
  });

  test("reports EEXIST", () => {
    const p = file("exists");
    throwsErrno(() => mknod(p, S_IFIFO | 0o600, 0n), "EEXIST", "mknod", p);
  });
});

describe("xattrs", () => {
  test("round-trips binary values on a user.* name", (t) => {
    const p = file("xattr");
    const value = Buffer.from([0, 1, 2, 0, 0xff, 0x80, 0]);
    try {
      setXattr(p, "user.sitekeep.bin", value);
    } catch (err) {
      if (isUnsupportedXattrError(err)) return t.skip("filesystem has no user xattrs");
      throw err;
    }
    setXattr(p, "user.sitekeep.empty", Buffer.alloc(0));
    const big = Buffer.alloc(3000, 0xab); // larger than a first guess would be
    setXattr(p, "user.sitekeep.big", big);
    assert.deepEqual(getXattr(p, "user.sitekeep.bin"), value);
    assert.deepEqual(getXattr(p, "user.sitekeep.empty"), Buffer.alloc(0));
    assert.deepEqual(getXattr(p, "user.sitekeep.big"), big);
    const names = listXattrs(p).filter((n) => n.startsWith("user.sitekeep."));
    assert.deepEqual(names.sort(), ["user.sitekeep.big", "user.sitekeep.bin", "user.sitekeep.empty"]);

    // Replace, not append.
    setXattr(p, "user.sitekeep.bin", Buffer.from("v2"));
    assert.deepEqual(getXattr(p, "user.sitekeep.bin"), Buffer.from("v2"));

    // A symlink is not followed: the target's attributes are not listed for the link.
    const link = path.join(dir, "xattr-link");
    fs.symlinkSync(p, link);
    assert.ok(!listXattrs(link).includes("user.sitekeep.bin"));

    throwsErrno(() => getXattr(p, "user.sitekeep.absent"), "ENODATA", "lgetxattr", p);
  });

  test("isUnsupportedXattrError", () => {
    assert.equal(isUnsupportedXattrError(Object.assign(new Error("x"), { code: "ENOTSUP" })), true);
    assert.equal(isUnsupportedXattrError(Object.assign(new Error("x"), { code: "EOPNOTSUPP" })), true);
    assert.equal(isUnsupportedXattrError(Object.assign(new Error("x"), { code: "ENOENT" })), false);
    assert.equal(isUnsupportedXattrError(undefined), false);
    assert.equal(isUnsupportedXattrError("ENOTSUP"), false);
  });
});

test("readFiles reads small files on the thread pool, reporting each one's failure", async () => {
  const d = fs.mkdtempSync(path.join(dir, "batch-"));
  fs.writeFileSync(path.join(d, "a.txt"), "alpha");
  fs.writeFileSync(path.join(d, "empty"), "");
  fs.writeFileSync(path.join(d, "grew"), "0123456789");
  fs.symlinkSync("a.txt", path.join(d, "link"));
  const weird = Buffer.from([0x77, 0xff, 0x2e, 0x62]); // not UTF-8
  fs.writeFileSync(Buffer.concat([Buffer.from(d + "/"), weird]), "bytes");
  let xattrs = true;
  try {
    setXattr(path.join(d, "a.txt"), "user.sitekeep", Buffer.from("v"));
  } catch (err) {
    if (!isUnsupportedXattrError(err)) throw err;
    xattrs = false;
  }
  mknod(path.join(d, "fifo"), S_IFIFO | 0o600, 0n);
  const names = ["a.txt", "empty", "grew", "link", "missing"].map((n) => Buffer.from(n)).concat([weird, Buffer.from("fifo")]);
  const paths = (ds: string[], ns: Buffer[]): Buffer => Buffer.concat(ns.flatMap((n, i) => [Buffer.from(ds[i] + "/"), n, Buffer.alloc(1)]));
  const r = await readFiles(paths(names.map(() => d), names), Float64Array.from([5, 0, 4, 1, 3, 5, 10]));
  const at = (k: number, field: number): number => r.f[k * READ_FIELDS + field];
  const bytes = (k: number): string => r.data.subarray(at(k, ReadField.offset), at(k, ReadField.offset) + at(k, ReadField.length)).toString();
  assert.equal(bytes(0), "alpha");
  assert.equal(at(0, ReadField.errno), 0);
  assert.equal(at(0, ReadField.size), 5);
  const st = fs.statSync(path.join(d, "a.txt"), { bigint: true });
  assert.equal(BigInt(at(0, ReadField.mtimeSec)) * 1_000_000_000n + BigInt(at(0, ReadField.mtimeNsec)), st.mtimeNs);
  assert.equal(BigInt(at(0, ReadField.ctimeSec)) * 1_000_000_000n + BigInt(at(0, ReadField.ctimeNsec)), st.ctimeNs);
  if (xattrs) assert.ok(at(0, ReadField.xattrListSize) > 0, "a file with an xattr says so");
  assert.equal(at(1, ReadField.errno), 0);
  assert.equal(at(1, ReadField.length), 0);
  assert.equal(at(1, ReadField.xattrListSize), 0);
  assert.equal(at(2, ReadField.length), 5, "a file larger than its limit is read to limit + 1 (it grew)");
  assert.equal(bytes(2), "01234");
  assert.equal(at(3, ReadField.errno), os.constants.errno.ELOOP, "a symlink is not followed");
  assert.equal(at(4, ReadField.errno), os.constants.errno.ENOENT);
  assert.equal(bytes(5), "bytes");
  assert.equal(at(6, ReadField.errno), os.constants.errno.EINVAL, "a FIFO is refused, not waited on");
  for (const bad of [-1, 1.5, Number.NaN, Infinity, 2 ** 40]) {
    await assert.rejects(readFiles(paths([d], [Buffer.from("a.txt")]), Float64Array.from([bad])), /whole numbers from 0 to 67108864/, String(bad));
  }
  // Files of several folders in one call; a folder that is gone fails its files only.
  const e = fs.mkdtempSync(path.join(dir, "batch-"));
  fs.writeFileSync(path.join(e, "b.txt"), "beta");
  const mixed = await readFiles(paths([e, path.join(d, "nope"), d], [Buffer.from("b.txt"), Buffer.from("x"), Buffer.from("a.txt")]), Float64Array.from([4, 1, 5]));
  const text = (k: number): string => mixed.data.subarray(mixed.f[k * READ_FIELDS + ReadField.offset], mixed.f[k * READ_FIELDS + ReadField.offset] + mixed.f[k * READ_FIELDS + ReadField.length]).toString();
  assert.equal(text(0), "beta");
  assert.equal(mixed.f[1 * READ_FIELDS + ReadField.errno], os.constants.errno.ENOENT);
  assert.equal(text(2), "alpha");
  await assert.rejects(readFiles(paths([d], [Buffer.from("a.txt")]), Float64Array.from([1, 2])), /one number per name/);
});

test("accepts a non-UTF-8 file name as a Buffer", (t) => {
  const name = Buffer.concat([
    Buffer.from(dir + "/bad-"),
    Buffer.from([0xff, 0xfe, 0x80]),
    Buffer.from("-name"),
  ]);
  fs.writeFileSync(name, "x"); // a regular file: Linux allows user.* xattrs only on files and dirs
  const listed = fs.readdirSync(dir, { encoding: "buffer" });
  assert.ok(listed.some((n) => n.equals(name.subarray(Buffer.byteLength(dir) + 1))));

  const fifo = Buffer.concat([name, Buffer.from([0xc3, 0x28])]); // invalid 2-byte sequence
  withUmask0(() => mknod(fifo, S_IFIFO | 0o600, 0n));
  assert.ok(fs.lstatSync(fifo).isFIFO());

  lutimesNs(name, 1_111_111_111_000_000_007n, 2_222_222_222_000_000_009n);
  assert.deepEqual(times(name), [1_111_111_111_000_000_007n, 2_222_222_222_000_000_009n]);

  try {
    setXattr(name, "user.sitekeep.n", Buffer.from("ok"));
  } catch (err) {
    if (isUnsupportedXattrError(err)) return t.skip("filesystem has no user xattrs");
    throw err;
  }
  assert.deepEqual(getXattr(name, "user.sitekeep.n"), Buffer.from("ok"));
});

test("falls back to plain Node without the addon", () => {
  const moduleUrl = pathToFileURL(fileURLToPath(new URL("./fsx.ts", import.meta.url))).href;
  const script = `
    const fsx = await import(${JSON.stringify(moduleUrl)});
    const fs = await import("node:fs");
    const dir = ${JSON.stringify(dir)};
    const out = { nativeAvailable: fsx.nativeAvailable, list: fsx.listXattrs(dir) };
    try { fsx.setXattr(dir, "user.x", Buffer.from("v")); } catch (e) { out.setCode = e.code; }
    try { fsx.mknod(dir + "/fb-chr", fs.constants.S_IFCHR | 0o600, 259n); } catch (e) { out.chrCode = e.code; }
    process.umask(0);
    fsx.mknod(dir + "/fb-fifo", fs.constants.S_IFIFO | 0o640, 0n);
    const st = fs.lstatSync(dir + "/fb-fifo");
    out.fifo = st.isFIFO(); out.mode = st.mode & 0o7777;
    fs.writeFileSync(dir + "/fb-file", "x");
    fsx.lutimesNs(dir + "/fb-file", 1700000000123456789n, -1500000000n);
    const bt = fs.lstatSync(dir + "/fb-file", { bigint: true });
    out.atimeNs = String(bt.atimeNs); out.mtimeNs = String(bt.mtimeNs);
    console.log(JSON.stringify(out));
  `;
  const res = spawnSync(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], {
    encoding: "utf8",
    env: { ...process.env, SITEKEEP_NO_NATIVE: "1" },
  });
  assert.equal(res.status, 0, res.stderr);
  const out = JSON.parse(res.stdout.trim().split("\n").pop() ?? "");
  assert.equal(out.nativeAvailable, false);
  assert.deepEqual(out.list, []);
  assert.equal(out.setCode, "ENOTSUP");
  assert.equal(out.chrCode, "ENOSYS");
  assert.equal(out.fifo, true);
  assert.equal(out.mode, 0o640);
  // Seconds as a double: only about microsecond precision survives.
  assert.ok(Math.abs(Number(BigInt(out.atimeNs) - 1_700_000_000_123_456_789n)) < 1000, out.atimeNs);
  // Before 1970 it goes as a Date: milliseconds.
  assert.equal(out.mtimeNs, "-1500000000");
});

test("thread-pool threads that ran our jobs yield to the main thread (SCHED_BATCH), unless told not to", { skip: process.platform !== "linux" }, () => {
  // In a child process: the policy sticks to the threads of the process that ran the jobs.
  const script = `
    import fs from "node:fs";
    import * as fsx from ${JSON.stringify(new URL("./fsx.ts", import.meta.url).href)};
    await Promise.all(Array.from({ length: 24 }, () => fsx.lstatDirAsync(Buffer.from("/"))));
    const policy = (t) => Number(fs.readFileSync("/proc/self/task/" + t + "/stat", "utf8").replace(/^.*\\) /, "").split(" ")[38]);
    const tasks = fs.readdirSync("/proc/self/task");
    console.log(JSON.stringify({ main: policy(String(process.pid)), batch: tasks.filter((t) => policy(t) === 3).length }));
  `;
  const run = (env: NodeJS.ProcessEnv): { main: number; batch: number } => {
    const res = spawnSync(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], { encoding: "utf8", env: { ...process.env, ...env } });
    assert.equal(res.status, 0, res.stderr);
    return JSON.parse(res.stdout.trim().split("\n").pop() ?? "");
  };
  const batched = run({});
  assert.equal(batched.main, 0, "the main thread keeps the normal policy");
  assert.ok(batched.batch >= 1, "a pool thread is SCHED_BATCH");
  assert.deepEqual(run({ SITEKEEP_HELPER_SCHEDULING: "normal" }), { main: 0, batch: 0 });
});

test("with returnLargeBuffersToTheSystem, a freed 8 MiB buffer goes back to the kernel even after a 16 MiB one was freed", { skip: process.platform !== "linux" }, (t) => {
  if (!nativeAddon?.release || !nativeAddon.mallocOption) return t.skip("no addon");
  // glibc raises its threshold to the size of each large block freed: without the setting, the
  // 8 MiB buffer would come from (and stay in) the heap once the 16 MiB one was freed. Both are
  // freed with releaseBuffer, at once: waiting for V8 to free them made the test depend on the
  // collector's pace under load (and on other mappings not growing meanwhile).
  const script = `
    import fs from "node:fs";
    import { releaseBuffer, returnLargeBuffersToTheSystem } from ${JSON.stringify(new URL("./native.ts", import.meta.url).href)};
    if (process.argv[1] === "set") returnLargeBuffersToTheSystem();
    const regions = () => new Map(fs.readFileSync("/proc/self/maps", "utf8").split("\\n").flatMap((l) => {
      const m = /^([0-9a-f]+)-([0-9a-f]+) rw-p 00000000 00:00 0\\s*$/.exec(l);
      return m ? [[m[1] + "-" + m[2], parseInt(m[2], 16) - parseInt(m[1], 16)]] : [];
    }));
    const big = Buffer.allocUnsafeSlow(16 << 20).fill(1);
    releaseBuffer(big);
    const before = regions();
    const b = Buffer.allocUnsafeSlow(8 << 20).fill(2);
    const during = regions();
    releaseBuffer(b);
    const after = regions();
    // The buffer's own mapping: new since before and at least 8 MiB (V8's own pages are smaller).
    const own = [...during].filter(([r, n]) => !before.has(r) && n >= 8 << 20);
    const sum = (list) => list.reduce((s, [, n]) => s + n, 0);
    console.log(JSON.stringify({ released: big.length === 0 && b.length === 0, added: sum(own), returned: sum(own.filter(([r]) => !after.has(r))) }));
  `;
  const run = (arg: string): { released: boolean; added: number; returned: number } => {
    const res = spawnSync(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script, arg], { encoding: "utf8" });
    assert.equal(res.status, 0, res.stderr);
    return JSON.parse(res.stdout.trim().split("\n").pop() ?? "");
  };
  const set = run("set");
  assert.equal(set.released, true);
  assert.ok(set.added >= 8 << 20 && set.returned === set.added, `mapped for the buffer: ${set.added} bytes, returned: ${set.returned}`);
  // The precondition is glibc's, and it held in all but one of many runs: there the 16 MiB block was
  // seemingly not yet freed when the 8 MiB one was taken (V8 may free a detached buffer's memory on
  // a helper thread). It gets three tries; what it checks is unchanged.
  let unset = run("none");
  for (let tries = 1; tries < 3 && unset.added !== 0; tries++) unset = run("none");
  assert.equal(unset.added, 0, "without the setting the buffer came from the heap (else this test proves nothing)");
});

test("with keepFreedMemoryForReuse, 1 MiB buffers allocated and freed in turn reuse their memory instead of faulting it in again", { skip: process.platform !== "linux" }, (t) => {
  if (!nativeAddon?.release || !nativeAddon.mallocOption) return t.skip("no addon");
  // A restore's pattern: a few buffers of ~1 MiB in flight, filled, used and freed, then the next
  // ones. Without the setting the freed ones go back to the kernel (the heap's top is trimmed past
  // 128 KiB) and the next ones' pages are faulted in and zeroed again.
  const script = `
    import { keepFreedMemoryForReuse, releaseBuffer, returnLargeBuffersToTheSystem } from ${JSON.stringify(new URL("./native.ts", import.meta.url).href)};
    returnLargeBuffersToTheSystem(); // as the CLI does first: 1 MiB then comes from the heap
    if (process.argv[1] === "keep") keepFreedMemoryForReuse();
    const round = () => {
      const bufs = Array.from({ length: 4 }, () => Buffer.allocUnsafeSlow(1 << 20).fill(7));
      for (const b of bufs) releaseBuffer(b);
      return bufs.reduce((n, b) => n + b.length, 0);
    };
    for (let i = 0; i < 4; i++) round(); // warm up: the heap has grown where it will
    const before = process.resourceUsage().minorPageFault;
    let left = 0;
    for (let i = 0; i < 16; i++) left += round();
    console.log(JSON.stringify({ faults: process.resourceUsage().minorPageFault - before, left }));
  `;
  const run = (arg: string): { faults: number; left: number } => {
    const res = spawnSync(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script, arg], { encoding: "utf8" });
    assert.equal(res.status, 0, res.stderr);
    return JSON.parse(res.stdout.trim().split("\n").pop() ?? "");
  };
  const kept = run("keep");
  // Whether freed memory is trimmed depends on what else sits at the heap's top (a helper thread's
  // allocation there keeps it): once in a suite run under load the run without the setting saw 7
  // faults. Up to three tries for that precondition; the assertion on `kept` is not retried.
  let given = run("none");
  for (let i = 0; i < 2 && given.faults < 64 * 100; i++) given = run("none");
  assert.equal(kept.left + given.left, 0, "every buffer was freed by releaseBuffer");
  // 64 buffers of 256 pages: given back, 12,000-16,000 faults here; kept, a few dozen of V8's own.
  assert.ok(given.faults >= 64 * 100, `without the setting: ${given.faults} faults (else this test proves nothing)`);
  assert.ok(kept.faults < 64 * 20, `with it: ${kept.faults} faults`);
});

test("releaseBuffer frees a buffer's memory at once, and leaves a buffer it does not span whole alone", (t) => {
  if (!nativeAddon?.release) return t.skip("no addon");
  const before = process.memoryUsage().arrayBuffers;
  const big = Buffer.allocUnsafeSlow(32 << 20).fill(1);
  assert.ok(process.memoryUsage().arrayBuffers >= before + (32 << 20));
  releaseBuffer(big);
  assert.equal(big.length, 0, "every view of it is empty");
  assert.ok(process.memoryUsage().arrayBuffers < before + (1 << 20), "freed without waiting for a garbage collection");
  const pooled = Buffer.from("abc"); // a view of Node's shared pool
  releaseBuffer(pooled);
  assert.equal(pooled.toString(), "abc");
  const whole = Buffer.alloc(100, 2);
  const view = whole.subarray(10);
  releaseBuffer(view);
  assert.deepEqual([view.length, whole.length, whole[0]], [90, 100, 2]);
});

/** A NewFile with its times given in nanoseconds since the epoch. */
function withTimes<F extends { atimeNs?: bigint; mtimeNs?: bigint }>(f: F): F & { atime?: TimeParts; mtime?: TimeParts } {
  return f.atimeNs === undefined || f.mtimeNs === undefined ? f : { ...f, atime: splitTimeNs(f.atimeNs), mtime: splitTimeNs(f.mtimeNs) };
}

describe("writeFiles", () => {
  test("creates new files with their bytes, holes, mode, owner and nanosecond times", async () => {
    const at = fs.mkdtempSync(path.join(dir, "write-"));
    const block = 4096;
    const sparse = Buffer.concat([Buffer.alloc(block, 1), Buffer.alloc(2 * block), Buffer.from("tail")]);
    const zeros = Buffer.alloc(3 * block);
    const name = Buffer.from([0x6e, 0xff, 0x01]); // not UTF-8
    const files = [
      { name: Buffer.from("plain.txt"), data: Buffer.from("hello"), mode: 0o644, uid: 1234, gid: 5678, atimeNs: -1_500_000_001n, mtimeNs: 4_102_444_800_123_456_789n },
      { name: Buffer.from("sparse"), data: sparse, mode: 0o4755, uid: 0, gid: 0, atimeNs: 1n, mtimeNs: 2n },
      { name: Buffer.from("zeros"), data: zeros, mode: 0o400, uid: 0, gid: 0 },
      { name: Buffer.from("empty"), data: Buffer.alloc(0), mode: 0o600, uid: 0, gid: 0, atimeNs: 0n, mtimeNs: 999_999_999n },
      { name, data: Buffer.from("bytes"), mode: 0o640, uid: 0, gid: 0, atimeNs: 5n, mtimeNs: 6n },
    ];
    const r = await writeFiles(Buffer.from(at), files.map(withTimes), isRoot);
    assert.deepEqual(r, files.map(() => undefined));
    for (const f of files) {
      const p = Buffer.concat([Buffer.from(at + "/"), f.name]);
      const st = fs.lstatSync(p, { bigint: true }); // before reading, which may set the atime
      assert.deepEqual(fs.readFileSync(p), f.data, f.name.toString());
      assert.equal(Number(st.mode) & 0o7777, f.mode, f.name.toString());
      if (f.atimeNs !== undefined) assert.deepEqual([st.atimeNs, st.mtimeNs], [f.atimeNs, f.mtimeNs], f.name.toString());
      if (isRoot) assert.deepEqual([Number(st.uid), Number(st.gid)], [f.uid, f.gid]);
    }
    // Aligned zero blocks are holes: fewer blocks allocated than the length needs.
    const sp = fs.statSync(path.join(at, "sparse"));
    assert.ok(sp.blocks * 512 < sparse.length, `sparse: ${sp.blocks} blocks for ${sparse.length} bytes`);
    assert.equal(fs.statSync(path.join(at, "zeros")).blocks, 0);
  });

  test("mode and owner come out as asked whatever the umask, also in a set-group-ID folder (ownership skipped only when already right)", async () => {
    const at = fs.mkdtempSync(path.join(dir, "write-umask-"));
    if (isRoot) {
      fs.chownSync(at, 0, 5678);
      fs.chmodSync(at, 0o2755); // new files get the folder's group 5678
    }
    const group = isRoot ? 5678 : process.getgid!();
    const files = [
      { name: Buffer.from("group-of-folder"), data: Buffer.from("a"), mode: 0o640, uid: isRoot ? 0 : process.getuid!(), gid: group },
      { name: Buffer.from("other-group"), data: Buffer.from("b"), mode: 0o644, uid: isRoot ? 0 : process.getuid!(), gid: isRoot ? 0 : group },
      { name: Buffer.from("setgid"), data: Buffer.from("c"), mode: 0o2775, uid: isRoot ? 0 : process.getuid!(), gid: group },
      { name: Buffer.from("other-owner"), data: Buffer.from("d"), mode: 0o664, uid: isRoot ? 1234 : process.getuid!(), gid: isRoot ? 4321 : group },
    ];
    const old = process.umask(0o077); // the creation mode loses every group and other bit
    let r;
    try {
      r = await writeFiles(Buffer.from(at), files, isRoot);
    } finally {
      process.umask(old);
    }
    assert.deepEqual(r, files.map(() => undefined));
    for (const f of files) {
      const st = fs.lstatSync(Buffer.concat([Buffer.from(at + "/"), f.name]));
      assert.deepEqual([st.mode & 0o7777, st.uid, st.gid], [f.mode, f.uid, f.gid], f.name.toString());
    }
  });

  test("leaves whatever already stands at a name alone, never writing through a symlink", async () => {
    const at = fs.mkdtempSync(path.join(dir, "write-exists-"));
    const outside = path.join(dir, "outside-target");
    fs.writeFileSync(outside, "keep");
    fs.symlinkSync(outside, path.join(at, "link"));
    fs.writeFileSync(path.join(at, "old"), "old bytes");
    const meta = { mode: 0o644, uid: 0, gid: 0 };
    const r = await writeFiles(
      Buffer.from(at),
      [
        { name: Buffer.from("link"), data: Buffer.from("new"), ...meta },
        { name: Buffer.from("old"), data: Buffer.from("new"), ...meta },
        { name: Buffer.from("fresh"), data: Buffer.from("new"), ...meta },
      ],
      false,
    );
    for (const i of [0, 1]) {
      assert.equal(r[i]?.step, WriteStep.open);
      assert.equal(r[i]?.error.code, "EEXIST");
      assert.equal(r[i]?.error.syscall, "open");
    }
    assert.equal(r[2], undefined);
    assert.equal(fs.readFileSync(outside, "utf8"), "keep");
    assert.equal(fs.readlinkSync(path.join(at, "link")), outside);
    assert.equal(fs.readFileSync(path.join(at, "old"), "utf8"), "old bytes");
    assert.equal(fs.readFileSync(path.join(at, "fresh"), "utf8"), "new");
  });

  test("refuses metadata out of range (a damaged snapshot) with EINVAL at its step, keeping the file", async () => {
    const at = fs.mkdtempSync(path.join(dir, "write-range-"));
    const r = await writeFiles(
      Buffer.from(at),
      [
        { name: Buffer.from("mode"), data: Buffer.from("a"), mode: 0o100644, uid: 0, gid: 0 },
        withTimes({ name: Buffer.from("time"), data: Buffer.from("b"), mode: 0o644, uid: 0, gid: 0, atimeNs: 0n, mtimeNs: 10n ** 28n }),
      ],
      false,
    );
    // The owner is checked before any chown is tried, so this holds without root too.
    r.push(...(await writeFiles(Buffer.from(at), [{ name: Buffer.from("owner"), data: Buffer.from("c"), mode: 0o644, uid: 2 ** 40, gid: 0 }], true)));
    assert.deepEqual(r.map((x) => [x?.step, x?.error.code]), [[WriteStep.chmod, "EINVAL"], [WriteStep.utimes, "EINVAL"], [WriteStep.chown, "EINVAL"]]);
    assert.deepEqual(["mode", "time", "owner"].map((n) => fs.readFileSync(path.join(at, n), "utf8")), ["a", "b", "c"]);
  });

  test("reads each file's bytes in place: views into one buffer, the same bytes twice; bad arrays are refused", async (t) => {
    const at = fs.mkdtempSync(path.join(dir, "write-views-"));
    const batch = Buffer.from("0123456789abcdefghij");
    const meta = { mode: 0o600, uid: process.getuid!(), gid: process.getgid!() };
    const files = [
      { name: Buffer.from("head"), data: batch.subarray(0, 4), ...meta },
      { name: Buffer.from("middle"), data: batch.subarray(4, 15), ...meta },
      { name: Buffer.from("again"), data: batch.subarray(4, 15), ...meta },
      { name: Buffer.from("none"), data: batch.subarray(20), ...meta },
      { name: Buffer.from("tail"), data: batch.subarray(15), ...meta },
    ];
    assert.deepEqual(await writeFiles(Buffer.from(at), files, false), files.map(() => undefined));
    assert.deepEqual(
      files.map((f) => fs.readFileSync(path.join(at, f.name.toString()), "latin1")),
      ["0123", "456789abcde", "456789abcde", "", "fghij"],
    );
    const writefiles = nativeAddon?.writefiles;
    if (!writefiles) return t.skip("no addon");
    const names = Buffer.from("x\0y\0");
    const meta2 = new Float64Array(2 * WRITE_META).fill(NaN);
    assert.throws(() => writefiles(Buffer.from(at), names, [Buffer.from("a"), "b" as unknown as Buffer], meta2, 0), TypeError);
    assert.throws(() => writefiles(Buffer.from(at), names, [Buffer.from("a")], meta2, 0), RangeError);
    assert.throws(() => writefiles(Buffer.from(at), names, Buffer.from("ab") as unknown as Buffer[], meta2, 0), TypeError);
    assert.deepEqual(fs.readdirSync(at).sort(), ["again", "head", "middle", "none", "tail"]);
  });

  test("rejects when the folder cannot be opened", async () => {
    await assert.rejects(writeFiles(Buffer.from(path.join(dir, "no-such-folder")), [{ name: Buffer.from("f"), data: Buffer.alloc(1), mode: 0o600, uid: 0, gid: 0 }], false), (err: NodeJS.ErrnoException) => err.code === "ENOENT");
  });
});
