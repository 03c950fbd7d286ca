/**
 * Prepared statements of a handle.
 * @module
 */
import type { BindParams, Row, RowFormat } from './engine/execute.js';
import { closedError, extraArguments, misuseError } from './errors.js';
import { iterable } from './iterable.js';
import type { Connection } from './connection.js';
import type { CompiledSql, Session } from './session.js';

/** What `run()` returns. */
export interface RunResult {
  /** Rows inserted, updated or deleted by the statement itself (0 for queries). */
  changes: number;
  /** The rowid of the last row this handle inserted (a bigint beyond 2^53). */
  lastInsertRowid: number | bigint;
}

/**
 * A result column, as `columns()` describes it. The engine does not expose a column's origin
 * name, database or declared type, so those are always `null` (better-sqlite3 fills them).
 */
export interface ColumnDefinition {
  /** The column's name in the result (its alias, if any). */
  name: string;
  /** The table the value comes from; `null` for an expression. */
  table: string | null;
  /** The origin column's name: `null` (the engine does not expose it). */
  column: null;
  /** The database (`main`, `temp`, ...): `null` (the engine does not expose it). */
  database: null;
  /** The declared type: `null` (the engine does not expose it). */
  type: null;
}

type Shape = 'object' | 'raw' | 'pluck' | 'expand';

/**
 * A statement prepared on one handle by `conn.prepare(sql)`. It runs with the handle's
 * transaction state, exactly like the same SQL passed to `conn.run()` and friends. Finalize it
 * when done to release engine memory early; the handle finalizes its statements when it closes.
 *
 * Row shapes as in better-sqlite3: {@link Statement.raw} (arrays), {@link Statement.pluck}
 * (the first column's value), {@link Statement.expand} (values grouped by table), and
 * {@link Statement.safeIntegers} (integers as bigints).
 *
 * @typeParam T - the row type `get`, `all` and `iterate` return.
 */
export class Statement<T = Row> {
  private finalized = false;
  private shape: Shape = 'object';
  private safe: boolean;
  private bound: BindParams | undefined;
  private isBound = false;
  private columnCache: ColumnDefinition[] | undefined;
  private cursor: { isOpen?: boolean } | undefined;

  /** @internal */
  constructor(
    private readonly session: Session,
    private readonly compiled: CompiledSql,
    safeIntegers = false,
    /** The handle that prepared this statement (better-sqlite3's `database`). */
    readonly database?: Connection,
  ) {
    this.safe = safeIntegers;
    session.own(this);
  }

  /** The SQL text. */
  get source(): string {
    return this.compiled.sql;
  }

  /**
   * True when the statement returns rows (a query, or a write with `RETURNING`): then use
   * `get`/`all`/`iterate`; otherwise `run`. As better-sqlite3's `reader`. A setting (`PRAGMA
   * x = y`, ...) is prepared only when it runs (preparing may apply it), so it reports `false`.
   */
  get reader(): boolean {
    return this.compiled.prepared?.returnsRows ?? false;
  }

  /** True when the statement does not write to the database. */
  get readonly(): boolean {
    const c = this.compiled.cls;
    if (c.type !== 'dml') return c.type !== 'ddl' && c.type !== 'journal_mode' ? true : false;
    return this.session.engine.footprints.of(this.compiled.sql).readonly;
  }

  /** True while a lazy `iterate()` of this statement has rows left to read from the engine. */
  get busy(): boolean {
    return this.cursor?.isOpen === true;
  }

  /** Whether the statement has been finalized (by you, or by closing its handle). */
  get isFinalized(): boolean {
    return this.finalized;
  }

  /** Rows as arrays of values in column order (`true`, the default), or back to objects (`false`). Turns pluck and expand off. */
  raw(toggle = true): this {
    return this.setShape('raw', toggle);
  }

  /** Return only the first column's value of each row (`true`, the default), or whole rows (`false`). */
  pluck(toggle = true): this {
    return this.setShape('pluck', toggle);
  }

  /** Rows as `{ table: { column: value } }`, expressions under `$` (`true`, the default), or flat objects (`false`). */
  expand(toggle = true): this {
    return this.setShape('expand', toggle);
  }

  /** Integers as bigints (`true`, the default), or as numbers when safe (`false`). */
  safeIntegers(toggle = true): this {
    this.safe = toggle;
    return this;
  }

