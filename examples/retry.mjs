// Conflicts and retries: BEGIN CONCURRENT transactions are checked when they commit. A
// transaction that conflicts fails with BusyError (code SQLITE_BUSY_SNAPSHOT) and is already
// rolled back; running it again is the cure, and conn.transaction() does that for you.
//   pnpm run build && node examples/retry.mjs
import assert from 'node:assert/strict';
import { open, retry, BusyError, SqliteError, errorKind, isRetryable } from '@siblite/core';

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const db = open(':memory:');
try {
  db.exec(`
    CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL);
    INSERT INTO counter VALUES (1, 0);
    CREATE TABLE doctor (name TEXT PRIMARY KEY, on_call INTEGER NOT NULL);
    INSERT INTO doctor VALUES ('alice', 1), ('bob', 1);
    CREATE TABLE account (email TEXT PRIMARY KEY);
  `);
  const a = db.connect();
  const b = db.connect();

  // 1. Lost update: both read n = 0, both write n + 1. Without retries, the second COMMIT fails.
  const increment = (h) =>
    h.transaction(
      async (tx) => {
        const { n } = tx.get('SELECT n FROM counter WHERE id = 1');
        await sleep(5);
        tx.run('UPDATE counter SET n = ? WHERE id = 1', [n + 1]);
      },
      { mode: 'concurrent', retry: false },
    );
  const [ra, rb] = await Promise.allSettled([increment(a), increment(b)]);
  const failures = [ra, rb].filter((r) => r.status === 'rejected').map((r) => r.reason);
  assert.equal(failures.length, 1, 'exactly one of two conflicting increments commits');
  const err = failures[0];
  assert.ok(err instanceof BusyError && err instanceof SqliteError);
  assert.equal(err.code, 'SQLITE_BUSY_SNAPSHOT');
  console.log(`lost update prevented: one COMMIT failed with ${err.code} (kind ${err.kind}, retryable ${err.retryable})`);
  assert.equal(db.get('SELECT n FROM counter WHERE id = 1').n, 1);
  // The failed transaction is already rolled back; the handle is back in autocommit.
  assert.equal(a.inTransaction || b.inTransaction, false);

  // 2. Write skew: each doctor checks that someone else is on call, then goes off call.
  //    Serializable isolation lets only one of them through.
  const goOffCall = (h, name) =>
    h.transaction(
      async (tx) => {
        const { n } = tx.get('SELECT count(*) AS n FROM doctor WHERE on_call = 1');
        await sleep(5);
        if (n < 2) throw new Error(`${name} must stay on call`);
        tx.run('UPDATE doctor SET on_call = 0 WHERE name = ?', [name]);
      },
      { mode: 'concurrent', retry: false },
    );
  const skew = await Promise.allSettled([goOffCall(a, 'alice'), goOffCall(b, 'bob')]);
  assert.equal(skew.filter((r) => r.status === 'rejected' && r.reason.code === 'SQLITE_BUSY_SNAPSHOT').length, 1);
  assert.equal(db.get('SELECT count(*) AS n FROM doctor WHERE on_call = 1').n, 1);
  console.log('write skew prevented: one doctor is still on call');

  // 3. With retries (the default for conn.transaction), conflicting transactions simply run
  //    again until they commit. 20 handles increment the counter 5 times each.
  const handles = Array.from({ length: 20 }, () => db.connect());
  let retries = 0;
  const t0 = performance.now();
  await Promise.all(
    handles.map(async (h) => {
      for (let i = 0; i < 5; i++) {
        await h.transaction(
          async (tx) => {
            const { n } = tx.get('SELECT n FROM counter WHERE id = 1');
            await sleep(1);
            tx.run('UPDATE counter SET n = ? WHERE id = 1', [n + 1]);
          },
          { mode: 'concurrent', retry: { retries: 1000, onRetry: () => retries++ } },
        );
      }
    }),
  );
  const n = db.get('SELECT n FROM counter WHERE id = 1').n;
  console.log(`100 contended increments committed in ${(performance.now() - t0).toFixed(0)} ms with ${retries} retries: n = ${n}`);
  assert.equal(n, 101);
  for (const h of handles) h.close();

  // 4. retry() wraps any function, for example a transaction written in plain SQL.
  const total = await retry(
    () => {
      a.exec('BEGIN CONCURRENT');
      try {
        const { n } = a.get('SELECT n FROM counter WHERE id = 1');
        a.run('UPDATE counter SET n = ? WHERE id = 1', [n + 1]);
        a.exec('COMMIT');
        return n + 1;
      } catch (e) {
        a.exec('ROLLBACK'); // a no-op if COMMIT already rolled back
        throw e;
      }
    },
    { retries: 10, maxElapsedMs: 5_000 },
  );
  assert.equal(total, 102);
  console.log('retry() around plain SQL: n =', total);

  // 5. Errors that retrying cannot fix pass through at once, unchanged.
  db.run('INSERT INTO account VALUES (?)', ['ada@example.com']);
  let calls = 0;
  try {
    await retry(() => {
      calls++;
      db.run('INSERT INTO account VALUES (?)', ['ada@example.com']);
    });
    assert.fail('expected a constraint error');
  } catch (e) {
    assert.equal(calls, 1);
    assert.equal(e.kind, 'constraint');
    assert.equal(isRetryable(e), false);
    console.log(`not retried: ${e.code} (kind ${e.kind}, retryable ${e.retryable}) after ${calls} call`);
  }
  // errorKind and isRetryable accept anything and never throw.
  assert.equal(errorKind(new Error('boom')), 'other');
  assert.equal(isRetryable('not even an error'), false);

  a.close();
  b.close();
} finally {
  db.close();
}
