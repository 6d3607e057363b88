// Key files (keys/<id>): the repository's master key wrapped with a key derived from a password by
// scrypt. Several key files (passwords) can unlock the same master key. Stored as plain JSON.
import { randomBytes, scrypt as scryptCb } from "node:crypto";
import { hostname, userInfo } from "node:os";
import { promisify } from "node:util";
import type { Backend } from "../backend/backend.js";
import { ExitCode, SitekeepError } from "../errors.js";
import { formatDate } from "../util/gotime.js";
import { type MasterKey, keyFromJSON, keyFromKdf, keyToJSON, open, seal, verifies } from "./crypto.js";
import { hashHex } from "./id.js";

const scrypt = promisify(scryptCb) as (
  password: string | Buffer,
  salt: Buffer,
  keylen: number,
  options: { N: number; r: number; p: number; maxmem: number },
) => Promise<Buffer>;

export interface KeyFileJSON {
  created: string;
  username: string;
  hostname: string;
  kdf: string;
  N: number;
  r: number;
  p: number;
  salt: string;
  data: string;
}

export interface KdfParams {
  N: number;
  r: number;
  p: number;
}

/** scrypt cost for new keys: restic's usual N with p=1, about 0.1 s here. Tests may lower it. */
export function defaultKdfParams(): KdfParams {
  const n = Number(process.env.SITEKEEP_SCRYPT_N ?? "32768");
  return { N: Number.isInteger(n) && n >= 1024 ? n : 32768, r: 8, p: 1 };
}

async function deriveKey(password: string, salt: Buffer, params: KdfParams): Promise<MasterKey> {
  const maxmem = 256 * params.N * params.r + 16 * 1024 * 1024;
  const derived = await scrypt(Buffer.from(password, "utf8"), salt, 64, { ...params, maxmem });
  return keyFromKdf(derived);
}

export interface StoredKey {
  id: string;
  file: KeyFileJSON;
}

/** Wraps the master key with a new password and stores it; returns the key file's ID. */
export async function addKey(
  backend: Backend,
  master: MasterKey,
  password: string,
  opts: { params?: KdfParams; username?: string; hostname?: string } = {},
): Promise<string> {
  const params = opts.params ?? defaultKdfParams();
  const salt = randomBytes(64);
  const wrap = await deriveKey(password, salt, params);
  const file: KeyFileJSON = {
    created: formatDate(new Date()),
    username: opts.username ?? safeUsername(),
    hostname: opts.hostname ?? hostname(),
    kdf: "scrypt",
    N: params.N,
    r: params.r,
    p: params.p,
    salt: salt.toString("base64"),
    data: seal(wrap, Buffer.from(JSON.stringify(keyToJSON(master)))).toString("base64"),
  };
  const bytes = Buffer.from(JSON.stringify(file));
  const id = hashHex(bytes);
  await backend.save({ type: "keys", name: id }, bytes);
  return id;
}

export async function listKeys(backend: Backend): Promise<StoredKey[]> {
  const keys: StoredKey[] = [];
  for await (const fi of backend.list("keys")) {
    const raw = await backend.load({ type: "keys", name: fi.name });
    try {
      keys.push({ id: fi.name, file: JSON.parse(raw.toString("utf8")) as KeyFileJSON });
    } catch {
      // A damaged key file cannot unlock anything; the others may.
    }
  }
  return keys;
}

/** A repository's master key, unlocked with a password, and the key file that unlocked it. */
export interface UnlockedKey {
  master: MasterKey;
  keyId: string;
}

/** Tries the password against every key file (a hinted one first); returns the master key and the key used. */
export async function openWithPassword(backend: Backend, password: string, hint?: string): Promise<UnlockedKey> {
  const keys = await listKeys(backend);
  if (keys.length === 0) {
    throw new SitekeepError("repo.nokeys", `repository at ${backend.location} has no key files`, {
      hint: "the keys/ folder is empty or unreadable; restore it from a copy of the repository",
    });
  }
  keys.sort((a, b) => Number(b.id.startsWith(hint ?? "\0")) - Number(a.id.startsWith(hint ?? "\0")));
  for (const k of keys) {
    if (k.file.kdf !== "scrypt") continue;
    const wrap = await deriveKey(password, Buffer.from(k.file.salt, "base64"), k.file);
    const data = Buffer.from(k.file.data, "base64");
    if (!verifies(wrap, data)) continue;
    const master = keyFromJSON(JSON.parse(open(wrap, data).toString("utf8")));
    return { master, keyId: k.id };
  }
  throw new SitekeepError("repo.password", "wrong password or no key found", {
    hint: "check SITEKEEP_PASSWORD, --password-file or --password-command",
    exitCode: ExitCode.wrongPassword,
  });
}

function safeUsername(): string {
  try {
    return userInfo().username;
  } catch {
    return "";
  }
}
