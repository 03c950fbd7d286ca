/**
 * Claims that ride on the write batch. A `listen` worker on a file would pay two commits per
 * round of handlers: one for the acknowledgements of the round (the write batch) and one for
 * the claim of the next round, one after the other. Here a worker's claims are made by the
 * write batch's transaction, after its items (a {@link Tail} of the batch): the claim the
 * worker asks for, and as many more as the batch holds acknowledgements of this worker's
 * handlers (the slots they free), twice as many when the worker used up the buffer since the
 * last commit, up to what the worker may hold at once (`maxHeldClaims`). Those extra claims
 * wait in a buffer, from which the worker's next claims are taken without a commit of their
 * own.
 *
 * Every guarantee of a claim holds: buffered rows are claimed with their own token and lease
 * in a committed transaction, exactly like a claim the worker asked for. A claim left in the
 * buffer too long (a third of its lease) or when the worker stops or runs out of work is given
 * back without counting an attempt.
 * @module
 */
import type { Connection } from '@siblite/core';
import type { Claim } from '../store.js';
import { maxHeldClaims } from '../worker.js';
import type { Tail, WriteBatch } from './batch.js';
import { inSavepoint } from './claims.js';

/** What a prefetcher needs from the bus. */
export interface PrefetchHost {
  /** The bus clock. */
  now(): number;
  /** Claims up to `limit` commands on `h` (inside its transaction), under a lease of `lease` ms. */
  claimOn(h: Connection, limit: number, lease: number): Claim[];
  /** Gives claims back; `countAttempt: false` takes back the attempt. */
  release(claims: readonly Claim[], countAttempt: boolean): Promise<void>;
  /** The bus's write batch, whose transactions make the claims. */
  readonly batch: WriteBatch;
}

/** A claim of the worker waiting for the flush that makes it. */
interface Waiter {
  readonly limit: number;
  readonly resolve: () => void;
  readonly reject: (error: unknown) => void;
}

const owners = new WeakMap<Claim, CommandPrefetch>();

/** The prefetcher a claim came from, if any. */
export function prefetcherOf(claim: Claim): CommandPrefetch | undefined {
  return owners.get(claim);
}

/** The claim source of one `listen` worker on a file: claims made by the write batch, extra ones buffered. */
export class CommandPrefetch implements Tail<Claim[]> {
  private buffer: Claim[] = [];
  private claimedAt = 0;
  /** Acknowledgements of this worker's claims in the pending batch: the slots they free. */
  private wanted = 0;
  /** The part of `wanted` the running flush claims for. */
  private taken = 0;
  /** The most the worker asked for at once (its concurrency). */
  private most = 0;
  private lease = 0;
  /** Claims of the worker for the next flush. */
  private waiting: Waiter[] = [];
  /** Claims of the worker the running flush makes (`null`: no flush runs this tail now). */
  private flushing: Waiter[] | null = null;

  constructor(private readonly host: PrefetchHost) {}

  /** How many claims the buffer holds (the worker takes them without a commit). */
  buffered(): number {
    return this.buffer.length;
  }

  /** The worker's claim: the buffer first (no commit), else a claim in the next write batch. */
  async claim(limit: number, lease: number): Promise<Claim[]> {
    this.most = Math.max(this.most, limit);
    this.lease = lease;
    if (this.buffer.length > 0 && this.host.now() - this.claimedAt > lease / 3) await this.giveBack();
    if (this.buffer.length === 0) {
      await new Promise<void>((resolve, reject) => {
        this.waiting.push({ limit, resolve, reject });
        this.host.batch.join(this);
      });
    }
    return this.buffer.splice(0, limit);
  }

  /** An acknowledgement of one of this worker's claims joined `batch`: claim one more with it. */
  acked(batch: WriteBatch): void {
    if (this.lease === 0) return;
    this.wanted++;
    batch.join(this);
  }

  /**
   * @internal Runs in the batch's transaction: claims what the waiting claim asked for and
   * one more for each acknowledgement in the batch, up to what the worker may hold at once.
   */
  run(h: Connection): Claim[] {
    if (this.flushing === null) {
      this.flushing = this.waiting;
      this.waiting = [];
    }
    this.taken = this.wanted;
    const asked = this.flushing.reduce((m, w) => Math.max(m, w.limit), 0);
    // A worker that took every buffered claim since the last flush handles them faster than
    // commits come: claim twice what it acknowledged, so that one commit serves more of them.
    const more = this.buffer.length === 0 ? this.wanted : 0;
    const limit = Math.min(asked + this.wanted + more, maxHeldClaims(this.most)) - this.buffer.length;
    if (limit <= 0) return [];
    return inSavepoint(h, () => this.host.claimOn(h, limit, this.lease));
  }

  /** @internal The batch committed: the claims are ours. */
  done(claims: Claim[]): void {
    this.wanted = Math.max(0, this.wanted - this.taken);
    this.taken = 0;
    if (claims.length > 0) {
      if (this.buffer.length === 0) this.claimedAt = this.host.now();
      for (const c of claims) {
        owners.set(c, this);
        this.buffer.push(c);
      }
    }
    const served = this.flushing ?? [];
    this.flushing = null;
    for (const w of served) w.resolve();
  }

  /** @internal The batch (or this tail's claim in it) failed: the waiting claims fail with it. */
  failed(error: unknown): void {
    this.wanted = 0;
    this.taken = 0;
    const failed = [...(this.flushing ?? []), ...this.waiting];
    this.flushing = null;
    this.waiting = [];
    for (const w of failed) w.reject(error);
  }

  /** Gives back what the buffer holds, without counting an attempt (the worker is idle or stopping). */
  async giveBack(): Promise<void> {
    const claims = this.buffer.splice(0);
    if (claims.length > 0) await this.host.release(claims, false).catch(() => {});
  }
}
