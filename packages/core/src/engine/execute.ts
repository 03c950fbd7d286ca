/**
 * Running one prepared engine statement: binding parameters (named ones without their prefix
 * included), stepping, and reporting what the application sees. `changes` and
 * `lastInsertRowid` are made deterministic per statement, instead of the connection-wide values
 * SQLite reports, because one engine is shared by many handles: a SELECT reports 0 changes, and
 * only an INSERT that inserted reports a rowid. Binding, stepping and reading go through the
 * engine's exports directly (direct.ts), converting values exactly as the wrapper does.
 * @module
 */
import { fromEngineError, sqliteError } from '../errors.js';
import { finalizeStatement, loadSqlite, type WasmStatement } from '../file/load.js';
import { parameterCount, tokenize, type StatementClass } from '../sql/lexer.js';
import { checkCount, checkValue } from './params.js';
import { bindValues, ColumnNames, resetStatement, rowArray, rowObject, stepRow, wrapperError } from './direct.js';
import { RowCursor, settleCursor } from './cursor.js';
import { DigestBuilder, type RowDigest } from './row-digest.js';

/** A value SQLite can store, as siblite accepts it in parameters. */
export type SqlValue = number | bigint | string | Uint8Array | null | boolean;

/**
 * Statement parameters: positional values as an array, one value, or an object of named values
 * (keys with or without their `:`, `@` or `$` prefix).
 */
export type BindParams = readonly SqlValue[] | SqlValue | { readonly [name: string]: SqlValue };

/** A result row: column name to value. */
export type Row = Record<string, unknown>;

/** How the application asked for results. */
export type Want = 'run' | 'get' | 'all';

/**
 * How result rows are shaped (better-sqlite3's `raw()` and `safeIntegers()`). Part of what a
 * statement showed the application, so a concurrent transaction's log keeps it and a replay
 * reads with the same format.
 */
export interface RowFormat {
  /** Rows as arrays of values in column order (same-named columns all kept). */
  readonly raw?: boolean;
  /** Every INTEGER value as a bigint (otherwise a number when it is safe, a bigint beyond 2^53). */
  readonly safeIntegers?: boolean;
}

/** What executing a statement showed the application. */
export interface Outcome {
  /** Rows for `get` (at most one) and `all`; undefined for `run`. */
  rows: Row[] | undefined;
  changes: number;
  /** The rowid an INSERT inserted; undefined when the statement inserted nothing. */
  insertedRowid: number | bigint | undefined;
}

interface LowLevel {
  _sqlite3_reset(ptr: number): number;
  _sqlite3_column_int64(ptr: number, i: number): bigint;
  _sqlite3_column_type(ptr: number, i: number): number;
  _sqlite3_changes(db: number): number;
  _sqlite3_last_insert_rowid(db: number): bigint;
  _sqlite3_column_count(ptr: number): number;
  cwrap(name: string, ret: string, args: string[]): (...args: unknown[]) => number;
}

let low: LowLevel | undefined;
let bindIndex: ((ptr: number, name: string) => number) | undefined;
let columnName: ((ptr: number, i: number) => string) | undefined;
let columnTable: ((ptr: number, i: number) => string | null) | undefined;
function lowLevel(): LowLevel {
  low ??= loadSqlite() as unknown as LowLevel;
  return low;
}

const ptrOf = (o: unknown): number => (o as { _ptr: number })._ptr;

/** SQLite's own `last_insert_rowid` of the engine connection `db`. */
export function engineLastInsertRowid(db: unknown): bigint {
  return BigInt(lowLevel()._sqlite3_last_insert_rowid(ptrOf(db)));
}

/** The wrapper's statement fields: its pointer (null once finalized) and its connection's. */
interface WrapperStatement {
  _ptr: number | null;
  _db: { _ptr: number | null };
}
const SQLITE_NULL = 5;

/** The current row of `stmt` as an array of values (`raw`) or an object of `names`. */
function formattedRow(ptr: number, names: readonly string[], raw: boolean, bigints: boolean): Row {
  return raw ? (rowArray(ptr, names.length, bigints) as unknown as Row) : rowObject(ptr, names, bigints);
}

