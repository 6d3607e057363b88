// A repository in an S3 bucket (AWS or any S3-compatible server), laid out exactly as restic's S3
// backend with its "default" layout: <prefix>/config, <prefix>/keys/<id>, <prefix>/locks/<id>,
// <prefix>/snapshots/<id>, <prefix>/index/<id>, <prefix>/data/<first two hex digits>/<id>.
//
// URL forms: s3:http(s)://host[:port]/bucket[/prefix] and s3:host/bucket[/prefix] (HTTPS).
// Credentials come from the AWS SDK's default provider chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY,
// AWS_PROFILE and ~/.aws, SSO, web identity, container and instance roles); they never appear in
// messages. Environment: AWS_REGION / AWS_DEFAULT_REGION (else the region in an AWS host name,
// else us-east-1), SITEKEEP_S3_PATH_STYLE=true|false (default: path style except for AWS hosts),
// SITEKEEP_S3_MAX_ATTEMPTS (default 5), SITEKEEP_S3_OBJECT_LOCK=MODE:DAYS (see objectLock).
import { createHash } from "node:crypto";
import type { BucketLocationConstraint, ListObjectsV2CommandOutput, S3Client } from "@aws-sdk/client-s3";
import { SitekeepError, errorMessage } from "../errors.js";
import type { Backend, FileInfo, FileType, Handle } from "./backend.js";
import { isIdHex } from "../repo/id.js";

export interface S3Options {
  /** Path-style addressing (http://host/bucket/key) instead of virtual hosts (http://bucket.host/key). */
  pathStyle?: boolean;
  /** Attempts per request, including the first (SDK retries with exponential backoff). */
  maxAttempts?: number;
  region?: string;
  /** Milliseconds to wait for a TCP/TLS connection (default 10 s). */
  connectTimeoutMs?: number;
  /** Files larger than this are uploaded in parts (default 32 MiB; env SITEKEEP_S3_MULTIPART_MIB). */
  multipartThreshold?: number;
  /** Size of each part (default 16 MiB; S3 needs at least 5 MiB for all but the last). */
  partSize?: number;
  /**
   * Write every file but locks with an S3 Object Lock retention (env SITEKEEP_S3_OBJECT_LOCK, e.g.
   * "governance:30"): until then no one, not even these credentials, can delete or overwrite that
   * version. The bucket must have been created with Object Lock enabled; this is checked once.
   */
  objectLock?: ObjectLock;
}

/** A century: S3 takes any date, but a longer lock is surely a typo (and the Date overflows). */
export const MAX_LOCK_DAYS = 36_500;

export interface ObjectLock {
  mode: "governance" | "compliance";
  days: number;
}

/** Parses "MODE:DAYS" (governance:30, compliance:365) as in SITEKEEP_S3_OBJECT_LOCK. */
export function parseObjectLock(s: string): ObjectLock {
  const m = /^(governance|compliance):(\d+)d?$/i.exec(s.trim());
  if (!m || Number(m[2]) < 1 || Number(m[2]) > MAX_LOCK_DAYS) {
    throw new SitekeepError("s3.objectlock", `invalid Object Lock setting ${JSON.stringify(s)}`, { hint: `use MODE:DAYS with 1 to ${MAX_LOCK_DAYS} days, e.g. "governance:30" or "compliance:365"` });
  }
  return { mode: m[1].toLowerCase() as ObjectLock["mode"], days: Number(m[2]) };
}

export interface S3Location {
  /** http(s)://host[:port], without credentials or path. */
  endpoint: string;
  bucket: string;
  /** Key prefix without leading or trailing slashes ("" for the bucket's root). */
  prefix: string;
  /** The endpoint is an AWS S3 host (*.amazonaws.com). */
  aws: boolean;
}

const DEFAULT_MAX_ATTEMPTS = 5;

// The SDK is loaded on first use: it adds a quarter of a second to every start otherwise.
type Sdk = typeof import("@aws-sdk/client-s3");

