/**
 * `conn.transaction(fn)`: BEGIN, run, COMMIT, with rollback on error and the retry loop.
 * @module
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import { isFileLockBusy, waitOut } from './busy-timeout.js';
import type { Connection, TransactionMode } from './connection.js';
import { joinCommitGroup } from './commit-group.js';
import { errorKind, isRetryable, misuseError } from './errors.js';
import { isQueuedRefusal, LANE_AFTER_FAILURES, laneOf, type Lane } from './lane.js';
import { forgetRefusals, isHeldRefusal } from './concurrent/hold.js';
import { retryAfterFirst, startRetries, type RetryOptions } from './retry.js';

/** Options of `conn.transaction()`. */
export interface TransactionOptions {
  /**
   * The transaction mode. Default `concurrent`: the mode that cannot hurt other handles (they
   * keep reading and writing while this transaction awaits; a conflict reruns it). Choose
   * `immediate` for DDL (not allowed in `BEGIN CONCURRENT`) or to hold the write lock.
   */
  mode?: TransactionMode;
  /** Options of the retry loop that reruns the transaction on busy errors, or `false` for none. */
  retry?: RetryOptions | false;
  /**
   * `false`: commit alone, never in a commit group (see `groupCommit` of `open()`). Default
   * `true`: a concurrent transaction on a file database whose engine groups commits shares its
   * COMMIT (and its fsyncs) with the transactions that commit in the same turn of the event loop.
   */
  groupCommit?: boolean;
}

const MODES = new Set(['deferred', 'immediate', 'exclusive', 'concurrent']);
let savepoints = 0;

/**
 * How long a call that a hot statement sent to the priority lane (see lane.ts) waits there
 * before it runs optimistically instead, in ms.
 */
const QUEUED_WAIT_MS = 1000;

/** The options of a call that passed none (shared: a call allocates no option object). */
export const NO_TRANSACTION_OPTIONS: TransactionOptions = Object.freeze({});

/** Handles with a `transaction()` call in flight (from BEGIN to the end of its retries). */
const running = new WeakSet<object>();
/** The handles whose `transaction()` callbacks the current async context runs inside, innermost first. */
interface Scope {
  readonly session: object;
  readonly outer: Scope | undefined;
  /** The nested `transaction()` calls made directly inside this scope, taking turns (made on first use). */
  children?: Turns;
}
const inside = new AsyncLocalStorage<Scope>();

/**
 * Savepoint scopes on one handle must nest strictly in time (a RELEASE of an outer savepoint
 * releases every inner one): nested calls at one level take turns, first come first served,
 * and a scope ends only after its own nested calls have.
 */
class Turns {
  private busy = false;
  private readonly queue: (() => void)[] = [];
  private readonly idleWaiters: (() => void)[] = [];

  /** Takes the turn: `undefined` when it is free now, else a promise of it. */
  enter(): Promise<void> | undefined {
    if (!this.busy) {
      this.busy = true;
      return undefined;
    }
    return new Promise<void>((resolve) => this.queue.push(resolve));
  }

  leave(): void {
    const next = this.queue.shift();
    if (next) return next();
    this.busy = false;
    for (const w of this.idleWaiters.splice(0)) w();
  }

  /** `undefined` when no call holds or waits for the turn, else a promise of that moment. */
  idle(): Promise<void> | undefined {
    return this.busy ? new Promise<void>((resolve) => this.idleWaiters.push(resolve)) : undefined;
  }
}

/** Turns of nested calls made outside any `transaction()` callback (inside a hand-written BEGIN). */
const looseTurns = new WeakMap<object, Turns>();

function innermost(scope: Scope | undefined, session: object): Scope | undefined {
  for (let s = scope; s !== undefined; s = s.outer) if (s.session === session) return s;
  return undefined;
}

/** Runs `fn` in `scope`, then waits until the nested calls it started (awaited or not) have ended. */
async function runScoped<T>(scope: Scope, fn: (conn: Connection) => T | Promise<T>, conn: Connection): Promise<T> {
  try {
    return await inside.run(scope, fn, conn);
  } finally {
    const children = scope.children?.idle();
    if (children) await children;
  }
}

function isInside(scope: Scope | undefined, session: object): boolean {
  return innermost(scope, session) !== undefined;
}

