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
import type { Session } from './session.js';

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

/**
 * One top-level `transaction()` call: what its attempts share (they never overlap). Most calls
 * succeed at their first attempt, and with `AsyncLocalStorage`'s promise hooks on, every promise
 * and await costs: the first attempt makes no async frame ({@link attempt}), and the retry loop,
 * and the deadline of the lane, come in only after a failure.
 */
class Call<T> implements Scope {
  /** The nested `transaction()` calls made directly inside the callback (made on first use). */
  children?: Turns;
  /** Failed attempts (busy or conflict) outside the lane. */
  failures = 0;
  /** Failed attempts in the lane. */
  laneFailures = 0;
  /**
   * A hot statement of an attempt outside the lane was refused (see Lane.refusal): the call runs
   * in the lane from then on.
   */
  queued = false;
  /** Whether the current attempt runs in the lane (from its turn there to {@link leaveLane}). */
  inLane = false;
  /**
   * Whether the current attempt is outermost: not run by the retry loop, it runs the retry loop
   * itself after a failure, and ends the call after a success.
   */
  outermost = true;

  constructor(
    readonly conn: Connection,
    readonly fn: (conn: Connection) => T | Promise<T>,
    readonly mode: TransactionMode,
    readonly options: TransactionOptions,
    /** The scope the call was made in, if inside another handle's callback. */
    readonly outer: Scope | undefined,
    /**
     * The engine's priority lane for a concurrent transaction with retries: one that keeps
     * failing takes it (see lane.ts), so that under contention it degrades to a
     * first-come-first-served mutex instead of starving.
     */
    readonly lane: Lane | undefined,
    /** When the first attempt began (`performance.now()`): the start of the retry budget. */
    readonly started: number,
  ) {}

  /** The handle's session: the call is the scope its callback runs in (see {@link Scope}). */
  get session(): Session {
    return this.conn.session;
  }

  /** The retry options' abort signal, if any: it also ends a wait in the lane. */
  signal(): AbortSignal | undefined {
    const retry = this.options.retry;
    return retry ? retry.signal : undefined;
  }

  /** When the retry budget runs out (`performance.now()` time): no wait in the lane lasts longer. */
  deadline(): number {
    const retry = this.options.retry;
    return this.started + ((retry ? retry.maxElapsedMs : undefined) ?? 30_000);
  }

  /** The call has ended (its retries too): the handle may run its next `transaction()`. */
  end(): void {
    const session = this.conn.session;
    this.conn.runningTransaction = false;
    session.lane = undefined;
    forgetRefusals(session);
    // The retry loop ended while this transaction kept its turn in the lane.
    const lane = this.lane;
    if (lane?.keptFor === session) {
      lane.keptFor = undefined;
      lane.release();
    }
  }
}

/** @internal */
export function runTransaction<T>(
  conn: Connection,
  fn: (conn: Connection) => T | Promise<T>,
  options: TransactionOptions,
): Promise<T> {
  const session = conn.session;
  const mode = options.mode ?? 'concurrent';
  let call: Call<T>;
  try {
    if (mode !== 'concurrent' && !MODES.has(mode)) throw misuseError(`Unknown transaction mode "${String(mode)}"`);
    session.assertOpen();
    const within = inside.getStore();
    const fromInside = within !== undefined && isInside(within, session);
    if (conn.runningTransaction && !fromInside) {
      // A second, overlapping call (not one made from inside the first one's callback) would
      // otherwise become a SAVEPOINT of the first and commit or roll back with it.
      throw misuseError(
        `transaction() is already running on handle #${conn.id}; overlapping transactions need their own handles: ` +
          'use conn.connect() for each concurrent unit of work (or await the first transaction)',
      );
    }
    // Called from inside a callback of this handle: a nested scope, even when the enclosing
    // transaction has ended (aborted by a conflict): never a new top-level transaction.
    if (conn.inTransaction || fromInside) return nested(conn, fn);
    const retry = options.retry;
    const lane = mode === 'concurrent' && retry !== false ? laneOf(session.engine) : undefined;
    // startRetries checks the retry options (and the signal) before the first attempt, as retry() does.
    call = new Call(conn, fn, mode, options, within, lane, retry === false ? 0 : startRetries(retry));
  } catch (e) {
    return Promise.reject(e);
  }
  conn.runningTransaction = true;
  session.lane = call.lane;
  return attempt(call, true);
}