/** A prepared engine statement with what siblite knows about it. */
export class PreparedSql {
  readonly returnsRows: boolean;
  /** An upsert (`ON CONFLICT ... DO UPDATE`) may change rows without inserting any. */
  private readonly upsert: boolean;
  private readonly named = new Map<string, number>();
  /** Parameter indexes by their full name (see {@link PreparedSql.parameterIndex}). */
  private readonly indexes = new Map<string, number>();
  /**
   * For an INSERT: whether it writes a rowid table (false for WITHOUT ROWID, views, virtual
   * tables: SQLite then leaves its connection-wide last rowid, another handle's, alone).
   */
  rowidTarget = true;
  /** For an upsert into a rowid table: whether a row with this rowid exists now. */
  rowidExists: ((rowid: bigint) => boolean) | undefined;
  /** How many parameter slots the SQL has (counted once, on first use). */
  private slots: number | undefined;
  /** The result column names, decoded once (see {@link ColumnNames}). */
  private readonly names = new ColumnNames();

  constructor(
    readonly sql: string,
    readonly stmt: WasmStatement,
    readonly cls: StatementClass,
  ) {
    this.returnsRows = lowLevel()._sqlite3_column_count(ptrOf(stmt)) > 0;
    const verb = cls.type === 'dml' ? cls.verb : 'other';
    this.verb = verb;
    this.writesRows = verb === 'insert' || verb === 'update' || verb === 'delete';
    this.upsert = verb === 'insert' && /\bdo\s+update\b/i.test(sql);
  }

  /** The DML verb (`select`, `insert`, ...), or `other`. Fixed at construction: read per statement run. */
  readonly verb: string;
  /** An INSERT, UPDATE or DELETE: sets what `changes()` answers. */
  readonly writesRows: boolean;

  /**
   * Runs the statement on `db` (the engine connection it was prepared on). `format` shapes the
   * rows of `get` and `all` (default: objects, integers as numbers when safe).
   */
  execute(db: unknown, params: BindParams | undefined, want: Want, format?: RowFormat): Outcome {
    settleCursor();
    const ll = lowLevel();
    const values = this.normalize(params);
    const writesRows = this.writesRows;
    const dbPtr = ptrOf(db);
    let rows: Row[] | undefined;
    let changes = 0;
    let rowid: number | bigint | undefined;
    // An upsert that only updated leaves SQLite's connection-wide last_insert_rowid alone, and on
    // a shared engine that value may be another handle's insert: report a rowid only if it moved.
    const rowidBefore = this.upsert && this.rowidTarget ? ll._sqlite3_last_insert_rowid(dbPtr) : undefined;
    // If a row with that rowid exists already, an insert cannot take it: an unmoved value then
    // means the upsert only updated. If none exists, an unmoved value may be a real insert.
    const staleTaken = rowidBefore !== undefined && (this.rowidExists?.(rowidBefore) ?? true);
    const ptr = ptrOf(this.stmt);
    try {
      const engineDb = this.bound(values);
      if (want === 'run') {
        // One step, as the wrapper's run(): a RETURNING statement writes everything on its first.
        stepRow(ptr, engineDb);
        if (this.returnsRows) resetStatement(ptr);
      } else {
        rows = this.readRows(engineDb, want === 'get' ? 1 : Infinity, format);
      }
      // After the reset: a statement stopped at a row (get, RETURNING) sets its changes when it halts.
      if (writesRows) changes = ll._sqlite3_changes(dbPtr);
    } catch (e) {
      // Leave the statement reset so it holds no engine state.
      ll._sqlite3_reset(ptr);
      throw fromEngineError(e);
    }
    const big = this.verb === 'insert' && this.rowidTarget && changes > 0 ? ll._sqlite3_last_insert_rowid(dbPtr) : undefined;
    if (big !== undefined && (big !== rowidBefore || (!staleTaken && this.rowidExists?.(big) === true))) {
      rowid = big >= BigInt(Number.MIN_SAFE_INTEGER) && big <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(big) : big;
    }
    return { rows, changes, insertedRowid: rowid };
  }

  /**
   * Runs a statement without parameters or result rows, such as `BEGIN`, `COMMIT` or `ROLLBACK`
   * prepared once: cheaper than the engine's `exec()`, which parses its text on every call.
   * Throws what `exec()` would (the engine's message, mapped by {@link fromEngineError}) and
   * leaves the statement reset.
   */
  runControl(): void {
    settleCursor();
    const ptr = ptrOf(this.stmt);
    try {
      // Nothing to bind, and the statement was reset after its last run (below): step at once.
      stepRow(ptr, this.ready());
    } catch (e) {
      throw fromEngineError(e);
    } finally {
      resetStatement(ptr);
    }
  }