/** Parses s3:http(s)://host[:port]/bucket[/prefix] or s3:host/bucket[/prefix]. */
export function parseS3Url(url: string): S3Location {
  if (!url.startsWith("s3:")) throw badUrl("it does not start with s3:");
  const rest = url.slice(3);
  const withScheme = /^https?:\/\//i.test(rest) ? rest : `https://${rest.replace(/^\/+/, "")}`;
  let u: URL;
  try {
    u = new URL(withScheme);
  } catch {
    throw badUrl("it is not a valid URL");
  }
  if (u.username || u.password) {
    throw new SitekeepError("backend.s3.url", "credentials in S3 repository URLs are not supported", {
      hint: "remove them from the URL and set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY instead",
    });
  }
  if (u.search || u.hash) throw badUrl("it has a query or fragment");
  const parts = decodeURIComponent(u.pathname)
    .split("/")
    .filter((p) => p !== "");
  const bucket = parts.shift();
  if (!bucket) throw badUrl("it names no bucket");
  if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(bucket)) {
    throw new SitekeepError("backend.s3.url", `invalid S3 bucket name ${JSON.stringify(bucket)}`, {
      hint: "bucket names are 3 to 63 characters of lowercase letters, digits, dots and hyphens",
    });
  }
  const host = u.hostname.toLowerCase();
  return {
    endpoint: `${u.protocol}//${u.host}`,
    bucket,
    prefix: parts.join("/"),
    aws: /(^|\.)amazonaws\.com(\.cn)?$/.test(host),
  };
}

function badUrl(why: string): SitekeepError {
  // The URL itself is not repeated: a mistyped one might contain a secret.
  return new SitekeepError("backend.s3.url", `cannot parse the S3 repository URL: ${why}`, {
    hint: "use s3:https://host[:port]/bucket[/prefix] or s3:host/bucket[/prefix]",
  });
}

/** Region of an AWS host name such as s3.eu-central-1.amazonaws.com or s3-eu-west-1.amazonaws.com. */
function regionFromHost(endpoint: string): string | undefined {
  const m = /(?:^|\.)s3[.-](?:dualstack\.)?([a-z]{2}(?:-gov)?-[a-z]+-\d)\.amazonaws\.com/.exec(
    new URL(endpoint).hostname,
  );
  return m?.[1];
}

function envBool(name: string): boolean | undefined {
  const v = process.env[name]?.trim().toLowerCase();
  if (v === undefined || v === "") return undefined;
  if (["1", "true", "yes", "on"].includes(v)) return true;
  if (["0", "false", "no", "off"].includes(v)) return false;
  throw new SitekeepError("backend.s3.config", `${name} must be true or false, got ${JSON.stringify(v)}`);
}

function envInt(name: string): number | undefined {
  const v = process.env[name]?.trim();
  if (!v) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1 || n > 100) {
    throw new SitekeepError(
      "backend.s3.config",
      `${name} must be a whole number from 1 to 100, got ${JSON.stringify(v)}`,
    );
  }
  return n;
}

export class S3Backend implements Backend {
  readonly location: string;
  readonly endpoint: string;
  readonly bucket: string;
  readonly prefix: string;
  readonly region: string;
  private readonly maxAttempts: number;
  private readonly pathStyle: boolean;
  private readonly connectTimeoutMs: number;
  private readonly multipartThreshold: number;
  private readonly partSize: number;
  private readonly sdkEndpoint: string | undefined;
  readonly objectLock: ObjectLock | undefined;
  #lockChecked: Promise<void> | undefined;
  #s3: Promise<{ client: S3Client; m: Sdk }> | undefined;

