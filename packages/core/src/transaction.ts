/**
 * `conn.transaction(fn)`: BEGIN, run, COMMIT, with rollback on error and the retry loop.
 * @module
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import { isFileLockBusy, waitOut } from './busy-timeout.js';
import type { Connection, TransactionMode } from './connection.js';
import { errorKind, misuseError } from './errors.js';
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

/** Handles with a `transaction()` call in flight (from BEGIN to the end of its retries). */
const running = new WeakSet<object>();
/** The handles whose `transaction()` callback the current async context runs inside. */
const inside = new AsyncLocalStorage<ReadonlySet<object>>();

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
  const mode = options.mode ?? 'deferred';
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
  const once = async (): Promise<T> => {
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
      // The file lock of another process, already waited out for the busy timeout by the
      // statement that threw it: running fn again would only wait again.
      throw isFileLockBusy(e) ? new Final(e) : e;
    }
  };
  running.add(session);
  try {
    if (options.retry === false) return await once();
    return await retry(once, options.retry ?? {});
  } catch (e) {
    throw e instanceof Final ? e.error : e;
  } finally {
    running.delete(session);
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
