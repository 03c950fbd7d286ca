/**
 * The lender of handler clients: a client a handler gives back goes to the next handler
 * waiting, instead of each waiting handler getting a new connection of its own.
 */
import type pg from 'pg';
import { describe, expect, it } from 'vitest';
import { Lender } from '../src/lender.js';

/** A pool whose first client is idle and whose other clients take until `open()` is called. */
function fakePool() {
  const released: string[] = [];
  const pending: (() => void)[] = [];
  let made = 0;
  const client = (name: string) => ({ name, release: () => void released.push(name) }) as unknown as pg.PoolClient & { name: string };
  const pool = {
    connect(): Promise<pg.PoolClient> {
      made++;
      const c = client(`c${made}`);
      if (made === 1) return Promise.resolve(c);
      return new Promise((resolve) => pending.push(() => resolve(c)));
    },
  } as unknown as pg.Pool;
  return { pool, released, pending, made: () => made };
}

describe('Lender', () => {
  it('hands a given-back client to the next waiter; at most 4 pool requests pending; clients nobody waits for go back to the pool', async () => {
    const { pool, released, pending, made } = fakePool();
    const lender = new Lender(pool);
    const got: string[] = [];
    // 16 handlers start at once; each gives its client back as soon as it has it.
    const handlers = Array.from({ length: 16 }, () =>
      lender.acquire().then((c) => {
        got.push((c as unknown as { name: string }).name);
        lender.giveBack(c);
      }),
    );
    await Promise.all(handlers);
    // Every handler ran on the one idle client; no new connection was waited for.
    expect(got).toEqual(Array(16).fill('c1'));
    expect(pending.length).toBe(4); // at most 4 requests to the pool pending at once
    expect(made()).toBe(5);
    expect(released).toEqual(['c1']);
    // The connections opened meanwhile go back to the pool when they arrive.
    for (const open of pending.splice(0)) open();
    await new Promise((r) => setImmediate(r));
    expect(released.sort()).toEqual(['c1', 'c2', 'c3', 'c4', 'c5']);
  });

  it('a failed connection rejects one waiter, and the others still get clients', async () => {
    let n = 0;
    const pool = {
      connect: () => (++n === 1 ? Promise.reject(new Error('refused')) : Promise.resolve({ release() {} } as unknown as pg.PoolClient)),
    } as unknown as pg.Pool;
    const lender = new Lender(pool);
    const results = await Promise.allSettled([lender.acquire(), lender.acquire()]);
    expect(results.map((r) => r.status).sort()).toEqual(['fulfilled', 'rejected']);
  });
});
