/**
 * The narrow interface between the transport-independent worker runtime (`worker.ts`) and a
 * transport's storage (the SQLite store today). A transport implements {@link Store} and hands
 * the worker a {@link Source} per `listen` or `subscribe`; the worker never sees SQL.
 *
 * @module
 */
import type { Connection } from '@siblite/core';
import type { AbandonSignal } from './abandon.js';
import type { DecodeError } from './errors.js';
import type { Message, MessageKind } from './types.js';

/** A claimed message, before it becomes a `Delivery`. */
export interface Claim {
  /** The store's reference of the claimed row (queue sequence number or log position). */
  readonly ref: number;
  /** The claim token that fences every settlement. */
  readonly token: string;
  /** Claims of this message so far, this one included. */
  readonly attempts: number;
  /** The consumer group (events), or `null` (commands). */
  readonly group: string | null;
  /** `command` or `event`. */
  readonly kind: MessageKind;
  /** The message id as stored (for errors), if readable. */
  readonly id: string;
  /** The decoded message, or `null` when the row could not be decoded. */
  readonly message: Message | null;
  /** Why the row could not be decoded. */
  readonly decodeError: DecodeError | null;
}

/** Where a worker gets its work. */
export interface Source {
  /** Notifier key that signals new work in this process. */
  readonly channel: string;
  /** Runs once before the first claim (for example, creates the group). */
  prepare(): Promise<void>;
  /** Claims up to `limit` messages under a lease of `lease` ms. */
  claim(limit: number, lease: number): Promise<Claim[]>;
  /** The earliest time (store clock) something becomes claimable, or `null`. */
  nextDue(): Promise<number | null>;
  /** Called after a handler's acknowledgement committed. */
  settled(): void;
  /** Called when nothing is claimable (and when stopping): catch up on deferred work. */
  idle(): Promise<void>;
  /**
   * How many claims the source holds in memory, handed out by `claim` without I/O (claims
   * made ahead for the worker). The worker takes them without going through the event loop
   * first. Absent: none.
   */
  buffered?(): number;
}

/** What {@link Store.transact} reports. */
export interface TransactResult {
  /** How many times the body was run again because of a real conflict (0 normally). */
  readonly reruns: number;
}

/**
 * Storage operations the worker runtime needs, all fenced by the claim token. `Tx` is the
 * transport's transaction that handlers write through (for SQLite a transaction on a pooled
 * `Connection`, begun when the handler first reads `context.conn`).
 */
export interface Store<Tx = Connection> {
  /** The store's clock in ms since the epoch: one clock for every process, never going back. */
  now(): number;
  /** Marks `claim` handled. @throws StaleClaimError */
  ack(claim: Claim): Promise<void>;
  /** Puts `claim` back, claimable after `delay` ms, recording `error`. @throws StaleClaimError */
  nack(claim: Claim, delay: number, error: string | null): Promise<void>;
  /** Moves `claim` to the dead letters or parks it. @throws StaleClaimError */
  bury(claim: Claim, status: 'dead' | 'parked', reason: string): Promise<void>;
  /** Pushes the lease of `claim` to `ms` from now. @throws StaleClaimError */
  extend(claim: Claim, ms: number): Promise<void>;
  /**
   * Gives claims back at once (claimable now). With `countAttempt: false` the claim does not
   * count as an attempt (it was never handed to a handler). Stale claims are ignored.
   */
  release(claims: readonly Claim[], countAttempt: boolean): Promise<void>;
  /**
   * Runs `body` in a transaction that commits together with the acknowledgement of `claim`.
   * A busy lock never runs `body` again (the store waits and retries the same step); only a
   * real conflict does, passing the run number (1, 2, ...). When `abandon` is aborted, the
   * transaction is rolled back at once and never committed, whatever `body` still does.
   * A store may call `settling` once `body` has succeeded and only the acknowledgement is
   * left, holding nothing a new handler needs: the worker then claims for that slot while
   * the acknowledgement commits.
   *
   * @throws what `body` throws, StaleClaimError when the claim was lost, or the abandon reason.
   */
  transact(claim: Claim, body: (tx: Tx, run: number) => Promise<void>, abandon: AbandonSignal, settling?: () => void): Promise<TransactResult>;
  /** The transport's fields of a handler's context for the transaction `tx` (`{ conn }` for SQLite). */
  txContext(tx: Tx): object;
}
