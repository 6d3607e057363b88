// Deterministic, seeded benchmark datasets (issue #3). The same seed, set and scale always give the
// same tree: names, contents, modes and mtimes. Random bytes come from an AES-256-CTR keystream
// (fast with AES-NI, deterministic); every other choice comes from xoshiro128** seeded by splitmix32.
//
//   node --import tsx bench/dataset.ts --out DIR [--set mixed|many] [--scale 0.1] [--seed 1] [--mutate]
//
// "mixed" (~2.1 GB at scale 1): 60k small text-like files in nested folders, 40 random binaries of
// 5-20 MB, 3 half-compressible files of ~300 MB, a 200 MB SQLite database (or page-structured data
// when sqlite3 is missing). "many": 320k tiny files in deep folders. --scale multiplies counts and
// large sizes. --mutate applies the mutation step to an existing tree (see mutateDataset).
import { createCipheriv, createHash } from "node:crypto";
import {
  closeSync,
  existsSync,
  fstatSync,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  rmSync,
  unlinkSync,
  utimesSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import { spawnSync } from "node:child_process";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export type DatasetSet = "mixed" | "many";

export interface DatasetOptions {
  set: DatasetSet;
  scale: number;
  seed: number;
}

export interface TreeStats {
  files: number;
  dirs: number;
  bytes: number;
}

export interface MutationStats {
  changed: number;
  appendedBytes: number;
  added: number;
  deleted: number;
  sqliteRowsUpdated: number;
}

const MiB = 1024 * 1024;
const BASE_TIME = 1704067200; // 2024-01-01T00:00:00Z: generated mtimes fall in 2024
const MUTATE_TIME = 1735689600; // 2025-01-01T00:00:00Z: mutated entries get mtimes after it
const SQLITE_NAME = "site.sqlite";

// ---------------------------------------------------------------------------------------------
// Pseudo-random numbers

function fnv1a(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

function splitmix32(state: { s: number }): number {
  state.s = (state.s + 0x9e3779b9) | 0;
  let z = state.s;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
  return (z ^ (z >>> 16)) >>> 0;
}

/** xoshiro128** (Blackman & Vigna), state seeded from a label with splitmix32. */
export class Rng {
  private a: number;
  private b: number;
  private c: number;
  private d: number;

  constructor(label: string) {
    const sm = { s: fnv1a(label) };
    this.a = splitmix32(sm);
    this.b = splitmix32(sm);
    this.c = splitmix32(sm);
    this.d = splitmix32(sm) | 1; // never the all-zero state
  }

  u32(): number {
    const r = Math.imul(rotl(Math.imul(this.b, 5), 7), 9) >>> 0;
    const t = this.b << 9;
    this.c ^= this.a;
    this.d ^= this.b;
    this.b ^= this.c;
    this.a ^= this.d;
    this.c ^= t;
    this.d = rotl(this.d, 11);
    return r;
  }

  /** Uniform in [0, 1). */
  float(): number {
    return this.u32() / 4294967296;
  }

  /** Uniform integer in [lo, hi]. */
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.float() * (hi - lo + 1));
  }

  chance(p: number): boolean {
    return this.float() < p;
  }

  normal(): number {
    const u = 1 - this.float();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * this.float());
  }

  pick<T>(items: readonly T[]): T {
    return items[this.u32() % items.length];
  }
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}

const ZEROS = Buffer.alloc(16 * MiB);

/** An endless deterministic keystream: AES-256-CTR over zeros, keyed by the seed and a label. */
export class ByteStream {
  private cipher;

  constructor(seed: number, label: string) {
    const key = createHash("sha256").update(`sitekeep-bench/${seed}/${label}`).digest();
    this.cipher = createCipheriv("aes-256-ctr", key, Buffer.alloc(16));
  }

