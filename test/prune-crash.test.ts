// Crash safety of prune: `sitekeep prune --max-unused 0%` killed with SIGKILL at moments spread
// over its writing phase never damages the repository. After every kill, with the killed run's
// stale lock still in place, Sitekeep's and restic's `check --read-data` pass and every remaining
// snapshot restores byte for byte; an uninterrupted prune then finishes the job: the repository
// checks clean (Sitekeep and restic), holds exactly the blobs the snapshots need (a dry run finds
// nothing left to remove or repack, and the same used blobs as the uninterrupted prune kept), and
// is no larger than the same repository pruned without interruption (a few hundred bytes either
// way: the packs are cut differently; files under ID names counted, not the temp files of killed
// writes, which nothing removes: their number and size are printed). `sitekeep unlock` then removes
// exactly the killed run's lock.
//
// The repository: five snapshots of a deterministic tree (SITEKEEP_PRUNE_CRASH_SEED=<n> repeats
// one; it is printed, and on failure it heads the message) with --pack-size 1 and files from 4 KiB
// to 2.5 MiB, so there are ~30 packs. The first and third snapshots are forgotten: the old versions
// of files rewritten or removed later leave packs partly used (prune repacks them), and a 5 MiB
// dump only the third snapshot had leaves packs entirely unused (prune deletes them).
//
// Kill timing: prune spends most of its wall time (~0.3 s) starting Node and tsx, locking and
// reading the index and the trees before it writes anything; its writing phase (new packs and
// their index files, the index file superseding the old ones, removing old index files, removing
// packs) lasts only ~50-100 ms. So a reference prune first runs to its end on a copy of the
// repository, watched with inotify (fs.watch), to learn when its first new pack, new index files
// and removals happen. Each round then prunes a fresh `cp -a` copy and kills it either at a seeded
// fraction of the measured writing phase (first new pack -> last pack removal), counted from the
// run's own first new pack (start-up time varies by more than the whole writing phase lasts), or
// right after a chosen event of its own (the index file that ends repacking, the index file that
// supersedes the old ones, the first index removal, the first pack removal) so that the short
// later steps are hit too. A seed repeats the data and the chosen fractions, not the exact instant;
// the state each kill left is printed per round (new packs and index files, old index files left,
// obsolete packs removed), and at least half the kills must land inside the writing phase.
import assert from "node:assert/strict";
import { type FSWatcher, existsSync, promises as fsp, readdirSync, statSync, watch } from "node:fs";
import { join } from "node:path";
import { compareTrees } from "./helpers/compare.js";
import { SeededTree, prng, seededTest } from "./helpers/seeded-tree.js";
import { type KillableRun, type Seen as KSeen, killableRun } from "./helpers/killable-run.js";
import type { PruneStats } from "../src/archive/pruner.js";
import {
  describeRun,
  runCommand,
  runRestic,
  runSitekeep,
  type RunResult,
} from "./helpers/run.js";

const KiB = 1024;
const MiB = 1024 * 1024;
const TIMED_ROUNDS = 4;
const ID_RE = /^[0-9a-f]{64}$/;
/** The interrupted-then-finished repository may exceed the uninterrupted one by this share... */
const SIZE_TOLERANCE = 0.005;
/** ...or by this many bytes (pack headers and index files: the packs are cut differently). */
const SIZE_SLACK = 64 * KiB;

// ---- deterministic data -------------------------------------------------------------------------

class Tree extends SeededTree {
  constructor(root: string, seed: number, rnd: () => number) {
    super(root, seed, rnd, { minSize: 4 * KiB, spread: 128 }); // 4 KiB .. 512 KiB
  }

  /** The small files (not media/, not the dump), optionally only those under `prefix`. */
  small(prefix = ""): string[] {
    return [...this.files.keys()].filter(
      (f) => f.startsWith(prefix) && !f.startsWith("media/") && f !== "tmp/dump.bin",
    );
  }

  async rewriteSome(n: number): Promise<void> {
    for (let i = 0; i < n; i++) await this.write(this.pick(this.small()), this.size());
  }

  async removeSome(n: number, prefix = ""): Promise<void> {
    for (let i = 0; i < n; i++) {
      const list = this.small(prefix);
      if (list.length) await this.remove(this.pick(list));
    }
  }

