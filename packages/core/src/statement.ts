/**
 * Prepared statements of a handle.
 * @module
 */
import type { BindParams, Row } from './engine/execute.js';
import { closedError, extraArguments, misuseError } from './errors.js';
import type { CompiledSql, Session } from './session.js';

/** What `run()` returns. */
export interface RunResult {
  /** Rows inserted, updated or deleted by the statement itself (0 for queries). */
  changes: number;
  /** The rowid of the last row this handle inserted (a bigint beyond 2^53). */
  lastInsertRowid: number | bigint;
}

/**
 * A statement prepared on one handle by `conn.prepare(sql)`. It runs with the handle's
 * transaction state, exactly like the same SQL passed to `conn.run()` and friends. Finalize it
 * when done to release engine memory early; the handle finalizes its statements when it closes.
 *
 * @typeParam T - the row type `get`, `all` and `iterate` return.
 */
export class Statement<T = Row> {
  private finalized = false;

  /** @internal */
  constructor(
    private readonly session: Session,
    private readonly compiled: CompiledSql,
  ) {
    session.own(this);
  }

  /** The SQL text. */
  get source(): string {
    return this.compiled.sql;
  }

  /**
   * True when the statement returns rows (a query, or a write with `RETURNING`): then use
   * `get`/`all`/`iterate`; otherwise `run`. As better-sqlite3's `reader`.
   */
  get reader(): boolean {
    return this.compiled.prepared?.returnsRows ?? false;
  }

  /** Whether the statement has been finalized (by you, or by closing its handle). */
  get isFinalized(): boolean {
    return this.finalized;
  }

  /**
   * Runs the statement and returns what it changed.
   * @throws SqliteError: `constraint`, `busy`, `misuse` (bad parameter), `closed`, ...
   */
  run(params?: BindParams): RunResult {
    if (arguments.length > 1) throw extraArguments('run', 1);
    const out = this.session.run(this.ready(), params, 'run');
    return { changes: out.changes, lastInsertRowid: this.session.lastInsertRowid };
  }

  /** The first row, or `undefined` when there is none. */
  get(params?: BindParams): T | undefined {
    if (arguments.length > 1) throw extraArguments('get', 1);
    return this.session.run(this.ready(), params, 'get').rows?.[0] as T | undefined;
  }

  /** Every row. */
  all(params?: BindParams): T[] {
    if (arguments.length > 1) throw extraArguments('all', 1);
    return (this.session.run(this.ready(), params, 'all').rows ?? []) as T[];
  }

  /**
   * The rows, one by one. The rows are read when iteration starts (the engine is shared, so no
   * cursor is kept open across other handles' statements).
   */
  iterate(params?: BindParams): IterableIterator<T> {
    if (arguments.length > 1) throw extraArguments('iterate', 1);
    return this.all(params)[Symbol.iterator]();
  }

  /**
   * Releases the statement's engine memory.
   * @throws SqliteError of kind `misuse` when already finalized by you.
   */
  finalize(): void {
    if (this.finalized) throw misuseError('Statement already finalized');
    this.finalizeFromSession();
    this.session.disown(this);
  }

  /** @internal */
  finalizeFromSession(): void {
    this.finalized = true;
    this.compiled.prepared?.finalize();
  }

  private ready(): CompiledSql {
    if (this.finalized) throw closedError('Statement');
    return this.compiled;
  }
}
