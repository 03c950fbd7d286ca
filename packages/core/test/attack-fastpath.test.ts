/**
 * Hostile tests of the fast paths: transaction() as a then() chain, statements run through the
 * engine's exports directly, cached control statements, the written-rowid record.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
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

/** After anything, the handle runs a plain transaction and is in autocommit. */
async function usable(h: Connection): Promise<void> {
  expect(h.inTransaction).toBe(false);
  expect(await h.transaction((c) => c.get<{ v: number }>('SELECT 41 + 1 AS v')?.v)).toBe(42);
  expect(h.inTransaction).toBe(false);
}

function counter(): Connection {
  const db = mem();
  db.exec('CREATE TABLE c (id INTEGER PRIMARY KEY, n INT NOT NULL); INSERT INTO c VALUES (1, 0), (2, 0)');
  return db;
}
const n = (h: Connection, id = 1) => h.get<{ n: number }>('SELECT n FROM c WHERE id = ?', [id])?.n;

describe('transaction(): the then() chain', () => {
  it('the callback receives the handle itself, in every mode, also on reruns', async () => {
    const db = counter();
    const h = db.connect();
    for (const mode of ['concurrent', 'immediate', 'deferred', 'exclusive'] as const) {
      expect(await h.transaction((c) => c === h, { mode })).toBe(true);
    }
    const other = db.connect();
    const seen: unknown[] = [];
    await h.transaction(async (c) => {
      seen.push(c);
      c.get('SELECT n FROM c WHERE id = 1');
      if (seen.length === 1) other.run('UPDATE c SET n = n + 1 WHERE id = 1');
      c.run('UPDATE c SET n = n + 10 WHERE id = 1');
    });
    expect(seen).toEqual([h, h]);
    expect(seen[1]).toBe(h);
  });

  it('thrown non-errors (null, undefined, strings, numbers) reject with that value and wedge nothing', async () => {
    const db = counter();
    const h = db.connect();
    for (const v of [null, undefined, 'boom', 0, false, { code: 42 }]) {
      await expect(h.transaction(() => { h.run('UPDATE c SET n = 99'); throw v; })).rejects.toBe(v);
      await usable(h);
      await expect(h.transaction(async () => { h.run('UPDATE c SET n = 99'); await tick(); throw v; })).rejects.toBe(v);
      await usable(h);
      await expect(h.transaction(() => Promise.reject(v), { retry: false })).rejects.toBe(v);
      await usable(h);
      await expect(h.transaction(() => { h.run('UPDATE c SET n = 99'); throw v; }, { mode: 'immediate' })).rejects.toBe(v);
      await usable(h);
    }
    expect(n(db)).toBe(0);
  });

  it('thenables and plain values', async () => {
    const db = counter();
    const h = db.connect();
    expect(await h.transaction(() => ({ then: (res: (v: number) => void) => res(5) }) as unknown as Promise<number>)).toBe(5);
    await expect(h.transaction(() => ({ then: (_res: unknown, rej: (e: unknown) => void) => rej('no') }) as unknown as Promise<number>)).rejects.toBe('no');
    await usable(h);
    await expect(h.transaction(() => ({ then: () => { throw new Error('then threw'); } }) as unknown as Promise<number>)).rejects.toThrow('then threw');
    await usable(h);
    // a thenable that writes in its then(): still inside the transaction
    const r = await h.transaction(() => ({ then: (res: (v: number) => void) => { h.run('UPDATE c SET n = 7 WHERE id = 1'); res(1); } }) as unknown as Promise<number>);
    expect(r).toBe(1);
    expect(n(db)).toBe(7);
    await usable(h);
    expect(await h.transaction(() => undefined)).toBeUndefined();
    expect(await h.transaction(() => null)).toBeNull();
    const p = Promise.resolve(3);
    expect(await h.transaction(() => [p])).toEqual([p]);
  });

  it('a thenable whose then() calls transaction() on the handle nests (it runs before COMMIT)', async () => {
    const db = counter();
    const h = db.connect();
    const r = await h.transaction(
      () =>
        ({
          then: (res: (v: unknown) => void, rej: (e: unknown) => void) => {
            h.transaction((c) => c.run('UPDATE c SET n = 5 WHERE id = 1')).then(res, rej);
          },
        }) as unknown as Promise<unknown>,
    ).catch((e: unknown) => e);
    // Either it nests (a savepoint, committed with the outer) or it is refused as misuse; never half-done.
    if (r instanceof Error) expect(errorKind(r)).toBe('misuse');
    await usable(h);
  });

  it('nested calls after awaits, in timers and Promise.all branches are savepoints', async () => {
    const db = counter();
    const h = db.connect();
    await h.transaction(async (c) => {
      c.run('UPDATE c SET n = 1 WHERE id = 1');
      await tick();
      await c.transaction(async () => {
        c.run('UPDATE c SET n = n + 1 WHERE id = 1');
        await new Promise((r) => setTimeout(r, 1));
      });
      await new Promise<void>((resolve, reject) =>
        setTimeout(() => {
          c.transaction(() => {
            c.run('UPDATE c SET n = n + 100 WHERE id = 1');
            throw new Error('inner');
          }).then(() => reject(new Error('should fail')), () => resolve());
        }, 1),
      );
      await Promise.all([
        c.transaction(async () => { await tick(); c.run('UPDATE c SET n = n + 10 WHERE id = 2'); }),
        c.transaction(async () => { c.run('UPDATE c SET n = n + 20 WHERE id = 2'); await tick(); throw new Error('b'); }).catch(() => undefined),
        c.transaction(() => c.run('UPDATE c SET n = n + 30 WHERE id = 2')),
      ]);
    });
    expect(n(db, 1)).toBe(2);
    expect(n(db, 2)).toBe(40);
    await usable(h);
  });

  it('an overlapping call from unrelated code is misuse and changes nothing, at every stage of the first', async () => {
    const db = counter();
    const h = db.connect();
    const other = db.connect();
    let attempts = 0;
    const errors: unknown[] = [];
    let done = false;
    const tryOverlap = async (where = '') => {
      if (done) return;
      try {
        await h.transaction((c) => c.run('UPDATE c SET n = 1000 WHERE id = 2'));
        errors.push(`ran ${where}`);
      } catch (e) {
        errors.push(errorKind(e));
      }
    };
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const first = h.transaction(async (c) => {
      await tick();
      attempts++;
      c.get('SELECT n FROM c WHERE id = 1');
      if (attempts === 1) {
        await gate;
        other.run('UPDATE c SET n = n + 1 WHERE id = 1'); // conflict: a rerun after backoff
      }
      c.run('UPDATE c SET n = n + 10 WHERE id = 1');
    });
    void first.then(() => (done = true), () => (done = true));
    // from a plain context (queueMicrotask/setImmediate leave no scope), during fn
    await tryOverlap('plain');
    await new Promise<void>((r) => setImmediate(() => void tryOverlap('immediate').then(r)));
    // from another handle's transaction callback
    await other.transaction(async () => { await tryOverlap('other tx'); });
    release();
    // during the retry backoff / rerun
    for (let i = 0; i < 5; i++) { await tryOverlap(`loop ${i} attempts ${attempts}`); await new Promise((r) => setTimeout(r, 1)); }
    await first;
    expect(errors.length).toBeGreaterThanOrEqual(3);
    expect(errors.filter((e) => e !== 'misuse')).toEqual([]);
    expect(attempts).toBe(2);
    expect(n(db, 1)).toBe(11);
    expect(n(db, 2)).toBe(0);
    await usable(h);
  });

  it('a callback that closes its handle; a handle closed between retries', async () => {
    const db = counter();
    const h = db.connect();
    const r = await h.transaction((c) => { c.run('UPDATE c SET n = 5 WHERE id = 1'); c.close(); return 1; }).catch((e: unknown) => e);
    expect(r).toBeInstanceOf(Error);
    expect(n(db)).toBe(0);
    const h2 = db.connect();
    const other = db.connect();
    let attempts = 0;
    const r2 = await h2.transaction(async (c) => {
      attempts++;
      if (attempts === 1) setImmediate(() => h2.close());
      c.get('SELECT n FROM c WHERE id = 1');
      other.run('UPDATE c SET n = n + 1 WHERE id = 1');
      c.run('UPDATE c SET n = n + 10 WHERE id = 1');
    }).catch((e: unknown) => e);
    expect(r2).toBeInstanceOf(Error);
    // each attempt's other.run committed; none of h2's writes did
    expect(n(db)).toBe(attempts);
    const h3 = db.connect();
    const r3 = await h3.transaction(async (c) => { c.run('UPDATE c SET n = 5 WHERE id = 1'); await tick(); c.close(); }).catch((e: unknown) => e);
    expect(r3).toBeInstanceOf(Error);
    expect(n(db)).toBe(attempts);
    await usable(db.connect());
  });

  it('retry: false surfaces the conflict once; retry budgets', async () => {
    const db = counter();
    const h = db.connect();
    const other = db.connect();
    let attempts = 0;
    const e = await h.transaction((c) => {
      attempts++;
      c.get('SELECT n FROM c WHERE id = 1');
      other.run('UPDATE c SET n = n + 1 WHERE id = 1');
      c.run('UPDATE c SET n = n + 10 WHERE id = 1');
    }, { retry: false }).catch((x: unknown) => x);
    expect(errorKind(e), String(e)).toBe('busy_snapshot');
    expect(attempts).toBe(1);
    await usable(h);
    attempts = 0;
    const e2 = await h.transaction((c) => {
      attempts++;
      c.get('SELECT n FROM c WHERE id = 1');
      other.run('UPDATE c SET n = n + 1 WHERE id = 1');
      c.run('UPDATE c SET n = n + 10 WHERE id = 1');
    }, { retry: { retries: 1, minTimeout: 0, maxTimeout: 0 } }).catch((x: unknown) => x);
    expect(errorKind(e2)).toBe('busy_snapshot');
    expect(attempts).toBe(2);
    await usable(h);
    // a budget that runs out while the lane (pessimistic) holds: the other handle's write is refused in fn
    attempts = 0;
    const e3 = await h.transaction((c) => {
      attempts++;
      c.get('SELECT n FROM c WHERE id = 1');
      other.run('UPDATE c SET n = n + 1 WHERE id = 1');
      c.run('UPDATE c SET n = n + 10 WHERE id = 1');
    }, { retry: { retries: 6, minTimeout: 0, maxTimeout: 1 } }).catch((x: unknown) => x);
    expect(['busy', 'busy_snapshot']).toContain(errorKind(e3));
    expect(attempts).toBe(7);
    await usable(h);
    await usable(other);
    const ac = new AbortController();
    ac.abort();
    await expect(h.transaction(() => 1, { retry: { signal: ac.signal } })).rejects.toThrow();
    await usable(h);
    await expect(h.transaction(() => 1, { retry: { retries: -1 } })).rejects.toThrow();
    await usable(h);
    await expect(h.transaction(() => 1, { mode: 'bogus' as never })).rejects.toThrow();
    await usable(h);
  });

  it('the callback ends the transaction itself (COMMIT / ROLLBACK in fn)', async () => {
    const db = counter();
    const h = db.connect();
    const r1 = await h.transaction((c) => { c.run('UPDATE c SET n = 3 WHERE id = 1'); c.exec('COMMIT'); return 1; }).catch((e: unknown) => e);
    const r2 = await h.transaction((c) => { c.run('UPDATE c SET n = 4 WHERE id = 1'); c.exec('ROLLBACK'); return 2; }).catch((e: unknown) => e);
    expect([r1 instanceof Error || r1 === 1, r2 instanceof Error || r2 === 2]).toEqual([true, true]);
    await usable(h);
  });

  it('conflicts rerun the callback: many handles increment one row', async () => {
    const db = counter();
    const hs = Array.from({ length: 40 }, () => db.connect());
    await Promise.all(hs.map(async (h, i) => h.transaction(async (c) => {
      const v = c.get<{ n: number }>('SELECT n FROM c WHERE id = 1')?.n ?? 0;
      if (i % 3 === 0) await tick();
      if (i % 5 === 0) await new Promise((r) => setTimeout(r, 1));
      c.run('UPDATE c SET n = ? WHERE id = 1', [v + 1]);
    })));
    expect(n(db)).toBe(40);
    for (const h of hs) await usable(h);
  });
});

