// restic's authenticated encryption: AES-256-CTR with a random 16-byte IV, authenticated with
// Poly1305-AES over the ciphertext; the sealed form is IV || ciphertext || MAC.
// AES comes from node:crypto; Poly1305 from our addon (OpenSSL's, native/sitekeep_codec.c) or,
// without it, from libsodium (sodium-native), because a JS Poly1305 is several times slower and it
// sits on the hot path of every blob. sodium-native is loaded only then: its JavaScript wrapper
// and loader cost ~8 MiB of every command's RSS (bench/README.md, "Peak RSS").
import { type Cipher, createCipheriv, createDecipheriv, randomBytes, randomFillSync, timingSafeEqual, webcrypto } from "node:crypto";
import { createRequire } from "node:module";
import { SitekeepError } from "../errors.js";
import { nativeAddon } from "../platform/native.js";
import { asBuffer } from "../util/bytes.js";

export const IV_SIZE = 16;
export const MAC_SIZE = 16;
export const EXTENSION = IV_SIZE + MAC_SIZE;

export interface MasterKey {
  /** AES-256 key for the payload. */
  encrypt: Buffer;
  /** Poly1305-AES key part k: AES-128 key that turns the IV into the one-time pad s. */
  macK: Buffer;
  /** Poly1305-AES key part r (clamped by Poly1305 itself). */
  macR: Buffer;
}

export function newRandomKey(): MasterKey {
  const r = randomBytes(16);
  clampR(r);
  return { encrypt: randomBytes(32), macK: randomBytes(16), macR: r };
}

/** Poly1305's r must have certain bits cleared; restic stores r clamped, so we do too. */
function clampR(r: Buffer): void {
  r[3] &= 15;
  r[7] &= 15;
  r[11] &= 15;
  r[15] &= 15;
  r[4] &= 252;
  r[8] &= 252;
  r[12] &= 252;
}

/** The 64 bytes the addon takes for a key (AES key, then Poly1305-AES's k and r), made once per key. */
const keyBytesOf = new WeakMap<MasterKey, Buffer>();

export function keyBytes(key: MasterKey): Buffer {
  let b = keyBytesOf.get(key);
  if (!b) {
    b = Buffer.concat([key.encrypt, key.macK, key.macR]);
    keyBytesOf.set(key, b);
  }
  return b;
}

/** libsodium's Poly1305, loaded the first time it is needed (only without the addon). */
let sodium: { crypto_onetimeauth(out: Buffer, msg: Buffer, key: Buffer): void } | undefined;

/**
 * One AES-128-ECB cipher per MAC key, reused for every nonce: ECB keeps no state between blocks,
 * and creating a cipher object per blob cost more than the MAC of a small blob itself.
 */
const nonceCiphers = new WeakMap<MasterKey, Cipher>();

function poly1305Aes(key: MasterKey, iv: Uint8Array, msg: Uint8Array): Buffer {
  if (nativeAddon?.poly1305aes) return nativeAddon.poly1305aes(keyBytes(key), iv, msg);
  // s = AES-128_k(nonce); the Poly1305 one-time key is r || s.
  let aes = nonceCiphers.get(key);
  if (!aes) {
    aes = createCipheriv("aes-128-ecb", key.macK, null);
    aes.setAutoPadding(false);
    nonceCiphers.set(key, aes);
  }
  const s = aes.update(iv);
  const otk = Buffer.allocUnsafe(32);
  key.macR.copy(otk, 0);
  s.copy(otk, 16);
  const out = Buffer.allocUnsafe(MAC_SIZE);
  sodium ??= createRequire(import.meta.url)("sodium-native") as NonNullable<typeof sodium>;
  sodium.crypto_onetimeauth(out, asBuffer(msg), otk);
  return out;
}

/** Random IVs are drawn from the CSPRNG in batches: one call per blob cost microseconds each. */
const ivPool = Buffer.allocUnsafe(IV_SIZE * 256);
let ivNext = ivPool.length;

function nextIv(into: Buffer): void {
  if (ivNext === ivPool.length) {
    randomFillSync(ivPool);
    ivNext = 0;
  }
  ivPool.copy(into, 0, ivNext, ivNext + IV_SIZE);
  ivNext += IV_SIZE;
}

/** The error of a sealed blob shorter than its IV and MAC. */
export function tooShort(length: number): SitekeepError {
  return new SitekeepError("crypto.short", `ciphertext too short (${length} bytes)`);
}

/** The error of a MAC that does not match. */
export function macFailure(): SitekeepError {
  return new SitekeepError("crypto.mac", "ciphertext verification failed (wrong key or damaged data)");
}

/** Encrypts plaintext into IV || ciphertext || MAC. */
export function seal(key: MasterKey, plaintext: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(plaintext.length + EXTENSION);
  const iv = out.subarray(0, IV_SIZE);
  nextIv(iv);
  const cipher = createCipheriv("aes-256-ctr", key.encrypt, iv);
  const ct = out.subarray(IV_SIZE, IV_SIZE + plaintext.length);
  let off = 0;
  const a = cipher.update(plaintext);
  a.copy(ct, off);
  off += a.length;
  const b = cipher.final();
  b.copy(ct, off);
  poly1305Aes(key, iv, ct).copy(out, IV_SIZE + plaintext.length);
  return out;
}

