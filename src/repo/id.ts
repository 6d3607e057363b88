// IDs are SHA-256 digests: of a blob's plaintext, or of a file's stored bytes (its name).
import { createHash, webcrypto } from "node:crypto";
import { nativeAddon } from "../platform/native.js";
import { asBuffer } from "../util/bytes.js";

export const ID_SIZE = 32;

export function sha256(data: Uint8Array): Buffer {
  return createHash("sha256").update(data).digest();
}

export function hashHex(data: Uint8Array): string {
  return createHash("sha256").update(data).digest("hex");
}

const nativeSha256 = nativeAddon?.sha256;

/**
 * sha256 on libuv's thread pool: the native addon's where it is built (it reads `data` in place;
 * WebCrypto copies it on this thread first). `data` must not change until the promise settles.
 */
export async function sha256Async(data: Uint8Array): Promise<Buffer> {
  if (nativeSha256) return nativeSha256(asBuffer(data));
  return Buffer.from(await webcrypto.subtle.digest("SHA-256", data));
}

/** hashHex on libuv's thread pool (see sha256Async), for whole pack files. */
export async function hashHexAsync(data: Uint8Array): Promise<string> {
  return (await sha256Async(data)).toString("hex");
}

const HEX64 = /^[0-9a-f]{64}$/;

export function isIdHex(s: string): boolean {
  return HEX64.test(s);
}

export function shortId(id: string): string {
  return id.slice(0, 8);
}
