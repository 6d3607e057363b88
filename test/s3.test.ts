// A repository in an S3 bucket (s3rver standing in for the server): the CLI round trip, restic 0.14
// reading the same bucket, the exact object layout, range reads, and clear errors for wrong
// credentials, a closed port, missing credentials and a missing repository.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { promises as fsp } from "node:fs";
import { createServer } from "node:net";
import http from "node:http";
import { createRequire } from "node:module";
import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { dirname, join } from "node:path";
import { describeRun, runRestic, runSitekeep, tempDir, type RunResult, type TempDir } from "./helpers/run.js";
import { compareTrees } from "./helpers/compare.js";
import { S3Backend, parseS3Url } from "../src/backend/s3.js";
import { SitekeepError } from "../src/errors.js";

const BUCKET = "sitekeep-test";
const SECRET = "S3RVER";

let tmp: TempDir;
let server: ChildProcess | undefined;
let endpoint: string;
let env: Record<string, string | undefined>;
let src: string;

before(async () => {
  tmp = await tempDir("s3");
  const port = await startS3rver(join(tmp.path, "s3rver"));
  endpoint = `http://127.0.0.1:${port}`;
  env = {
    SITEKEEP_PASSWORD: "pw-s3",
    RESTIC_PASSWORD: "pw-s3",
    SITEKEEP_CACHE_DIR: join(tmp.path, "cache"),
    HOME: tmp.path,
    SITEKEEP_SCRYPT_N: "1024",
    AWS_ACCESS_KEY_ID: SECRET,
    AWS_SECRET_ACCESS_KEY: SECRET,
    AWS_SESSION_TOKEN: undefined,
    AWS_PROFILE: undefined,
    AWS_REGION: undefined,
    AWS_DEFAULT_REGION: undefined,
    AWS_CONFIG_FILE: join(tmp.path, "no-aws-config"),
    AWS_SHARED_CREDENTIALS_FILE: join(tmp.path, "no-aws-credentials"),
    AWS_EC2_METADATA_DISABLED: "true",
  };
  src = join(tmp.path, "src");
  await fsp.mkdir(join(src, "sub", "deeper"), { recursive: true });
  for (let i = 0; i < 12; i++) await fsp.writeFile(join(src, `f${i}.dat`), randomBytes(20_000 + i * 3000));
  await fsp.writeFile(join(src, "big.bin"), randomBytes(3 * 1024 * 1024 + 12345));
  await fsp.writeFile(join(src, "sub", "deeper", "note.txt"), "hello from S3\n");
  await fsp.symlink("note.txt", join(src, "sub", "deeper", "link"));
});

after(async () => {
  if (server && server.exitCode === null) {
    const exited = new Promise((r) => server!.once("exit", r));
    server.kill();
    await exited;
  }
  await tmp?.cleanup();
});

function ok(r: RunResult): RunResult {
  assert.equal(r.code, 0, describeRun(r));
  return r;
}

function repoUrl(prefix: string): string {
  return `s3:${endpoint}/${BUCKET}/${prefix}`;
}

/** A backend in this process, with the test credentials. */
async function withBackend<T>(url: string, fn: (b: S3Backend) => Promise<T>): Promise<T> {
  const saved = { id: process.env.AWS_ACCESS_KEY_ID, secret: process.env.AWS_SECRET_ACCESS_KEY };
  process.env.AWS_ACCESS_KEY_ID = SECRET;
  process.env.AWS_SECRET_ACCESS_KEY = SECRET;
  const b = new S3Backend(url, { region: "us-east-1", maxAttempts: 2 });
  try {
    return await fn(b);
  } finally {
    await b.close();
    process.env.AWS_ACCESS_KEY_ID = saved.id;
    process.env.AWS_SECRET_ACCESS_KEY = saved.secret;
  }
}

/** All object keys in the bucket under a prefix, via the SDK. */
async function listKeys(prefix: string): Promise<Map<string, number>> {
  const { S3Client, ListObjectsV2Command } = await import("@aws-sdk/client-s3");
  const client = new S3Client({
    endpoint,
    region: "us-east-1",
    forcePathStyle: true,
    credentials: { accessKeyId: SECRET, secretAccessKey: SECRET },
  });
  const keys = new Map<string, number>();
  let token: string | undefined;
  try {
    do {
      const r = await client.send(
        new ListObjectsV2Command({ Bucket: BUCKET, Prefix: prefix, ContinuationToken: token }),
      );
      for (const o of r.Contents ?? []) keys.set(o.Key!, o.Size ?? 0);
      token = r.IsTruncated ? r.NextContinuationToken : undefined;
    } while (token);
  } finally {
    client.destroy();
  }
  return keys;
}

