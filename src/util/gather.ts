// Gathers requests into batches for work whose cost is mostly per call (a hand-over to the thread
// pool or a worker), without timers: a request leaves at once while few batches are out (there is
// nothing to wait for), and otherwise joins the open batch, which leaves when a batch that is out
// comes back or when it is full. Under load batches grow; when idle nothing waits.

export interface GatherOptions<Q> {
  /** Below this many batches out, a request leaves at once (at least 1: else nothing would send it). */
  eager: number;
  /** Whether `q` may join the open batch `batch` (which is never empty). */
  fits(batch: readonly Q[], q: Q): boolean;
  /** Whether `batch` should leave without waiting for one that is out. */
  full(batch: readonly Q[]): boolean;
}

/** Runs a batch: one result per request, in order; a rejection fails every request of the batch. */
export type BatchRunner<Q, R> = (batch: Q[]) => Promise<R[]>;

interface Waiting<R> {
  resolve: (r: R) => void;
  reject: (err: unknown) => void;
}

export class Gatherer<Q, R> {
  private open: Q[] = [];
  private waiting: Waiting<R>[] = [];
  /** Batches sent and not yet settled. */
  private out = 0;
  private readonly eager: number;

  constructor(
    private readonly runBatch: BatchRunner<Q, R>,
    private readonly opts: GatherOptions<Q>,
  ) {
    this.eager = Math.max(1, opts.eager);
  }

  add(q: Q): Promise<R> {
    if (this.open.length && !this.opts.fits(this.open, q)) this.send();
    this.open.push(q);
    const result = new Promise<R>((resolve, reject) => this.waiting.push({ resolve, reject }));
    if (this.out < this.eager || this.opts.full(this.open)) this.send();
    return result;
  }

  /** Sends the open batch on its way; when it settles, what gathered meanwhile follows. */
  private send(): void {
    if (!this.open.length) return;
    const batch = this.open;
    const waiting = this.waiting;
    this.open = [];
    this.waiting = [];
    this.out++;
    void this.settle(batch, waiting).finally(() => {
      this.out--;
      this.send();
    });
  }

  private async settle(batch: Q[], waiting: Waiting<R>[]): Promise<void> {
    let results: R[];
    try {
      results = await this.runBatch(batch);
    } catch (err) {
      for (const w of waiting) w.reject(err);
      return;
    }
    waiting.forEach((w, i) => w.resolve(results[i]));
  }
}
