// Worker threads that encode batches of small blobs while the main thread walks, reads and packs
// (backup), and verify whole packs while it reads the next ones (check --read-data), where the
// addon is missing: with it, both run on libuv's thread pool (blob-codec.ts, encodeBatchInBackground
// and verifyPackInBackground) and no worker (nor its V8 heap) is started. One pool per
// process, shared by every repository (each request carries its key); idle workers do not keep the
// process alive. Whatever a worker cannot do (workers off, failed to start, died) is done on this
// thread with the same code (blob-codec.ts).
import { availableParallelism } from "node:os";
import { Worker } from "node:worker_threads";
import { type EncodedBatch, type KeyBytes, type PackEntries, type PackVerdict, encodeBatch, keyFromBytes, verifyPack } from "./blob-codec.js";
import type { BlobRequest } from "./blob-worker.js";

interface Slot {
  worker: Worker;
  busy: number;
}

interface Pending {
  resolve: (result: unknown) => void;
  reject: (err: Error) => void;
  slot: Slot;
}

/** Requests without their sequence number (added by the pool). */
type Request = BlobRequest extends infer R ? (R extends unknown ? Omit<R, "seq"> : never) : never;

/**
 * At most one worker per core, and at most 4. SITEKEEP_BLOB_WORKERS overrides it; 0 does all the
 * work on the main thread.
 */
function maxWorkers(): number {
  const env = process.env.SITEKEEP_BLOB_WORKERS;
  if (env !== undefined && /^\d+$/.test(env)) return Math.min(Number(env), 16);
  return Math.max(1, Math.min(4, availableParallelism()));
}

// Under tsx (a source checkout, the tests) the worker is TypeScript too and needs tsx's loader.
const fromSource = import.meta.url.endsWith(".ts");
const workerUrl = new URL(fromSource ? "./blob-worker.ts" : "./blob-worker.js", import.meta.url);

function startWorker(): Worker {
  if (!fromSource) return new Worker(workerUrl);
  // Absolute: an evaluated worker resolves bare names from the working directory, not from here.
  const tsx = import.meta.resolve("tsx/esm/api");
  const boot = `import(${JSON.stringify(tsx)}).then((m) => { m.register(); return import(${JSON.stringify(workerUrl.href)}); });`;
  return new Worker(boot, { eval: true });
}

class BlobWorkers {
  private readonly slots: Slot[] = [];
  private readonly pending = new Map<number, Pending>();
  private seq = 0;
  /** Set once a worker failed to start or died: from then on the work is done on this thread. */
  broken = false;

  constructor(readonly max: number) {}

  get workers(): number {
    return this.slots.length;
  }

  slotWorkers(): Worker[] {
    return this.slots.map((s) => s.worker);
  }

  get usable(): boolean {
    return this.max > 0 && !this.broken;
  }

  /** Runs req on a worker, starting one (up to `limit`) when all are busy. */
  run<T>(req: Request, limit: number, transfer: ArrayBuffer[] = []): Promise<T> {
    const slot = this.pick(Math.max(1, Math.min(limit, this.max)));
    const seq = ++this.seq;
    return new Promise<T>((resolve, reject) => {
      try {
        slot.worker.postMessage({ ...req, seq }, transfer);
      } catch (err) {
        reject(err instanceof Error ? err : new Error(String(err))); // not sent: nothing to undo
        return;
      }
      this.pending.set(seq, { resolve: resolve as (r: unknown) => void, reject, slot });
      if (slot.busy++ === 0) slot.worker.ref(); // work in flight keeps the process alive
    });
  }

  private pick(limit: number): Slot {
    if (this.slots.length < limit && this.slots.every((s) => s.busy > 0)) this.slots.push(this.start());
    return this.slots.slice(0, limit).reduce((a, b) => (b.busy < a.busy ? b : a));
  }

