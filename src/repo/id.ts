// IDs are SHA-256 digests: of a blob's plaintext, or of a file's stored bytes (its name).
import { createHash, webcrypto } from "node:crypto";
import { nativeAddon } from "../platform/native.js";
import { asBuffer } from "../util/bytes.js";

export const ID_SIZE = 32;

export function sha256(data: Uint8Array): Buffer {
  return createHash("sha256").update(data).digest();
}

/** The SHA-256 of `text`'s UTF-8 bytes, without a Buffer of them. */
export function sha256Text(text: string): Buffer {
  return createHash("sha256").update(text, "utf8").digest();
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

/** A SHA-256 fed piece by piece: a pack streamed to its file is named by the hash of all of it. */
export interface Sha256Stream {
  /** Adds `data`. One call at a time; `data` must not change until it settles. */
  update(data: Uint8Array): Promise<void>;
  /** The digest of everything added, as hex; the stream takes nothing more afterwards. */
  digestHex(): string;
}

/** On the thread pool with the addon (native/sitekeep_codec.c), else node:crypto on this thread. */
export function sha256Stream(): Sha256Stream {
  const a = nativeAddon;
  if (a?.sha256Begin && a.sha256UpdateAsync && a.sha256End) {
    const h = a.sha256Begin();
    return {
      update: (data) => a.sha256UpdateAsync!(h, asBuffer(data)),
      digestHex: () => a.sha256End!(h).toString("hex"),
    };
  }
  const h = createHash("sha256");
  return {
    update: async (data) => {
      h.update(data);
    },
    digestHex: () => h.digest("hex"),
  };
}

const HEX64 = /^[0-9a-f]{64}$/;

export function isIdHex(s: string): boolean {
  return HEX64.test(s);
}

export function shortId(id: string): string {
  return id.slice(0, 8);
}