  /**
   * Binds parameters for good: later calls take none (as better-sqlite3's `bind()`).
   * @throws SqliteError of kind `misuse` when already bound.
   */
  bind(params: BindParams): this {
    if (this.isBound) throw misuseError('The statement already has bound parameters');
    this.ready();
    this.bound = params;
    this.isBound = true;
    return this;
  }

  /** The result columns (empty for a statement that returns no rows). */
  columns(): ColumnDefinition[] {
    const prepared = this.ready().prepared;
    this.columnCache ??= (prepared?.columns() ?? []).map((c) => ({ ...c, column: null, database: null, type: null }));
    return this.columnCache.map((c) => ({ ...c }));
  }

  /**
   * Runs the statement and returns what it changed.
   * @throws SqliteError: `constraint`, `busy`, `misuse` (bad parameter), `closed`, ...
   */
  run(params?: BindParams): RunResult {
    if (arguments.length > 1) throw extraArguments('run', 1);
    const out = this.session.run(this.ready(), this.params(params, arguments.length), 'run');
    return { changes: out.changes, lastInsertRowid: this.session.lastInsertRowid };
  }

  /** The first row, or `undefined` when there is none. */
  get(params?: BindParams): T | undefined {
    if (arguments.length > 1) throw extraArguments('get', 1);
    const rows = this.session.run(this.ready(), this.params(params, arguments.length), 'get', this.format()).rows ?? [];
    return rows.length === 0 ? undefined : (this.reshape(rows)[0] as T);
  }

  /** Every row. */
  all(params?: BindParams): T[] {
    if (arguments.length > 1) throw extraArguments('all', 1);
    const rows = this.session.run(this.ready(), this.params(params, arguments.length), 'all', this.format()).rows ?? [];
    return this.reshape(rows) as T[];
  }

  /**
   * The rows, one by one. On an in-memory database, outside transactions, each row is read from
   * the engine when it is asked for, while nothing else uses the engine; any other statement (on
   * any handle) first reads the rest, so no cursor stays open across other work. Inside a
   * transaction, or on a file database, the rows are read when iteration starts.
   */
  iterate(params?: BindParams): IterableIterator<T> {
    if (arguments.length > 1) throw extraArguments('iterate', 1);
    const source = this.session.iterate(this.ready(), this.params(params, arguments.length), this.format());
    this.cursor = source as { isOpen?: boolean };
    const shape = this.shape;
    if (shape === 'object' || shape === 'raw') return iterable(source as Iterator<T>);
    const reshape = (row: unknown) => this.reshapeOne(row, shape) as T;
    return iterable<T>({
      next: () => {
        const r = source.next();
        return r.done ? { value: undefined, done: true } : { value: reshape(r.value), done: false };
      },
      return: (): IteratorResult<T> => {
        source.return?.();
        return { value: undefined, done: true };
      },
    });
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

  private setShape(shape: Shape, toggle: boolean): this {
    if (typeof toggle !== 'boolean') throw misuseError(`${shape}() takes a boolean`);
    if (toggle && shape !== 'object' && !this.reader) throw misuseError(`${shape}() is only for statements that return rows`);
    if (toggle) this.shape = shape;
    else if (this.shape === shape) this.shape = 'object';
    return this;
  }

  private params(params: BindParams | undefined, given: number): BindParams | undefined {
    if (!this.isBound) return params;
    if (given > 0) throw misuseError('This statement has bound parameters; call it without any');
    return this.bound;
  }

  /** Pluck and expand read raw rows (every column kept) and reshape them here. */
  private format(): RowFormat | undefined {
    const raw = this.shape !== 'object';
    return raw || this.safe ? { raw, safeIntegers: this.safe } : undefined;
  }

  private reshape(rows: unknown[]): unknown[] {
    const shape = this.shape;
    return shape === 'object' || shape === 'raw' ? rows : rows.map((r) => this.reshapeOne(r, shape));
  }

  /** A raw row as `pluck` or `expand` shows it. */
  private reshapeOne(row: unknown, shape: 'pluck' | 'expand'): unknown {
    const values = row as unknown[];
    if (shape === 'pluck') return values[0];
    const out: Record<string, Record<string, unknown>> = {};
    this.columns().forEach((c, i) => {
      (out[c.table ?? '$'] ??= {})[c.name] = values[i];
    });
    return out;
  }
}