/**
 * One attempt of `call`: BEGIN, `fn`, COMMIT, in the priority lane when the call queues there.
 * Written with then() instead of an async frame: in the common case (no lane, no lock in the way)
 * BEGIN and COMMIT run synchronously, and the attempt makes one promise, the one that waits for
 * fn's. A failure rejects to the retry loop, except in the `outermost` attempt (the first one, or
 * a rerun it started at once), which runs the retry loop itself ({@link retryAfter}); the
 * outermost attempt ends the call when it succeeds. Never throws: it returns a promise.
 */
function attempt<T>(call: Call<T>, outermost: boolean): Promise<T> {
  const { conn, lane } = call;
  const session = conn.session;
  call.outermost = outermost;
  call.inLane = false;
  try {
    // The handle may have been closed between attempts; BEGIN must never run for a closed handle.
    session.assertOpen();
  } catch (e) {
    return gaveUp(call, e);
  }
  // A commit that waited its turn in the lane and then conflicted kept the lane: rerun there.
  if (lane !== undefined && lane.keptFor === session) {
    lane.keptFor = undefined;
    call.inLane = true;
  } else if (lane !== undefined && (call.queued || call.failures >= LANE_AFTER_FAILURES)) {
    // A transaction queues after LANE_AFTER_FAILURES failures, or at once when a hot statement
    // was refused (see Lane.refusal): sending every transaction to the lane after one failure
    // while it is in use serialized moderate contention and cost 40% of the throughput at 10%
    // overlap in the concurrent-tx bench.
    return queue(call, lane);
  }
  return transact(call);
}

/**
 * Waits for the lane, then runs the attempt there. In the lane, holders go one at a time. The
 * wait ends at the retry budget, in case a holder awaits this very transaction.
 */
async function queue<T>(call: Call<T>, lane: Lane): Promise<T> {
  const signal = call.signal();
  try {
    const budget = call.deadline() - performance.now();
    if (!call.queued || call.failures >= LANE_AFTER_FAILURES || call.laneFailures > 0 || budget <= QUEUED_WAIT_MS) {
      await lane.acquire(budget, signal);
    } else {
      // Queued by a refusal, not by failures: wait a bounded time only, in case the holder
      // awaits this very call; then run optimistically, refused no more.
      try {
        await lane.acquire(QUEUED_WAIT_MS, signal);
      } catch (e) {
        if (signal?.aborted) throw e; // stopped by the caller, not by the bounded wait
        call.queued = false;
        call.conn.session.lane = undefined;
        return attempt(call, call.outermost);
      }
    }
  } catch (e) {
    return gaveUp(call, e);
  }
  call.inLane = true;
  return transact(call);
}

/**
 * The attempt from BEGIN on. A holder of the lane runs optimistically with priority first, then,
 * if it still conflicted, as BEGIN IMMEDIATE, which cannot conflict.
 */
function transact<T>(call: Call<T>): Promise<T> {
  const { conn, lane } = call;
  const session = conn.session;
  const pessimistic = call.inLane && call.laneFailures > 0;
  if (call.inLane && lane !== undefined) {
    lane.holder = session;
    if (!pessimistic) lane.priority = session;
  }
  let waiting: Promise<void> | undefined;
  try {
    // Awaited only when a lock is in the way: no promise for the common case.
    waiting = now(session.busyTimeout, begin, conn, pessimistic ? 'immediate' : call.mode);
  } catch (e) {
    return failed(call, beginFailure(e));
  }
  return waiting ? afterBegin(call, waiting) : run(call);
}

// The closures that wait for a promise are made in functions of their own, only when there is
// one: a closure in a branch of a function makes V8 allocate its context at every call.

/** The attempt once BEGIN, which waited for a lock, is through. */
function afterBegin<T>(call: Call<T>, waiting: Promise<void>): Promise<T> {
  return waiting.then(
    () => run(call),
    (e: unknown) => failed(call, beginFailure(e)),
  );
}

/** What a BEGIN that failed fails the attempt with: a lock that stayed busy for the busy timeout is final. */
function beginFailure(e: unknown): unknown {
  return errorKind(e) === 'busy' ? new Final(e) : e;
}

/** Runs fn in the attempt's open transaction (and in the call's scope), then COMMIT. */
function run<T>(call: Call<T>): Promise<T> {
  // Until this attempt ends, a transaction ended by an error (a conflict the callback may
  // swallow) leaves the handle aborted rather than in autocommit (see Session.aborted).
  call.conn.session.inTransactionFn = true;
  return inside.run(call, runInScope, call) as Promise<T>;
}

/**
 * Runs fn inside the call's scope. The reactions to its result are registered here too, so they
 * run in that scope and find the call as the store: no closure per call is kept alive while fn
 * awaits (two closures and their context were a tenth of what an awaiting transaction kept).
 */
