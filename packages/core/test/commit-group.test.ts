// Group commit (packages/core/src/commit-group.ts): concurrent transaction() commits on a file
// that become ready in one turn of the event loop share one real COMMIT; each member is still
// validated on its own and fails alone.
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { commitAsync, groupCommitStats, open, type Connection } from '../src/index.js';
import { checkSqliteError, useScope } from './helpers.js';

const scope = useScope();

function fileDb(options: Parameters<typeof open>[1] = {}): Connection {
  const db = scope.open(scope.file(), options);
  db.exec('CREATE TABLE acct (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)');
  db.exec('CREATE TABLE other (id INTEGER PRIMARY KEY, v TEXT)');
  for (let i = 1; i <= 40; i++) db.run('INSERT INTO acct (id, n) VALUES (?, 0)', [i]);
  return db;
}

/** `n` handles, each with a BEGIN CONCURRENT that inserted 'h<i>' into `other`, committing through commitAsync(). */
function pendingInserts(db: Connection, n: number): { hs: Connection[]; commits: Promise<void>[] } {
  const hs = Array.from({ length: n }, () => scope.connect(db));
  const commits = hs.map((h, i) => {
    h.exec('BEGIN CONCURRENT');
    h.run('INSERT INTO other (v) VALUES (?)', [`h${i}`]);
    return commitAsync(h);
  });
  return { hs, commits };
}

