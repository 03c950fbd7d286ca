/**
 * Contention (issue 13, fairness): `transaction(fn, { mode: 'concurrent' })` that keeps failing
 * takes the engine's priority lane and runs pessimistically there, first come first served, so
 * nobody gives up on a hot row and no update is lost. Timing lives in the bench
 * (concurrent-cliffs, "32 handlers on 1 hot row"); these tests check what does not depend on it.
 */
import { describe, expect, it } from 'vitest';
import { BusyError, type Connection } from '../src/index.js';
import { isQueuedRefusal, LANE_AFTER_FAILURES, laneOf } from '../src/lane.js';
import { statementKey } from '../src/concurrent/hot-reads.js';
import { sleep, useScope } from './helpers.js';

const scope = useScope();

function hotRow(): Connection {
  const db = scope.open(':memory:');
  db.exec('CREATE TABLE hot (id INTEGER PRIMARY KEY, n INTEGER NOT NULL); INSERT INTO hot VALUES (1, 0)');
  return db;
}

/**
 * Makes `SELECT n FROM hot WHERE id = ?` with [1] hot: one transaction conflicts on it (another
 * handle adds 100 to row 1 under it), then reruns and adds 1. Row 1 ends at 101.
 */
async function makeRowOneHot(db: Connection): Promise<void> {
  const a = scope.connect(db);
  const other = scope.connect(db);
  let first = true;
  await a.transaction(
    (tx) => {
      const { n } = tx.get<{ n: number }>('SELECT n FROM hot WHERE id = ?', [1])!;
      if (first) other.run('UPDATE hot SET n = n + 100 WHERE id = 1');
      first = false;
      tx.run('UPDATE hot SET n = ? WHERE id = 1', [n + 1]);
    },
    { mode: 'concurrent', retry: { minTimeout: 0, maxTimeout: 0 } },
  );
}

