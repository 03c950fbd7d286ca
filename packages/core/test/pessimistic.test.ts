/**
 * Pessimistic transactions per handle (spec "Transaction modes, per handle"): BEGIN
 * [DEFERRED|IMMEDIATE|EXCLUSIVE], COMMIT/END, ROLLBACK, savepoints; what other handles get
 * meanwhile; conn.transaction().
 */
import { describe, expect, it } from 'vitest';
import { BusyError, retry, type Connection } from '../src/index.js';
import { checkSqliteError, expectBusy, expectSqliteError, sleep, useScope } from './helpers.js';

const scope = useScope();

type Way = 'exec' | 'run' | 'prepare';
/** Runs transaction control through exec, run or a prepared statement. */
function control(conn: Connection, way: Way, sql: string): void {
  if (way === 'exec') conn.exec(sql);
  else if (way === 'run') conn.run(sql);
  else {
    const s = conn.prepare(sql);
    try {
      s.run();
    } finally {
      s.finalize();
    }
  }
}

function setup(where: 'memory' | 'file' = 'file'): [Connection, Connection, Connection] {
  const base = scope.open(where === 'memory' ? ':memory:' : scope.file());
  base.exec(`
    CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);
    CREATE TABLE other (id INTEGER PRIMARY KEY, v TEXT);
    INSERT INTO t VALUES (1, 'one');
    INSERT INTO other VALUES (1, 'other');
  `);
  return [base, scope.connect(base), scope.connect(base)];
}

const rowsOf = (c: Connection) => c.all('SELECT id, v FROM t ORDER BY id');

describe('BEGIN / COMMIT / ROLLBACK per handle', () => {
  const begins = [
    ['BEGIN', 'deferred'],
    ['BEGIN TRANSACTION', 'deferred'],
    ['BEGIN DEFERRED', 'deferred'],
    ['BEGIN IMMEDIATE TRANSACTION', 'immediate'],
    ['begin exclusive', 'exclusive'],
  ] as const;
  for (const way of ['exec', 'run', 'prepare'] as const) {
    for (const [begin, mode] of begins) {
      for (const end of ['COMMIT', 'END', 'COMMIT TRANSACTION', 'ROLLBACK'] as const) {
        it(`${begin} .. ${end} through ${way}`, () => {
          const [, a, b] = setup('memory');
          control(a, way, begin);
          expect(a.inTransaction).toBe(true);
          expect(a.transactionMode).toBe(mode);
          expect(b.inTransaction).toBe(false);
          expect(b.transactionMode).toBe(null);
          a.run("INSERT INTO t VALUES (2, 'two')");
          expect(rowsOf(a)).toHaveLength(2);
          control(a, way, end);
          expect(a.inTransaction).toBe(false);
          expect(a.transactionMode).toBe(null);
          expect(rowsOf(b)).toHaveLength(end === 'ROLLBACK' ? 1 : 2);
        });
      }
    }
  }
});