describe('cached control statements on file databases', () => {
  const dirs: string[] = [];
  afterEach(() => {
    for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  });
  const file = () => {
    const d = mkdtempSync(join(tmpdir(), 'siblite-attack2-'));
    dirs.push(d);
    return join(d, 'db.sqlite');
  };

  it('a deferred foreign-key failure at COMMIT rolls back, for transaction() and a hand-written BEGIN', async () => {
    const path = file();
    const db = open(path);
    handles.push(db);
    db.exec('PRAGMA foreign_keys = ON');
    db.exec('CREATE TABLE p (id INTEGER PRIMARY KEY); CREATE TABLE ch (id INTEGER PRIMARY KEY, pid INT REFERENCES p(id) DEFERRABLE INITIALLY DEFERRED); INSERT INTO p VALUES (1)');
    const h = db.connect();
    for (const mode of ['concurrent', 'immediate', 'deferred', 'exclusive'] as const) {
      const e = await h.transaction((c) => { c.run('INSERT INTO ch VALUES (?, 99)', [mode.length]); return 'ok'; }, { mode }).catch((x: unknown) => x);
      expect(e, mode).toBeInstanceOf(Error);
      expect(errorKind(e), mode).toBe('constraint');
      expect(h.inTransaction).toBe(false);
      expect(db.all('SELECT * FROM ch')).toEqual([]);
      await usable(h);
      // the same cached COMMIT works next time
      expect(await h.transaction((c) => c.run('INSERT INTO ch VALUES (?, 1)', [mode.length + 10]).changes, { mode })).toBe(1);
      h.run('DELETE FROM ch');
    }
    h.exec('BEGIN');
    h.run('INSERT INTO ch VALUES (50, 99)');
    expect(() => h.exec('COMMIT')).toThrow();
    // SQLite keeps the transaction open after a refused COMMIT: it can be fixed and committed
    if (h.inTransaction) {
      h.run('INSERT INTO p VALUES (99)');
      h.exec('COMMIT');
      expect(db.all('SELECT id, pid FROM ch')).toEqual([{ id: 50, pid: 99 }]);
    }
    expect(h.inTransaction).toBe(false);
    await usable(h);
  });

  it('a transaction that finds another process holding the file waits it out, or gives up and changes nothing', async () => {
    const path = file();
    const db = open(path, { busyTimeout: 1000 });
    handles.push(db);
    db.exec('CREATE TABLE t (id INTEGER PRIMARY KEY, v INT)');
    const h = db.connect();
    const lock = `${path}.lock`;
    // (A concurrent transaction on a file holds its lock while it awaits: another process can
    // only get in before it begins.)
    const released = async () => {
      for (let i = 0; i < 400 && existsSync(lock); i++) await new Promise((r) => setTimeout(r, 5));
      expect(existsSync(lock)).toBe(false);
    };
    for (const mode of ['concurrent', 'immediate', 'deferred'] as const) {
      await released();
      mkdirSync(lock); // a plain node-sqlite3-wasm process holds the file
      setTimeout(() => rmSync(lock, { recursive: true, force: true }), 200);
      const r = await h.transaction(async (c) => {
        c.run('INSERT INTO t (v) VALUES (1)');
        await tick();
        return 'done';
      }, { mode });
      expect(r).toBe('done');
    }
    expect(db.get('SELECT count(*) AS n FROM t')).toEqual({ n: 3 });
    for (const mode of ['concurrent', 'immediate'] as const) {
      await released();
      mkdirSync(lock);
      let runs = 0;
      const e = await h.transaction(async (c) => {
        runs++;
        c.run('INSERT INTO t (v) VALUES (2)');
        await tick();
      }, { mode }).catch((x: unknown) => x);
      rmSync(lock, { recursive: true, force: true });
      expect(errorKind(e), mode).toBe('busy');
      expect(runs).toBeLessThanOrEqual(1);
      expect(h.inTransaction).toBe(false);
      expect(db.get('SELECT count(*) AS n FROM t')).toEqual({ n: 3 });
      await usable(h);
    }
  }, 30_000);

  it('commit groups: a member failing its deferred foreign key, a member closing its handle, a hot row', async () => {
    const path = file();
    const db = open(path, { groupCommit: { window: 5, cap: 64 } });
    handles.push(db);
    db.exec('PRAGMA foreign_keys = ON');
    db.exec('CREATE TABLE p (id INTEGER PRIMARY KEY); CREATE TABLE ch (id INTEGER PRIMARY KEY, pid INT REFERENCES p(id) DEFERRABLE INITIALLY DEFERRED); INSERT INTO p VALUES (1)');
    db.exec('CREATE TABLE c (id INTEGER PRIMARY KEY, n INT NOT NULL); INSERT INTO c VALUES (1, 0)');
    const hs = Array.from({ length: 24 }, () => db.connect());
    const results = await Promise.allSettled(
      hs.map((h, i) =>
        h.transaction(async (c) => {
          const v = c.get<{ n: number }>('SELECT n FROM c WHERE id = 1')?.n ?? 0;
          await tick();
          c.run('UPDATE c SET n = ? WHERE id = 1', [v + 1]);
          c.run('INSERT INTO ch VALUES (?, ?)', [i + 1, i % 6 === 5 ? 99 : 1]);
          if (i % 8 === 7) c.close();
          return i;
        }),
      ),
    );
    const ok = results.map((r, i) => (r.status === 'fulfilled' ? i : -1)).filter((i) => i >= 0);
    for (const [i, r] of results.entries()) {
      if (i % 8 === 7) expect(r.status, `closing member ${i}`).toBe('rejected');
      else if (i % 6 === 5) {
        expect(r.status, `bad member ${i}`).toBe('rejected');
        if (r.status === 'rejected') expect(errorKind(r.reason)).toBe('constraint');
      } else expect(r.status, `member ${i}: ${r.status === 'rejected' ? String(r.reason) : ''}`).toBe('fulfilled');
    }
    expect(db.get('SELECT n FROM c WHERE id = 1')).toEqual({ n: ok.length });
    expect(db.all('SELECT id FROM ch ORDER BY id').map((r) => (r as { id: number }).id)).toEqual(ok.map((i) => i + 1));
    for (const [i, h] of hs.entries()) if (i % 8 !== 7) await usable(h);
  }, 30_000);
});

