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

describe("class 2: last_insert_rowid(), changes(), total_changes() answer the calling handle's own values", () => {
  it("another handle's autocommit statement never sees a concurrent transaction's uncommitted rowid", async () => {
    const db = memory('CREATE TABLE parent (id INTEGER PRIMARY KEY, v); CREATE TABLE child (pid)');
    const a = scope.connect(db);
    const b = scope.connect(db);
    b.run("INSERT INTO parent (v) VALUES ('b')"); // b's last insert: 1
    a.exec('BEGIN CONCURRENT');
    expect(a.run("INSERT INTO parent (v) VALUES ('a')").lastInsertRowid).toBe(2);
    await tick();
    b.run('INSERT INTO child (pid) VALUES (last_insert_rowid())');
    a.exec('ROLLBACK');
    expect(db.all('SELECT pid FROM child')).toEqual([{ pid: 1 }]);
    expect(db.all('SELECT id FROM parent')).toEqual([{ id: 1 }]);
  });

  it('inside a transaction, and when the transaction is replayed after being parked', async () => {
    const db = memory('CREATE TABLE t (id INTEGER PRIMARY KEY, v); INSERT INTO t (v) VALUES (1), (2), (3); CREATE TABLE seen (what, n)');
    const a = scope.connect(db);
    const b = scope.connect(db);
    a.exec('BEGIN CONCURRENT');
    expect(a.run('UPDATE t SET v = v + 1 WHERE id <= 2').changes).toBe(2);
    const rowid = a.run('INSERT INTO t (v) VALUES (9)').lastInsertRowid;
    await tick();
    b.run('DELETE FROM t WHERE id = 3'); // parks a; b's changes() is 1, its rowid 0
    expect(b.get('SELECT last_insert_rowid() AS r, changes() AS c, total_changes() AS t')).toEqual({ r: 0, c: 1, t: 1 });
    expect(a.get('SELECT last_insert_rowid() AS r, changes() AS c, total_changes() AS t')).toEqual({ r: rowid, c: 1, t: 3 });
    a.run("INSERT INTO seen VALUES ('rowid', last_insert_rowid())");
    a.run("INSERT INTO seen VALUES ('changes', changes())");
    await tick();
    b.run("INSERT INTO t (v) VALUES ('b')"); // parks a again: the replay must answer a's values
    a.exec('COMMIT');
    expect(db.all('SELECT what, n FROM seen')).toEqual([
      { what: 'rowid', n: rowid },
      { what: 'changes', n: 1 },
    ]);
  });
});

describe("class 2b: a statement logged without the handle's state, that a schema change makes depend on it", () => {
  // The log keeps a handle's changes()/last_insert_rowid() values only for statements that call
  // them. A trigger created later can make a logged statement call them on replay: that replay
  // could not answer the handle's values, so the transaction conflicts instead (and reruns).
  it('a trigger calling changes() created while the transaction is parked: the replay conflicts, nothing of it stays', async () => {
    const db = memory('CREATE TABLE t (v); CREATE TABLE audit (c)');
    const a = scope.connect(db);
    const b = scope.connect(db);
    b.run('DELETE FROM t'); // b's changes() is 0; a's will be 1
    a.exec('BEGIN CONCURRENT');
    a.run('INSERT INTO t VALUES (1)'); // logged without a's state: it calls nothing that needs it
    await tick();
    b.exec('CREATE TRIGGER tr AFTER INSERT ON t BEGIN INSERT INTO audit VALUES (changes()); END'); // parks a
    const e = thrown(() => a.run('INSERT INTO t VALUES (2)')); // resumes a: the replay would fire tr
    expect(errorKind(e)).toBe('busy_snapshot');
    expect(String((e as Error).message)).toMatch(/handle state/);
    expect(a.inTransaction).toBe(false);
    expect(db.all('SELECT v FROM t')).toEqual([]);
    expect(db.all('SELECT c FROM audit')).toEqual([]);
    // A rerun logs the statement with a's state and commits it, the trigger seeing a's changes().
    await a.transaction((tx) => {
      tx.run('INSERT INTO t VALUES (1)');
      tx.run('INSERT INTO t VALUES (2)');
    });
    expect(db.all('SELECT c FROM audit')).toEqual([{ c: 1 }, { c: 1 }]);
  });
});

