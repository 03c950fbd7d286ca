/**
 * The retry loop for busy errors, on p-retry: exponential backoff with full jitter, only for
 * errors that retrying can resolve.
 * @module
 */
import pRetry from 'p-retry';
import { isRetryable, retryableError, type SqliteError } from './errors.js';

/** Options of {@link retry}. */
export interface RetryOptions {
  /** How many times to run `fn` again after the first failure. Default 100. */
  retries?: number;
  /** The base delay in ms: the n-th retry waits a random time in [0, min(maxTimeout, minTimeout * 2^n)]. Default 1. */
  minTimeout?: number;
  /** The longest delay between two attempts, in ms. Default 100. */
  maxTimeout?: number;
  /** Give up once this many ms have passed since the first attempt began. Default 30000. */
  maxElapsedMs?: number;
  /** Stops retrying (and waiting) when aborted; the promise rejects with the signal's reason. */
  signal?: AbortSignal;
  /**
   * Called before each retry with the busy error (found in the thrown error's `cause` chain when
   * a library wrapped it) and the number of the attempt that failed (1-based).
   */
  onRetry?: (error: SqliteError, attempt: number) => void;
}

/**
 * Runs `fn`, and runs it again while it throws a retryable error (`BusyError`: `SQLITE_BUSY` or
 * `SQLITE_BUSY_SNAPSHOT`, also when wrapped: it is looked for in the error's `cause` chain), waiting a random, exponentially growing delay between attempts
 * ("full jitter"). Any other error is thrown at once, unchanged. When the retries or the time
 * budget run out, the last busy error is thrown.
 *
 * `fn` must be safe to run again: for a transaction, run the whole transaction inside `fn`
 * (or use `conn.transaction(fn, { mode: 'concurrent' })`, which does exactly that).
 *
 * @example
 * ```ts
 * const total = await retry(() => conn.transaction(async (tx) => {
 *   const { n } = tx.get('SELECT n FROM counters WHERE id = 1')!;
 *   tx.run('UPDATE counters SET n = ? WHERE id = 1', [n + 1]);
 *   return n + 1;
 * }, { mode: 'concurrent', retry: { retries: 0 } }), { retries: 20 });
 * ```
 * @throws the first non-retryable error, the last busy error when the budget is spent, or the
 *   signal's reason when aborted.
 */
export async function retry<T>(fn: (attempt: number) => T | Promise<T>, options: RetryOptions = NO_OPTIONS): Promise<T> {
  const started = startRetries(options);
  // The first attempt runs directly: most succeed, and they should cost no more than `fn`.
  try {
    return await fn(1);
  } catch (e) {
    return retryAfterFirst(fn, e, started, options);
  }
}

/**
 * What {@link retry} does before the first attempt: checks `options` (throws a `RangeError`)
 * and the signal (throws its reason when aborted). Returns the start time of the budget.
 * @internal
 */
export function startRetries(options: RetryOptions = NO_OPTIONS): number {
  const retries = options.retries ?? 100;
  const minTimeout = options.minTimeout ?? 1;
  const maxTimeout = options.maxTimeout ?? 100;
  const maxElapsedMs = options.maxElapsedMs ?? 30_000;
  if (!(retries >= 0) || !(minTimeout >= 0) || !(maxTimeout >= 0) || !(maxElapsedMs >= 0)) {
    throw new RangeError('retry(): retries, minTimeout, maxTimeout and maxElapsedMs must be numbers >= 0');
  }
  options.signal?.throwIfAborted();
  return performance.now();
}

/**
 * What {@link retry} does once the first attempt (begun at `started`) threw `firstError`:
 * throws it when it is not retryable or no retry is allowed, else runs the retry loop.
 * @internal
 */
export function retryAfterFirst<T>(
  fn: (attempt: number) => T | Promise<T>,
  firstError: unknown,
  started: number,
  options: RetryOptions = NO_OPTIONS,
): Promise<T> {
  if ((options.retries ?? 100) === 0 || !isRetryable(firstError)) throw firstError;
  return retryAfterFailure(fn, firstError, started, options);
}

/** The retry loop once the first attempt failed with `firstError` (a retryable error). */
async function retryAfterFailure<T>(
  fn: (attempt: number) => T | Promise<T>,
  firstError: unknown,
  started: number,
  options: RetryOptions,
): Promise<T> {
  const retries = options.retries ?? 100;
  const minTimeout = options.minTimeout ?? 1;
  const maxTimeout = options.maxTimeout ?? 100;
  const maxElapsedMs = options.maxElapsedMs ?? 30_000;
  const { signal, onRetry } = options;
  /** Waits before the attempt after `failed` (1-based), or throws `error` when the budget is spent. */
  const backOff = async (error: unknown, failed: number): Promise<void> => {
    signal?.throwIfAborted();
    const ceiling = Math.min(maxTimeout, minTimeout * 2 ** Math.min(failed - 1, 30));
    const delay = Math.random() * ceiling;
    // The next attempt would start past the budget: give up now with this error (p-retry
    // would otherwise run it at once, without the delay and without onRetry).
    if (performance.now() - started + delay >= maxElapsedMs) throw error;
    onRetry?.(retryableError(error) as SqliteError, failed);
    if (delay >= 1) await sleep(delay, signal);
  };
  await backOff(firstError, 1);
  // p-retry numbers its attempts from 1; ours continue from 2.
  const attempt = async (n: number): Promise<T> => {
    try {
      return await fn(n + 1);
    } catch (e) {
      // p-retry replaces thrown non-errors with a TypeError; carry them through unchanged.
      throw e instanceof Error ? e : new NonError(e);
    }
  };
  try {
    return await pRetry(attempt, {
      retries: retries - 1,
      minTimeout: 0,
      maxTimeout: 0,
      factor: 1,
      // The budget is enforced in onFailedAttempt only: p-retry's own check could stop after
      // onRetry already announced a retry (when a timer fires late on a loaded machine).
      maxRetryTime: Number.POSITIVE_INFINITY,
      signal,
      unref: true,
      shouldRetry: ({ error }) => isRetryable(error),
      onFailedAttempt: async ({ error, attemptNumber, retriesLeft }) => {
        if (!isRetryable(error) || retriesLeft <= 0) return;
        await backOff(error, attemptNumber + 1);
      },
    });
  } catch (e) {
    throw e instanceof NonError ? e.value : e;
  }
}

const NO_OPTIONS: RetryOptions = Object.freeze({});

/** A thrown value that is not an Error, boxed on its way through p-retry. */
class NonError extends Error {
  constructor(readonly value: unknown) {
    super('non-error thrown');
  }
}

function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(done, ms);
    function done() {
      signal?.removeEventListener('abort', aborted);
      resolve();
    }
    function aborted() {
      clearTimeout(timer);
      reject(signal?.reason);
    }
    signal?.addEventListener('abort', aborted, { once: true });
  });
}
