/**
 * HandlePool: the sibling handles the Kysely and Drizzle adapters hand out.
 */
import { describe, expect, it } from 'vitest';
import { commitAsync, HandlePool } from '../src/index.js';
import { useScope } from './helpers.js';

const scope = useScope();

describe('HandlePool', () => {
  it('reuses idle handles with their statements, rolls back what a released handle left open, caps idle handles', () => {
    const root = scope.open(':memory:');
    root.exec('CREATE TABLE t (x)');
    const pool = new HandlePool(root, 1);
    const a = pool.acquire();
    const b = pool.acquire();
    expect(a.handle).not.toBe(b.handle);
    const stmt = a.statement('SELECT count(*) AS n FROM t');
    expect(a.statement('SELECT count(*) AS n FROM t')).toBe(stmt);
    a.handle.exec('BEGIN CONCURRENT');
    a.handle.run('INSERT INTO t VALUES (1)');
    pool.release(a);
    expect(a.handle.inTransaction).toBe(false);
    expect(root.get('SELECT count(*) AS n FROM t')).toEqual({ n: 0 });
    pool.release(b); // over the idle cap of 1: closed
    expect(b.handle.isOpen).toBe(false);
    expect(pool.acquire()).toBe(a);
  });

  it('closing the root closes every handle of the pool, idle or out, so the engine closes with it', () => {
    const file = scope.file();
    const root = scope.open(file);
    root.exec('CREATE TABLE t (x)');
    const pool = new HandlePool(root);
    const idle = pool.acquire();
    const out = pool.acquire();
    pool.release(idle);
    out.handle.exec('BEGIN CONCURRENT');
    out.handle.run('INSERT INTO t VALUES (1)');
    root.close();
    expect(idle.handle.isOpen).toBe(false);
    expect(out.handle.isOpen).toBe(false);
    pool.release(out); // harmless
    expect(() => pool.acquire()).toThrow(/closed/);
    // The engine closed with its last handle: a new open() sees only committed data.
    const again = scope.open(file);
    expect(again.get('SELECT count(*) AS n FROM t')).toEqual({ n: 0 });
  });

  it('refuses to release a handle whose commitAsync() has not settled (nothing changes); after it settles, release works', async () => {
    const root = scope.open(scope.file());
    root.exec('CREATE TABLE t (x)');
    const pool = new HandlePool(root);
    const a = pool.acquire();
    a.handle.exec('BEGIN CONCURRENT');
    a.handle.run('INSERT INTO t VALUES (1)');
    const committing = commitAsync(a.handle);
    expect(() => pool.release(a)).toThrow(expect.objectContaining({ kind: 'misuse', message: expect.stringContaining('commitAsync() has not settled') }));
    await committing;
    expect(root.get('SELECT count(*) AS n FROM t')).toEqual({ n: 1 });
    pool.release(a); // still out of the pool: released now
    expect(pool.acquire()).toBe(a);
  });
});
