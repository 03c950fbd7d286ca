/**
 * retry(fn, options) (spec "Retry"): only retryable errors are retried, with bounded, jittered
 * backoff; budgets, abort signals and onRetry.
 */
import { describe, expect, it } from 'vitest';
import { BusyError, retry, SqliteError, type Connection } from '../src/index.js';
import { checkSqliteError, sleep, thrown, useScope } from './helpers.js';

const scope = useScope();

/** A real BusyError and a real constraint error from the engine. */
function realErrors(): { busy: SqliteError; constraint: SqliteError; snapshot: SqliteError; db: Connection } {
  const db = scope.open(':memory:');
  db.exec('CREATE TABLE t (id INTEGER PRIMARY KEY, n INT); INSERT INTO t VALUES (1, 0)');
  const other = scope.connect(db);
  db.exec("BEGIN IMMEDIATE; UPDATE t SET n = 1");
  const busy = thrown(() => other.all('SELECT * FROM t')) as SqliteError;
  db.exec('ROLLBACK');
  const constraint = thrown(() => db.run('INSERT INTO t VALUES (1, 1)')) as SqliteError;
  const a = scope.connect(db);
  const b = scope.connect(db);
  a.exec('BEGIN CONCURRENT');
  b.exec('BEGIN CONCURRENT');
  a.get('SELECT n FROM t');
  b.get('SELECT n FROM t');
  a.run('UPDATE t SET n = 5');
  b.run('UPDATE t SET n = 6');
  a.exec('COMMIT');
  const snapshot = thrown(() => b.exec('COMMIT')) as SqliteError;
  checkSqliteError(busy, 'busy', 'SQLITE_BUSY');
  checkSqliteError(constraint, 'constraint');
  checkSqliteError(snapshot, 'busy_snapshot', 'SQLITE_BUSY_SNAPSHOT');
  return { busy, constraint, snapshot, db };
}

