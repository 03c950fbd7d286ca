/**
 * HandlePool: the sibling handles the Kysely and Drizzle adapters hand out.
 */
import { describe, expect, it } from 'vitest';
import { HandlePool } from '../src/index.js';
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

  it('closing the root closes the idle handles, so the engine closes with it; handles still out close on release', () => {
    const file = scope.file();
    const root = scope.open(file);
    root.exec('CREATE TABLE t (x)');
    const pool = new HandlePool(root);
    const idle = pool.acquire();
    const out = pool.acquire();
    pool.release(idle);
    root.close();
    expect(idle.handle.isOpen).toBe(false);
    expect(out.handle.isOpen).toBe(true);
    pool.release(out);
    expect(out.handle.isOpen).toBe(false);
    expect(() => pool.acquire()).toThrow(/closed/);
  });
});
