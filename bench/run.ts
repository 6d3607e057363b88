// Sitekeep against restic and borg on the same seeded dataset (issue #3). Prints figures; never
// fails a build (exit status 0 unless the arguments are wrong).
//
//   node --import tsx bench/run.ts [--set mixed|many] [--scale 0.1] [--runs 3]
//        [--tools sitekeep,restic,borg] [--out bench/out] [--work /tmp/sitekeep-bench] [--seed 1]
//        [--drop-caches] [--keep]
//
// Per run, each step is taken by every tool before the next step starts (the tool order rotates from
// run to run), so drift in the machine hits all tools alike: init, initial backup, unchanged re-run,
// the mutation (once, shared), re-run after the mutation, full restore into a fresh folder (verified
// against the source: bytes, mode and mtime; a restore that differs is FAILED, not timed), and a
// full check that reads all data. Each command runs under /usr/bin/time for CPU time and peak RSS.
import { spawnSync } from "node:child_process";
import {
  closeSync,
  existsSync,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { availableParallelism, cpus, release, totalmem } from "node:os";
import { delimiter, dirname, join, resolve } from "node:path";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";
import {
  generateDataset,
  mutateDataset,
  parseSet,
  treeStats,
  type DatasetOptions,
  type MutationStats,
  type TreeStats,
} from "./dataset.js";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..");
/** bin/sitekeep.js's own test of whether it would run the TypeScript source instead of dist/. */
const { runsSource } = createRequire(import.meta.url)("../bin/dist-fresh.js") as { runsSource: (root: string) => boolean };
const STALE_DIST =
  "dist/ is older than src/ or missing: bin/sitekeep.js would run the TypeScript through tsx, and the " +
  "bench would time tsx's start-up and memory";
const TIME = "/usr/bin/time";
const PASSWORD = "sitekeep-bench-password";

// ---------------------------------------------------------------------------------------------
// Tools

interface Invocation {
  argv: string[];
  cwd?: string;
}

interface Tool {
  name: string;
  /** null when installed, else why it is skipped */
  missing: string | null;
  version: string;
  env: Record<string, string>;
  /** an untimed command that loads the program once */
  warmup: string[];
  init(repo: string): Invocation;
  backup(repo: string, source: string, label: string): Invocation;
  restore(repo: string, target: string, lastLabel: string): Invocation;
  check(repo: string): Invocation;
  /** Why the tool cannot be measured right now, or null (checked before each step). */
  unfit?: () => string | null;
}

function which(cmd: string): string | null {
  for (const dir of (process.env.PATH ?? "").split(delimiter)) {
    const p = join(dir, cmd);
    try {
      if (lstatSync(p).isFile() || lstatSync(p).isSymbolicLink()) return p;
    } catch {
      // not here
    }
  }
  return null;
}

function firstLine(argv: string[]): string {
  const r = spawnSync(argv[0], argv.slice(1), { encoding: "utf8" });
  return r.status === 0 ? `${r.stdout}${r.stderr}`.trim().split("\n")[0] : "?";
}

function makeTools(names: string[]): Tool[] {
  const tools: Tool[] = [];
  for (const name of names) {
    if (name === "sitekeep") {
      const bin = join(ROOT, "bin", "sitekeep.js");
      const sk = (...a: string[]): string[] => [process.execPath, bin, ...a];
      const ok = existsSync(bin);
      tools.push({
        name,
        missing: ok ? null : `${bin} not found`,
        version: ok
          ? `sitekeep ${firstLine(sk("--version"))} (${gitRevision()}, node ${process.version})`
          : "",
        env: { SITEKEEP_PASSWORD: PASSWORD },
        warmup: sk("--help"),
        init: (repo) => ({ argv: sk("-r", repo, "init") }),
        backup: (repo, source) => ({ argv: sk("-r", repo, "backup", source, "--json") }),
        restore: (repo, target) => ({ argv: sk("-r", repo, "restore", "latest", "--target", target) }),
        check: (repo) => ({ argv: sk("-r", repo, "check", "--read-data") }),
        unfit: () => (runsSource(ROOT) ? `${STALE_DIST} (src/ changed during the bench?)` : null),
      });
    } else if (name === "restic") {
      const bin = which("restic");
      tools.push({
        name,
        missing: bin ? null : "restic is not installed",
        version: bin ? firstLine([bin, "version"]) : "",
        env: { RESTIC_PASSWORD: PASSWORD },
        warmup: [bin!, "version"],
        init: (repo) => ({ argv: [bin!, "-r", repo, "init", "--repository-version", "2"] }),
        backup: (repo, source) => ({ argv: [bin!, "-r", repo, "backup", source, "--json", "-q"] }),
        restore: (repo, target) => ({ argv: [bin!, "-r", repo, "restore", "latest", "--target", target] }),
        check: (repo) => ({ argv: [bin!, "-r", repo, "check", "--read-data"] }),
      });
    } else if (name === "borg") {
      const bin = which("borg");
      tools.push({
        name,
        missing: bin ? null : "borg is not installed",
        version: bin ? firstLine([bin, "--version"]) : "",
        env: { BORG_PASSPHRASE: PASSWORD },
        warmup: [bin!, "--version"],
        // repokey: AES-256-CTR + HMAC-SHA256 and SHA-256-based chunk IDs, the closest to restic's
        // AES-256-CTR + Poly1305 with SHA-256 blob IDs (repokey-blake2 swaps SHA-256 for BLAKE2b).
        init: (repo) => ({ argv: [bin!, "init", "-e", "repokey", repo] }),
        backup: (repo, source, label) => ({
          argv: [bin!, "create", "--compression", "lz4", "--json", `${repo}::${label}`, source],
        }),
        restore: (repo, target, last) => ({ argv: [bin!, "extract", `${repo}::${last}`], cwd: target }),
        check: (repo) => ({ argv: [bin!, "check", "--verify-data", repo] }),
      });
    } else {
      throw new Error(`unknown tool ${name} (sitekeep, restic, borg)`);
    }
  }
  return tools;
}

function gitRevision(): string {
  const r = spawnSync("git", ["-C", ROOT, "describe", "--always", "--dirty"], { encoding: "utf8" });
  return r.status === 0 ? r.stdout.trim() : "no git";
}

// ---------------------------------------------------------------------------------------------
// Measuring

interface Measure {
  ok: boolean;
  /** seconds, from the parent's clock */
  wall: number | null;
  user: number | null;
  sys: number | null;
  cpu: number | null;
  /** peak resident set of the command (and the children it waited for), MiB */
  rssMiB: number | null;
  exit: number | null;
  error?: string;
  /** repository size after the step (apparent bytes of all its files) */
  repoBytes?: number;
  /** the tool's JSON summary, when it prints one */
  summary?: unknown;
  /**
   * Free memory when the step started (MemFree, MiB; Linux). On a VM that hands free pages back to
   * its host, a step that fills the page cache from free memory pays more kernel time than one that
   * reclaims cached pages (see bench/README.md, "A property of this VM").
   */
  memFreeMiB?: number;
  /**
   * CPU time the whole machine was busy during the step, all cores together (seconds; Linux
   * /proc/stat, steal not counted). Beyond the command's own `cpu`, it holds what the kernel did
   * for it in threads of its own (write-back of what it wrote, reclaim of the page cache it
   * filled), which /usr/bin/time does not see, and anything else that ran.
   */
  machineBusy?: number;
}

const haveTime = existsSync(TIME);

function measure(inv: Invocation, env: NodeJS.ProcessEnv, logBase: string, dropCaches: boolean): Measure {
  spawnSync("sync"); // writes of the previous step must not land in this one's time
  if (dropCaches) writeFileSync("/proc/sys/vm/drop_caches", "3\n");
  const memFreeMiB = memFree();
  const busy0 = machineBusySeconds();
  const out = openSync(`${logBase}.out`, "w");
  const err = openSync(`${logBase}.err`, "w");
  const timeFile = `${logBase}.time`;
  const [cmd, ...args] = haveTime ? [TIME, "-f", "%e %U %S %M", "-o", timeFile, ...inv.argv] : inv.argv;
  const t0 = process.hrtime.bigint();
  const r = spawnSync(cmd, args, { cwd: inv.cwd, env, stdio: ["ignore", out, err] });
  const wall = Number(process.hrtime.bigint() - t0) / 1e9;
  const busy1 = machineBusySeconds();
  closeSync(out);
  closeSync(err);
  const m: Measure = {
    ok: r.status === 0,
    wall,
    user: null,
    sys: null,
    cpu: null,
    rssMiB: null,
    exit: r.status,
    ...(memFreeMiB !== undefined ? { memFreeMiB } : {}),
    ...(busy0 !== undefined && busy1 !== undefined ? { machineBusy: round(busy1 - busy0, 2) } : {}),
  };
  if (haveTime && existsSync(timeFile)) {
    const last = readFileSync(timeFile, "utf8").trim().split("\n").pop() ?? "";
    const [, u, s, kb] = last.split(" ").map(Number);
    if ([u, s, kb].every(Number.isFinite)) {
      m.user = u;
      m.sys = s;
      m.cpu = round(u + s, 2);
      m.rssMiB = round(kb / 1024, 1);
    }
  }
  if (!m.ok) {
    const tail = readFileSync(`${logBase}.err`, "utf8").trim().split("\n").slice(-3).join(" | ");
    m.error = `exit ${r.status ?? r.signal}: ${tail || r.error?.message || ""}`;
  }
  m.summary = parseSummary(readFileSync(`${logBase}.out`, "utf8").trim());
  return m;
}

/** MemFree of /proc/meminfo in MiB, where there is one. */
function memFree(): number | undefined {
  const kb = /^MemFree:\s+(\d+) kB$/m.exec(readText("/proc/meminfo") ?? "")?.[1];
  return kb === undefined ? undefined : Math.round(Number(kb) / 1024);
}

/** Clock ticks per second of /proc/stat's figures (USER_HZ: 100 on every common Linux build). */
const CLOCK_TICKS = Number(spawnSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).stdout?.trim()) || 100;