/** AES-CTR keys for WebCrypto, whose calls run on libuv's thread pool. */
const ctrKeys = new WeakMap<MasterKey, Promise<webcrypto.CryptoKey>>();

function ctrKey(key: MasterKey): Promise<webcrypto.CryptoKey> {
  let k = ctrKeys.get(key);
  if (!k) {
    k = webcrypto.subtle.importKey("raw", key.encrypt, "AES-CTR", false, ["encrypt", "decrypt"]);
    ctrKeys.set(key, k);
  }
  return k;
}

/**
 * seal() with the AES-CTR pass on the thread pool (WebCrypto), for large blobs during a backup: the
 * main thread keeps only the Poly1305 MAC. A 128-bit counter is what restic (Go's cipher.NewCTR)
 * uses: the whole IV block counts up, big-endian.
 */
export async function sealAsync(key: MasterKey, plaintext: Uint8Array): Promise<Buffer> {
  const k = ctrKey(key);
  const iv = Buffer.allocUnsafe(IV_SIZE);
  nextIv(iv);
  const ct = new Uint8Array(await webcrypto.subtle.encrypt({ name: "AES-CTR", counter: iv, length: 128 }, await k, plaintext));
  const out = Buffer.allocUnsafe(ct.length + EXTENSION);
  iv.copy(out, 0);
  out.set(ct, IV_SIZE);
  poly1305Aes(key, iv, ct).copy(out, IV_SIZE + ct.length);
  return out;
}

/** open() with the AES-CTR pass on the thread pool (the MAC is checked first, on this thread). */
export async function openAsync(key: MasterKey, sealed: Uint8Array): Promise<Buffer> {
  if (sealed.length < EXTENSION) {
    throw tooShort(sealed.length);
  }
  const iv = sealed.subarray(0, IV_SIZE);
  const ct = sealed.subarray(IV_SIZE, sealed.length - MAC_SIZE);
  if (!timingSafeEqual(poly1305Aes(key, iv, ct), sealed.subarray(sealed.length - MAC_SIZE))) {
    throw macFailure();
  }
  return Buffer.from(await webcrypto.subtle.decrypt({ name: "AES-CTR", counter: iv, length: 128 }, await ctrKey(key), ct));
}

/** Verifies and decrypts IV || ciphertext || MAC; throws a `ciphertext verification failed` error. */
export function open(key: MasterKey, sealed: Uint8Array): Buffer {
  if (sealed.length < EXTENSION) {
    throw tooShort(sealed.length);
  }
  const iv = sealed.subarray(0, IV_SIZE);
  const ct = sealed.subarray(IV_SIZE, sealed.length - MAC_SIZE);
  const mac = sealed.subarray(sealed.length - MAC_SIZE);
  const expected = poly1305Aes(key, iv, ct);
  if (!timingSafeEqual(expected, mac)) {
    throw macFailure();
  }
  const decipher = createDecipheriv("aes-256-ctr", key.encrypt, iv);
  const a = decipher.update(ct);
  const b = decipher.final();
  return b.length === 0 ? a : Buffer.concat([a, b]);
}

/** True when the MAC matches: used by the key search, which must not throw per candidate. */
export function verifies(key: MasterKey, sealed: Uint8Array): boolean {
  if (sealed.length < EXTENSION) return false;
  const iv = sealed.subarray(0, IV_SIZE);
  const ct = sealed.subarray(IV_SIZE, sealed.length - MAC_SIZE);
  return timingSafeEqual(poly1305Aes(key, iv, ct), sealed.subarray(sealed.length - MAC_SIZE));
}

export function keyToJSON(key: MasterKey): { mac: { k: string; r: string }; encrypt: string } {
  return {
    mac: { k: key.macK.toString("base64"), r: key.macR.toString("base64") },
    encrypt: key.encrypt.toString("base64"),
  };
}

export function keyFromJSON(j: unknown): MasterKey {
  const o = j as { mac?: { k?: string; r?: string }; encrypt?: string };
  const encrypt = Buffer.from(o?.encrypt ?? "", "base64");
  const macK = Buffer.from(o?.mac?.k ?? "", "base64");
  const macR = Buffer.from(o?.mac?.r ?? "", "base64");
  if (encrypt.length !== 32 || macK.length !== 16 || macR.length !== 16) {
    throw new SitekeepError("crypto.badkey", "master key has an invalid format");
  }
  return { encrypt, macK, macR };
}

/** Splits a 64-byte scrypt output into the key that unwraps a key file, as restic does. */
export function keyFromKdf(derived: Buffer): MasterKey {
  return { encrypt: derived.subarray(0, 32), macK: derived.subarray(32, 48), macR: derived.subarray(48, 64) };
}