  /**
   * `all()` of a statement that writes nothing, also digesting the rows (see row-digest.ts):
   * a concurrent transaction's log keeps the digest instead of a large result.
   */
  allDigested(params: BindParams | undefined, format: RowFormat = {}): { rows: Row[]; digest: RowDigest } {
    settleCursor();
    const values = this.normalize(params);
    const ptr = ptrOf(this.stmt);
    try {
      const engineDb = this.bound(values);
      // Names after the first step, which re-prepares a statement whose schema changed.
      let more = stepRow(ptr, engineDb);
      const names = this.names.of(ptr);
      const digest = new DigestBuilder(names);
      const n = names.length;
      const rows: Row[] = [];
      const raw = format.raw === true;
      const bigints = format.safeIntegers === true;
      for (; more; more = stepRow(ptr, engineDb)) {
        rows.push(formattedRow(ptr, names, raw, bigints));
        digest.addRow(ptr, n);
      }
      return { rows, digest: digest.finish() };
    } catch (e) {
      throw fromEngineError(e);
    } finally {
      resetStatement(ptr);
    }
  }

  /**
   * Runs a statement that writes nothing and compares its rows with `expected` without
   * materializing them, stopping within one digest block of the first difference. Returns -1
   * when they are the same, otherwise how many rows were read before the difference showed.
   */
  matchesDigest(params: BindParams | undefined, expected: RowDigest): number {
    settleCursor();
    const values = this.normalize(params);
    const ptr = ptrOf(this.stmt);
    try {
      const engineDb = this.bound(values);
      let more = stepRow(ptr, engineDb);
      const names = this.names.of(ptr);
      const digest = new DigestBuilder(names);
      const n = names.length;
      for (; more; more = stepRow(ptr, engineDb)) {
        digest.addRow(ptr, n);
        if (!digest.agrees(expected)) return digest.count;
      }
      return digest.equals(expected) ? -1 : digest.count;
    } catch (e) {
      throw fromEngineError(e);
    } finally {
      resetStatement(ptr);
    }
  }

  /**
   * The first column of the first row as a 64-bit integer, or null when there is no row or the
   * value is NULL: for the engine's own bookkeeping queries, without building row objects.
   */
  integer(params?: BindParams): bigint | null {
    settleCursor();
    const values = params === undefined ? undefined : this.normalize(params);
    const ll = lowLevel();
    const ptr = ptrOf(this.stmt);
    try {
      // Without parameters nothing is bound: the statement was reset after its last use.
      const engineDb = values === undefined ? this.ready() : this.bound(values);
      if (!stepRow(ptr, engineDb) || ll._sqlite3_column_type(ptr, 0) === SQLITE_NULL) return null;
      return ll._sqlite3_column_int64(ptr, 0);
    } catch (e) {
      throw fromEngineError(e);
    } finally {
      ll._sqlite3_reset(ptr);
    }
  }

  /**
   * The engine connection's pointer, after checking what the wrapper checks before each use:
   * the statement is not finalized and its connection is open.
   */
  private ready(): number {
    const st = this.stmt as unknown as WrapperStatement;
    if (st._ptr === null) throw wrapperError('Statement already finalized');
    if (st._db._ptr === null) throw wrapperError('Database is closed');
    return st._db._ptr;
  }

  /** {@link PreparedSql.ready}, then binds `values` (as normalized); returns the connection's pointer. */
  private bound(values: unknown): number {
    const db = this.ready();
    bindValues(ptrOf(this.stmt), db, values);
    return db;
  }

  /** Up to `limit` rows of the bound statement in `format`, then leaves it reset. */
  private readRows(engineDb: number, limit: number, format: RowFormat | undefined): Row[] {
    const ptr = ptrOf(this.stmt);
    if (!stepRow(ptr, engineDb)) {
      resetStatement(ptr);
      return [];
    }
    // Read after the first step: a statement re-prepared by it may have other columns.
    const names = this.names.of(ptr);
    const raw = format?.raw === true;
    const bigints = format?.safeIntegers === true;
    // The first row as a one-element array: a push onto an empty array reserves 17 slots, and
    // get() reads one row.
    const rows = [formattedRow(ptr, names, raw, bigints)];
    while (rows.length < limit && stepRow(ptr, engineDb)) rows.push(formattedRow(ptr, names, raw, bigints));
    resetStatement(ptr);
    return rows;
  }

  /** Binds `values` and returns a function that reads the next row in `format` (undefined at the end). */
  private rowReader(values: unknown, format: RowFormat): () => Row | undefined {
    const ptr = ptrOf(this.stmt);
    const engineDb = this.bound(values);
    const raw = format.raw === true;
    const bigints = format.safeIntegers === true;
    let names: readonly string[] | undefined;
    return () => {
      if (!stepRow(ptr, engineDb)) return undefined;
      names ??= this.names.of(ptr);
      return formattedRow(ptr, names, raw, bigints);
    };
  }