describe("other handles meanwhile", () => {
  for (const mode of ['DEFERRED', 'IMMEDIATE', 'EXCLUSIVE'] as const) {
    it(`${mode}: statements that would see or change A's uncommitted state throw BusyError at once`, () => {
      const [base, a, b] = setup();
      a.exec(`BEGIN ${mode}`);
      a.run("UPDATE t SET v = 'uncommitted' WHERE id = 1");
      a.run("INSERT INTO t VALUES (2, 'uncommitted')");
      const seeOrChange: Array<() => unknown> = [
        () => b.all('SELECT * FROM t'),
        () => b.get('SELECT v FROM t WHERE id = 1'),
        () => b.run("INSERT INTO t VALUES (3, 'b')"),
        () => b.run("UPDATE other SET v = 'b'"),
        () => b.exec("INSERT INTO other VALUES (5, 'b')"),
        () => b.exec('BEGIN'),
        () => b.exec('BEGIN IMMEDIATE'),
        () => b.exec('SAVEPOINT s'),
        () => b.prepare('SELECT count(*) FROM t').get(),
        () => b.all('SELECT * FROM other JOIN t USING (id)'),
        () => b.exec('CREATE TABLE x (y)'),
      ];
      for (const f of seeOrChange) {
        const e = expectBusy(f);
        expect(e).toBeInstanceOf(BusyError);
        expect(b.inTransaction).toBe(false);
      }
      // Reads of tables A has not written still work.
      expect(b.all('SELECT v FROM other')).toEqual([{ v: 'other' }]);
      expect(b.get('SELECT 1 + 1 AS two')).toEqual({ two: 2 });
      expect(base.all('SELECT v FROM other')).toEqual([{ v: 'other' }]);
      a.exec('COMMIT');
      // After A commits, the same statements work and see A's committed state.
      expect(b.all('SELECT id, v FROM t ORDER BY id')).toEqual([
        { id: 1, v: 'uncommitted' },
        { id: 2, v: 'uncommitted' },
      ]);
      b.run("INSERT INTO t VALUES (3, 'b')");
      b.exec('BEGIN IMMEDIATE; COMMIT');
    });
  }

  it("the other handle's open concurrent transaction stays usable and can retry the statement", () => {
    const [, a, b] = setup();
    b.exec('BEGIN CONCURRENT');
    b.run("INSERT INTO other VALUES (2, 'b')");
    a.exec('BEGIN IMMEDIATE');
    a.run("UPDATE t SET v = 'a' WHERE id = 1");
    expectBusy(() => b.get('SELECT v FROM t WHERE id = 1'));
    expect(b.inTransaction).toBe(true);
    expect(b.transactionMode).toBe('concurrent');
    expectBusy(() => b.run("INSERT INTO t VALUES (7, 'b')"));
    expectBusy(() => b.exec('COMMIT'));
    expect(b.inTransaction).toBe(true);
    a.exec('COMMIT');
    expect(b.get('SELECT v FROM t WHERE id = 1')).toEqual({ v: 'a' });
    b.run("INSERT INTO t VALUES (7, 'b')");
    b.exec('COMMIT');
    expect(a.all('SELECT id FROM t ORDER BY id')).toEqual([{ id: 1 }, { id: 7 }]);
    expect(a.all('SELECT id FROM other ORDER BY id')).toEqual([{ id: 1 }, { id: 2 }]);
  });

  it('tables written through triggers, foreign-key cascades and views count as written', () => {
    const [base, a, b] = setup('memory');
    base.exec(`
      CREATE TABLE parent (id INTEGER PRIMARY KEY);
      CREATE TABLE child (id INTEGER PRIMARY KEY, p INT REFERENCES parent(id) ON DELETE CASCADE);
      CREATE TABLE audit (what TEXT);
      CREATE TABLE lonely (x);
      CREATE TRIGGER t_audit AFTER UPDATE ON t BEGIN INSERT INTO audit VALUES (new.v); END;
      CREATE VIEW t_view AS SELECT v FROM t;
      INSERT INTO parent VALUES (1); INSERT INTO child VALUES (1, 1);
    `);
    a.exec('BEGIN');
    a.run('DELETE FROM parent WHERE id = 1');
    a.run("UPDATE t SET v = 'x'");
    expectBusy(() => b.all('SELECT * FROM child'));
    expectBusy(() => b.all('SELECT * FROM audit'));
    expectBusy(() => b.all('SELECT * FROM t_view'));
    expectBusy(() => b.all('SELECT (SELECT count(*) FROM child) AS n'));
    expect(b.all('SELECT * FROM lonely')).toEqual([]);
    a.exec('ROLLBACK');
    expect(b.all('SELECT * FROM child')).toEqual([{ id: 1, p: 1 }]);
    expect(b.all('SELECT * FROM audit')).toEqual([]);
  });

  it('DDL inside a pessimistic transaction makes every table busy for others until it ends', () => {
    const [, a, b] = setup();
    a.exec('BEGIN; CREATE TABLE fresh (x); INSERT INTO fresh VALUES (1)');
    expectBusy(() => b.all('SELECT * FROM other'));
    expectBusy(() => b.all('SELECT * FROM fresh'));
    a.exec('ROLLBACK');
    expect(b.all('SELECT v FROM other')).toEqual([{ v: 'other' }]);
    expectSqliteError(() => b.all('SELECT * FROM fresh'), 'sql');
  });
});

