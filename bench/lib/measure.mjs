// Measurement helpers shared by every suite: timed loops, interleaved rounds, statistics.
// Nothing here knows about any database.

/**
 * Runs `op(i)` in a tight synchronous loop for about `budgetMs` milliseconds and returns
 * operations per second. The clock is read every `batch` operations so that reading it
 * costs nothing measurable even for sub-microsecond operations.
 */
export function opsPerSecond(op, budgetMs, batch = 16) {
  let n = 0;
  const t0 = performance.now();
  const deadline = t0 + budgetMs;
  let t = t0;
  do {
    for (let i = 0; i < batch; i++) op(n++);
    t = performance.now();
  } while (t < deadline);
  return n / ((t - t0) / 1000);
}

/** Same as opsPerSecond for an async operation (awaited one at a time). */
export async function opsPerSecondAsync(op, budgetMs) {
  let n = 0;
  const t0 = performance.now();
  const deadline = t0 + budgetMs;
  let t = t0;
  do {
    await op(n++);
    t = performance.now();
  } while (t < deadline);
  return n / ((t - t0) / 1000);
}

/**
 * Interleaved rounds. `cases` is a list of { id, run } where `run(round)` returns one
 * sample (a number, or an object of named numbers). Round r runs every case once,
 * starting at case r mod n, so that no case always runs first or last and slow drifts
 * of a shared machine (thermal, neighbours, GC) hit every case alike.
 * `warmup` rounds are run the same way and thrown away (JIT warm-up).
 * Returns Map<id, sample[]> in round order, so samples of the same round can be paired.
 */
export async function interleaved({ rounds, warmup = 1, cases, log = () => {} }) {
  const samples = new Map(cases.map((c) => [c.id, []]));
  const n = cases.length;
  for (let r = -warmup; r < rounds; r++) {
    const start = ((r % n) + n) % n;
    for (let k = 0; k < n; k++) {
      const c = cases[(start + k) % n];
      const value = await c.run(r);
      if (r >= 0) samples.get(c.id).push(value);
    }
    if (r >= 0) log(`  round ${r + 1}/${rounds} done`);
  }
  return samples;
}

function quantile(sorted, q) {
  if (sorted.length === 0) return NaN;
  const pos = (sorted.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}

/** median, quartiles and extremes of a list of numbers. */
export function summarize(values) {
  const sorted = values.filter((v) => Number.isFinite(v)).sort((a, b) => a - b);
  return {
    median: quantile(sorted, 0.5),
    p25: quantile(sorted, 0.25),
    p75: quantile(sorted, 0.75),
    min: sorted.length ? sorted[0] : NaN,
    max: sorted.length ? sorted[sorted.length - 1] : NaN,
    rounds: sorted.length,
  };
}

/** A deterministic pseudo-random generator (mulberry32), so every peer gets the same keys. */
export function prng(seed = 42) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
