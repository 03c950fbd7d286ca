/**
 * Failures inside the engine's one real transaction, which every handle's work shares, must not
 * leave siblite's record of who is in it and the real transaction itself disagreeing.
 *
 * 1. An undo that fails (`ROLLBACK TO x; RELEASE x`, `RELEASE`, `ROLLBACK`: an I/O error, out of
 *    memory, a lock). Before, a failed undo could leave a transaction marked active whose rows
 *    were gone (its next statement ran on a state without its earlier writes, or in
 *    autocommit), or a real transaction nobody owned (another handle's autocommit write ran
 *    inside it and was lost later, after it had returned). Now the whole real transaction is
 *    ended instead (SQLite completes a ROLLBACK once it runs), and everyone who was in it counts
 *    as moved out: parked transactions replay their logs, a commit group's applied members are
 *    replayed at its flush. If even the ROLLBACK cannot run, the engine refuses every further
 *    statement. Faults are injected at the engine's `exec` (helpers.ts, injectExecFaults) on
 *    the real engine and a real file, in each shape such a failure can take.
 * 2. Another handle's statement that fails with an I/O error, a full disk or out of memory: SQLite
 *    then rolls the whole real transaction back, that of the transaction whose uncommitted
 *    state was in the engine included. Before, that transaction went on as if it were still
 *    there: its next write ran in autocommit and stayed even when it rolled back. A real `EIO`
 *    from the file system (node's `fs.readSync` failing once) on a real file triggers it.
 */
import { describe, expect, it } from 'vitest';
import { commitAsync, groupCommitStats, open, type Connection } from '../src/index.js';
import { sqliteError } from '../src/errors.js';
import { checkSqliteError, failNextRead, FAULT_SHAPES, injectExecFaults, thrown, useScope, type FaultShape } from './helpers.js';

const scope = useScope();

/** Makes the engine's next `exec` of SQL matching `match` fail in `shape`; returns whether it has. */
function failNext(conn: Connection, match: RegExp, shape: FaultShape): () => boolean {
  let fired = false;
  const stop = injectExecFaults(conn, (sql) => {
    if (fired || !match.test(sql)) return undefined;
    fired = true;
    stop();
    return shape;
  });
  return () => fired;
}

/** Runs `write`; if it fails with an I/O error, runs it once more (it must then work). */
function tolerateIo(write: () => unknown): void {
  try {
    write();
  } catch (e) {
    checkSqliteError(e, 'io');
    write();
  }
}

function fileDb(window: number): Connection {
  const db = scope.open(scope.file(), { groupCommit: { window } });
  db.exec('CREATE TABLE acct (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)');
  for (let i = 1; i <= 4; i++) db.run('INSERT INTO acct (id, n) VALUES (?, 0)', [i]);
  return db;
}

function totals(db: Connection): number[] {
  return db.all<{ n: number }>('SELECT n FROM acct ORDER BY id').map((r) => r.n);
}

