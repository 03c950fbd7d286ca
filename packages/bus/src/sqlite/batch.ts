/**
 * Write batching: the bus's own small writes (sends, `sendMany` batches and publishes without a
 * caller's transaction, acknowledgements of handlers that wrote nothing) made in one turn of the
 * event loop run together in one short `BEGIN IMMEDIATE` transaction, so that they share one
 * durable commit.
 *
 * Why not one concurrent `transaction()` per write, grouped by the core's group commit? Each
 * such transaction writes, so the next one to write in the same turn must move it out of the
 * engine (a ROLLBACK, which on a file in exclusive locking costs an fsync of the journal) and it
 * comes back at the group's flush by replay; and the group waits one more turn. Writes that need
 * no transaction of their own are cheaper as statements of one synchronous transaction.
 * @module
 */
import { isRetryable, type Connection } from '@siblite/core';

interface Item {
  readonly run: (h: Connection) => unknown;
  readonly resolve: (value: unknown) => void;
  readonly reject: (error: unknown) => void;
}

/**
 * Work that joins the next flush after its items, inside the same transaction, at most once per
 * flush (for example the claims of a worker whose acknowledgements are in the batch). `run`
 * may run again with the whole batch; `done` gets its value once the batch committed; `failed`
 * gets the error when `run` threw one that retrying cannot help (its work is undone, the items
 * still commit) or the whole transaction failed.
 */
export interface Tail<T = unknown> {
  /** Runs inside the batch's transaction, after every item. */
  run(h: Connection): T;
  /** Called with what `run` returned, after the commit and before the items' promises resolve. */
  done(value: T): void;
  /** Called instead of `done` when the tail's work did not commit. */
  failed(error: unknown): void;
}

/** One outcome of an item (or of one write of a {@link GatheredWrites}), decided inside the transaction. */
export type Outcome = { ok: true; value: unknown } | { ok: false; error: unknown };

/** The most writes in one batch: a full batch is flushed at once. */
const MAX_ITEMS = 1000;

/**
 * Collects writes and runs them, in the order added, in one transaction made by `transact` (which
 * may run its function again, after a conflict or a busy lock: every item then runs again). An
 * item that throws an error retrying cannot help (a constraint, a stale claim) fails alone; the
 * others still commit. A failure of the transaction itself fails every item.
 */
export class WriteBatch {
  private items: Item[] = [];
  private tails = new Set<Tail>();
  private scheduled = false;

  constructor(private readonly transact: (fn: (h: Connection) => Outcome[]) => Promise<Outcome[]>) {}

  /** Adds a write; resolves with what `run` returned once the batch committed. */
  add<T>(run: (h: Connection) => T): Promise<T> {
    const p = new Promise<T>((resolve, reject) => this.items.push({ run, resolve: resolve as (v: unknown) => void, reject }));
    if (this.items.length >= MAX_ITEMS) void this.flush();
    else if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(() => void this.flush());
    }
    return p;
  }

  /** Makes `tail` part of the next flush (once, however often it joins before that flush). */
  join(tail: Tail): void {
    this.tails.add(tail as Tail);
    if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(() => void this.flush());
    }
  }

  private async flush(): Promise<void> {
    this.scheduled = false;
    const items = this.items;
    const tails = [...this.tails];
    // A new set, not clear(): V8's clear() of a long-lived set costs about 0.6 µs per flush.
    if (tails.length > 0) this.tails = new Set();
    if (items.length === 0 && tails.length === 0) return;
    this.items = [];
    let outcomes: Outcome[];
    try {
      outcomes = await this.transact((h) => {
        const out = items.map((item): Outcome => run(() => item.run(h)));
        for (const tail of tails) out.push(run(() => tail.run(h)));
        return out;
      });
    } catch (e) {
      for (const tail of tails) tail.failed(e);
      for (const item of items) item.reject(e);
      return;
    }
    tails.forEach((tail, i) => {
      const o = outcomes[items.length + i] as Outcome;
      if (o.ok) tail.done(o.value);
      else tail.failed(o.error);
    });
    items.forEach((item, i) => {
      const o = outcomes[i] as Outcome;
      if (o.ok) item.resolve(o.value);
      else item.reject(o.error);
    });
  }
}

/** Runs one step of a batch: an error retrying cannot help is its own outcome; a retryable one runs the whole batch again. */
function run(step: () => unknown): Outcome {
  try {
    return { ok: true, value: step() };
  } catch (error) {
    if (isRetryable(error)) throw error;
    return { ok: false, error };
  }
}

/** The writes gathered for one item of the batch. */
interface Gathering<T> {
  readonly writes: T[];
  settled: Promise<Outcome[]>;
}

/**
 * Writes of one kind gathered into one item of a {@link WriteBatch}: every write added until that
 * item runs is done by one call of `runAll` (one statement for all of them, where a statement
 * costs more than a row), which returns one outcome per write, in order, so that each write
 * still fails alone. An error `runAll` throws fails every write it was given.
 */
export class GatheredWrites<T, R> {
  private open: Gathering<T> | null = null;

  constructor(
    private readonly batch: WriteBatch,
    private readonly runAll: (h: Connection, writes: readonly T[]) => Outcome[],
  ) {}

  /** Adds a write; resolves with its outcome's value once the batch committed (rejects with its error). */
  add(write: T): Promise<R> {
    let g = this.open;
    let i = 0;
    if (g === null) {
      const fresh = { writes: [write] } as Partial<Gathering<T>> as Gathering<T>;
      this.open = g = fresh;
      // The item closes the gathering when it runs (a full batch may flush at once, inside add).
      fresh.settled = this.batch.add((h) => {
        if (this.open === fresh) this.open = null;
        return this.runAll(h, fresh.writes);
      });
      // A batch that failed before the item ran (its BEGIN refused by a lock held too long)
      // closes the gathering too: later writes would otherwise fail with that error, unattempted.
      fresh.settled.catch(() => {
        if (this.open === fresh) this.open = null;
      });
    } else {
      i = g.writes.push(write) - 1;
    }
    return g.settled.then((outcomes) => {
      const o = outcomes[i] as Outcome;
      if (!o.ok) throw o.error;
      return o.value as R;
    });
  }
}

/**
 * The sizes of the statements that write `n` rows, at most `most` per statement: full ones of
 * `most`, then single rows. Each statement shape costs the engine a compilation and the core a
 * bytecode analysis (per database, several ms for a statement with triggers), so two shapes beat
 * one per count.
 */
export function rowChunks(n: number, most: number): number[] {
  const out: number[] = [];
  let left = n;
  for (; left >= most; left -= most) out.push(most);
  for (; left > 0; left--) out.push(1);
  return out;
}

/**
 * `values` (not empty) in lists of exactly `size`, the last one padded with its last value, for
 * `IN (...)` lists where a repeated value changes nothing: one statement shape for any count
 * (see {@link rowChunks}).
 */
export function fixedInLists<V>(values: readonly V[], size: number): V[][] {
  const out: V[][] = [];
  for (let i = 0; i < values.length; i += size) {
    const list = values.slice(i, i + size);
    const last = list[list.length - 1] as V;
    while (list.length < size) list.push(last);
    out.push(list);
  }
  return out;
}