/** Copies every object under `prefix` into `dir` at the same relative path. */
async function download(prefix: string, dir: string): Promise<void> {
  const { S3Client, GetObjectCommand } = await import("@aws-sdk/client-s3");
  const client = new S3Client({
    endpoint,
    region: "us-east-1",
    forcePathStyle: true,
    credentials: { accessKeyId: SECRET, secretAccessKey: SECRET },
    responseChecksumValidation: "WHEN_REQUIRED",
  });
  try {
    for (const key of (await listKeys(prefix)).keys()) {
      const r = await client.send(new GetObjectCommand({ Bucket: BUCKET, Key: key }));
      const file = join(dir, key.slice(prefix.length));
      await fsp.mkdir(dirname(file), { recursive: true });
      await fsp.writeFile(file, await r.Body!.transformToByteArray());
    }
  } finally {
    client.destroy();
  }
}

test("URLs: http(s) endpoints with port and prefix, bare hosts mean HTTPS, no credentials in URLs", () => {
  assert.deepEqual(parseS3Url("s3:http://127.0.0.1:9000/bkt/a/b/"), {
    endpoint: "http://127.0.0.1:9000",
    bucket: "bkt",
    prefix: "a/b",
    aws: false,
  });
  assert.deepEqual(parseS3Url("s3:s3.amazonaws.com/my-bucket/restic"), {
    endpoint: "https://s3.amazonaws.com",
    bucket: "my-bucket",
    prefix: "restic",
    aws: true,
  });
  assert.deepEqual(parseS3Url("s3:https://minio.example.org/bkt"), {
    endpoint: "https://minio.example.org",
    bucket: "bkt",
    prefix: "",
    aws: false,
  });
  assert.throws(
    () => parseS3Url("s3:http://user:topsecret@host/bkt"),
    (e: unknown) =>
      e instanceof SitekeepError && e.code === "backend.s3.url" && !e.message.includes("topsecret"),
  );
  assert.throws(() => parseS3Url("s3:http://host"), /names no bucket/);
  assert.throws(() => parseS3Url("s3:http://host/B_ad"), /invalid S3 bucket name/);
  const b = new S3Backend("s3:http://127.0.0.1:9000/bkt/pre/fix");
  assert.equal(b.location, "s3:http://127.0.0.1:9000/bkt/pre/fix");
  const id = "ab".padEnd(64, "0");
  assert.equal(b.key({ type: "data", name: id }), `pre/fix/data/ab/${id}`);
  assert.equal(b.key({ type: "keys", name: id }), `pre/fix/keys/${id}`);
  assert.equal(b.key({ type: "config", name: "config" }), "pre/fix/config");
  assert.equal(
    new S3Backend("s3:http://127.0.0.1:9000/bkt").key({ type: "config", name: "config" }),
    "config",
  );
});

test("init, backup, snapshots, restore and check --read-data through s3:, laid out as restic's S3 backend", async () => {
  const repo = repoUrl("repo");
  const init = ok(await runSitekeep(["-r", repo, "init"], { env })); // also creates the bucket
  assert.match(init.stdout, new RegExp(`at ${repo.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}`));
  ok(await runSitekeep(["-r", repo, "--pack-size", "1", "backup", src], { env }));
  const snaps = JSON.parse(
    ok(await runSitekeep(["-r", repo, "snapshots", "--json"], { env })).stdout,
  ) as unknown[];
  assert.equal(snaps.length, 1);

  const target = join(tmp.path, "restore-sitekeep");
  ok(await runSitekeep(["-r", repo, "restore", "latest", "--target", target], { env }));
  assert.deepEqual(await compareTrees(src, join(target, src)), []);
  ok(await runSitekeep(["-r", repo, "check", "--read-data"], { env }));

  // The object layout of restic's S3 backend ("default" layout, data in data/xx/ folders).
  const keys = await listKeys("repo/");
  const counts = new Map<string, number>();
  for (const key of keys.keys()) {
    const m =
      /^repo\/(?:(config)|(keys|snapshots|index|locks)\/[0-9a-f]{64}|(data)\/([0-9a-f]{2})\/([0-9a-f]{64}))$/.exec(
        key,
      );
    assert.ok(m, `unexpected object ${key}`);
    if (m[5]) assert.equal(m[5].slice(0, 2), m[4], key);
    const kind = m[1] ?? m[2] ?? m[3];
    counts.set(kind, (counts.get(kind) ?? 0) + 1);
  }
  assert.equal(counts.get("config"), 1);
  assert.equal(counts.get("keys"), 1);
  assert.equal(counts.get("snapshots"), 1);
  assert.equal(counts.get("locks") ?? 0, 0, "no lock left behind");
  assert.ok((counts.get("data") ?? 0) >= 3, `expected several packs, got ${counts.get("data")}`);

  // A second backup of the same tree stores (almost) nothing.
  ok(await runSitekeep(["-r", repo, "--pack-size", "1", "backup", src], { env }));
  assert.equal(
    (JSON.parse(ok(await runSitekeep(["-r", repo, "snapshots", "--json"], { env })).stdout) as unknown[])
      .length,
    2,
  );
});