  next(n: number): Buffer {
    if (n <= ZEROS.length) return this.cipher.update(ZEROS.subarray(0, n));
    const parts: Buffer[] = [];
    for (let left = n; left > 0; left -= ZEROS.length) parts.push(this.next(Math.min(left, ZEROS.length)));
    return Buffer.concat(parts);
  }
}

// ---------------------------------------------------------------------------------------------
// Text-like content: a Zipf-distributed vocabulary of common English words and made-up words

const COMMON = (
  "the of and to in a is that for it as was with be by on not he i this are or his from at which but " +
  "have an they you were her she there one all we their been has will would when if more no out so " +
  "what up can about into them some time only new could other these two may then do first any my now " +
  "such like our over man me even most made after also did many before must through back years where " +
  "much your way well down should because each just those people how too little state good very make " +
  "world still own see men work long get here between both life being under never day same another know " +
  "while last might us great old year off come since against go came right used take three page site " +
  "user post content image theme plugin order product price customer mail server admin config cache"
).split(" ");
const SYLLABLES = (
  "ba be bi bo bu ca ce co cu da de di do du fa fe fi fo ga ge go ha he hi ho ka ke ki ko la le li lo lu " +
  "ma me mi mo mu na ne ni no nu pa pe pi po pu ra re ri ro ru sa se si so su ta te ti to tu va ve vi vo " +
  "za ze zo ar er ir or ur an en in on un al el il ol st tr pr br cr gr ch sh th qu"
).split(" ");

export class TextGen {
  private readonly vocab: string[] = [];
  private readonly zipf = new Uint16Array(1 << 16);

  constructor(readonly rng: Rng) {
    const vocabRng = new Rng("vocabulary"); // the same words for every seed
    const seen = new Set<string>(COMMON);
    this.vocab.push(...COMMON);
    while (this.vocab.length < 4000) {
      let w = "";
      const n = vocabRng.int(1, 4);
      for (let i = 0; i < n; i++) w += vocabRng.pick(SYLLABLES);
      if (!seen.has(w)) {
        seen.add(w);
        this.vocab.push(w);
      }
    }
    // Zipf(1): word of rank r has weight 1/(r+1); a 64k lookup table makes sampling one array read.
    let total = 0;
    for (let r = 0; r < this.vocab.length; r++) total += 1 / (r + 1);
    let acc = 0;
    let slot = 0;
    for (let r = 0; r < this.vocab.length && slot < this.zipf.length; r++) {
      acc += 1 / (r + 1) / total;
      const end = Math.min(this.zipf.length, Math.round(acc * this.zipf.length));
      for (; slot < end; slot++) this.zipf[slot] = r;
    }
    for (; slot < this.zipf.length; slot++) this.zipf[slot] = this.vocab.length - 1;
  }

  word(): string {
    return this.vocab[this.zipf[this.rng.u32() >>> 16]];
  }

  identifier(): string {
    const w = this.word();
    return this.rng.chance(0.5)
      ? `${w}_${this.word()}`
      : w + this.word().replace(/^./, (c) => c.toUpperCase());
  }

  sentence(): string {
    const n = this.rng.int(4, 18);
    let s = this.word();
    s = s[0].toUpperCase() + s.slice(1);
    for (let i = 1; i < n; i++) s += (this.rng.chance(0.07) ? ", " : " ") + this.word();
    return s + (this.rng.chance(0.1) ? "?" : ".");
  }

  prose(size: number, html: boolean): string {
    const parts: string[] = [];
    let len = 0;
    if (html) parts.push(`<h1>${this.sentence()}</h1>\n`);
    while (len < size) {
      let p = this.sentence();
      const n = this.rng.int(1, 7);
      for (let i = 0; i < n; i++) p += " " + this.sentence();
      p = html ? `<p>${p}</p>\n` : p + "\n\n";
      parts.push(p);
      len += p.length;
    }
    return parts.join("").slice(0, size);
  }