function runInScope(call: Call<unknown>): Promise<unknown> {
  let out: unknown;
  try {
    out = call.fn(call.conn);
  } catch (e) {
    return fnFailed(call, e);
  }
  return Promise.resolve(out).then(fnReturned, fnThrew);
}

/** The call whose scope the current reaction runs in (see {@link runInScope}). */
function currentCall(): Call<unknown> {
  return inside.getStore() as Call<unknown>;
}

function fnReturned(result: unknown): unknown {
  return fnDone(currentCall(), result);
}

function fnThrew(e: unknown): Promise<unknown> {
  return fnFailed(currentCall(), e);
}

/** fn returned: COMMIT once the nested calls it started (awaited or not) have ended. */
function fnDone<T>(call: Call<T>, result: T): T | Promise<T> {
  const children = call.children?.idle();
  return children ? whenIdle(children, call, result, commitAttempt) : commitAttempt(call, result);
}

/** fn threw: the attempt fails once the nested calls it started (awaited or not) have ended. */
function fnFailed<T>(call: Call<T>, e: unknown): Promise<T> {
  const children = call.children?.idle();
  return children ? whenIdle(children, call, e, abandon) : abandon(call, e);
}

/** `next(call, value)` once the nested calls of the callback (`children`) have ended. */
function whenIdle<T, V>(
  children: Promise<void>,
  call: Call<T>,
  value: V,
  next: (call: Call<T>, value: V) => T | Promise<T>,
): Promise<T> {
  return children.then(() => next(call, value));
}

/** COMMIT, awaited only when a lock, the lane or a commit group is in the way. */
function commitAttempt<T>(call: Call<T>, result: T): T | Promise<T> {
  const { lane, inLane } = call;
  const session = call.conn.session;
  let committing: Promise<void> | undefined;
  try {
    committing =
      call.mode === 'concurrent' && call.options.groupCommit !== false && !inLane && session.engine.group !== undefined
        ? joinGroup(call, lane)
        : commit(call, inLane ? undefined : lane);
  } catch (e) {
    return abandon(call, e);
  }
  return committing ? whenCommitted(call, committing, result) : succeeded(call, result);
}

/** COMMIT in the engine's commit group (the closures of a group only where the engine groups commits). */
function joinGroup(call: Call<unknown>, lane: Lane | undefined): Promise<void> | undefined {
  const session = call.conn.session;
  return joinCommitGroup(session, () => !lane?.blocks(session), () => commit(call, lane)) ?? commit(call, lane);
}

/** The attempt once the COMMIT that waited (for a lock, the lane or a commit group) is through. */
function whenCommitted<T>(call: Call<T>, committing: Promise<void>, result: T): Promise<T> {
  return committing.then(
    () => succeeded(call, result),
    (e: unknown) => abandon(call, e),
  );
}

/** The attempt committed. */
function succeeded<T>(call: Call<T>, result: T): T {
  call.conn.session.endTransactionFn();
  leaveLane(call);
  if (call.outermost) call.end();
  return result;
}

/** fn or COMMIT failed with `e`: roll back what is left of the transaction, and fail the attempt. */
function abandon<T>(call: Call<T>, e: unknown): Promise<T> {
  const conn = call.conn;
  let failure: unknown;
  try {
    if (conn.isOpen && conn.inTransaction) conn.session.rollback();
    // The file lock of another process, already waited out for the busy timeout by the
    // statement that threw it: running fn again would only wait again.
    failure = isFileLockBusy(e) ? new Final(e) : e;
  } catch (rollbackError) {
    failure = rollbackError;
  }
  conn.session.endTransactionFn();
  return failed(call, failure);
}

/** The attempt failed with `e` after it began: count it, leave the lane, and rerun or give up. */
function failed<T>(call: Call<T>, e: unknown): Promise<T> {
  if (isQueuedRefusal(e)) call.queued = true;
  else if (isRetryable(e) && !isHeldRefusal(e)) {
    if (call.inLane) call.laneFailures++;
    else call.failures++;
  }
  leaveLane(call);
  // Refused at a hot statement before doing any work: wait in the lane now, not after the
  // retry loop's backoff delay.
  if (call.queued && isQueuedRefusal(e)) return attempt(call, call.outermost);
  // A commit that waited its turn in the lane and conflicted kept the lane for its rerun: run
  // it now. The retry loop's backoff delay would idle the lane that every waiter queues behind
  // (one rerun at most: the rerun's own commit never waits in the lane).
  const lane = call.lane;
  if (lane !== undefined && lane.keptFor === call.conn.session && isRetryable(e)) return attempt(call, call.outermost);
  return gaveUp(call, e);
}

