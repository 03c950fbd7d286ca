/**
 * Adversarial findings against the guarantees of docs/concurrency.md: each test states what
 * plain SQLite (or a serial execution) shows (all fixed: they were `it.fails` while siblite differed).
 * See FINDINGS.md next to this file.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { HandlePool, open } from '../../src/index.js';
import { rawDatabase } from './oracle.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('adversarial findings', () => {
  it('params-under-reservation: too few / too many positional parameters are refused while another transaction holds a rowid reservation', () => {
    const db = open(':memory:');
    try {
      db.exec('CREATE TABLE t (id INTEGER PRIMARY KEY, a, b)');
      const a = db.connect();
      const b = db.connect();
      // Without reservations both are refused (class 11):
      expect(() => b.run('INSERT INTO t (a, b) VALUES (?, ?)', [9])).toThrow(/Too few/);
      a.exec('BEGIN CONCURRENT');
      a.run('INSERT INTO t (a, b) VALUES (?, ?)', [1, 2]); // reserves rowid 1 in t
      expect(() => b.run('INSERT INTO t (a, b) VALUES (?, ?)', [9])).toThrow(/Too few/);
      expect(() => b.run('INSERT INTO t (a, b) VALUES (?, ?)', [7, 8, 99])).toThrow(/Too many/);
      a.exec('ROLLBACK');
      expect(db.all('SELECT * FROM t')).toEqual([]);
    } finally {
      db.close();
    }
  });

  it('overlapping-nested-transactions: a nested transaction() that rejects leaves none of its writes when a sibling nested call overlaps it', async () => {
    const db = open(':memory:');
    try {
      db.exec('CREATE TABLE acct (id INTEGER PRIMARY KEY, bal INT); INSERT INTO acct VALUES (1, 100), (2, 0)');
      const h = db.connect();
      await h.transaction(async (tx) => {
        const results = await Promise.allSettled([
          tx.transaction(async (t) => {
            await sleep(5);
            t.run('UPDATE acct SET bal = bal + 1 WHERE id = 2');
          }),
          tx.transaction(async (t) => {
            t.run('UPDATE acct SET bal = bal - 50 WHERE id = 1');
            await sleep(20);
            throw new Error('transfer aborted before the credit');
          }),
        ]);
        expect(results[1]?.status).toBe('rejected');
      });
      // Whatever the first call did, the rejected one must have left nothing: no debit.
      expect(db.get('SELECT bal FROM acct WHERE id = 1')).toEqual({ bal: 100 });
    } finally {
      db.close();
    }
  });

  it('total-changes-misses-trigger-and-cascade-rows: total_changes() never answers a count that misses rows changed by triggers and foreign-key actions', () => {
    const setup =
      'CREATE TABLE p (id INTEGER PRIMARY KEY); CREATE TABLE c (id INTEGER PRIMARY KEY, pid REFERENCES p ON DELETE CASCADE);' +
      'CREATE TABLE audit (id INTEGER PRIMARY KEY, x); CREATE TRIGGER tr AFTER INSERT ON p BEGIN INSERT INTO audit (x) VALUES (new.id); END;';
    const steps = ['INSERT INTO p VALUES (1)', 'INSERT INTO c VALUES (1, 1), (2, 1)', 'DELETE FROM p', 'SELECT total_changes() AS tc'];
    const raw = rawDatabase();
    raw.exec(setup);
    const want = steps.map((s) => raw.all(s));
    raw.close();
    const db = open(':memory:');
    try {
      db.exec(setup);
      const h = db.connect();
      // SQLite: 1+1 (trigger) + 2 + 1+2 (cascade) = 7. This SQLite build cannot count the
      // trigger rows per handle, so siblite answers exactly or refuses, never 4.
      const got = steps.slice(0, 3).map((s) => h.all(s));
      expect(got).toEqual(want.slice(0, 3));
      let total: unknown;
      try {
        total = h.all(steps[3] as string);
      } catch (e) {
        total = e;
      }
      if (total instanceof Error) expect(total.message).toMatch(/total_changes\(\) cannot be answered/);
      else expect(total).toEqual(want[3]);
      // Without triggers or foreign-key actions it stays exact.
      const k = db.connect();
      k.run('INSERT INTO c VALUES (5, NULL), (6, NULL)');
      k.run('UPDATE c SET pid = NULL');
      expect(k.get('SELECT total_changes() AS tc')).toEqual({ tc: 4 });
    } finally {
      db.close();
    }
  });

  it('last-insert-rowid-inside-statement: last_insert_rowid() inside a trigger body or a multi-row INSERT answers what SQLite answers', () => {
    const setup =
      'CREATE TABLE t (id INTEGER PRIMARY KEY, v); CREATE TABLE audit (id INTEGER PRIMARY KEY, lid);' +
      'CREATE TRIGGER tr AFTER INSERT ON t BEGIN INSERT INTO audit (lid) VALUES (last_insert_rowid()); END;';
    const steps = ['INSERT INTO t (id, v) VALUES (10, 1)', 'INSERT INTO t (v) VALUES (2), (last_insert_rowid())', 'SELECT * FROM t', 'SELECT * FROM audit'];
    const raw = rawDatabase();
    raw.exec(setup);
    const want = steps.map((s) => raw.all(s));
    raw.close();
    const db = open(':memory:');
    try {
      db.exec(setup);
      expect(steps.map((s) => db.all(s))).toEqual(want); // SQLite: audit.lid = 10 (the trigger sees new row), t row 12 gets v = 11
    } finally {
      db.close();
    }
  });

  it('last-insert-rowid-inside-statement: each handle\'s statement sees its own rows, even when another handle just inserted the same rowid', () => {
    const db = open(':memory:');
    try {
      db.exec(
        'CREATE TABLE t (id INTEGER PRIMARY KEY, v); CREATE TABLE other (id INTEGER PRIMARY KEY); CREATE TABLE audit (id INTEGER PRIMARY KEY, lid);' +
          'CREATE TRIGGER tr AFTER INSERT ON t BEGIN INSERT INTO audit (lid) VALUES (last_insert_rowid()); END;',
      );
      const a = db.connect();
      const b = db.connect();
      const c = db.connect();
      b.run('INSERT INTO other VALUES (10)'); // the engine's own value is now 10
      a.run('INSERT INTO t (id, v) VALUES (10, 1)'); // inserts rowid 10 too: the trigger must see it
      a.run('INSERT INTO t (v) VALUES (last_insert_rowid())'); // a's value: 10
      expect(db.all('SELECT id, v FROM t')).toEqual([{ id: 10, v: 1 }, { id: 11, v: 10 }]);
      expect(db.all('SELECT lid FROM audit')).toEqual([{ lid: 10 }, { lid: 11 }]);
      expect(a.get('SELECT last_insert_rowid() AS r')).toEqual({ r: 11 });
      expect(b.get('SELECT last_insert_rowid() AS r')).toEqual({ r: 10 });
      expect(c.get('SELECT last_insert_rowid() AS r')).toEqual({ r: 0 });
    } finally {
      db.close();
    }
  });

  it('refused-setting-takes-effect: a PRAGMA refused inside BEGIN CONCURRENT changes nothing', () => {
    const db = open(':memory:');
    try {
      db.exec('CREATE TABLE p (id INTEGER PRIMARY KEY); CREATE TABLE c (id INTEGER PRIMARY KEY, pid REFERENCES p); INSERT INTO p VALUES (1)');
      const a = db.connect();
      const b = db.connect();
      a.exec('BEGIN CONCURRENT');
      expect(() => a.run('PRAGMA foreign_keys = OFF')).toThrow(/not allowed inside BEGIN CONCURRENT/);
      a.exec('ROLLBACK');
      expect(b.get('PRAGMA foreign_keys')).toEqual({ foreign_keys: 1 });
      expect(() => b.run('INSERT INTO c VALUES (1, 99)')).toThrow(/FOREIGN KEY/);
    } finally {
      db.close();
    }
  });

  it('refused-setting-takes-effect: a PRAGMA refused with BusyError beside a BEGIN IMMEDIATE changes nothing', () => {
    const db = open(':memory:');
    try {
      db.exec(
        'CREATE TABLE chain (id INTEGER PRIMARY KEY, n INT); INSERT INTO chain VALUES (1, 0), (2, 0), (3, 0);' +
          'CREATE TRIGGER step AFTER UPDATE ON chain WHEN new.n > 0 AND new.id < 3 BEGIN UPDATE chain SET n = new.n - 1 WHERE id = new.id + 1; END;',
      );
      const h0 = db.connect();
      const h1 = db.connect();
      h0.exec('BEGIN IMMEDIATE');
      expect(() => h1.run('PRAGMA recursive_triggers = 1')).toThrow(/database is locked/);
      h0.run('UPDATE chain SET n = 3 WHERE id = 1');
      h0.exec('COMMIT');
      // Serially the refused PRAGMA never ran: the trigger does not recurse, row 3 stays 0.
      expect(db.all('SELECT n FROM chain ORDER BY id')).toEqual([{ n: 3 }, { n: 2 }, { n: 0 }]);
      expect(db.get('PRAGMA recursive_triggers')).toEqual({ recursive_triggers: 0 });
    } finally {
      db.close();
    }
  });

  it('refused-setting-takes-effect: a read-only handle cannot turn foreign keys off for its siblings', () => {
    const dir = mkdtempSync(join(tmpdir(), 'siblite-adv-'));
    const w = open(join(dir, 'db.sqlite'));
    const r = open(join(dir, 'db.sqlite'), { readonly: true }); // same engine, read-only handle
    try {
      w.exec('CREATE TABLE p (id INTEGER PRIMARY KEY); CREATE TABLE c (id INTEGER PRIMARY KEY, pid REFERENCES p); INSERT INTO p VALUES (1)');
      expect(() => r.run('PRAGMA foreign_keys = 0')).toThrow(/readonly/);
      expect(() => w.run('INSERT INTO c VALUES (1, 99)')).toThrow(/FOREIGN KEY/);
    } finally {
      r.close();
      w.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('refused-setting-takes-effect: preparing a setting (conn.prepare) does not apply it; running it does', () => {
    const db = open(':memory:');
    try {
      db.exec('CREATE TABLE p (id INTEGER PRIMARY KEY); CREATE TABLE c (id INTEGER PRIMARY KEY, pid REFERENCES p)');
      const stmt = db.prepare('PRAGMA foreign_keys = OFF');
      expect(db.get('PRAGMA foreign_keys')).toEqual({ foreign_keys: 1 });
      expect(() => db.run('INSERT INTO c VALUES (1, 99)')).toThrow(/FOREIGN KEY/);
      stmt.run();
      expect(db.get('PRAGMA foreign_keys')).toEqual({ foreign_keys: 0 });
    } finally {
      db.close();
    }
  });

  it('statements-after-conflict-autocommit: inside transaction(), a statement after a swallowed conflict does not commit on its own', async () => {
    const db = open(':memory:');
    try {
      db.exec('CREATE TABLE acct (id INTEGER PRIMARY KEY, bal INT); INSERT INTO acct VALUES (1, 100), (2, 0)');
      const a = db.connect();
      const b = db.connect();
      let attempts = 0;
      await a
        .transaction(async (tx) => {
          attempts++;
          const { bal } = tx.get<{ bal: number }>('SELECT bal FROM acct WHERE id = 1')!;
          if (attempts === 1) b.run('UPDATE acct SET bal = bal + 1 WHERE id = 1'); // a commit in between
          await sleep(1);
          try {
            tx.run('UPDATE acct SET bal = ? WHERE id = 1', [bal - 10]); // conflicts: SQLITE_BUSY_SNAPSHOT
          } catch {
            // the application swallows the error (a library retry helper, a logging wrapper, ...)
          }
          tx.run('UPDATE acct SET bal = bal + 10 WHERE id = 2');
        })
        .catch(() => undefined);
      // Whatever transaction() reports, its writes are all or nothing: money is never created.
      expect(db.get('SELECT sum(bal) AS total FROM acct')).toEqual({ total: 101 });
    } finally {
      db.close();
    }
  });

  it('statements-after-conflict-autocommit: a nested transaction() after a swallowed conflict is not a new transaction of its own', async () => {
    const db = open(':memory:');
    try {
      db.exec('CREATE TABLE acct (id INTEGER PRIMARY KEY, bal INT); INSERT INTO acct VALUES (1, 100), (2, 0)');
      const a = db.connect();
      const b = db.connect();
      let attempts = 0;
      let nestedError: unknown;
      await a.transaction(async (tx) => {
        attempts++;
        const { bal } = tx.get<{ bal: number }>('SELECT bal FROM acct WHERE id = 1')!;
        if (attempts === 1) b.run('UPDATE acct SET bal = bal + 1 WHERE id = 1');
        await sleep(1);
        try {
          tx.run('UPDATE acct SET bal = ? WHERE id = 1', [bal - 10]);
        } catch {
          // swallowed
        }
        try {
          await tx.transaction((n) => {
            n.run('UPDATE acct SET bal = bal + 10 WHERE id = 2');
          });
        } catch (e) {
          nestedError = e;
          throw e;
        }
      });
      expect(attempts).toBe(2); // rerun after the conflict
      expect(nestedError).toMatchObject({ kind: 'busy_snapshot' });
      expect(db.all('SELECT bal FROM acct ORDER BY id')).toEqual([{ bal: 91 }, { bal: 10 }]);
    } finally {
      db.close();
    }
  });

  it('nested-rollback-hides-conflict: a conflict found while rolling back a nested transaction() is not swallowed', async () => {
    const db = open(':memory:');
    try {
      db.exec('CREATE TABLE acct (id INTEGER PRIMARY KEY, bal INT); INSERT INTO acct VALUES (1, 100); CREATE TABLE orders (id INTEGER PRIMARY KEY, status TEXT, seen INT)');
      const a = db.connect();
      const b = db.connect();
      let attempts = 0;
      let resolved = 0;
      await a
        .transaction(async (tx) => {
          attempts++;
          const { bal } = tx.get<{ bal: number }>('SELECT bal FROM acct WHERE id = 1')!;
          try {
            await tx.transaction(async (n) => {
              n.run('UPDATE acct SET bal = bal - 10 WHERE id = 1');
              await sleep(1);
              if (attempts === 1) b.run('UPDATE acct SET bal = bal + 1 WHERE id = 1'); // commits meanwhile
              throw new Error('card declined'); // an ordinary business failure of the nested step
            });
          } catch (e) {
            if ((e as Error).message !== 'card declined') throw e;
          }
          tx.run("INSERT INTO orders (status, seen) VALUES ('declined', ?)", [bal]);
        })
        .then(() => resolved++, () => undefined);
      // The outer transaction read bal = 100, which a commit changed: it must be retried (or
      // fail as a whole). Either way only a committed attempt's order row may exist, and the
      // row it wrote must hold what a serial execution would have read.
      const rows = db.all<{ seen: number }>('SELECT seen FROM orders');
      expect(rows.length).toBe(resolved);
      if (resolved === 1) expect(rows[0]?.seen).toBe(101);
    } finally {
      db.close();
    }
  });

  it('params-read-twice: a concurrent transaction commits the parameter values it executed, not a second reading of them', () => {
    const db = open(':memory:');
    try {
      db.exec('CREATE TABLE t (id INTEGER PRIMARY KEY, v INT); INSERT INTO t VALUES (1, 0); CREATE TABLE u (id INTEGER PRIMARY KEY, w INT); INSERT INTO u VALUES (1, 0)');
      const a = db.connect();
      const b = db.connect();
      let reads = 0;
      // An accessor property (think `get now() { return Date.now(); }`): each read differs.
      const params = {
        get v() {
          return ++reads;
        },
      };
      a.exec('BEGIN CONCURRENT');
      a.run('UPDATE t SET v = :v WHERE id = 1', params);
      const saw = a.get<{ v: number }>('SELECT v FROM t WHERE id = 1')!.v;
      b.run('UPDATE u SET w = 1'); // parks a
      a.run('UPDATE u SET w = w + 1'); // a resumes by replaying its log
      a.exec('COMMIT');
      expect(db.get('SELECT v FROM t WHERE id = 1')).toEqual({ v: saw });
    } finally {
      db.close();
    }
  });

  it('nested-rollback-busy-keeps-writes: a nested transaction() that rejects leaves no writes even when another handle holds BEGIN IMMEDIATE meanwhile', async () => {
    const db = open(':memory:');
    try {
      db.exec('CREATE TABLE kv (k INTEGER PRIMARY KEY, v INT); INSERT INTO kv VALUES (6, 60); CREATE TABLE other (x)');
      const a = db.connect();
      const b = db.connect();
      const holder = (async () => {
        await sleep(2);
        b.exec('BEGIN IMMEDIATE'); // e.g. a transaction() in the priority lane
        b.run('INSERT INTO other VALUES (1)');
        await sleep(30);
        b.exec('COMMIT');
      })();
      let nested: unknown;
      await a.transaction(async (tx) => {
        try {
          await tx.transaction(async (n) => {
            n.run('DELETE FROM kv WHERE k = 6');
            await sleep(10);
            throw new Error('nope');
          });
        } catch (e) {
          nested = e;
        }
      });
      await holder;
      expect((nested as Error).message).toBe('nope');
      expect(db.all('SELECT * FROM kv')).toEqual([{ k: 6, v: 60 }]); // the rejected nested DELETE must not commit
    } finally {
      db.close();
    }
  });

  it('tableless-reads-never-revalidated: a concurrent transaction cannot commit after two different readings of PRAGMA page_count', () => {
    const db = open(':memory:');
    try {
      db.exec('CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); CREATE TABLE note (n INT)');
      const a = db.connect();
      const b = db.connect();
      a.exec('BEGIN CONCURRENT');
      const first = a.get<{ page_count: number }>('PRAGMA page_count')!.page_count;
      b.run(
        'INSERT INTO t (v) SELECT hex(randomblob(2000)) FROM (WITH RECURSIVE c(i) AS (VALUES (1) UNION ALL SELECT i + 1 FROM c WHERE i < 50) SELECT i FROM c)',
      );
      // No serial execution shows one transaction both readings: the conflict shows as soon as
      // siblite can tell (here when the INSERT brings the transaction back), at the latest at COMMIT.
      const rest = () => {
        const second = a.get<{ page_count: number }>('PRAGMA page_count')!.page_count;
        expect(second).not.toBe(first);
        a.run('INSERT INTO note VALUES (?)', [first]);
        a.exec('COMMIT');
      };
      expect(rest).toThrow(/conflicted/);
      expect(a.inTransaction).toBe(false);
      expect(db.all('SELECT * FROM note')).toEqual([]);
    } finally {
      db.close();
    }
  });

  it('internal-cache-eviction-finalizes-statement-in-use: a valid INSERT beside a rowid reservation never fails because the engine evicted its own statement', () => {
    const db = open(':memory:');
    try {
      db.exec('CREATE TABLE kv (k INTEGER PRIMARY KEY, v INT); INSERT INTO kv VALUES (1, 1); CREATE TABLE log2 (id INTEGER PRIMARY KEY, v INT)');
      // White-box only to reach the state deterministically: the engine's cache of its own
      // statements (replays, rowid plans) holds 500 entries, its limit.
      const internal = (db as unknown as { session: { engine: { internal: { size: number } } } }).session.engine.internal;
      const a = db.connect();
      const b = db.connect();
      const c = db.connect();
      a.exec('BEGIN CONCURRENT');
      a.run('INSERT INTO log2 (v) VALUES (?)', [1]); // a reservation in log2
      c.exec('BEGIN CONCURRENT');
      for (let i = 0; internal.size < 500; i++) {
        c.get(`SELECT v + ${i} AS x FROM kv`); // distinct reads, replayed (so cached) on every resume
        db.run('UPDATE kv SET v = v');
        c.run('UPDATE kv SET v = v WHERE k = 2');
      }
      expect(b.run('INSERT INTO log2 (v) VALUES (?)', [2]).changes).toBe(1);
    } finally {
      db.close();
    }
  });

  it('pool-double-release: releasing a pooled handle twice never hands one handle to two users', () => {
    const db = open(':memory:');
    try {
      db.exec('CREATE TABLE t (v)');
      const pool = new HandlePool(db);
      const x = pool.acquire();
      pool.release(x);
      // a second release (an error path releasing again) is refused with a clear error
      expect(() => pool.release(x)).toThrow(/not out of the pool/);
      const u1 = pool.acquire();
      const u2 = pool.acquire();
      expect(u2).not.toBe(u1);
      u1.handle.exec('BEGIN CONCURRENT');
      u1.handle.run('INSERT INTO t VALUES (1)');
      expect(u2.handle.run('INSERT INTO t VALUES (2)').changes).toBe(1); // an autocommit write of another user
      u1.handle.exec('ROLLBACK');
      expect(db.all('SELECT v FROM t')).toEqual([{ v: 2 }]); // must survive user 1's rollback
    } finally {
      db.close();
    }
  });
});