/** Busy CPU time of the whole machine since boot, all cores together, in seconds (Linux). */
function machineBusySeconds(): number | undefined {
  const line = readText("/proc/stat")?.split("\n")[0];
  if (!line?.startsWith("cpu ")) return undefined;
  // user nice system idle iowait irq softirq steal ...: busy is what ran, not idle, waits or steal.
  const [user, nice, system, , , irq, softirq] = line.trim().split(/\s+/).slice(1).map(Number);
  const ticks = user + nice + system + irq + softirq;
  return Number.isFinite(ticks) ? ticks / CLOCK_TICKS : undefined;
}

/** The text of a file (of /proc or /sys), trimmed, or undefined where it cannot be read. */
function readText(path: string): string | undefined {
  try {
    return readFileSync(path, "utf8").trim();
  } catch {
    return undefined;
  }
}

/** The whole output as JSON (borg), else its last JSON line (restic's and sitekeep's summary). */
function parseSummary(stdout: string): unknown {
  for (const text of [
    stdout,
    stdout
      .split("\n")
      .reverse()
      .find((l) => l.startsWith("{")),
  ]) {
    try {
      if (text) return JSON.parse(text);
    } catch {
      // try the next form
    }
  }
  return undefined;
}

function dirBytes(path: string): number {
  let total = 0;
  for (const e of readdirSync(path, { withFileTypes: true })) {
    const p = join(path, e.name);
    if (e.isDirectory()) total += dirBytes(p);
    else total += lstatSync(p).size;
  }
  return total;
}