describe('transaction-control errors', () => {
  it('nested BEGIN is misuse and the transaction stays open', () => {
    const [, a, b] = setup('memory');
    for (const begin of ['BEGIN', 'BEGIN IMMEDIATE', 'BEGIN EXCLUSIVE', 'BEGIN CONCURRENT']) {
      a.exec('BEGIN IMMEDIATE');
      a.run("INSERT INTO t VALUES (2, 'two')");
      expectSqliteError(() => a.exec(begin), 'misuse', 'SQLITE_MISUSE');
      expectSqliteError(() => a.run(begin), 'misuse', 'SQLITE_MISUSE');
      expect(a.transactionMode).toBe('immediate');
      expect(rowsOf(a)).toHaveLength(2);
      expectBusy(() => rowsOf(b));
      a.exec('ROLLBACK');
    }
    a.exec('BEGIN CONCURRENT');
    expectSqliteError(() => a.exec('BEGIN'), 'misuse', 'SQLITE_MISUSE');
    expect(a.transactionMode).toBe('concurrent');
    a.exec('ROLLBACK');
  });

  it('COMMIT, END, ROLLBACK, RELEASE and ROLLBACK TO without a transaction are misuse', () => {
    const [, a] = setup('memory');
    for (const sql of ['COMMIT', 'END', 'ROLLBACK', 'RELEASE s', 'ROLLBACK TO s', 'RELEASE SAVEPOINT s']) {
      expectSqliteError(() => a.exec(sql), 'misuse', 'SQLITE_MISUSE');
      expectSqliteError(() => a.run(sql), 'misuse', 'SQLITE_MISUSE');
      expect(a.inTransaction).toBe(false);
    }
    a.run("INSERT INTO t VALUES (2, 'ok')");
    // A second COMMIT after a commit is misuse too.
    a.exec('BEGIN; COMMIT');
    expectSqliteError(() => a.exec('COMMIT'), 'misuse');
  });

  it('RELEASE or ROLLBACK TO an unknown savepoint inside a transaction is an error that keeps it open', () => {
    const [, a] = setup('memory');
    a.exec("BEGIN; SAVEPOINT s; INSERT INTO t VALUES (2, 'two')");
    const e = expectSqliteError(() => a.exec('RELEASE nope'), 'misuse');
    expect(e.message).toMatch(/no such savepoint/);
    expectSqliteError(() => a.exec('ROLLBACK TO nope'), 'misuse');
    expect(a.inTransaction).toBe(true);
    a.exec('RELEASE s; COMMIT');
    expect(rowsOf(a)).toHaveLength(2);
  });
});

describe('statements that end the transaction themselves', () => {
  it('INSERT OR ROLLBACK and RAISE(ROLLBACK) end it: the handle is back in autocommit, others are free', () => {
    const [base, a, b] = setup('memory');
    base.exec("CREATE TRIGGER no_boom BEFORE INSERT ON t WHEN new.v = 'boom' BEGIN SELECT RAISE(ROLLBACK, 'no boom'); END");
    for (const bad of ["INSERT OR ROLLBACK INTO t VALUES (1, 'dup')", "INSERT INTO t VALUES (9, 'boom')"]) {
      a.exec('BEGIN IMMEDIATE');
      a.run("INSERT INTO t VALUES (2, 'two')");
      expectBusy(() => rowsOf(b));
      const e = expectSqliteError(() => a.run(bad), bad.includes('boom') ? 'sql' : 'constraint');
      expect(e.message).toMatch(bad.includes('boom') ? /no boom/ : /UNIQUE/);
      expect(a.inTransaction).toBe(false);
      expect(rowsOf(b)).toEqual([{ id: 1, v: 'one' }]);
      expectSqliteError(() => a.exec('COMMIT'), 'misuse');
      b.exec('BEGIN IMMEDIATE; COMMIT');
    }
  });
});

describe('savepoints', () => {
  for (const way of ['exec', 'run', 'prepare'] as const) {
    it(`an outer SAVEPOINT starts a transaction and RELEASE commits it (${way})`, () => {
      const [, a, b] = setup();
      control(a, way, 'SAVEPOINT outer');
      expect(a.inTransaction).toBe(true);
      expect(a.transactionMode).toBe('deferred');
      a.run("INSERT INTO t VALUES (2, 'two')");
      expectBusy(() => rowsOf(b));
      control(a, way, 'SAVEPOINT inner');
      a.run("INSERT INTO t VALUES (3, 'three')");
      control(a, way, 'ROLLBACK TO inner');
      expect(a.inTransaction).toBe(true);
      control(a, way, 'RELEASE inner');
      expect(rowsOf(a)).toHaveLength(2);
      control(a, way, 'ROLLBACK TRANSACTION TO SAVEPOINT outer');
      expect(a.inTransaction).toBe(true); // ROLLBACK TO does not end the transaction
      expect(rowsOf(a)).toHaveLength(1);
      a.run("INSERT INTO t VALUES (4, 'four')");
      control(a, way, 'RELEASE SAVEPOINT outer');
      expect(a.inTransaction).toBe(false);
      expect(rowsOf(b)).toEqual([
        { id: 1, v: 'one' },
        { id: 4, v: 'four' },
      ]);
    });
  }

  it('savepoints inside BEGIN; ROLLBACK discards everything', () => {
    const [, a, b] = setup();
    a.exec("BEGIN IMMEDIATE; SAVEPOINT s1; INSERT INTO t VALUES (2, 'two'); SAVEPOINT s2; INSERT INTO t VALUES (3, 'x')");
    a.exec('ROLLBACK TO s2; RELEASE s1');
    expect(a.inTransaction).toBe(true);
    expect(rowsOf(a)).toHaveLength(2);
    a.exec('ROLLBACK');
    expect(rowsOf(b)).toHaveLength(1);
  });
});

