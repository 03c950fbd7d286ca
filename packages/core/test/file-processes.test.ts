/**
 * Several real processes on one database file: counters under contention, kill -9 while a
 * process holds the lock or is inside a transaction, live locks that must not be broken, and
 * timers that must not keep a process alive. The children run test/fixtures/file-worker.mjs,
 * which imports the built package (built here when missing or stale).
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { open, type Connection } from '../src/index.js';
import { ensureBuilt, runWorker, spawnWorker } from './fixtures/harness.js';
import { useScope } from './helpers.js';

beforeAll(() => ensureBuilt(), 120_000);

const scope = useScope();

/** Opens, runs `fn`, and closes again, so that this process holds no lock afterwards. */
function withDb<T>(file: string, fn: (c: Connection) => T): T {
  const c = open(file);
  try {
    return fn(c);
  } finally {
    c.close();
  }
}

function makeCounterDb(): string {
  const file = scope.file('counter.db');
  withDb(file, (c) =>
    c.exec(`
      CREATE TABLE counter (id INTEGER PRIMARY KEY, v INTEGER NOT NULL);
      INSERT INTO counter VALUES (1, 0);
      CREATE TABLE log (worker INTEGER NOT NULL, i INTEGER NOT NULL, UNIQUE (worker, i));
    `),
  );
  return file;
}

function checkCounters(file: string, workers: number, n: number): void {
  withDb(file, (c) => {
    expect(c.get<{ v: number }>('SELECT v FROM counter WHERE id = 1')?.v).toBe(workers * n);
    const perWorker = c.all<{ worker: number; n: number; lo: number; hi: number }>(
      'SELECT worker, count(*) AS n, min(i) AS lo, max(i) AS hi FROM log GROUP BY worker ORDER BY worker',
    );
    expect(perWorker).toEqual(Array.from({ length: workers }, (_, w) => ({ worker: w, n, lo: 0, hi: n - 1 })));
    expect(c.all('PRAGMA integrity_check')).toEqual([{ integrity_check: 'ok' }]);
  });
}

describe('several processes on one file', () => {
  it('two processes increment one counter in retried transactions: every increment is there once', async () => {
    const file = makeCounterDb();
    const n = 150;
    const results = await Promise.all([0, 1].map((id) => runWorker({ cmd: 'counter', file, id, n })));
    for (const r of results) expect(r).toMatchObject({ done: n });
    checkCounters(file, 2, n);
    // Contention happened and was resolved by retries (busy errors), not by waiting.
    expect(existsSync(`${file}.lock`)).toBe(false);
  });

  it('four processes with different locking and transaction modes: every increment is there once', async () => {
    const file = makeCounterDb();
    const n = 60;
    const setups = [
      { locking: 'auto', mode: 'immediate' },
      { locking: 'shared', mode: 'deferred' },
      { locking: 'auto', mode: 'concurrent' },
      { locking: 'exclusive', mode: 'immediate' },
    ];
    const results = await Promise.all(setups.map((s, id) => runWorker({ cmd: 'counter', file, id, n, ...s })));
    for (const r of results) expect(r).toMatchObject({ done: n });
    checkCounters(file, 4, n);
    expect(existsSync(`${file}.lock`)).toBe(false);
  });
});