describe('written-rowid record: eviction while transactions wait', () => {
  it('write skew across an eviction of the written rowid is still caught (points, short and wide spans)', async () => {
    for (const read of ['point', 'short', 'wide'] as const) {
      const db = mem();
      db.exec('CREATE TABLE ev (id INTEGER PRIMARY KEY, v INT NOT NULL); INSERT INTO ev VALUES (1, 1), (2, 1)');
      const [h1, h2, flood] = [db.connect(), db.connect(), db.connect()];
      const onCall = (c: Connection): number =>
        read === 'point'
          ? (c.get<{ v: number }>('SELECT v FROM ev WHERE id = ?', [1])?.v ?? 0) + (c.get<{ v: number }>('SELECT v FROM ev WHERE id = ?', [2])?.v ?? 0)
          : (c.get<{ s: number }>('SELECT total(v) AS s FROM ev WHERE id BETWEEN ? AND ?', [1, read === 'short' ? 2 : 500])?.s ?? 0);
      let gate!: () => void;
      const opened = new Promise<void>((r) => (gate = r));
      let proceed!: () => void;
      const go = new Promise<void>((r) => (proceed = r));
      let runs1 = 0;
      const t1 = h1.transaction(async (c) => {
        runs1++;
        const total = onCall(c);
        if (runs1 === 1) {
          gate();
          await go;
        }
        if (total >= 2) c.run('UPDATE ev SET v = 0 WHERE id = ?', [2]);
      });
      await opened;
      await h2.transaction((c) => {
        if (onCall(c) >= 2) c.run('UPDATE ev SET v = 0 WHERE id = ?', [1]);
      });
      // Far more distinct rowids than the record keeps, each a proven write point, while h1 waits.
      for (let i = 0; i < 20_000; i++) flood.run('UPDATE ev SET v = 5 WHERE id = ?', [10_000 + i]);
      proceed();
      await t1;
      expect(db.get<{ s: number }>('SELECT sum(v) AS s FROM ev')?.s, read).toBe(1);
      expect(runs1, read).toBe(2);
    }
  }, 60_000);
});