describe('interleaved awaits', () => {
  it('handles in pessimistic transactions across awaits never see each other\'s uncommitted data', async () => {
    const [base] = setup();
    base.exec('CREATE TABLE counter (id INTEGER PRIMARY KEY, n INT); INSERT INTO counter VALUES (1, 0)');
    const workers = 4;
    const rounds = 5;
    const seen: string[] = [];
    let busyRetries = 0;
    const work = async (w: number) => {
      const h = scope.connect(base);
      for (let r = 0; r < rounds; r++) {
        await retry(
          () => {
            h.exec(w % 2 === 0 ? 'BEGIN IMMEDIATE' : 'BEGIN');
            h.get('SELECT n FROM counter'); // takes the engine for this handle's transaction
          },
          { retries: 10_000, maxTimeout: 5, maxElapsedMs: 20_000, onRetry: () => busyRetries++ },
        );
        const before = h.get<{ n: number }>('SELECT n FROM counter WHERE id = 1')!.n;
        h.run('INSERT INTO t (v) VALUES (?)', [`w${w}r${r} uncommitted`]);
        await sleep(1);
        // What others would see mid-transaction: busy, never the uncommitted row.
        for (let o = 0; o < workers; o++) {
          if (o === w) continue;
          try {
            seen.push(...base.all<{ v: string }>('SELECT v FROM t').map((x) => x.v));
          } catch (e) {
            checkSqliteError(e, 'busy', 'SQLITE_BUSY');
          }
        }
        expect(h.get<{ n: number }>('SELECT n FROM counter WHERE id = 1')!.n).toBe(before);
        await sleep(0);
        h.run('UPDATE counter SET n = ? WHERE id = 1', [before + 1]);
        h.run('DELETE FROM t WHERE v = ?', [`w${w}r${r} uncommitted`]);
        await sleep(1);
        h.exec('COMMIT');
      }
      h.close();
    };
    await Promise.all(Array.from({ length: workers }, (_, w) => work(w)));
    expect(base.get('SELECT n FROM counter WHERE id = 1')).toEqual({ n: workers * rounds });
    expect(seen.filter((v) => v.includes('uncommitted'))).toEqual([]);
    expect(busyRetries).toBeGreaterThan(0);
    expect(rowsOf(base)).toEqual([{ id: 1, v: 'one' }]);
  });
});