  /**
   * Opens a lazy cursor over the rows of this (read-only) statement: rows are stepped one per
   * `next()` until anything else uses an engine, which reads the rest first (see cursor.ts).
   */
  openCursor(params: BindParams | undefined, format: RowFormat = {}): RowCursor<Row> {
    settleCursor();
    const values = this.normalize(params);
    let read: () => Row | undefined;
    try {
      read = this.rowReader(values, format);
    } catch (e) {
      lowLevel()._sqlite3_reset(ptrOf(this.stmt));
      throw fromEngineError(e);
    }
    return new RowCursor(read, () => {
      if (!this.stmt.isFinalized) lowLevel()._sqlite3_reset(ptrOf(this.stmt));
    });
  }

  /** The result columns: name and source table (`null` for expressions). */
  columns(): { name: string; table: string | null }[] {
    const ll = lowLevel();
    columnName ??= ll.cwrap('sqlite3_column_name', 'string', ['number', 'number']) as unknown as (p: number, i: number) => string;
    columnTable ??= ll.cwrap('sqlite3_column_table_name', 'string', ['number', 'number']) as unknown as (p: number, i: number) => string | null;
    const ptr = ptrOf(this.stmt);
    const out: { name: string; table: string | null }[] = [];
    for (let i = 0; i < ll._sqlite3_column_count(ptr); i++) out.push({ name: columnName(ptr, i), table: columnTable(ptr, i) || null });
    return out;
  }

  /**
   * Checks `params` as {@link PreparedSql.execute} would, without running anything: for a
   * statement that runs rewritten, against the SQL the application wrote.
   */
  checkParams(params: BindParams | undefined): void {
    this.normalize(params);
  }

  /**
   * Checks the parameters (every slot filled exactly once, every value storable as given) and
   * gives unprefixed named parameters the prefix the SQL uses; rejects unknown names.
   */
  private normalize(params: BindParams | undefined): unknown {
    const expected = (this.slots ??= parameterCount(tokenize(this.sql)));
    if (params === undefined) {
      checkCount(0, expected, this.sql);
      return params;
    }
    // A single blob is one value; the engine would take it for an object of named parameters.
    if (params === null || typeof params !== 'object' || params instanceof Uint8Array) {
      checkValue(params, 1);
      checkCount(1, expected, this.sql);
      return params instanceof Uint8Array ? [params] : params;
    }
    if (Array.isArray(params)) {
      for (let i = 0; i < params.length; i++) checkValue(params[i], i + 1);
      checkCount(params.length, expected, this.sql);
      return params;
    }
    // Named values are bound by position: the index of each name is looked up once per
    // statement (the engine wrapper would look every name up again on every execution).
    const out: unknown[] = [];
    let bound = 0;
    for (const key of Object.keys(params)) {
      let index = this.named.get(key);
      if (index === undefined) {
        index = this.parameterIndex(this.resolveName(key));
        this.named.set(key, index);
      }
      const value = (params as Record<string, unknown>)[key];
      checkValue(value, key);
      while (out.length < index - 1) out.push(undefined);
      if (out[index - 1] === undefined) bound++;
      out[index - 1] = value;
    }
    checkCount(bound, expected, this.sql);
    return out;
  }

  private resolveName(key: string): string {
    bindIndex ??= lowLevel().cwrap('sqlite3_bind_parameter_index', 'number', ['number', 'string']) as (
      ptr: number,
      name: string,
    ) => number;
    const ptr = ptrOf(this.stmt);
    const candidates = ':@$'.includes(key[0] ?? '') ? [key] : [`:${key}`, `@${key}`, `$${key}`];
    for (const c of candidates) if (bindIndex(ptr, c) > 0) return c;
    throw sqliteError(`Unknown named parameter "${key}" in: ${this.sql}`, 'SQLITE_RANGE');
  }

  /** The 1-based index of a named parameter, 0 when absent (looked up once per name). */
  parameterIndex(name: string): number {
    let index = this.indexes.get(name);
    if (index === undefined) {
      bindIndex ??= lowLevel().cwrap('sqlite3_bind_parameter_index', 'number', ['number', 'string']) as (
        ptr: number,
        name: string,
      ) => number;
      index = bindIndex(ptrOf(this.stmt), name);
      this.indexes.set(name, index);
    }
    return index;
  }

  finalize(): void {
    settleCursor();
    finalizeStatement(this.stmt);
  }
}
