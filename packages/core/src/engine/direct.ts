/**
 * Binding, stepping and reading a statement through the engine's `_sqlite3_*` exports directly,
 * for the hot path of running one statement. node-sqlite3-wasm's `Statement` methods do more
 * work per call than siblite needs: they look the column names up on every execution, allocate
 * and free heap memory for every text or blob parameter, make a BigInt for every integer read
 * and go through a generator per result. Every conversion here is the wrapper's own (0.8.60:
 * `Statement._bindValue`, `_step`, `_getRow`, its string helpers) and every engine failure is
 * its `SQLite3Error` with the engine's message, so what the application sees does not change.
 * Two deliberate differences, where the wrapper's helpers lose or invent data: a string with a
 * lone surrogate gets a buffer large enough for all of it, and short text that is not valid
 * UTF-8 is decoded from its own bytes only (see {@link columnValue}).
 * @module
 */
import { loadSqlite } from '../file/load.js';

/** The engine exports used here (see load.ts for the `__siblite*` ones). */
interface Exports {
  _sqlite3_step(stmt: number): number;
  _sqlite3_reset(stmt: number): number;
  _sqlite3_clear_bindings(stmt: number): number;
  _sqlite3_bind_int(stmt: number, i: number, v: number): number;
  _sqlite3_bind_int64(stmt: number, i: number, v: bigint): number;
  _sqlite3_bind_double(stmt: number, i: number, v: number): number;
  _sqlite3_bind_text(stmt: number, i: number, p: number, n: number, destructor: number): number;
  _sqlite3_bind_blob(stmt: number, i: number, p: number, n: number, destructor: number): number;
  _sqlite3_bind_blob64(stmt: number, i: number, p: number, n: bigint, destructor: number): number;
  _sqlite3_bind_null(stmt: number, i: number): number;
  _sqlite3_column_count(stmt: number): number;
  _sqlite3_column_name(stmt: number, i: number): number;
  _sqlite3_column_type(stmt: number, i: number): number;
  _sqlite3_column_int64(stmt: number, i: number): bigint;
  _sqlite3_column_double(stmt: number, i: number): number;
  _sqlite3_column_text(stmt: number, i: number): number;
  _sqlite3_column_blob(stmt: number, i: number): number;
  _sqlite3_column_bytes(stmt: number, i: number): number;
  _sqlite3_errmsg(db: number): number;
  _malloc(n: number): number;
  _free(p: number): void;
  __sibliteHeap(): Uint8Array;
  __sibliteText: {
    UTF8ToString(p: number): string;
    stringToUTF8(s: string, p: number, max: number): number;
    lengthBytesUTF8(s: string): number;
  };
  SQLite3Error: new (message: string) => Error;
}

let ex: Exports | undefined;
function engine(): Exports {
  ex ??= loadSqlite() as unknown as Exports;
  return ex;
}

const SQLITE_OK = 0;
const SQLITE_ROW = 100;
const SQLITE_DONE = 101;
const SQLITE_INTEGER = 1;
const SQLITE_FLOAT = 2;
const SQLITE_TEXT = 3;
const SQLITE_BLOB = 4;
const SQLITE_NULL = 5;
/** SQLite copies the bound bytes at once, so the buffer they came from can be reused. */
const SQLITE_TRANSIENT = -1;
const INT32_MIN = -2147483648;
const INT32_MAX = 2147483647;

/** The wrapper's error class with `message` (errors.ts maps it by message). */
export function wrapperError(message: string): Error {
  return new (engine().SQLite3Error)(message);
}

/** The error the wrapper throws for a failed call on connection `db`: the engine's message. */
function engineError(db: number): Error {
  const e = engine();
  return wrapperError(e.__sibliteText.UTF8ToString(e._sqlite3_errmsg(db)));
}

/**
 * One heap buffer, reused for the bytes of text and blob parameters (the wrapper mallocs and
 * frees one per value). Larger values than {@link SCRATCH_MAX} get their own allocation, so
 * the buffer never pins much memory.
 */
let scratch = 0;
let scratchSize = 0;
const SCRATCH_MAX = 64 * 1024;

/** A heap buffer of at least `size` bytes (never 0, so a bound empty blob is not NULL); free it with {@link release}. */
function heapBuffer(size: number): number {
  const e = engine();
  if (scratch !== 0 && size <= scratchSize) return scratch;
  if (size > SCRATCH_MAX) {
    const p = e._malloc(size);
    if (p === 0) throw wrapperError('out of memory');
    return p;
  }
  const grown = Math.max(size, 256, Math.min(SCRATCH_MAX, scratchSize * 2));
  const p = e._malloc(grown);
  if (p === 0) throw wrapperError('out of memory');
  if (scratch !== 0) e._free(scratch);
  scratch = p;
  scratchSize = grown;
  return p;
}

