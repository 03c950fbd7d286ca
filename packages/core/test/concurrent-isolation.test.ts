/**
 * Regression tests for the eleven classes of isolation holes found by an adversarial review
 * (one `describe` per class, numbered as in the review). Each test is the hostile history of
 * its class, written so that it fails when the class comes back.
 */
import { describe, expect, it } from 'vitest';
import { BusyError, errorKind, SqliteError, type Connection } from '../src/index.js';
import { expectSqliteError, thrown, useScope } from './helpers.js';

const scope = useScope();
const tick = () => new Promise<void>((r) => setImmediate(r));

function memory(schema: string): Connection {
  const db = scope.open(':memory:');
  db.exec(schema);
  return db;
}

describe('class 11: bad parameters are a typed error and write nothing', () => {
  it('a BigInt outside 64 bits, too few or too many values, several JS arguments', () => {
    const db = memory('CREATE TABLE t (id INTEGER PRIMARY KEY, v)');
    const ins = db.prepare('INSERT INTO t (v) VALUES (?)');
    for (const bad of [2n ** 64n + 5n, 2n ** 63n, -(2n ** 63n) - 1n]) {
      const e = expectSqliteError(() => db.run('INSERT INTO t (v) VALUES (?)', [bad]), 'misuse', 'SQLITE_RANGE');
      expect(e.message).toMatch(/64-bit/);
      expectSqliteError(() => ins.run(bad), 'misuse', 'SQLITE_RANGE');
      expectSqliteError(() => db.run('INSERT INTO t (v) VALUES (:v)', { v: bad }), 'misuse', 'SQLITE_RANGE');
    }
    // The extremes of the range are stored exactly.
    db.run('INSERT INTO t (v) VALUES (?)', [2n ** 63n - 1n]);
    db.run('INSERT INTO t (v) VALUES (?)', [-(2n ** 63n)]);
    expect(db.all('SELECT typeof(v) AS t FROM t')).toEqual([{ t: 'integer' }, { t: 'integer' }]);
    db.run('DELETE FROM t');
    expectSqliteError(() => db.run('INSERT INTO t (id, v) VALUES (?, ?)', [1]), 'misuse', 'SQLITE_RANGE');
    expectSqliteError(() => db.run('INSERT INTO t (id, v) VALUES (?, ?)'), 'misuse', 'SQLITE_RANGE');
    expectSqliteError(() => db.run('INSERT INTO t (id, v) VALUES (?, ?)', 1), 'misuse', 'SQLITE_RANGE');
    expectSqliteError(() => db.run('INSERT INTO t (id, v) VALUES (?, ?)', [1, 2, 3]), 'misuse', 'SQLITE_RANGE');
    expectSqliteError(() => db.run('INSERT INTO t (id, v) VALUES (:a, :b)', { a: 1 }), 'misuse', 'SQLITE_RANGE');
    expectSqliteError(() => db.run('INSERT INTO t (v) VALUES (?)', [undefined as never]), 'misuse');
    expectSqliteError(() => db.run('INSERT INTO t (v) VALUES (?)', [{} as never]), 'misuse');
    // Several JavaScript arguments would bind only the first.
    expectSqliteError(() => (db.run as (...a: unknown[]) => unknown)('INSERT INTO t (id, v) VALUES (?, ?)', 1, 2), 'misuse');
    expectSqliteError(() => (ins.run as (...a: unknown[]) => unknown)(1, 2), 'misuse');
    expectSqliteError(() => (db.get as (...a: unknown[]) => unknown)('SELECT ?', 1, 2), 'misuse');
    expectSqliteError(() => (db.all as (...a: unknown[]) => unknown)('SELECT ?', 1, 2), 'misuse');
    expect(db.all('SELECT * FROM t')).toEqual([]);
  });

  it('inside BEGIN CONCURRENT the transaction stays usable and logs nothing for a refused call', () => {
    const db = memory('CREATE TABLE t (id INTEGER PRIMARY KEY, v)');
    const a = scope.connect(db);
    a.exec('BEGIN CONCURRENT');
    expectSqliteError(() => a.run('INSERT INTO t (v) VALUES (?)', [2n ** 64n]), 'misuse');
    a.run('INSERT INTO t (v) VALUES (?)', [1]);
    a.exec('COMMIT');
    expect(db.all('SELECT v FROM t')).toEqual([{ v: 1 }]);
  });
});