describe('class 3: footprints follow the settings and the schema that decide what a statement touches', () => {
  const SCHEMA =
    'CREATE TABLE parent (id INTEGER PRIMARY KEY); CREATE TABLE child (id INTEGER PRIMARY KEY, pid REFERENCES parent ON DELETE CASCADE);' +
    'INSERT INTO parent VALUES (1), (2); INSERT INTO child VALUES (1, 1), (2, 1), (3, 2);';

  it('a DELETE first compiled with foreign keys off cascades once they are on: the commit counters see the child change', async () => {
    const db = memory(`PRAGMA foreign_keys = OFF; ${SCHEMA}`);
    const a = scope.connect(db);
    const b = scope.connect(db);
    a.exec('BEGIN CONCURRENT');
    b.run('DELETE FROM parent WHERE id = ?', [99]); // footprint learned with foreign keys off
    db.exec('PRAGMA foreign_keys = ON');
    const n = a.get<{ n: number }>('SELECT count(*) AS n FROM child')!.n;
    await tick();
    b.run('DELETE FROM parent WHERE id = ?', [1]); // cascades into child
    expect(db.get('SELECT count(*) AS n FROM child')).toEqual({ n: 1 });
    const e = thrown(() => {
      a.run('INSERT INTO parent VALUES (?)', [10 + n]);
      a.exec('COMMIT');
    });
    expect(errorKind(e)).toBe('busy_snapshot');
  });

  it("another handle's read never sees a concurrent transaction's uncommitted cascade", async () => {
    const db = memory(`PRAGMA foreign_keys = OFF; ${SCHEMA}`);
    const a = scope.connect(db);
    const b = scope.connect(db);
    a.exec('BEGIN CONCURRENT');
    a.run('DELETE FROM parent WHERE id = ?', [99]); // logged with foreign keys off
    await tick();
    db.exec('PRAGMA foreign_keys = ON'); // parks a
    a.run('DELETE FROM parent WHERE id = ?', [1]); // resumes a; now cascades
    expect(a.get('SELECT count(*) AS n FROM child')).toEqual({ n: 1 });
    expect(b.get('SELECT count(*) AS n FROM child')).toEqual({ n: 3 });
    a.exec('ROLLBACK');
    expect(b.get('SELECT count(*) AS n FROM child')).toEqual({ n: 3 });
  });

  it('a trigger created while a transaction is parked: its replayed write fires it, and others do not see that', async () => {
    const db = memory('CREATE TABLE t (v); CREATE TABLE audit (v)');
    const a = scope.connect(db);
    const b = scope.connect(db);
    a.exec('BEGIN CONCURRENT');
    a.run('INSERT INTO t VALUES (1)');
    await tick();
    db.exec('CREATE TRIGGER tr AFTER INSERT ON t BEGIN INSERT INTO audit VALUES (new.v); END');
    expect(a.get('SELECT count(*) AS n FROM t')).toEqual({ n: 1 }); // resumes: the replayed insert fires the trigger
    expect(b.all('SELECT v FROM audit')).toEqual([]);
    a.exec('COMMIT');
    expect(b.all('SELECT v FROM audit ORDER BY v')).toEqual([{ v: 1 }]);
  });
});

