/**
 * `conn.transaction(fn)`: BEGIN, run, COMMIT, with rollback on error and the retry loop.
 * @module
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import { waitOut } from './busy-timeout.js';
import type { Connection, TransactionMode } from './connection.js';
import { errorKind, isRetryable, misuseError } from './errors.js';
import { LANE_AFTER_FAILURES, laneOf, type Lane } from './lane.js';
import { retry, type RetryOptions } from './retry.js';

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
}

const MODES = new Set(['deferred', 'immediate', 'exclusive', 'concurrent']);
let savepoints = 0;

/** Handles with a `transaction()` call in flight (from BEGIN to the end of its retries). */
const running = new WeakSet<object>();
/** The handles whose `transaction()` callback the current async context runs inside. */
const inside = new AsyncLocalStorage<ReadonlySet<object>>();

/**
 * An error that ends `transaction()` without running `fn` again: a lock that stayed busy for the
 * whole busy timeout at BEGIN or COMMIT (running `fn` again could not help; only a conflict,
 * `SQLITE_BUSY_SNAPSHOT`, can).
 */
class Final {
  constructor(readonly error: unknown) {}
}

/** The options of a call that passed none (shared: a call allocates no option object). */
export const NO_TRANSACTION_OPTIONS: TransactionOptions = Object.freeze({});

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
  if (running.has(session) && !within?.has(session)) {
    // A second, overlapping call (not one made from inside the first one's callback) would
    // otherwise become a SAVEPOINT of the first and commit or roll back with it.
    throw misuseError(
      `transaction() is already running on handle #${conn.id}; overlapping transactions need their own handles: ` +
        'use conn.connect() for each concurrent unit of work (or await the first transaction)',
    );
  }
  if (conn.inTransaction) return nested(conn, fn);
  const scope = new Set(within ?? []).add(session);
  running.add(session);
  try {
    return await attempts(conn, fn, mode, options.retry, scope);
  } catch (e) {
    throw e instanceof Final ? e.error : e;
  } finally {
    running.delete(session);
  }
}

/** The attempts of one `transaction()` call, with the retry loop and the priority lane. */
function attempts<T>(
  conn: Connection,
  fn: (conn: Connection) => T | Promise<T>,
  mode: TransactionMode,
  retryOptions: RetryOptions | false | undefined,
  scope: ReadonlySet<object>,
): Promise<T> {
  if (retryOptions === false) return attempt(conn, fn, mode, scope);
  // retry() runs the first attempt directly; its loop starts only after a busy error.
  if (mode !== 'concurrent') return retry(() => attempt(conn, fn, mode, scope), retryOptions);
  // A concurrent transaction that keeps failing takes the engine's priority lane, so that
  // under contention it degrades to a FIFO mutex instead of starving.
  const lane = laneOf(conn.session.engine);
  const deadline = performance.now() + (retryOptions?.maxElapsedMs ?? 30_000);
  let failures = 0;
  return retry(async () => {
    if (failures >= LANE_AFTER_FAILURES || (failures > 0 && lane.inUse)) return inLane(conn, fn, lane, deadline, scope);
    try {
      return await attempt(conn, fn, mode, scope);
    } catch (e) {
      if (isRetryable(e)) failures++;
      throw e;
    }
  }, retryOptions);
}

/**
 * One attempt in the lane: once every earlier holder is done, the transaction runs as
 * `BEGIN IMMEDIATE`, so it cannot conflict. Waiting stops (with a busy error) at the retry
 * budget's deadline, in case a holder awaits this very transaction.
 */
async function inLane<T>(
  conn: Connection,
  fn: (conn: Connection) => T | Promise<T>,
  lane: Lane,
  deadline: number,
  scope: ReadonlySet<object>,
): Promise<T> {
  await lane.acquire(deadline - performance.now());
  try {
    return await attempt(conn, fn, 'immediate', scope);
  } finally {
    lane.release();
  }
}

/** One attempt: BEGIN, `fn`, COMMIT; rolls back and rethrows on any error. */
async function attempt<T>(
  conn: Connection,
  fn: (conn: Connection) => T | Promise<T>,
  mode: TransactionMode,
  scope: ReadonlySet<object>,
): Promise<T> {
  // The handle may have been closed between attempts; BEGIN must never run for a closed handle.
  conn.session.assertOpen();
  try {
    await waitOut(conn.session.busyTimeout, () => begin(conn, mode));
  } catch (e) {
    throw errorKind(e) === 'busy' ? new Final(e) : e;
  }
  try {
    const result = await inside.run(scope, () => fn(conn));
    await commit(conn);
    return result;
  } catch (e) {
    if (conn.isOpen && conn.inTransaction) conn.session.rollback();
    throw e;
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
async function commit(conn: Connection): Promise<void> {
  const session = conn.session;
  try {
    await waitOut(session.busyTimeout, () => session.withFile(() => session.commit()));
  } catch (e) {
    if (conn.inTransaction) session.rollback();
    throw errorKind(e) === 'busy' ? new Final(e) : e;
  }
}

async function nested<T>(conn: Connection, fn: (conn: Connection) => T | Promise<T>): Promise<T> {
  const name = `siblite_sp_${++savepoints}`;
  conn.exec(`SAVEPOINT ${name}`);
  try {
    const result = await fn(conn);
    if (conn.inTransaction) conn.exec(`RELEASE ${name}`);
    return result;
  } catch (e) {
    if (conn.inTransaction) {
      try {
        conn.exec(`ROLLBACK TO ${name}`);
        conn.exec(`RELEASE ${name}`);
      } catch {
        // the outer transaction already ended (e.g. a conflict); the error below says why
      }
    }
    throw e;
  }
}