describe('statement cache: LRU by clock stamps', () => {
  it('an open cursor survives the eviction of its statement; hot statements stay cached', () => {
    const db = mem();
    db.exec('CREATE TABLE t (x); INSERT INTO t VALUES (1), (2), (3), (4)');
    const it = db.iterate<{ x: number }>('SELECT x FROM t ORDER BY x');
    expect(it.next().value).toEqual({ x: 1 });
    const hot = 'SELECT count(*) AS n FROM t';
    for (let i = 0; i < 1500; i++) {
      expect(db.get(`SELECT ${i} AS v`)).toEqual({ v: i });
      if (i % 7 === 0) expect(db.get(hot)).toEqual({ n: 4 });
    }
    expect([...it]).toEqual([{ x: 2 }, { x: 3 }, { x: 4 }]);
    const it2 = db.iterate<{ x: number }>('SELECT x FROM t ORDER BY x');
    expect(it2.next().value).toEqual({ x: 1 });
    // the same SQL evicted and prepared again while it2 is open
    for (let i = 0; i < 600; i++) db.get(`SELECT ${i} + 1 AS v`);
    expect(db.all('SELECT x FROM t ORDER BY x')).toHaveLength(4);
    expect([...it2]).toEqual([{ x: 2 }, { x: 3 }, { x: 4 }]);
  });

  it('statements evicted under a concurrent transaction that re-checks them at commit', async () => {
    const db = mem();
    db.exec('CREATE TABLE t (id INTEGER PRIMARY KEY, v); INSERT INTO t VALUES (1, 0), (2, 0)');
    const h = db.connect();
    const other = db.connect();
    let runs = 0;
    await h.transaction(async (c) => {
      runs++;
      const v = c.get<{ v: number }>('SELECT v FROM t WHERE id = ?', [1])?.v ?? 0;
      for (let i = 0; i < 700; i++) c.get(`SELECT ${i} AS q, v FROM t WHERE id = 2`);
      await tick();
      for (let i = 0; i < 700; i++) other.get(`SELECT ${i} AS z`);
      if (runs === 1) other.run('UPDATE t SET v = 10 WHERE id = 1');
      c.run('UPDATE t SET v = ? WHERE id = 2', [v + 1]);
    });
    expect(runs).toBe(2);
    expect(db.all('SELECT v FROM t ORDER BY id')).toEqual([{ v: 10 }, { v: 11 }]);
  }, 30_000);
});