describe("class 9: statements that change the shared connection never run inside another handle's transaction", () => {
  it('beside a concurrent transaction: the transaction is parked and the statement takes effect', async () => {
    const db = memory('PRAGMA foreign_keys = OFF; CREATE TABLE p (id INTEGER PRIMARY KEY); CREATE TABLE c (pid REFERENCES p)');
    const a = scope.connect(db);
    const b = scope.connect(db);
    a.exec('BEGIN CONCURRENT');
    a.run('INSERT INTO p VALUES (1)');
    b.exec('PRAGMA foreign_keys = ON');
    expect(b.get('PRAGMA foreign_keys')).toEqual({ foreign_keys: 1 });
    b.exec('VACUUM');
    a.run('INSERT INTO c VALUES (1)');
    a.exec('COMMIT');
    expectSqliteError(() => b.run('INSERT INTO c VALUES (5)'), 'constraint');
  });

  it('beside a pessimistic transaction: a clear BusyError, and nothing changed', () => {
    const db = memory('CREATE TABLE t (v)');
    const a = scope.connect(db);
    const b = scope.connect(db);
    a.exec('BEGIN IMMEDIATE');
    a.run('INSERT INTO t VALUES (1)');
    for (const sql of ['PRAGMA foreign_keys = OFF', 'VACUUM', 'PRAGMA recursive_triggers = 0', "ATTACH ':memory:' AS aux"]) {
      const e = thrown(() => b.exec(sql));
      expect(e).toBeInstanceOf(BusyError);
      expect((e as Error).message).toMatch(/handle #/);
    }
    a.exec('COMMIT');
    expect(b.get('PRAGMA foreign_keys')).toEqual({ foreign_keys: 1 });
  });

  it('inside BEGIN CONCURRENT: a misuse error, the transaction stays open', () => {
    const db = memory('CREATE TABLE t (v)');
    const a = scope.connect(db);
    a.exec('BEGIN CONCURRENT');
    a.run('INSERT INTO t VALUES (1)');
    expectSqliteError(() => a.exec('PRAGMA foreign_keys = OFF'), 'misuse');
    expectSqliteError(() => a.exec('VACUUM'), 'misuse');
    a.exec('COMMIT');
    expect(db.get('PRAGMA foreign_keys')).toEqual({ foreign_keys: 1 });
    expect(db.all('SELECT v FROM t')).toEqual([{ v: 1 }]);
  });

  it('reading a setting and table-valued PRAGMAs still run beside any transaction', () => {
    const db = memory('CREATE TABLE t (v)');
    const a = scope.connect(db);
    const b = scope.connect(db);
    a.exec('BEGIN IMMEDIATE');
    expect(b.get('PRAGMA foreign_keys')).toEqual({ foreign_keys: 1 });
    expect(b.all("PRAGMA table_info('t')").length).toBe(1);
    a.exec('COMMIT');
  });
});

describe('class 1: a write re-derived differently on resume makes later reads of what it wrote be re-checked', () => {
  it('a write that reads another table: the value it wrote changed, the read of it is re-checked', async () => {
    const db = memory('CREATE TABLE cfg (x INT); INSERT INTO cfg VALUES (5); CREATE TABLE t (id INTEGER PRIMARY KEY, v INT); INSERT INTO t VALUES (1, 0)');
    const a = scope.connect(db);
    const b = scope.connect(db);
    a.exec('BEGIN CONCURRENT');
    a.run('UPDATE t SET v = (SELECT x FROM cfg) WHERE id = 1');
    expect(a.get('SELECT v FROM t WHERE id = 1')).toEqual({ v: 5 });
    await tick();
    b.run('UPDATE cfg SET x = 7');
    const e = thrown(() => a.exec('COMMIT'));
    expect(errorKind(e)).toBe('busy_snapshot');
    expect(db.get('SELECT v FROM t')).toEqual({ v: 0 });
  });

  it('a write with random(): when it is re-run, the read of what it wrote is re-checked', async () => {
    const db = memory('CREATE TABLE t (id INTEGER PRIMARY KEY, v INT); INSERT INTO t VALUES (1, 0); CREATE TABLE u (x)');
    const a = scope.connect(db);
    const b = scope.connect(db);
    a.exec('BEGIN CONCURRENT');
    a.run('UPDATE t SET v = random() WHERE id = 1');
    const seen = a.get<{ v: number }>('SELECT v FROM t WHERE id = 1')!.v;
    await tick();
    b.run('INSERT INTO u VALUES (1)'); // parks a: a's write runs again on resume
    let committed = true;
    try {
      a.exec('COMMIT');
    } catch (e) {
      expect(errorKind(e)).toBe('busy_snapshot');
      committed = false;
    }
    // Either the value a saw is the value committed, or a did not commit.
    if (committed) expect(db.get('SELECT v FROM t')).toEqual({ v: seen });
    else expect(db.get('SELECT v FROM t')).toEqual({ v: 0 });
  });

  it('a trigger whose WHEN reads another table no longer fires on replay: the read of its effect is re-checked', async () => {
    const db = memory(
      'CREATE TABLE cfg (flag INT); INSERT INTO cfg VALUES (1); CREATE TABLE t (id INTEGER PRIMARY KEY, v INT); INSERT INTO t VALUES (1, 0);' +
        'CREATE TABLE audit (v); CREATE TRIGGER tr AFTER UPDATE ON t WHEN (SELECT flag FROM cfg) BEGIN INSERT INTO audit VALUES (new.v); END;',
    );
    const a = scope.connect(db);
    const b = scope.connect(db);
    a.exec('BEGIN CONCURRENT');
    a.run('UPDATE t SET v = v + 1');
    expect(a.get('SELECT count(*) AS n FROM audit')).toEqual({ n: 1 });
    await tick();
    b.run('UPDATE cfg SET flag = 0');
    expect(errorKind(thrown(() => a.exec('COMMIT')))).toBe('busy_snapshot');
  });

  it('an upsert whose path changes on replay (insert, then update): the trigger it fired no longer does', async () => {
    const db = memory(
      'CREATE TABLE kv (k TEXT PRIMARY KEY, v INT) WITHOUT ROWID; CREATE TABLE audit (k);' +
        "CREATE TRIGGER ins AFTER INSERT ON kv BEGIN INSERT INTO audit VALUES (new.k); END; INSERT INTO kv VALUES ('y', 0); DELETE FROM audit;",
    );
    const a = scope.connect(db);
    const b = scope.connect(db);
    a.exec('BEGIN CONCURRENT');
    expect(a.run("INSERT INTO kv VALUES ('x', 1) ON CONFLICT (k) DO UPDATE SET v = excluded.v").changes).toBe(1);
    expect(a.all('SELECT k FROM audit')).toEqual([{ k: 'x' }]);
    await tick();
    b.run("UPDATE kv SET k = 'x' WHERE k = 'y'"); // creates 'x' without touching audit
    expect(errorKind(thrown(() => a.exec('COMMIT')))).toBe('busy_snapshot');
  });
});

describe('class 6: AUTOINCREMENT ids are never reused while rowids are reserved', () => {
  it('the rowid chosen beside a reservation respects sqlite_sequence', () => {
    const db = memory('CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, v)');
    const a = scope.connect(db);
    const b = scope.connect(db);
    a.exec('BEGIN CONCURRENT');
    expect(a.run("INSERT INTO t (v) VALUES ('a')").lastInsertRowid).toBe(1); // reserved
    expect(b.run("INSERT INTO t (v) VALUES ('b')").lastInsertRowid).toBe(2);
    b.run('DELETE FROM t WHERE id = 2');
    // 2 was used: AUTOINCREMENT never hands it out again.
    expect(b.run("INSERT INTO t (v) VALUES ('c')").lastInsertRowid).toBe(3);
    a.exec('COMMIT');
    expect(db.all('SELECT id, v FROM t ORDER BY id')).toEqual([
      { id: 1, v: 'a' },
      { id: 3, v: 'c' },
    ]);
  });
});

describe('class 8: reserved rowids are never handed to other insert shapes; lastInsertRowid is never stale', () => {
  for (const autoincrement of [false, true]) {
    it(`INSERT ... SELECT, several VALUES rows, DEFAULT VALUES, OR REPLACE${autoincrement ? ' (AUTOINCREMENT)' : ''}`, async () => {
      const db = memory(`CREATE TABLE t (id INTEGER PRIMARY KEY${autoincrement ? ' AUTOINCREMENT' : ''}, v DEFAULT 'd', u UNIQUE)`);
      const a = scope.connect(db);
      const b = scope.connect(db);
      a.exec('BEGIN CONCURRENT');
      const mine = a.run("INSERT INTO t (v) VALUES ('a')").lastInsertRowid; // rowid 1, reserved
      await tick();
      const shapes = [
        "INSERT INTO t (v) SELECT 'sel'",
        "INSERT INTO t (v) VALUES ('m1'), ('m2')",
        'INSERT INTO t DEFAULT VALUES',
        "INSERT OR REPLACE INTO t (v, u) VALUES ('r', 1)",
        "REPLACE INTO t (v, u) VALUES ('r2', 1)",
      ];
      for (const sql of shapes) {
        try {
          b.run(sql);
        } catch (e) {
          // A plain rowid table may refuse a multi-row shape while the reservation is held.
          expect(autoincrement).toBe(false);
          expect(e).toBeInstanceOf(BusyError);
        }
      }
      expect(db.get('SELECT count(*) AS n FROM t WHERE id = ?', [mine])).toEqual({ n: 0 });
      a.exec('COMMIT'); // no false conflict
      expect(db.get('SELECT v FROM t WHERE id = ?', [mine])).toEqual({ v: 'a' });
    });
  }

  it('a plain rowid table: the shapes that cannot be steered still succeed when they land above the reservations', async () => {
    const db = memory('CREATE TABLE t (id INTEGER PRIMARY KEY, v); INSERT INTO t VALUES (10, 0)');
    const a = scope.connect(db);
    const b = scope.connect(db);
    a.exec('BEGIN CONCURRENT');
    a.run('DELETE FROM t WHERE id = 10');
    expect(a.run("INSERT INTO t (v) VALUES ('a')").lastInsertRowid).toBe(1);
    await tick();
    b.run("INSERT INTO t (id, v) VALUES (20, 'b')");
    b.run("INSERT INTO t (v) SELECT 'sel'");
    b.run("INSERT INTO t (v) VALUES ('m1'), ('m2')");
    expect(b.all('SELECT id FROM t WHERE id > 20 ORDER BY id')).toEqual([{ id: 21 }, { id: 22 }, { id: 23 }]);
    a.exec('COMMIT');
  });

  it('lastInsertRowid of an insert into a WITHOUT ROWID table is not another handle\'s rowid', async () => {
    const db = memory('CREATE TABLE w (k TEXT PRIMARY KEY, v) WITHOUT ROWID; CREATE TABLE t (id INTEGER PRIMARY KEY)');
    const a = scope.connect(db);
    const b = scope.connect(db);
    b.run('INSERT INTO t VALUES (77)');
    a.exec('BEGIN CONCURRENT');
    const r = a.run("INSERT INTO w VALUES ('x', 1)");
    expect(r.lastInsertRowid).toBe(0);
    await tick();
    b.run('INSERT INTO t VALUES (78)'); // parks a: the replayed insert must show the same
    a.exec('COMMIT');
    expect(a.run("INSERT INTO w VALUES ('y', 1) ON CONFLICT (k) DO UPDATE SET v = 2").lastInsertRowid).toBe(0);
  });

  it('an upsert that inserts the rowid equal to the engine\'s stale value reports it', () => {
    const db = memory('CREATE TABLE t (id INTEGER PRIMARY KEY, k UNIQUE, v)');
    const a = scope.connect(db);
    const b = scope.connect(db);
    b.run("INSERT INTO t (k, v) VALUES ('b', 0)"); // rowid 1: the engine's last rowid
    b.run('DELETE FROM t');
    // a's upsert inserts; SQLite picks rowid 1 again (the table is empty), equal to the stale value.
    expect(a.run("INSERT INTO t (k, v) VALUES ('a', 1) ON CONFLICT (k) DO UPDATE SET v = excluded.v").lastInsertRowid).toBe(1);
    // An upsert that only updates reports no insert: a's last rowid stays.
    b.run("INSERT INTO t (k, v) VALUES ('c', 0)");
    expect(a.run("INSERT INTO t (k, v) VALUES ('a', 2) ON CONFLICT (k) DO UPDATE SET v = excluded.v").lastInsertRowid).toBe(1);
  });
});
