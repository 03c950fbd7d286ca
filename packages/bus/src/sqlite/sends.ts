/**
 * Commands appended many rows per statement: the sends of one turn of the event loop (gathered
 * into one item of the write batch) and each `sendMany` batch. A statement costs more than a
 * row here: 64 commands in `INSERT .. VALUES (..), (..) ON CONFLICT (id) DO NOTHING RETURNING
 * id` statements of 16 rows take about half the CPU of 64 single-row inserts. Rows are inserted
 * in order, so the ordering-key trigger and the duplicate rule (an id stored before, or earlier in the
 * same batch, is not stored again) behave exactly as with one insert per command.
 * @module
 */
import { isRetryable, SqliteError, type Connection, type SqlValue } from '@siblite/core';
import { GatheredWrites, rowChunks, type Outcome, type WriteBatch } from './batch.js';
import { inSavepoint } from './claims.js';
import { shapedSql, type Plans } from './plans.js';

/** A checked command, as `send` and `sendMany` store it. */
export interface CommandToStore {
  /** The id. */
  readonly id: string;
  /** Name, encoding, payload, content type, headers and key, in the order of a `sendRow`. */
  readonly fields: readonly [string, string, string | Uint8Array, string, string, string | null];
  /** ms after the time of writing it becomes claimable. */
  readonly delay: number;
  /** Its priority. */
  readonly priority: number;
}

/** The rows of one insert statement; the rest go one by one (see `rowChunks`). */
const ROWS = 16;

/** The insert of `n` rows. */
function sendSql(plans: Plans, n: number): string {
  return shapedSql(plans, `send/${n}`, () => `${plans.sendRows} ${Array.from({ length: n }, () => plans.sendRow).join(', ')} ${plans.sendRowsEnd}`);
}

/**
 * Inserts `commands` on `h` (inside its transaction), in order, at time `now`.
 *
 * @returns per command 1 when it was stored, 0 when its id was already stored (before, or
 *   earlier in `commands`).
 * @throws what the engine throws (nothing of that statement is stored).
 */
export function insertCommands(h: Connection, plans: Plans, commands: readonly CommandToStore[], now: number): number[] {
  const stored = new Set<string>();
  let at = 0;
  for (const size of rowChunks(commands.length, ROWS)) {
    const params: SqlValue[] = [];
    for (let i = at; i < at + size; i++) {
      const c = commands[i] as CommandToStore;
      const available = now + c.delay;
      params.push(c.id, ...c.fields, now, available, available, c.priority);
    }
    for (const { id } of h.all<{ id: string }>(sendSql(plans, size), params)) stored.add(id);
    at += size;
  }
  // Of several commands with one id, only the first can have been stored.
  return commands.map((c) => (stored.delete(c.id) ? 1 : 0));
}

/**
 * The sends of one turn, gathered into one item of `batch`. Should their statement fail (it
 * cannot for checked commands, unless the database refuses a row), each is inserted again on
 * its own, so that only the failing one fails.
 */
export function batchedSends(batch: WriteBatch, plans: Plans, now: () => number): GatheredWrites<CommandToStore, number> {
  return new GatheredWrites<CommandToStore, number>(batch, (h, commands) => {
    const t = now();
    try {
      // In a savepoint: a failing statement must undo the ones before it (rows it stored would
      // otherwise read as duplicates when inserted again one by one below).
      return inSavepoint(h, () => insertCommands(h, plans, commands, t)).map((value): Outcome => ({ ok: true, value }));
    } catch (e) {
      if (isRetryable(e) || !(e instanceof SqliteError)) throw e;
      return commands.map((c): Outcome => {
        try {
          return { ok: true, value: insertCommands(h, plans, [c], t)[0] };
        } catch (error) {
          if (isRetryable(error)) throw error;
          return { ok: false, error };
        }
      });
    }
  });
}