describe('direct binding: parity with the wrapper on random values', () => {
  it('the same rows as the wrapper Statement for random parameters and columns', async () => {
    const { loadSqlite } = await import('../src/file/load.js');
    const raw = new (loadSqlite().Database)(':memory:');
    const db = mem();
    let seed = 12345;
    const rnd = () => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 2 ** 32);
    const text = (): string => {
      const n = rnd() < 0.1 ? 20_000 + Math.floor(rnd() * 60_000) : Math.floor(rnd() * 40);
      const alphabet = ['a', 'Z', ' ', 'é', 'ß', '中', '😀', '\u{10FFFF}', '\t', "'"];
      let s = '';
      for (let i = 0; i < n; i++) s += alphabet[Math.floor(rnd() * alphabet.length)];
      return s;
    };
    const value = (): unknown => {
      const r = rnd();
      if (r < 0.15) return text();
      if (r < 0.25) return new Uint8Array(rnd() < 0.1 ? 70_000 + Math.floor(rnd() * 10) : Math.floor(rnd() * 10)).map(() => Math.floor(rnd() * 256));
      if (r < 0.35) return Math.floor((rnd() - 0.5) * 2 ** 54);
      if (r < 0.45) return (rnd() - 0.5) * 1e300;
      if (r < 0.5) return [NaN, Infinity, -Infinity, -0, 0.1, 2 ** 53, -(2 ** 53), 2 ** 31, -(2 ** 31) - 1][Math.floor(rnd() * 9)];
      if (r < 0.6) return BigInt(Math.floor((rnd() - 0.5) * 2 ** 53)) * BigInt(Math.floor(rnd() * 2 ** 10));
      if (r < 0.65) return [9223372036854775807n, -9223372036854775808n, 2n ** 53n, -(2n ** 53n) - 1n][Math.floor(rnd() * 4)];
      if (r < 0.7) return rnd() < 0.5;
      if (r < 0.8) return null;
      return Math.floor(rnd() * 1000);
    };
    // (hex of the concatenation: text || blob may be invalid UTF-8, which the wrapper decodes from
    // whatever bytes follow it on the heap, see the next test)
    const sql = 'SELECT ?1 AS a, typeof(?1) AS t, ?2 AS b, ?3 AS c, hex(?1 || ?2) AS cat, length(?3) AS l, hex(CAST(?3 AS TEXT)) AS ct';
    const st = raw.prepare(sql);
    for (let i = 0; i < 400; i++) {
      const params = [value(), value(), value()];
      const mine = db.get(sql, params as never);
      const theirs = st.get(params as never);
      expect(mine, `case ${i}`).toEqual(theirs);
    }
    st.finalize();
    raw.close();
  }, 60_000);

  it('short invalid UTF-8 text reads the same every time (the engine decoder read past its end)', () => {
    const db = mem();
    db.exec('CREATE TABLE t (id INTEGER PRIMARY KEY, s TEXT)');
    db.run("INSERT INTO t VALUES (1, '413' || x'F9'), (2, 'ab' || x'E282'), (3, CAST(x'C3' AS TEXT)), (4, 'é' || x'F0'), (5, 'x' || x'ED' || 'y')");
    const first = db.all('SELECT id, s FROM t ORDER BY id');
    for (let i = 0; i < 200; i++) {
      // churn the heap after the text's bytes
      db.get('SELECT ? AS junk', [String.fromCharCode(0x80 + (i % 64)).repeat(200)]);
      expect(db.all('SELECT id, s FROM t ORDER BY id')).toEqual(first);
    }
    expect(first).toEqual([
      { id: 1, s: '413\uFFFD' },
      { id: 2, s: 'ab\uFFFD' },
      { id: 3, s: '\uFFFD' },
      { id: 4, s: 'é\uFFFD' },
      { id: 5, s: 'x\uFFFDy' },
    ]);
    // valid text, lone surrogates included, decodes as before
    expect(db.get('SELECT ? AS s', ['\uD800x'])).toEqual({ s: '\uD800x' });
  });
});

