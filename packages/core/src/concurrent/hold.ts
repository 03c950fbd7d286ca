/**
 * When a long concurrent transaction keeps the engine instead of being parked.
 *
 * Parking rolls a transaction back, and resuming it re-runs its statements, so two long
 * transactions that take turns (an await after each statement) pay for every earlier statement
 * at every turn: quadratic CPU. Instead, an active concurrent transaction that has run
 * {@link HOLD_AFTER_STATEMENTS} statements or more, and more than the transaction asking for
 * the engine, *holds* it against the statements of other `transaction()` callbacks: they get a
 * retryable `BusyError` (`transaction()` reruns the callback later; a COMMIT waits for its
 * turn, keeping its work), as against a pessimistic transaction's lock. Everyone else (autocommit
 * statements and hand-written `BEGIN CONCURRENT` transactions, which were promised that they never
 * wait) still park it, as before, and so does a callback that has been refused for
 * {@link HOLD_AT_MOST_MS}. Nothing about validation changes: this only decides who waits,
 * never what commits.
 * @module
 */
import { sqliteError, type SqliteError } from '../errors.js';
import type { OpenTransaction } from '../engine/engine.js';
import type { ConcurrentTransaction } from './transaction.js';

/** Logged statements from which an active concurrent transaction holds the engine (see above). */
export const HOLD_AFTER_STATEMENTS = 16;

/**
 * How long one `transaction()` call is refused in favor of long transactions, from its first
 * refusal, in ms. After that its statements park them again (paying their replay), so that a
 * long-running batch never makes short transactions wait for it, or give up, for long.
 */
export const HOLD_AT_MOST_MS = 250;

/** Per handle running a `transaction()` call: when a holder first refused it. */
const firstRefusal = new WeakMap<object, number>();
/**
 * How many entries of {@link firstRefusal} may be there (set and not yet forgotten): while none,
 * the end of a `transaction()` call need not look (the common case, no long transaction).
 */
let recorded = 0;

/**
 * The error for `claimant`'s statement when the active transaction `active` holds the engine
 * against it, or `undefined` when `active` may be parked. `retried` tells whether the claimant
 * runs inside a `transaction()` callback (which reruns on a busy error) on `handle`.
 */
export function heldAgainst(
  active: OpenTransaction | null,
  claimant: ConcurrentTransaction,
  handle: object,
  retried: boolean,
): SqliteError | undefined {
  if (!retried || active === null || active === claimant || active.kind !== 'concurrent') return undefined;
  const length = (active as ConcurrentTransaction).log.length;
  if (length < HOLD_AFTER_STATEMENTS || length <= claimant.log.length) return undefined;
  const now = performance.now();
  const first = firstRefusal.get(handle);
  if (first === undefined) {
    firstRefusal.set(handle, now);
    recorded++;
  }
  else if (now - first > HOLD_AT_MOST_MS) return undefined;
  const error = sqliteError(
    `database is locked: handle #${active.handleId} has a long BEGIN CONCURRENT transaction (${length} statements) in the engine, ` +
      'which is not rolled back and replayed for another transaction; transaction() runs this one again after it',
    'SQLITE_BUSY',
  );
  held.add(error);
  return error;
}

const held = new WeakSet<object>();

/**
 * Whether `e` is the refusal of a holding transaction ({@link heldAgainst}): waiting for it to
 * end is all a rerun needs, so it does not count as a failed attempt toward the priority lane
 * (a lane holder would run pessimistically and park the long transaction after all).
 */
export function isHeldRefusal(e: unknown): boolean {
  return typeof e === 'object' && e !== null && held.has(e);
}

/** The `transaction()` call on `handle` has ended: its next one may be refused afresh. */
export function forgetRefusals(handle: object): void {
  if (recorded > 0 && firstRefusal.delete(handle)) recorded--;
}