describe('kill -9', () => {
  it('while a process holds the lock: the next process breaks the stale lock and reads everything', async () => {
    const file = scope.file('held.db');
    const holder = spawnWorker({ cmd: 'hold', file, commits: 20, locking: 'exclusive' });
    const ready = await holder.next((m) => m.ready);
    expect(JSON.parse(readFileSync(`${file}.lock/owner`, 'utf8')).pid).toBe(ready.pid);
    await holder.kill9();
    expect(existsSync(`${file}.lock`)).toBe(true); // left behind by the dead process

    const probe = await runWorker({ cmd: 'probe', file, sql: 'SELECT count(*) AS n FROM t' });
    expect(probe).toMatchObject({ ok: true, row: { n: 20 } });
    expect(probe.locks.staleBroken).toBe(1);
    expect(existsSync(`${file}.lock`)).toBe(false);
    withDb(file, (c) => expect(c.all('PRAGMA integrity_check')).toEqual([{ integrity_check: 'ok' }]));
  });

  it('inside a transaction whose pages already reached the file: committed rows all there, the open transaction leaves no trace', async () => {
    const file = scope.file('intx.db');
    const commits = 300;
    const holder = spawnWorker({ cmd: 'hold', file, commits, openTx: true, txRows: 300, locking: 'auto' });
    await holder.next((m) => m.ready);
    expect(existsSync(`${file}-journal`)).toBe(true); // a hot journal: the transaction wrote into the file
    await holder.kill9();

    // The next opener breaks the stale lock and must roll the hot journal back (the engine's
    // VFS alone would report its own lock directory as someone else's reserved lock, and
    // SQLite would then never roll back).
    withDb(file, (c) => {
      expect(c.get("SELECT count(*) AS n FROM t WHERE who LIKE 'committed-%'")).toEqual({ n: commits });
      expect(c.get("SELECT count(*) AS n FROM t WHERE who NOT LIKE 'committed-%'")).toEqual({ n: 0 });
      expect(c.all('PRAGMA integrity_check')).toEqual([{ integrity_check: 'ok' }]);
    });
    expect(existsSync(`${file}-journal`)).toBe(false);
  });

  for (const synchronous of ['full', 'normal'] as const) {
    it(`at a random moment during a stream of commits (synchronous ${synchronous}): every returned COMMIT survives, whole`, async () => {
      const file = scope.file('stream.db');
      const writer = spawnWorker({ cmd: 'stream', file, synchronous });
      const target = 20 + Math.floor(Math.random() * 40);
      await writer.next((m) => m.committed >= target);
      await new Promise((r) => setTimeout(r, Math.random() * 15));
      await writer.kill9();
      const reported = Math.max(...writer.messages.map((m) => m.committed ?? 0));
      withDb(file, (c) => {
        const ks = c.all<{ k: number; parts: string }>("SELECT k, group_concat(part, '') AS parts FROM (SELECT k, part FROM s ORDER BY k, part) GROUP BY k ORDER BY k");
        // Every reported commit is there; at most one more (its report was lost with the process).
        expect(ks.length === reported || ks.length === reported + 1).toBe(true);
        ks.forEach((row, i) => expect(row).toEqual({ k: i + 1, parts: 'abc' }));
        expect(c.all('PRAGMA integrity_check')).toEqual([{ integrity_check: 'ok' }]);
      });
    });
  }
});

describe('locks that must not be broken', () => {
  it("a live holder's lock is not broken: others get BusyError naming the lock directory (busyTimeout 0: at once)", async () => {
    const file = scope.file('live.db');
    const holder = spawnWorker({ cmd: 'hold', file, commits: 3, locking: 'exclusive' });
    const { pid } = await holder.next((m) => m.ready);
    try {
      const owner = readFileSync(`${file}.lock/owner`, 'utf8');
      const probe = await runWorker({ cmd: 'probe', file, sql: 'SELECT count(*) AS n FROM t', options: { busyTimeout: 0 } });
      expect(probe.ok).toBe(false);
      expect(probe.error).toMatchObject({ name: 'BusyError', kind: 'busy', code: 'SQLITE_BUSY' });
      expect(probe.error.message).toContain(`${file}.lock`);
      expect(probe.error.message).toContain(`process ${pid}`);
      expect(probe.locks.staleBroken).toBe(0);
      // Untouched: same owner record.
      expect(readFileSync(`${file}.lock/owner`, 'utf8')).toBe(owner);
      // The waiter left its marker.
      expect(existsSync(`${file}.lock-wait`)).toBe(true);
    } finally {
      await holder.kill9();
    }
    const after = await runWorker({ cmd: 'probe', file, sql: 'SELECT count(*) AS n FROM t' });
    expect(after).toMatchObject({ ok: true, row: { n: 3 } });
  });

  it('an auto-mode holder that stays busy hands the lock to a waiting process', async () => {
    const file = scope.file('handoff.db');
    withDb(file, (c) => c.exec('CREATE TABLE t (id INTEGER PRIMARY KEY, who TEXT)'));
    // This process keeps using the file (a statement every event-loop turn) in auto mode.
    const busy = open(file);
    let stop = false;
    let statements = 0;
    const loop = (async () => {
      while (!stop) {
        try {
          busy.get('SELECT count(*) FROM t');
          statements++;
        } catch {
          // busy while the other process has it: fine
        }
        await new Promise((r) => setImmediate(r));
      }
    })();
    try {
      await new Promise((r) => setTimeout(r, 50));
      const r = await runWorker({ cmd: 'write', file });
      expect(r).toMatchObject({ ok: true });
      // It had to ask (refused at first, then waited out by the busy timeout), and got in through the hand-off.
      expect(r.busy + r.locks.busy).toBeGreaterThan(0);
    } finally {
      stop = true;
      await loop;
      busy.close();
    }
    expect(statements).toBeGreaterThan(0);
  });
});

