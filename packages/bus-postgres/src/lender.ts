/**
 * Pool clients for handler transactions. node-postgres's pool binds each waiting request to
 * a connection of its own when none is idle: when a worker starts 16 handlers with one idle
 * client, 15 handlers wait for 15 new connections (tens of ms each on a busy machine) although
 * the first handler gives its client back within a millisecond, and the worker's next claim
 * and acknowledgement wait behind them for connections of their own. Here a handler waits for
 * the first client to come: one another handler gives back, or one the pool hands out; at most
 * {@link MAX_OPENING} requests to the pool are pending at once, and a client nobody waits for
 * goes straight back to the pool.
 *
 * @module
 */
import type pg from 'pg';

/** Requests to the pool pending at once (each may be opening a connection). */
const MAX_OPENING = 4;

interface Waiter {
  resolve(c: pg.PoolClient): void;
  reject(e: unknown): void;
}

/** Lends pool clients to handler transactions (see the module comment). @internal */
export class Lender {
  private readonly waiters: Waiter[] = [];
  private opening = 0;

  constructor(private readonly pool: pg.Pool) {}

  /** The first client given back by another handler or handed out by the pool. */
  acquire(): Promise<pg.PoolClient> {
    return new Promise<pg.PoolClient>((resolve, reject) => {
      this.waiters.push({ resolve, reject });
      this.fill();
    });
  }

  private fill(): void {
    while (this.opening < Math.min(this.waiters.length, MAX_OPENING)) {
      this.opening++;
      this.pool.connect().then(
        (c) => {
          this.opening--;
          this.giveBack(c);
          this.fill();
        },
        (e: unknown) => {
          this.opening--;
          this.waiters.shift()?.reject(e);
          this.fill();
        },
      );
    }
  }

  /** Takes back a healthy client whose transaction ended: to the next waiter, else to the pool. */
  giveBack(c: pg.PoolClient): void {
    const w = this.waiters.shift();
    if (w) w.resolve(c);
    else c.release();
  }
}