// ---------------------------------------------------------------------------------------------
// Restore verification: every entry of the source must be in the restore with the same type, mode,
// mtime (to the nanosecond) and bytes, and the restore must hold nothing else.

export function verifyTree(source: string, restored: string): string | null {
  const a = Buffer.allocUnsafe(4 << 20);
  const b = Buffer.allocUnsafe(4 << 20);
  const problems: string[] = [];
  let count = 0;
  const note = (p: string): void => {
    count++;
    if (problems.length < 5) problems.push(p);
  };
  const sameFile = (x: string, y: string, size: number): boolean => {
    const fx = openSync(x, "r");
    const fy = openSync(y, "r");
    try {
      for (let off = 0; off < size;) {
        const n = readSync(fx, a, 0, a.length, off);
        const m = readSync(fy, b, 0, n, off);
        if (n === 0 || m !== n || !a.subarray(0, n).equals(b.subarray(0, n))) return false;
        off += n;
      }
      return true;
    } finally {
      closeSync(fx);
      closeSync(fy);
    }
  };
  const walk = (rel: string): void => {
    const s = join(source, rel);
    const r = join(restored, rel);
    let rs;
    try {
      rs = lstatSync(r, { bigint: true });
    } catch {
      note(`missing ${rel || "."}`);
      return;
    }
    const ss = lstatSync(s, { bigint: true });
    if ((ss.mode & 0o170000n) !== (rs.mode & 0o170000n)) return note(`type differs: ${rel}`);
    if ((ss.mode & 0o7777n) !== (rs.mode & 0o7777n))
      note(`mode ${(ss.mode & 0o7777n).toString(8)} != ${(rs.mode & 0o7777n).toString(8)}: ${rel || "."}`);
    if (ss.isDirectory()) {
      const want = readdirSync(s).sort();
      const have = new Set(readdirSync(r));
      for (const name of want) {
        have.delete(name);
        walk(join(rel, name));
      }
      for (const extra of have) note(`extra ${join(rel, extra)}`);
    } else if (ss.isFile()) {
      if (ss.size !== rs.size) note(`size ${ss.size} != ${rs.size}: ${rel}`);
      else if (!sameFile(s, r, Number(ss.size))) note(`content differs: ${rel}`);
    }
    // Directories last: their mtime is restored after their contents.
    if (ss.mtimeNs !== rs.mtimeNs) note(`mtime ${ss.mtimeNs} != ${rs.mtimeNs} ns: ${rel || "."}`);
  };
  walk("");
  return count ? `${count} differences, e.g. ${problems.join("; ")}` : null;
}

