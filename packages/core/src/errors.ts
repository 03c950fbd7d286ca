/**
 * Every error siblite throws is a {@link SqliteError}: a code in SQLite's own naming, a coarse
 * {@link ErrorKind} to branch on, and whether retrying can help. The engine (SQLite compiled to
 * WebAssembly) reports failures only as messages, so the code is derived from the message here,
 * in one place.
 * @module
 */

/**
 * The coarse class of an error, for code that decides what to do next.
 *
 * - `busy`: another handle or process holds the lock; retry later (`SQLITE_BUSY`).
 * - `busy_snapshot`: an optimistic `BEGIN CONCURRENT` transaction conflicted and was rolled
 *   back; run the whole transaction again (`SQLITE_BUSY_SNAPSHOT`).
 * - `constraint`: UNIQUE, NOT NULL, CHECK, FOREIGN KEY, datatype, ... violated.
 * - `sql`: the SQL is wrong: syntax error, no such table or column, ...
 * - `closed`: the handle or statement was closed.
 * - `misuse`: the API was used wrongly: nested BEGIN, COMMIT without a transaction, bad
 *   parameter, unsupported value type, DDL inside `BEGIN CONCURRENT`, ...
 * - `readonly`, `io`, `corrupt`, `full`, `toobig`: as SQLite's codes of the same names.
 * - `other`: anything else.
 */
export type ErrorKind =
  | 'busy'
  | 'busy_snapshot'
  | 'constraint'
  | 'sql'
  | 'closed'
  | 'misuse'
  | 'readonly'
  | 'io'
  | 'corrupt'
  | 'full'
  | 'toobig'
  | 'other';

/** Every {@link ErrorKind}, in declaration order. */
export const ERROR_KINDS: readonly ErrorKind[] = [
  'busy',
  'busy_snapshot',
  'constraint',
  'sql',
  'closed',
  'misuse',
  'readonly',
  'io',
  'corrupt',
  'full',
  'toobig',
  'other',
];

/**
 * Every code siblite's packages produce: SQLite's names for the result codes the engine reports,
 * plus siblite's own (`SIBLITE_...`).
 */
export type SqliteErrorCode =
  | 'SQLITE_ERROR'
  | 'SQLITE_BUSY'
  | 'SQLITE_BUSY_SNAPSHOT'
  | 'SQLITE_LOCKED'
  | 'SQLITE_CONSTRAINT'
  | 'SQLITE_CONSTRAINT_UNIQUE'
  | 'SQLITE_CONSTRAINT_NOTNULL'
  | 'SQLITE_CONSTRAINT_CHECK'
  | 'SQLITE_CONSTRAINT_FOREIGNKEY'
  | 'SQLITE_CONSTRAINT_DATATYPE'
  | 'SQLITE_MISMATCH'
  | 'SQLITE_READONLY'
  | 'SQLITE_CORRUPT'
  | 'SQLITE_NOTADB'
  | 'SQLITE_FULL'
  | 'SQLITE_TOOBIG'
  | 'SQLITE_IOERR'
  | 'SQLITE_IOERR_LOCK'
  | 'SQLITE_CANTOPEN'
  | 'SQLITE_NOMEM'
  | 'SQLITE_INTERRUPT'
  | 'SQLITE_MISUSE'
  | 'SQLITE_RANGE'
  /** A closed handle, statement or engine. */
  | 'SIBLITE_CLOSED'
  /** Not an engine error (a WebAssembly trap or a bug in siblite). */
  | 'SIBLITE_INTERNAL'
  /** `@siblite/bus`: see its `BusError` classes. */
  | 'SIBLITE_BUS_CLOSED'
  | 'SIBLITE_BUS_DECODE'
  | 'SIBLITE_BUS_HANDLER_TRANSACTION'
  | 'SIBLITE_BUS_INVALID_ARGUMENT'
  | 'SIBLITE_BUS_PERMANENT'
  | 'SIBLITE_BUS_STALE_CLAIM'
  | 'SIBLITE_BUS_TRANSACTION_ENDED';

/** Options of the {@link SqliteError} constructor. */
export interface SqliteErrorOptions {
  /** SQLite's name for the result code, such as `SQLITE_CONSTRAINT_UNIQUE`. */
  code: SqliteErrorCode;
  /** The coarse class; derived from `code` when omitted. */
  kind?: ErrorKind;
  /** The original error, usually the engine's. */
  cause?: unknown;
}

