/**
 * Hostile tests of the fast paths: transaction() as a then() chain, statements run through the
 * engine's exports directly, cached control statements, the written-rowid record.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { errorKind, open, type Connection } from '../src/index.js';

const handles: Connection[] = [];
afterEach(() => {
  for (const h of handles.splice(0).reverse()) h.close();
});
function mem(): Connection {
  const db = open(':memory:');
  handles.push(db);
  return db;
}
const tick = () => new Promise<void>((r) => setImmediate(r));

describe('direct binding and reading: values', () => {
  it('every kind of value round-trips through a cached statement', () => {
    const db = mem();
    db.exec('CREATE TABLE v (id INTEGER PRIMARY KEY, x)');
    const big = 'ü'.repeat(40_000) + '😀'.repeat(10_000); // > 64 KiB of UTF-8
    const blob = new Uint8Array(200_000).map((_v, i) => (i * 7) & 0xff);
    const cases: unknown[] = ['', 'a', 'é', '😀', big, new Uint8Array(), new Uint8Array([0, 1, 2]), blob, 0, 1, -1, 2 ** 31, -(2 ** 31) - 1, 2 ** 53 - 1, -(2 ** 53 - 1), 1.5, -0.25, Number.MAX_VALUE, Number.MIN_VALUE, Infinity, -Infinity, null, 2n ** 63n - 1n, -(2n ** 63n), 2n ** 53n + 1n];
    for (const [i, v] of cases.entries()) {
      db.run('INSERT INTO v VALUES (?, ?)', [i, v as never]);
      const got = db.get<{ x: unknown }>('SELECT x FROM v WHERE id = ?', [i])?.x;
      if (typeof v === 'bigint') {
        const expectNum = v >= -(2n ** 53n) + 1n && v <= 2n ** 53n - 1n;
        expect(got, `case ${i}`).toEqual(expectNum ? Number(v) : v);
      } else expect(got, `case ${i}`).toEqual(v);
    }
    // booleans as integers, NaN as NULL, -0 as an integer 0 (as the wrapper binds it)
    expect(db.get('SELECT ? AS t, ? AS f, ? AS n, typeof(?) AS z', [true, false, NaN, -0])).toEqual({ t: 1, f: 0, n: null, z: 'integer' });
    // large param interleaved: the scratch buffer must not leak bytes from a longer earlier value
    expect(db.get('SELECT ? AS a, length(?) AS b', ['xyz'.repeat(10_000), 'q'])).toEqual({ a: 'xyz'.repeat(10_000), b: 1 });
    expect(db.get('SELECT ? AS a, hex(?) AS b', [new Uint8Array(70_000), new Uint8Array([255])])).toEqual({ a: new Uint8Array(70_000), b: 'FF' });
  });

  it('strings with NUL, lone surrogates', () => {
    const db = mem();
    expect(() => db.get('SELECT ? AS a', ['a\u0000b'])).toThrow(/NUL/);
    expect(db.get('SELECT 1 AS a')).toEqual({ a: 1 });
    // a lone low surrogate followed by 3-byte characters: the length must not be under-counted
    const s = '\uDC00' + '一'.repeat(10);
    const got = db.get<{ n: number }>('SELECT length(?) AS n', [s])?.n;
    expect(got).toBe(11);
  });

  it('named parameters, reused with other key orders and prefixes', () => {
    const db = mem();
    const q = 'SELECT :a AS a, @b AS b, $c AS c';
    expect(db.get(q, { a: 1, b: 'two', c: null })).toEqual({ a: 1, b: 'two', c: null });
    expect(db.get(q, { c: 3, ':a': 'x', '@b': new Uint8Array([1]) })).toEqual({ a: 'x', b: new Uint8Array([1]), c: 3 });
    expect(() => db.get(q, { a: 1, b: 2 })).toThrow();
    expect(db.get(q, { a: 5, b: 6, c: 7 })).toEqual({ a: 5, b: 6, c: 7 });
    expect(db.get('SELECT :a AS x, :a AS y', { a: 9 })).toEqual({ x: 9, y: 9 });
  });
});

describe('direct: schema changes on cached statements', () => {
  it('SELECT * after ADD COLUMN, DROP/CREATE, RENAME COLUMN', () => {
    const db = mem();
    db.exec('CREATE TABLE t (a, b); INSERT INTO t VALUES (1, 2)');
    const q = 'SELECT * FROM t';
    expect(db.all(q)).toEqual([{ a: 1, b: 2 }]);
    db.exec('ALTER TABLE t ADD COLUMN c DEFAULT 3');
    expect(db.all(q)).toEqual([{ a: 1, b: 2, c: 3 }]);
    expect(db.get(q)).toEqual({ a: 1, b: 2, c: 3 });
    db.exec('ALTER TABLE t RENAME COLUMN b TO bb');
    expect(db.get(q)).toEqual({ a: 1, bb: 2, c: 3 });
    db.exec('DROP TABLE t; CREATE TABLE t (zz, a); INSERT INTO t VALUES (7, 8)');
    expect(db.all(q)).toEqual([{ zz: 7, a: 8 }]);
    expect([...db.iterate(q)]).toEqual([{ zz: 7, a: 8 }]);
    db.exec('DROP TABLE t; CREATE TABLE t (z)');
    expect(db.all(q)).toEqual([]);
    db.exec('INSERT INTO t VALUES (1)');
    expect(db.all(q)).toEqual([{ z: 1 }]);
    // same count, names of same length but other bytes
    db.exec('DROP TABLE t; CREATE TABLE t (y); INSERT INTO t VALUES (2)');
    expect(db.all(q)).toEqual([{ y: 2 }]);
  });

  it('schema change inside a concurrent transaction replay (other handle alters)', async () => {
    const db = mem();
    db.exec('CREATE TABLE t (id INTEGER PRIMARY KEY, a); INSERT INTO t VALUES (1, 1)');
    const h = db.connect();
    const other = db.connect();
    let runs = 0;
    const out = await h.transaction(async (c) => {
      runs++;
      const r = c.all('SELECT * FROM t');
      if (runs === 1) {
        await tick();
        other.exec('ALTER TABLE t ADD COLUMN b DEFAULT 5');
        await tick();
      }
      c.run('UPDATE t SET a = a + 1 WHERE id = 1');
      return r;
    });
    expect(out).toEqual([{ id: 1, a: 1, b: 5 }]);
    expect(runs).toBe(2);
  });
});

describe('direct: RETURNING and errors mid-step', () => {
  it('RETURNING with run/get/all', () => {
    const db = mem();
    db.exec('CREATE TABLE t (id INTEGER PRIMARY KEY, v)');
    expect(db.all('INSERT INTO t (v) VALUES (?), (?) RETURNING id, v', ['a', 'b'])).toEqual([{ id: 1, v: 'a' }, { id: 2, v: 'b' }]);
    expect(db.get('INSERT INTO t (v) VALUES (?), (?) RETURNING id', ['c', 'd'])).toEqual({ id: 3 });
    expect(db.get<{ n: number }>('SELECT count(*) AS n FROM t')?.n).toBe(4);
    const r = db.run('DELETE FROM t WHERE id > 2 RETURNING id');
    expect(r.changes).toBe(2);
  });

  it('an error mid-iteration leaves the statement reusable', () => {
    const db = mem();
    db.exec('CREATE TABLE t (x); INSERT INTO t VALUES (1), (2), (9223372036854775807)');
    const q = 'SELECT x + 1 AS y FROM t WHERE x < ?';
    const bad = 'SELECT abs(CASE WHEN x > 2 THEN -9223372036854775807 - ? ELSE x END) AS y FROM t';
    expect(() => db.all(bad, [1])).toThrow(/overflow/);
    expect(db.all(bad, [0])).toEqual([{ y: 1 }, { y: 2 }, { y: 9223372036854775807n }]);
    expect(() => db.get(bad, [1])).not.toThrow();
    expect(db.all(q, [3])).toEqual([{ y: 2 }, { y: 3 }]);
    const it1 = db.iterate<{ y: unknown }>(bad, [1]);
    expect(it1.next().value).toEqual({ y: 1 });
    expect(() => [...it1]).toThrow(/overflow/);
    expect(db.all(bad, [0])).toHaveLength(3);
  });

  it('iterate cursors interleaved with other statements and with each other', () => {
    const db = mem();
    db.exec('CREATE TABLE t (x); INSERT INTO t VALUES (1), (2), (3)');
    const a = db.iterate<{ x: number }>('SELECT x FROM t ORDER BY x');
    const b = db.iterate<{ x: number }>('SELECT x FROM t ORDER BY x');
    expect(a.next().value).toEqual({ x: 1 });
    expect(b.next().value).toEqual({ x: 1 });
    db.run('INSERT INTO t VALUES (4)');
    expect([...a]).toEqual([{ x: 2 }, { x: 3 }]);
    expect([...b]).toEqual([{ x: 2 }, { x: 3 }]);
    // the same SQL iterated twice at once
    const c = db.iterate<{ x: number }>('SELECT x FROM t ORDER BY x');
    expect(c.next().value).toEqual({ x: 1 });
    const d = db.iterate<{ x: number }>('SELECT x FROM t ORDER BY x');
    expect(d.next().value).toEqual({ x: 1 });
    expect([...c].length).toBe(3);
    expect([...d].length).toBe(3);
  });

  it('a user function that runs a statement while the outer one steps', () => {
    const db = mem();
    db.exec('CREATE TABLE t (x); INSERT INTO t VALUES (1), (2), (3)');
    db.function('inner', (x) => {
      const r = db.get<{ n: number }>('SELECT count(*) AS n FROM t WHERE x <= ?', [x as number]);
      return r?.n ?? null;
    });
    let res: unknown;
    try {
      res = db.all('SELECT x, inner(x) AS n FROM t ORDER BY x');
    } catch (e) {
      res = e;
    }
    // Either works correctly or fails cleanly; the engine must stay usable either way.
    if (!(res instanceof Error)) expect(res).toEqual([{ x: 1, n: 1 }, { x: 2, n: 2 }, { x: 3, n: 3 }]);
    expect(db.all('SELECT x FROM t ORDER BY x')).toEqual([{ x: 1 }, { x: 2 }, { x: 3 }]);
    db.function('rec', () => (db.get<{ v: number }>('SELECT 1 AS v')?.v ?? null));
    let res2: unknown;
    try {
      res2 = db.get('SELECT 1 AS v');
      res2 = db.all('SELECT rec() AS r FROM t');
    } catch (e) {
      res2 = e;
    }
    if (!(res2 instanceof Error)) expect(res2).toEqual([{ r: 1 }, { r: 1 }, { r: 1 }]);
    expect(db.get('SELECT 1 AS v')).toEqual({ v: 1 });
  });
});