  private start(): Slot {
    const worker = startWorker();
    const slot: Slot = { worker, busy: 0 };
    worker.unref();
    worker.on("message", (m: { seq: number; error?: string; result?: unknown }) => {
      const p = this.pending.get(m.seq);
      if (!p) return;
      this.pending.delete(m.seq);
      if (--slot.busy === 0) worker.unref();
      if (m.error !== undefined) p.reject(new Error(m.error));
      else p.resolve(m.result);
    });
    const fail = (err: Error): void => {
      this.broken = true;
      const i = this.slots.indexOf(slot);
      if (i >= 0) this.slots.splice(i, 1);
      for (const [seq, p] of this.pending) {
        if (p.slot !== slot) continue;
        this.pending.delete(seq);
        p.reject(err);
      }
    };
    worker.on("error", fail);
    worker.on("exit", (code) => fail(new Error(`a blob worker exited (code ${code})`)));
    return slot;
  }
}

let pool: BlobWorkers | undefined;

function workers(): BlobWorkers {
  pool ??= new BlobWorkers(maxWorkers());
  return pool;
}

/**
 * Stops the workers as if they had died: work in flight is redone on this thread, and later work
 * too (for tests of that path).
 */
export async function killBlobWorkersForTest(): Promise<void> {
  await Promise.all((pool?.slotWorkers() ?? []).map((w) => w.terminate()));
}

/** Running workers, and whether the pool gave up on them (for tests and diagnostics). */
export function blobWorkerState(): { workers: number; broken: boolean } {
  return { workers: pool?.workers ?? 0, broken: pool?.broken ?? false };
}

/**
 * Encodes a batch of small blobs (see encodeBatch) on a worker: one per spare core, since the main
 * thread is busy during a backup.
 */
export async function encodeInWorker(key: KeyBytes, compress: boolean, data: Uint8Array, offsets: number[], lengths: number[]): Promise<EncodedBatch> {
  const w = workers();
  if (w.usable) {
    try {
      const req: Request = { kind: "encode", key, compress, data, offsets: Float64Array.from(offsets), lengths: Float64Array.from(lengths) };
      return await w.run<EncodedBatch>(req, availableParallelism() - 1);
    } catch {
      // the worker died, or failed on this batch: do it here (and report a real error from here)
    }
  }
  return encodeBatch(keyFromBytes(key), compress, data, offsets, lengths);
}

/**
 * Hashes a pack and decodes each entry (see verifyPack) on a worker, one per core: the main thread
 * only reads the files. The pack's bytes are handed to the worker (`pack` is empty afterwards)
 * when they own their memory, copied otherwise; if the worker dies with them, `reload` reads them
 * again and the pack is verified here.
 *
 * `lend`: `pack` is a view at offset 0 of an ArrayBuffer that is the caller's alone (possibly
 * larger than the pack); the whole ArrayBuffer goes to the worker and comes back in the result's
 * `buffer` to be read into again (a check otherwise allocates, and leaves to the worker's garbage
 * collector, one pack-sized buffer per pack). No `buffer` when the pack was verified here.
 */
export async function verifyPackInWorker(
  key: KeyBytes,
  pack: Uint8Array,
  entries: PackEntries,
  reload: () => Promise<Uint8Array>,
  lend = false,
): Promise<PackVerdict & { buffer?: ArrayBuffer }> {
  const w = workers();
  if (w.usable) {
    const own = pack.byteOffset === 0 && pack.buffer instanceof ArrayBuffer && (lend || pack.byteLength === pack.buffer.byteLength);
    const sent = own ? pack : new Uint8Array(pack);
    const packed: PackEntries = { ids: entries.ids.slice(), spans: entries.spans.slice() }; // copies: these go to the worker
    try {
      const req: Request = { kind: "verify", key, pack: sent, entries: packed, lend: lend && own };
      const transfer = [sent.buffer, packed.ids.buffer, packed.spans.buffer] as ArrayBuffer[];
      return await w.run<PackVerdict & { buffer?: ArrayBuffer }>(req, availableParallelism(), transfer);
    } catch {
      pack = await reload();
    }
  }
  return verifyPack(keyFromBytes(key), pack, entries);
}