/**
 * The error class of everything siblite throws.
 *
 * @example
 * ```ts
 * try {
 *   conn.run('INSERT INTO users (email) VALUES (?)', [email]);
 * } catch (e) {
 *   if (e instanceof SqliteError && e.code === 'SQLITE_CONSTRAINT_UNIQUE') return 'taken';
 *   throw e;
 * }
 * ```
 */
export class SqliteError extends Error {
  /** SQLite's name for the result code: `SQLITE_BUSY`, `SQLITE_CONSTRAINT_UNIQUE`, ... */
  readonly code: SqliteErrorCode;
  /** The coarse class of the error. */
  readonly kind: ErrorKind;
  /** True exactly when `kind` is `busy` or `busy_snapshot`: running again may succeed. */
  readonly retryable: boolean;

  constructor(message: string, options: SqliteErrorOptions) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'SqliteError';
    this.code = options.code;
    this.kind = options.kind ?? kindOfCode(options.code);
    this.retryable = this.kind === 'busy' || this.kind === 'busy_snapshot';
  }
}

/**
 * Thrown for both busy kinds: `SQLITE_BUSY` (a lock is held by another handle or process; the
 * statement may be retried and the handle's transaction is still open) and
 * `SQLITE_BUSY_SNAPSHOT` (a `BEGIN CONCURRENT` transaction conflicted with one that committed
 * after it began; it has already been rolled back, so run the whole transaction again).
 * {@link retry} and `conn.transaction()` handle both.
 */
export class BusyError extends SqliteError {
  constructor(message: string, options: SqliteErrorOptions) {
    super(message, options);
    this.name = 'BusyError';
  }
}

/** The kind of `e` when it is a siblite error; `other` for anything else. Never throws. */
export function errorKind(e: unknown): ErrorKind {
  try {
    if (!(e instanceof SqliteError)) return 'other';
    const kind: unknown = e.kind;
    return typeof kind === 'string' && (ERROR_KINDS as readonly string[]).includes(kind) ? (kind as ErrorKind) : 'other';
  } catch {
    return 'other'; // a hostile or revoked Proxy
  }
}

/**
 * True when `e`, or an error in its `cause` chain, is a siblite error that retrying may resolve
 * (the busy kinds). ORMs such as Drizzle wrap driver errors (`new DrizzleQueryError(..., cause)`),
 * so the chain is followed. Never throws.
 */
export function isRetryable(e: unknown): boolean {
  return retryableError(e) !== undefined;
}

/** The first retryable siblite error in `e`'s `cause` chain (`e` itself included), if any. Never throws. */
export function retryableError(e: unknown): SqliteError | undefined {
  try {
    const seen = new Set<unknown>();
    for (let cur = e, depth = 0; cur !== null && typeof cur === 'object' && depth < 16 && !seen.has(cur); depth++) {
      seen.add(cur);
      if (cur instanceof SqliteError && cur.retryable === true) return cur;
      cur = (cur as { cause?: unknown }).cause;
    }
  } catch {
    // a hostile or revoked Proxy
  }
  return undefined;
}

/** Builds the right class for a code: {@link BusyError} for the busy kinds. */
export function sqliteError(message: string, code: SqliteErrorCode, cause?: unknown, kind?: ErrorKind): SqliteError {
  const k = kind ?? kindOfCode(code);
  const options: SqliteErrorOptions = { code, kind: k, cause };
  return k === 'busy' || k === 'busy_snapshot' ? new BusyError(message, options) : new SqliteError(message, options);
}

/** The kind SQLite's code belongs to. */
export function kindOfCode(code: string): ErrorKind {
  if (code === 'SQLITE_BUSY_SNAPSHOT') return 'busy_snapshot';
  if (code.startsWith('SQLITE_BUSY')) return 'busy';
  if (code.startsWith('SQLITE_CONSTRAINT') || code === 'SQLITE_MISMATCH') return 'constraint';
  if (code.startsWith('SQLITE_READONLY')) return 'readonly';
  if (code.startsWith('SQLITE_IOERR') || code.startsWith('SQLITE_CANTOPEN')) return 'io';
  if (code.startsWith('SQLITE_CORRUPT') || code === 'SQLITE_NOTADB') return 'corrupt';
  switch (code) {
    case 'SQLITE_ERROR':
      return 'sql';
    case 'SQLITE_MISUSE':
    case 'SQLITE_RANGE':
      return 'misuse';
    case 'SQLITE_FULL':
      return 'full';
    case 'SQLITE_TOOBIG':
      return 'toobig';
    case 'SIBLITE_CLOSED':
      return 'closed';
    default:
      return 'other';
  }
}