// ---------------------------------------------------------------------------------------------
// Report

const STEPS = ["init", "backup", "rerun", "mutated", "restore", "check"] as const;
type Step = (typeof STEPS)[number];
const STEP_TITLES: Record<Step, string> = {
  init: "init",
  backup: "initial backup",
  rerun: "unchanged re-run",
  mutated: "re-run after mutation",
  restore: "full restore",
  check: "check, all data",
};

type RunResult = Record<Step, Record<string, Measure>>;

function round(x: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

function median(xs: number[]): number | null {
  if (!xs.length) return null;
  const s = [...xs].sort((x, y) => x - y);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

type Metric = "wall" | "cpu" | "rssMiB" | "repoBytes";
type Medians = Record<
  Step,
  Record<string, Partial<Record<Metric, number | null>> & { failed: number; runs: number }>
>;

function medians(runs: RunResult[], tools: string[]): Medians {
  const out = {} as Medians;
  for (const step of STEPS) {
    out[step] = {};
    for (const tool of tools) {
      const ms = runs.map((r) => r[step][tool]).filter((m): m is Measure => m !== undefined);
      const good = ms.filter((m) => m.ok);
      const pick = (k: Metric): number | null =>
        median(good.map((m) => m[k]).filter((v): v is number => typeof v === "number"));
      out[step][tool] = {
        wall: pick("wall"),
        cpu: pick("cpu"),
        rssMiB: pick("rssMiB"),
        repoBytes: pick("repoBytes"),
        failed: ms.length - good.length,
        runs: ms.length,
      };
    }
  }
  return out;
}

function fmt(v: number | null | undefined, metric: Metric): string {
  if (v === null || v === undefined) return "–";
  if (metric === "repoBytes") return `${(v / 1e6).toFixed(v < 1e7 ? 2 : 0)} MB`;
  if (metric === "rssMiB") return `${v.toFixed(0)} MiB`;
  return `${v < 10 ? v.toFixed(2) : v.toFixed(1)} s`;
}

function table(med: Medians, tools: string[]): string {
  const peers = tools.filter((t) => t !== "sitekeep");
  const withSk = tools.includes("sitekeep");
  const head = ["step", "metric", ...tools, ...(withSk ? peers.map((p) => `sitekeep/${p}`) : [])];
  const rows: string[][] = [];
  const metrics: [Metric, string][] = [
    ["wall", "wall"],
    ["cpu", "CPU user+sys"],
    ["rssMiB", "peak RSS"],
    ["repoBytes", "repo size after"],
  ];
  for (const step of STEPS) {
    for (const [metric, label] of metrics) {
      if (metric === "repoBytes" && !["backup", "rerun", "mutated"].includes(step)) continue;
      if (metric !== "wall" && !haveTime && metric !== "repoBytes") continue;
      const cells = tools.map((t) => {
        const m = med[step][t];
        if (m.runs === 0) return "–";
        if (m.failed === m.runs) return "FAILED";
        return fmt(m[metric], metric) + (m.failed ? ` (${m.failed} FAILED)` : "");
      });
      const ratios = withSk
        ? peers.map((p) => {
            const a = med[step].sitekeep[metric];
            const b = med[step][p][metric];
            return a && b ? `${(a / b).toFixed(2)}×` : "–";
          })
        : [];
      rows.push([metric === "wall" ? STEP_TITLES[step] : "", label, ...cells, ...ratios]);
    }
  }
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]): string => `| ${cells.map((c, i) => c.padEnd(widths[i])).join(" | ")} |`;
  return [line(head), `|${widths.map((w) => "-".repeat(w + 2)).join("|")}|`, ...rows.map(line)].join("\n");
}

