// Feeds a byte source through the content-defined chunker with one reusable buffer. A chunk may
// need `max` bytes to be decided, so the buffer holds a maximum chunk and a little more: it is
// filled, every chunk that can be decided is cut and hashed in one call (on the thread pool:
// Chunker.cutAndHash), and the undecided rest (the bytes after the last boundary found, shorter
// than `max`) slides to the front.
import type { Chunker } from "../repo/chunker.js";

/**
 * Bytes read beyond a maximum chunk: each round reads at least this much, and usually ~8 MiB, as
 * every chunk whose boundary lies in the buffer is cut (until session 12 only those that left
 * `max` bytes behind them were: ~1 MiB a round, and 7-8 MiB moved to the front each time). Two
 * maximum chunks would read ~15 MiB a round for 7 MiB more per file being read; a round is a read
 * and a thread-pool call, ~300 for the 2 GB benchmark set.
 */
const READ_BEYOND_MAX = 1024 * 1024;

/** The size of a read buffer for a chunker whose chunks are at most `max` bytes. */
export function chunkBufferSize(max: number): number {
  return max + READ_BEYOND_MAX;
}

export type ReadFn = (buf: Buffer, offset: number, length: number) => Promise<number>;

/**
 * Keeps a chunk's bytes as they are beyond onChunk's return: the buffer is not written again
 * until `readDone` settles.
 */
export type HoldChunk = (readDone: Promise<unknown>) => void;

/**
 * Calls onChunk with each chunk and its SHA-256, in order. The chunk is a view into the shared
 * buffer, valid until onChunk returns, or until the promises given to `hold` settle: the chunk
 * can be compressed and sealed on the thread pool without a copy (a copy of every new chunk was a
 * tenth of the main thread's time in an initial backup). Returns the number of bytes read, once
 * every hold has settled (the caller may reuse `buffer` then).
 */
export async function forEachChunk(
  chunker: Chunker,
  read: ReadFn,
  onChunk: (chunk: Buffer, id: Buffer, hold: HoldChunk) => Promise<void>,
  buffer?: Buffer,
): Promise<number> {
  const max = chunker.options.max;
  // A smaller buffer may be passed for a file expected to be small; it grows if the file did.
  let buf = buffer ?? Buffer.allocUnsafe(chunkBufferSize(max));
  let end = 0;
  let eof = false;
  let total = 0;
  let held: Promise<unknown>[] = [];
  const hold: HoldChunk = (readDone) => {
    held.push(readDone);
  };
  const released = async (): Promise<void> => {
    if (held.length === 0) return;
    const waiting = held;
    held = [];
    await Promise.allSettled(waiting);
  };
  try {
    for (;;) {
      while (!eof && end < buf.length) {
        const n = await read(buf, end, buf.length - end);
        if (n === 0) eof = true;
        else end += n;
      }
      if (!eof && end < max) {
        const bigger = Buffer.allocUnsafe(Math.max(chunkBufferSize(max), buf.length * 2));
        buf.copy(bigger, 0, 0, end);
        buf = bigger;
        continue;
      }
      let start = 0;
      for (const c of await chunker.cutAndHash(buf, 0, end, eof)) {
        await onChunk(buf.subarray(start, start + c.length), c.id, hold);
        start += c.length;
      }
      total += start;
      if (eof && start === end) return total;
      // The chunks of this round keep their bytes until the pool has read them.
      await released();
      buf.copyWithin(0, start, end);
      end -= start;
    }
  } finally {
    // Also on failure: the caller reuses `buffer` for its next file, and a blob sealed from
    // bytes overwritten under it would no longer match its ID.
    await released();
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
