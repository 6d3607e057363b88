// Crash safety: backups killed with SIGKILL at points spread over their run never damage the
// repository. After every kill both Sitekeep's and restic's check pass, the older snapshot still
// restores byte for byte, and a final uninterrupted backup reuses what the killed runs uploaded and
// indexed.
//
// The trees are deterministic from a seed (SITEKEEP_CRASH_SEED=<n> to repeat one; it is printed on
// failure). The kill moments depend on real time as well, so a seed repeats the data and the chosen
// fractions of the run, not the exact instant.
//
// Kill timing: a run spends most of its wall time starting Node and tsx, taking its lock and
// loading the index before it writes anything. So each round first runs the same backup to its end
// on a throwaway copy of the repository, watching (inotify) when its lock, first pack and snapshot
// files appear; the real run is then killed at a fraction of that writing phase (first pack ->
// snapshot), counted from its own lock file. The fractions cover [-0.2, 1.2] in eight slots, in a
// seeded order, each at a random place within its slot; a run may still end before its kill
// (timing varies from run to run), which is fine. A last run is killed right after it wrote its
// first index file, so the final backup has indexed packs of a killed run to reuse.
import assert from "node:assert/strict";
import { type FSWatcher, promises as fsp, readdirSync, watch } from "node:fs";
import { join } from "node:path";
import { compareTrees } from "./helpers/compare.js";
import { SeededTree, prng, seededTest } from "./helpers/seeded-tree.js";
import { type KillableRun, type Seen as KSeen, killableRun } from "./helpers/killable-run.js";
import {
  describeRun,
  runCommand,
  runRestic,
  runSitekeep,
  type RunResult,
} from "./helpers/run.js";

const KiB = 1024;
const MiB = 1024 * 1024;
const ROUNDS = 8;
const ID_RE = /^[0-9a-f]{64}$/;

// ---- deterministic data -------------------------------------------------------------------------

class Tree extends SeededTree {
  constructor(root: string, seed: number, rnd: () => number) {
    super(root, seed, rnd, { minSize: 10 * KiB, spread: 102.4 }); // 10 KiB .. 1 MiB
  }

  randomFileName(dir: string): string {
    return this.newName(dir);
  }

  smallFiles(): string[] {
    return [...this.files.keys()].filter((f) => !f.startsWith("big-"));
  }
}

const DIRS = [
  "www",
  "www/assets",
  "www/assets/img",
  "conf",
  "db",
  "logs",
  "logs/old",
  "mail/cur",
  "mail/new",
  "home/a/b",
];

/** First version: 150 files of 10 KiB – 1 MiB in nested folders, plus two 8 MiB files. */
async function makeFirstVersion(t: Tree): Promise<void> {
  for (let i = 0; i < 150; i++) await t.write(t.randomFileName(t.pick(DIRS)), t.size());
  await t.write("big-a.bin", 8 * MiB);
  await t.write("big-b.bin", 8 * MiB);
}

/** The change after snapshot A: rewritten, patched, added and removed files (~20 MiB to store). */
async function changeTree(t: Tree): Promise<void> {
  const small = t.smallFiles();
  for (let i = 0; i < 30; i++) await t.write(t.pick(small), t.size()); // rewritten (maybe twice)
  for (let i = 0; i < 10; i++) {
    const f = t.pick(small);
    if (t.files.has(f) && t.files.get(f)! > 64 * KiB) await t.patch(f, 4 * KiB);
  }
  for (let i = 0; i < 8; i++) {
    const f = t.pick(t.smallFiles());
    if (t.files.has(f)) await t.remove(f);
  }
  for (let i = 0; i < 30; i++)
    await t.write(t.randomFileName(t.pick([...DIRS, "new", "new/deeper"])), t.size());
  await t.patch("big-a.bin", 256 * KiB); // content-defined chunking keeps most of it
  await t.write("big-b.bin", 8 * MiB); // entirely new content
}

/**
 * Each round replaces the previous round's folder with ~9 MiB of fresh files and rewrites one file,
 * so every run has data to store, also after earlier runs stored (or committed) the rest, and
 * its writing phase lasts long enough (~0.1-0.3 s) to aim kills at.
 */