describe('fair turns', () => {
  it("the waiting marker keeps naming the oldest waiter while younger ones keep asking (never read half-written)", async () => {
    const file = scope.file('fair.db');
    withDb(file, (c) => c.exec('CREATE TABLE t (x)'));
    const marker = `${file}.lock-wait`;
    /** The id named by the marker; null when it is absent or not a whole claim. */
    const named = (): string | null => {
      try {
        return (JSON.parse(readFileSync(marker, 'utf8')) as { id: string }).id;
      } catch {
        return null;
      }
    };
    // The oldest waiter asks first and keeps asking until it is killed.
    const oldest = spawnWorker({ cmd: 'claim', file, ms: 120_000 });
    const oldestId = `${oldest.proc.pid}.0`;
    await oldest.next((m) => m.claiming);
    for (let i = 0; named() !== oldestId; i++) {
      if (i > 1000) throw new Error(`the marker does not name the only waiter: ${String(named())}`);
      await new Promise((r) => setTimeout(r, 2));
    }
    // Three younger waiters ask as often as they can meanwhile: every one of their refusals
    // rings the marker, none may take over the claim, and no read may find it half-written
    // (such a read made a younger waiter take the claim, or the free lock, out of turn).
    const younger = [1, 2, 3].map(() => runWorker({ cmd: 'claim', file, ms: 1000 }));
    let done = false;
    const all = Promise.all(younger).finally(() => (done = true));
    const seen = new Map<string | null, number>();
    try {
      for (let i = 0; !done; i++) {
        const id = named();
        seen.set(id, (seen.get(id) ?? 0) + 1);
        if (i % 32 === 0) await new Promise((r) => setImmediate(r));
      }
      for (const r of await all) expect(r).toMatchObject({ ok: true });
    } finally {
      await oldest.kill9();
    }
    expect([...seen.keys()]).toEqual([oldestId]);
  });
});

describe('concurrent transactions and other processes', () => {
  it('a BEGIN CONCURRENT transaction held across a long await does not keep another process out', async () => {
    const file = scope.file('park.db');
    withDb(file, (c) =>
      c.exec('CREATE TABLE t (id INTEGER PRIMARY KEY, who TEXT); CREATE TABLE mine (id INTEGER PRIMARY KEY, v INT); INSERT INTO mine VALUES (1, 0)'),
    );
    const db = open(file);
    try {
      db.exec('BEGIN CONCURRENT');
      db.run('UPDATE mine SET v = v + 1 WHERE id = 1'); // the real transaction (and the lock) is open now
      // While this transaction awaits, another process writes: the lock policy parks the
      // transaction (it resumes by re-execution) so the waiter gets in long before the COMMIT.
      const child = await runWorker({ cmd: 'write', file });
      expect(child).toMatchObject({ ok: true });
      expect(db.inTransaction).toBe(true);
      expect(db.get('SELECT v FROM mine WHERE id = 1')).toEqual({ v: 1 });
      db.exec('COMMIT');
      expect(db.all('SELECT who FROM t')).toEqual([{ who: 'child' }]);
      expect(db.get('SELECT v FROM mine')).toEqual({ v: 1 });
    } finally {
      db.close();
    }
  });
});

describe('timers', () => {
  it('a process that leaves a file database open still exits on its own', async () => {
    const file = scope.file('linger.db');
    const child = spawnWorker({ cmd: 'linger', file });
    await child.next((m) => m.ok);
    const how = await Promise.race([child.exited, new Promise((r) => setTimeout(() => r('still running'), 10_000))]);
    if (how === 'still running') await child.kill9();
    expect(how).toBe(0);
    // It exited holding the lock (auto mode, not idle yet): the exit hook removed it.
    expect(existsSync(`${file}.lock`)).toBe(false);
    expect(readdirSync(dirname(file))).toEqual(['linger.db']);
  });

  it('files left next to the database are only the database (and markers of contention)', () => {
    const dir = scope.dir();
    const file = `${dir}/x.db`;
    withDb(file, (c) => {
      c.exec('CREATE TABLE t (x)');
      c.run('INSERT INTO t VALUES (1)');
    });
    expect(readdirSync(dir)).toEqual(['x.db']);
  });
});