  code(size: number): string {
    const parts: string[] = [];
    let len = 0;
    let depth = 0;
    while (len < size) {
      const pad = "    ".repeat(depth);
      let line: string;
      const k = this.rng.u32() % 10;
      if (depth === 0 || (k === 0 && depth < 4)) {
        line = `${pad}function ${this.identifier()}($${this.word()}, $${this.word()}) {`;
        depth++;
      } else if (k === 1 && depth > 0) {
        depth--;
        line = `${"    ".repeat(depth)}}`;
      } else if (k === 2) {
        line = `${pad}// ${this.sentence()}`;
      } else if (k === 3) {
        line = `${pad}if ($${this.identifier()} === '${this.word()}') return ${this.rng.int(0, 999)};`;
      } else {
        line = `${pad}$${this.identifier()} = ${this.identifier()}($${this.word()}, '${this.word()} ${this.word()}');`;
      }
      parts.push(line + "\n");
      len += line.length + 1;
    }
    return parts.join("").slice(0, size);
  }

  log(size: number): string {
    const parts: string[] = [];
    let len = 0;
    let t = BASE_TIME + this.rng.int(0, 360 * 86400);
    const levels = ["INFO", "INFO", "INFO", "DEBUG", "WARN", "ERROR"];
    while (len < size) {
      t += this.rng.int(0, 90);
      const ip = `10.${this.rng.int(0, 255)}.${this.rng.int(0, 255)}.${this.rng.int(1, 254)}`;
      const line =
        `${new Date(t * 1000).toISOString()} [${this.rng.pick(levels)}] ${ip} ${this.word()} ` +
        `${this.word()} ${this.word()} id=${this.rng.int(1, 99999)} ms=${this.rng.int(1, 2500)}\n`;
      parts.push(line);
      len += line.length;
    }
    return parts.join("").slice(0, size);
  }

  json(size: number): string {
    const parts: string[] = ["[\n"];
    let len = 2;
    let id = this.rng.int(1, 100000);
    while (len < size) {
      const rec =
        `  {"id": ${id++}, "name": "${this.word()} ${this.word()}", "slug": "${this.identifier()}", ` +
        `"score": ${this.rng.int(0, 1000)}, "tags": ["${this.word()}", "${this.word()}"], ` +
        `"summary": "${this.sentence()}"},\n`;
      parts.push(rec);
      len += rec.length;
    }
    return parts.join("").slice(0, size);
  }

  /** Text in the style of a file extension. */
  forExtension(ext: string, size: number): string {
    switch (ext) {
      case ".html":
        return this.prose(size, true);
      case ".md":
      case ".txt":
        return this.prose(size, false);
      case ".php":
      case ".js":
      case ".css":
      case ".sh":
        return this.code(size);
      case ".log":
        return this.log(size);
      default:
        return this.json(size);
    }
  }
}

const TEXT_EXTENSIONS = [".html", ".md", ".txt", ".php", ".php", ".js", ".css", ".json", ".log", ".sh"];

// ---------------------------------------------------------------------------------------------
// Tree layout

interface Layout {
  dirs: string[]; // relative paths, parents before children ("" is the root)
  used: Set<string>;
}

function makeDirs(rng: Rng, text: TextGen, count: number, maxDepth: number, deep: boolean): Layout {
  const dirs = [""];
  const depth = [0];
  const used = new Set<string>([""]);
  while (dirs.length < count) {
    // "deep" prefers recent directories as parents, which makes long chains.
    let p: number;
    if (deep && rng.chance(0.7)) p = Math.max(0, dirs.length - 1 - rng.int(0, 40));
    else p = rng.int(0, dirs.length - 1);
    if (depth[p] >= maxDepth) p = rng.int(0, Math.min(dirs.length - 1, 20));
    if (depth[p] >= maxDepth) continue;
    let name = join(dirs[p], text.word());
    if (used.has(name)) name += `-${dirs.length}`;
    used.add(name);
    dirs.push(name);
    depth.push(depth[p] + 1);
  }
  return { dirs, used };
}

