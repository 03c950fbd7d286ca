/**
 * The handle users hold: statements, transactions and sibling handles on one shared engine.
 * @module
 */
import { randomBytes } from 'node:crypto';
import { readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { BindParams, Row, RowFormat, SqlValue } from './engine/execute.js';
import { extraArguments, fromEngineError, misuseError, sqliteError } from './errors.js';
import { Session } from './session.js';
import { settleCursor } from './engine/cursor.js';
import { isWellFormed } from './engine/direct.js';
import { iterable } from './iterable.js';
import { Statement, type RunResult } from './statement.js';
import { NO_TRANSACTION_OPTIONS, runTransaction, type TransactionOptions } from './transaction.js';
import type { Engine } from './engine/engine.js';

const SAFE: RowFormat = { safeIntegers: true };

/** The transaction modes of a handle. */
export type TransactionMode = 'deferred' | 'immediate' | 'exclusive' | 'concurrent';

/** Options of {@link Connection.function}. */
export interface FunctionOptions {
  /**
   * Declares that the function returns the same result for the same arguments (SQLite's
   * `SQLITE_DETERMINISTIC`; needed to use it in indexes and generated columns). Default false.
   */
  deterministic?: boolean;
}

/** Options of {@link Connection.pragma}. */
export interface PragmaOptions {
  /** Return only the first column of the first row (`undefined` when there is none). */
  simple?: boolean;
}

/** What {@link Connection.backup} resolves to (better-sqlite3's shape; the copy is whole at once). */
export interface BackupMetadata {
  /** Always 0: `VACUUM INTO` writes the copy in one step, without page progress. */
  totalPages: number;
  /** Always 0: nothing remains once the promise resolves. */
  remainingPages: number;
}

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
  private safe = false;
  /** Whether a `transaction()` call of this handle is in flight, from BEGIN to the end of its retries. @internal */
  runningTransaction = false;
  private readonly closeHooks: Array<() => void> = [];

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

  /** The database's path, as better-sqlite3's `name` (same as {@link Connection.path}). */
  get name(): string {
    return this.session.engine.path;
  }

  /** True for an in-memory database. */
  get memory(): boolean {
    return !this.session.engine.isFile;
  }

  /** True until {@link Connection.close} ran, as better-sqlite3's `open` (same as {@link Connection.isOpen}). */
  get open(): boolean {
    return this.session.isOpen;
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
    sibling.safe = this.safe;
    return sibling;
  }

  /**
   * Makes integers come back as bigints (`true`, the default) or as numbers when safe (`false`)
   * from this handle's `get`/`all`/`iterate` and the statements it prepares from now on (each
   * statement can still choose with `safeIntegers()`). Siblings made later inherit it.
   */
  defaultSafeIntegers(toggle = true): this {
    this.safe = toggle;
    return this;
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
    return this.session.run(this.session.compileCached(sql), params, 'get', this.format()).rows?.[0] as T | undefined;
  }

  /** Every row of a query. Throws as {@link Connection.run}. */
  all<T = Row>(sql: string, params?: BindParams): T[] {
    if (arguments.length > 2) throw extraArguments('all');
    return (this.session.run(this.session.compileCached(sql), params, 'all', this.format()).rows ?? []) as T[];
  }

  /**
   * The rows of a query as an iterator. On an in-memory database, outside transactions, rows are
   * read one per step while nothing else uses the engine; any other statement (on any handle)
   * first reads the rest of them, so no cursor stays open across other work. Inside a
   * transaction, or on a file database, the rows are read before the first one is returned.
   */
  iterate<T = Row>(sql: string, params?: BindParams): IterableIterator<T> {
    if (arguments.length > 2) throw extraArguments('iterate');
    return iterable(this.session.iterate(this.session.compileCached(sql), params, this.format()) as Iterator<T>);
  }

  /**
   * Prepares one statement for repeated use. Finalize it when done, or let `close()` do it.
   * @throws SqliteError of kind `sql` for invalid SQL, `misuse` for more than one statement.
   */
  prepare<T = Row>(sql: string): Statement<T> {
    return new Statement<T>(this.session, this.session.compileOne(sql), this.safe, this);
  }

  /**
   * Runs `PRAGMA <source>` and returns its rows, or with `{ simple: true }` the first column of
   * the first row. As better-sqlite3's `pragma()`.
   * @example
   * ```ts
   * db.pragma('foreign_keys', { simple: true });   // 1
   * db.pragma('table_info(users)');                // [{ cid: 0, name: 'id', ... }, ...]
   * ```
   */
  pragma(source: string, options: PragmaOptions = {}): unknown {
    if (typeof source !== 'string') throw misuseError('pragma(source): source must be a string');
    const rows = this.all(`PRAGMA ${source}`);
    if (!options.simple) return rows;
    const first = rows[0];
    return first === undefined ? undefined : Object.values(first)[0];
  }

  /**
   * Registers a SQL function for the whole engine: every sibling handle of this database sees it.
   * Re-registering a name replaces it.
   *
   * The function runs synchronously inside SQLite and may run **again**: a `BEGIN CONCURRENT`
   * transaction is validated by re-running its statements, so a read that calls it is called
   * again at resume and commit (a different result there is a conflict, and the transaction is
   * rerun; never a silent difference), and a write that calls it is re-evaluated. Keep it free
   * of side effects; declare `deterministic: true` when it is. Text it returns must be
   * well-formed UTF-16: a lone surrogate fails the statement (it has no UTF-8 encoding).
   */
  function(name: string, fn: (...args: SqlValue[]) => SqlValue | undefined, options: FunctionOptions = {}): this {
    if (typeof name !== 'string' || name === '') throw misuseError('function(name, fn): name must be a non-empty string');
    if (typeof fn !== 'function') throw misuseError('function(name, fn): fn must be a function');
    if (!isWellFormed(name)) throw misuseError('function(name, fn): the name has a lone UTF-16 surrogate, which has no UTF-8 encoding');
    this.session.assertOpen();
    settleCursor(); // SQLite refuses to replace a function while a statement is active
    try {
      this.session.engine.db.function(name, textChecked(name, fn) as (...args: unknown[]) => unknown, { deterministic: options.deterministic === true });
    } catch (e) {
      throw fromEngineError(e);
    }
    this.session.engine.footprints.invalidate();
    return this;
  }

  /**
   * Writes a consistent copy of the database (committed state) to the file `destination`, with
   * `VACUUM INTO`. The file must not exist. As better-sqlite3's `backup()`, minus progress.
   * @throws SqliteError when the file exists or cannot be written, or when this handle is in a transaction.
   */
  async backup(destination: string): Promise<BackupMetadata> {
    if (typeof destination !== 'string' || destination === '') throw misuseError('backup(destination): a file path is needed');
    this.vacuumInto(destination);
    return { totalPages: 0, remainingPages: 0 };
  }

  /** The database as bytes, in SQLite's file format (a `VACUUM INTO` copy of the committed state). */
  serialize(): Buffer {
    const file = join(tmpdir(), `siblite-serialize-${process.pid}-${randomBytes(6).toString('hex')}.db`);
    try {
      this.vacuumInto(file);
      return readFileSync(file);
    } finally {
      rmSync(file, { force: true });
    }
  }

  private vacuumInto(file: string): void {
    if (this.inTransaction) throw misuseError('backup()/serialize() cannot run inside a transaction of this handle');
    // SQLite refuses VACUUM inside a transaction, and another handle's transaction may live in
    // the engine: a concurrent one steps out (it resumes by re-execution), a pessimistic one
    // holds the lock, so the copy waits for it like any busy statement.
    const engine = this.session.engine;
    if (engine.active?.kind === 'pessimistic') {
      throw sqliteError(
        `database is locked: handle #${engine.active.handleId} holds a pessimistic transaction; backup()/serialize() copy committed state only, retry when it ends`,
        'SQLITE_BUSY',
      );
    }
    engine.park();
    this.run('VACUUM INTO ?', [file]);
  }

  private format(): RowFormat | undefined {
    return this.safe ? SAFE : undefined;
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
    if (!this.session.isOpen) return;
    try {
      this.session.close();
    } finally {
      for (const fn of this.closeHooks.splice(0)) fn();
    }
  }

  /** Runs `fn` once this handle closes (a pool of its siblings closes with it). @internal */
  onClose(fn: () => void): void {
    if (!this.session.isOpen) fn();
    else this.closeHooks.push(fn);
  }
}

/**
 * `fn`, failing its statement when it returns text with a lone UTF-16 surrogate: the engine
 * wrapper's encoder under-counts such text and would store it with its end cut off.
 */
function textChecked(name: string, fn: (...args: SqlValue[]) => SqlValue | undefined): (...args: SqlValue[]) => SqlValue | undefined {
  const checked = (...args: SqlValue[]): SqlValue | undefined => {
    const out = fn(...args);
    if (typeof out === 'string' && !isWellFormed(out)) {
      throw new Error(`${name}() returned text with a lone UTF-16 surrogate, which has no UTF-8 encoding (return well-formed text or bytes)`);
    }
    return out;
  };
  // The engine registers the function with as many arguments as `fn.length` declares.
  return Object.defineProperty(checked, 'length', { value: fn.length });
}