describe('an undo that fails leaves the engine consistent', () => {
  for (const shape of FAULT_SHAPES) {
    // The transaction on top of a group's applied members is moved out with ROLLBACK TO when
    // another one needs the top. Before: a failure after the ROLLBACK TO left it marked active,
    // so its next statement ran without its first write (a lost update), or in autocommit.
    it(`moving the top transaction out of a commit group (${shape})`, async () => {
      const db = fileDb(30);
      const [a, b, c] = [scope.connect(db), scope.connect(db), scope.connect(db)];
      a.exec('BEGIN CONCURRENT');
      a.run('UPDATE acct SET n = n + 1 WHERE id = 1');
      const pa = commitAsync(a); // applied in the engine until the flush
      b.exec('BEGIN CONCURRENT');
      b.run('UPDATE acct SET n = n + 1 WHERE id = 2'); // on top of a
      expect(groupCommitStats(db).stacked).toBe(1);
      const fired = failNext(db, /^ROLLBACK TO siblite_group_top/, shape);
      c.exec('BEGIN CONCURRENT');
      // Needs the top: b moves out. The failure is not the statement's to report (nothing is
      // lost), but the consistency of what follows is the point, so an I/O error is tolerated.
      tolerateIo(() => c.run('UPDATE acct SET n = n + 1 WHERE id = 3'));
      expect(fired()).toBe(true);
      b.run('UPDATE acct SET n = n + 1 WHERE id = 2'); // b's first write must still be there
      await Promise.all([pa, commitAsync(b), commitAsync(c)]);
      expect(totals(db)).toEqual([1, 2, 1, 0]);
      expect(groupCommitStats(db).outside).toBe(0);
      expect(db.get('PRAGMA integrity_check')).toEqual({ integrity_check: 'ok' });
    });

    // Something outside the group (an autocommit write) rolls the applied members back. Before:
    // a ROLLBACK refused left their real transaction open with nobody owning it, and the next
    // autocommit write ran inside it and was lost when the flush rolled it back.
    it(`rolling a commit group's applied members back for an autocommit write (${shape})`, async () => {
      const db = fileDb(30);
      const [a, b, x] = [scope.connect(db), scope.connect(db), scope.connect(db)];
      a.exec('BEGIN CONCURRENT');
      a.run('UPDATE acct SET n = n + 1 WHERE id = 1');
      const pa = commitAsync(a);
      b.exec('BEGIN CONCURRENT');
      b.run('UPDATE acct SET n = n + 1 WHERE id = 2');
      const pb = commitAsync(b);
      const fired = failNext(db, /^ROLLBACK$/, shape);
      tolerateIo(() => x.run('UPDATE acct SET n = n + 10 WHERE id = 4'));
      x.run('UPDATE acct SET n = n + 10 WHERE id = 4');
      expect(fired()).toBe(true);
      await Promise.all([pa, pb]);
      expect(totals(db)).toEqual([1, 1, 0, 20]);
      expect(groupCommitStats(db).outside).toBe(0);
    });
  }

  // A lone member of a group commits with its own COMMIT, in the real transaction it was applied
  // in. Before: when a transaction had run on top of it (and read its uncommitted rows) and that
  // COMMIT failed, the rows vanished unseen, and the transaction on top committed what it had
  // computed from them (a lost update).
  it('a lone group member whose own COMMIT fails: the transaction that read its rows on top re-checks them', async () => {
    const db = fileDb(20);
    const [a, b] = [scope.connect(db), scope.connect(db)];
    a.exec('BEGIN CONCURRENT');
    a.run('UPDATE acct SET n = n + 1 WHERE id = 1');
    const pa = commitAsync(a); // applied until the flush, 20 ms from now
    b.exec('BEGIN CONCURRENT');
    const seen = b.get<{ n: number }>('SELECT n FROM acct WHERE id = 1')!.n; // on top of a: its uncommitted row
    expect(seen).toBe(1);
    expect(groupCommitStats(db).stacked).toBe(1);
    b.run('UPDATE acct SET n = ? WHERE id = 2', [seen + 10]);
    const fired = failNext(db, /^COMMIT$/, 'ends'); // a's COMMIT fails and rolls back
    checkSqliteError(await pa.then(() => undefined, (e: unknown) => e), 'io', /^SQLITE_IOERR/);
    expect(fired()).toBe(true);
    checkSqliteError(thrown(() => b.exec('COMMIT')), 'busy_snapshot', 'SQLITE_BUSY_SNAPSHOT');
    expect(totals(db)).toEqual([0, 0, 0, 0]);
  });

  for (const shape of FAULT_SHAPES) {
    // An INSERT that would take a rowid another transaction was told is undone with ROLLBACK TO.
    // Before: an undo refused before it ran left the INSERT's row in the transaction, which then
    // committed a statement its handle had been told failed.
    it(`undoing an INSERT that would take a reserved rowid (${shape})`, async () => {
      const db = scope.open(':memory:');
      db.exec("CREATE TABLE t (id INTEGER PRIMARY KEY, v); CREATE TABLE log (v); INSERT INTO log VALUES ('x')");
      const [a, b] = [scope.connect(db), scope.connect(db)];
      a.exec('BEGIN CONCURRENT');
      expect(a.run("INSERT INTO t (v) VALUES ('a')").lastInsertRowid).toBe(1); // rowid 1, reserved
      b.exec('BEGIN CONCURRENT');
      b.run("UPDATE log SET v = 'b'");
      const fired = failNext(db, /^ROLLBACK TO siblite_rowids/, shape);
      const e = thrown(() => b.run("INSERT INTO t (v) SELECT 'sel'"));
      expect(fired()).toBe(true);
      // Refused as before (a retryable busy error); b is parked and keeps its earlier write.
      checkSqliteError(e, 'busy', 'SQLITE_BUSY');
      expect(b.inTransaction).toBe(true);
      b.exec('COMMIT');
      a.exec('COMMIT');
      expect(db.all('SELECT id, v FROM t')).toEqual([{ id: 1, v: 'a' }]);
      expect(db.get('SELECT v FROM log')).toEqual({ v: 'b' });
    });
  }

  for (const shape of ['before', 'ends'] as const) {
    // An autocommit INSERT that cannot be given its rowids runs in a savepoint whose RELEASE is
    // its commit. Before: a RELEASE that failed and left the transaction open (a lock, shape
    // 'before') left a real transaction nobody owned: every BEGIN failed from then on, and the
    // next autocommit writes ran inside it and were lost.
    it(`an autocommit INSERT beside reserved rowids whose commit fails (${shape}): it changes nothing, nothing is wedged`, async () => {
      const db = scope.open(':memory:');
      db.exec('CREATE TABLE t (id INTEGER PRIMARY KEY, v); INSERT INTO t (v) VALUES (1), (2), (3), (4)');
      const [a, b, c] = [scope.connect(db), scope.connect(db), scope.connect(db)];
      a.exec('BEGIN CONCURRENT');
      expect(a.run("INSERT INTO t (v) VALUES ('a')").lastInsertRowid).toBe(5); // reserved
      db.run('DELETE FROM t WHERE id < 5'); // SQLite would number the next rows from 1, below the reservation
      const fired = failNext(db, /^RELEASE siblite_rowids/, shape);
      checkSqliteError(thrown(() => b.run("INSERT INTO t (v) SELECT 'sel'")), 'io');
      expect(fired()).toBe(true);
      expect(db.get('SELECT count(*) AS n FROM t WHERE v = ?', ['sel'])).toEqual({ n: 0 });
      b.run("INSERT INTO t (v) VALUES ('b')");
      c.exec('BEGIN CONCURRENT');
      c.run("INSERT INTO t (v) VALUES ('c')");
      c.exec('COMMIT');
      a.exec('COMMIT');
      expect(db.all('SELECT v FROM t ORDER BY v')).toEqual([{ v: 'a' }, { v: 'b' }, { v: 'c' }]);
      expect(db.get('SELECT id FROM t WHERE v = ?', ['a'])).toEqual({ id: 5 });
    });
  }

  // A ROLLBACK that cannot run at all (both ways of running it refused): the engine refuses
  // everything rather than let a statement run inside a transaction nobody owns.
  it('a real transaction that cannot be ended: every handle refuses statements, closing works, nothing uncommitted persists', async () => {
    const file = scope.file();
    const db = scope.open(file);
    db.exec('CREATE TABLE acct (id INTEGER PRIMARY KEY, n INTEGER NOT NULL); INSERT INTO acct VALUES (1, 0), (2, 0)');
    const [a, x] = [scope.connect(db), scope.connect(db)];
    a.exec('BEGIN CONCURRENT');
    a.run('UPDATE acct SET n = 5 WHERE id = 1'); // a is in the engine's real transaction
    const engine = db.session.engine as unknown as { db: { exec(sql: string): void } };
    const realDbExec = engine.db.exec;
    const stop = injectExecFaults(db, () => {
      throw sqliteError('out of memory (injected)', 'SQLITE_NOMEM');
    });
    engine.db.exec = () => {
      throw new Error('out of memory (injected)');
    };
    try {
      const e = thrown(() => x.run('UPDATE acct SET n = 7 WHERE id = 2')); // must park a: cannot
      expect((e as Error).message).toMatch(/could not roll back a transaction/);
    } finally {
      stop();
      engine.db.exec = realDbExec;
    }
    for (const h of [db, a, x]) {
      const e = checkSqliteError(thrown(() => h.get('SELECT n FROM acct WHERE id = 2')), 'other', 'SQLITE_NOMEM');
      expect(e.message).toMatch(/refuses statements/);
    }
    for (const h of [x, a, db]) h.close();
    const again = scope.open(file);
    expect(again.all('SELECT n FROM acct ORDER BY id')).toEqual([{ n: 0 }, { n: 0 }]);
  });
});