describe('group commit', () => {
  it('commits 32 handlers that read, await and write their own row in shared commits, totals exact', async () => {
    const db = fileDb();
    const before = groupCommitStats(db);
    await Promise.all(
      Array.from({ length: 32 }, async (_, i) => {
        const h = scope.connect(db);
        for (let k = 0; k < 5; k++) {
          await h.transaction(async (tx) => {
            const { n } = tx.get<{ n: number }>('SELECT n FROM acct WHERE id = ?', [i + 1])!;
            await sleep(2);
            tx.run('UPDATE acct SET n = ? WHERE id = ?', [n + 1, i + 1]);
          });
        }
      }),
    );
    const stats = groupCommitStats(db);
    expect(db.get<{ s: number }>('SELECT sum(n) AS s FROM acct')!.s).toBe(160);
    expect(stats.groups - before.groups).toBeGreaterThan(0);
    expect(stats.committed).toBeGreaterThan(stats.groups); // groups of more than one
    expect(stats.conflicts).toBe(0);
    expect(stats.stacked).toBeGreaterThan(0); // writers ran on top of pending members
  });

  it('fails only the conflicting member of a group (a or b, whichever comes later in it); its retry then commits', async () => {
    const db = fileDb();
    const a = scope.connect(db);
    const b = scope.connect(db);
    const c = scope.connect(db);
    let runs = 0;
    // One shared timer: the three callbacks go on in one turn, so their commits form one group.
    const gate = sleep(5);
    // a and b both read-modify-write row 1 and commit in the same turn: serially, b must see a.
    // c writes another table in the same group.
    await Promise.all([
      a.transaction(async (tx) => {
        runs++;
        const { n } = tx.get<{ n: number }>('SELECT n FROM acct WHERE id = 1')!;
        await gate;
        tx.run('UPDATE acct SET n = ? WHERE id = 1', [n + 10]);
      }),
      b.transaction(async (tx) => {
        runs++;
        const { n } = tx.get<{ n: number }>('SELECT n FROM acct WHERE id = 1')!;
        await gate;
        tx.run('UPDATE acct SET n = ? WHERE id = 1', [n + 1]);
      }),
      c.transaction(async (tx) => {
        await gate;
        tx.run("INSERT INTO other (v) VALUES ('c')");
      }),
    ]);
    expect(db.get<{ n: number }>('SELECT n FROM acct WHERE id = 1')!.n).toBe(11);
    expect(db.get<{ v: string }>('SELECT v FROM other')!.v).toBe('c');
    expect(runs).toBeGreaterThanOrEqual(3); // a or b ran again
    expect(groupCommitStats(db).conflicts).toBeGreaterThanOrEqual(1);
  });

  it('a conflicting member rejects with SQLITE_BUSY_SNAPSHOT while the others commit (no retry)', async () => {
    const db = fileDb();
    const hs = [scope.connect(db), scope.connect(db), scope.connect(db)];
    const gate = sleep(5);
    const results = await Promise.allSettled(
      hs.map((h, i) =>
        h.transaction(
          async (tx) => {
            const { n } = tx.get<{ n: number }>('SELECT n FROM acct WHERE id = 1')!;
            await gate;
            // Handles 0 and 1 both increment row 1 (one must fail); handle 2 writes row 3.
            tx.run('UPDATE acct SET n = ? WHERE id = ?', [n + 1, i < 2 ? 1 : 3]);
          },
          { retry: false },
        ),
      ),
    );
    const failed = results.filter((r) => r.status === 'rejected');
    expect(failed).toHaveLength(1);
    checkSqliteError((failed[0] as PromiseRejectedResult).reason, 'busy_snapshot', 'SQLITE_BUSY_SNAPSHOT');
    expect(db.get<{ n: number }>('SELECT n FROM acct WHERE id = 1')!.n).toBe(1);
    expect(db.get<{ n: number }>('SELECT n FROM acct WHERE id = 3')!.n).toBe(1);
  });

  it('a member that fails at COMMIT (deferred foreign key) fails alone; the others commit', async () => {
    const db = scope.open(scope.file());
    db.exec('CREATE TABLE parent (id INTEGER PRIMARY KEY)');
    db.exec('CREATE TABLE child (id INTEGER PRIMARY KEY, p INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED)');
    db.exec('INSERT INTO parent (id) VALUES (1)');
    const hs = Array.from({ length: 4 }, () => scope.connect(db));
    const gate = sleep(3);
    const results = await Promise.allSettled(
      hs.map((h, i) =>
        h.transaction(
          async (tx) => {
            await gate;
            // Handle 2 points at a parent that does not exist: only COMMIT can tell.
            tx.run('INSERT INTO child (id, p) VALUES (?, ?)', [i + 1, i === 2 ? 99 : 1]);
          },
          { retry: false },
        ),
      ),
    );
    expect(results.map((r) => r.status)).toEqual(['fulfilled', 'fulfilled', 'rejected', 'fulfilled']);
    checkSqliteError((results[2] as PromiseRejectedResult).reason, 'constraint');
    expect(db.all<{ id: number }>('SELECT id FROM child ORDER BY id').map((r) => r.id)).toEqual([1, 2, 4]);
    expect(db.inTransaction).toBe(false);
    db.run('INSERT INTO child (id, p) VALUES (10, 1)'); // the engine is usable afterwards
  });

  it('groups members that write different tables, SQLite-chosen rowids included', async () => {
    const db = fileDb();
    const before = groupCommitStats(db);
    const ids = await Promise.all(
      Array.from({ length: 12 }, (_, i) =>
        scope.connect(db).transaction(async (tx) => {
          await sleep(2);
          if (i % 2 === 0) return Number(tx.run('INSERT INTO other (v) VALUES (?)', [`v${i}`]).lastInsertRowid);
          tx.run('UPDATE acct SET n = n + 1 WHERE id = 1');
          return -1;
        }),
      ),
    );
    const inserted = ids.filter((x) => x > 0);
    expect(new Set(inserted).size).toBe(6);
    const rows = db.all<{ id: number; v: string }>('SELECT id, v FROM other ORDER BY id');
    expect(rows.map((r) => r.id).sort((x, y) => x - y)).toEqual([...inserted].sort((x, y) => x - y));
    expect(db.get<{ n: number }>('SELECT n FROM acct WHERE id = 1')!.n).toBe(6);
    expect(groupCommitStats(db).committed - before.committed).toBeGreaterThan(0);
  });

  it('a rejected member leaves nothing; a resolved one is visible to a new process-level opener', async () => {
    const file = scope.file();
    const db = scope.open(file);
    db.exec('CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT UNIQUE)');
    const results = await Promise.allSettled(
      ['a', 'b', 'a', 'c'].map((v) =>
        scope.connect(db).transaction(
          async (tx) => {
            await sleep(2);
            tx.run('INSERT INTO t (v) VALUES (?)', [v]);
          },
          { retry: false },
        ),
      ),
    );
    // The second 'a' fails validation in the group: its insert now fails with UNIQUE.
    expect(results.filter((r) => r.status === 'rejected')).toHaveLength(1);
    expect(db.all<{ v: string }>('SELECT v FROM t ORDER BY v').map((r) => r.v)).toEqual(['a', 'b', 'c']);
  });

  it('off: groupCommit false on open, or per transaction', async () => {
    const db = fileDb({ groupCommit: false });
    await Promise.all(
      Array.from({ length: 4 }, (_, i) =>
        scope.connect(db).transaction(async (tx) => {
          await sleep(1);
          tx.run('UPDATE acct SET n = n + 1 WHERE id = ?', [i + 1]);
        }),
      ),
    );
    expect(groupCommitStats(db)).toEqual({ groups: 0, committed: 0, conflicts: 0, alone: 0, stacked: 0, outside: 0 });
    const db2 = fileDb();
    await Promise.all(
      Array.from({ length: 4 }, (_, i) =>
        scope.connect(db2).transaction(
          async (tx) => {
            await sleep(1);
            tx.run('UPDATE acct SET n = n + 1 WHERE id = ?', [i + 1]);
          },
          { groupCommit: false },
        ),
      ),
    );
    expect(groupCommitStats(db2).groups).toBe(0);
  });

  it('validates the option, and refuses a different setting for an engine already open', () => {
    const file = scope.file();
    for (const bad of [{ window: -1 }, { cap: 0 }, { cap: 1.5 }, 'yes', null]) {
      checkSqliteError(
        (() => {
          try {
            open(file, { groupCommit: bad as never });
          } catch (e) {
            return e;
          }
          return undefined;
        })(),
        'misuse',
      );
    }
    scope.open(file, { groupCommit: { window: 2 } });
    scope.open(file); // no option: whatever the engine has
    scope.open(file, { groupCommit: { window: 2, cap: 64 } });
    checkSqliteError(
      (() => {
        try {
          open(file, { groupCommit: false });
        } catch (e) {
          return e;
        }
        return undefined;
      })(),
      'misuse',
    );
  });

  it('commitAsync: hand-written BEGIN CONCURRENT transactions commit in one group; exec(COMMIT) stays alone and synchronous', async () => {
    const db = fileDb();
    const before = groupCommitStats(db);
    const hs = Array.from({ length: 5 }, () => scope.connect(db));
    for (const [i, h] of hs.entries()) {
      h.exec('BEGIN CONCURRENT');
      h.run('UPDATE acct SET n = n + 1 WHERE id = ?', [i + 1]);
    }
    const pending = hs.slice(0, 4).map((h) => commitAsync(h));
    hs[4]!.exec('COMMIT'); // synchronous: durable now, alone
    expect(hs[4]!.inTransaction).toBe(false);
    await Promise.all(pending);
    const after = groupCommitStats(db);
    expect(after.groups - before.groups).toBe(1);
    expect(after.committed - before.committed).toBe(4);
    expect(db.get<{ s: number }>('SELECT sum(n) AS s FROM acct WHERE id <= 5')!.s).toBe(5);
    for (const h of hs) expect(h.inTransaction).toBe(false);
    // Outside a concurrent transaction it is a plain COMMIT.
    await expect(commitAsync(hs[0]!)).rejects.toMatchObject({ kind: 'misuse' });
  });

  it('in-memory databases never group', async () => {
    const db = scope.open(':memory:');
    db.exec('CREATE TABLE t (id INTEGER PRIMARY KEY, n INT)');
    await Promise.all(Array.from({ length: 4 }, (_, i) => scope.connect(db).transaction((tx) => void tx.run('INSERT INTO t (n) VALUES (?)', [i]))));
    expect(groupCommitStats(db).groups).toBe(0);
  });
  // A handle whose transaction waits in a group must not end it itself: before, a synchronous
  // COMMIT of the last applied member committed the members below it, and the flush then
  // replayed them onto that commit (each of their blind INSERTs twice).
  it('a handle refuses statements while its transaction waits in a group: COMMIT, ROLLBACK and reads change nothing', async () => {
    const db = fileDb();
    const [a, b] = [scope.connect(db), scope.connect(db)];
    a.exec('BEGIN CONCURRENT');
    a.run("INSERT INTO other (v) VALUES ('a')");
    const pa = commitAsync(a); // a stays applied in the engine until the flush
    b.exec('BEGIN CONCURRENT');
    b.run("INSERT INTO other (v) VALUES ('b')"); // runs on top of a
    const pb = commitAsync(b); // b is applied above a
    for (const sql of ['COMMIT', 'ROLLBACK', 'SELECT 1', "INSERT INTO other (v) VALUES ('late')"]) {
      for (const h of [a, b]) {
        expect(() => h.exec(sql), sql).toThrow(expect.objectContaining({ kind: 'misuse', message: expect.stringContaining('is committing its transaction') }));
      }
    }
    expect(() => b.get('SELECT count(*) FROM other')).toThrow(expect.objectContaining({ kind: 'misuse' }));
    await Promise.all([pa, pb]);
    expect(db.all('SELECT v FROM other ORDER BY id')).toEqual([{ v: 'a' }, { v: 'b' }]);
    expect(groupCommitStats(db).outside).toBe(0);
    // Settled: the handles work again.
    expect(a.get<{ n: number }>('SELECT count(*) AS n FROM other')!.n).toBe(2);
    b.run("INSERT INTO other (v) VALUES ('after')");
    expect(db.all('SELECT v FROM other ORDER BY id')).toEqual([{ v: 'a' }, { v: 'b' }, { v: 'after' }]);
  });

  it('closing a handle whose transaction waits in a group rejects its commit (SIBLITE_CLOSED), the others commit once', async () => {
    const db = fileDb();
    const { hs, commits } = pendingInserts(db, 3);
    hs[1]!.close();
    const outcomes = await Promise.allSettled(commits);
    expect(outcomes.map((o) => o.status)).toEqual(['fulfilled', 'rejected', 'fulfilled']);
    checkSqliteError((outcomes[1] as PromiseRejectedResult).reason, 'closed', 'SIBLITE_CLOSED');
    expect(db.all('SELECT v FROM other ORDER BY v')).toEqual([{ v: 'h0' }, { v: 'h2' }]);
  });

  // The safety net behind the refusal above: whatever ends the group's real transaction with a
  // COMMIT, the members applied in it are durable and must be resolved, never replayed again.
  it('members whose real transaction something else committed resolve as committed, each once', async () => {
    const db = fileDb();
    const { hs, commits } = pendingInserts(db, 3);
    const engine = hs[0]!.session.engine;
    expect(engine.inRealTransaction).toBe(true);
    engine.exec('COMMIT'); // not the group's own COMMIT
    engine.exec('BEGIN'); // and a new real transaction opened in its place
    engine.exec('ROLLBACK');
    await Promise.all(commits);
    expect(db.all('SELECT v FROM other ORDER BY v')).toEqual([{ v: 'h0' }, { v: 'h1' }, { v: 'h2' }]);
    expect(groupCommitStats(db).outside).toBe(1);
    for (const h of hs) expect(h.inTransaction).toBe(false);
  });

  // The root cause of a double commit seen in the three-process stress loop: a synchronous
  // COMMIT (exec('COMMIT'), and transaction()'s commits in the priority lane and alone) brought
  // its parked transaction in on top of a group's applied members and so committed them behind
  // the group's back. A pessimistic transaction committed before the flush then moved the
  // engine's committedSerial on, the group took its members for rolled back and replayed them:
  // the call's retry committed it a second time (a#1 and a#2, the counter bumped twice).
  it('a synchronous COMMIT of a parked transaction never commits the applied members below it', async () => {
    for (const pessimisticAfter of [false, true]) {
      const db = scope.open(scope.file(), { groupCommit: { window: 20 } });
      db.exec('CREATE TABLE counter (id INTEGER PRIMARY KEY, v INT NOT NULL); INSERT INTO counter VALUES (1, 0); CREATE TABLE ledger (id INTEGER PRIMARY KEY, who TEXT)');
      const [a, b, c] = [scope.connect(db), scope.connect(db), scope.connect(db)];
      b.exec('BEGIN CONCURRENT');
      b.run("INSERT INTO ledger (who) VALUES ('b')");
      let attempts = 0;
      const pa = a.transaction((tx) => {
        attempts++;
        const { v } = tx.get<{ v: number }>('SELECT v FROM counter WHERE id = 1')!;
        tx.run('UPDATE counter SET v = ? WHERE id = 1', [v + 1]);
        tx.run('INSERT INTO ledger (who) VALUES (?)', [`a#${attempts}`]);
      });
      await Promise.resolve(); // a's callback returned: a is applied in the engine, b is parked
      b.exec('COMMIT');
      if (pessimisticAfter) c.exec("BEGIN IMMEDIATE; INSERT INTO ledger (who) VALUES ('c'); COMMIT");
      await pa;
      const who = db.all<{ who: string }>('SELECT who FROM ledger').map((r) => r.who).sort();
      expect({ pessimisticAfter, who, counter: db.get('SELECT v FROM counter')!.v, outside: groupCommitStats(db).outside }).toEqual({
        pessimisticAfter,
        who: pessimisticAfter ? ['a#1', 'b', 'c'] : ['a#1', 'b'],
        counter: 1,
        outside: 0,
      });
    }
  });

  // The safety net must hold even when another real transaction begins and commits before the
  // group looks again: it checks before any real transaction begins (Engine.exec), while the
  // engine's committedSerial still names its members' transaction.
  it('members whose real transaction something else committed resolve once, even after a later commit', async () => {
    const db = fileDb();
    const { hs, commits } = pendingInserts(db, 2);
    const engine = hs[0]!.session.engine;
    engine.exec('COMMIT'); // not the group's own COMMIT
    engine.exec('BEGIN'); // a later real transaction, committed too
    engine.exec('COMMIT');
    await Promise.all(commits);
    expect(db.all('SELECT v FROM other ORDER BY v')).toEqual([{ v: 'h0' }, { v: 'h1' }]);
    expect(groupCommitStats(db).outside).toBe(1);
  });

  // Found by attack-group.test.ts (a history that hung): a transaction() whose BEGIN IMMEDIATE
  // waited (a lock, its turn in the priority lane) while its handle was closed began anyway, for
  // the closed handle, and nothing ever ended it: every other handle was locked out for good.
  it('a BEGIN that waited while its handle was closed does not begin (the engine is not wedged)', async () => {
    const db = fileDb();
    const [h, x] = [db.connect(), scope.connect(db)];
    x.exec('BEGIN IMMEDIATE');
    const p = h.transaction((tx) => void tx.run("INSERT INTO other (v) VALUES ('h')"), { mode: 'immediate' });
    await sleep(20); // h's BEGIN waits for x
    h.close();
    x.exec('COMMIT');
    await expect(p).rejects.toMatchObject({ kind: 'closed' });
    await sleep(50);
    db.run("INSERT INTO other (v) VALUES ('after')");
    expect(db.all('SELECT v FROM other')).toEqual([{ v: 'after' }]);
  });

  it("refuses the engine's own savepoint names in user SQL (misuse, the transaction stays open)", async () => {
    const db = fileDb();
    const [a, b] = [scope.connect(db), scope.connect(db)];
    a.exec('BEGIN CONCURRENT');
    a.run("INSERT INTO other (v) VALUES ('a')");
    const pa = commitAsync(a); // a is applied: b runs on top of it in siblite_group_top
    b.exec('BEGIN CONCURRENT');
    b.run("INSERT INTO other (v) VALUES ('b')");
    for (const sql of ['RELEASE siblite_group_top', 'ROLLBACK TO "SIBLITE_GROUP_TOP"', 'SAVEPOINT siblite_group_member', 'RELEASE SAVEPOINT siblite_rowids']) {
      expect(() => b.exec(sql), sql).toThrow(expect.objectContaining({ kind: 'misuse', message: expect.stringContaining('reserved by siblite') }));
    }
    expect(b.inTransaction).toBe(true);
    await Promise.all([pa, commitAsync(b)]);
    expect(db.all('SELECT v FROM other ORDER BY id')).toEqual([{ v: 'a' }, { v: 'b' }]);
    expect(() => db.exec('SAVEPOINT siblite_group_top')).toThrow(expect.objectContaining({ kind: 'misuse' }));
    expect(db.inTransaction).toBe(false);
    expect(groupCommitStats(db).outside).toBe(0);
  });
});