function uniqueFile(layout: Layout, dir: string, base: string, ext: string, index: number): string {
  let name = join(dir, base + ext);
  if (layout.used.has(name)) name = join(dir, `${base}-${index}${ext}`);
  layout.used.add(name);
  return name;
}

function mtimeFor(rng: Rng, base = BASE_TIME, span = 360 * 86400): number {
  return base + rng.int(0, span) + rng.int(0, 999) / 1000;
}

function smallTextSize(rng: Rng, median: number, max: number): number {
  return Math.max(0, Math.min(max, Math.round(median * Math.exp(1.2 * rng.normal()))));
}

// ---------------------------------------------------------------------------------------------
// Writers

function writeBig(path: string, size: number, produce: (n: number) => Buffer): void {
  const fd = openSync(path, "w", 0o644);
  try {
    for (let off = 0; off < size;) {
      const buf = produce(Math.min(16 * MiB, size - off));
      writeSync(fd, buf);
      off += buf.length;
    }
  } finally {
    closeSync(fd);
  }
}

/** Half-compressible content: alternating random blocks and blocks of one repeated text snippet. */
function halfCompressible(seed: number, label: string, rng: Rng, text: TextGen): (n: number) => Buffer {
  const random = new ByteStream(seed, label);
  let pending: Buffer = Buffer.alloc(0);
  let randomNext = true;
  return (n: number) => {
    while (pending.length < n) {
      const blockSize = rng.int(256 * 1024, 4 * MiB);
      let block: Buffer;
      if (randomNext) {
        block = random.next(blockSize);
      } else {
        const snippet = Buffer.from(text.prose(rng.int(4096, 65536), false));
        block = Buffer.alloc(blockSize);
        for (let o = 0; o < blockSize; o += snippet.length) snippet.copy(block, o);
      }
      randomNext = !randomNext;
      pending = pending.length ? Buffer.concat([pending, block]) : block;
    }
    const out = pending.subarray(0, n);
    pending = pending.subarray(n);
    return out;
  };
}

function hasSqlite(): boolean {
  return spawnSync("sqlite3", ["--version"], { stdio: "ignore" }).status === 0;
}

/** A real SQLite database of about `size` bytes (posts with text bodies and an index). */
function writeSqlite(path: string, size: number, text: TextGen, rng: Rng): void {
  const csv = path + ".csv";
  const fd = openSync(csv, "w");
  let written = 0;
  let id = 1;
  try {
    // Measured: the database ends up about 1.1x the CSV (index and page slack).
    while (written < size / 1.1) {
      const rows: string[] = [];
      for (let i = 0; i < 2000; i++, id++) {
        const body = text.prose(rng.int(200, 2400), false).replace(/\n/g, " ");
        rows.push(
          `${id},${text.word()}${rng.int(1, 999)},${text.word()}@${text.word()}.example,` +
            `${BASE_TIME + rng.int(0, 360 * 86400)},"${text.sentence()}","${body}",${rng.int(0, 500)}\n`,
        );
      }
      const buf = Buffer.from(rows.join(""));
      writeSync(fd, buf);
      written += buf.length;
    }
  } finally {
    closeSync(fd);
  }
  const script =
    "PRAGMA page_size=4096; PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;\n" +
    "CREATE TABLE posts(id INTEGER PRIMARY KEY, author TEXT, email TEXT, created INTEGER, title TEXT, body TEXT, score INTEGER);\n" +
    `.import --csv ${csv} posts\n` +
    "CREATE INDEX posts_author ON posts(author, created);\n";
  const r = spawnSync("sqlite3", [path], { input: script, stdio: ["pipe", "ignore", "pipe"] });
  unlinkSync(csv);
  if (r.status !== 0) throw new Error(`sqlite3 failed: ${r.stderr?.toString()}`);
}