test("restic 0.14 checks and restores the repository straight from the S3 server", async () => {
  const repo = repoUrl("repo-restic");
  ok(await runSitekeep(["-r", repo, "init"], { env }));
  ok(await runSitekeep(["-r", repo, "--pack-size", "1", "backup", src], { env }));
  const check = await runRestic(["-r", repo, "check", "--read-data"], { env });
  if (check.code !== 0) {
    // restic could not use the server directly: at least prove the objects form a restic repository.
    const local = join(tmp.path, "downloaded");
    await download("repo-restic/", local);
    ok(await runRestic(["-r", local, "check", "--read-data"], { env }));
    assert.fail(
      `restic could not read the repository from s3rver directly (the downloaded copy checks): ${describeRun(check)}`,
    );
  }
  assert.match(check.stdout, /no errors were found/);
  const target = join(tmp.path, "restore-restic");
  ok(await runRestic(["-r", repo, "restore", "latest", "--target", target], { env }));
  assert.deepEqual(await compareTrees(src, join(target, src), { sparse: false }), []);
});

test("backend: ranges (incl. suffix ranges), never overwriting config/keys, listing, stat and remove", async () => {
  await withBackend(repoUrl("unit"), async (b) => {
    await b.create();
    const data = randomBytes(5000);
    const id = "0f".padEnd(64, "1");
    await b.save({ type: "data", name: id }, data);
    const h = { type: "data" as const, name: id };
    assert.deepEqual(await b.load(h), data);
    assert.deepEqual(await b.load(h, 100, 50), data.subarray(100, 150));
    assert.deepEqual(await b.load(h, 0, 1), data.subarray(0, 1));
    assert.deepEqual(await b.load(h, 4990), data.subarray(4990));
    assert.deepEqual(await b.load(h, -16), data.subarray(-16));
    assert.deepEqual(await b.load(h, -16, 4), data.subarray(4984, 4988));
    assert.deepEqual(await b.load(h, -6000), data, "a suffix longer than the file is the whole file");
    assert.deepEqual(await b.load(h, 4990, 100), data.subarray(4990), "a read past the end is short");
    assert.equal((await b.load(h, 6000, 10)).length, 0);
    assert.equal((await b.stat(h)).size, 5000);

    await b.save({ type: "config", name: "config" }, Buffer.from("one"));
    await assert.rejects(
      b.save({ type: "config", name: "config" }, Buffer.from("two")),
      (e: unknown) => e instanceof SitekeepError && e.code === "backend.exists",
    );
    assert.equal((await b.load({ type: "config", name: "config" })).toString(), "one");
    assert.equal(await b.exists(), true);
    assert.equal(await b.hasContent(), true);

    const lockIds = Array.from({ length: 5 }, (_, i) => i.toString(16).padStart(64, "a"));
    for (const l of lockIds) await b.save({ type: "locks", name: l }, Buffer.from(l));
    assert.deepEqual((await collect(b.list("locks"))).map((f) => f.name).sort(), lockIds);
    assert.deepEqual(await collect(b.list("data")), [{ name: id, size: 5000 }]);
    assert.deepEqual(await collect(b.list("config")), [{ name: "config", size: 3 }]);
    for (const l of lockIds) await b.remove({ type: "locks", name: l });
    // Listing goes on past the server's page size (1000 keys).
    const many = Array.from({ length: 1003 }, (_, i) => i.toString(16).padStart(8, "0").padStart(64, "c"));
    for (let i = 0; i < many.length; i += 50) {
      await Promise.all(
        many.slice(i, i + 50).map((n) => b.save({ type: "index", name: n }, Buffer.from("x"))),
      );
    }
    assert.equal((await collect(b.list("index"))).length, 1003);
    await b.remove({ type: "locks", name: lockIds[0] }); // removing twice is fine
    assert.deepEqual(await collect(b.list("locks")), []);
    await assert.rejects(
      b.stat({ type: "locks", name: lockIds[0] }),
      (e: unknown) => e instanceof SitekeepError && e.code === "backend.missing",
    );
    await assert.rejects(
      b.load({ type: "locks", name: lockIds[0] }),
      (e: unknown) => e instanceof SitekeepError && e.code === "backend.missing",
    );
  });
  await withBackend(repoUrl("nothing-here"), async (b) => {
    assert.equal(await b.exists(), false);
    assert.equal(await b.hasContent(), false);
    assert.deepEqual(await collect(b.list("snapshots")), []);
  });
});

