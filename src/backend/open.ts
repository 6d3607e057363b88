// Turns a repository URL into a backend: a filesystem path (local disk or a mounted share) or
// s3:http(s)://host[:port]/bucket[/prefix].
import { resolve } from "node:path";
import { SitekeepError } from "../errors.js";
import type { Backend } from "./backend.js";
import { LocalBackend } from "./local.js";
import { type ObjectLock, S3Backend } from "./s3.js";

export interface BackendOptions {
  /** S3 only: write files with an Object Lock retention. */
  objectLock?: ObjectLock;
}

export function openBackend(url: string, opts: BackendOptions = {}): Backend {
  if (!url) {
    throw new SitekeepError("repo.unset", "no repository given", {
      hint: "pass -r/--repo PATH or set SITEKEEP_REPOSITORY",
    });
  }
  if (url.startsWith("s3:")) return new S3Backend(url, opts.objectLock ? { objectLock: opts.objectLock } : {});
  if (opts.objectLock) {
    throw new SitekeepError("backend.objectlock", `Object Lock needs an S3 repository, not ${JSON.stringify(url)}`, {
      hint: "remove the objectLock setting, or use an s3: destination whose bucket has Object Lock enabled",
    });
  }
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(url) || /^(sftp|rest|b2|azure|gs|swift|rclone):/.test(url)) {
    throw new SitekeepError("backend.scheme", `unsupported repository location ${JSON.stringify(url)}`, {
      hint: "use a path or s3:http(s)://host/bucket/prefix",
    });
  }
  return new LocalBackend(resolve(url.startsWith("local:") ? url.slice(6) : url));
}