describe('conn.transaction()', () => {
  for (const mode of ['deferred', 'immediate', 'exclusive', 'concurrent'] as const) {
    it(`${mode}: commits and returns fn's result; async fn may await`, async () => {
      const [, a, b] = setup();
      const result = await a.transaction(
        async (tx) => {
          expect(tx).toBe(a);
          expect(a.transactionMode).toBe(mode);
          tx.run("INSERT INTO t VALUES (2, 'two')");
          await sleep(2);
          tx.run("UPDATE t SET v = 'ONE' WHERE id = 1");
          return { ok: 42 };
        },
        { mode },
      );
      expect(result).toEqual({ ok: 42 });
      expect(a.inTransaction).toBe(false);
      expect(rowsOf(b)).toEqual([
        { id: 1, v: 'ONE' },
        { id: 2, v: 'two' },
      ]);
      expect(await a.transaction(() => 'sync', { mode })).toBe('sync');
    });

    it(`${mode}: rolls back on throw and rethrows the same error`, async () => {
      const [, a, b] = setup();
      const boom = new Error('boom');
      let calls = 0;
      const p = a.transaction(
        async (tx) => {
          calls++;
          tx.run("INSERT INTO t VALUES (2, 'two')");
          await sleep(1);
          throw boom;
        },
        { mode },
      );
      await expect(p).rejects.toBe(boom);
      expect(calls).toBe(1);
      expect(a.inTransaction).toBe(false);
      expect(rowsOf(b)).toEqual([{ id: 1, v: 'one' }]);
      // A constraint error inside fn: rolled back, rethrown unchanged, not retried.
      let constraint: unknown;
      await a
        .transaction(
          (tx) => {
            calls++;
            tx.run("INSERT INTO t VALUES (3, 'three')");
            tx.run("INSERT INTO t VALUES (1, 'dup')");
          },
          { mode },
        )
        .catch((e: unknown) => (constraint = e));
      checkSqliteError(constraint, 'constraint', /^SQLITE_CONSTRAINT_(PRIMARYKEY|UNIQUE)$/);
      expect(calls).toBe(2);
      expect(rowsOf(b)).toEqual([{ id: 1, v: 'one' }]);
      b.run("INSERT INTO t VALUES (3, 'b')"); // nothing is left locked
    });

    it(`${mode}: a nested call runs in a savepoint`, async () => {
      const [, a, b] = setup();
      const inner = new Error('inner');
      const out = await a.transaction(
        async (tx) => {
          tx.run("INSERT INTO t VALUES (2, 'outer')");
          const r = await tx.transaction(async (t2) => {
            expect(t2.transactionMode).toBe(mode);
            t2.run("INSERT INTO t VALUES (3, 'inner ok')");
            await sleep(1);
            return 'nested result';
          });
          await expect(
            tx.transaction(async (t2) => {
              t2.run("INSERT INTO t VALUES (4, 'inner failed')");
              await sleep(1);
              throw inner;
            }),
          ).rejects.toBe(inner);
          expect(tx.inTransaction).toBe(true);
          tx.run("INSERT INTO t VALUES (5, 'outer again')");
          return r;
        },
        { mode },
      );
      expect(out).toBe('nested result');
      expect(rowsOf(b).map((r) => r.id)).toEqual([1, 2, 3, 5]);
    });
  }

  it('a pessimistic transaction() waits (retrying) while another handle holds the lock', async () => {
    const [, a, b] = setup();
    a.exec('BEGIN IMMEDIATE');
    a.run("UPDATE t SET v = 'a' WHERE id = 1");
    let attempts = 0;
    const pb = b.transaction(
      (tx) => {
        attempts++;
        const v = tx.get<{ v: string }>('SELECT v FROM t WHERE id = 1')!.v;
        tx.run('UPDATE t SET v = ? WHERE id = 1', [`${v}+b`]);
        return v;
      },
      { mode: 'immediate', retry: { retries: 1000, maxTimeout: 5 } },
    );
    await sleep(20);
    a.exec('COMMIT');
    expect(await pb).toBe('a');
    expect(a.get('SELECT v FROM t WHERE id = 1')).toEqual({ v: 'a+b' });
    expect(attempts).toBe(1); // fn never ran while BEGIN was busy
  });

  it('retry: false with busy_timeout 0 gives the busy error at once', async () => {
    const [, a, b] = setup();
    b.exec('PRAGMA busy_timeout = 0');
    a.exec('BEGIN IMMEDIATE');
    let ran = false;
    const err = await b
      .transaction(() => (ran = true), { mode: 'immediate', retry: false })
      .then(() => undefined, (e: unknown) => e);
    checkSqliteError(err, 'busy', 'SQLITE_BUSY');
    expect(ran).toBe(false);
    expect(b.inTransaction).toBe(false);
    a.exec('COMMIT');
  });

  it('rejects an unknown mode and a non-function', async () => {
    const [, a] = setup('memory');
    const e = await a.transaction(() => 1, { mode: 'optimistic' as never }).catch((x: unknown) => x);
    checkSqliteError(e, 'misuse');
    expectSqliteError(() => a.transaction(42 as never), 'misuse');
    expect(a.inTransaction).toBe(false);
  });
});

describe('conn.transaction() without a mode', () => {
  it('runs BEGIN CONCURRENT, so another handle reads and writes freely while it awaits', async () => {
    const [, a, b] = setup();
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const p = a.transaction(async (tx) => {
      expect(tx.transactionMode).toBe('concurrent');
      tx.run("INSERT INTO t VALUES (5, 'five')");
      await gate;
    });
    await sleep(1);
    // With a pessimistic default these would throw SQLITE_BUSY while `a` awaits.
    expect(b.all('SELECT id FROM t ORDER BY id').length).toBeGreaterThan(0);
    b.run("INSERT INTO t VALUES (6, 'six')");
    release();
    await p;
    expect(b.get<{ n: number }>('SELECT count(*) AS n FROM t WHERE id IN (5, 6)')?.n).toBe(2);
  });
});
