/**
 * The busy timeout: how long a statement or a transaction step waits for a file lock that
 * another process (or worker thread) holds before it gives up with `BusyError`.
 *
 * - Synchronous statements wait synchronously ({@link waitOutSync}): a bounded `Atomics.wait`
 *   between attempts, which blocks this thread's event loop while it waits.
 * - `transaction()` awaits between attempts of BEGIN and COMMIT ({@link waitOut}), so the event
 *   loop stays free; it may also wait out another handle of this process.
 *
 * Only a refusal by the *file lock* is waited out synchronously: a lock held by another handle
 * of this same engine cannot be released while this thread blocks, so such a `BusyError` is
 * thrown at once (and awaited by `transaction()`).
 * @module
 */
import { errorKind, misuseError, sqliteError, type SqliteErrorCode } from './errors.js';

/** The default busy timeout in milliseconds (better-sqlite3's `timeout` default). */
export const DEFAULT_BUSY_TIMEOUT_MS = 5000;

/** Busy errors that came from the file lock (tagged by the file policy). */
const fromFileLock = new WeakSet<object>();

/** Tags `error` as a refusal of the file lock (another process or thread holds the file). */
export function markFileLockBusy<T>(error: T): T {
  if (typeof error === 'object' && error !== null) fromFileLock.add(error);
  return error;
}

/** Whether `error` is a `BusyError` of the file lock, which waiting can resolve. */
export function isFileLockBusy(error: unknown): boolean {
  return typeof error === 'object' && error !== null && fromFileLock.has(error);
}

/**
 * Validates `busyTimeout` and its alias `timeout` (ms, a number >= 0; `Infinity` waits for ever).
 * Returns the default when both are absent.
 */
export function busyTimeoutOption(options: { busyTimeout?: unknown; timeout?: unknown }): number {
  const a = options.busyTimeout;
  const b = options.timeout;
  for (const [name, v] of [['busyTimeout', a], ['timeout', b]] as const) {
    if (v !== undefined && (typeof v !== 'number' || Number.isNaN(v) || v < 0)) {
      throw misuseError(`open(): option ${name} must be a number of milliseconds >= 0; got ${JSON.stringify(v) ?? String(v)}`);
    }
  }
  if (a !== undefined && b !== undefined && a !== b) {
    throw misuseError(`open(): busyTimeout (${String(a)}) and its alias timeout (${String(b)}) differ; pass one of them`);
  }
  return (a ?? b ?? DEFAULT_BUSY_TIMEOUT_MS) as number;
}

/**
 * The value a `PRAGMA busy_timeout = <value>` sets, as SQLite reads it: an integer number of
 * milliseconds, negative meaning 0. Throws kind `misuse` for anything that is not a number.
 */
export function parseBusyTimeoutPragma(text: string): number {
  const n = Number(text);
  if (text.trim() === '' || !Number.isFinite(n)) {
    throw misuseError(`PRAGMA busy_timeout: the value must be a number of milliseconds; got ${JSON.stringify(text)}`);
  }
  return Math.max(0, Math.trunc(n));
}

const sleeper = new Int32Array(new SharedArrayBuffer(4));

/** Blocks this thread for `ms` milliseconds (no busy loop). */
function sleepSync(ms: number): void {
  if (ms > 0) Atomics.wait(sleeper, 0, 0, ms);
}

/**
 * The pause before attempt `n + 1`: 1, 2, 4, 8, then 10 ms, so that a waiter retries often
 * enough to take the file during the holder's hand-over window, and never past the deadline.
 */
function pause(n: number, left: number): number {
  return Math.max(0, Math.min(2 ** Math.min(n, 4), 10, left));
}

/** What the busy error says once the timeout ran out. */
function timedOut(error: unknown, ms: number): unknown {
  if (ms <= 0 || !(error instanceof Error)) return error;
  const e = sqliteError(`${error.message} (waited ${ms} ms, the busy timeout)`, (error as { code?: SqliteErrorCode }).code ?? 'SQLITE_BUSY', error);
  return markFileLockBusy(e);
}

/**
 * Runs `attempt` until it does not throw a file-lock `BusyError`, waiting synchronously between
 * attempts, for at most `timeoutMs` in total. Other errors are thrown at once.
 */
export function waitOutSync<T>(timeoutMs: number, attempt: () => T): T {
  let deadline = 0;
  for (let n = 0; ; n++) {
    try {
      return attempt();
    } catch (e) {
      if (!isFileLockBusy(e) || timeoutMs <= 0) throw e;
      const now = performance.now();
      if (deadline === 0) deadline = now + timeoutMs;
      if (now >= deadline) throw timedOut(e, timeoutMs);
      sleepSync(pause(n, deadline - now));
    }
  }
}

/**
 * Runs `attempt` until it does not throw a `BusyError` of kind `busy` (a lock: the file's, or
 * another handle's of this process), awaiting between attempts without blocking, for at most
 * `timeoutMs` in total. Conflicts (`busy_snapshot`) and other errors are thrown at once.
 */
export async function waitOut<T>(timeoutMs: number, attempt: () => T): Promise<T> {
  let deadline = 0;
  for (let n = 0; ; n++) {
    try {
      return attempt();
    } catch (e) {
      if (errorKind(e) !== 'busy' || timeoutMs <= 0) throw e;
      const now = performance.now();
      if (deadline === 0) deadline = now + timeoutMs;
      if (now >= deadline) throw isFileLockBusy(e) ? timedOut(e, timeoutMs) : e;
      const ms = pause(n, deadline - now);
      await new Promise<void>((resolve) => (ms >= 1 ? setTimeout(resolve, ms) : setImmediate(resolve)));
    }
  }
}
