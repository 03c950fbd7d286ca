/**
 * Retry delay policies.
 *
 * @module
 */
import { ValidationError } from './errors.js';
import type { Backoff, ExponentialBackoff } from './types.js';

/** The default policy: exponential from 1 s, doubling, capped at 5 minutes, with jitter. */
export const DEFAULT_BACKOFF: Required<ExponentialBackoff> = { type: 'exponential', base: 1_000, max: 300_000, jitter: true };

/**
 * Turns a {@link Backoff} into a function from the attempt number (1 for the first failure)
 * to a delay in ms.
 *
 * @example
 * ```ts
 * backoffPolicy({ base: 100, jitter: false })(3); // 400
 * ```
 *
 * @throws ValidationError for a malformed policy.
 */
export function backoffPolicy(backoff: Backoff | undefined): (attempt: number) => number {
  const b = backoff ?? DEFAULT_BACKOFF;
  if (typeof b === 'function') {
    return (attempt) => {
      const ms = b(attempt);
      return Number.isFinite(ms) && ms > 0 ? ms : 0;
    };
  }
  if (typeof b === 'number') {
    if (!Number.isFinite(b) || b < 0) throw new ValidationError('backoff', 'backoff must be a delay >= 0, an object or a function');
    return () => b;
  }
  if (b === null || typeof b !== 'object') throw new ValidationError('backoff', 'backoff must be a delay >= 0, an object or a function');
  const base = b.base ?? DEFAULT_BACKOFF.base;
  const max = b.max ?? DEFAULT_BACKOFF.max;
  const jitter = b.jitter ?? true;
  if (!(Number.isFinite(base) && base >= 0 && Number.isFinite(max) && max >= 0)) {
    throw new ValidationError('backoff', 'backoff.base and backoff.max must be finite numbers >= 0');
  }
  return (attempt) => {
    const raw = Math.min(max, base * 2 ** Math.min(Math.max(attempt - 1, 0), 40));
    return jitter ? raw / 2 + (Math.random() * raw) / 2 : raw;
  };
}