/** Fallback without sqlite3: 4 KiB pages of header, text records and zero-filled slack. */
function writePaged(path: string, size: number, text: TextGen, rng: Rng): void {
  let page = 0;
  writeBig(path, size, (n) => {
    const buf = Buffer.alloc(n);
    for (let off = 0; off + 4096 <= n; off += 4096, page++) {
      buf.writeUInt8(13, off);
      buf.writeUInt32BE(page, off + 4);
      const fill = Math.floor(4096 * (0.6 + 0.35 * rng.float()));
      buf.write(text.prose(fill - 64, false), off + 64, "latin1");
    }
    return buf;
  });
}

// ---------------------------------------------------------------------------------------------
// Generation

export function generateDataset(
  root: string,
  opts: DatasetOptions,
  log: (s: string) => void = () => {},
): TreeStats {
  const { set, scale, seed } = opts;
  const oldMask = process.umask(0o022);
  try {
    rmSync(root, { recursive: true, force: true });
    mkdirSync(root, { recursive: true });
    const t0 = performance.now();
    const since = (): string => `${((performance.now() - t0) / 1000).toFixed(1)} s`;
    const rng = new Rng(`${seed}/${set}/layout`);
    const text = new TextGen(new Rng(`${seed}/${set}/text`));
    const times = new Rng(`${seed}/${set}/times`);
    const nSmall = Math.max(1, Math.round((set === "mixed" ? 60000 : 320000) * scale));
    const layout =
      set === "mixed"
        ? makeDirs(rng, text, Math.max(1, Math.round(nSmall / 25)), 8, false)
        : makeDirs(rng, text, Math.max(1, Math.round(nSmall / 10)), 16, true);
    for (const d of layout.dirs) if (d) mkdirSync(join(root, d));

    for (let i = 0; i < nSmall; i++) {
      const dir = rng.pick(layout.dirs);
      const ext = rng.pick(TEXT_EXTENSIONS);
      const size =
        set === "mixed"
          ? smallTextSize(rng, 4096, 512 * 1024)
          : rng.chance(0.03)
            ? 0
            : smallTextSize(rng, 200, 4096);
      const path = uniqueFile(layout, dir, `${text.word()}-${text.word()}`, ext, i);
      const mode = ext === ".sh" ? 0o755 : rng.chance(0.03) ? 0o600 : 0o644;
      writeFileSync(join(root, path), text.forExtension(ext, size), { mode });
      utimesSync(join(root, path), BASE_TIME, mtimeFor(times));
      if (i > 0 && i % 20000 === 0) log(`  ${i} small files, ${since()}`);
    }

    if (set === "mixed") {
      mkdirSync(join(root, "media"));
      mkdirSync(join(root, "archives"));
      mkdirSync(join(root, "db"));
      layout.dirs.push("media", "archives", "db");
      const nBin = Math.max(1, Math.round(40 * scale));
      for (let i = 0; i < nBin; i++) {
        const dir = rng.chance(0.5) ? "media" : rng.pick(layout.dirs);
        const path = uniqueFile(
          layout,
          dir,
          `${text.word()}-${i}`,
          rng.pick([".bin", ".jpg", ".mp4", ".gz"]),
          i,
        );
        const size = rng.int(5 * MiB, 20 * MiB);
        const stream = new ByteStream(seed, `binary/${i}`);
        writeBig(join(root, path), size, (n) => stream.next(n));
        utimesSync(join(root, path), BASE_TIME, mtimeFor(times));
      }
      log(`  ${nBin} binaries, ${since()}`);
      for (let i = 0; i < 3; i++) {
        const path = join("archives", `export-${i}.dat`);
        const size = Math.round(300 * MiB * scale) + rng.int(0, MiB);
        writeBig(join(root, path), size, halfCompressible(seed, `large/${i}`, rng, text));
        utimesSync(join(root, path), BASE_TIME, mtimeFor(times));
      }
      log(`  3 large files, ${since()}`);
      const db = join(root, "db", SQLITE_NAME);
      if (hasSqlite()) writeSqlite(db, Math.round(200 * MiB * scale), text, rng);
      else writePaged(db, Math.round(200 * MiB * scale), text, rng);
      utimesSync(db, BASE_TIME, mtimeFor(times));
      log(`  database (${hasSqlite() ? "sqlite3" : "page-structured fallback"}), ${since()}`);
    }

    // Directory mtimes last, children before parents.
    for (let i = layout.dirs.length - 1; i >= 0; i--)
      utimesSync(join(root, layout.dirs[i]), BASE_TIME, mtimeFor(times));
    return treeStats(root);
  } finally {
    process.umask(oldMask);
  }
}

