// Byte views.

/** The same bytes as a Buffer: `u` itself when it is one, else a view of its memory (not a copy). */
export function asBuffer(u: Uint8Array): Buffer {
  return Buffer.isBuffer(u) ? u : Buffer.from(u.buffer, u.byteOffset, u.byteLength);
}
