/**
 * Parameter validation: a bad parameter is a clear typed error before anything runs, never a
 * silently changed value (a wrapped BigInt, a missing value bound as NULL).
 * @module
 */
import { sqliteError, type SqliteError } from '../errors.js';

const INT64_MIN = -(2n ** 63n);
const INT64_MAX = 2n ** 63n - 1n;

/** The error for a parameter siblite refuses: kind `misuse`, code `SQLITE_RANGE` or `SQLITE_MISMATCH`. */
export function parameterError(message: string, code: 'SQLITE_RANGE' | 'SQLITE_MISMATCH' = 'SQLITE_RANGE'): SqliteError {
  return sqliteError(message, code, undefined, 'misuse');
}

/**
 * Checks one value: a type the engine stores as given, a BigInt within 64 bits, text without NUL.
 * `at` is the 1-based position or the name the application gave (described only in an error,
 * so checking builds no string).
 */
export function checkValue(v: unknown, at: number | string): void {
  switch (typeof v) {
    case 'number':
    case 'boolean':
      return;
    case 'bigint':
      if (v < INT64_MIN || v > INT64_MAX) {
        throw parameterError(`The BigInt ${v} of parameter ${where(at)} is outside the 64-bit signed integer range SQLite stores`);
      }
      return;
    case 'string':
      if (v.includes('\0')) {
        throw parameterError(
          `A string parameter (${where(at)}) contains a NUL character, which the engine would silently truncate; pass it as a Uint8Array (blob) instead`,
          'SQLITE_MISMATCH',
        );
      }
      return;
    case 'object':
      if (v === null || v instanceof Uint8Array) return;
      break;
    default:
      break;
  }
  throw parameterError(
    `Parameter ${where(at)} is ${v === undefined ? 'undefined' : `a ${typeof v === 'object' && v !== null ? (v.constructor?.name ?? 'object') : typeof v}`}; ` +
      'SQLite stores numbers, BigInts, strings, booleans, Uint8Arrays and null',
    'SQLITE_MISMATCH',
  );
}

function where(at: number | string): string {
  return typeof at === 'number' ? String(at) : `"${at}"`;
}

/** Checks that `given` values fill exactly the statement's `expected` slots. */
export function checkCount(given: number, expected: number, sql: string): void {
  if (given === expected) return;
  throw parameterError(
    `${given < expected ? 'Too few' : 'Too many'} parameter values: the statement has ${expected} parameter(s), ${given} given (${abbreviate(sql)})`,
  );
}

function abbreviate(sql: string): string {
  const s = sql.replace(/\s+/g, ' ').trim();
  return s.length > 80 ? `${s.slice(0, 80)}...` : s;
}