function release(p: number): void {
  if (p !== scratch) engine()._free(p);
}

/** Whether `s` has no lone surrogate (`String.prototype.isWellFormed`, Node 20, not yet in the ES2023 lib). */
export function isWellFormed(s: string): boolean {
  return (s as unknown as { isWellFormed(): boolean }).isWellFormed();
}

/** Binds one value at `position` (1-based), converting it as the wrapper's `_bindValue` does. */
function bindValue(stmt: number, db: number, value: unknown, position: number): void {
  const e = engine();
  let rc: number;
  switch (typeof value) {
    case 'string': {
      const t = e.__sibliteText;
      // The engine's lengthBytesUTF8 counts any surrogate as half of a 4-byte pair and skips the
      // next unit, so a lone surrogate before a 2- or 3-byte character under-counts and
      // stringToUTF8 silently cuts the end off. Each UTF-16 unit takes at most 3 bytes.
      const size = (isWellFormed(value) ? t.lengthBytesUTF8(value) : value.length * 3) + 1;
      const p = heapBuffer(size);
      t.stringToUTF8(value, p, size);
      rc = e._sqlite3_bind_text(stmt, position, p, -1, SQLITE_TRANSIENT);
      release(p);
      break;
    }
    case 'number':
      if (Number.isSafeInteger(value)) {
        rc =
          value >= INT32_MIN && value <= INT32_MAX
            ? e._sqlite3_bind_int(stmt, position, value)
            : e._sqlite3_bind_int64(stmt, position, BigInt(value));
      } else rc = e._sqlite3_bind_double(stmt, position, value);
      break;
    case 'bigint':
      rc = e._sqlite3_bind_int64(stmt, position, value);
      break;
    case 'boolean':
      rc = e._sqlite3_bind_int(stmt, position, value ? 1 : 0);
      break;
    case 'object':
      if (value === null) {
        rc = e._sqlite3_bind_null(stmt, position);
        break;
      }
      if (value instanceof Uint8Array) {
        const p = heapBuffer(value.byteLength);
        e.__sibliteHeap().set(value, p);
        rc =
          value.byteLength <= INT32_MAX
            ? e._sqlite3_bind_blob(stmt, position, p, value.byteLength, SQLITE_TRANSIENT)
            : e._sqlite3_bind_blob64(stmt, position, p, BigInt(value.byteLength), SQLITE_TRANSIENT);
        release(p);
        break;
      }
      throw wrapperError(`Unsupported type for binding: "${typeof value}"`);
    default:
      throw wrapperError(`Unsupported type for binding: "${typeof value}"`);
  }
  if (rc !== SQLITE_OK) throw engineError(db);
}

/**
 * Resets `stmt`, clears its bindings and binds `values`: undefined (nothing), an array
 * (positions 1, 2, ...) or one value (position 1), as `PreparedSql.normalize` gives them.
 */
export function bindValues(stmt: number, db: number, values: unknown): void {
  const e = engine();
  // No sqlite3_clear_bindings: every caller binds every slot (PreparedSql.normalize counts them).
  if (e._sqlite3_reset(stmt) !== SQLITE_OK) {
    throw wrapperError('Could not reset statement prior to binding new values');
  }
  if (Array.isArray(values)) {
    for (let i = 0; i < values.length; i++) bindValue(stmt, db, values[i], i + 1);
  } else if (values !== undefined) bindValue(stmt, db, values, 1);
}

/** Steps `stmt`: true with a row, false when done; throws the engine's error otherwise. */
export function stepRow(stmt: number, db: number): boolean {
  const rc = engine()._sqlite3_step(stmt);
  if (rc === SQLITE_ROW) return true;
  if (rc === SQLITE_DONE || rc === SQLITE_OK) return false;
  throw engineError(db);
}

/** Resets `stmt` (its bindings stay until the next {@link bindValues}). */
export function resetStatement(stmt: number): void {
  engine()._sqlite3_reset(stmt);
}

/** Text up to this many bytes is decoded by the engine's UTF8ToString by hand (longer: TextDecoder). */
const SHORT_TEXT = 16;
const utf8 = new TextDecoder();

/**
 * Whether the engine's hand decoder would read past the end of the `n` bytes of text at `p`: it
 * takes a lead byte's continuation bytes without looking, so invalid UTF-8 that ends in a
 * truncated sequence (`'a' || x'F9'`) reads the heap bytes after the terminator, and the value
 * then changes from call to call (a concurrent transaction's re-check would see a difference
 * that is not there). Mirrors that decoder's steps.
 */