// ---------------------------------------------------------------------------------------------
// Mutation: ~2% of files changed in place, one large file appended, ~0.5% added and ~0.5% deleted.

export function listTree(root: string): { files: string[]; dirs: string[] } {
  const files: string[] = [];
  const dirs: string[] = [""];
  const walk = (rel: string): void => {
    const entries = readdirSync(join(root, rel), { withFileTypes: true }).sort((a, b) =>
      a.name < b.name ? -1 : 1,
    );
    for (const e of entries) {
      const p = join(rel, e.name);
      if (e.isDirectory()) {
        dirs.push(p);
        walk(p);
      } else if (e.isFile()) files.push(p);
    }
  };
  walk("");
  return { files, dirs };
}

export function treeStats(root: string): TreeStats {
  const { files, dirs } = listTree(root);
  let bytes = 0;
  for (const f of files) bytes += lstatSync(join(root, f)).size;
  return { files: files.length, dirs: dirs.length, bytes };
}

export function mutateDataset(root: string, opts: DatasetOptions): MutationStats {
  const { seed } = opts;
  const oldMask = process.umask(0o022);
  try {
    const rng = new Rng(`${seed}/${opts.set}/mutate`);
    const text = new TextGen(new Rng(`${seed}/${opts.set}/mutate-text`));
    const { files, dirs } = listTree(root);
    const stats: MutationStats = { changed: 0, appendedBytes: 0, added: 0, deleted: 0, sqliteRowsUpdated: 0 };
    const touchedDirs = new Set<string>();
    let clock = 0;
    const stamp = (rel: string): void =>
      utimesSync(join(root, rel), MUTATE_TIME, MUTATE_TIME + clock++ / 1000);

    const large = files.filter((f) => f.startsWith("archives/"));
    // Without sqlite3 the database is page-structured data, changed like any other file.
    const db = hasSqlite() ? files.find((f) => f.endsWith(SQLITE_NAME)) : undefined;
    const ordinary = files.filter((f) => !f.startsWith("archives/") && f !== db);

    // Changed in place (2% of all files, the database among them).
    const nChange = Math.max(1, Math.round(files.length * 0.02));
    const chosen = new Set<string>();
    while (chosen.size < Math.min(nChange, ordinary.length)) chosen.add(rng.pick(ordinary));
    for (const rel of [...chosen].sort()) {
      const path = join(root, rel);
      const fd = openSync(path, "r+");
      try {
        const size = fstatSync(fd).size;
        if (size > 4 * MiB) {
          const bytes = new ByteStream(seed, `mutate/${rel}`);
          for (let k = 0; k < 4; k++) writeSync(fd, bytes.next(65536), 0, 65536, rng.int(0, size - 65536));
        } else {
          const patch = Buffer.from(text.sentence() + "\n");
          writeSync(fd, patch, 0, patch.length, size > patch.length ? rng.int(0, size - patch.length) : 0);
          if (rng.chance(0.5))
            writeSync(fd, Buffer.from(text.sentence() + "\n"), 0, undefined, Math.max(size, patch.length));
        }
      } finally {
        closeSync(fd);
      }
      stamp(rel);
      stats.changed++;
    }
    if (db) {
      const r = spawnSync("sqlite3", [join(root, db)], {
        input:
          "PRAGMA journal_mode=OFF;\n" +
          "UPDATE posts SET score = score + 1, title = title || ' (edited)' WHERE id % 50 = 7;\n" +
          "SELECT changes();\n",
        stdio: ["pipe", "pipe", "pipe"],
      });
      if (r.status !== 0) throw new Error(`sqlite3 failed: ${r.stderr.toString()}`);
      stats.sqliteRowsUpdated = Number(r.stdout.toString().trim().split("\n").pop());
      stamp(db);
      stats.changed++;
    }

    // One large file appended (2% of its size).
    if (large.length) {
      const rel = large[0];
      const path = join(root, rel);
      const add = Math.max(4096, Math.round(lstatSync(path).size * 0.02));
      const produce = halfCompressible(seed, `append/${rel}`, rng, text);
      const fd = openSync(path, "a");
      try {
        writeSync(fd, produce(add));
      } finally {
        closeSync(fd);
      }
      stamp(rel);
      stats.appendedBytes = add;
    }

    // Deleted and added (0.5% of the files each).
    const nDelta = Math.max(1, Math.round(files.length * 0.005));
    const deletable = ordinary.filter((f) => !chosen.has(f));
    const deleted = new Set<string>();
    while (deleted.size < Math.min(nDelta, deletable.length)) deleted.add(rng.pick(deletable));
    for (const rel of [...deleted].sort()) {
      unlinkSync(join(root, rel));
      touchedDirs.add(dirname(rel) === "." ? "" : dirname(rel));
      stats.deleted++;
    }
    const newDir = join(rng.pick(dirs), "added-by-mutation");
    mkdirSync(join(root, newDir));
    touchedDirs.add(newDir);
    touchedDirs.add(dirname(newDir) === "." ? "" : dirname(newDir));
    for (let i = 0; i < nDelta; i++) {
      const dir = i % 4 === 0 ? newDir : rng.pick(dirs);
      const ext = rng.pick(TEXT_EXTENSIONS);
      const rel = join(dir, `new-${text.word()}-${i}${ext}`);
      writeFileSync(
        join(root, rel),
        text.forExtension(ext, smallTextSize(rng, opts.set === "mixed" ? 4096 : 200, 256 * 1024)),
      );
      stamp(rel);
      touchedDirs.add(dir);
      stats.added++;
    }
    for (const d of [...touchedDirs].sort().reverse()) stamp(d);
    return stats;
  } finally {
    process.umask(oldMask);
  }
}

