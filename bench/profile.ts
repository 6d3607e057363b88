// Where Sitekeep's time goes: runs its commands under `node --cpu-prof` on a benchmark dataset and
// summarises the profiles (self time per function, inclusive time of Sitekeep's own functions, time
// per module).
//
//   node --import tsx bench/profile.ts [--set mixed|many] [--scale 0.25] [--seed 1]
//        [--steps backup,rerun,restore,check] [--top 25] [--work /tmp/sitekeep-bench] [--out bench/out]
//   node --import tsx bench/profile.ts --summarize FILE.cpuprofile... [--top 25]
import { spawnSync } from "node:child_process";
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseSet, type DatasetOptions } from "./dataset.js";
import { ensureDataset } from "./run.js";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..");

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
}

interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  children?: number[];
}

interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

function where(frame: CallFrame): string {
  let url = frame.url;
  if (!url) return "";
  if (url.startsWith("file://")) url = relative(ROOT, fileURLToPath(url));
  // tsx-transformed modules report line 0 for every function: the file alone says more.
  return frame.lineNumber > 0 ? `${url}:${frame.lineNumber + 1}` : url;
}

function moduleOf(frame: CallFrame): string {
  const url = frame.url;
  if (!url) return frame.functionName.startsWith("(") ? frame.functionName : "(native)";
  if (url.startsWith("node:")) return "node: internals";
  if (!url.startsWith("file://")) return url;
  const rel = relative(ROOT, fileURLToPath(url));
  const nm = /^node_modules\/((@[^/]+\/)?[^/]+)/.exec(rel);
  return nm ? `node_modules/${nm[1]}` : rel;
}

interface Row {
  name: string;
  where: string;
  ms: number;
}

/** Summary of one profile as Markdown, or null for a thread that was idle (tsx's loader thread). */
export function summarize(file: string, top: number): string | null {
  const p = JSON.parse(readFileSync(file, "utf8")) as CpuProfile;
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const key = (n: ProfileNode): string =>
    `${n.callFrame.functionName || "(anonymous)"}\u0000${where(n.callFrame)}`;

  const self = new Map<string, number>();
  const inclusive = new Map<string, number>();
  const modules = new Map<string, number>();
  let total = 0;
  for (let i = 0; i < p.samples.length; i++) {
    // A sample lasts until the next one.
    const us = i + 1 < p.timeDeltas.length ? p.timeDeltas[i + 1] : 0;
    const node = byId.get(p.samples[i])!;
    total += us;
    self.set(key(node), (self.get(key(node)) ?? 0) + us);
    modules.set(moduleOf(node.callFrame), (modules.get(moduleOf(node.callFrame)) ?? 0) + us);
    const seen = new Set<string>();
    for (let id: number | undefined = node.id; id !== undefined; id = parent.get(id)) {
      const k = key(byId.get(id)!);
      if (seen.has(k)) continue;
      seen.add(k);
      inclusive.set(k, (inclusive.get(k) ?? 0) + us);
    }
  }
  const rows = (m: Map<string, number>, filter: (r: Row) => boolean = () => true): Row[] =>
    [...m]
      .map(([k, us]) => {
        const [name, w] = k.split("\u0000");
        return { name, where: w, ms: us / 1000 };
      })
      .filter(filter)
      .sort((a, b) => b.ms - a.ms)
      .slice(0, top);
  const idle = self.get("(idle)\u0000") ?? 0;
  if (idle > 0.85 * total) return null;
  const busy = (total - idle) / 1000;
  // Shares are of the time the thread was busy: (idle) is waiting for I/O or the libuv thread pool.
  const pct = (ms: number): string => `${((ms / busy) * 100).toFixed(1)}%`;
  const lines: string[] = [];
  lines.push(
    `${file}: ${(total / 1e6).toFixed(2)} s sampled, main thread busy ${(busy / 1000).toFixed(2)} s, ` +
      `idle ${(idle / 1e6).toFixed(2)} s (shares below are of the busy time)`,
  );
  lines.push("", "Self time by function:", "");
  lines.push("| self ms | share | function | where |", "|--:|--:|---|---|");
  for (const r of rows(self, (r) => r.name !== "(idle)"))
    lines.push(`| ${r.ms.toFixed(0)} | ${pct(r.ms)} | ${r.name} | ${r.where} |`);
  lines.push("", "Inclusive time of Sitekeep's own functions (src/):", "");
  lines.push("| total ms | share | function | where |", "|--:|--:|---|---|");
  for (const r of rows(inclusive, (r) => r.where.startsWith("src/") && r.name !== "(anonymous)"))
    lines.push(`| ${r.ms.toFixed(0)} | ${pct(r.ms)} | ${r.name} | ${r.where} |`);
  lines.push("", "Self time by module:", "");
  lines.push("| self ms | share | module |", "|--:|--:|---|");
  modules.delete("(idle)");
  for (const [m, us] of [...modules].sort((a, b) => b[1] - a[1]).slice(0, top))
    lines.push(`| ${(us / 1000).toFixed(0)} | ${pct(us / 1000)} | ${m} |`);
  return lines.join("\n");
}