/**
 * An error that ends `transaction()` without running `fn` again: a lock that stayed busy for the
 * whole busy timeout at BEGIN or COMMIT, or another process's file lock that a statement of `fn`
 * waited out in vain (running `fn` again could not help). A conflict (`SQLITE_BUSY_SNAPSHOT`),
 * or a busy error from another handle of this process thrown inside `fn`, runs `fn` again.
 */
class Final {
  constructor(readonly error: unknown) {}
}

/** @internal */
export async function runTransaction<T>(
  conn: Connection,
  fn: (conn: Connection) => T | Promise<T>,
  options: TransactionOptions,
): Promise<T> {
  const mode = options.mode ?? 'concurrent';
  if (!MODES.has(mode)) throw misuseError(`Unknown transaction mode "${String(mode)}"`);
  conn.session.assertOpen();
  const session = conn.session;
  const within = inside.getStore();
  if (running.has(session) && !isInside(within, session)) {
    // A second, overlapping call (not one made from inside the first one's callback) would
    // otherwise become a SAVEPOINT of the first and commit or roll back with it.
    throw misuseError(
      `transaction() is already running on handle #${conn.id}; overlapping transactions need their own handles: ` +
        'use conn.connect() for each concurrent unit of work (or await the first transaction)',
    );
  }
  // Called from inside a callback of this handle: a nested scope, even when the enclosing
  // transaction has ended (aborted by a conflict): never a new top-level transaction.
  if (conn.inTransaction || isInside(within, session)) return nested(conn, fn);
  const scope: Scope = { session, outer: within };
  const retryOptions = options.retry;
  // A concurrent transaction that keeps failing takes the engine's priority lane (see lane.ts),
  // so that under contention it degrades to a first-come-first-served mutex instead of starving.
  const lane = mode === 'concurrent' && retryOptions !== false ? laneOf(session.engine) : undefined;
  const deadline = lane ? performance.now() + ((retryOptions ? retryOptions.maxElapsedMs : undefined) ?? 30_000) : 0;
  const grouped = mode === 'concurrent' && options.groupCommit !== false;
  let failures = 0;
  let laneFailures = 0;
  // A hot statement of an attempt outside the lane was refused (see Lane.refusal): the call
  // runs in the lane from then on.
  let queued = false;
  const once = async (): Promise<T> => {
    // The handle may have been closed between attempts; BEGIN must never run for a closed handle.
    conn.session.assertOpen();
    let failed: unknown;
    // A commit that waited its turn in the lane and then conflicted kept the lane: rerun there.
    const kept = lane !== undefined && lane.keptFor === session;
    // A transaction queues after LANE_AFTER_FAILURES failures, or at once when a hot statement
    // was refused (see Lane.refusal): sending every transaction to the lane after one failure
    // while it is in use serialized moderate contention and cost 40% of the throughput at 10%
    // overlap in the concurrent-tx bench.
    const inLane = kept || (lane !== undefined && (queued || failures >= LANE_AFTER_FAILURES));
    // In the lane, holders go one at a time. The wait ends at the retry budget, in case a
    // holder awaits this very transaction. A holder runs optimistically with priority first,
    // then, if it still conflicted, as BEGIN IMMEDIATE, which cannot conflict.
    if (kept) lane.keptFor = undefined;
    else if (inLane) {
      const budget = deadline - performance.now();
      if (!queued || failures >= LANE_AFTER_FAILURES || laneFailures > 0 || budget <= QUEUED_WAIT_MS) await lane.acquire(budget);
      else {
        // Queued by a refusal, not by failures: wait a bounded time only, in case the holder
        // awaits this very call; then run optimistically, refused no more.
        try {
          await lane.acquire(QUEUED_WAIT_MS);
        } catch {
          queued = false;
          session.lane = undefined;
          return once();
        }
      }
    }
    const pessimistic = inLane && laneFailures > 0;
    if (inLane) lane.holder = session;
    if (inLane && !pessimistic) lane.priority = session;
    try {
      try {
        // Awaited only when a lock is in the way: no promise for the common case.
        const waiting = now(conn.session.busyTimeout, begin, conn, pessimistic ? 'immediate' : mode);
        if (waiting) await waiting;
      } catch (e) {
        throw errorKind(e) === 'busy' ? new Final(e) : e;
      }
      // Until this attempt ends, a transaction ended by an error (a conflict the callback may
      // swallow) leaves the handle aborted rather than in autocommit (see Session.aborted).
      session.inTransactionFn = true;
      try {
        // runScoped, inlined: one async frame less per attempt.
        let result: T;
        try {
          result = await inside.run(scope, fn, conn);
        } finally {
          const children = scope.children?.idle();
          if (children) await children;
        }
        // The closures of a commit group only where the engine groups commits.
        const committing =
          grouped && !inLane && session.engine.group !== undefined
            ? (joinCommitGroup(session, () => !lane?.blocks(session), () => commit(conn, lane, deadline)) ?? commit(conn, lane, deadline))
            : commit(conn, inLane ? undefined : lane, deadline);
        if (committing) await committing;
        return result;
      } catch (e) {
        if (conn.isOpen && conn.inTransaction) conn.session.rollback();
        // The file lock of another process, already waited out for the busy timeout by the
        // statement that threw it: running fn again would only wait again.
        throw isFileLockBusy(e) ? new Final(e) : e;
      } finally {
        session.endTransactionFn();
      }
    } catch (e) {
      if (isQueuedRefusal(e)) queued = true;
      else if (isRetryable(e) && !isHeldRefusal(e)) {
        if (inLane) laneFailures++;
        else failures++;
      }
      failed = e;
    } finally {
      if (inLane) {
        if (lane.priority === session) lane.priority = undefined;
        if (lane.holder === session) lane.holder = undefined;
        lane.release();
      }
    }
    // Refused at a hot statement before doing any work: wait in the lane now, not after the
    // retry loop's backoff delay.
    if (queued && isQueuedRefusal(failed)) return once();
    // A commit that waited its turn in the lane and conflicted kept the lane for its rerun: run
    // it now. The retry loop's backoff delay would idle the lane that every waiter queues behind
    // (one rerun at most: the rerun's own commit never waits in the lane).
    if (lane !== undefined && lane.keptFor === session && isRetryable(failed)) return once();
    throw failed;
  };
  running.add(session);
  session.lane = lane;
  try {
    if (retryOptions === false) return await once();
    // The first attempt runs here directly (as retry() would, without its async frame); the
    // retry loop starts only after a busy error.
    const started = startRetries(retryOptions);
    try {
      return await once();
    } catch (e) {
      return await retryAfterFirst(once, e, started, retryOptions);
    }
  } catch (e) {
    throw e instanceof Final ? e.error : e;
  } finally {
    running.delete(session);
    session.lane = undefined;
    forgetRefusals(session);
    // The retry loop ended while this transaction kept its turn in the lane.
    if (lane?.keptFor === session) {
      lane.keptFor = undefined;
      lane.release();
    }
  }
}

