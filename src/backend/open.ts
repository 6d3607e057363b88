// Turns a repository URL into a backend: a filesystem path (local disk or a mounted share) or
// s3:http(s)://host[:port]/bucket[/prefix].
import { resolve } from "node:path";
import { SitekeepError } from "../errors.js";
import type { Backend } from "./backend.js";
import { LocalBackend } from "./local.js";

export function openBackend(url: string): Backend {
  if (!url) {
    throw new SitekeepError("repo.unset", "no repository given", {
      hint: "pass -r/--repo PATH or set SITEKEEP_REPOSITORY",
    });
  }
  if (url.startsWith("s3:")) {
    throw new SitekeepError("backend.s3", "S3 repositories are not supported by this build yet", {
      hint: "use a local path or a mounted network share for now",
    });
  }
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(url) || /^(sftp|rest|b2|azure|gs|swift|rclone):/.test(url)) {
    throw new SitekeepError("backend.scheme", `unsupported repository location ${JSON.stringify(url)}`, {
      hint: "use a path or s3:http(s)://host/bucket/prefix",
    });
  }
  return new LocalBackend(resolve(url.startsWith("local:") ? url.slice(6) : url));
}