/** Engine messages, most specific first, and the codes they stand for. */
const MESSAGE_CODES: ReadonlyArray<readonly [RegExp, SqliteErrorCode, ErrorKind?]> = [
  [/^database is locked/i, 'SQLITE_BUSY'],
  [/^database table is locked/i, 'SQLITE_LOCKED'],
  [/^UNIQUE constraint failed/i, 'SQLITE_CONSTRAINT_UNIQUE'],
  [/^NOT NULL constraint failed/i, 'SQLITE_CONSTRAINT_NOTNULL'],
  [/^CHECK constraint failed/i, 'SQLITE_CONSTRAINT_CHECK'],
  [/^FOREIGN KEY constraint failed/i, 'SQLITE_CONSTRAINT_FOREIGNKEY'],
  [/^cannot store .* value in .* column/i, 'SQLITE_CONSTRAINT_DATATYPE'],
  [/constraint failed/i, 'SQLITE_CONSTRAINT'],
  [/^datatype mismatch/i, 'SQLITE_MISMATCH'],
  [/^attempt to write a readonly database/i, 'SQLITE_READONLY'],
  [/readonly/i, 'SQLITE_READONLY'],
  [/^database disk image is malformed/i, 'SQLITE_CORRUPT'],
  [/^file is not a database/i, 'SQLITE_NOTADB'],
  [/^database or disk is full/i, 'SQLITE_FULL'],
  [/^string or blob too big/i, 'SQLITE_TOOBIG'],
  [/^disk I\/O error/i, 'SQLITE_IOERR'],
  [/^unable to open database file/i, 'SQLITE_CANTOPEN'],
  [/^Could not open the database/i, 'SQLITE_CANTOPEN'],
  [/^out of memory/i, 'SQLITE_NOMEM'],
  [/^interrupted/i, 'SQLITE_INTERRUPT'],
  [/^cannot start a transaction within a transaction/i, 'SQLITE_MISUSE'],
  [/^cannot (commit|rollback) - no transaction is active/i, 'SQLITE_MISUSE'],
  [/^cannot (commit|rollback) transaction - SQL statements in progress/i, 'SQLITE_BUSY'],
  [/^no such savepoint/i, 'SQLITE_MISUSE'],
  [/^Unknown binding parameter/i, 'SQLITE_RANGE'],
  [/^column index out of range/i, 'SQLITE_RANGE'],
  [/^Unsupported type for/i, 'SQLITE_MISMATCH', 'misuse'],
  [/^Statement already finalized/i, 'SQLITE_MISUSE'],
  [/^Database (already closed|is closed)/i, 'SIBLITE_CLOSED'],
  [/^Nothing to prepare/i, 'SQLITE_MISUSE'],
  [/^bad parameter or other API misuse/i, 'SQLITE_MISUSE'],
];

/**
 * Turns anything the engine threw into a {@link SqliteError} with the right code and kind.
 * Errors that already are siblite errors pass through unchanged.
 */
export function fromEngineError(e: unknown, context?: string): SqliteError {
  if (e instanceof SqliteError) return e;
  const message = e instanceof Error ? e.message : String(e);
  let code: SqliteErrorCode = 'SQLITE_ERROR';
  let kind: ErrorKind | undefined;
  for (const [pattern, c, k] of MESSAGE_CODES) {
    if (pattern.test(message)) {
      code = c;
      kind = k;
      break;
    }
  }
  if (!(e instanceof Error) || e.name !== 'SQLite3Error') {
    // Not the engine's error class: a wasm trap or a bug. Keep it visible as such.
    if (code === 'SQLITE_ERROR') code = 'SIBLITE_INTERNAL';
  }
  return sqliteError(context ? `${message} (${context})` : message, code, e, kind);
}

/** The error for an operation on a closed handle or statement. */
export function closedError(what: string): SqliteError {
  return sqliteError(`${what} is closed`, 'SIBLITE_CLOSED');
}

/** The error for a wrong use of the API. */
export function misuseError(message: string): SqliteError {
  return sqliteError(message, 'SQLITE_MISUSE');
}

/**
 * The error for a call with more arguments than the method takes: `run(sql, 1, 2)` would
 * otherwise bind only the first value. Pass several values as one array.
 */
export function extraArguments(method: string, expected = 2): SqliteError {
  return sqliteError(
    `${method}() takes ${expected === 2 ? 'the SQL and one parameters argument' : 'one parameters argument'}; ` +
      'pass several values as one array (or an object of named values)',
    'SQLITE_RANGE',
    undefined,
    'misuse',
  );
}
