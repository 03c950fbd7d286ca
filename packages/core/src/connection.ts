/**
 * The handle users hold: statements, transactions and sibling handles on one shared engine.
 * @module
 */
import type { BindParams, Row } from './engine/execute.js';
import { extraArguments, misuseError } from './errors.js';
import { Session } from './session.js';
import { Statement, type RunResult } from './statement.js';
import { NO_TRANSACTION_OPTIONS, runTransaction, type TransactionOptions } from './transaction.js';
import type { Engine } from './engine/engine.js';

/** The transaction modes of a handle. */
export type TransactionMode = 'deferred' | 'immediate' | 'exclusive' | 'concurrent';

/**
 * A handle onto a database. Every handle has its own transaction state; handles made by
 * {@link Connection.connect} share one engine with this one (and its cache of prepared
 * statements) and see each other's committed writes at once, never each other's uncommitted ones.
 *
 * Statements are synchronous, like the engine. Transactions may span awaits: use
 * `BEGIN CONCURRENT` (or `transaction(fn, { mode: 'concurrent' })`) so that handles never
 * block each other.
 *
 * @example
 * ```ts
 * const db = open('app.db');
 * const request = db.connect();          // one handle per request, worker, ...
 * await request.transaction(async (tx) => {
 *   const user = tx.get<{ credits: number }>('SELECT credits FROM users WHERE id = ?', [7]);
 *   await somethingSlow();
 *   tx.run('UPDATE users SET credits = ? WHERE id = ?', [user!.credits - 1, 7]);
 * }, { mode: 'concurrent' });
 * request.close();
 * ```
 */
export class Connection {
  /** @internal */
  readonly session: Session;

  /** @internal */
  constructor(
    engine: Engine,
    /** Whether this handle refuses writes. */
    readonly readonly: boolean,
  ) {
    this.session = new Session(engine);
    this.session.readonly = readonly;
  }

  /** The database's path as opened (`:memory:` for a private in-memory database). */
  get path(): string {
    return this.session.engine.path;
  }

  /** False once {@link Connection.close} ran. */
  get isOpen(): boolean {
    return this.session.isOpen;
  }

  /** A number that identifies this handle in error messages. */
  get id(): number {
    return this.session.id;
  }

  /** Whether this handle has an open transaction. */
  get inTransaction(): boolean {
    return this.session.tx !== null;
  }

  /** The mode of this handle's open transaction, or `null` in autocommit. */
  get transactionMode(): TransactionMode | null {
    const tx = this.session.tx;
    if (!tx) return null;
    return tx.kind === 'concurrent' ? 'concurrent' : tx.mode;
  }

  /**
   * Mints a sibling handle on the same engine, with its own transaction state. It is cheap (one
   * per request is fine): the prepared statements of `run()`, `get()` and `all()` are cached
   * per engine, shared by every handle. It stays usable after this handle closes.
   * @throws SqliteError of kind `closed` when this handle is closed.
   */
  connect(): Connection {
    this.session.assertOpen();
    const sibling = new Connection(this.session.engine, this.readonly);
    sibling.session.busyTimeout = this.session.busyTimeout;
    return sibling;
  }

  /**
   * Runs a script of statements separated by `;`, without parameters. Transaction control
   * (`BEGIN CONCURRENT`, `COMMIT`, `SAVEPOINT`, ...) works here as in `run()`. Stops at the
   * first failing statement; statements before it stay applied.
   */
  exec(sql: string): void {
    this.session.execScript(sql);
  }

  /**
   * Runs one statement and returns what it changed.
   * @throws SqliteError: `constraint` (UNIQUE, NOT NULL, ...), `sql` (syntax, no such table),
   *   `busy` (another handle's pessimistic transaction, or another process, holds the lock),
   *   `busy_snapshot` (this handle's concurrent transaction conflicted), `misuse` (bad
   *   parameters, nested BEGIN), `closed`, `readonly`.
   */
  run(sql: string, params?: BindParams): RunResult {
    if (arguments.length > 2) throw extraArguments('run');
    const out = this.session.run(this.session.compileCached(sql), params, 'run');
    return { changes: out.changes, lastInsertRowid: this.session.lastInsertRowid };
  }

  /** The first row of a query, or `undefined` when it returns none. Throws as {@link Connection.run}. */
  get<T = Row>(sql: string, params?: BindParams): T | undefined {
    if (arguments.length > 2) throw extraArguments('get');
    return this.session.run(this.session.compileCached(sql), params, 'get').rows?.[0] as T | undefined;
  }

  /** Every row of a query. Throws as {@link Connection.run}. */
  all<T = Row>(sql: string, params?: BindParams): T[] {
    if (arguments.length > 2) throw extraArguments('all');
    return (this.session.run(this.session.compileCached(sql), params, 'all').rows ?? []) as T[];
  }

  /**
   * The rows of a query as an iterator. The rows are read before the first one is returned:
   * the engine is shared, so no cursor stays open across other handles' statements.
   */
  iterate<T = Row>(sql: string, params?: BindParams): IterableIterator<T> {
    if (arguments.length > 2) throw extraArguments('iterate');
    return this.all<T>(sql, params)[Symbol.iterator]();
  }

  /**
   * Prepares one statement for repeated use. Finalize it when done, or let `close()` do it.
   * @throws SqliteError of kind `sql` for invalid SQL, `misuse` for more than one statement.
   */
  prepare<T = Row>(sql: string): Statement<T> {
    return new Statement<T>(this.session, this.session.compileOne(sql));
  }

  /**
   * Runs `fn` in a transaction on this handle: `BEGIN <mode>`, `fn(this)`, `COMMIT`; rolls back
   * and rethrows when `fn` throws. `fn` may be async and await anything. Busy errors
   * (`SQLITE_BUSY_SNAPSHOT` from a concurrent transaction's conflict, `SQLITE_BUSY` from a lock)
   * run the whole transaction again through {@link retry}, with `options.retry` as its options
   * (`retry: false` turns that off). A concurrent transaction that keeps failing runs its
   * next attempts in the engine's first-come-first-served priority lane (with priority over
   * other `transaction()` commits, then as `BEGIN IMMEDIATE`), so it cannot starve (see
   * docs/concurrency.md). Called from inside another `transaction()`
   * callback of this handle, or inside a transaction opened with `BEGIN`, it runs `fn` in a
   * SAVEPOINT instead (no retry). A call that overlaps a running `transaction()` of this handle
   * from anywhere else (two requests sharing one handle) is rejected at once with kind `misuse`:
   * give each concurrent unit of work its own handle from {@link Connection.connect}.
   *
   * @param options.mode - `concurrent` (default: optimistic and serializable, never blocks other
   *   handles, rerun on conflict; DDL is refused in it), `immediate`, `exclusive` or `deferred`
   *   (pessimistic: other handles get `SQLITE_BUSY` for what this transaction holds while it awaits).
   * @returns what `fn` returns.
   * @throws what `fn` throws (after rolling back), or the last busy error when retries ran out.
   */
  transaction<T>(fn: (conn: Connection) => T | Promise<T>, options: TransactionOptions = NO_TRANSACTION_OPTIONS): Promise<T> {
    if (typeof fn !== 'function') throw misuseError('transaction() needs a function');
    return runTransaction(this, fn, options);
  }

  /**
   * Closes the handle: rolls back its open transaction, finalizes its statements, and closes the
   * engine when this was its last handle. Calling it again does nothing.
   */
  close(): void {
    this.session.close();
  }
}