describe('transaction(): a conflict the callback swallows', () => {
  it('is still a conflict: the callback runs again, and its writes before the conflict are not kept', async () => {
    const db = counter();
    const h = db.connect();
    const other = db.connect();
    let runs = 0;
    const out = await h.transaction(async (c) => {
      runs++;
      c.run('UPDATE c SET n = n + 100 WHERE id = 2');
      const v = c.get<{ n: number }>('SELECT n FROM c WHERE id = 1')?.n ?? 0;
      await tick();
      if (runs === 1) other.run('UPDATE c SET n = 5 WHERE id = 1');
      try {
        c.run('UPDATE c SET n = ? WHERE id = 1', [v + 1]);
      } catch {
        // swallowed
      }
      try {
        c.run('UPDATE c SET n = n + 1000 WHERE id = 2');
      } catch {
        // swallowed too
      }
      return runs;
    });
    expect(out).toBe(2);
    expect(n(db, 1)).toBe(6);
    expect(n(db, 2)).toBe(1100);
    await usable(h);
  });

  it('nested savepoint swallowing a conflict does not let the outer commit', async () => {
    const db = counter();
    const h = db.connect();
    const other = db.connect();
    let runs = 0;
    await h.transaction(async (c) => {
      runs++;
      const v = c.get<{ n: number }>('SELECT n FROM c WHERE id = 1')?.n ?? 0;
      await tick();
      if (runs === 1) other.run('UPDATE c SET n = 5 WHERE id = 1');
      await c.transaction(async () => {
        await tick();
        c.run('UPDATE c SET n = ? WHERE id = 1', [v + 1]);
      }).catch(() => undefined);
      await c.transaction(() => c.run('UPDATE c SET n = n + 1 WHERE id = 2')).catch(() => undefined);
    });
    expect(runs).toBe(2);
    expect(n(db, 1)).toBe(6);
    expect(n(db, 2)).toBe(1);
    await usable(h);
  });
});