/**
 * BEGIN, one attempt. A pessimistic transaction of a file database also takes the file lock
 * here (a read of the schema), so that the wait for another process happens now, awaited, and
 * not in the first statement of `fn`, which would have to wait synchronously.
 */
function begin(conn: Connection, mode: TransactionMode): void {
  const session = conn.session;
  session.withFile(() => {
    session.begin(mode);
    if (mode === 'concurrent' || !session.engine.isFile) return;
    try {
      session.engine.statement('SELECT 1 FROM sqlite_schema LIMIT 1').execute(session.engine.db, undefined, 'all');
    } catch (e) {
      session.rollback();
      throw e;
    }
  });
}

/**
 * COMMIT. While a lock (`SQLITE_BUSY`, not a conflict) is in the way, for instance another
 * process holds the file while a parked `BEGIN CONCURRENT` transaction must come back, the work
 * stays open (parked) and COMMIT is tried again, awaiting between attempts, for up to the busy
 * timeout; `fn` is never run again for it. A conflict (`SQLITE_BUSY_SNAPSHOT`) has already
 * ended the transaction and is thrown to the retry loop.
 */
function commit(conn: Connection, lane: Lane | undefined, deadline: number): Promise<void> | undefined {
  const session = conn.session;
  try {
    // It would change what the lane's priority holder read: let it finish first.
    if (lane?.holdsBack(session)) return commitWhenFree(conn, lane, deadline, undefined);
    session.withFile(() => session.commit());
    return undefined;
  } catch (e) {
    if (errorKind(e) !== 'busy' || !conn.inTransaction) throw commitFailed(conn, e);
    return commitWhenFree(conn, lane, deadline, e);
  }
}

/**
 * COMMIT once it may: after the lane's holders when one of them is in the way (a pessimistic
 * holder holds the engine, or a priority holder read what this commit changes), else after
 * waiting out the lock that refused it.
 */
