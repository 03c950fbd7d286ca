import { afterEach, describe, expect, it } from 'vitest';
import { BusyError, errorKind, open, type Connection } from '../src/index.js';

const tick = () => new Promise<void>((r) => setImmediate(r));
const handles: Connection[] = [];
afterEach(() => {
  for (const h of handles.splice(0)) h.close();
});

/** A fresh in-memory database with Hermitage's table: test(id, value) = (1, 10), (2, 20). */
function hermitage(n = 2): { db: Connection; t: Connection[] } {
  const db = open(':memory:');
  handles.push(db);
  db.exec('CREATE TABLE test (id INTEGER PRIMARY KEY, value INT); INSERT INTO test VALUES (1, 10), (2, 20)');
  const t = Array.from({ length: n }, () => db.connect());
  for (const h of t) h.exec('BEGIN CONCURRENT');
  return { db, t };
}

function expectSnapshotConflict(fn: () => unknown): BusyError {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  expect(caught).toBeInstanceOf(BusyError);
  expect(errorKind(caught)).toBe('busy_snapshot');
  expect((caught as BusyError).code).toBe('SQLITE_BUSY_SNAPSHOT');
  return caught as BusyError;
}

const value = (h: Connection, id: number) => h.get<{ value: number }>('SELECT value FROM test WHERE id = ?', [id])?.value;
const table = (db: Connection) => db.all('SELECT id, value FROM test ORDER BY id');

describe('BEGIN CONCURRENT: the sibling busy round trip', () => {
  it('first COMMIT wins, the second throws busy_snapshot, retrying succeeds, the result has both', async () => {
    const db = open(':memory:');
    handles.push(db);
    db.exec('CREATE TABLE counter (id INTEGER PRIMARY KEY, n INT NOT NULL); INSERT INTO counter VALUES (1, 0)');
    const a = db.connect();
    const b = db.connect();
    a.exec('BEGIN CONCURRENT');
    b.exec('BEGIN CONCURRENT');
    const na = a.get<{ n: number }>('SELECT n FROM counter WHERE id = 1')!.n;
    await tick();
    const nb = b.get<{ n: number }>('SELECT n FROM counter WHERE id = 1')!.n;
    await tick();
    a.run('UPDATE counter SET n = ? WHERE id = 1', [na + 1]);
    await tick();
    b.run('UPDATE counter SET n = ? WHERE id = 1', [nb + 10]);
    await tick();
    a.exec('COMMIT');
    const err = expectSnapshotConflict(() => b.exec('COMMIT'));
    expect(err.message).toMatch(/counter/);
    expect(err.message).toMatch(/"n":0/);
    expect(b.inTransaction).toBe(false);
    b.exec('ROLLBACK'); // a no-op after the conflict
    expect(() => b.exec('ROLLBACK')).toThrow(/no transaction/);
    // Retry the whole transaction.
    b.exec('BEGIN CONCURRENT');
    const again = b.get<{ n: number }>('SELECT n FROM counter WHERE id = 1')!.n;
    b.run('UPDATE counter SET n = ? WHERE id = 1', [again + 10]);
    b.exec('COMMIT');
    expect(db.get('SELECT n FROM counter')).toEqual({ n: 11 });
  });

  it('conn.transaction(fn, { mode: "concurrent" }) retries the whole transaction on its own', async () => {
    const db = open(':memory:');
    handles.push(db);
    db.exec('CREATE TABLE counter (id INTEGER PRIMARY KEY, n INT NOT NULL); INSERT INTO counter VALUES (1, 0)');
    let retries = 0;
    const work = Array.from({ length: 20 }, async () => {
      const h = db.connect();
      handles.push(h);
      await h.transaction(
        async (tx) => {
          const n = tx.get<{ n: number }>('SELECT n FROM counter WHERE id = 1')!.n;
          await tick();
          tx.run('UPDATE counter SET n = ? WHERE id = 1', [n + 1]);
        },
        { mode: 'concurrent', retry: { onRetry: () => retries++ } },
      );
    });
    await Promise.all(work);
    expect(db.get('SELECT n FROM counter')).toEqual({ n: 20 });
    expect(retries).toBeGreaterThan(0);
  });

  it('a transaction never sees another one\'s uncommitted writes, and sees its own', async () => {
    const { db, t } = hermitage();
    const [t1, t2] = t as [Connection, Connection];
    t1.run('UPDATE test SET value = 11 WHERE id = 1');
    t1.run('INSERT INTO test VALUES (3, 30)');
    await tick();
    expect(value(t2, 1)).toBe(10);
    expect(t2.all('SELECT id FROM test')).toHaveLength(2);
    expect(value(db, 1)).toBe(10);
    await tick();
    expect(value(t1, 1)).toBe(11);
    expect(t1.all('SELECT id FROM test')).toHaveLength(3);
    t1.exec('COMMIT');
    // t2 only read, but what it read has changed since: it cannot commit (serializable).
    expectSnapshotConflict(() => t2.exec('COMMIT'));
  });
});