async function roundChange(t: Tree, round: number): Promise<void> {
  if (round > 0) {
    for (const f of [...t.files.keys()].filter((f) => f.startsWith(`round-${round - 1}/`))) await t.remove(f);
    await fsp.rmdir(join(t.root, `round-${round - 1}`));
  }
  for (let i = 0; i < 12; i++)
    await t.write(`round-${round}/${i}.bin`, 512 * KiB + Math.floor(t.rnd() * 512 * KiB));
  await t.write(t.pick(t.smallFiles()), t.size());
}

// ---- processes ----------------------------------------------------------------------------------

type FileKind = "lock" | "pack" | "index" | "snapshot";

type Seen = KSeen<FileKind>;
const FILE_KINDS: FileKind[] = ["lock", "pack", "index", "snapshot"];

/**
 * Watches a repository's locks/, index/, snapshots/ and data/xx/ folders for files appearing under
 * their final (ID) names; calls onFile for each new one.
 */
function watchRepo(repo: string, onFile: (kind: FileKind) => void): () => void {
  const watchers: FSWatcher[] = [];
  const known = new Set<string>();
  const add = (dir: string, kind: FileKind): void => {
    for (const n of readdirSync(dir)) known.add(join(dir, n));
    const w = watch(dir, (_event, name) => {
      if (typeof name !== "string" || !ID_RE.test(name)) return;
      const p = join(dir, name);
      if (known.has(p)) return; // a removal (or a repeat event)
      known.add(p);
      onFile(kind);
    });
    w.on("error", () => undefined); // the folder of a finished measuring run is deleted
    watchers.push(w);
  };
  add(join(repo, "locks"), "lock");
  add(join(repo, "index"), "index");
  add(join(repo, "snapshots"), "snapshot");
  for (const sub of readdirSync(join(repo, "data"))) add(join(repo, "data", sub), "pack");
  return () => watchers.forEach((w) => w.close());
}

type Run = KillableRun<FileKind>;

/**
 * Spawns `sitekeep -r repo --pack-size 1 backup --json …` (as run.ts would, but killable). `killOn`
 * is asked at every new file the run writes; when it returns a delay, SIGKILL follows that many ms
 * later (unless the run has ended).
 */
function backupRun(
  repo: string,
  args: string[],
  env: Record<string, string>,
  killOn?: (kind: FileKind, seen: Seen) => number | undefined,
): Promise<Run> {
  return killableRun(["-r", repo, "--pack-size", "1", "backup", "--json", ...args], env, FILE_KINDS, (on) => watchRepo(repo, on), killOn);
}

function lockFiles(repo: string): string[] {
  return readdirSync(join(repo, "locks")).filter((n) => ID_RE.test(n));
}

/** Files left under temporary names by interrupted writes (data/xx/ID-tmp-…, index/ID-tmp-…, …). */
function tempFiles(repo: string): number {
  let n = 0;
  for (const d of ["locks", "index", "snapshots"])
    n += readdirSync(join(repo, d)).filter((f) => !ID_RE.test(f)).length;
  for (const sub of readdirSync(join(repo, "data")))
    n += readdirSync(join(repo, "data", sub)).filter((f) => !ID_RE.test(f)).length;
  return n;
}

function ok(r: RunResult, what: string): RunResult {
  assert.equal(r.code, 0, `${what}: ${describeRun(r)}`);
  return r;
}

function lastJSON(stdout: string): Record<string, unknown> {
  return JSON.parse(stdout.trim().split("\n").pop() as string) as Record<string, unknown>;
}

async function cpA(from: string, to: string): Promise<void> {
  const r = await runCommand("cp", ["-a", from, to]);
  assert.equal(r.code, 0, `cp -a ${from} ${to}: ${describeRun(r)}`);
}

async function rmrf(p: string): Promise<void> {
  await runCommand("chmod", ["-R", "u+rwx", p]).catch(() => undefined);
  await fsp.rm(p, { recursive: true, force: true });
}

const fmtSeen = (c: Record<FileKind, number>): string =>
  `${c.pack} packs, ${c.index} index files, ${c.snapshot ? "the snapshot" : "no snapshot"}`;

// ---- the test -----------------------------------------------------------------------------------

seededTest("backups killed at any moment leave a repository that checks clean and restores", "SITEKEEP_CRASH_SEED", scenario);

