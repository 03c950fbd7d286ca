/**
 * `conn.transaction(fn)`: BEGIN, run, COMMIT, with rollback on error and the retry loop.
 * @module
 */
import type { Connection, TransactionMode } from './connection.js';
import { errorKind, isRetryable, misuseError } from './errors.js';
import { LANE_AFTER_FAILURES, laneOf, type Lane } from './lane.js';
import { retry, type RetryOptions } from './retry.js';

/** Options of `conn.transaction()`. */
export interface TransactionOptions {
  /** The transaction mode. Default `deferred`. */
  mode?: TransactionMode;
  /** Options of the retry loop that reruns the transaction on busy errors, or `false` for none. */
  retry?: RetryOptions | false;
}

const MODES = new Set(['deferred', 'immediate', 'exclusive', 'concurrent']);
let savepoints = 0;

/** The options of a call that passed none (shared: a call allocates no option object). */
export const NO_TRANSACTION_OPTIONS: TransactionOptions = Object.freeze({});

/** @internal */
export async function runTransaction<T>(
  conn: Connection,
  fn: (conn: Connection) => T | Promise<T>,
  options: TransactionOptions,
): Promise<T> {
  const mode = options.mode ?? 'deferred';
  if (!MODES.has(mode)) throw misuseError(`Unknown transaction mode "${String(mode)}"`);
  conn.session.assertOpen();
  if (conn.inTransaction) return nested(conn, fn);
  const retryOptions = options.retry;
  if (retryOptions === false) return attempt(conn, fn, mode);
  // retry() runs the first attempt directly; its loop starts only after a busy error.
  if (mode !== 'concurrent') return retry(() => attempt(conn, fn, mode), retryOptions);
  // A concurrent transaction that keeps failing takes the engine's priority lane, so that
  // under contention it degrades to a FIFO mutex instead of starving.
  const lane = laneOf(conn.session.engine);
  const deadline = performance.now() + (retryOptions?.maxElapsedMs ?? 30_000);
  let failures = 0;
  return retry(async () => {
    if (failures >= LANE_AFTER_FAILURES || (failures > 0 && lane.inUse)) return inLane(conn, fn, lane, deadline);
    try {
      return await attempt(conn, fn, mode);
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
async function inLane<T>(conn: Connection, fn: (conn: Connection) => T | Promise<T>, lane: Lane, deadline: number): Promise<T> {
  await lane.acquire(deadline - performance.now());
  try {
    return await attempt(conn, fn, 'immediate');
  } finally {
    lane.release();
  }
}

/** One attempt: BEGIN, `fn`, COMMIT; rolls back and rethrows on any error. */
async function attempt<T>(conn: Connection, fn: (conn: Connection) => T | Promise<T>, mode: TransactionMode): Promise<T> {
  // The handle may have been closed between attempts; BEGIN must never run for a closed handle.
  conn.session.assertOpen();
  conn.session.begin(mode);
  try {
    const result = await fn(conn);
    await commit(conn);
    return result;
  } catch (e) {
    if (conn.isOpen && conn.inTransaction) conn.session.rollback();
    throw e;
  }
}

/**
 * COMMIT. While a lock (`SQLITE_BUSY`, not a conflict) is in the way, the work stays open and
 * COMMIT is tried again briefly; a conflict (`SQLITE_BUSY_SNAPSHOT`) has already ended it.
 */
async function commit(conn: Connection): Promise<void> {
  const started = performance.now();
  for (let attempt = 0; ; attempt++) {
    try {
      conn.session.commit();
      return;
    } catch (e) {
      const lockOnly = errorKind(e) === 'busy' && conn.inTransaction;
      if (lockOnly && performance.now() - started < COMMIT_PATIENCE_MS) {
        await new Promise((r) => setTimeout(r, Math.random() * Math.min(20, 2 ** attempt)));
        continue;
      }
      if (conn.inTransaction) conn.session.rollback();
      throw e;
    }
  }
}

/** How long COMMIT waits for a lock before the whole transaction is rolled back and retried. */
const COMMIT_PATIENCE_MS = 2_000;

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