describe('Hermitage anomalies at the serializable level, with awaits between steps', () => {
  it('G0 write cycles: the final state is one of the serial outcomes', async () => {
    const { db, t } = hermitage();
    const [t1, t2] = t as [Connection, Connection];
    t1.run('UPDATE test SET value = 11 WHERE id = 1');
    await tick();
    t2.run('UPDATE test SET value = 12 WHERE id = 1');
    await tick();
    t1.run('UPDATE test SET value = 21 WHERE id = 2');
    await tick();
    t1.exec('COMMIT');
    await tick();
    t2.run('UPDATE test SET value = 22 WHERE id = 2');
    await tick();
    t2.exec('COMMIT');
    expect([
      [{ id: 1, value: 11 }, { id: 2, value: 21 }],
      [{ id: 1, value: 12 }, { id: 2, value: 22 }],
    ]).toContainEqual(table(db));
  });

  it('G1a aborted reads: nobody sees a value that was rolled back', async () => {
    const { t } = hermitage();
    const [t1, t2] = t as [Connection, Connection];
    t1.run('UPDATE test SET value = 101 WHERE id = 1');
    await tick();
    expect(t2.all('SELECT value FROM test ORDER BY id')).toEqual([{ value: 10 }, { value: 20 }]);
    await tick();
    t1.exec('ROLLBACK');
    await tick();
    expect(t2.all('SELECT value FROM test ORDER BY id')).toEqual([{ value: 10 }, { value: 20 }]);
    t2.exec('COMMIT');
  });

  it('G1b intermediate reads: nobody sees a value that was overwritten before commit', async () => {
    const { t } = hermitage();
    const [t1, t2] = t as [Connection, Connection];
    t1.run('UPDATE test SET value = 101 WHERE id = 1');
    await tick();
    expect(value(t2, 1)).toBe(10);
    await tick();
    t1.run('UPDATE test SET value = 11 WHERE id = 1');
    await tick();
    t1.exec('COMMIT');
    await tick();
    const seen = value(t2, 1);
    expect(seen).not.toBe(101);
    // t2 read 10 and then 11 inside one transaction: it must not commit.
    expectSnapshotConflict(() => t2.exec('COMMIT'));
  });

  it('G1c circular information flow: one of the two fails', async () => {
    const { t } = hermitage();
    const [t1, t2] = t as [Connection, Connection];
    t1.run('UPDATE test SET value = 11 WHERE id = 1');
    await tick();
    t2.run('UPDATE test SET value = 22 WHERE id = 2');
    await tick();
    expect(value(t1, 2)).toBe(20);
    await tick();
    expect(value(t2, 1)).toBe(10);
    await tick();
    t1.exec('COMMIT');
    await tick();
    expectSnapshotConflict(() => t2.exec('COMMIT'));
  });

  it('OTV observed transaction vanishes: a reader never mixes two transactions\' writes', async () => {
    const { db, t } = hermitage(3);
    const [t1, t2, t3] = t as [Connection, Connection, Connection];
    t1.run('UPDATE test SET value = 11 WHERE id = 1');
    t1.run('UPDATE test SET value = 19 WHERE id = 2');
    await tick();
    t2.run('UPDATE test SET value = 12 WHERE id = 1');
    await tick();
    t1.exec('COMMIT');
    await tick();
    const a = value(t3, 1);
    await tick();
    t2.run('UPDATE test SET value = 18 WHERE id = 2');
    await tick();
    const b = value(t3, 2);
    await tick();
    t2.exec('COMMIT');
    await tick();
    expect([a, b]).toEqual([11, 19]); // only T1's committed writes, both of them
    expectSnapshotConflict(() => t3.exec('COMMIT')); // what it read has since changed
    expect(table(db)).toEqual([{ id: 1, value: 12 }, { id: 2, value: 18 }]);
  });

  it('PMP predicate-many-preceders (read): a predicate read that would now match more rows fails', async () => {
    const { t } = hermitage();
    const [t1, t2] = t as [Connection, Connection];
    expect(t1.all('SELECT * FROM test WHERE value = 30')).toEqual([]);
    await tick();
    t2.run('INSERT INTO test (id, value) VALUES (3, 30)');
    await tick();
    t2.exec('COMMIT');
    await tick();
    t1.all('SELECT * FROM test WHERE value % 3 = 0');
    expectSnapshotConflict(() => t1.exec('COMMIT'));
  });

  it('PMP predicate-many-preceders (write): a delete whose predicate now matches differently fails', async () => {
    const { db, t } = hermitage();
    const [t1, t2] = t as [Connection, Connection];
    t1.run('UPDATE test SET value = value + 10');
    await tick();
    expect(t2.all('SELECT * FROM test WHERE value = 20')).toEqual([{ id: 2, value: 20 }]);
    await tick();
    expect(t2.run('DELETE FROM test WHERE value = 20').changes).toBe(1);
    await tick();
    t1.exec('COMMIT');
    await tick();
    expectSnapshotConflict(() => t2.exec('COMMIT'));
    expect(table(db)).toEqual([{ id: 1, value: 20 }, { id: 2, value: 30 }]);
  });

  it('P4 lost update: the second read-modify-write to commit fails', async () => {
    const { db, t } = hermitage();
    const [t1, t2] = t as [Connection, Connection];
    const v1 = value(t1, 1)!;
    await tick();
    const v2 = value(t2, 1)!;
    await tick();
    t1.run('UPDATE test SET value = ? WHERE id = 1', [v1 + 1]);
    await tick();
    t2.run('UPDATE test SET value = ? WHERE id = 1', [v2 + 1]);
    await tick();
    t1.exec('COMMIT');
    expectSnapshotConflict(() => t2.exec('COMMIT'));
    expect(value(db, 1)).toBe(11);
  });

  it('G-single read skew: a transaction that saw half of another\'s writes fails', async () => {
    const { t } = hermitage();
    const [t1, t2] = t as [Connection, Connection];
    expect(value(t1, 1)).toBe(10);
    await tick();
    expect(value(t2, 1)).toBe(10);
    expect(value(t2, 2)).toBe(20);
    await tick();
    t2.run('UPDATE test SET value = 12 WHERE id = 1');
    t2.run('UPDATE test SET value = 18 WHERE id = 2');
    await tick();
    t2.exec('COMMIT');
    await tick();
    const v2 = value(t1, 2);
    expect(v2 === 20 || v2 === 18).toBe(true);
    expectSnapshotConflict(() => t1.exec('COMMIT'));
  });

  it('G2-item write skew: two transactions read both rows and each writes one: one fails', async () => {
    const { db, t } = hermitage();
    const [t1, t2] = t as [Connection, Connection];
    expect(t1.all('SELECT * FROM test WHERE id IN (1, 2)')).toHaveLength(2);
    await tick();
    expect(t2.all('SELECT * FROM test WHERE id IN (1, 2)')).toHaveLength(2);
    await tick();
    t1.run('UPDATE test SET value = 11 WHERE id = 1');
    await tick();
    t2.run('UPDATE test SET value = 21 WHERE id = 2');
    await tick();
    t1.exec('COMMIT');
    await tick();
    expectSnapshotConflict(() => t2.exec('COMMIT'));
    expect(table(db)).toEqual([{ id: 1, value: 11 }, { id: 2, value: 20 }]);
  });

  it('G2 anti-dependency cycles over a predicate: one of two inserters fails', async () => {
    const { db, t } = hermitage();
    const [t1, t2] = t as [Connection, Connection];
    expect(t1.all('SELECT * FROM test WHERE value % 3 = 0')).toEqual([]);
    await tick();
    expect(t2.all('SELECT * FROM test WHERE value % 3 = 0')).toEqual([]);
    await tick();
    t1.run('INSERT INTO test (id, value) VALUES (3, 30)');
    await tick();
    t2.run('INSERT INTO test (id, value) VALUES (4, 42)');
    await tick();
    t1.exec('COMMIT');
    await tick();
    expectSnapshotConflict(() => t2.exec('COMMIT'));
    expect(table(db)).toHaveLength(3);
  });
});