function main(): void {
  const argv = process.argv.slice(2);
  let top = 25;
  const files: string[] = [];
  let summarizeOnly = false;
  const opts: DatasetOptions = { set: "mixed", scale: 0.25, seed: 1 };
  let steps = ["backup", "rerun", "restore", "check"];
  let work = "/tmp/sitekeep-bench";
  let out = join(ROOT, "bench", "out");
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--summarize") summarizeOnly = true;
    else if (a === "--top") top = Number(argv[++i]);
    else if (a === "--set") opts.set = parseSet(argv[++i]);
    else if (a === "--scale") opts.scale = Number(argv[++i]);
    else if (a === "--seed") opts.seed = Number(argv[++i]);
    else if (a === "--steps") steps = argv[++i].split(",");
    else if (a === "--work") work = resolve(argv[++i]);
    else if (a === "--out") out = resolve(argv[++i]);
    else if (summarizeOnly && !a.startsWith("--")) files.push(a);
    else throw new Error(`unknown argument ${a}`);
  }
  if (summarizeOnly) {
    for (const f of files) console.log((summarize(f, top) ?? `${f}: idle thread`) + "\n");
    return;
  }

  const ds = ensureDataset(join(work, `dataset-${opts.set}-${opts.scale}-${opts.seed}`), opts);
  const dir = join(work, "profile");
  rmSync(dir, { recursive: true, force: true });
  const home = join(dir, "home");
  mkdirSync(home, { recursive: true });
  const repo = join(dir, "repo");
  const env = {
    ...Object.fromEntries(
      Object.entries(process.env).filter(([k]) => !/^(RESTIC_|BORG_|SITEKEEP_|XDG_)/.test(k)),
    ),
    HOME: home,
    XDG_CACHE_HOME: join(home, ".cache"),
    SITEKEEP_PASSWORD: "sitekeep-bench-password",
  };
  const bin = join(ROOT, "bin", "sitekeep.js");
  const sk = (profileDir: string | null, ...args: string[]): void => {
    const flags = profileDir ? ["--cpu-prof", `--cpu-prof-dir=${profileDir}`] : [];
    const t0 = performance.now();
    const r = spawnSync(process.execPath, [...flags, bin, "-r", repo, ...args], {
      env,
      stdio: ["ignore", "ignore", "inherit"],
    });
    console.log(
      `sitekeep ${args.join(" ")}: exit ${r.status}, ${((performance.now() - t0) / 1000).toFixed(2)} s`,
    );
  };
  sk(null, "init");
  const report: string[] = [
    `# Sitekeep CPU profiles: ${opts.set} set, scale ${opts.scale} (${ds.stats.files} files, ` +
      `${(ds.stats.bytes / 1e6).toFixed(0)} MB)`,
  ];
  const args: Record<string, string[]> = {
    backup: ["backup", ds.data],
    rerun: ["backup", ds.data],
    restore: ["restore", "latest", "--target", join(dir, "restored")],
    check: ["check", "--read-data"],
  };
  for (const step of steps) {
    if (!args[step]) throw new Error(`unknown step ${step} (backup, rerun, restore, check)`);
    const pdir = join(dir, step);
    spawnSync("sync");
    sk(pdir, ...args[step]);
    if (step === "restore") rmSync(join(dir, "restored"), { recursive: true, force: true });
    for (const f of readdirSync(pdir).filter((f) => f.endsWith(".cpuprofile"))) {
      const text = summarize(join(pdir, f), top);
      if (!text) continue;
      report.push("", `## ${step}`, "", text);
      console.log(`\n## ${step}\n\n${text}`);
    }
  }
  mkdirSync(out, { recursive: true });
  const file = join(out, `profile-${new Date().toISOString().replace(/[:.]/g, "-").slice(0, 19)}.md`);
  writeFileSync(file, report.join("\n") + "\n");
  console.log(`\nwrote ${file}; the .cpuprofile files are in ${dir} (open them in Chrome DevTools)`);
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) main();
