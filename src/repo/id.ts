// IDs are SHA-256 digests: of a blob's plaintext, or of a file's stored bytes (its name).
import { createHash, webcrypto } from "node:crypto";

export const ID_SIZE = 32;

export function sha256(data: Uint8Array): Buffer {
  return createHash("sha256").update(data).digest();
}

export function hashHex(data: Uint8Array): string {
  return createHash("sha256").update(data).digest("hex");
}

/** sha256 on libuv's thread pool (WebCrypto). */
export async function sha256Async(data: Uint8Array): Promise<Buffer> {
  return Buffer.from(await webcrypto.subtle.digest("SHA-256", data));
}

/** hashHex on libuv's thread pool (WebCrypto), for whole pack files. */
export async function hashHexAsync(data: Uint8Array): Promise<string> {
  return Buffer.from(await webcrypto.subtle.digest("SHA-256", data)).toString("hex");
}

const HEX64 = /^[0-9a-f]{64}$/;

export function isIdHex(s: string): boolean {
  return HEX64.test(s);
}

export function shortId(id: string): string {
  return id.slice(0, 8);
}
