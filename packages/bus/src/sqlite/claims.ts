/**
 * The claim procedures of the SQLite store. Each runs synchronously inside one `BEGIN
 * IMMEDIATE` transaction (one commit per claim batch, atomic across processes) and reads only
 * what can be claimed: the heads of the command queue by priority, and a group's open claims
 * plus a bounded window of fresh events. Neither the backlog behind a busy ordering key nor
 * the events settled above a stuck one is read.
 *
 * @module
 */
import type { Connection, SqlValue } from '@siblite/core';
import type { MessageRow } from '../codec.js';
import { fixedInLists } from './batch.js';
import { placeholders, shapedSql, type Plans } from './plans.js';

/** A claimed command row. */
export interface ClaimedCommandRow extends MessageRow {
  /** The queue row's sequence number. */
  seq: number;
  /** The claim token. */
  token: string;
}

/** What a command claim needs. */
export interface CommandClaimArgs {
  /** The claim token to write. */
  readonly token: string;
  /** The bus clock now. */
  readonly now: number;
  /** When the lease ends. */
  readonly leaseUntil: number;
  /** At most this many. */
  readonly limit: number;
  /** Only these names (rows without a readable name are always eligible, to reach the dead letters). */
  readonly names: readonly string[] | null;
}

/** Runs `fn` inside `BEGIN IMMEDIATE` on `h` (which has no transaction), committing at the end. */
export function inImmediate<T>(h: Connection, fn: () => T): T {
  h.exec('BEGIN IMMEDIATE');
  try {
    const result = fn();
    h.exec('COMMIT');
    return result;
  } catch (e) {
    if (h.inTransaction) {
      try {
        h.exec('ROLLBACK');
      } catch {
        // the transaction is gone already
      }
    }
    throw e;
  }
}

/** Runs `fn` inside a savepoint of `h`'s transaction: undone entirely when it throws. */
export function inSavepoint<T>(h: Connection, fn: () => T): T {
  h.exec('SAVEPOINT siblite_bus_batch');
  try {
    const out = fn();
    h.exec('RELEASE siblite_bus_batch');
    return out;
  } catch (e) {
    if (h.inTransaction) h.exec('ROLLBACK TO siblite_bus_batch; RELEASE siblite_bus_batch');
    throw e;
  }
}

/** The commands one claim statement names (lists padded to it, see `fixedInLists`). */
const CLAIM_LIST = 32;

/** The statement that claims `n` candidates. */
function claimSql(plans: Plans, n: number): string {
  return shapedSql(plans, `claim/${n}`, () => `${plans.claimCommandsIn} (${placeholders(n)}) ${plans.claimReturning}`);
}

/** The candidate query for a name filter and a set of paused names. */
function candidates(plans: Plans, names: number, paused: number): string {
  return shapedSql(plans, `candidates/${names}/${paused}`, () => {
    let sql = plans.candidatesBase;
    if (names > 0) sql += ` AND (name IS NULL OR name IN (${Array.from({ length: names }, (_, i) => `:n${i}`).join(', ')}))`;
    if (paused > 0) sql += ` AND (name IS NULL OR name NOT IN (${Array.from({ length: paused }, (_, i) => `:p${i}`).join(', ')}))`;
    return sql + ' ORDER BY due_at, seq LIMIT :limit';
  });
}

/** Paused targets, split by kind. */
export function pausedTargets(h: Connection, plans: Plans): { queue: boolean; names: string[]; groups: Set<string> } {
  const out = { queue: false, names: [] as string[], groups: new Set<string>() };
  for (const { target } of h.all<{ target: string }>(plans.listPaused)) {
    if (target === 'queue') out.queue = true;
    else if (target.startsWith('name:')) out.names.push(target.slice(5));
    else if (target.startsWith('group:')) out.groups.add(target.slice(6));
  }
  return out;
}