describe('granularity of conflicts', () => {
  it('disjoint-row writers with awaits inside their transactions never conflict', async () => {
    const db = open(':memory:');
    handles.push(db);
    db.exec('CREATE TABLE acct (id INTEGER PRIMARY KEY, balance INT NOT NULL)');
    for (let i = 1; i <= 32; i++) db.run('INSERT INTO acct VALUES (?, 100)', [i]);
    let retries = 0;
    await Promise.all(
      Array.from({ length: 32 }, async (_, i) => {
        const h = db.connect();
        handles.push(h);
        for (let round = 0; round < 5; round++) {
          await h.transaction(
            async (tx) => {
              const b = tx.get<{ balance: number }>('SELECT balance FROM acct WHERE id = ?', [i + 1])!.balance;
              await new Promise((r) => setTimeout(r, 1));
              tx.run('UPDATE acct SET balance = ? WHERE id = ?', [b + 1, i + 1]);
            },
            { mode: 'concurrent', retry: { onRetry: () => retries++ } },
          );
        }
      }),
    );
    expect(retries).toBe(0);
    expect(db.get('SELECT sum(balance) AS s, min(balance) AS lo FROM acct')).toEqual({ s: 32 * 105, lo: 105 });
  });

  it('concurrent inserts with SQLite-chosen rowids both commit and keep the rowid they were told', async () => {
    const db = open(':memory:');
    handles.push(db);
    db.exec('CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT NOT NULL)');
    db.run("INSERT INTO orders (item) VALUES ('seed')");
    const hs = Array.from({ length: 5 }, () => db.connect());
    handles.push(...hs);
    const told: Array<number | bigint> = [];
    const returned: unknown[] = [];
    for (const [i, h] of hs.entries()) {
      h.exec('BEGIN CONCURRENT');
      if (i % 2 === 0) told.push(h.run('INSERT INTO orders (item) VALUES (?)', [`item${i}`]).lastInsertRowid);
      else {
        const row = h.get<{ id: number }>('INSERT INTO orders (item) VALUES (?) RETURNING id', [`item${i}`])!;
        returned.push(row.id);
        told.push(row.id);
      }
      await tick();
    }
    // An autocommit insert by another handle meanwhile must not take a reserved rowid either.
    const auto = db.run("INSERT INTO orders (item) VALUES ('auto')").lastInsertRowid;
    expect(told).not.toContain(auto);
    expect(new Set(told).size).toBe(5);
    for (const h of [...hs].reverse()) h.exec('COMMIT');
    const rows = db.all<{ id: number; item: string }>('SELECT id, item FROM orders ORDER BY id');
    expect(rows).toHaveLength(7);
    for (const [i, id] of told.entries()) {
      expect(rows.find((r) => r.id === id)?.item).toBe(`item${i}`);
    }
  });

  it('upserts (ON CONFLICT DO NOTHING / DO UPDATE) reserve their rowids too', async () => {
    const db = open(':memory:');
    handles.push(db);
    db.exec('CREATE TABLE t (seq INTEGER PRIMARY KEY, id TEXT UNIQUE, v TEXT)');
    const [a, b, c] = [db.connect(), db.connect(), db.connect()];
    handles.push(a, b, c);
    for (const h of [a, b, c]) h.exec('BEGIN CONCURRENT');
    const ra = a.run('INSERT INTO t (id, v) VALUES (?, ?) ON CONFLICT (id) DO NOTHING', ['a', 'x']).lastInsertRowid;
    await tick();
    const rb = b.run('INSERT INTO t (id, v) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET v = excluded.v', ['b', 'y']).lastInsertRowid;
    await tick();
    const rc = c.get<{ seq: number }>('INSERT INTO t (id, v) VALUES (?, ?) ON CONFLICT DO NOTHING RETURNING seq', ['c', 'z'])!.seq;
    expect(new Set([ra, rb, rc]).size).toBe(3);
    c.exec('COMMIT');
    b.exec('COMMIT');
    a.exec('COMMIT');
    expect(db.all('SELECT seq, id FROM t ORDER BY id')).toEqual([
      { seq: ra, id: 'a' },
      { seq: rb, id: 'b' },
      { seq: rc, id: 'c' },
    ]);
  });

  it('readers of one row are not disturbed by commits to other rows of the same table', async () => {
    const { db, t } = hermitage();
    const [t1] = t as [Connection];
    expect(value(t1, 1)).toBe(10);
    db.run('UPDATE test SET value = 99 WHERE id = 2');
    db.run('INSERT INTO test VALUES (7, 70)');
    await tick();
    t1.run('UPDATE test SET value = 11 WHERE id = 1');
    t1.exec('COMMIT');
    expect(table(db)).toEqual([{ id: 1, value: 11 }, { id: 2, value: 99 }, { id: 7, value: 70 }]);
  });

  it('autocommit writes count as commits: a concurrent transaction cannot overwrite them blindly', async () => {
    const { db, t } = hermitage();
    const [t1] = t as [Connection];
    const v = value(t1, 1)!;
    await tick();
    db.run('UPDATE test SET value = 15 WHERE id = 1');
    await tick();
    // Fails no later than COMMIT: here already at the write, whose transaction read a changed row.
    expectSnapshotConflict(() => {
      t1.run('UPDATE test SET value = ? WHERE id = 1', [v + 1]);
      t1.exec('COMMIT');
    });
    expect(t1.inTransaction).toBe(false);
    expect(value(db, 1)).toBe(15);
  });

  it('pessimistic transactions count as commits, and block concurrent ones with SQLITE_BUSY meanwhile', async () => {
    const { db, t } = hermitage();
    const [t1] = t as [Connection];
    const p = db.connect();
    handles.push(p);
    expect(value(t1, 1)).toBe(10);
    p.exec('BEGIN IMMEDIATE');
    p.run('UPDATE test SET value = 13 WHERE id = 1');
    await tick();
    let busy: unknown;
    try {
      t1.run('UPDATE test SET value = 11 WHERE id = 1');
    } catch (e) {
      busy = e;
    }
    expect(errorKind(busy)).toBe('busy');
    expect((busy as BusyError).code).toBe('SQLITE_BUSY');
    expect(t1.inTransaction).toBe(true); // still usable
    p.exec('COMMIT');
    expectSnapshotConflict(() => {
      t1.run('UPDATE test SET value = 11 WHERE id = 1');
      t1.exec('COMMIT');
    });
    expect(value(db, 1)).toBe(13);
  });

  it('a read-only concurrent transaction fails if what it read changed before it ended', async () => {
    const { db, t } = hermitage();
    const [t1] = t as [Connection];
    expect(value(t1, 2)).toBe(20);
    db.run('UPDATE test SET value = 21 WHERE id = 2');
    expectSnapshotConflict(() => t1.exec('COMMIT'));
  });

  it('DDL inside BEGIN CONCURRENT is rejected with misuse and the transaction stays open', () => {
    const { t } = hermitage();
    const [t1] = t as [Connection];
    t1.run('UPDATE test SET value = 11 WHERE id = 1');
    expect(() => t1.exec('CREATE TABLE x (a)')).toThrow(expect.objectContaining({ kind: 'misuse' }));
    expect(t1.inTransaction).toBe(true);
    expect(value(t1, 1)).toBe(11);
    t1.exec('COMMIT');
  });

  it('a schema change that removes what a parked transaction used makes it conflict, not get stuck', async () => {
    const { db, t } = hermitage();
    const [t1] = t as [Connection];
    db.exec('CREATE TABLE scratch (x INT)');
    t1.run('INSERT INTO scratch VALUES (1)');
    await tick();
    db.exec('DROP TABLE scratch'); // parks t1, then removes its table
    expectSnapshotConflict(() => t1.exec('COMMIT'));
    expect(t1.inTransaction).toBe(false);
    t1.exec('BEGIN CONCURRENT');
    t1.run('UPDATE test SET value = 1 WHERE id = 1');
    t1.exec('COMMIT');
    expect(value(db, 1)).toBe(1);
  });

  it('savepoints work inside BEGIN CONCURRENT, across parking', async () => {
    const { db, t } = hermitage();
    const [t1, t2] = t as [Connection, Connection];
    t1.run('UPDATE test SET value = 11 WHERE id = 1');
    t1.exec('SAVEPOINT a');
    t1.run('UPDATE test SET value = 12 WHERE id = 1');
    await tick();
    t2.run('UPDATE test SET value = 22 WHERE id = 2'); // parks t1
    await tick();
    t1.exec('ROLLBACK TO a');
    expect(value(t1, 1)).toBe(11);
    t1.exec('RELEASE a');
    t2.exec('COMMIT');
    t1.exec('COMMIT');
    expect(table(db)).toEqual([{ id: 1, value: 11 }, { id: 2, value: 22 }]);
  });

  it('PRAGMA journal_mode = mvcc is accepted and reported', () => {
    const db = open(':memory:');
    handles.push(db);
    expect(db.get('PRAGMA journal_mode = mvcc')).toEqual({ journal_mode: 'mvcc' });
    expect(db.get('PRAGMA journal_mode')).toEqual({ journal_mode: 'mvcc' });
    db.exec('BEGIN CONCURRENT');
    db.exec('COMMIT');
  });
});