/**
 * A file whose table `t2` no handle has read yet (a fresh open: its pages are not cached), so
 * that a read of it goes to the disk.
 */
function freshFile(): Connection {
  const file = scope.file();
  const setup = open(file);
  setup.exec(`CREATE TABLE t1 (id INTEGER PRIMARY KEY, n INTEGER NOT NULL); INSERT INTO t1 VALUES (1, 0), (2, 0);
    CREATE TABLE t2 (n); WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 2000) INSERT INTO t2 SELECT x FROM c`);
  setup.close();
  return scope.open(file);
}

describe("another handle's statement that fails and makes SQLite roll the real transaction back", () => {
  for (const end of ['ROLLBACK', 'COMMIT'] as const) {
    for (const reader of ['autocommit', 'concurrent'] as const) {
      it(`a concurrent transaction in the engine is parked, not lost: its next write and ${end} are exact (${reader} read)`, () => {
        const db = freshFile();
        const [a, b] = [scope.connect(db), scope.connect(db)];
        a.exec('BEGIN CONCURRENT');
        a.run('UPDATE t1 SET n = n + 1 WHERE id = 1'); // a's uncommitted row is in the real transaction
        if (reader === 'concurrent') b.exec('BEGIN CONCURRENT');
        const read = failNextRead();
        // b's read runs beside a, in a's real transaction: the disk fails it.
        checkSqliteError(thrown(() => b.get('SELECT sum(n) AS s FROM t2')), 'io', /^SQLITE_IOERR/);
        expect(read()).toBe(true);
        a.run('UPDATE t1 SET n = n + 1 WHERE id = 2');
        a.exec(end);
        expect(totals2(db)).toEqual(end === 'COMMIT' ? [1, 1] : [0, 0]);
        if (reader === 'concurrent') {
          // b's log holds the read's failure; it now succeeds, so b conflicts (or committed nothing to check).
          try {
            b.exec('COMMIT');
          } catch (e) {
            checkSqliteError(e, 'busy_snapshot', 'SQLITE_BUSY_SNAPSHOT');
          }
        }
        expect(b.get('SELECT sum(n) AS s FROM t2')).toEqual({ s: 2001000 });
        expect(db.get('PRAGMA integrity_check')).toEqual({ integrity_check: 'ok' });
      });
    }
  }

  // COMMIT of a read-only concurrent transaction re-checks its reads in place, inside the real
  // transaction of the one in the engine (through transaction() too, which commits without a statement).
  for (const via of ['COMMIT', 'transaction()'] as const) {
    it(`a read-only transaction's re-check that fails at COMMIT parks the transaction in the engine (${via})`, async () => {
      const db = freshFile();
      db.exec('PRAGMA cache_size = 2'); // the re-check reads t2 from the disk
      const [a, b] = [scope.connect(db), scope.connect(db)];
      const rechecked = (async () => {
        const read = () => b.get('SELECT sum(n) AS s FROM t2');
        if (via === 'COMMIT') {
          b.exec('BEGIN CONCURRENT');
          read();
          await Promise.resolve();
          return thrown(() => b.exec('COMMIT'));
        }
        return b.transaction(async () => {
          read();
          await Promise.resolve();
        }, { retry: false }).then(() => undefined, (e: unknown) => e);
      })();
      db.run('UPDATE t2 SET n = n WHERE rowid = 1'); // a commit to t2: b's read is re-checked
      a.exec('BEGIN CONCURRENT');
      a.run('UPDATE t1 SET n = n + 1 WHERE id = 1'); // a is in the engine
      const disk = failNextRead();
      const e = await rechecked;
      expect(disk()).toBe(true);
      checkSqliteError(e, 'io', /^SQLITE_IOERR/);
      a.run('UPDATE t1 SET n = n + 1 WHERE id = 2');
      a.exec('ROLLBACK');
      expect(totals2(db)).toEqual([0, 0]);
    });
  }

  it('a pessimistic transaction in the engine ends with an error saying why, its rows are gone, the handle works again', () => {
    const db = freshFile();
    const [a, b] = [scope.connect(db), scope.connect(db)];
    a.exec('BEGIN IMMEDIATE');
    a.run('UPDATE t1 SET n = n + 1 WHERE id = 1');
    const read = failNextRead();
    checkSqliteError(thrown(() => b.get('SELECT sum(n) AS s FROM t2')), 'io', /^SQLITE_IOERR/);
    expect(read()).toBe(true);
    const e = checkSqliteError(thrown(() => a.run('UPDATE t1 SET n = n + 1 WHERE id = 2')), 'io', /^SQLITE_IOERR/);
    expect(e.message).toMatch(/was rolled back: a statement of another handle failed/);
    expect(a.inTransaction).toBe(false);
    expect(totals2(db)).toEqual([0, 0]);
    a.exec('BEGIN IMMEDIATE');
    a.run('UPDATE t1 SET n = n + 1 WHERE id = 2');
    a.exec('COMMIT');
    expect(totals2(db)).toEqual([0, 1]);
  });
});

function totals2(db: Connection): number[] {
  return db.all<{ n: number }>('SELECT n FROM t1 ORDER BY id').map((r) => r.n);
}