// ---------------------------------------------------------------------------------------------
// Command line

function parseArgs(argv: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith("--")) throw new Error(`unexpected argument ${a}`);
    const key = a.slice(2);
    if (key === "mutate" || key === "help") out[key] = "true";
    else out[key] = argv[++i] ?? "";
  }
  return out;
}

export function parseSet(value: string | undefined): DatasetSet {
  if (value === undefined || value === "mixed") return "mixed";
  if (value === "many") return "many";
  throw new Error(`unknown set ${value} (mixed or many)`);
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const args = parseArgs(process.argv.slice(2));
  if (args.help || !args.out) {
    console.log(
      "usage: node --import tsx bench/dataset.ts --out DIR [--set mixed|many] [--scale 1] [--seed 1] [--mutate]",
    );
    process.exitCode = args.help ? 0 : 2;
  } else {
    const opts: DatasetOptions = {
      set: parseSet(args.set),
      scale: Number(args.scale ?? 1),
      seed: Number(args.seed ?? 1),
    };
    const t0 = performance.now();
    if (args.mutate) {
      if (!existsSync(args.out)) throw new Error(`${args.out} does not exist`);
      console.log(JSON.stringify(mutateDataset(args.out, opts)));
    } else {
      const s = generateDataset(args.out, opts, console.log);
      console.log(`${s.files} files, ${s.dirs} dirs, ${(s.bytes / 1e6).toFixed(1)} MB`);
    }
    console.log(`${((performance.now() - t0) / 1000).toFixed(1)} s`);
  }
}