describe('invariants under random retried transfers', () => {
  it('1,000 retried transfers on 10 accounts conserve the total and lose no transaction', async () => {
    const db = open(':memory:');
    handles.push(db);
    db.exec(
      'CREATE TABLE acct (id INTEGER PRIMARY KEY, balance INT NOT NULL); CREATE TABLE ledger (id INTEGER PRIMARY KEY, src INT, dst INT, amount INT)',
    );
    for (let i = 1; i <= 10; i++) db.run('INSERT INTO acct VALUES (?, 1000)', [i]);
    let seed = 42;
    const rand = (n: number) => {
      seed = (seed * 1103515245 + 12345) % 2147483648;
      return seed % n;
    };
    const transfers = Array.from({ length: 1000 }, () => {
      const src = rand(10) + 1;
      const dst = ((src + rand(9)) % 10) + 1;
      return { src, dst, amount: rand(50) + 1 };
    });
    let next = 0;
    await Promise.all(
      Array.from({ length: 25 }, async () => {
        const h = db.connect();
        handles.push(h);
        while (next < transfers.length) {
          const { src, dst, amount } = transfers[next++]!;
          await h.transaction(
            async (tx) => {
              const s = tx.get<{ balance: number }>('SELECT balance FROM acct WHERE id = ?', [src])!.balance;
              await tick();
              const d = tx.get<{ balance: number }>('SELECT balance FROM acct WHERE id = ?', [dst])!.balance;
              tx.run('UPDATE acct SET balance = ? WHERE id = ?', [s - amount, src]);
              await tick();
              tx.run('UPDATE acct SET balance = ? WHERE id = ?', [d + amount, dst]);
              tx.run('INSERT INTO ledger (src, dst, amount) VALUES (?, ?, ?)', [src, dst, amount]);
            },
            { mode: 'concurrent', retry: { retries: 1000, maxElapsedMs: 60_000 } },
          );
        }
      }),
    );
    expect(db.get('SELECT sum(balance) AS total FROM acct')).toEqual({ total: 10_000 });
    expect(db.get('SELECT count(*) AS n FROM ledger')).toEqual({ n: 1000 });
    // Every account's balance is exactly what the ledger says.
    for (let i = 1; i <= 10; i++) {
      const expected = db.get<{ b: number }>(
        'SELECT 1000 + coalesce((SELECT sum(amount) FROM ledger WHERE dst = ?), 0) - coalesce((SELECT sum(amount) FROM ledger WHERE src = ?), 0) AS b',
        [i, i],
      )!.b;
      expect(db.get('SELECT balance FROM acct WHERE id = ?', [i])).toEqual({ balance: expected });
    }
  }, 60_000);
});