  async addSome(n: number, dirs: string[]): Promise<void> {
    for (let i = 0; i < n; i++) await this.write(this.newName(this.pick(dirs)), this.size());
  }

}

const DIRS = ["www", "www/assets", "www/assets/img", "conf", "db", "mail/cur", "mail/new", "home/a/b"];

/**
 * The five versions backed up; S0 and S2 are forgotten later. Each step's comment says what its
 * changes leave for prune once S0 and S2 are gone.
 */
const VERSIONS: ((t: Tree) => Promise<void>)[] = [
  // S0 (forgotten): ~140 small files and three 1-2.5 MiB media files.
  async (t) => {
    await t.addSome(140, DIRS);
    for (let i = 0; i < 3; i++) await t.write(`media/m${i}.bin`, MiB + Math.floor(t.rnd() * 1.5 * MiB));
  },
  // S1 (kept): rewritten and removed files whose old content only S0 has, interleaved with still
  // used files in S0's packs (partly used: repacked); new files; m0 replaced.
  async (t) => {
    await t.rewriteSome(30);
    await t.removeSome(12);
    await t.addSome(25, DIRS);
    await t.write("media/m0.bin", 2 * MiB);
  },
  // S2 (forgotten): a dump only S2 has (whole packs unused: deleted), a short-lived cache, churn.
  async (t) => {
    await t.write("tmp/dump.bin", 5 * MiB);
    await t.addSome(20, ["tmp/cache"]);
    await t.rewriteSome(20);
  },
  // S3 (kept): the dump and most of the cache gone, more rewrites, a patched media file.
  async (t) => {
    await t.remove("tmp/dump.bin");
    await t.removeSome(15, "tmp/cache/");
    await t.rewriteSome(15);
    await t.patch("media/m1.bin", 64 * KiB);
  },
  // S4 (kept, newest).
  async (t) => {
    await t.rewriteSome(10);
    await t.addSome(10, DIRS);
  },
];
const FORGOTTEN = [0, 2];

// ---- processes ----------------------------------------------------------------------------------

/** What prune does to the repository, as seen by inotify. */
type Ev = "lock" | "pack" | "index" | "index-removed" | "pack-removed";
const EVENTS: Ev[] = ["lock", "pack", "index", "index-removed", "pack-removed"];

type Seen = KSeen<Ev>;

/**
 * Watches a repository's locks/, index/ and data/xx/ folders for files appearing under their final
 * (ID) names, and for index files and packs being removed; calls onEvent for each.
 */
function watchRepo(repo: string, onEvent: (ev: Ev) => void): () => void {
  const watchers: FSWatcher[] = [];
  const add = (dir: string, created: Ev, removed?: Ev): void => {
    const known = new Set(readdirSync(dir));
    const gone = new Set<string>();
    const w = watch(dir, (_event, name) => {
      if (typeof name !== "string" || !ID_RE.test(name)) return;
      if (!known.has(name)) {
        known.add(name);
        onEvent(created);
      } else if (removed && !gone.has(name) && !existsSync(join(dir, name))) {
        gone.add(name);
        onEvent(removed);
      }
    });
    w.on("error", () => undefined); // the repository copy may be deleted first
    watchers.push(w);
  };
  add(join(repo, "locks"), "lock");
  add(join(repo, "index"), "index", "index-removed");
  for (const sub of readdirSync(join(repo, "data"))) add(join(repo, "data", sub), "pack", "pack-removed");
  return () => watchers.forEach((w) => w.close());
}

type Run = KillableRun<Ev>;

/**
 * Spawns `sitekeep -r repo --pack-size 1 prune --max-unused 0% --json`, watching the repository.
 * `killOn` is asked at every event; when it returns a delay, SIGKILL follows that many ms later
 * (unless the run has ended).
 */
function pruneRun(repo: string, env: Record<string, string>, killOn?: (ev: Ev, seen: Seen) => number | undefined): Promise<Run> {
  return killableRun(["-r", repo, "--pack-size", "1", "prune", "--max-unused", "0%", "--json"], env, EVENTS, (on) => watchRepo(repo, on), killOn);
}

// ---- repository inspection ----------------------------------------------------------------------