  constructor(url: string, opts: S3Options = {}) {
    const loc = parseS3Url(url);
    this.endpoint = loc.endpoint;
    this.bucket = loc.bucket;
    this.prefix = loc.prefix;
    this.location = `s3:${loc.endpoint}/${loc.bucket}${loc.prefix ? `/${loc.prefix}` : ""}`;
    this.region =
      opts.region ??
      (process.env.AWS_REGION ||
        process.env.AWS_DEFAULT_REGION ||
        (loc.aws ? regionFromHost(loc.endpoint) : undefined) ||
        "us-east-1");
    this.maxAttempts = opts.maxAttempts ?? envInt("SITEKEEP_S3_MAX_ATTEMPTS") ?? DEFAULT_MAX_ATTEMPTS;
    this.pathStyle = opts.pathStyle ?? envBool("SITEKEEP_S3_PATH_STYLE") ?? !loc.aws;
    this.connectTimeoutMs = opts.connectTimeoutMs ?? 10_000;
    const mib = envInt("SITEKEEP_S3_MULTIPART_MIB");
    this.multipartThreshold = opts.multipartThreshold ?? (mib !== undefined ? mib * 1024 * 1024 : 32 * 1024 * 1024);
    const part = envInt("SITEKEEP_S3_PART_MIB");
    this.partSize = Math.max(opts.partSize ?? (part !== undefined ? part * 1024 * 1024 : 16 * 1024 * 1024), 5 * 1024 * 1024);
    this.sdkEndpoint = /^https:\/\/s3\.amazonaws\.com$/i.test(loc.endpoint) ? undefined : loc.endpoint;
    const lockEnv = process.env.SITEKEEP_S3_OBJECT_LOCK;
    this.objectLock = opts.objectLock ?? (lockEnv ? parseObjectLock(lockEnv) : undefined);
  }

  /** The Object Lock parameters of a new object (none for lock files, which must be removable). */
  private async lockParams(client: S3Client, m: Sdk, h: Handle): Promise<{ ObjectLockMode?: "GOVERNANCE" | "COMPLIANCE"; ObjectLockRetainUntilDate?: Date }> {
    const lock = this.objectLock;
    if (!lock || h.type === "locks") return {};
    this.#lockChecked ??= this.checkObjectLock(client, m);
    await this.#lockChecked;
    return { ObjectLockMode: lock.mode === "compliance" ? "COMPLIANCE" : "GOVERNANCE", ObjectLockRetainUntilDate: new Date(Date.now() + lock.days * 86_400_000) };
  }

  /** Object Lock parameters on a bucket without it would be refused, or worse, ignored: check once. */
  private async checkObjectLock(client: S3Client, m: Sdk): Promise<void> {
    let enabled: string | undefined;
    try {
      const r = await client.send(new m.GetObjectLockConfigurationCommand({ Bucket: this.bucket }));
      enabled = r.ObjectLockConfiguration?.ObjectLockEnabled;
    } catch (err) {
      // Only "there is no configuration" and "the server has no such call" mean no Object Lock;
      // anything else (AccessDenied: the key lacks s3:GetBucketObjectLockConfiguration, a network
      // error) is reported as it is, and asked again next time.
      const name = errName(err);
      if (name !== "ObjectLockConfigurationNotFoundError" && name !== "NotImplemented" && httpStatus(err) !== 501) {
        this.#lockChecked = undefined;
        throw this.wrap(err, `reading the Object Lock configuration of bucket ${this.bucket}`);
      }
    }
    if (enabled !== "Enabled") {
      throw new SitekeepError("s3.objectlock", `bucket ${this.bucket} does not have Object Lock enabled, so files cannot be written with a retention period; nothing was written`, {
        hint: "create the bucket with Object Lock enabled (most providers allow it only at creation), or remove the objectLock setting / SITEKEEP_S3_OBJECT_LOCK",
      });
    }
  }