async function scenario(t: { diagnostic(msg: string): void }, dir: string, seed: number): Promise<void> {
  const started = performance.now();
  const rnd = prng(seed);
  const env = {
    SITEKEEP_PASSWORD: "crash-pw",
    RESTIC_PASSWORD: "crash-pw",
    SITEKEEP_CACHE_DIR: join(dir, "cache"),
    HOME: dir,
    SITEKEEP_SCRYPT_N: "1024",
  };
  const measureEnv = { ...env, SITEKEEP_CACHE_DIR: join(dir, "cache-measure") };
  const repo = join(dir, "repo");
  const src = join(dir, "src");
  const v1 = join(dir, "v1");
  const restoreA = join(dir, "restore-a");
  const scratch = join(dir, "measure");
  const tree = new Tree(src, seed, rnd);
  const note = (msg: string): void => t.diagnostic(msg);

  // Snapshot A of the first version, and a copy of that version to compare restores with.
  await makeFirstVersion(tree);
  ok(await runSitekeep(["-r", repo, "init"], { env }), "init");
  const a = lastJSON(
    ok(await runSitekeep(["-r", repo, "--pack-size", "1", "backup", src, "--json"], { env }), "backup A")
      .stdout,
  );
  const snapA = a.snapshot_id as string;
  await cpA(src, v1);
  note(`first version: ${tree.files.size} files, ${(tree.total() / MiB).toFixed(1)} MiB`);

  /** The same backup run to its end on a throwaway copy of the repository: what an uninterrupted run does. */
  const measure = async (label: string): Promise<Run> => {
    await cpA(repo, scratch);
    const m = await backupRun(scratch, [src], measureEnv);
    await rmrf(scratch);
    assert.equal(m.code, 0, `${label}: the measuring run failed\n${m.stdout}\n${m.stderr}`);
    for (const k of ["lock", "pack", "snapshot"] as const) {
      assert.ok(
        m.seen.first[k] !== undefined,
        `${label}: the measuring run wrote no ${k} file (or it was not seen)`,
      );
    }
    return m;
  };

  /** Everything that must hold after a run was killed. */
  const afterKill = async (label: string, r: Run): Promise<string> => {
    let what: string;
    if (r.signal === "SIGKILL") {
      what = `killed after ${fmtSeen(r.seenAtKill!)}`;
    } else {
      assert.equal(
        r.code,
        0,
        `${label}: the run ended before its kill, but failed\n${r.stdout}\n${r.stderr}`,
      );
      what = "ended before its kill";
    }

    // Sitekeep ignores the stale lock of the killed process...
    const locks = lockFiles(repo);
    const check = ok(await runSitekeep(["-r", repo, "check"], { env }), `${label} (${what}): sitekeep check`);
    const unindexed = /not named by any index/.test(check.stdout);

    // ...restic 0.14 refuses to run with it: remove it as an operator would.
    const unlock = ok(
      await runSitekeep(["-r", repo, "unlock", "--json"], { env }),
      `${label}: sitekeep unlock`,
    );
    assert.ok(locks.length <= 1, `${label}: ${locks.length} locks after one killed run`);
    if (r.signal === "SIGKILL" && r.seenAtKill!.lock && !r.seenAtKill!.snapshot) {
      assert.equal(locks.length, 1, `${label}: killed before its snapshot, yet its lock is gone`);
    }
    assert.equal(
      lastJSON(unlock.stdout).removed,
      locks.length,
      `${label}: unlock should have removed the stale lock ${locks.join(" ")}\n${unlock.stdout}`,
    );
    assert.deepEqual(lockFiles(repo), [], `${label}: locks left after unlock`);

    const rc = await runRestic(["-r", repo, "check"], { env });
    assert.equal(rc.code, 0, `${label} (${what}): restic check: ${describeRun(rc)}`);

    // Snapshot A is untouched.
    ok(
      await runSitekeep(["-r", repo, "restore", snapA, "--target", restoreA], { env }),
      `${label}: restore A`,
    );
    assert.deepEqual(
      await compareTrees(v1, join(restoreA, src)),
      [],
      `${label} (${what}): snapshot A restores differently`,
    );
    await rmrf(restoreA);

    return `${what}; ${locks.length} stale lock${unindexed ? "; check noted unindexed packs" : ""}; ${tempFiles(repo)} temp files in the repository`;
  };

  await changeTree(tree);

  // Kill moments: fractions of the measured writing phase (first new pack -> snapshot file), from a
  // little before it (walking the tree, reading the parent) to a little after (releasing the lock).
  // One fraction in each of ROUNDS equal slots of [-0.2, 1.2], in a seeded order, randomly placed.
  const slots = Array.from({ length: ROUNDS }, (_, i) => i);
  for (let i = slots.length - 1; i > 0; i--) {
    const j = Math.floor(rnd() * (i + 1));
    [slots[i], slots[j]] = [slots[j], slots[i]];
  }
  const fractions = slots.map((s) => -0.2 + (1.4 * (s + 0.1 + 0.8 * rnd())) / ROUNDS);

  for (let round = 0; round < ROUNDS; round++) {
    await roundChange(tree, round);
    const label = `round ${round}`;
    const m = await measure(label);
    const toFirstPack = m.seen.first.pack! - m.seen.first.lock!;
    const writing = m.seen.first.snapshot! - m.seen.first.pack!;
    const f = fractions[round];
    const delay = Math.max(0, toFirstPack + f * writing);
    const r = await backupRun(repo, [src], env, (kind) => (kind === "lock" ? delay : undefined));
    const result = await afterKill(label, r);
    note(
      `${label}: kill planned ${Math.round(delay)} ms after the lock (${Math.round(f * 100)}% of writing: ` +
        `${Math.round(toFirstPack)} ms to the first pack, ${Math.round(writing)} ms to the snapshot, ${m.seen.count.pack} packs); ${result}`,
    );
  }

  // A run killed just after it wrote an index file, with more to store: the final backup must
  // reuse what that index names. Fresh content for both big files makes ~16 packs, two indexes.
  await tree.write("big-a.bin", 8 * MiB);
  await tree.write("big-b.bin", 8 * MiB);
  const m = await measure("reuse run");
  const r = await backupRun(repo, [src], env, (kind) => (kind === "index" ? 0 : undefined));
  assert.equal(
    r.signal,
    "SIGKILL",
    `the reuse run ended (exit ${r.code}) before it was killed\n${r.stdout}\n${r.stderr}`,
  );
  assert.equal(r.seenAtKill!.snapshot, 0, "the reuse run was killed only after it wrote its snapshot");
  note(`reuse run: ${await afterKill("reuse run", r)}`);

  // A final uninterrupted backup succeeds and stores less than the same backup into the repository
  // as it was before the reuse run (the measuring run above).
  const total = tree.total();
  const final = lastJSON(
    ok(await runSitekeep(["-r", repo, "--pack-size", "1", "backup", src, "--json"], { env }), "final backup")
      .stdout,
  );
  const added = Number(final.data_added);
  const uninterrupted = Number(lastJSON(m.stdout).data_added);
  note(
    `final: ${tree.files.size} files, ${(total / MiB).toFixed(1)} MiB; data_added ${(added / MiB).toFixed(1)} MiB, ` +
      `${(uninterrupted / MiB).toFixed(1)} MiB without the killed run's packs`,
  );
  assert.ok(added < total, `final backup added ${added} of ${total} bytes`);
  assert.ok(
    added < uninterrupted - 4 * MiB,
    `final backup added ${added} bytes; without the killed run it adds ${uninterrupted}: the packs of the killed run's index file were not reused`,
  );

  const restoreFinal = join(dir, "restore-final");
  ok(
    await runSitekeep(["-r", repo, "restore", final.snapshot_id as string, "--target", restoreFinal], {
      env,
    }),
    "restore final",
  );
  assert.deepEqual(
    await compareTrees(src, join(restoreFinal, src)),
    [],
    "the final snapshot restores differently",
  );
  await rmrf(restoreFinal);

  ok(await runSitekeep(["-r", repo, "check", "--read-data"], { env }), "sitekeep check --read-data");
  const rd = await runRestic(["-r", repo, "check", "--read-data"], { env });
  assert.equal(rd.code, 0, `restic check --read-data: ${describeRun(rd)}`);
  note(`took ${((performance.now() - started) / 1000).toFixed(1)} s`);
}
