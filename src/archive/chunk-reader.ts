// Feeds a byte source through the content-defined chunker with one reusable buffer: the chunker
// needs `max` bytes of look-ahead, so the buffer holds two maximum chunks and slides.
import type { Chunker } from "../repo/chunker.js";

export type ReadFn = (buf: Buffer, offset: number, length: number) => Promise<number>;

/** Calls onChunk with each chunk (a view into the shared buffer, valid only until onChunk returns). */
export async function forEachChunk(
  chunker: Chunker,
  read: ReadFn,
  onChunk: (chunk: Buffer) => Promise<void>,
  buffer?: Buffer,
): Promise<number> {
  const max = chunker.options.max;
  // A smaller buffer may be passed for a file expected to be small; it grows if the file did.
  let buf = buffer ?? Buffer.allocUnsafe(2 * max);
  let start = 0;
  let end = 0;
  let eof = false;
  let total = 0;
  for (;;) {
    while (!eof && end - start < max) {
      if (start > 0 && buf.length - end < max) {
        buf.copyWithin(0, start, end);
        end -= start;
        start = 0;
      }
      if (end === buf.length) {
        const bigger = Buffer.allocUnsafe(Math.max(2 * max, buf.length * 2));
        buf.copy(bigger, 0, start, end);
        end -= start;
        start = 0;
        buf = bigger;
      }
      const n = await read(buf, end, buf.length - end);
      if (n === 0) eof = true;
      else end += n;
    }
    if (start === end) return total;
    const len = chunker.cut(buf, start, end, eof);
    const chunk = buf.subarray(start, start + len);
    start += len;
    total += len;
    await onChunk(chunk);
  }
}

/** Adapts a Node stream (a command's stdout) to a ReadFn without staging it on disk. */
export function streamReader(stream: AsyncIterable<Buffer>): ReadFn {
  const it = stream[Symbol.asyncIterator]();
  let pending: Buffer | undefined;
  return async (buf, offset, length) => {
    if (!pending || pending.length === 0) {
      const r = await it.next();
      if (r.done) return 0;
      pending = r.value;
    }
    const n = Math.min(length, pending.length);
    pending.copy(buf, offset, 0, n);
    pending = pending.subarray(n);
    return n;
  };
}