describe('the priority lane under a hot row', () => {
  it('a lane holder that closes its handle, or throws, does not wedge the lane', async () => {
    const db = counter();
    const hs = Array.from({ length: 16 }, () => db.connect());
    const attempts = new Array<number>(hs.length).fill(0);
    const started = performance.now();
    const results = await Promise.allSettled(
      hs.map((h, i) =>
        h.transaction(async (c) => {
          attempts[i]!++;
          const v = c.get<{ n: number }>('SELECT n FROM c WHERE id = 1')?.n ?? 0;
          await tick();
          c.run('UPDATE c SET n = ? WHERE id = 1', [v + 1]);
          // late attempts run in the lane: leave it by closing or throwing there
          if (i === 3 && attempts[i]! >= 3) c.close();
          if (i === 5 && attempts[i]! >= 3) throw new Error('holder gives up');
          await tick();
        }),
      ),
    );
    expect(performance.now() - started).toBeLessThan(10_000);
    const ok = results.filter((r) => r.status === 'fulfilled').length;
    expect(n(db)).toBe(ok);
    for (const [i, r] of results.entries()) if (i !== 3 && i !== 5) expect(r.status, `handle ${i}`).toBe('fulfilled');
    await usable(hs[0] as Connection);
  }, 30_000);
});

describe('prepared statements across schema changes', () => {
  it('prepare()d SELECT * sees the new columns, in object and raw form, also in a concurrent transaction', async () => {
    const db = mem();
    db.exec('CREATE TABLE t (id INTEGER PRIMARY KEY, a); INSERT INTO t VALUES (1, 1)');
    const st = db.prepare('SELECT * FROM t');
    expect(st.all()).toEqual([{ id: 1, a: 1 }]);
    db.exec('ALTER TABLE t ADD COLUMN b DEFAULT 2');
    expect(st.all()).toEqual([{ id: 1, a: 1, b: 2 }]);
    expect(st.raw(true).all()).toEqual([[1, 1, 2]]);
    st.raw(false);
    db.exec('ALTER TABLE t DROP COLUMN a');
    expect(st.get()).toEqual({ id: 1, b: 2 });
    const h = db.connect();
    const got = await h.transaction((c) => c.all('SELECT * FROM t'));
    expect(got).toEqual([{ id: 1, b: 2 }]);
  });
});

describe('direct binding: blob views', () => {
  it('Buffers from the pool, subarrays and offsets bind their own bytes only', () => {
    const db = mem();
    const pooled = Buffer.from('hello');
    const big = new Uint8Array(100_000).map((_v, i) => i % 251);
    const view = big.subarray(70_000, 70_010);
    const offset = new Uint8Array(big.buffer, 5, 3);
    expect(db.get('SELECT hex(?) AS a, hex(?) AS b, hex(?) AS c, length(?) AS d', [pooled, view, offset, big.subarray(1)])).toEqual({
      a: '68656C6C6F',
      b: Buffer.from(view).toString('hex').toUpperCase(),
      c: '050607',
      d: 99_999,
    });
  });
});

