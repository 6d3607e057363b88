// Whether a path lives on a filesystem of this machine's own disks or memory, where a file another
// process created is in every later listing at once, or on one whose listings may lag behind
// (NFS, SMB, FUSE mounts such as sshfs or rclone, cluster filesystems, anything unknown).
import { promises as fsp } from "node:fs";

/**
 * statfs f_type of Linux filesystems that keep one directory on one machine (linux/magic.h; ZFS
 * and bcachefs from their own sources). Anything else counts as possibly remote.
 */
export const LOCAL_FILESYSTEM_TYPES: ReadonlyMap<number, string> = new Map([
  [0xef53, "ext2/3/4"],
  [0x58465342, "xfs"],
  [0x9123683e, "btrfs"],
  [0x2fc12fc1, "zfs"],
  [0xf2f52010, "f2fs"],
  [0xca451a4e, "bcachefs"],
  [0x01021994, "tmpfs"],
  [0x858458f6, "ramfs"],
  [0x794c7630, "overlayfs"],
]);

/** True when `type` (a statfs f_type) is one of LOCAL_FILESYSTEM_TYPES. */
export function isLocalFilesystemType(type: number | bigint): boolean {
  return LOCAL_FILESYSTEM_TYPES.has(Number(BigInt(type) & 0xffffffffn));
}

/**
 * True when `path` is on a local filesystem (Linux only: other systems' statfs types are not
 * comparable, so they answer false). False when the path cannot be examined.
 */
export async function isOnLocalFilesystem(path: string): Promise<boolean> {
  if (process.platform !== "linux") return false;
  try {
    return isLocalFilesystemType((await fsp.statfs(path)).type);
  } catch {
    return false;
  }
}