// ---------------------------------------------------------------------------------------------
// Main

interface Args {
  set: DatasetOptions["set"];
  scale: number;
  runs: number;
  tools: string[];
  out: string;
  work: string;
  seed: number;
  dropCaches: boolean;
  keep: boolean;
}

function parseArgs(argv: string[]): Args {
  const a: Args = {
    set: "mixed",
    scale: 1,
    runs: 3,
    tools: ["sitekeep", "restic", "borg"],
    out: join(ROOT, "bench", "out"),
    work: "/tmp/sitekeep-bench",
    seed: 1,
    dropCaches: false,
    keep: false,
  };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    const value = (): string => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${flag} needs a value`);
      return v;
    };
    if (flag === "--set") a.set = parseSet(value());
    else if (flag === "--scale") a.scale = Number(value());
    else if (flag === "--runs") a.runs = Number(value());
    else if (flag === "--tools") a.tools = value().split(",").filter(Boolean);
    else if (flag === "--out") a.out = resolve(value());
    else if (flag === "--work") a.work = resolve(value());
    else if (flag === "--seed") a.seed = Number(value());
    else if (flag === "--drop-caches") a.dropCaches = true;
    else if (flag === "--keep") a.keep = true;
    else throw new Error(`unknown argument ${flag}`);
  }
  if (!(a.scale > 0) || !(a.runs >= 1) || !Number.isInteger(a.runs))
    throw new Error("--scale > 0 and --runs >= 1");
  return a;
}

function machine(work: string): Record<string, unknown> {
  const lscpu = spawnSync("lscpu", { encoding: "utf8" }).stdout ?? "";
  const df =
    spawnSync("df", ["-T", work], { encoding: "utf8" }).stdout?.trim().split("\n")[1]?.split(/\s+/) ?? [];
  return {
    cpus: availableParallelism(),
    cpuModel: /Model name:\s*(.*)/.exec(lscpu)?.[1] ?? cpus()[0]?.model,
    memoryGiB: round(totalmem() / 2 ** 30, 1),
    kernel: release(),
    workFilesystem: df[1] ?? "?",
    workDevice: df[0] ?? "?",
    ...memoryReclaim(),
    ...nodeStart(),
  };
}

/**
 * What an empty Node process takes to start and exit here (the median of three): every Sitekeep
 * step pays it before any of Sitekeep's code runs, and restic's Go binary pays nothing like it.
 * With NODE_EXTRA_CA_CERTS set, Node reads and parses that bundle while it starts (on session 27's
 * VM, whose environment sets it, 0.12-0.16 s against 0.04-0.05 s without; bench/README.md,
 * "Machine and versions"). The bench measures the tools in the environment it was given.
 */
function nodeStart(): Record<string, unknown> {
  const walls = [0, 1, 2]
    .map(() => {
      const t0 = performance.now();
      spawnSync(process.execPath, ["-e", ""]);
      return (performance.now() - t0) / 1000;
    })
    .sort((a, b) => a - b);
  return { nodeStartSeconds: round(walls[1], 2), ...(process.env.NODE_EXTRA_CA_CERTS ? { nodeExtraCaCerts: true } : {}) };
}

/** The numbered entries of a /sys folder (kdamonds, contexts, schemes), none where it cannot be read. */
function sysEntries(dir: string): string[] {
  try {
    return readdirSync(dir).filter((n) => /^\d+$/.test(n));
  } catch {
    return [];
  }
}

/**
 * What takes a VM's memory back while the bench runs, each of which makes the next write into
 * that memory cost more (bench/README.md, "A property of this VM"): free pages reported to the
 * host (virtio-balloon's free page reporting, feature bit 5), and DAMON schemes that page out
 * memory left idle (what turns a page cache that fills memory into free memory within minutes).
 * What /sys does not have (or lays out otherwise) is left out.
 */
function memoryReclaim(): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  const virtio = "/sys/bus/virtio/devices";
  for (const d of existsSync(virtio) ? readdirSync(virtio) : []) {
    if (readText(join(virtio, d, "device")) !== "0x0005") continue; // the balloon
    out.freePageReporting = readText(join(virtio, d, "features"))?.[5] === "1";
  }
  const kdamonds = "/sys/kernel/mm/damon/admin/kdamonds";
  const pageout: string[] = [];
  for (const k of sysEntries(kdamonds)) {
    if (readText(join(kdamonds, k, "state")) !== "on") continue;
    const contexts = join(kdamonds, k, "contexts");
    for (const c of sysEntries(contexts)) {
      const aggrUs = Number(readText(join(contexts, c, "monitoring_attrs", "intervals", "aggr_us")));
      const schemes = join(contexts, c, "schemes");
      for (const sc of sysEntries(schemes)) {
        if (readText(join(schemes, sc, "action")) !== "pageout") continue;
        const ageMin = Number(readText(join(schemes, sc, "access_pattern", "age", "min")));
        const bytes = Number(readText(join(schemes, sc, "quotas", "bytes")));
        const perMs = Number(readText(join(schemes, sc, "quotas", "reset_interval_ms")));
        const quota = bytes > 0 && perMs > 0 ? `, up to ${round(bytes / 2 ** 20 / (perMs / 1000), 0)} MiB/s` : "";
        const idleS = (ageMin * aggrUs) / 1e6;
        const idle = Number.isFinite(idleS) ? `pages idle for ${round(idleS, 1)} s` : "idle pages";
        pageout.push(`${readText(join(contexts, c, "operations"))}: ${idle}${quota}`);
      }
    }
  }
  if (pageout.length) out.damonPageout = pageout.join("; ");
  return out;
}

export function ensureDataset(
  dir: string,
  opts: DatasetOptions,
): { data: string; stats: TreeStats; seconds: number | null } {
  const data = join(dir, "data");
  const stampFile = join(dir, "dataset.json");
  const want = JSON.stringify({ ...opts, mutated: false });
  if (existsSync(stampFile)) {
    const stamp = JSON.parse(readFileSync(stampFile, "utf8"));
    if (
      JSON.stringify({ set: stamp.set, scale: stamp.scale, seed: stamp.seed, mutated: stamp.mutated }) ===
      want
    )
      return { data, stats: stamp.stats, seconds: null };
  }
  rmSync(stampFile, { force: true });
  console.log(`generating the ${opts.set} dataset (scale ${opts.scale}, seed ${opts.seed}) in ${data}`);
  const t0 = performance.now();
  const stats = generateDataset(data, opts, (s) => console.log(s));
  const seconds = round((performance.now() - t0) / 1000, 1);
  writeFileSync(stampFile, JSON.stringify({ ...opts, mutated: false, stats }));
  console.log(
    `  ${stats.files} files, ${stats.dirs} folders, ${(stats.bytes / 1e6).toFixed(0)} MB in ${seconds} s`,
  );
  return { data, stats, seconds };
}

const BACKUP_STEPS: ReadonlySet<Step> = new Set(["backup", "rerun", "mutated"]);

/**
 * Reads every file of the dataset (untimed) so that each backup starts from a warm page cache. borg
 * drops the pages of every file it reads (posix_fadvise DONTNEED), and with the tools' order
 * rotating, the same tool always came right after borg: in session 7's first many-files run,
 * Sitekeep's backup after borg took 16 s with 10 s of system time, against 12 s and 5 s first.
 */
function warmDataset(dir: string): void {
  spawnSync("sh", ["-c", 'find "$1" -type f -print0 | xargs -0 -r cat > /dev/null', "warm", dir], { stdio: "ignore" });
}

/**
 * How long ext4 without a journal may keep a deleted inode from being reused, plus a margin: 60 s
 * after its deletion, 360 s while the block of the inode table that holds it is dirty, and a
 * restore dirties those blocks itself as it creates inodes next to the deleted ones.
 */
const RECENT_DELETION_MS = 365_000;

function main(): void {
  const args = parseArgs(process.argv.slice(2));
  mkdirSync(args.work, { recursive: true });
  mkdirSync(args.out, { recursive: true });
  const notes: string[] = [];
  if (!haveTime) notes.push(`${TIME} is missing (Debian package "time"): measuring wall time only`);
  const all = makeTools(args.tools);
  for (const t of all) if (t.missing) notes.push(`skipping ${t.name}: ${t.missing}`);
  const tools = all.filter((t) => !t.missing);
  if (tools.some((t) => t.name === "sitekeep") && runsSource(ROOT)) {
    throw new Error(`${STALE_DIST}; run \`npm run build\` first`);
  }
  for (const n of notes) console.log(`note: ${n}`);
  if (!tools.length) return;

  const opts: DatasetOptions = { set: args.set, scale: args.scale, seed: args.seed };
  const datasetDir = join(args.work, `dataset-${args.set}-${args.scale}-${args.seed}`);
  const mach = machine(args.work);
  const versions = Object.fromEntries(tools.map((t) => [t.name, t.version]));
  console.log(`machine: ${JSON.stringify(mach)}`);
  for (const t of tools) console.log(`${t.name}: ${t.version}`);

  const runs: RunResult[] = [];
  // ext4 without a journal (this VM's disk) does not reuse an inode within 60 s of its deletion,
  // 360 s while the inode table block holding it is dirty, and scans past every such inode for
  // each file it creates: a restore within minutes of tens of thousands of deletions took 2-4x the
  // kernel time, and it dirties the blocks it allocates in, so a sync before it does not help. So
  // the bench deletes nothing while it runs: runs after the first generate their dataset in their
  // own folder, and every run's folder stays until the last run is over. Before the first restore
  // it waits until deletions made before it started (or by regenerating the dataset) are old
  // enough. The mutation's 0.5 % of deleted files are not counted.
  let lastDeletion = Date.now();
  const waitForDeletionsToAge = (): void => {
    spawnSync("sync");
    const wait = lastDeletion + RECENT_DELETION_MS - Date.now();
    if (wait <= 0) return;
    console.log(`  waiting ${Math.ceil(wait / 1000)} s for deleted inodes to age (see bench/README.md, "Restore")`);
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, wait);
  };
  let datasetBefore: TreeStats | null = null;
  let datasetAfter: TreeStats | null = null;
  let mutation: MutationStats | null = null;
  const generation: (number | null)[] = [];
  const runDirs: string[] = [];
  for (let run = 0; run < args.runs; run++) {
    const runDir = join(args.work, `run-${run + 1}`);
    if (existsSync(runDir)) {
      rmSync(runDir, { recursive: true, force: true }); // left by an earlier bench run with --keep
      lastDeletion = Date.now();
    }
    runDirs.push(runDir);
    // The first run reuses the dataset of an earlier invocation when it is unchanged; later runs
    // make a fresh one of their own instead of replacing the mutated tree (see lastDeletion).
    const ds = ensureDataset(run === 0 ? datasetDir : join(runDir, "dataset"), opts);
    if (run === 0 && ds.seconds !== null) lastDeletion = Date.now(); // a mutated tree was replaced
    generation.push(ds.seconds);
    datasetBefore = ds.stats;
    const source = ds.data;
    const order = tools.map((_, i) => tools[(i + run) % tools.length]);
    const result = Object.fromEntries(STEPS.map((s) => [s, {}])) as RunResult;
    const broken = new Set<string>();
    const envs = new Map<string, NodeJS.ProcessEnv>();
    for (const t of tools) {
      const home = join(runDir, t.name, "home");
      mkdirSync(home, { recursive: true });
      const env: NodeJS.ProcessEnv = {};
      for (const [k, v] of Object.entries(process.env))
        if (!/^(RESTIC_|BORG_|SITEKEEP_|XDG_)/.test(k)) env[k] = v;
      Object.assign(env, t.env, {
        HOME: home,
        XDG_CACHE_HOME: join(home, ".cache"),
        XDG_CONFIG_HOME: join(home, ".config"),
      });
      envs.set(t.name, env);
      // Untimed warm-up: the binaries (and tsx's transform cache) are loaded once before timing.
      spawnSync(t.warmup[0], t.warmup.slice(1), { env, stdio: "ignore" });
    }
    const repo = (t: Tool): string => join(runDir, t.name, "repo");
    const labels: Partial<Record<Step, string>> = {
      backup: "initial",
      rerun: "unchanged",
      mutated: "mutated",
    };

    const step = (name: Step, inv: (t: Tool) => Invocation, after?: (t: Tool, m: Measure) => void): void => {
      for (const t of order) {
        if (broken.has(t.name)) continue;
        const log = join(runDir, t.name, name);
        const unfit = t.unfit?.();
        if (unfit) {
          broken.add(t.name);
          result[name][t.name] = { ok: false, wall: null, user: null, sys: null, cpu: null, rssMiB: null, exit: null, error: unfit };
          console.log(`[run ${run + 1}/${args.runs}] ${STEP_TITLES[name].padEnd(22)} ${t.name.padEnd(9)} NOT MEASURED: ${unfit}`);
          continue;
        }
        const i = inv(t);
        if (BACKUP_STEPS.has(name) && !args.dropCaches) warmDataset(source);
        const m = measure(i, envs.get(t.name)!, log, args.dropCaches);
        if (m.ok && after) after(t, m);
        if (!m.ok && name !== "restore" && name !== "check") broken.add(t.name);
        result[name][t.name] = m;
        const fig = m.ok
          ? `${fmt(m.wall, "wall")}  cpu ${fmt(m.cpu, "cpu")}  rss ${fmt(m.rssMiB, "rssMiB")}` +
            (m.repoBytes !== undefined ? `  repo ${fmt(m.repoBytes, "repoBytes")}` : "") +
            (m.machineBusy !== undefined && m.wall && m.cpu !== null
              ? `  machine ${(m.machineBusy / m.wall).toFixed(2)} cores busy, ${Math.max(0, m.machineBusy - m.cpu).toFixed(1)} s outside it`
              : "") +
            (m.memFreeMiB !== undefined ? `  (free memory at start ${(m.memFreeMiB / 1024).toFixed(1)} GiB)` : "")
          : `FAILED ${m.error ?? ""}`;
        console.log(
          `[run ${run + 1}/${args.runs}] ${STEP_TITLES[name].padEnd(22)} ${t.name.padEnd(9)} ${fig}`,
        );
      }
    };
    const sizeAfter = (t: Tool, m: Measure): void => {
      m.repoBytes = dirBytes(repo(t));
    };

    step("init", (t) => t.init(repo(t)));
    step("backup", (t) => t.backup(repo(t), source, labels.backup!), sizeAfter);
    step("rerun", (t) => t.backup(repo(t), source, labels.rerun!), sizeAfter);
    rmSync(join(dirname(source), "dataset.json"), { force: true }); // the tree is about to change
    mutation = mutateDataset(source, opts);
    console.log(`[run ${run + 1}/${args.runs}] mutation: ${JSON.stringify(mutation)}`);
    datasetAfter = treeStats(source);
    step("mutated", (t) => t.backup(repo(t), source, labels.mutated!), sizeAfter);
    waitForDeletionsToAge();
    step(
      "restore",
      (t) => {
        const target = join(runDir, t.name, "restore");
        mkdirSync(target, { recursive: true });
        return t.restore(repo(t), target, labels.mutated!);
      },
      (t, m) => {
        const target = join(runDir, t.name, "restore");
        const diff = verifyTree(source, join(target, source));
        if (diff) {
          m.ok = false;
          m.error = `restore differs from the source: ${diff}`;
          m.wall = m.cpu = m.user = m.sys = m.rssMiB = null;
        }
        // Not deleted until the bench ends: the tool restoring after another one's target was
        // deleted would pay for it (see lastDeletion).
      },
    );
    step("check", (t) => t.check(repo(t)));
    runs.push(result);
  }
  if (!args.keep) for (const d of runDirs) rmSync(d, { recursive: true, force: true });

  const names = tools.map((t) => t.name);
  const med = medians(runs, names);
  const text = table(med, names);
  console.log("");
  console.log(
    `${args.set} set, scale ${args.scale}: ${datasetBefore?.files} files, ${((datasetBefore?.bytes ?? 0) / 1e6).toFixed(0)} MB; ` +
      `medians of ${args.runs} run(s); ratio < 1 means sitekeep is faster / smaller`,
  );
  console.log(text);
  const date = new Date().toISOString().replace(/[:.]/g, "-").slice(0, 19);
  const file = join(args.out, `results-${date}.json`);
  writeFileSync(
    file,
    JSON.stringify(
      {
        date: new Date().toISOString(),
        options: args,
        machine: mach,
        versions,
        notes,
        dataset: { before: datasetBefore, after: datasetAfter, mutation, generationSeconds: generation },
        medians: med,
        table: text,
        runs,
      },
      null,
      2,
    ) + "\n",
  );
  console.log(`\nwrote ${file}`);
  if (!args.keep) console.log(`(the dataset stays in ${datasetDir}; delete it when done)`);
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  try {
    main();
  } catch (err) {
    console.error(`bench: ${err instanceof Error ? err.message : String(err)}`);
    process.exitCode = 2;
  }
}