/** Claims up to `limit` commands: highest priority first, then oldest due first. Call inside {@link inImmediate}. */
export function claimCommandRows(h: Connection, plans: Plans, a: CommandClaimArgs): ClaimedCommandRow[] {
  const paused = pausedTargets(h, plans);
  if (paused.queue) return [];
  const names = a.names ? a.names.filter((n) => !paused.names.includes(n)) : null;
  if (names !== null && names.length === 0) return [];
  const excluded = names === null ? paused.names : [];
  const sql = candidates(plans, names?.length ?? 0, excluded.length);
  const filter: Record<string, SqlValue> = {};
  names?.forEach((n, i) => (filter[`n${i}`] = n));
  excluded.forEach((n, i) => (filter[`p${i}`] = n));
  const out: ClaimedCommandRow[] = [];
  for (const { v } of h.all<{ v: number }>(plans.claimPriorities)) {
    const want = a.limit - out.length;
    if (want <= 0) break;
    const seqs = h.all<{ seq: number }>(sql, { ...filter, priority: v, now: a.now, limit: want });
    if (seqs.length === 0) continue;
    // One statement per list of 32: a statement costs far more than a row here; the last list
    // is padded (one statement shape, see fixedInLists).
    for (const list of fixedInLists(seqs.map((c) => c.seq), CLAIM_LIST)) {
      out.push(...h.all<ClaimedCommandRow>(claimSql(plans, list.length), [a.token, a.leaseUntil, a.now, ...list]));
    }
  }
  return out;
}

/** What an event claim needs. */
export interface EventClaimArgs {
  /** The consumer group. */
  readonly group: string;
  /** The claim token to write. */
  readonly token: string;
  /** The bus clock now. */
  readonly now: number;
  /** When the lease ends. */
  readonly leaseUntil: number;
  /** At most this many. */
  readonly limit: number;
  /** Strict log order: only the lowest unsettled event of the group may be claimed. */
  readonly ordered: boolean;
}

/** A claimed event position. */
export interface ClaimedEvent {
  /** The log position. */
  readonly pos: number;
  /** Claims of it by the group so far, this one included. */
  readonly attempts: number;
}

/** How many fresh events one claim looks at, at most, for a batch of `limit`. */
export function freshWindow(limit: number): number {
  return Math.max(64, limit * 16);
}

/**
 * Claims up to `limit` events of a group. Call inside {@link inImmediate}, after sequencing.
 * Returns the claimed positions with their attempt counts, lowest first.
 */
export function claimEventRows(h: Connection, plans: Plans, a: EventClaimArgs): ClaimedEvent[] {
  if (pausedTargets(h, plans).groups.has(a.group)) return [];
  const g = h.get<{ upto: number; hw: number }>(plans.getGroup, { grp: a.group });
  if (!g) return [];
  const out: ClaimedEvent[] = [];
  /** Keys with an unsettled event below the one being looked at. */
  const busyKeys = new Set<string>();
  let earlierUnsettled = false;
  const grp = a.group;
  for (const o of h.all<{ pos: number; state: string; due_at: number; key: string | null }>(plans.openEvents, { grp, limit: -1 })) {
    const free = o.due_at <= a.now && (o.key === null || !busyKeys.has(o.key)) && !(a.ordered && earlierUnsettled);
    if (free && out.length < a.limit) {
      const row = h.get<{ attempts: number }>(plans.reclaimEvent, { grp, pos: o.pos, token: a.token, leaseUntil: a.leaseUntil, now: a.now });
      if (row) out.push({ pos: o.pos, attempts: row.attempts });
    }
    earlierUnsettled = true;
    if (o.key !== null) busyKeys.add(o.key);
    if (a.ordered) break;
  }
  if (out.length >= a.limit || (a.ordered && earlierUnsettled)) return out;
  const passed: number[] = [];
  let hw = g.hw;
  for (const f of h.all<{ pos: number; key: string | null }>(plans.freshEvents, { hw: g.hw, grp, limit: a.ordered ? 1 : freshWindow(a.limit) })) {
    if (out.length >= a.limit) break;
    if (f.key !== null && busyKeys.has(f.key)) {
      passed.push(f.pos);
      continue;
    }
    // Events passed over behind their key get an open row, so the high-water mark can move past them.
    for (const pos of passed) h.run(plans.insertEventState, { grp, pos, state: 'ready', token: null, dueAt: 0, attempts: 0 });
    passed.length = 0;
    h.run(plans.insertEventState, { grp, pos: f.pos, state: 'inflight', token: a.token, dueAt: a.leaseUntil, attempts: 1 });
    out.push({ pos: f.pos, attempts: 1 });
    hw = f.pos;
    if (f.key !== null) busyKeys.add(f.key);
  }
  if (hw > g.hw) h.run(plans.setHighWater, { grp, hw });
  return out;
}
