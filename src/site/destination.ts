// Destinations of the site task: preflight checks (exists, writable by us, free space, holds a
// repository or nothing) and opening the repository, initializing an empty destination.
import { closeSync, fsyncSync, openSync, readdirSync, statSync, statfsSync, unlinkSync, writeSync } from "node:fs";
import { join } from "node:path";
import { openBackend } from "../backend/open.js";
import type { ObjectLock } from "../backend/s3.js";
import { SitekeepError, errorMessage, isErrnoError } from "../errors.js";
import { Repository } from "../repo/repository.js";
import type { MessageKey } from "./status-messages.js";

/** A preflight or run failure tied to the status message that reports it. */
export class StepError extends SitekeepError {
  constructor(
    readonly key: MessageKey,
    message: string,
    hint: string,
    opts: { exitCode?: number; cause?: unknown } = {},
  ) {
    super(`site.${key}`, message, { hint, ...opts });
  }

  static from(key: MessageKey, err: unknown, hint = "see the run log"): StepError {
    if (err instanceof StepError) return err;
    const se = err instanceof SitekeepError ? err : undefined;
    return new StepError(key, errorMessage(err), se?.hint ?? hint, { exitCode: se?.exitCode, cause: err });
  }
}

export interface DestinationState {
  url: string;
  local: boolean;
  /** True when the destination holds a repository; false when it is empty and will be initialized. */
  hasRepository: boolean;
  freeBytes?: number;
}

/** Checks a local destination without changing anything but a short-lived test file. */
export function preflightLocal(path: string, role: string): DestinationState {
  let st;
  try {
    st = statSync(path);
  } catch (err) {
    if (isErrnoError(err, "ENOENT")) {
      throw new StepError("destination-missing", `the ${role} ${path} does not exist`, "create it (or mount the share) first: Sitekeep never creates a destination's folder itself, so a missing mount is noticed");
    }
    throw new StepError("destination-unwritable", `cannot reach the ${role} ${path}: ${errorMessage(err)}`, "check the path and its permissions");
  }
  if (!st.isDirectory()) throw new StepError("destination-foreign", `the ${role} ${path} is not a folder`, "point the destination at a folder");

  // A real write test: permissions, read-only mounts and full disks all show up here.
  const probe = join(path, `.sitekeep-write-test-${process.pid}`);
  try {
    const fd = openSync(probe, "wx", 0o600);
    try {
      writeSync(fd, Buffer.alloc(4096, 0x5a));
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
  } catch (err) {
    throw new StepError("destination-unwritable", `the ${role} ${path} is not writable by this process (uid ${process.getuid?.() ?? "?"}): ${errorMessage(err)}`, "give the user running Sitekeep write access, or check that the share is mounted read-write");
  } finally {
    try {
      unlinkSync(probe);
    } catch {
      // not created
    }
  }

  let names: string[];
  try {
    names = readdirSync(path);
  } catch (err) {
    throw new StepError("destination-unwritable", `cannot list the ${role} ${path}: ${errorMessage(err)}`, "give the user running Sitekeep read access");
  }
  const hasRepository = names.includes("config");
  const other = names.filter((n) => !/^sitekeep\.log(\.\d+)?$/.test(n) && n !== "lost+found");
  if (!hasRepository && other.length > 0) {
    throw new StepError(
      "destination-foreign",
      `the ${role} ${path} holds other files (${other.slice(0, 3).join(", ")}${other.length > 3 ? ", ..." : ""}) and no repository`,
      "choose an empty folder (it is initialized on first use) or one that holds this site's repository",
    );
  }
  let freeBytes: number | undefined;
  try {
    const fs = statfsSync(path);
    freeBytes = Number(fs.bavail) * Number(fs.bsize);
  } catch {
    // statfs unsupported here: skip the free-space check
  }
  return { url: path, local: true, hasRepository, ...(freeBytes !== undefined ? { freeBytes } : {}) };
}

export interface DestinationOptions {
  /** Open append-only (backup.appendOnly): nothing may be deleted through it. */
  appendOnly?: boolean;
  /** S3: write files with an Object Lock retention (backup.objectLock). */
  objectLock?: ObjectLock;
}

/** Opens the repository at a destination, initializing it when the destination is empty. */
export async function openDestination(url: string, password: string, role: string, opts: DestinationOptions = {}): Promise<Repository> {
  try {
    const backend = openBackend(url, opts.objectLock ? { objectLock: opts.objectLock } : {});
    const repoOpts = { appendOnly: opts.appendOnly ?? false };
    if (!(await backend.exists())) {
      if (await backend.hasContent()) {
        throw new StepError("destination-foreign", `the ${role} ${url} holds other files and no repository`, "choose an empty destination or this site's repository");
      }
      return await Repository.init(backend, password, repoOpts);
    }
    return await Repository.open(backend, password, repoOpts);
  } catch (err) {
    if (err instanceof StepError) throw err;
    throw StepError.from("destination-unusable", err, "check the password (backup.passwordFile or SITEKEEP_PASSWORD) and run `sitekeep check` on the destination");
  }
}
