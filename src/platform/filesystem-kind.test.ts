import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { isLocalFilesystemType, isOnLocalFilesystem } from "./filesystem-kind.js";

test("local filesystem types are told from shares, FUSE and unknown ones", () => {
  for (const local of [0xef53, 0x58465342, 0x9123683e, 0x2fc12fc1, 0x01021994, 0x9123683en]) assert.equal(isLocalFilesystemType(local), true, local.toString(16));
  // NFS, SMB2, CIFS, FUSE, Ceph, 9p, GFS2, procfs
  for (const remote of [0x6969, 0xfe534d42, 0xff534d42, 0x65735546, 0x00c36400, 0x01021997, 0x01161970, 0x9fa0]) {
    assert.equal(isLocalFilesystemType(remote), false, remote.toString(16));
  }
});

test(
  "statfs of real paths: tmpfs is local, procfs and a missing path are not",
  { skip: process.platform !== "linux" && "statfs types are Linux's" },
  async () => {
    if (existsSync("/dev/shm")) assert.equal(await isOnLocalFilesystem("/dev/shm"), true);
    assert.equal(await isOnLocalFilesystem("/proc/self"), false);
    assert.equal(await isOnLocalFilesystem("/no/such/folder"), false);
  },
);