test("wrong credentials: a clear message, exit 1, no secret in it", async () => {
  const r = await runSitekeep(["-r", repoUrl("repo"), "snapshots"], {
    env: { ...env, AWS_ACCESS_KEY_ID: "WRONGKEY", AWS_SECRET_ACCESS_KEY: "wrong-secret-value" },
  });
  assert.equal(r.code, 1, describeRun(r));
  assert.match(r.stderr, /does not know the access key|rejected the request signature|access denied/);
  assert.match(r.stderr, /AWS_ACCESS_KEY_ID|AWS_SECRET_ACCESS_KEY|credentials/);
  assert.doesNotMatch(r.stderr, /wrong-secret-value/);
  // (s3rver does not verify V4 signatures, so a wrong secret with a known key cannot be shown here.)
});

test("no credentials at all: says which variables to set", async () => {
  const r = await runSitekeep(["-r", repoUrl("repo"), "snapshots"], {
    env: { ...env, AWS_ACCESS_KEY_ID: undefined, AWS_SECRET_ACCESS_KEY: undefined },
  });
  assert.equal(r.code, 1, describeRun(r));
  assert.match(r.stderr, /no S3 credentials found.*AWS_ACCESS_KEY_ID/);
});

test("an unreachable endpoint fails fast with a message naming it", async () => {
  const port = await closedPort();
  const started = Date.now();
  const r = await runSitekeep(["-r", `s3:http://127.0.0.1:${port}/${BUCKET}/repo`, "snapshots"], {
    env: { ...env, SITEKEEP_S3_MAX_ATTEMPTS: "2" },
    timeoutMs: 30_000,
  });
  assert.equal(r.code, 1, describeRun(r));
  assert.match(
    r.stderr,
    new RegExp(`cannot reach the S3 endpoint http://127\\.0\\.0\\.1:${port}\\b.*connection refused`),
  );
  assert.ok(Date.now() - started < 15_000, `took ${Date.now() - started} ms`);
});

test("a missing repository or bucket: exit 10 and the usual message", async () => {
  const r = await runSitekeep(["-r", repoUrl("never-initialised"), "snapshots"], { env });
  assert.equal(r.code, 10, describeRun(r));
  assert.match(r.stderr, /no repository at s3:http/);
  const nb = await runSitekeep(["-r", `s3:${endpoint}/no-such-bucket/repo`, "snapshots"], { env });
  assert.equal(nb.code, 10, describeRun(nb));
});

