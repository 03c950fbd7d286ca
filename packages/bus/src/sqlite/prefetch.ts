/**
 * Claims that ride on acknowledgements. A `listen` worker on a file would pay two commits per
 * round of handlers: one for the acknowledgements of the round (the write batch) and one for
 * the claim of the next round, one after the other. Here the acknowledgements of a worker's
 * handlers that go into a write batch make that same transaction also claim as many new
 * commands for the worker (a {@link Tail} of the batch); the worker's next claim takes them
 * from this buffer without a commit of its own.
 *
 * Every guarantee of a claim holds: prefetched rows are claimed with their own token and lease
 * in a committed transaction, exactly like a claim the worker asked for. A claim left in the
 * buffer too long (a third of its lease) or when the worker stops or runs out of work is given
 * back without counting an attempt.
 * @module
 */
import type { Connection } from '@siblite/core';
import type { Claim } from '../store.js';
import type { Tail, WriteBatch } from './batch.js';
import { inSavepoint } from './claims.js';

/** What a prefetcher needs from the bus. */
export interface PrefetchHost {
  /** The bus clock. */
  now(): number;
  /** Claims up to `limit` commands on `h` (inside its transaction), under a lease of `lease` ms. */
  claimOn(h: Connection, limit: number, lease: number): Claim[];
  /** Claims up to `limit` commands in a transaction of its own (or this turn's write batch). */
  claim(limit: number, lease: number): Promise<Claim[]>;
  /** Gives claims back; `countAttempt: false` takes back the attempt. */
  release(claims: readonly Claim[], countAttempt: boolean): Promise<void>;
}

const owners = new WeakMap<Claim, CommandPrefetch>();

/** The prefetcher a claim came from, if any. */
export function prefetcherOf(claim: Claim): CommandPrefetch | undefined {
  return owners.get(claim);
}

/** The claim source of one `listen` worker, with claims prefetched in its acknowledgements' batches. */
export class CommandPrefetch implements Tail<Claim[]> {
  private buffer: Claim[] = [];
  private claimedAt = 0;
  /** Acknowledgements of this worker's claims in the pending batch: the slots they free. */
  private wanted = 0;
  /** The part of `wanted` the running flush claims for. */
  private taken = 0;
  /** The most the worker asked for at once (its concurrency): prefetches never exceed it. */
  private most = 0;
  private lease = 0;

  constructor(private readonly host: PrefetchHost) {}

  /** The worker's claim: the buffer first (no commit), else a claim of its own. */
  async claim(limit: number, lease: number): Promise<Claim[]> {
    this.most = Math.max(this.most, limit);
    this.lease = lease;
    if (this.buffer.length > 0 && this.host.now() - this.claimedAt > lease / 3) await this.giveBack();
    if (this.buffer.length > 0) return this.buffer.splice(0, limit);
    return this.own(await this.host.claim(limit, lease));
  }

  /** An acknowledgement of one of this worker's claims joined `batch`: claim one more with it. */
  acked(batch: WriteBatch): void {
    if (this.lease === 0) return;
    this.wanted++;
    batch.join(this);
  }

  /** @internal Runs in the batch's transaction: claims for the slots its acknowledgements free. */
  run(h: Connection): Claim[] {
    this.taken = this.wanted;
    const limit = Math.min(this.wanted, this.most) - this.buffer.length;
    if (limit <= 0) return [];
    return inSavepoint(h, () => this.host.claimOn(h, limit, this.lease));
  }

  /** @internal The batch committed: the claims are ours. */
  done(claims: Claim[]): void {
    this.wanted = Math.max(0, this.wanted - this.taken);
    this.taken = 0;
    if (claims.length === 0) return;
    if (this.buffer.length === 0) this.claimedAt = this.host.now();
    this.buffer.push(...this.own(claims));
  }

  /** Gives back what the buffer holds, without counting an attempt (the worker is idle or stopping). */
  async giveBack(): Promise<void> {
    const claims = this.buffer.splice(0);
    if (claims.length > 0) await this.host.release(claims, false).catch(() => {});
  }

  private own(claims: Claim[]): Claim[] {
    for (const c of claims) owners.set(c, this);
    return claims;
  }
}
