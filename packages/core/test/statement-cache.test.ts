/**
 * The statement cache is per engine (issue 13): every handle's `run()`, `get()`, `all()` use
 * one least-recently-used cache, so a new handle per request finds its statements prepared.
 * The cost side is in the bench (concurrent-cliffs, "a new connect() handle per request").
 */
import { describe, expect, it } from 'vitest';
import type { Connection } from '../src/index.js';
import { STATEMENT_CACHE_SIZE } from '../src/engine/statement-cache.js';
import { useScope } from './helpers.js';

const scope = useScope();

function setup(): Connection {
  const db = scope.open(':memory:');
  db.exec('CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER NOT NULL); INSERT INTO t VALUES (1, 0), (2, 0)');
  return db;
}

const cacheOf = (c: Connection) => c.session.engine.statements;
const SQL = 'SELECT n FROM t WHERE id = ?';

describe('the shared statement cache', () => {
  it('a new handle uses the statement another handle prepared; closing a handle leaves it to the others', () => {
    const db = setup();
    const a = scope.connect(db);
    a.get(SQL, [1]);
    const prepared = cacheOf(db).get(SQL);
    expect(prepared).toBeDefined();
    const b = db.connect();
    expect(b.get(SQL, [2])).toEqual({ n: 0 });
    expect(cacheOf(db).get(SQL)).toBe(prepared);
    b.close();
    a.close();
    expect(prepared!.prepared!.stmt.isFinalized).toBe(false);
    expect(db.get(SQL, [1])).toEqual({ n: 0 });
    expect(cacheOf(db).get(SQL)).toBe(prepared);
  });

  it('least recently used eviction: a statement in steady use survives any number of one-off statements, and evicted ones are finalized', () => {
    const db = setup();
    db.get(SQL, [1]);
    const hot = cacheOf(db).get(SQL)!;
    const first = (db.get('SELECT 0 AS k'), cacheOf(db).get('SELECT 0 AS k')!);
    for (let i = 1; i < 3 * STATEMENT_CACHE_SIZE; i++) {
      db.get(`SELECT ${i} AS k`);
      db.get(SQL, [1]);
    }
    expect(cacheOf(db).get(SQL)).toBe(hot);
    expect(cacheOf(db).size).toBeLessThanOrEqual(STATEMENT_CACHE_SIZE);
    expect(first.prepared!.stmt.isFinalized).toBe(true);
    expect(cacheOf(db).get('SELECT 0 AS k')).toBeUndefined();
    expect(db.get('SELECT 0 AS k')).toEqual({ k: 0 });
  });

  it('one statement shared by handles in different transactions shows each its own state', async () => {
    const db = setup();
    const a = scope.connect(db);
    const b = scope.connect(db);
    const c = scope.connect(db);
    await a.transaction(async (tx) => {
      tx.run('UPDATE t SET n = 5 WHERE id = 1');
      expect(tx.get(SQL, [1])).toEqual({ n: 5 });
      await b.transaction(async (tb) => {
        expect(tb.get(SQL, [1])).toEqual({ n: 0 }); // a's write is not b's
        tb.run('UPDATE t SET n = 7 WHERE id = 2');
        expect(c.get(SQL, [2])).toEqual({ n: 0 }); // autocommit: committed state only
        expect(tx.get(SQL, [1])).toEqual({ n: 5 });
        expect(tb.get(SQL, [2])).toEqual({ n: 7 });
      }, { mode: 'concurrent' });
      expect(tx.get(SQL, [2])).toEqual({ n: 7 });
    }, { mode: 'concurrent' });
    expect(c.all('SELECT n FROM t ORDER BY id')).toEqual([{ n: 5 }, { n: 7 }]);
  });

  it('a statement failing for one handle leaves the shared statement usable for the next', () => {
    const db = setup();
    const a = scope.connect(db);
    const b = scope.connect(db);
    const ins = 'INSERT INTO t (id, n) VALUES (?, ?)';
    expect(() => a.run(ins, [1, 1])).toThrow(/UNIQUE/);
    expect(b.run(ins, [3, 3]).changes).toBe(1);
    expect(() => b.run(ins, [1, 1])).toThrow(/UNIQUE/);
    expect(a.run(ins, [4, 4]).changes).toBe(1);
    expect(db.get<{ c: number }>('SELECT count(*) AS c FROM t')!.c).toBe(4);
  });

  it('a lazy iterate() of one handle and the same SQL run by another handle meanwhile: both see every row', () => {
    const db = setup();
    db.exec('WITH RECURSIVE c(x) AS (SELECT 3 UNION ALL SELECT x + 1 FROM c WHERE x < 50) INSERT INTO t SELECT x, x * 10 FROM c');
    const a = scope.connect(db);
    const b = scope.connect(db);
    const sql = 'SELECT id, n FROM t WHERE id >= ? ORDER BY id';
    const it = a.iterate<{ id: number }>(sql, [1]);
    expect(it.next().value).toEqual({ id: 1, n: 0 });
    // b runs the very statement a's cursor is stepping: a's rest is read first, then b runs.
    expect(b.all<{ id: number }>(sql, [49]).map((r) => r.id)).toEqual([49, 50]);
    const rest = [...it].map((r) => r.id);
    expect(rest).toEqual(Array.from({ length: 49 }, (_, i) => i + 2));
    // Evicting the statement while a cursor of it is open: the cursor is settled first.
    const it2 = a.iterate<{ id: number }>(sql, [48]);
    expect(it2.next().value).toEqual({ id: 48, n: 480 });
    for (let i = 0; i < STATEMENT_CACHE_SIZE + 5; i++) b.get(`SELECT ${i} AS k`);
    expect([...it2].map((r) => r.id)).toEqual([49, 50]);
  });
});