test("Object Lock: every file but locks is written with a retention and Content-MD5; a bucket without Object Lock is refused before anything is written", async (t) => {
  // s3rver has no Object Lock. A recording proxy in front of it shows what goes over the wire,
  // and answers the bucket's Object Lock configuration as a bucket created with it would (or,
  // later, as one without it). Everything else reaches s3rver unchanged (signatures included).
  const s3port = Number(new URL(endpoint).port);
  const puts: { path: string; query: URLSearchParams; headers: http.IncomingHttpHeaders }[] = [];
  let lockEnabled = true;
  const proxy = http.createServer((req, res) => {
    const url = new URL(req.url ?? "/", "http://proxy");
    if (req.method === "GET" && url.searchParams.has("object-lock")) {
      res.writeHead(lockEnabled ? 200 : 404, { "content-type": "application/xml" });
      res.end(
        lockEnabled
          ? '<?xml version="1.0" encoding="UTF-8"?><ObjectLockConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><ObjectLockEnabled>Enabled</ObjectLockEnabled></ObjectLockConfiguration>'
          : '<?xml version="1.0" encoding="UTF-8"?><Error><Code>ObjectLockConfigurationNotFoundError</Code><Message>Object Lock configuration does not exist for this bucket</Message></Error>',
      );
      return;
    }
    if (req.method === "PUT" || (req.method === "POST" && url.searchParams.has("uploads"))) puts.push({ path: url.pathname, query: url.searchParams, headers: req.headers });
    const up = http.request({ host: "127.0.0.1", port: s3port, method: req.method, path: req.url, headers: req.headers }, (ur) => {
      res.writeHead(ur.statusCode ?? 502, ur.headers);
      ur.pipe(res);
    });
    up.on("error", () => res.destroy());
    req.pipe(up);
  });
  await new Promise<void>((r) => proxy.listen(0, "127.0.0.1", r));
  t.after(() => new Promise<void>((r) => proxy.close(() => r())));
  const proxied = (prefix: string): string => `s3:http://127.0.0.1:${(proxy.address() as { port: number }).port}/${BUCKET}/${prefix}`;
  const lockEnv = { ...env, SITEKEEP_S3_OBJECT_LOCK: "governance:30", SITEKEEP_S3_MULTIPART_MIB: "2", SITEKEEP_S3_PART_MIB: "5" };

  const started = Date.now();
  ok(await runSitekeep(["-r", proxied("locked"), "init"], { env: lockEnv }));
  ok(await runSitekeep(["-r", proxied("locked"), "backup", src], { env: lockEnv }));
  const kinds = new Set<string>();
  let multipart = false;
  for (const p of puts) {
    const rel = p.path.slice(`/${BUCKET}/locked/`.length);
    const kind = rel.split("/")[0];
    if (p.headers["x-amz-copy-source"] || !rel) continue;
    kinds.add(kind);
    if (kind === "locks") {
      assert.equal(p.headers["x-amz-object-lock-mode"], undefined, `a lock file must stay removable: ${rel}`);
      continue;
    }
    if (p.query.has("uploads") || !p.query.has("partNumber")) {
      // A single PUT, or the start of a multipart upload: the retention is set here.
      assert.equal(p.headers["x-amz-object-lock-mode"], "GOVERNANCE", `${rel} has a retention mode`);
      const until = Date.parse(String(p.headers["x-amz-object-lock-retain-until-date"]));
      assert.ok(Math.abs(until - (started + 30 * 86_400_000)) < 3_600_000, `${rel} is kept for 30 days: ${String(p.headers["x-amz-object-lock-retain-until-date"])}`);
      if (p.query.has("uploads")) multipart = true;
    }
    // S3 refuses a body for a locked object without an integrity header.
    if (!p.query.has("uploads")) assert.ok(p.headers["content-md5"], `${rel}: S3 needs Content-MD5 with Object Lock`);
  }
  for (const k of ["config", "keys", "data", "index", "snapshots", "locks"]) assert.ok(kinds.has(k), `a ${k} object was written (${[...kinds].join(", ")})`);
  assert.ok(multipart, "a pack went up in parts (the 3 MiB file makes packs above the 2 MiB threshold)");
  // What s3rver stored is a whole repository.
  ok(await runRestic(["-r", repoUrl("locked"), "check", "--read-data"], { env }));

  // A bucket without Object Lock: refused with the reason, and nothing is written.
  lockEnabled = false;
  const refused = await runSitekeep(["-r", proxied("not-locked"), "init"], { env: lockEnv });
  assert.notEqual(refused.code, 0, describeRun(refused));
  assert.match(refused.stderr, /does not have Object Lock enabled/);
  assert.match(refused.stderr, /create the bucket with Object Lock enabled/);
  assert.equal((await listKeys("not-locked/")).size, 0, "nothing was written");
});

/**
 * Runs s3rver in a child process with OpenSSL's legacy provider: s3rver makes its list continuation
 * tokens with DES, which OpenSSL 3 refuses, so every truncated listing would fail in this process.
 * It also walks its folders in directory order, not key order, so listings past the first page skip
 * keys; sorted readdir results make its pages correct.
 */