interface RepoFiles {
  index: Set<string>;
  packs: Set<string>;
  locks: number;
  /** Files left under temporary names by interrupted writes (data/xx/ID-tmp-…, index/ID-tmp-…). */
  temp: number;
  /** Their bytes, except those that are only a second link to a published file (no space of their own). */
  tempBytes: number;
  /** Bytes in index/, data/ and snapshots/ files under ID names. */
  bytes: number;
}

function repoFiles(repo: string): RepoFiles {
  const r: RepoFiles = { index: new Set(), packs: new Set(), locks: 0, temp: 0, tempBytes: 0, bytes: 0 };
  const scan = (dir: string, into?: Set<string>): void => {
    for (const n of readdirSync(dir)) {
      if (!ID_RE.test(n)) {
        const st = statSync(join(dir, n));
        r.temp++;
        if (st.nlink === 1) r.tempBytes += st.size;
        continue;
      }
      into?.add(n);
      r.bytes += statSync(join(dir, n)).size;
    }
  };
  scan(join(repo, "index"), r.index);
  scan(join(repo, "snapshots"));
  for (const sub of readdirSync(join(repo, "data"))) scan(join(repo, "data", sub), r.packs);
  r.locks = readdirSync(join(repo, "locks")).filter((n) => ID_RE.test(n)).length;
  return r;
}

const count = <T>(s: Set<T>, pred: (x: T) => boolean): number => [...s].filter(pred).length;

/** `sitekeep prune --json`: the pruner's own stats type. */
type PruneJSON = PruneStats;

function ok(r: RunResult, what: string): RunResult {
  assert.equal(r.code, 0, `${what}: ${describeRun(r)}`);
  return r;
}

function lastJSON<T = Record<string, unknown>>(stdout: string): T {
  return JSON.parse(stdout.trim().split("\n").pop() as string) as T;
}

async function cpA(from: string, to: string): Promise<void> {
  const r = await runCommand("cp", ["-a", from, to]);
  assert.equal(r.code, 0, `cp -a ${from} ${to}: ${describeRun(r)}`);
}

async function rmrf(p: string): Promise<void> {
  await runCommand("chmod", ["-R", "u+rwx", p]).catch(() => undefined);
  await fsp.rm(p, { recursive: true, force: true });
}

/** Runs two chains of steps side by side; waits for both, then throws the first failure. */
async function both(a: () => Promise<void>, b: () => Promise<void>): Promise<void> {
  const [ra, rb] = await Promise.allSettled([a(), b()]);
  if (ra.status === "rejected") throw ra.reason;
  if (rb.status === "rejected") throw rb.reason;
}

const mib = (n: number): string => `${(n / MiB).toFixed(2)} MiB`;

// ---- the test -----------------------------------------------------------------------------------

seededTest("prune killed at any moment leaves a repository that checks clean and restores; the next prune finishes", "SITEKEEP_PRUNE_CRASH_SEED", scenario);