describe('the priority lane', () => {
  it('32 handlers on one hot row with a small retry budget: nobody gives up, every increment lands, no transaction needs more than the lane allows', async () => {
    const db = hotRow();
    const handlers = Array.from({ length: 32 }, () => scope.connect(db));
    const perHandler = 4;
    let maxAttempts = 0;
    await Promise.all(
      handlers.map(async (h) => {
        for (let j = 0; j < perHandler; j++) {
          let attempts = 0;
          await h.transaction(
            async (tx) => {
              attempts++;
              const { n } = tx.get<{ n: number }>('SELECT n FROM hot WHERE id = 1')!;
              await sleep(1);
              tx.run('UPDATE hot SET n = ? WHERE id = 1', [n + 1]);
            },
            // Without the lane, some of 32 contenders exhaust this budget.
            { mode: 'concurrent', retry: { retries: LANE_AFTER_FAILURES, minTimeout: 1, maxTimeout: 4 } },
          );
          maxAttempts = Math.max(maxAttempts, attempts);
        }
      }),
    );
    expect(db.get<{ n: number }>('SELECT n FROM hot')!.n).toBe(32 * perHandler);
    // Optimistic attempts until the lane, then one that no other transaction() can overtake.
    expect(maxAttempts).toBeGreaterThan(1);
    expect(maxAttempts).toBeLessThanOrEqual(LANE_AFTER_FAILURES + 1);
  });

  it('in the lane, a transaction runs first with priority, then, if an autocommit write still got in its way, as BEGIN IMMEDIATE; an uncontended one never takes the lane', async () => {
    const db = hotRow();
    const a = scope.connect(db);
    const b = scope.connect(db);
    const modes: Array<string | null> = [];
    await a.transaction((tx) => {
      modes.push(tx.transactionMode);
    }, { mode: 'concurrent' });
    expect(modes).toEqual(['concurrent']);
    modes.length = 0;
    // b commits a change to the row a read before each of a's optimistic commits: autocommit
    // writes do not wait for the lane's priority holder, so only the pessimistic attempt commits.
    await a.transaction(
      async (tx) => {
        modes.push(tx.transactionMode);
        const { n } = tx.get<{ n: number }>('SELECT n FROM hot')!;
        if (tx.transactionMode === 'concurrent') b.run('UPDATE hot SET n = n + 100');
        tx.run('UPDATE hot SET n = ?', [n + 1]);
      },
      { mode: 'concurrent', retry: { minTimeout: 0, maxTimeout: 0 } },
    );
    expect(modes).toEqual([...Array(LANE_AFTER_FAILURES + 1).fill('concurrent'), 'immediate']);
    expect(db.get<{ n: number }>('SELECT n FROM hot')!.n).toBe((LANE_AFTER_FAILURES + 1) * 100 + 1);
  });

  it('a lane holder that awaits a transaction queued behind it: the waiter gives up with a BusyError at its budget, nothing deadlocks', async () => {
    const db = hotRow();
    const a = scope.connect(db);
    const b = scope.connect(db);
    const other = scope.connect(db);
    let inner: Promise<unknown> | undefined;
    await a.transaction(
      async (tx) => {
        if (tx.transactionMode === 'concurrent') {
          tx.get('SELECT n FROM hot');
          other.run('UPDATE hot SET n = n + 1'); // a conflicts until it takes the lane
          tx.run('UPDATE hot SET n = n + 1');
          return;
        }
        // a holds the lane (BEGIN IMMEDIATE, hot written); b conflicts, and then waits behind a.
        tx.run('UPDATE hot SET n = n + 1');
        inner = b
          .transaction((t) => t.run('UPDATE hot SET n = n + 10'), { mode: 'concurrent', retry: { maxElapsedMs: 300, maxTimeout: 5 } })
          .catch((e: unknown) => e);
        await inner;
      },
      { mode: 'concurrent', retry: { minTimeout: 0, maxTimeout: 0 } },
    );
    expect(await inner).toBeInstanceOf(BusyError);
    // LANE_AFTER_FAILURES optimistic attempts and one priority attempt, each overtaken by
    // other's autocommit write, then the pessimistic one.
    expect(db.get<{ n: number }>('SELECT n FROM hot')!.n).toBe(LANE_AFTER_FAILURES + 2);
  });

  it('while a priority holder is open, commits that change a table it read wait for it; commits to other tables do not', async () => {
    const db = hotRow();
    db.exec('CREATE TABLE other (v INTEGER)');
    const a = scope.connect(db);
    const b = scope.connect(db);
    const c = scope.connect(db);
    const other = scope.connect(db);
    let attempts = 0;
    let blocked: Promise<unknown> | undefined;
    await a.transaction(
      async (tx) => {
        attempts++;
        const { n } = tx.get<{ n: number }>('SELECT n FROM hot')!;
        if (attempts <= LANE_AFTER_FAILURES) {
          other.run('UPDATE hot SET n = n + 100'); // a conflicts until it takes the lane
        } else {
          blocked = b.transaction((t) => t.run('UPDATE hot SET n = n + 10'), { mode: 'concurrent' });
          await c.transaction((t) => t.run('INSERT INTO other VALUES (1)'), { mode: 'concurrent' });
          await sleep(5);
          expect(db.get<{ c: number }>('SELECT count(*) AS c FROM other')!.c).toBe(1); // c committed
          expect(db.get<{ n: number }>('SELECT n FROM hot')!.n).toBe(n); // b waits for a
        }
        tx.run('UPDATE hot SET n = ?', [n + 1]);
      },
      { mode: 'concurrent', retry: { minTimeout: 0, maxTimeout: 0 } },
    );
    expect(attempts).toBe(LANE_AFTER_FAILURES + 1); // the priority attempt was not overtaken
    await blocked;
    expect(db.get<{ n: number }>('SELECT n FROM hot')!.n).toBe(LANE_AFTER_FAILURES * 100 + 1 + 10);
  });

  it('a transaction whose COMMIT finds a lane holder in the engine waits its turn in the lane, past the busy timeout, and commits', async () => {
    const db = scope.open(':memory:', { busyTimeout: 20 });
    db.exec('CREATE TABLE hot (id INTEGER PRIMARY KEY, n INTEGER NOT NULL); INSERT INTO hot VALUES (1, 0); CREATE TABLE other (n INTEGER)');
    const x = scope.connect(db);
    const holder = scope.connect(db);
    const lane = laneOf(x.session.engine);
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    const done = x.transaction(
      async (tx) => {
        tx.run('INSERT INTO other VALUES (1)');
        // A lane holder takes the engine while x awaits, and keeps it far past x's busy timeout.
        await lane.acquire(1000);
        holder.exec('BEGIN IMMEDIATE');
        holder.run('UPDATE hot SET n = 1');
        setTimeout(() => {
          holder.exec('COMMIT');
          lane.release();
          release();
        }, 100);
      },
      { mode: 'concurrent' },
    );
    await done;
    await held;
    expect(db.get<{ c: number }>('SELECT count(*) AS c FROM other')!.c).toBe(1);
    expect(db.get<{ n: number }>('SELECT n FROM hot')!.n).toBe(1);
  });

  it('while the lane is in use, a callback that runs a statement that conflicted lately is refused at it and runs once, in the lane; other rows of the table are not', async () => {
    const db = hotRow();
    db.exec('INSERT INTO hot VALUES (2, 0)');
    const b = scope.connect(db);
    const c = scope.connect(db);
    await makeRowOneHot(db);
    const lane = laneOf(db.session.engine);
    await lane.acquire(1000); // the lane is in use
    const seen: unknown[] = [];
    let bRuns = 0;
    const bDone = b.transaction(
      (tx) => {
        bRuns++;
        try {
          const { n } = tx.get<{ n: number }>('SELECT n FROM hot WHERE id = ?', [1])!;
          tx.run('UPDATE hot SET n = ? WHERE id = 1', [n + 1]);
        } catch (e) {
          seen.push(e);
          throw e;
        }
      },
      { mode: 'concurrent', retry: { onRetry: () => seen.push('retry') } },
    );
    // Another row of the same table, same SQL: not hot, runs and commits at once.
    await c.transaction((tx) => {
      const { n } = tx.get<{ n: number }>('SELECT n FROM hot WHERE id = ?', [2])!;
      tx.run('UPDATE hot SET n = ? WHERE id = 2', [n + 1]);
    });
    expect(db.get<{ n: number }>('SELECT n FROM hot WHERE id = 2')!.n).toBe(1);
    await sleep(5);
    expect(seen).toHaveLength(1);
    expect(isQueuedRefusal(seen[0])).toBe(true);
    expect(seen[0]).toBeInstanceOf(BusyError);
    expect(db.get<{ n: number }>('SELECT n FROM hot WHERE id = 1')!.n).toBe(101); // b waits in the lane
    lane.release();
    await bDone;
    expect(bRuns).toBe(2); // refused once (no retry counted), then run once in the lane
    expect(seen).toHaveLength(1);
    expect(db.get<{ n: number }>('SELECT n FROM hot WHERE id = 1')!.n).toBe(102);
  });

  it('a callback queued by a hot statement waits in the lane a bounded time, then runs optimistically, refused no more', async () => {
    const db = hotRow();
    const a = scope.connect(db);
    const b = scope.connect(db);
    const other = scope.connect(db);
    let first = true;
    await a.transaction(
      (tx) => {
        const { n } = tx.get<{ n: number }>('SELECT n FROM hot WHERE id = 1')!;
        if (first) other.run('UPDATE hot SET n = n + 100');
        first = false;
        tx.run('UPDATE hot SET n = ?', [n + 1]);
      },
      { mode: 'concurrent', retry: { minTimeout: 0, maxTimeout: 0 } },
    );
    const lane = laneOf(db.session.engine);
    await lane.acquire(1000); // held by "a holder that awaits b", never released while b runs
    let runs = 0;
    await b.transaction((tx) => {
      runs++;
      const { n } = tx.get<{ n: number }>('SELECT n FROM hot WHERE id = 1')!;
      tx.run('UPDATE hot SET n = ?', [n + 1]);
    });
    lane.release();
    expect(runs).toBe(2);
    expect(db.get<{ n: number }>('SELECT n FROM hot')!.n).toBe(102);
  });

  // The retry options' signal stops waiting in the lane too, in both of its waits: the bounded one
  // of a callback queued by a hot statement, and the one bounded by the retry budget.
  for (const [what, retry] of [
    ['queued by a hot statement (bounded wait)', {}],
    ['waiting up to its retry budget', { maxElapsedMs: 800 }],
  ] as const) {
    it(`a transaction waiting in the lane, ${what}, stops when its retry signal is aborted: it rejects with the reason, changes nothing, and the lane goes on`, async () => {
      const db = hotRow();
      const b = scope.connect(db);
      const d = scope.connect(db);
      await makeRowOneHot(db);
      const lane = laneOf(db.session.engine);
      await lane.acquire(1000); // held by the test until the end: b can only wait
      const ctl = new AbortController();
      const reason = new Error('the caller gave up');
      let runs = 0;
      const bDone = b.transaction(
        (tx) => {
          runs++;
          const { n } = tx.get<{ n: number }>('SELECT n FROM hot WHERE id = ?', [1])!;
          tx.run('UPDATE hot SET n = ? WHERE id = 1', [n + 1]);
        },
        { mode: 'concurrent', retry: { ...retry, signal: ctl.signal } },
      );
      await sleep(20); // b was refused at its hot read and waits in the lane
      expect(runs).toBe(1);
      let outcome: unknown = 'pending';
      bDone.then(
        () => (outcome = 'resolved'),
        (e: unknown) => (outcome = e),
      );
      ctl.abort(reason);
      // Settled in the microtasks that follow the abort, while the lane is still held: b stopped
      // waiting (it used to wait out its bounded wait or its budget first).
      await sleep(0);
      expect(outcome).toBe(reason);
      expect(runs).toBe(1);
      expect(b.inTransaction).toBe(false);
      expect(db.get<{ n: number }>('SELECT n FROM hot WHERE id = 1')!.n).toBe(101);
      // b left the queue: releasing frees the lane (a stale waiter would keep it held for good).
      lane.release();
      expect(lane.inUse).toBe(false);
      await d.transaction((tx) => {
        const { n } = tx.get<{ n: number }>('SELECT n FROM hot WHERE id = ?', [1])!;
        tx.run('UPDATE hot SET n = ? WHERE id = 1', [n + 1]);
      });
      expect(db.get<{ n: number }>('SELECT n FROM hot WHERE id = 1')!.n).toBe(102);
      // An already aborted signal: no attempt at all.
      await expect(b.transaction(() => runs++, { retry: { signal: ctl.signal } })).rejects.toBe(reason);
      expect(runs).toBe(1);
    });
  }

  it('a priority holder does not hold back a commit to another row of a table it read', async () => {
    const db = hotRow();
    db.exec('INSERT INTO hot VALUES (2, 0)');
    const a = scope.connect(db);
    const b = scope.connect(db);
    const other = scope.connect(db);
    let attempts = 0;
    await a.transaction(
      async (tx) => {
        attempts++;
        const { n } = tx.get<{ n: number }>('SELECT n FROM hot WHERE id = 1')!;
        if (attempts <= LANE_AFTER_FAILURES) {
          other.run('UPDATE hot SET n = n + 100 WHERE id = 1'); // a conflicts until it takes the lane
        } else {
          // a holds priority and has read row 1: b's write of row 2 commits at once.
          await b.transaction((t) => t.run('UPDATE hot SET n = n + 10 WHERE id = 2'), { mode: 'concurrent' });
          expect(db.get<{ n: number }>('SELECT n FROM hot WHERE id = 2')!.n).toBe(10);
        }
        tx.run('UPDATE hot SET n = ? WHERE id = 1', [n + 1]);
      },
      { mode: 'concurrent', retry: { minTimeout: 0, maxTimeout: 0 } },
    );
    expect(attempts).toBe(LANE_AFTER_FAILURES + 1);
    expect(db.get<{ n: number }>('SELECT n FROM hot WHERE id = 1')!.n).toBe(LANE_AFTER_FAILURES * 100 + 1);
  });
});

describe('statementKey', () => {
  it('tells parameter types and values apart, and does not key blobs', () => {
    const sql = 'SELECT n FROM hot WHERE id = ?';
    expect(statementKey(sql, [1])).toBe(statementKey(sql, [1]));
    expect(statementKey(sql, [1])).not.toBe(statementKey(sql, ['1']));
    expect(statementKey(sql, [1])).not.toBe(statementKey(sql, [1n]));
    expect(statementKey(sql, [1])).not.toBe(statementKey(sql, [2]));
    expect(statementKey(sql, [null])).not.toBe(statementKey(sql, ['']));
    expect(statementKey(sql, { id: 1 })).not.toBe(statementKey(sql, { ID: 1 }));
    expect(statementKey(sql, [new Uint8Array([1])])).toBeUndefined();
    expect(statementKey(sql, undefined)).toBe(sql);
  });
});
