/**
 * Acknowledgements of commands in the write batch, made by one statement per claim token
 * instead of one per command. A statement costs more than a row here (binding, stepping and
 * resetting through the engine): acknowledging the 80 commands of one claim in one `UPDATE ..
 * WHERE token = ? AND seq IN (...) RETURNING seq` takes about half the CPU of 80 single-row
 * updates. Every acknowledgement stays fenced by its claim's token and fails alone when stale.
 * @module
 */
import type { Connection, SqlValue } from '@siblite/core';
import { StaleClaimError } from '../errors.js';
import type { Claim } from '../store.js';
import type { WriteBatch } from './batch.js';
import type { Plans } from './plans.js';

/** The most commands one acknowledgement statement names. */
const MAX_PER_STATEMENT = 100;

const ackSqls = new Map<string, string>();

/** The statement that acknowledges `n` commands of one token (cached by namespace and count). */
function ackSql(plans: Plans, n: number): string {
  const k = `${plans.namespace}/${n}`;
  let sql = ackSqls.get(k);
  if (sql === undefined) {
    sql = `${plans.ackCommandsIn} (${Array.from({ length: n }, () => '?').join(', ')}) RETURNING seq`;
    ackSqls.set(k, sql);
  }
  return sql;
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
    const seqs = [...bySeq.keys()];
    for (let i = 0; i < seqs.length; i += MAX_PER_STATEMENT) {
      const chunk = seqs.slice(i, i + MAX_PER_STATEMENT);
      const params: SqlValue[] = [now, token, ...chunk];
      for (const { seq } of h.all<{ seq: number }>(ackSql(plans, chunk.length), params)) acked.add(bySeq.get(seq) as Claim);
    }
  }
  return acked;
}

/** The acknowledgements gathered for one item of the write batch. */
interface Gathered {
  readonly claims: Claim[];
  settled: Promise<Set<Claim>>;
}

/** Gathers the command acknowledgements of one turn into one item of the write batch. */
export class BatchedAcks {
  private open: Gathered | null = null;

  constructor(
    private readonly batch: WriteBatch,
    private readonly plans: Plans,
    private readonly now: () => number,
  ) {}

  /**
   * Acknowledges the command `claim` in the next flush of the write batch.
   *
   * @throws StaleClaimError (rejects) when its token no longer holds.
   */
  add(claim: Claim): Promise<void> {
    let g = this.open;
    if (g === null) {
      const fresh = { claims: [claim] } as Partial<Gathered> as Gathered;
      this.open = g = fresh;
      // The item closes the group when it runs (a full batch may flush at once, inside add).
      fresh.settled = this.batch.add((h) => {
        if (this.open === fresh) this.open = null;
        return ackCommands(h, this.plans, fresh.claims, this.now());
      });
    } else {
      g.claims.push(claim);
    }
    return g.settled.then((acked) => {
      if (!acked.has(claim)) throw new StaleClaimError(claim.id);
    });
  }
}