async function startS3rver(dir: string): Promise<number> {
  const script = `
    const fs = require("fs");
    const readdirSync = fs.readdirSync;
    fs.readdirSync = (...args) => {
      const names = readdirSync(...args);
      return names.every((n) => typeof n === "string") ? names.sort() : names;
    };
    const S3rver = require(${JSON.stringify(createRequire(import.meta.url).resolve("s3rver"))});
    const s = new S3rver({ address: "127.0.0.1", port: 0, silent: !process.env.S3RVER_LOG, directory: ${JSON.stringify(dir)} });
    s.run().then(({ port }) => process.stdout.write(port + "\\n"));
    process.on("SIGTERM", () => s.close().then(() => process.exit(0)));
  `;
  server = spawn(process.execPath, ["--openssl-legacy-provider", "-e", script], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  return new Promise((resolve, reject) => {
    let out = "";
    server!.stdout!.on("data", (d: Buffer) => {
      out += d.toString();
      const m = /^(\d+)\n/.exec(out);
      if (m) resolve(Number(m[1]));
    });
    server!.once("exit", (code) => reject(new Error(`s3rver exited with ${code} before listening`)));
  });
}

async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}

/** A port nothing listens on (bound, then released). */
function closedPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });
}

test("the site task backs up to an S3 destination (initialized on first use) and copies to a local second destination", async () => {
  const dest = repoUrl("site-PS3");
  const copy = join(tmp.path, "site-copy-ü");
  await fsp.mkdir(copy);
  const state = join(tmp.path, "site-state");
  const config = join(tmp.path, "site-s3.yaml");
  await fsp.writeFile(
    config,
    `site: PS3
backup:
  destination: ${dest}
  copyTo: [ ${JSON.stringify(copy)} ]
files:
  - { path: ${src} }
stateDir: ${state}
`,
  );
  const r = ok(await runSitekeep(["site", "backup", "--json", "--config", config], { env }));
  const sum = JSON.parse(r.stdout) as { message_id: number; snapshot_id: string; log: string; warnings: string[] };
  assert.equal(sum.message_id, 5035);
  assert.deepEqual(sum.warnings, []);
  // The run log of a remote destination lives in the state directory.
  assert.equal(sum.log, join(state, "logs", "PS3", "sitekeep.log"));
  assert.match(await fsp.readFile(sum.log, "utf8"), /STATMSG: ID=5035/);
  const listed = JSON.parse(ok(await runSitekeep(["-r", dest, "snapshots", "--json"], { env })).stdout) as { id: string; tags: string[] }[];
  assert.deepEqual(listed.map((s) => s.id), [sum.snapshot_id]);
  assert.ok(listed[0].tags.includes("site:PS3"));
  // The copy in the second destination (a folder with a non-ASCII name) restores identical.
  const target = join(tmp.path, "site-s3-restored");
  ok(await runSitekeep(["-r", copy, "restore", "latest", "--target", target], { env }));
  assert.deepEqual(await compareTrees(src, join(target, src)), []);
  ok(await runRestic(["-r", copy, "check", "--read-data"], { env: { ...env, RESTIC_PASSWORD: env.SITEKEEP_PASSWORD } }));
});

test("large packs are uploaded in parts; the result is a repository restic reads and Sitekeep restores", async () => {
  const repo = repoUrl("repo-multipart");
  const big = join(tmp.path, "multipart-src");
  await fsp.mkdir(big);
  await fsp.writeFile(join(big, "big.bin"), randomBytes(30 * 1024 * 1024 + 777));
  // Packs of ~16 MiB, uploaded in 5 MiB parts above an 8 MiB threshold.
  const mpEnv = { ...env, SITEKEEP_S3_MULTIPART_MIB: "8", SITEKEEP_S3_PART_MIB: "5" };
  ok(await runSitekeep(["-r", repo, "init"], { env: mpEnv }));
  ok(await runSitekeep(["-r", repo, "--pack-size", "16", "backup", big], { env: mpEnv }));
  const keys = await listKeys("repo-multipart/data/");
  const sizes = [...keys.values()];
  assert.ok(sizes.some((n) => n > 8 * 1024 * 1024), `a pack above the threshold: ${sizes.join(", ")}`);
  ok(await runRestic(["-r", repo, "check", "--read-data"], { env }));
  const target = join(tmp.path, "multipart-restored");
  ok(await runSitekeep(["-r", repo, "restore", "latest", "--target", target], { env }));
  assert.deepEqual(await compareTrees(big, join(target, big)), []);
});