async function scenario(t: { diagnostic(msg: string): void }, dir: string, seed: number): Promise<void> {
  const started = performance.now();
  const rnd = prng(seed);
  const baseEnv = {
    SITEKEEP_PASSWORD: "prune-crash-pw",
    RESTIC_PASSWORD: "prune-crash-pw",
    SITEKEEP_CACHE_DIR: join(dir, "cache"),
    HOME: dir,
    SITEKEEP_SCRYPT_N: "1024",
  };
  const repo = join(dir, "repo");
  const src = join(dir, "src");
  const tree = new Tree(src, seed, rnd);
  const note = (msg: string): void => t.diagnostic(msg);

  // ---- the repository: five snapshots, two of them forgotten ----
  ok(await runSitekeep(["-r", repo, "init"], { env: baseEnv }), "init");
  const snaps: string[] = [];
  const kept: { id: string; copy: string }[] = [];
  for (const [i, change] of VERSIONS.entries()) {
    await change(tree);
    const b = ok(
      await runSitekeep(["-r", repo, "--pack-size", "1", "backup", src, "--json"], { env: baseEnv }),
      `backup S${i}`,
    );
    snaps.push(lastJSON(b.stdout).snapshot_id as string);
    if (!FORGOTTEN.includes(i)) {
      const copy = join(dir, `keep-${i}`);
      await cpA(src, copy);
      kept.push({ id: snaps[i], copy });
    }
  }
  ok(
    await runSitekeep(["-r", repo, "forget", ...FORGOTTEN.map((i) => snaps[i]), "--json"], { env: baseEnv }),
    "forget",
  );
  const base = repoFiles(repo);
  note(
    `repository: ${snaps.length} snapshots (${FORGOTTEN.map((i) => `S${i}`).join(", ")} forgotten), ` +
      `${base.packs.size} packs, ${base.index.size} index files, ${mib(base.bytes)}; newest tree ` +
      `${tree.files.size} files, ${mib(tree.total())}`,
  );

  // ---- the reference: an uninterrupted prune of a copy, watched to time the kills ----
  const ref = join(dir, "ref");
  await cpA(repo, ref);
  const refEnv = { ...baseEnv, SITEKEEP_CACHE_DIR: join(dir, "cache-ref") };
  const m = await pruneRun(ref, refEnv);
  assert.equal(m.code, 0, `the reference prune failed\n${m.stdout}\n${m.stderr}`);
  const refStats = lastJSON<PruneJSON>(m.stdout);
  assert.ok(
    refStats.packs_removed > 0 && refStats.packs_repacked > 0,
    `the scenario must make prune both delete and repack packs: ${JSON.stringify(refStats)}`,
  );
  for (const ev of EVENTS) {
    assert.ok(
      m.seen.first[ev] !== undefined,
      `the reference prune showed no ${ev} event: ${JSON.stringify(m.seen)}`,
    );
  }
  const refFiles = repoFiles(ref);
  const obsolete = new Set([...base.packs].filter((p) => !refFiles.packs.has(p)));
  assert.equal(
    obsolete.size,
    refStats.packs_removed + refStats.packs_repacked + refStats.packs_unreferenced_removed,
    "packs gone after the reference prune",
  );
  assert.equal(
    count(refFiles.index, (i) => base.index.has(i)),
    0,
    "old index files left by the reference prune",
  );
  ok(await runSitekeep(["-r", ref, "check"], { env: refEnv }), "reference: sitekeep check");
  const refAfter = lastJSON<PruneJSON>(
    ok(
      await runSitekeep(["-r", ref, "prune", "--max-unused", "0%", "--dry-run", "--json"], { env: refEnv }),
      "reference: dry run",
    ).stdout,
  );
  assert.equal(
    refAfter.blobs_unused,
    0,
    `the reference prune left unused blobs: ${JSON.stringify(refAfter)}`,
  );
  await rmrf(ref);
  const newIndexes = m.seen.count.index; // the last one supersedes the old index files
  const toFirstPack = m.seen.first.pack! - m.seen.first.lock!;
  const writing = m.seen.last["pack-removed"]! - m.seen.first.pack!;
  note(
    `reference prune: removed ${refStats.packs_removed} packs, repacked ${refStats.packs_repacked} ` +
      `(${mib(refStats.bytes_repacked)}), wrote ${m.seen.count.pack} packs and ${newIndexes} index files, ` +
      `removed ${m.seen.count["index-removed"]} index files and ${m.seen.count["pack-removed"]} packs; ` +
      `${Math.round(toFirstPack)} ms from its lock to the first new pack, writing phase ${Math.round(writing)} ms ` +
      `(last new index at ${Math.round(m.seen.last.index! - m.seen.first.pack!)} ms, first removal at ` +
      `${Math.round(m.seen.first["index-removed"]! - m.seen.first.pack!)} ms); repository ${mib(base.bytes)} -> ${mib(refFiles.bytes)}`,
  );

  // ---- kill plans ----
  interface Plan {
    name: string;
    killOn: (ev: Ev, seen: Seen) => number | undefined;
  }
  const plans: Plan[] = [];
  // Timed: one fraction of the writing phase in each of TIMED_ROUNDS equal slots of [0, 1),
  // randomly placed, counted from the run's own first new pack (start-up time varies by tens of
  // ms from run to run, more than the whole writing phase lasts).
  for (let s = 0; s < TIMED_ROUNDS; s++) {
    const f = (s + 0.1 + 0.8 * rnd()) / TIMED_ROUNDS;
    const delay = f * writing;
    plans.push({
      name: `at ${Math.round(f * 100)}% of the writing phase (${Math.round(delay)} ms after its first new pack)`,
      killOn: (ev, seen) => (ev === "pack" && seen.count.pack === 1 ? delay : undefined),
    });
  }
  plans.push(
    {
      name: `right after index file ${newIndexes - 1} of ${newIndexes} (repacking done)`,
      killOn: (ev, s) => (ev === "index" && s.count.index === newIndexes - 1 ? 0 : undefined),
    },
    {
      name: `right after index file ${newIndexes} of ${newIndexes} (superseding the old ones)`,
      killOn: (ev, s) => (ev === "index" && s.count.index === newIndexes ? 0 : undefined),
    },
    { name: "at the first index removal", killOn: (ev) => (ev === "index-removed" ? 0 : undefined) },
    { name: "at the first pack removal", killOn: (ev) => (ev === "pack-removed" ? 0 : undefined) },
  );

  // ---- the rounds ----
  let interrupted = 0;
  let tempLeft = 0;
  const work = join(dir, "work");
  const restoreDir = join(dir, "restore");
  for (const [round, plan] of plans.entries()) {
    const label = `round ${round} (kill ${plan.name})`;
    const roundStart = performance.now();
    const env = { ...baseEnv, SITEKEEP_CACHE_DIR: join(dir, `cache-${round}`) };
    await cpA(repo, work);
    const r = await pruneRun(work, env, plan.killOn);
    const after = repoFiles(work);
    const oldIdxLeft = count(base.index, (i) => after.index.has(i));
    const newIdx = count(after.index, (i) => !base.index.has(i));
    const newPacks = count(after.packs, (p) => !base.packs.has(p));
    const removed = count(obsolete, (p) => !after.packs.has(p));
    let what: string;
    assert.ok(after.locks <= 1, `${label}: ${after.locks} locks after one run`);
    if (r.signal === "SIGKILL") {
      assert.ok(r.killedAt !== undefined, `${label}: killed by someone else`);
      const finished = oldIdxLeft === 0 && removed === obsolete.size;
      const untouched = newPacks === 0 && newIdx === 0;
      if (!finished && !untouched) interrupted++;
      if (!finished)
        assert.equal(after.locks, 1, `${label}: killed before it finished, yet its lock is gone`);
      what =
        (r.seen.first.pack !== undefined && r.seen.first.pack <= r.killedAt!
          ? `killed ${Math.round(r.killedAt! - r.seen.first.pack)} ms after its first new pack: `
          : `killed ${Math.round(r.killedAt! - (r.seen.first.lock ?? 0))} ms after its lock: `) +
        (untouched ? "nothing written yet; " : finished ? "its work was already complete; " : "") +
        `${newPacks} new packs, ${newIdx} new index files, ${oldIdxLeft}/${base.index.size} old index files left, ` +
        `${removed}/${obsolete.size} obsolete packs removed, ${after.locks} stale lock, ${after.temp} temp files (${after.tempBytes} bytes of their own)`;
    } else {
      assert.equal(
        r.code,
        0,
        `${label}: the run ended before its kill, but failed\n${r.stdout}\n${r.stderr}`,
      );
      what = "ended before its kill";
    }
    const at = `${label}, ${what}`;

    // With the killed run's stale lock in place, Sitekeep checks every byte and restores every
    // snapshot; restic 0.14 would refuse to lock the repository while that lock exists, so it
    // checks every byte without locking. All read only: two chains side by side.
    await both(
      async () => {
        ok(
          await runSitekeep(["-r", work, "check", "--read-data"], { env }),
          `${at}: sitekeep check --read-data`,
        );
        ok(
          await runRestic(["-r", work, "--no-lock", "check", "--read-data"], { env }),
          `${at}: restic check --read-data`,
        );
      },
      async () => {
        for (const k of kept) {
          ok(
            await runSitekeep(["-r", work, "restore", k.id, "--target", restoreDir], { env }),
            `${at}: restore ${k.id}`,
          );
          assert.deepEqual(
            await compareTrees(k.copy, join(restoreDir, src)),
            [],
            `${at}: snapshot ${k.id} restores differently`,
          );
          await rmrf(restoreDir);
        }
      },
    );

    // An uninterrupted prune, the stale lock still in place (as for the next scheduled prune after
    // a crash), finishes the job; then `sitekeep unlock` removes exactly that lock.
    const fin = lastJSON<PruneJSON>(
      ok(
        await runSitekeep(["-r", work, "--pack-size", "1", "prune", "--max-unused", "0%", "--json"], { env }),
        `${at}: the finishing prune`,
      ).stdout,
    );
    const unlock = ok(await runSitekeep(["-r", work, "unlock", "--json"], { env }), `${at}: sitekeep unlock`);
    assert.equal(
      lastJSON(unlock.stdout).removed,
      after.locks,
      `${at}: unlock should remove the killed run's lock\n${unlock.stdout}`,
    );
    assert.equal(repoFiles(work).locks, 0, `${at}: locks left after unlock`);
    let left: PruneJSON | undefined;
    await both(
      async () => {
        ok(
          await runSitekeep(["-r", work, "check"], { env }),
          `${at}: sitekeep check after the finishing prune`,
        );
        // (prune takes an exclusive lock, also for a dry run: after the check, not beside it)
        left = lastJSON<PruneJSON>(
          ok(
            await runSitekeep(["-r", work, "prune", "--max-unused", "0%", "--dry-run", "--json"], { env }),
            `${at}: dry run after the finishing prune`,
          ).stdout,
        );
      },
      async () => {
        ok(
          await runRestic(["-r", work, "--no-lock", "check"], { env }),
          `${at}: restic check after the finishing prune`,
        );
      },
    );
    assert.ok(left);
    assert.deepEqual(
      {
        packs_removed: left.packs_removed,
        packs_repacked: left.packs_repacked,
        packs_unreferenced_removed: left.packs_unreferenced_removed,
        blobs_unused: left.blobs_unused,
        bytes_unused_before: left.bytes_unused_before,
        blobs_used: left.blobs_used,
        bytes_used: left.bytes_used,
      },
      {
        packs_removed: 0,
        packs_repacked: 0,
        packs_unreferenced_removed: 0,
        blobs_unused: 0,
        bytes_unused_before: 0,
        blobs_used: refAfter.blobs_used,
        bytes_used: refAfter.bytes_used,
      },
      `${at}: after the finishing prune, a dry run still finds work (or other blobs than the uninterrupted prune kept)`,
    );
    const final = repoFiles(work);
    assert.equal(
      count(final.index, (i) => base.index.has(i)),
      0,
      `${at}: old index files left after the finishing prune`,
    );
    assert.equal(
      count(final.packs, (p) => obsolete.has(p)),
      0,
      `${at}: obsolete packs left after the finishing prune`,
    );
    assert.ok(
      final.bytes <= refFiles.bytes * (1 + SIZE_TOLERANCE) || final.bytes <= refFiles.bytes + SIZE_SLACK,
      `${at}: the finished repository holds ${final.bytes} bytes, the uninterrupted prune's ${refFiles.bytes}`,
    );
    note(
      `${label}: ${what}; finishing prune removed ${fin.packs_removed} + ${fin.packs_unreferenced_removed} ` +
        `unreferenced packs, repacked ${fin.packs_repacked}; final size ${final.bytes - refFiles.bytes >= 0 ? "+" : ""}` +
        `${final.bytes - refFiles.bytes} bytes vs uninterrupted` +
        (final.temp ? `, plus ${final.temp} temp files (${final.tempBytes} bytes) the killed run left` : "") +
        ` (${((performance.now() - roundStart) / 1000).toFixed(1)} s)`,
    );
    // The finishing prune, holding the exclusive lock, removes what killed writers left.
    assert.equal(final.temp, 0, `${at}: the finishing prune left ${final.temp} temporary files of killed writes`);
    tempLeft += final.tempBytes;
    await rmrf(work);
  }
  assert.ok(
    interrupted >= plans.length / 2,
    `only ${interrupted} of ${plans.length} kills landed inside the writing phase: the timing is off`,
  );
  note(
    `${interrupted} of ${plans.length} kills interrupted prune mid-write; ${tempLeft} bytes in temp files ` +
      `of killed writes were left behind in all (the finishing prune removes them)`,
  );
  note(`took ${((performance.now() - started) / 1000).toFixed(1)} s`);
}
