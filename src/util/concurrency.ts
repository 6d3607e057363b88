// Small concurrency tools: a counting semaphore and a bounded parallel map.

export class Semaphore {
  private waiting: (() => void)[] = [];

  constructor(private free: number) {}

  async acquire(): Promise<void> {
    if (this.free > 0) {
      this.free--;
      return;
    }
    await new Promise<void>((resolve) => this.waiting.push(resolve));
  }

  /** Takes a unit if one is free now, without waiting. */
  tryAcquire(): boolean {
    if (this.free === 0) return false;
    this.free--;
    return true;
  }

  release(): void {
    const next = this.waiting.shift();
    if (next) next();
    else this.free++;
  }

  async run<T>(fn: () => Promise<T>): Promise<T> {
    await this.acquire();
    try {
      return await fn();
    } finally {
      this.release();
    }
  }
}

/** Runs fn over items with at most `limit` in flight; the first error stops new work and is thrown. */
export async function mapLimit<T>(items: readonly T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  let failed = false;
  const worker = async (): Promise<void> => {
    while (!failed && next < items.length) {
      try {
        await fn(items[next++]);
      } catch (err) {
        failed = true;
        throw err;
      }
    }
  };
  // allSettled: when one call fails, the others in flight still finish before we return, so a
  // caller never goes on (releasing a lock, removing temp files) while work is still running.
  await settleAll(Array.from({ length: Math.min(limit, items.length) }, worker));
}

/**
 * Runs fn over items one at a time in order, and starts an item beside that one whenever `spare`
 * has a unit free at that moment (given back when the item is done). It never waits for a unit, so
 * nested calls sharing one Semaphore cannot deadlock: a recursive walk has at most (units + 1)
 * branches at once. The first error stops new work and is thrown once work in flight has settled.
 */
export async function mapWithSpare<T>(items: readonly T[], spare: Semaphore, fn: (item: T) => Promise<void>): Promise<void> {
  const beside: Promise<void>[] = [];
  let failed = false;
  let inlineError: { err: unknown } | undefined;
  for (const item of items) {
    if (failed) break;
    if (spare.tryAcquire()) {
      const work = fn(item)
        .catch((err: unknown) => {
          failed = true;
          throw err;
        })
        .finally(() => spare.release());
      // Handled here: it may fail while this loop still awaits an item, long before settleAll
      // looks at it, and an unhandled rejection would end the process.
      work.catch(() => undefined);
      beside.push(work);
      continue;
    }
    try {
      await fn(item);
    } catch (err) {
      failed = true;
      inlineError = { err };
    }
  }
  await settleAll(beside);
  if (inlineError) throw inlineError.err;
}

/** Waits until every promise has settled, then throws the first rejection's reason (in array order), if any. */
export async function settleAll(work: readonly Promise<unknown>[]): Promise<void> {
  const failure = (await Promise.allSettled(work)).find((r): r is PromiseRejectedResult => r.status === "rejected");
  if (failure) throw failure.reason;
}

/**
 * A count of work queued and not yet finished, which a producer checks before it queues more: it
 * goes on while the count is below `limit`, so it runs ahead of the work without running away.
 */
export class Backlog {
  private count = 0;
  private waiting: (() => void)[] = [];

  constructor(private readonly limit: number) {}

  add(n: number): void {
    this.count += n;
  }

  done(n: number): void {
    this.count -= n;
    while (this.count < this.limit && this.waiting.length) this.waiting.shift()!();
  }

  /** Resolves once the count is below the limit. */
  async below(): Promise<void> {
    if (this.count < this.limit) return;
    await new Promise<void>((resolve) => this.waiting.push(resolve));
  }
}
