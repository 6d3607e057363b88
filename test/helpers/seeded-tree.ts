// Deterministic file trees for crash tests: the same seed always writes the same names, sizes and
// bytes, so a failing seed can be repeated (SITEKEEP_CRASH_SEED, SITEKEEP_PRUNE_CRASH_SEED).
import { createCipheriv, createHash } from "node:crypto";
import { promises as fsp } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { tempDir } from "./run.js";

/** splitmix32: a small seeded PRNG for the tree's shape and the kill fractions. */
export function prng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x9e3779b9) | 0;
    let z = s;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
    return ((z ^ (z >>> 16)) >>> 0) / 4294967296;
  };
}

/** `size` pseudo-random bytes determined by (seed, label): AES-256-CTR over zeros. */
export function bytesFor(seed: number, label: string, size: number): Buffer {
  const key = createHash("sha256").update(`${seed}:${label}`).digest();
  return createCipheriv("aes-256-ctr", key, Buffer.alloc(16)).update(Buffer.alloc(size));
}

/** A folder of seeded files that remembers what it holds (relative path -> size). */
export class SeededTree {
  readonly files = new Map<string, number>();
  protected serial = 0;

  constructor(
    readonly root: string,
    readonly seed: number,
    readonly rnd: () => number,
    /** Sizes are log-skewed between minSize and minSize * spread (mostly small, a few large). */
    private readonly sizing: { minSize: number; spread: number },
  ) {}

  size(): number {
    const u = this.rnd();
    return Math.round(this.sizing.minSize * Math.pow(this.sizing.spread, u * u));
  }

  pick<T>(list: T[]): T {
    return list[Math.floor(this.rnd() * list.length)];
  }

  async write(rel: string, size: number): Promise<void> {
    const abs = join(this.root, rel);
    await fsp.mkdir(join(abs, ".."), { recursive: true });
    await fsp.writeFile(abs, bytesFor(this.seed, `${rel}#${this.serial++}`, size));
    this.files.set(rel, size);
  }

  /** Overwrites `len` bytes in the middle of a file (size unchanged). */
  async patch(rel: string, len: number): Promise<void> {
    const size = this.files.get(rel) as number;
    const at = Math.floor(this.rnd() * (size - len));
    const fh = await fsp.open(join(this.root, rel), "r+");
    try {
      await fh.write(bytesFor(this.seed, `${rel}@${this.serial++}`, len), 0, len, at);
    } finally {
      await fh.close();
    }
  }

  async remove(rel: string): Promise<void> {
    await fsp.unlink(join(this.root, rel));
    this.files.delete(rel);
  }

  newName(dir: string): string {
    return `${dir}/f${(this.serial++).toString(36)}-${Math.floor(this.rnd() * 1e6)}.bin`;
  }

  total(): number {
    let n = 0;
    for (const s of this.files.values()) n += s;
    return n;
  }
}

/**
 * A seeded test: the seed comes from `seedVar` or is random, is printed, and prefixes any failure
 * so the run can be repeated; the scenario gets a temporary folder removed afterwards.
 */
export function seededTest(
  name: string,
  seedVar: string,
  scenario: (t: { diagnostic(msg: string): void }, dir: string, seed: number) => Promise<void>,
): void {
  test(name, { timeout: 300_000 }, async (t) => {
    const seed = process.env[seedVar] ? Number(process.env[seedVar]) : Math.floor(Math.random() * 2 ** 31);
    t.diagnostic(`seed ${seed} (repeat with ${seedVar}=${seed})`);
    const tmp = await tempDir(seedVar.toLowerCase().replace(/_/g, "-"));
    try {
      await scenario(t, tmp.path, seed);
    } catch (err) {
      if (err instanceof Error) err.message = `[${seedVar}=${seed}] ${err.message}`;
      throw err;
    } finally {
      await tmp.cleanup();
    }
  });
}