  private s3(): Promise<{ client: S3Client; m: Sdk }> {
    this.#s3 ??= import("@aws-sdk/client-s3").then((m) => {
      // The SDK warns on every run under Node 20 (which we support); the warning is noise for our users.
      process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= "true";
      const client = new m.S3Client({
        // For the global AWS host, let the SDK pick the regional endpoint of the region.
        endpoint: this.sdkEndpoint,
        region: this.region,
        forcePathStyle: this.pathStyle,
        maxAttempts: this.maxAttempts,
        // Recent SDKs add CRC checksums by default and send streamed bodies as aws-chunked with a
        // trailer; several S3-compatible servers (s3rver, older MinIO, some gateways) store that
        // framing as part of the object. Only send checksums where an operation requires them: we
        // send Content-MD5 ourselves, and every file's name is the SHA-256 of its content anyway.
        requestChecksumCalculation: "WHEN_REQUIRED",
        responseChecksumValidation: "WHEN_REQUIRED",
        requestHandler: {
          connectionTimeout: this.connectTimeoutMs,
          requestTimeout: 300_000, // an idle socket; the stalled request is retried
        },
      });
      return { client, m };
    });
    return this.#s3;
  }

  key(h: Handle): string {
    let rel: string;
    if (h.type === "config") rel = "config";
    else if (h.type === "data") rel = `data/${h.name.slice(0, 2)}/${h.name}`;
    else rel = `${h.type}/${h.name}`;
    return this.join(rel);
  }

  private join(rel: string): string {
    return this.prefix ? `${this.prefix}/${rel}` : rel;
  }

  async exists(): Promise<boolean> {
    const { client, m } = await this.s3();
    try {
      await client.send(new m.HeadObjectCommand({ Bucket: this.bucket, Key: this.key(CONFIG) }));
      return true;
    } catch (err) {
      if (isNotFound(err)) return false;
      throw await this.explainHeadError(err, "looking for the repository config");
    }
  }

  async hasContent(): Promise<boolean> {
    const { client, m } = await this.s3();
    try {
      const r = await client.send(
        new m.ListObjectsV2Command({
          Bucket: this.bucket,
          Prefix: this.prefix ? `${this.prefix}/` : undefined,
          MaxKeys: 1,
        }),
      );
      return (r.Contents?.length ?? 0) > 0 || (r.CommonPrefixes?.length ?? 0) > 0;
    } catch (err) {
      if (errName(err) === "NoSuchBucket") return false;
      throw this.wrap(err, "listing the bucket");
    }
  }

  async create(): Promise<void> {
    const { client, m } = await this.s3();
    try {
      await client.send(new m.HeadBucketCommand({ Bucket: this.bucket }));
      return;
    } catch (err) {
      // 403: the credentials may be limited to the prefix; assume the bucket exists, and let the
      // first write report what is wrong.
      if (httpStatus(err) === 403) return;
      if (!isNotFound(err)) throw await this.explainHeadError(err, "looking for the bucket");
    }
    try {
      await client.send(
        new m.CreateBucketCommand({
          Bucket: this.bucket,
          // Object Lock can only be switched on when a bucket is created (on most servers).
          ...(this.objectLock ? { ObjectLockEnabledForBucket: true } : {}),
          CreateBucketConfiguration:
            this.region === "us-east-1"
              ? undefined
              : { LocationConstraint: this.region as BucketLocationConstraint },
        }),
      );
    } catch (err) {
      if (errName(err) === "BucketAlreadyOwnedByYou") return;
      if (errName(err) === "BucketAlreadyExists") {
        throw new SitekeepError(
          "backend.s3.bucketexists",
          `the bucket name ${this.bucket} is taken by another account`,
          {
            hint: "bucket names are global on AWS; choose another one",
            cause: err,
          },
        );
      }
      throw this.wrap(err, `creating the bucket ${this.bucket}`);
    }
  }

  async save(h: Handle, data: Uint8Array): Promise<void> {
    const key = this.key(h);
    const { client, m } = await this.s3();
    if (h.type === "config" || h.type === "keys") {
      // S3 has no portable create-if-absent; these files are written once, by one process, at init
      // or by `key add`, so a check first is enough (content-addressed files never conflict).
      if (await this.objectExists(key, `checking ${h.type}/${h.name}`)) {
        throw new SitekeepError("backend.exists", `${h.type} file ${h.name} already exists`);
      }
    }
    const lock = await this.lockParams(client, m, h);
    if (data.length > this.multipartThreshold) {
      await this.saveMultipart(client, m, key, data, h, lock);
      return;
    }
    try {
      // A single PUT is atomic: the object is either absent or complete. Content-MD5 lets the
      // server reject bytes damaged on the way.
      await client.send(
        new m.PutObjectCommand({
          Bucket: this.bucket,
          Key: key,
          Body: data,
          ContentLength: data.length,
          ContentMD5: createHash("md5").update(data).digest("base64"),
          ContentType: "application/octet-stream",
          ...lock,
        }),
      );
    } catch (err) {
      throw this.wrap(err, `saving ${h.type}/${h.name}`);
    }
  }

  /**
   * Large packs go up in parts (each with its own Content-MD5, retried on its own), so a dropped
   * connection costs one part, not the whole pack. The object appears only when the upload is
   * completed, so it is still either absent or complete; a failed upload is aborted.
   */
  private async saveMultipart(client: S3Client, m: Sdk, key: string, data: Uint8Array, h: Handle, lock: object): Promise<void> {
    let uploadId: string | undefined;
    try {
      const created = await client.send(new m.CreateMultipartUploadCommand({ Bucket: this.bucket, Key: key, ContentType: "application/octet-stream", ...lock }));
      uploadId = created.UploadId;
      if (!uploadId) throw new Error("the server returned no upload ID");
      const parts: { ETag: string; PartNumber: number }[] = [];
      for (let off = 0, n = 1; off < data.length; off += this.partSize, n++) {
        const body = data.subarray(off, Math.min(off + this.partSize, data.length));
        const r = await client.send(
          new m.UploadPartCommand({ Bucket: this.bucket, Key: key, UploadId: uploadId, PartNumber: n, Body: body, ContentLength: body.length, ContentMD5: createHash("md5").update(body).digest("base64") }),
        );
        if (!r.ETag) throw new Error(`the server returned no ETag for part ${n}`);
        parts.push({ ETag: r.ETag, PartNumber: n });
      }
      await client.send(new m.CompleteMultipartUploadCommand({ Bucket: this.bucket, Key: key, UploadId: uploadId, MultipartUpload: { Parts: parts } }));
    } catch (err) {
      if (uploadId) await client.send(new m.AbortMultipartUploadCommand({ Bucket: this.bucket, Key: key, UploadId: uploadId })).catch(() => undefined);
      throw this.wrap(err, `saving ${h.type}/${h.name} (multipart)`);
    }
  }

  async load(h: Handle, offset = 0, length?: number): Promise<Buffer> {
    if (length !== undefined && length <= 0) return Buffer.alloc(0);
    const key = this.key(h);
    const what = `reading ${h.type}/${h.name}`;
    let range: string | undefined;
    if (offset > 0) range = `bytes=${offset}-${length === undefined ? "" : offset + length - 1}`;
    else if (offset < 0)
      range = `bytes=${offset}`; // suffix range: the last -offset bytes
    else if (length !== undefined) range = `bytes=0-${length - 1}`;

    let got = await this.get(key, range, what);
    if (got === undefined) return Buffer.alloc(0); // the range starts past the end, as a short read
    // Where the wanted bytes are, now that the size is known.
    const start = offset >= 0 ? offset : Math.max(0, got.total + offset);
    const end = Math.min(got.total, length === undefined ? got.total : start + length);
    if (start >= end) return Buffer.alloc(0);
    if (got.start > start || got.start + got.body.length < end) {
      // The server answered another range than asked (some S3 imitations do not implement suffix
      // ranges, or treat "0-0" as "everything"): ask again for the absolute range.
      got = await this.get(key, `bytes=${start}-${end - 1}`, what);
      if (got === undefined || got.start > start || got.start + got.body.length < end) {
        throw new SitekeepError(
          "backend.s3.range",
          `the S3 server returned the wrong byte range while ${what} from ${this.location}`,
          {
            hint: "the server does not implement HTTP range requests correctly; use another S3 server or a local repository",
          },
        );
      }
    }
    return got.body.subarray(start - got.start, end - got.start);
  }

  /** GETs a key (a range of it), retrying when the connection fails while the body streams in. */
  private async get(
    key: string,
    range: string | undefined,
    what: string,
  ): Promise<{ body: Buffer; start: number; total: number } | undefined> {
    const { client, m } = await this.s3();
    for (let attempt = 1; ; attempt++) {
      let r;
      try {
        r = await client.send(new m.GetObjectCommand({ Bucket: this.bucket, Key: key, Range: range }));
      } catch (err) {
        if (errName(err) === "InvalidRange" || httpStatus(err) === 416) return undefined;
        throw this.wrap(err, what);
      }
      try {
        if (!r.Body) throw Object.assign(new Error("empty response body"), { code: "ECONNRESET" });
        const bytes = await r.Body.transformToByteArray();
        const body = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
        if (r.ContentLength !== undefined && body.length !== r.ContentLength) {
          throw Object.assign(new Error(`short read: ${body.length} of ${r.ContentLength} bytes`), {
            code: "ECONNRESET",
          });
        }
        const cr = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(r.ContentRange ?? "");
        if (cr) {
          const total = cr[3] === "*" ? Number(cr[2]) + 1 : Number(cr[3]);
          return { body, start: Number(cr[1]), total };
        }
        return { body, start: 0, total: body.length }; // no Content-Range: the whole object
      } catch (err) {
        if (attempt >= this.maxAttempts || !isTransient(err)) throw this.wrap(err, what);
        await sleep(Math.min(10_000, 200 * 2 ** (attempt - 1)) * (0.5 + Math.random() / 2));
      }
    }
  }

  async stat(h: Handle): Promise<FileInfo> {
    const { client, m } = await this.s3();
    try {
      const r = await client.send(new m.HeadObjectCommand({ Bucket: this.bucket, Key: this.key(h) }));
      return { name: h.name, size: r.ContentLength ?? 0 };
    } catch (err) {
      throw await this.explainHeadError(err, `reading ${h.type}/${h.name}`);
    }
  }

  async remove(h: Handle): Promise<void> {
    const { client, m } = await this.s3();
    try {
      await client.send(new m.DeleteObjectCommand({ Bucket: this.bucket, Key: this.key(h) }));
    } catch (err) {
      if (isNotFound(err) && errName(err) !== "NoSuchBucket") return;
      throw this.wrap(err, `removing ${h.type}/${h.name}`);
    }
  }

  async *list(type: FileType): AsyncIterable<FileInfo> {
    if (type === "config") {
      if (await this.exists()) yield await this.stat(CONFIG);
      return;
    }
    const dir = `${this.join(type)}/`;
    const { client, m } = await this.s3();
    let token: string | undefined;
    do {
      let r: ListObjectsV2CommandOutput;
      try {
        r = await client.send(
          new m.ListObjectsV2Command({
            Bucket: this.bucket,
            Prefix: dir,
            ContinuationToken: token,
            // Packs are in data/xx/; everything else sits directly in its folder.
            Delimiter: type === "data" ? undefined : "/",
          }),
        );
      } catch (err) {
        if (errName(err) === "NoSuchBucket") return;
        throw this.wrap(err, `listing ${type}`);
      }
      for (const o of r.Contents ?? []) {
        if (!o.Key) continue;
        const name = o.Key.slice(o.Key.lastIndexOf("/") + 1);
        if (isIdHex(name)) yield { name, size: o.Size ?? 0 };
      }
      token = r.IsTruncated ? r.NextContinuationToken : undefined;
    } while (token);
  }

  async close(): Promise<void> {
    if (this.#s3) (await this.#s3).client.destroy();
    this.#s3 = undefined;
  }

  private async objectExists(key: string, what: string): Promise<boolean> {
    const { client, m } = await this.s3();
    try {
      await client.send(new m.HeadObjectCommand({ Bucket: this.bucket, Key: key }));
      return true;
    } catch (err) {
      if (isNotFound(err)) return false;
      throw await this.explainHeadError(err, what);
    }
  }

  /**
   * HEAD responses have no body, so a refusal arrives as a bare 403 or 400: repeat the question as
   * a listing, whose answer names the cause (unknown key, wrong secret, denied, wrong region).
   */
  private async explainHeadError(err: unknown, what: string): Promise<unknown> {
    const status = httpStatus(err);
    if (status === 403 || status === 400 || status === 301) {
      const { client, m } = await this.s3();
      try {
        await client.send(
          new m.ListObjectsV2Command({
            Bucket: this.bucket,
            Prefix: this.prefix ? `${this.prefix}/` : undefined,
            MaxKeys: 1,
          }),
        );
      } catch (probe) {
        if (httpStatus(probe) === status || status === 301) return this.wrap(probe, what);
      }
    }
    if (isNotFound(err)) {
      return new SitekeepError("backend.missing", `${what}: file not found in ${this.location}`, {
        cause: err,
      });
    }
    return this.wrap(err, what);
  }

  /** Turns an SDK or network error into a SitekeepError naming the cause and the fix. */
  wrap(err: unknown, what: string): unknown {
    if (err instanceof SitekeepError) return err;
    const name = errName(err);
    const status = httpStatus(err);
    const at = this.location;
    const net = networkCode(err);
    if (name === "CredentialsProviderError" || /could not load credentials/i.test(errorMessage(err))) {
      return new SitekeepError("backend.s3.credentials", `no S3 credentials found for ${at}`, {
        hint: "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (plus AWS_SESSION_TOKEN for temporary ones), or AWS_PROFILE for a profile in ~/.aws",
        cause: err,
      });
    }
    if (net) {
      return new SitekeepError(
        "backend.s3.unreachable",
        `cannot reach the S3 endpoint ${this.endpoint} while ${what} (${net})`,
        {
          hint: "check the host and port in the repository URL, the network, and that the S3 server is running",
          cause: err,
        },
      );
    }
    if (tlsProblem(err)) {
      return new SitekeepError(
        "backend.s3.tls",
        `TLS connection to the S3 endpoint ${this.endpoint} failed while ${what}: ${errorMessage(err)}`,
        {
          hint: "the server's certificate is not trusted; fix it, add its CA with NODE_EXTRA_CA_CERTS, or use s3:http:// on a trusted network",
          cause: err,
        },
      );
    }
    switch (name) {
      case "InvalidAccessKeyId":
        return new SitekeepError(
          "backend.s3.credentials",
          `the S3 server at ${this.endpoint} does not know the access key`,
          {
            hint: "check AWS_ACCESS_KEY_ID (or the profile in AWS_PROFILE)",
            cause: err,
          },
        );
      case "SignatureDoesNotMatch":
        return new SitekeepError(
          "backend.s3.credentials",
          `the S3 server at ${this.endpoint} rejected the request signature`,
          {
            hint: "check AWS_SECRET_ACCESS_KEY (or the profile in AWS_PROFILE), and that this machine's clock is right",
            cause: err,
          },
        );
      case "ExpiredToken":
      case "InvalidToken":
      case "TokenRefreshRequired":
        return new SitekeepError(
          "backend.s3.credentials",
          `the S3 session token was not accepted by ${this.endpoint}`,
          {
            hint: "renew the temporary credentials (AWS_SESSION_TOKEN) or the SSO login",
            cause: err,
          },
        );
      case "RequestTimeTooSkewed":
        return new SitekeepError(
          "backend.s3.clock",
          `the S3 server at ${this.endpoint} refused the request: this machine's clock is off`,
          {
            hint: "synchronise the clock (NTP)",
            cause: err,
          },
        );
      case "NoSuchBucket":
        return new SitekeepError(
          "backend.s3.nobucket",
          `the bucket ${this.bucket} does not exist at ${this.endpoint}`,
          {
            hint: "check the bucket name in the repository URL; `sitekeep init` creates the bucket for a new repository",
            cause: err,
          },
        );
      case "PermanentRedirect":
      case "AuthorizationHeaderMalformed":
      case "IllegalLocationConstraintException":
        return new SitekeepError(
          "backend.s3.region",
          `the bucket ${this.bucket} is not in region ${this.region} (while ${what})`,
          {
            hint: "set AWS_REGION (or AWS_DEFAULT_REGION) to the bucket's region",
            cause: err,
          },
        );
    }
    if (status === 301) {
      return new SitekeepError(
        "backend.s3.region",
        `the bucket ${this.bucket} is not in region ${this.region} (while ${what})`,
        {
          hint: "set AWS_REGION (or AWS_DEFAULT_REGION) to the bucket's region",
          cause: err,
        },
      );
    }
    if (name === "AccessDenied" || name === "AllAccessDisabled" || status === 403) {
      return new SitekeepError("backend.s3.denied", `access denied by the S3 server while ${what} in ${at}`, {
        hint: "check the credentials, and that their policy allows listing the bucket and reading, writing and deleting objects under the prefix",
        cause: err,
      });
    }
    if (name === "NoSuchKey" || name === "NotFound" || status === 404) {
      return new SitekeepError("backend.missing", `${what}: file not found in ${at}`, { cause: err });
    }
    const detail = status ? `${name} (HTTP ${status})` : name;
    return new SitekeepError(
      "backend.s3.error",
      `S3 error while ${what} in ${at}: ${detail}: ${errorMessage(err)}`,
      {
        hint:
          status !== undefined && status >= 500 ? "the server failed repeatedly; try again later" : undefined,
        cause: err,
      },
    );
  }
}