describe('retry()', () => {
  it('returns the result at once when fn succeeds; fn gets the 1-based attempt number', async () => {
    const attempts: number[] = [];
    expect(await retry((n) => (attempts.push(n), 'ok'))).toBe('ok');
    expect(await retry(async () => 'async ok')).toBe('async ok');
    expect(attempts).toEqual([1]);
  });

  it('passes a non-retryable error through unchanged on the first attempt', async () => {
    const { constraint } = realErrors();
    let calls = 0;
    let retried = 0;
    const err = await retry(
      () => {
        calls++;
        throw constraint;
      },
      { onRetry: () => retried++ },
    ).catch((e: unknown) => e);
    expect(err).toBe(constraint);
    expect(calls).toBe(1);
    expect(retried).toBe(0);
    for (const other of [new Error('plain'), new TypeError('type'), new RangeError('range')]) {
      calls = 0;
      await expect(
        retry(async () => {
          calls++;
          throw other;
        }),
      ).rejects.toBe(other);
      expect(calls).toBe(1);
    }
  });

  it('passes thrown non-errors through unchanged', async () => {
    for (const value of ['a string', 42, undefined, null, { busy: true }]) {
      let calls = 0;
      const got = await retry(() => {
        calls++;
        throw value;
      }).then(
        () => 'resolved',
        (e: unknown) => e,
      );
      expect(got).toBe(value);
      expect(calls).toBe(1);
    }
  });

  it('retries busy and busy_snapshot errors; onRetry sees each error and attempts 1..n', async () => {
    const { busy, snapshot } = realErrors();
    const thrownSeq = [busy, snapshot, busy, busy];
    const calls: number[] = [];
    const seen: Array<[unknown, number]> = [];
    const result = await retry(
      (attempt) => {
        calls.push(attempt);
        const e = thrownSeq[attempt - 1];
        if (e) throw e;
        return attempt;
      },
      { minTimeout: 1, maxTimeout: 5, onRetry: (e, n) => seen.push([e, n]) },
    );
    expect(result).toBe(5);
    expect(calls).toEqual([1, 2, 3, 4, 5]);
    expect(seen).toEqual([
      [busy, 1],
      [snapshot, 2],
      [busy, 3],
      [busy, 4],
    ]);
  });

  it('the first attempt runs outside the loop: what it throws, and an abort during it, are handled as before', async () => {
    const { busy } = realErrors();
    // A non-error thrown by a retry (after a busy first attempt) passes through unchanged.
    const value = { not: 'an error' };
    let calls = 0;
    const got = await retry(() => {
      calls++;
      throw calls === 1 ? busy : value;
    }, { maxTimeout: 1 }).catch((e: unknown) => e);
    expect(got).toBe(value);
    expect(calls).toBe(2);
    // Aborted while the first (async) attempt runs: no second attempt, the signal's reason.
    const ctl = new AbortController();
    const reason = new Error('stopped during the first attempt');
    calls = 0;
    const p = retry(async () => {
      calls++;
      ctl.abort(reason);
      throw busy;
    }, { signal: ctl.signal });
    await expect(p).rejects.toBe(reason);
    expect(calls).toBe(1);
  });

  it('gives up after `retries` retries with the last busy error', async () => {
    const { busy } = realErrors();
    for (const retries of [0, 1, 3]) {
      let calls = 0;
      const attemptsSeen: number[] = [];
      const last = new BusyError('last one', { code: 'SQLITE_BUSY' });
      const err = await retry(
        () => {
          calls++;
          throw calls === retries + 1 ? last : busy;
        },
        { retries, maxTimeout: 2, onRetry: (_e, n) => attemptsSeen.push(n) },
      ).catch((e: unknown) => e);
      expect(err).toBe(last);
      expect(calls).toBe(retries + 1);
      expect(attemptsSeen).toEqual(Array.from({ length: retries }, (_, i) => i + 1));
    }
  });

  it('stops at a non-retryable error after busy ones', async () => {
    const { busy, constraint } = realErrors();
    let calls = 0;
    const err = await retry(() => {
      calls++;
      throw calls < 3 ? busy : constraint;
    }, { maxTimeout: 2 }).catch((e: unknown) => e);
    expect(err).toBe(constraint);
    expect(calls).toBe(3);
  });

  it('respects maxElapsedMs: a bounded number of attempts, onRetry for each retry, the last busy error', async () => {
    const { busy } = realErrors();
    let calls = 0;
    const attemptsSeen: number[] = [];
    const started = performance.now();
    const err = await retry(
      () => {
        calls++;
        throw busy;
      },
      { retries: 1_000_000, minTimeout: 5, maxTimeout: 20, maxElapsedMs: 100, onRetry: (_e, n) => attemptsSeen.push(n) },
    ).catch((e: unknown) => e);
    const elapsed = performance.now() - started;
    expect(err).toBe(busy);
    expect(calls).toBeGreaterThan(1);
    // Without a budget, a million retries; with it, the backoff bounds the count.
    expect(calls).toBeLessThan(500);
    expect(attemptsSeen).toEqual(Array.from({ length: calls - 1 }, (_, i) => i + 1));
    expect(elapsed).toBeLessThan(100 + 2_000);
  });

  it('backoff delays stay within maxTimeout', async () => {
    const { busy } = realErrors();
    const retries = 12;
    const maxTimeout = 15;
    const gaps: number[] = [];
    let last = performance.now();
    const started = last;
    await retry(
      () => {
        const now = performance.now();
        gaps.push(now - last);
        last = now;
        throw busy;
      },
      { retries, minTimeout: 1_000, maxTimeout },
    ).catch(() => undefined);
    expect(gaps).toHaveLength(retries + 1);
    // minTimeout alone would wait a second per retry; maxTimeout caps it (loose bound for slow CI).
    expect(performance.now() - started).toBeLessThan(retries * maxTimeout + 1_500);
  });

  it('aborts with the signal\'s reason, before the first attempt and while waiting', async () => {
    const { busy } = realErrors();
    const pre = new AbortController();
    const reason = new Error('stop now');
    pre.abort(reason);
    let calls = 0;
    await expect(retry(() => calls++, { signal: pre.signal })).rejects.toBe(reason);
    expect(calls).toBe(0);

    const ctl = new AbortController();
    const later = new Error('stop later');
    const p = retry(
      () => {
        calls++;
        if (calls === 3) setTimeout(() => ctl.abort(later), 5);
        throw busy;
      },
      { retries: 1_000_000, minTimeout: 50, maxTimeout: 50, signal: ctl.signal },
    );
    await expect(p).rejects.toBe(later);
    const after = calls;
    await sleep(120);
    expect(calls).toBe(after); // no attempts after the abort
    expect(calls).toBeGreaterThanOrEqual(3);

    const plain = new AbortController();
    const p2 = retry(() => {
      throw busy;
    }, { minTimeout: 20, maxTimeout: 20, signal: plain.signal });
    plain.abort();
    const e2 = await p2.catch((e: unknown) => e);
    expect(e2).toBe(plain.signal.reason);
  });

  it('rejects invalid options with a RangeError', async () => {
    for (const bad of [{ retries: -1 }, { minTimeout: -1 }, { maxTimeout: Number.NaN }, { maxElapsedMs: -5 }]) {
      await expect(retry(() => 1, bad)).rejects.toBeInstanceOf(RangeError);
    }
  });

  it('with a real engine: a write retried while another handle holds the lock succeeds after it commits', async () => {
    const { db } = realErrors();
    const other = scope.connect(db);
    db.exec('BEGIN IMMEDIATE');
    db.run('UPDATE t SET n = 100');
    setTimeout(() => db.exec('COMMIT'), 30);
    const busySeen: SqliteError[] = [];
    const n = await retry(
      () => {
        other.run('UPDATE t SET n = n + 1');
        return other.get<{ n: number }>('SELECT n FROM t')!.n;
      },
      { maxTimeout: 5, onRetry: (e) => busySeen.push(e) },
    );
    expect(n).toBe(101);
    expect(busySeen.length).toBeGreaterThan(0);
    for (const e of busySeen) checkSqliteError(e, 'busy', 'SQLITE_BUSY');
  });
});
