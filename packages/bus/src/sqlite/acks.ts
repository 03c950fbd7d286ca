/**
 * Acknowledgements of commands in the write batch, made by one statement per claim token
 * instead of one per command. A statement costs more than a row here (binding, stepping and
 * resetting through the engine): acknowledging the 80 commands of one claim in one `UPDATE ..
 * WHERE token = ? AND seq IN (...) RETURNING seq` takes about half the CPU of 80 single-row
 * updates (in lists of 32). Every acknowledgement stays fenced by its claim's token and fails alone when stale.
 * @module
 */
import type { Connection, SqlValue } from '@siblite/core';
import { StaleClaimError } from '../errors.js';
import type { Claim } from '../store.js';
import { GatheredWrites, fixedInLists, type WriteBatch } from './batch.js';
import { placeholders, shapedSql, type Plans } from './plans.js';

/** The commands one acknowledgement statement names (lists padded to it, see `fixedInLists`). */
const ACK_LIST = 32;

/** The statement that acknowledges `n` commands of one token. */
function ackSql(plans: Plans, n: number): string {
  return shapedSql(plans, `ack/${n}`, () => `${plans.ackCommandsIn} (${placeholders(n)}) RETURNING seq`);
}

/**
 * Acknowledges `claims` (commands) on `h`, inside its transaction.
 *
 * @returns the claims acknowledged; the others were stale (their token no longer holds).
 */
export function ackCommands(h: Connection, plans: Plans, claims: readonly Claim[], now: number): Set<Claim> {
  const byToken = new Map<string, Map<number, Claim>>();
  for (const c of claims) {
    let m = byToken.get(c.token);
    if (!m) byToken.set(c.token, (m = new Map()));
    m.set(c.ref, c);
  }
  const acked = new Set<Claim>();
  for (const [token, bySeq] of byToken) {
    for (const list of fixedInLists([...bySeq.keys()], ACK_LIST)) {
      const params: SqlValue[] = [now, token, ...list];
      for (const { seq } of h.all<{ seq: number }>(ackSql(plans, list.length), params)) acked.add(bySeq.get(seq) as Claim);
    }
  }
  return acked;
}

/** The command acknowledgements of one turn, gathered into one item of `batch`. */
export function batchedAcks(batch: WriteBatch, plans: Plans, now: () => number): GatheredWrites<Claim, void> {
  return new GatheredWrites<Claim, void>(batch, (h, claims) => {
    const acked = ackCommands(h, plans, claims, now());
    // A claim acknowledged twice in one turn: the second is stale, as it is one statement later.
    return claims.map((c) => (acked.delete(c) ? { ok: true, value: undefined } : { ok: false, error: new StaleClaimError(c.id) }));
  });
}
