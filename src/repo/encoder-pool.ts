// Worker threads that encode batches of small blobs (batch-encode.ts) while the main thread walks,
// reads and packs. One pool per process, shared by every repository (each request carries its
// key); idle workers do not keep the process alive.
import { availableParallelism } from "node:os";
import { Worker } from "node:worker_threads";
import { type EncodedBatch, type KeyBytes, encodeBatch, keyFromBytes } from "./batch-encode.js";
import type { EncodeRequest } from "./encode-worker.js";

interface Pending {
  resolve: (b: EncodedBatch) => void;
  reject: (err: Error) => void;
  slot: Slot;
}

interface Slot {
  worker: Worker;
  busy: number;
}

/**
 * Workers beside the main thread: one per spare core, at most 3 (the thread pool compresses the
 * large blobs at the same time). SITEKEEP_ENCODE_WORKERS overrides it; 0 encodes on the main thread.
 */
function poolSize(): number {
  const env = process.env.SITEKEEP_ENCODE_WORKERS;
  if (env !== undefined && /^\d+$/.test(env)) return Math.min(Number(env), 16);
  return Math.max(1, Math.min(3, availableParallelism() - 1));
}

// Under tsx (a source checkout, the tests) the worker is TypeScript too and needs tsx's loader.
const fromSource = import.meta.url.endsWith(".ts");
const workerUrl = new URL(fromSource ? "./encode-worker.ts" : "./encode-worker.js", import.meta.url);

function startWorker(): Worker {
  if (!fromSource) return new Worker(workerUrl);
  const boot = `import("tsx/esm/api").then((m) => { m.register(); return import(${JSON.stringify(workerUrl.href)}); });`;
  return new Worker(boot, { eval: true });
}

class EncoderPool {
  private readonly slots: Slot[] = [];
  private readonly pending = new Map<number, Pending>();
  private seq = 0;
  /** Set once a worker failed to start or crashed: later batches are encoded on the main thread. */
  private broken = false;

  constructor(readonly size: number) {}

  get workers(): number {
    return this.slots.length;
  }

  get usable(): boolean {
    return this.size > 0 && !this.broken;
  }

  encode(key: KeyBytes, compress: boolean, data: Uint8Array, offsets: number[], lengths: number[]): Promise<EncodedBatch> {
    if (!this.usable) return Promise.resolve(encodeBatch(keyFromBytes(key), compress, data, offsets, lengths));
    const slot = this.pick();
    const seq = ++this.seq;
    const req: EncodeRequest = { seq, key, compress, data, offsets: Float64Array.from(offsets), lengths: Float64Array.from(lengths) };
    return new Promise<EncodedBatch>((resolve, reject) => {
      this.pending.set(seq, { resolve, reject, slot });
      if (slot.busy++ === 0) slot.worker.ref(); // a batch in flight keeps the process alive
      slot.worker.postMessage(req);
    });
  }

  private pick(): Slot {
    if (this.slots.length < this.size && this.slots.every((s) => s.busy > 0)) this.slots.push(this.start());
    return this.slots.reduce((a, b) => (b.busy < a.busy ? b : a));
  }

  private start(): Slot {
    const worker = startWorker();
    const slot: Slot = { worker, busy: 0 };
    worker.unref();
    worker.on("message", (m: { seq: number; error?: string } & EncodedBatch) => {
      const p = this.pending.get(m.seq);
      if (!p) return;
      this.pending.delete(m.seq);
      if (--slot.busy === 0) worker.unref();
      if (m.error !== undefined) p.reject(new Error(`encoding blobs failed: ${m.error}`));
      else p.resolve({ ids: m.ids, sealed: m.sealed, ends: m.ends, ulens: m.ulens });
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
    worker.on("exit", (code) => fail(new Error(`an encoder worker exited (code ${code})`)));
    return slot;
  }
}

let pool: EncoderPool | undefined;

/** Running workers, and whether the pool gave up on them (for tests and diagnostics). */
export function encoderPoolState(): { workers: number; broken: boolean } {
  return { workers: pool?.workers ?? 0, broken: pool ? !pool.usable && pool.size > 0 : false };
}

/**
 * Encodes a batch of small blobs on a worker thread (on this thread when workers are off or
 * broken; a batch whose worker died is encoded here instead).
 */
export async function encodeInWorker(key: KeyBytes, compress: boolean, data: Uint8Array, offsets: number[], lengths: number[]): Promise<EncodedBatch> {
  pool ??= new EncoderPool(poolSize());
  try {
    return await pool.encode(key, compress, data, offsets, lengths);
  } catch {
    return encodeBatch(keyFromBytes(key), compress, data, offsets, lengths);
  }
}
