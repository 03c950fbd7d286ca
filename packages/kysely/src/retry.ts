/**
 * Running a whole Kysely transaction again when it conflicts.
 * @module
 */
import { retry, type RetryOptions } from '@siblite/core';
import type { Kysely, Transaction } from 'kysely';

/**
 * Runs `fn` in `db.transaction()` (`BEGIN CONCURRENT` with the default dialect settings), and
 * runs the whole transaction again while it fails with a busy error (a conflict,
 * `SQLITE_BUSY_SNAPSHOT`, or a lock, `SQLITE_BUSY`), with siblite's backoff. `fn` may run more
 * than once: keep effects outside the database idempotent, or do them after this returns.
 *
 * @example
 * ```ts
 * const credits = await retryTransaction(db, async (trx) => {
 *   const { credits } = await trx.selectFrom('users').select('credits').where('id', '=', 7).executeTakeFirstOrThrow();
 *   await trx.updateTable('users').set({ credits: credits - 1 }).where('id', '=', 7).execute();
 *   return credits - 1;
 * });
 * ```
 * @throws what `fn` throws, or the last busy error when `options` (retries, time budget) run out.
 */
export function retryTransaction<DB, T>(
  db: Kysely<DB>,
  fn: (trx: Transaction<DB>) => Promise<T>,
  options?: RetryOptions,
): Promise<T> {
  return retry(() => db.transaction().execute(fn), options);
}