/** The attempt's end in the lane, if it ran there: the next holder's turn. */
function leaveLane(call: Call<unknown>): void {
  const lane = call.lane;
  if (!call.inLane || lane === undefined) return;
  call.inLane = false;
  const session = call.conn.session;
  if (lane.priority === session) lane.priority = undefined;
  if (lane.holder === session) lane.holder = undefined;
  lane.release();
}

/** The attempt failed with `e` for good: the outermost one runs the retry loop, any other rejects to it. */
function gaveUp<T>(call: Call<T>, e: unknown): Promise<T> {
  return call.outermost ? retryAfter(call, e) : Promise.reject(e);
}

/**
 * The rest of `call` once its outermost attempt failed with `error`: the retry loop (the first
 * attempt ran as retry() would run it, without its async frame), then the end of the call.
 */
async function retryAfter<T>(call: Call<T>, error: unknown): Promise<T> {
  try {
    const retry = call.options.retry;
    if (retry === false) throw error;
    return await retryAfterFirst(() => attempt(call, false), error, call.started, retry);
  } catch (e) {
    throw e instanceof Final ? e.error : e;
  } finally {
    call.end();
  }
}

/**
 * BEGIN, one attempt. A pessimistic transaction of a file database also takes the file lock
 * here (a read of the schema), so that the wait for another process happens now, awaited, and
 * not in the first statement of `fn`, which would have to wait synchronously.
 */
function begin(conn: Connection, mode: TransactionMode): void {
  const session = conn.session;
  // Without a file lock to manage (an in-memory database), withFile would only call its step:
  // no closure for it.
  if (session.engine.fileAccess === undefined && (mode === 'concurrent' || !session.engine.isFile)) session.begin(mode);
  else beginWithFile(session, mode);
}

/** {@link begin} where a file lock is to be managed. */
function beginWithFile(session: Session, mode: TransactionMode): void {
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
function commit(call: Call<unknown>, lane: Lane | undefined): Promise<void> | undefined {
  const conn = call.conn;
  const session = conn.session;
  try {
    // It would change what the lane's priority holder read: let it finish first.
    if (lane?.holdsBack(session)) return commitWhenFree(call, lane, undefined);
    // Without a file lock to manage, withFile would only call its step: no closure for it.
    if (session.engine.fileAccess === undefined) session.commit();
    else commitWithFile(session);
    return undefined;
  } catch (e) {
    if (errorKind(e) !== 'busy' || !conn.inTransaction) throw commitFailed(conn, e);
    return commitWhenFree(call, lane, e);
  }
}

/**
 * COMMIT once it may: after the lane's holders when one of them is in the way (a pessimistic
 * holder holds the engine, or a priority holder read what this commit changes), else after
 * waiting out the lock that refused it.
 */
async function commitWhenFree(call: Call<unknown>, lane: Lane | undefined, refusal: unknown): Promise<void> {
  const conn = call.conn;
  const session = conn.session;
  const once = () => commitWithFile(session);
  try {
    if (lane?.inUse && !isFileLockBusy(refusal)) {
      // The lane hands over to its next holder at once: wait in it rather than poll for a gap
      // that never comes.
      await lane.acquire(call.deadline() - performance.now(), call.signal());
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

/** COMMIT inside withFile. */
function commitWithFile(session: Session): void {
  session.withFile(() => session.commit());
}

/** Ends the transaction after a failed COMMIT; what to throw (a lock that stayed busy is final). */
function commitFailed(conn: Connection, e: unknown): unknown {
  if (conn.inTransaction) conn.session.rollback();
  return errorKind(e) === 'busy' ? new Final(e) : e;
}

/**
 * Runs `step(conn, mode)` now. Only when a lock (`busy`) refuses it, returns the promise of
 * {@link waitOut} trying it again for up to `timeoutMs`; other errors are thrown.
 */
function now(
  timeoutMs: number,
  step: (conn: Connection, mode: TransactionMode) => void,
  conn: Connection,
  mode: TransactionMode,
): Promise<void> | undefined {
  try {
    step(conn, mode);
    return undefined;
  } catch (e) {
    if (errorKind(e) !== 'busy' || timeoutMs <= 0) throw e;
    return stepLater(timeoutMs, step, conn, mode);
  }
}

/** {@link waitOut} of `step(conn, mode)` (its closure made only when a lock is in the way). */
function stepLater(
  timeoutMs: number,
  step: (conn: Connection, mode: TransactionMode) => void,
  conn: Connection,
  mode: TransactionMode,
): Promise<void> {
  return waitOut(timeoutMs, () => step(conn, mode));
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
