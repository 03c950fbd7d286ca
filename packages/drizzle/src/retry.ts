/**
 * Running a whole Drizzle transaction again when it conflicts.
 * @module
 */
import { retry, type RetryOptions } from '@siblite/core';
import type { SqliteRemoteDatabase } from 'drizzle-orm/sqlite-proxy';

/**
 * Runs `fn` in `db.transaction()` and runs the whole transaction again while it fails with a
 * busy error, also when Drizzle wrapped it (`DrizzleQueryError` with the siblite error as
 * `cause`). `fn` may run more than once: keep effects outside the database idempotent.
 * @throws what `fn` throws, or the last busy error when `options` run out.
 */
export function retryTransaction<TSchema extends Record<string, unknown>, T>(
  db: SqliteRemoteDatabase<TSchema>,
  fn: Parameters<SqliteRemoteDatabase<TSchema>['transaction']>[0] extends (tx: infer X) => Promise<unknown> ? (tx: X) => Promise<T> : never,
  options?: RetryOptions,
): Promise<T> {
  return retry(() => db.transaction(fn as never) as Promise<T>, options);
}