const CONFIG: Handle = { type: "config", name: "config" };

function errName(err: unknown): string {
  if (err && typeof err === "object") {
    const e = err as { name?: unknown; Code?: unknown };
    if (typeof e.Code === "string" && e.Code) return e.Code;
    if (typeof e.name === "string") return e.name;
  }
  return "Error";
}

function httpStatus(err: unknown): number | undefined {
  const s = (err as { $metadata?: { httpStatusCode?: unknown } } | undefined)?.$metadata?.httpStatusCode;
  return typeof s === "number" ? s : undefined;
}

function isNotFound(err: unknown): boolean {
  const n = errName(err);
  return n === "NotFound" || n === "NoSuchKey" || n === "NoSuchBucket" || httpStatus(err) === 404;
}

const NETWORK_CODES: Record<string, string> = {
  ECONNREFUSED: "connection refused",
  ENOTFOUND: "host not found",
  EAI_AGAIN: "host name lookup failed",
  ETIMEDOUT: "timed out",
  ECONNRESET: "connection reset",
  ECONNABORTED: "connection aborted",
  EHOSTUNREACH: "host unreachable",
  ENETUNREACH: "network unreachable",
  EPIPE: "connection closed",
};

/** A description of a connection-level failure (from the error, its causes or an AggregateError). */
function networkCode(err: unknown, depth = 0): string | undefined {
  if (!err || typeof err !== "object" || depth > 4) return undefined;
  const e = err as { code?: unknown; name?: unknown; cause?: unknown; errors?: unknown; $metadata?: unknown };
  if (typeof e.code === "string" && e.code in NETWORK_CODES) return NETWORK_CODES[e.code];
  if (e.name === "TimeoutError" && !(e.$metadata as { httpStatusCode?: number } | undefined)?.httpStatusCode)
    return "timed out";
  if (Array.isArray(e.errors)) {
    for (const sub of e.errors) {
      const c = networkCode(sub, depth + 1);
      if (c) return c;
    }
  }
  return networkCode(e.cause, depth + 1);
}

function tlsProblem(err: unknown): boolean {
  const code = (err as { code?: unknown } | undefined)?.code;
  return typeof code === "string" && /CERT|SSL|TLS|SELF_SIGNED|UNABLE_TO_VERIFY/.test(code);
}

function isTransient(err: unknown): boolean {
  if (networkCode(err)) return true;
  const code = (err as { code?: unknown } | undefined)?.code;
  return (
    code === "ERR_STREAM_PREMATURE_CLOSE" || /aborted|premature close|socket hang up/i.test(errorMessage(err))
  );
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