function overreads(heap: Uint8Array, p: number, n: number): boolean {
  const end = p + n;
  for (let i = p; i < end; ) {
    const b = heap[i] as number;
    if (b === 0) return false; // the decoder stops at a NUL
    i += b < 0x80 ? 1 : (b & 0xe0) === 0xc0 ? 2 : (b & 0xf0) === 0xe0 ? 3 : 4;
    if (i > end) return true;
  }
  return false;
}

/**
 * Column `i` of the current row: an INTEGER as a number when it is safe and a bigint beyond (or
 * always a bigint with `bigints`), a REAL as a number, TEXT as a string, a BLOB as a new
 * Uint8Array, NULL as null.
 */
export function columnValue(stmt: number, i: number, bigints: boolean): unknown {
  const e = engine();
  switch (e._sqlite3_column_type(stmt, i)) {
    case SQLITE_INTEGER: {
      if (bigints) return e._sqlite3_column_int64(stmt, i);
      // Read as a double first, which makes no BigInt: an int64 converts to a double exactly
      // up to 2^53 in magnitude, and beyond that it rounds to a double of at least 2^53, which
      // is not safe. So a safe double is the integer itself.
      const d = e._sqlite3_column_double(stmt, i);
      if (d >= Number.MIN_SAFE_INTEGER && d <= Number.MAX_SAFE_INTEGER) return d;
      return e._sqlite3_column_int64(stmt, i);
    }
    case SQLITE_FLOAT:
      return e._sqlite3_column_double(stmt, i);
    case SQLITE_TEXT: {
      const p = e._sqlite3_column_text(stmt, i);
      const n = e._sqlite3_column_bytes(stmt, i);
      if (n <= SHORT_TEXT && overreads(e.__sibliteHeap(), p, n)) return utf8.decode(e.__sibliteHeap().subarray(p, p + n));
      return e.__sibliteText.UTF8ToString(p);
    }
    case SQLITE_BLOB: {
      const p = e._sqlite3_column_blob(stmt, i);
      if (p === 0) return new Uint8Array();
      const n = e._sqlite3_column_bytes(stmt, i);
      return e.__sibliteHeap().slice(p, p + n);
    }
    case SQLITE_NULL:
      return null;
    default:
      return undefined;
  }
}

/** The current row as an object of `names` (a later same-named column wins, as in the wrapper). */
export function rowObject(stmt: number, names: readonly string[], bigints: boolean): Record<string, unknown> {
  const row: Record<string, unknown> = {};
  for (let i = 0; i < names.length; i++) row[names[i] as string] = columnValue(stmt, i, bigints);
  return row;
}

/** The current row as an array of its `n` values in column order. */
export function rowArray(stmt: number, n: number, bigints: boolean): unknown[] {
  const row = new Array<unknown>(n);
  for (let i = 0; i < n; i++) row[i] = columnValue(stmt, i, bigints);
  return row;
}

/**
 * A statement's result column names, decoded once. SQLite re-prepares a statement whose schema
 * changed (on its next step), and a `SELECT *` may then have other columns, so each use checks
 * the engine's names against the kept ones: the count, then each name's bytes in place on the
 * heap, which costs no allocation. Only a difference decodes them again.
 */
export class ColumnNames {
  private names: string[] = [];
  private bytes: Uint8Array[] = [];
  private known = false;

  /** The names of `stmt` now (the array is shared: callers must not change it). */
  of(stmt: number): readonly string[] {
    const e = engine();
    const n = e._sqlite3_column_count(stmt);
    if (this.known && n === this.names.length && this.same(stmt, n)) return this.names;
    const names: string[] = [];
    const bytes: Uint8Array[] = [];
    for (let i = 0; i < n; i++) {
      const p = e._sqlite3_column_name(stmt, i);
      const heap = e.__sibliteHeap();
      let end = p;
      if (p !== 0) while (heap[end] !== 0) end++;
      bytes.push(heap.slice(p, end));
      names.push(e.__sibliteText.UTF8ToString(p));
    }
    this.names = names;
    this.bytes = bytes;
    this.known = true;
    return names;
  }

  private same(stmt: number, n: number): boolean {
    const e = engine();
    for (let i = 0; i < n; i++) {
      const p = e._sqlite3_column_name(stmt, i);
      const kept = this.bytes[i] as Uint8Array;
      if (p === 0) return false;
      const heap = e.__sibliteHeap();
      if (heap[p + kept.length] !== 0) return false;
      for (let j = 0; j < kept.length; j++) if (heap[p + j] !== kept[j]) return false;
    }
    return true;
  }
}
