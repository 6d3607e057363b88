// A local cache of the small files every command reads (index and snapshots) so that commands on
// a slow or remote repository start fast. Files are content-addressed, so a cached copy is valid
// for as long as its name exists in the repository; anything else is fetched from the backend.
import { promises as fsp } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import type { Backend, FileInfo, FileType, Handle } from "./backend.js";
import { hashHex } from "../repo/id.js";

const CACHED: readonly FileType[] = ["index", "snapshots"];

export function defaultCacheDir(): string {
  const base = process.env.SITEKEEP_CACHE_DIR ?? join(process.env.XDG_CACHE_HOME || join(homedir(), ".cache"), "sitekeep");
  return base;
}

export class CachedBackend implements Backend {
  readonly location: string;
  // The inner backend's optional ways to read and write packs, passed through (packs are never
  // cached): without them a check read every pack into a fresh buffer and a backup held its packs
  // in memory. Its listings' lag too: locks are never cached either.
  readonly loadInto?: Backend["loadInto"];
  readonly openFile?: Backend["openFile"];
  readonly stage?: Backend["stage"];
  readonly listingLagMs?: Backend["listingLagMs"];

  constructor(
    private readonly inner: Backend,
    private readonly dir: string,
  ) {
    this.location = inner.location;
    if (inner.loadInto) this.loadInto = (h, into, offset) => inner.loadInto!(h, into, offset);
    if (inner.openFile) this.openFile = (h) => inner.openFile!(h);
    if (inner.stage) this.stage = (type, readSoon) => inner.stage!(type, readSoon);
    if (inner.listingLagMs) this.listingLagMs = () => inner.listingLagMs!();
  }

  private file(h: Handle): string {
    return join(this.dir, h.type, h.name);
  }

  exists(): Promise<boolean> {
    return this.inner.exists();
  }

  hasContent(): Promise<boolean> {
    return this.inner.hasContent();
  }

  create(): Promise<void> {
    return this.inner.create();
  }

  async save(h: Handle, data: Uint8Array): Promise<void> {
    await this.inner.save(h, data);
    if (CACHED.includes(h.type)) await this.store(h, data);
  }

  async load(h: Handle, offset?: number, length?: number): Promise<Buffer> {
    if (!CACHED.includes(h.type) || offset !== undefined || length !== undefined) return this.inner.load(h, offset, length);
    try {
      const data = await fsp.readFile(this.file(h));
      if (hashHex(data) === h.name) return data;
    } catch {
      // not cached (or unreadable cache): fall through to the repository
    }
    const data = await this.inner.load(h);
    if (hashHex(data) === h.name) await this.store(h, data);
    return data;
  }

  private async store(h: Handle, data: Uint8Array): Promise<void> {
    try {
      const dir = join(this.dir, h.type);
      await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
      const tmp = join(dir, `.${h.name}-${randomBytes(4).toString("hex")}`);
      await fsp.writeFile(tmp, data, { mode: 0o600 });
      await fsp.rename(tmp, this.file(h));
    } catch {
      // The cache is an optimisation: a read-only or full cache folder never fails a command.
    }
  }

  stat(h: Handle): Promise<FileInfo> {
    return this.inner.stat(h);
  }

  removeTemporary(): Promise<{ files: number; bytes: number }> {
    return this.inner.removeTemporary?.() ?? Promise.resolve({ files: 0, bytes: 0 });
  }

  async remove(h: Handle): Promise<void> {
    await this.inner.remove(h);
    if (CACHED.includes(h.type)) await fsp.unlink(this.file(h)).catch(() => undefined);
  }

  async *list(type: FileType): AsyncIterable<FileInfo> {
    const seen = new Set<string>();
    for await (const fi of this.inner.list(type)) {
      seen.add(fi.name);
      yield fi;
    }
    if (CACHED.includes(type)) {
      // Drop cached files the repository no longer has (forgotten snapshots, pruned indexes).
      const names = await fsp.readdir(join(this.dir, type)).catch(() => [] as string[]);
      for (const n of names) if (!seen.has(n)) await fsp.unlink(join(this.dir, type, n)).catch(() => undefined);
    }
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}

export function cacheDirFor(base: string, repoId: string): string {
  return join(base, repoId);
}