describe('class 4: a failing autocommit write that changed rows before failing bumps the commit counters', () => {
  for (const [name, setup, failing] of [
    ['UPDATE OR FAIL', '', 'UPDATE OR FAIL t SET v = v + 1, u = CASE WHEN id = 2 THEN 1 ELSE u END'],
    ['INSERT OR FAIL', '', 'INSERT OR FAIL INTO t (id, v, u) SELECT id + 10, v, CASE id WHEN 1 THEN 9 ELSE 2 END FROM t ORDER BY id'],
    [
      'RAISE(FAIL) in a trigger',
      "CREATE TRIGGER stop BEFORE UPDATE ON t WHEN new.id = 2 BEGIN SELECT RAISE(FAIL, 'stop'); END;",
      'UPDATE t SET v = v + 1',
    ],
  ] as const) {
    it(`${name}: a concurrent transaction that read the changed rows conflicts`, async () => {
      const db = memory(
        `CREATE TABLE t (id INTEGER PRIMARY KEY, v INT, u UNIQUE); INSERT INTO t VALUES (1, 10, 1), (2, 20, 2); ${setup}`,
      );
      const a = scope.connect(db);
      const b = scope.connect(db);
      a.exec('BEGIN CONCURRENT');
      const sum = 'SELECT total(v) + count(*) AS v FROM t';
      const seen = a.get<{ v: number }>(sum)!.v;
      await tick();
      expect(() => b.run(failing)).toThrow(SqliteError);
      // A row was changed before the statement failed, and that change is committed.
      expect(db.get<{ v: number }>(sum)!.v).not.toBe(seen);
      const e = thrown(() => {
        a.run('UPDATE t SET v = ? WHERE id = 2', [seen]);
        a.exec('COMMIT');
      });
      expect(errorKind(e)).toBe('busy_snapshot');
    });
  }
});

describe('class 7: the log keeps its own copy of what it returned', () => {
  it('an application that mutates a returned row cannot make a lost update pass validation', async () => {
    const db = memory('CREATE TABLE c (id INTEGER PRIMARY KEY, n INT, b BLOB); INSERT INTO c VALUES (1, 0, x\'00\')');
    const a = scope.connect(db);
    const b = scope.connect(db);
    a.exec('BEGIN CONCURRENT');
    const row = a.get<{ n: number; b: Uint8Array }>('SELECT n, b FROM c WHERE id = 1')!;
    const rows = a.all<{ n: number }>('SELECT n FROM c');
    await tick();
    b.run("UPDATE c SET n = n + 1, b = x'01' WHERE id = 1");
    // The application mutates what it was given into what the other handle committed.
    row.n += 1;
    row.b[0] = 1;
    rows[0]!.n += 1;
    const e = thrown(() => {
      a.run('UPDATE c SET n = ? WHERE id = 1', [row.n]);
      a.exec('COMMIT');
    });
    expect(errorKind(e)).toBe('busy_snapshot');
    expect(db.get('SELECT n FROM c')).toEqual({ n: 1 });
  });
});

describe('class 10: overlapping transaction() calls on one handle', () => {
  it('the second call fails at once with a misuse error; the first commits alone', async () => {
    const db = memory('CREATE TABLE acct (id INTEGER PRIMARY KEY, bal INT); INSERT INTO acct VALUES (1, 100), (2, 0)');
    const h = scope.connect(db);
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const first = h.transaction(async (tx) => {
      tx.run('UPDATE acct SET bal = bal + 1 WHERE id = 2');
      await gate;
    }, { mode: 'concurrent' });
    await tick();
    // A transfer on the same handle: debit, then fail before the credit.
    const second = h.transaction(async (tx) => {
      tx.run('UPDATE acct SET bal = bal - 50 WHERE id = 1');
      throw new Error('credit failed');
    }, { mode: 'concurrent' });
    const e = await second.then(() => undefined, (x: unknown) => x);
    expect(errorKind(e)).toBe('misuse');
    expect((e as Error).message).toMatch(/connect\(\)/);
    release();
    await first;
    expect(db.all('SELECT bal FROM acct ORDER BY id')).toEqual([{ bal: 100 }, { bal: 1 }]);
  });

  it('a call from inside the callback is still a savepoint; a call after the first ended runs normally', async () => {
    const db = memory('CREATE TABLE t (v INT)');
    const h = scope.connect(db);
    await h.transaction(async (tx) => {
      tx.run('INSERT INTO t VALUES (1)');
      await tick();
      await tx
        .transaction(async (inner) => {
          inner.run('INSERT INTO t VALUES (2)');
          await tick();
          throw new Error('inner fails');
        })
        .catch(() => undefined);
      await tx.transaction(async (inner) => {
        await tick();
        inner.run('INSERT INTO t VALUES (3)');
      });
    }, { mode: 'concurrent' });
    await h.transaction(() => h.run('INSERT INTO t VALUES (4)'));
    expect(db.all('SELECT v FROM t ORDER BY v')).toEqual([{ v: 1 }, { v: 3 }, { v: 4 }]);
  });
});