async function commitWhenFree(conn: Connection, lane: Lane | undefined, deadline: number, refusal: unknown): Promise<void> {
  const session = conn.session;
  const once = () => session.withFile(() => session.commit());
  try {
    if (lane?.inUse && !isFileLockBusy(refusal)) {
      // The lane hands over to its next holder at once: wait in it rather than poll for a gap
      // that never comes.
      await lane.acquire(deadline - performance.now());
      try {
        await waitOut(session.busyTimeout, once);
      } catch (e) {
        // Conflicted after waiting its turn: keep the turn for the rerun, not the queue's end.
        if (isRetryable(e) && !conn.inTransaction) {
          lane.keptFor = session;
          throw e;
        }
        lane.release();
        throw e;
      }
      lane.release();
      return;
    }
    await waitOut(session.busyTimeout, once);
  } catch (e) {
    throw commitFailed(conn, e);
  }
}

/** Ends the transaction after a failed COMMIT; what to throw (a lock that stayed busy is final). */
function commitFailed(conn: Connection, e: unknown): unknown {
  if (conn.inTransaction) conn.session.rollback();
  return errorKind(e) === 'busy' ? new Final(e) : e;
}

/**
 * Runs `attempt(conn, mode)` now. Only when a lock (`busy`) refuses it, returns the promise of
 * {@link waitOut} trying it again for up to `timeoutMs`; other errors are thrown.
 */
function now(
  timeoutMs: number,
  attempt: (conn: Connection, mode: TransactionMode) => void,
  conn: Connection,
  mode: TransactionMode,
): Promise<void> | undefined {
  try {
    attempt(conn, mode);
    return undefined;
  } catch (e) {
    if (errorKind(e) !== 'busy' || timeoutMs <= 0) throw e;
    return waitOut(timeoutMs, () => attempt(conn, mode));
  }
}

/**
 * A `transaction()` call inside a transaction of its handle: a SAVEPOINT, released when `fn`
 * succeeds, rolled back to when it throws. Calls directly inside one scope take turns (see
 * {@link Turns}). An error of the RELEASE or ROLLBACK TO is never swallowed: it is thrown
 * instead of `fn`'s error (a conflict found there ended the enclosing transaction, and a
 * scope that cannot be rolled back must not be reported rolled back).
 */
async function nested<T>(conn: Connection, fn: (conn: Connection) => T | Promise<T>): Promise<T> {
  const session = conn.session;
  const within = inside.getStore();
  const parent = innermost(within, session);
  let turns = parent ? (parent.children ??= new Turns()) : looseTurns.get(session);
  if (!turns) looseTurns.set(session, (turns = new Turns()));
  const waiting = turns.enter();
  try {
    if (waiting) await waiting;
    // The enclosing transaction may have ended while this call waited its turn: a SAVEPOINT
    // now would start a new transaction of its own. (An aborted handle throws why.)
    if (!conn.inTransaction) {
      session.throwIfAborted();
      throw misuseError('the enclosing transaction ended before this nested transaction() could start');
    }
    const name = `siblite_sp_${++savepoints}`;
    conn.exec(`SAVEPOINT ${name}`);
    let result: T;
    try {
      result = await runScoped({ session, outer: within }, fn, conn);
    } catch (e) {
      if (conn.inTransaction || session.isAborted) await endSavepoint(conn, `ROLLBACK TO ${name}`, name);
      throw e;
    }
    await endSavepoint(conn, undefined, name);
    return result;
  } finally {
    turns.leave();
  }
}

/**
 * `ROLLBACK TO` (when given) and `RELEASE` of a nested call's savepoint. Bringing a parked
 * concurrent transaction back for them waits out another handle's lock (this is an await point
 * anyway, as COMMIT does); when they still cannot run (a conflict, the busy timeout), the
 * enclosing transaction is ended and that error thrown, so that a nested scope is never
 * reported rolled back while its writes stay.
 */
async function endSavepoint(conn: Connection, rollbackTo: string | undefined, name: string): Promise<void> {
  const session = conn.session;
  try {
    await waitOut(session.busyTimeout, () => conn.exec(rollbackTo ?? `RELEASE ${name}`));
    if (rollbackTo !== undefined) conn.exec(`RELEASE ${name}`);
  } catch (e) {
    if (conn.isOpen) session.abortTransaction(e);
    throw e;
  }
}
