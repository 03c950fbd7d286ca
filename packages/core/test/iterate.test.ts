/**
 * Lazy iterate(): rows are read one per step while nothing else uses the engine; any other use
 * (any handle, any statement, transaction control, closing) first reads the rest, so a cursor
 * never sees another handle's uncommitted writes or later commits. Inside transactions and on
 * files, rows are read up front.
 */
import { describe, expect, it } from 'vitest';
import type { Connection } from '../src/index.js';
import { useScope } from './helpers.js';

const scope = useScope();
const N = 50_000;

/** A database of N rows and a counter of how many rows the engine has read so far. */
function big(path = ':memory:'): { db: Connection; reads: () => number } {
  const db = scope.open(path);
  db.exec(`CREATE TABLE t (id INTEGER PRIMARY KEY, v INT);
    WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ${N}) INSERT INTO t SELECT x, x FROM c;`);
  let n = 0;
  db.function('seen', (x) => {
    n++;
    return x;
  });
  return { db, reads: () => n };
}

describe('lazy iterate()', () => {
  it('reads rows on demand: the first row comes before the rest are read', () => {
    const { db, reads } = big();
    const it = db.iterate<{ id: number }>('SELECT seen(id) AS id FROM t');
    expect(it.next().value).toEqual({ id: 1 });
    expect(reads()).toBeLessThan(5);
    let count = 1;
    for (const row of it) {
      count++;
      expect(row.id).toBe(count);
    }
    expect(count).toBe(N);
  });

  it('another handle writing mid-iteration first settles the cursor: the rest shows the state before the write', () => {
    const { db, reads } = big();
    const other = scope.track(db.connect());
    const update = other.prepare('UPDATE t SET v = -1 WHERE id = ?'); // prepared before: running it is the only engine use
    const it = db.prepare<{ id: number; v: number }>('SELECT id, seen(v) AS v FROM t ORDER BY id').iterate();
    expect(it.next().value).toEqual({ id: 1, v: 1 });
    expect(reads()).toBe(1);
    update.run([N]);
    expect(reads()).toBe(N); // the rest was read before the update ran
    const rest = [...it];
    expect(rest.length).toBe(N - 1);
    expect(rest.at(-1)).toEqual({ id: N, v: N });
    expect(db.get('SELECT v FROM t WHERE id = ?', [N])).toEqual({ v: -1 });
  });

  it("never shows another handle's uncommitted concurrent writes", async () => {
    const { db } = big();
    const w = scope.track(db.connect());
    const zero = w.prepare('UPDATE t SET v = 0 WHERE id > ?');
    const it = db.iterate<{ id: number; v: number }>('SELECT id, v FROM t WHERE id > ? ORDER BY id', [N - 3]);
    expect(it.next().value).toEqual({ id: N - 2, v: N - 2 });
    const tx = w.transaction(async () => {
      zero.run([N - 3]);
      await new Promise((r) => setTimeout(r, 5));
    });
    expect([...it]).toEqual([
      { id: N - 1, v: N - 1 },
      { id: N, v: N },
    ]);
    await tx;
    expect(db.get('SELECT sum(v) AS s FROM t WHERE id > ?', [N - 3])).toEqual({ s: 0 });
  });

  it('the same handle running another statement, transaction control and close() settle it too', () => {
    const { db, reads } = big();
    const s = db.prepare('SELECT seen(id) AS id FROM t');
    const it = s.pluck().iterate();
    expect(it.next().value).toBe(1);
    expect(s.busy).toBe(true);
    db.exec('BEGIN');
    expect(s.busy).toBe(false);
    expect(reads()).toBe(N);
    db.exec('ROLLBACK');
    let n = 1;
    for (const id of it) expect(id).toBe(++n);
    expect(n).toBe(N);
    const again = s.iterate();
    expect(again.next().value).toBe(1);
    db.close();
    expect([...again].length).toBe(N - 1);
  });

  it('break resets the statement; it runs again from the start', () => {
    const { db, reads } = big();
    const s = db.prepare<{ id: number }>('SELECT seen(id) AS id FROM t');
    for (const row of s.iterate()) if (row.id === 3) break;
    expect(s.busy).toBe(false);
    expect(reads()).toBe(3);
    expect(s.get()).toEqual({ id: 1 });
    expect([...s.iterate()].length).toBe(N);
  });

  it('an error while stepping surfaces at the row where it happened, also when the rest was read early', () => {
    const db = scope.open(':memory:');
    db.exec('CREATE TABLE t (x); INSERT INTO t VALUES (1), (2), (3), (4)');
    db.function('chk', (x) => {
      if (x === 3) throw new Error('bad row 3');
      return x;
    });
    const lazy = db.prepare('SELECT chk(x) AS x FROM t').pluck();
    const a = lazy.iterate();
    expect([a.next().value, a.next().value]).toEqual([1, 2]);
    expect(() => a.next()).toThrow(/bad row 3/);
    const b = db.prepare('SELECT chk(x) AS x FROM t').pluck().iterate();
    expect(b.next().value).toBe(1);
    db.get('SELECT 1'); // settles b: reads row 2, then fails on row 3
    expect(b.next().value).toBe(2);
    expect(() => b.next()).toThrow(/bad row 3/);
    expect(b.next().done).toBe(true);
  });

  it('inside a transaction, and on a file, rows are read when iteration starts (the read is logged whole)', () => {
    const { db, reads } = big();
    db.exec('BEGIN CONCURRENT');
    const it = db.iterate('SELECT seen(id) AS id FROM t');
    expect(it.next().done).toBe(false);
    expect(reads()).toBe(N);
    db.exec('COMMIT');
    const file = big(scope.file());
    const f = file.db.iterate('SELECT seen(id) AS id FROM t');
    f.next();
    expect(file.reads()).toBe(N);
  });
});

describe('lazy iterate() and user functions', () => {
  it('re-registering a function mid-iteration settles the cursor first', () => {
    const { db, reads } = big();
    const it = db.iterate('SELECT seen(id) AS id FROM t');
    it.next();
    db.function('seen', (x) => x);
    expect(reads()).toBe(N);
    expect([...it].length).toBe(N - 1);
  });
});

describe('lazy iterate() and user functions that run SQL', () => {
  it('a function called while the cursor steps may query the database (as inside all())', () => {
    const db = scope.open(':memory:');
    db.exec('CREATE TABLE t (x); INSERT INTO t VALUES (1), (2), (3); CREATE TABLE k (v); INSERT INTO k VALUES (10)');
    const other = scope.track(db.connect());
    const lookup = other.prepare('SELECT v FROM k').pluck();
    db.function('plus_k', (x) => (x as number) + (lookup.get() as number));
    const it = db.prepare('SELECT plus_k(x) AS y FROM t').pluck().iterate();
    expect(it.next().value).toBe(11);
    expect([...it]).toEqual([12, 13]);
    expect(db.prepare('SELECT plus_k(x) AS y FROM t').pluck().all()).toEqual([11, 12, 13]);
  });
});
