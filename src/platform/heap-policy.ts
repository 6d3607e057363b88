// How large V8 lets its heap grow between collections. By default it sizes the heap for
// throughput: the young generation grows to two 16 MiB semi-spaces, and after each full
// collection the old generation may grow to up to four times what survived. The mixed initial
// backup keeps ~25 MiB of JavaScript objects alive, and its heap reached 96-112 MiB: a third of
// its peak RSS was garbage awaiting a collection (bench/README.md, "What session 14 changed").
//
// Both knobs are V8 flags that V8 reads again at each collection, so they can be set once the
// process runs (only the semi-space's maximum is fixed when the heap is created, hence the growth
// factor below). Flags given on Node's command line or in NODE_OPTIONS win over this policy.
import { PerformanceObserver } from "node:perf_hooks";
import v8 from "node:v8";

export interface HeapPolicy {
  /** After a full collection, the old generation may grow by this share of what survived. */
  growingPercent: number;
  /** Each of the young generation's two semi-spaces grows up to this size (a power of two), then stays. */
  semiSpaceMiB: number;
}

/**
 * Measured by hand on the bench's datasets (bench/README.md, "What session 14 changed"): the mixed
 * initial backup peaks at 198-203 MiB instead of 277-284 MiB for ~0.5 s (6 %) more, the
 * many-files one at 282-283 MiB instead of 368-405 MiB in about V8's time. Growth by 50 % saved
 * another ~15 MiB and cost the many-files backup 10-20 % (its live heap is 35-60 MiB, and each
 * full collection marks all of it); two 4 MiB semi-spaces saved ~10 MiB and cost it 20-30 % (its
 * entries live long enough to be copied by every scavenge).
 */
export const COMPACT_HEAP: HeapPolicy = { growingPercent: 100, semiSpaceMiB: 8 };

/**
 * For commands whose bytes live outside V8's heap and whose objects die young: `check` and
 * `restore` keep their packs, pieces and blobs in ArrayBuffers, and their live heap is 10-25 MiB.
 * Two 2 MiB semi-spaces (4 MiB was passed: the policy sees a collection after it, and the many
 * set's check doubled them twice to 8) took 13-25 MiB off their peaks for the same time
 * (bench/README.md, "What session 17 changed").
 */
export const LEAN_HEAP: HeapPolicy = { growingPercent: 100, semiSpaceMiB: 2 };

/** The policy for a command of the CLI, by its name. */
export function heapPolicyFor(command: string): HeapPolicy {
  return command === "check" || command === "restore" ? LEAN_HEAP : COMPACT_HEAP;
}

const NODE_FLAGS = {
  growing: /(^|\s)--heap[-_]growing[-_]percent\b/,
  semiSpace: /(^|\s)--(max[-_]semi[-_]space[-_]size|semi[-_]space[-_]growth[-_]factor|max[-_]heap[-_]size)\b/,
};

function newSpaceBytes(): number {
  return v8.getHeapSpaceStatistics().find((s) => s.space_name === "new_space")?.space_size ?? 0;
}

/**
 * Applies `policy` to this process's heap unless SITEKEEP_COMPACT_HEAP=0. The young generation
 * starts at 1 MiB per semi-space and doubles when enough survives a scavenge; once it reaches the
 * policy's size its growth factor becomes 1. The check runs after each collection until then.
 */
export function keepHeapCompact(
  policy: HeapPolicy = COMPACT_HEAP,
  env: NodeJS.ProcessEnv = process.env,
): void {
  if (env.SITEKEEP_COMPACT_HEAP === "0") return;
  const given = [...process.execArgv, env.NODE_OPTIONS ?? ""].join(" ");
  if (!NODE_FLAGS.growing.test(given))
    v8.setFlagsFromString(`--heap-growing-percent=${policy.growingPercent}`);
  if (NODE_FLAGS.semiSpace.test(given)) return;
  // space_size counts both semi-spaces.
  const limit = policy.semiSpaceMiB * 2 * 1024 * 1024;
  const stopGrowing = (): boolean => {
    if (newSpaceBytes() < limit) return false;
    v8.setFlagsFromString("--semi-space-growth-factor=1");
    return true;
  };
  if (stopGrowing()) return;
  const observer = new PerformanceObserver(() => {
    if (stopGrowing()) observer.disconnect();
  });
  observer.observe({ entryTypes: ["gc"] });
}