describe('commit groups: a handle closed while its commit waits in the group', () => {
  it('the promise and the database agree (committed and resolved, or rolled back and rejected)', async () => {
    const d = mkdtempSync(join(tmpdir(), 'siblite-attack2-'));
    try {
      const db = open(join(d, 'db.sqlite'), { groupCommit: { window: 30, cap: 64 } });
      handles.push(db);
      db.exec('CREATE TABLE t (id INTEGER PRIMARY KEY, who INT)');
      const hs = Array.from({ length: 6 }, () => db.connect());
      const results = await Promise.allSettled(
        hs.map((h, i) =>
          h.transaction((c) => {
            c.run('INSERT INTO t (who) VALUES (?)', [i]);
            if (i % 2 === 1) setTimeout(() => h.close(), 5); // after joining the group, before its flush
            return i;
          }),
        ),
      );
      const rows = db.all<{ who: number }>('SELECT who FROM t ORDER BY who').map((r) => r.who);
      const resolved = results.map((r, i) => (r.status === 'fulfilled' ? i : -1)).filter((i) => i >= 0);
      expect(rows).toEqual(resolved);
      for (const i of [0, 2, 4]) expect(results[i]?.status).toBe('fulfilled');
      await usable(hs[0] as Connection);
      expect(db.get('SELECT count(*) AS n FROM t')).toEqual({ n: resolved.length });
    } finally {
      for (const h of handles.splice(0).reverse()) h.close();
      rmSync(d, { recursive: true, force: true });
    }
  }, 30_000);
});

describe('RETURNING statements that fail part-way', () => {
  it('change nothing, report the error, and run again from the cache', async () => {
    const db = mem();
    db.exec('CREATE TABLE t (id INTEGER PRIMARY KEY, v INT CHECK (v < 10))');
    const q = 'INSERT INTO t (id, v) VALUES (?, ?), (?, ?) RETURNING id, v';
    for (const want of ['run', 'get', 'all'] as const) {
      const call = () => (want === 'run' ? db.run(q, [1, 1, 1, 2]) : want === 'get' ? db.get(q, [1, 1, 1, 2]) : db.all(q, [1, 1, 1, 2]));
      expect(call, want).toThrow(/UNIQUE/);
      expect(db.all('SELECT * FROM t'), want).toEqual([]);
      expect(() => db.all(q, [1, 1, 2, 20]), want).toThrow(/CHECK/);
      expect(db.all('SELECT * FROM t'), want).toEqual([]);
    }
    expect(db.all(q, [1, 1, 2, 2])).toEqual([{ id: 1, v: 1 }, { id: 2, v: 2 }]);
    const h = db.connect();
    const e = await h.transaction((c) => c.all(q, [3, 3, 3, 4])).catch((x: unknown) => x);
    expect(errorKind(e)).toBe('constraint');
    expect(await h.transaction((c) => c.all(q, [3, 3, 4, 4]))).toEqual([{ id: 3, v: 3 }, { id: 4, v: 4 }]);
    expect(db.get('SELECT count(*) AS n FROM t')).toEqual({ n: 4 });
  });
});

describe('iterate() cursors inside concurrent transactions', () => {
  it('a cursor read across another handle\'s commit is consistent and re-checked at commit', async () => {
    const db = mem();
    db.exec('CREATE TABLE t (id INTEGER PRIMARY KEY, v INT); INSERT INTO t VALUES (1, 1), (2, 2), (3, 3)');
    db.exec('CREATE TABLE out (run INT, s INT)');
    const h = db.connect();
    const other = db.connect();
    let runs = 0;
    const seen: number[][] = [];
    await h.transaction(async (c) => {
      runs++;
      const it = c.iterate<{ v: number }>('SELECT v FROM t ORDER BY id');
      const vs = [it.next().value?.v as number];
      if (runs === 1) other.run('UPDATE t SET v = 20 WHERE id = 2');
      await tick();
      for (const r of it) vs.push(r.v);
      seen.push(vs);
      c.run('INSERT INTO out VALUES (?, ?)', [runs, vs.reduce((a, b) => a + b, 0)]);
    });
    expect(seen[0]).toEqual([1, 2, 3]);
    expect(runs).toBe(2);
    expect(seen[1]).toEqual([1, 20, 3]);
    expect(db.all('SELECT run, s FROM out')).toEqual([{ run: 2, s: 24 }]);
  });
});
