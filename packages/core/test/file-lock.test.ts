/**
 * The lock manager and the lock policy, in one process: owner records and the rules for
 * breaking a lock, locks that are never broken, the waiting marker and the hand-off, idle
 * release, and the three locking modes.
 */
import { existsSync, mkdirSync, realpathSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { BusyError, open } from '../src/index.js';
import { openDatabaseFile } from '../src/file/database.js';
import { checkReserved, guardName, isHeld, LOCK_PROTOCOL, lockStats, markWaiting, provablyStale, self, type LockOwner } from '../src/file/lock.js';
import { checkSqliteError, thrown, useScope } from './helpers.js';

const scope = useScope();

function record(file: string, over: Partial<LockOwner>): LockOwner {
  return { proto: LOCK_PROTOCOL, ...self, guard: guardName(file), token: 'test', since: Date.now(), ...over };
}

/** Plants a lock directory with this owner record, as a dead process of the protocol leaves it. */
function plant(file: string, over: Partial<LockOwner>): void {
  mkdirSync(`${file}.lock`);
  writeFileSync(`${file}.lock/owner`, JSON.stringify(record(file, over)));
}

async function waitFor(cond: () => boolean, ms = 3000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not reached in time');
    await new Promise((r) => setTimeout(r, 5));
  }
}

function makeDb(): string {
  const file = scope.file();
  const c = open(file);
  c.exec('CREATE TABLE t (x); INSERT INTO t VALUES (1)');
  c.close();
  return file;
}

describe('owner records: what is proof that the owner is gone', () => {
  it('only a record of this protocol, machine (boot id), network namespace and guard', () => {
    const file = makeDb();
    const guard = guardName(file);
    expect(guard).toMatch(/^siblite-\d+-\d+$/);
    expect(provablyStale(record(file, {}), guard)).toBe(true);
    // Pids, hosts and clocks play no part: a record of this very process counts as stale too,
    // because whoever holds the guard knows that its writer no longer does.
    expect(provablyStale(record(file, { pid: process.pid, since: Date.now() + 1e9 }), guard)).toBe(true);
    expect(provablyStale(record(file, { boot: 'another-boot' }), guard)).toBe(false);
    expect(provablyStale(record(file, { host: 'elsewhere', boot: 'another-boot' }), guard)).toBe(false);
    expect(provablyStale(record(file, { netns: 'net:[1]' }), guard)).toBe(false);
    expect(provablyStale(record(file, { guard: 'siblite-1-2' }), guard)).toBe(false);
    expect(provablyStale(record(file, { proto: 1 }), guard)).toBe(false);
    expect(provablyStale(record(file, {}), null)).toBe(false);
  });
});

describe('stale locks', () => {
  it('a lock whose owner is provably gone is broken by the next statement, and its leftovers swept', () => {
    const file = makeDb();
    plant(file, { pid: 999_999_999, token: 'dead-1' });
    mkdirSync(`${file}.lock-rel-crashed`); // a release that was killed after its rename
    const before = lockStats().staleBroken;
    const d = scope.open(file);
    expect(d.get('SELECT x FROM t')).toEqual({ x: 1 });
    expect(lockStats().staleBroken).toBe(before + 1);
    expect(existsSync(`${file}.lock-rel-crashed`)).toBe(false);
  });

  it('a lock without an owner record is never broken; the error names the lock directory', () => {
    const file = makeDb();
    // A plain node-sqlite3-wasm process holds it: an empty lock directory.
    mkdirSync(`${file}.lock`);
    const d = scope.open(file, { busyTimeout: 0 });
    for (let i = 0; i < 3; i++) {
      const e = checkSqliteError(thrown(() => d.get('SELECT count(*) FROM t')), 'busy', 'SQLITE_BUSY');
      expect(e).toBeInstanceOf(BusyError);
      expect(e.message).toContain(`${file}.lock`);
      expect(e.message).toContain('no owner record');
    }
    expect(existsSync(`${file}.lock`)).toBe(true);
  });

  it('a record that cannot be parsed counts as no record', () => {
    const file = makeDb();
    mkdirSync(`${file}.lock`);
    writeFileSync(`${file}.lock/owner`, '{"pid": 1'); // half-written
    const d = scope.open(file, { busyTimeout: 0 });
    checkSqliteError(thrown(() => d.get('SELECT 1 FROM sqlite_schema')), 'busy');
    expect(existsSync(`${file}.lock`)).toBe(true);
  });

  it('foreign boot ids, hosts, network namespaces and protocols are never broken; the error says who and how to check', () => {
    const file = makeDb();
    const d = scope.open(file, { busyTimeout: 0 });
    const cases: [Partial<LockOwner>, RegExp][] = [
      [{ boot: 'a-boot-of-a-machine-with-the-same-host-name' }, /on host .*boot id a-boot/],
      [{ host: 'elsewhere', boot: 'b' }, /on host elsewhere/],
      [{ netns: 'net:[4026531999]' }, /another network namespace/],
      [{ proto: 1 }, /another version/],
    ];
    for (const [over, why] of cases) {
      plant(file, { pid: 999_999_999, ...over });
      const e = checkSqliteError(thrown(() => d.get('SELECT x FROM t')), 'busy');
      expect(e.message).toMatch(why);
      expect(e.message).toContain('never breaks this lock');
      expect(existsSync(`${file}.lock/owner`)).toBe(true);
      rmSync(`${file}.lock`, { recursive: true });
    }
    expect(d.get('SELECT x FROM t')).toEqual({ x: 1 });
  });

  it('a regular file where the lock directory goes: a clear error naming both, not "busy"', () => {
    const file = makeDb();
    // Found by open() ...
    writeFileSync(`${file}.lock`, 'I am another database named like a lock');
    const atOpen = checkSqliteError(thrown(() => open(file)), 'io', 'SQLITE_CANTOPEN');
    expect(atOpen.message).toContain(`"${file}.lock" is not a directory`);
    rmSync(`${file}.lock`);
    // ... and by the lock, when it appears later: a database named "<file>.lock" created now.
    const d = scope.open(file, { busyTimeout: 0 });
    const other = scope.open(`${file}.lock`);
    other.exec('CREATE TABLE u (y)');
    const e = checkSqliteError(thrown(() => d.get('SELECT x FROM t')), 'io', 'SQLITE_CANTOPEN');
    expect(e.message).toContain(`"${file}.lock" is not a directory`);
    expect(e.message).toContain(`lock of "${file}"`);
    expect(other.all('SELECT * FROM u')).toEqual([]);
  });

  it('the reserved-lock check reports only locks held by someone else', () => {
    const file = scope.file();
    const c = scope.open(file, { locking: 'exclusive' });
    c.exec('CREATE TABLE t (x)');
    expect(isHeld(`${file}.lock`)).toBe(true);
    expect(() => checkReserved(`${file}.lock`)).toThrow(/ENOENT/);
    const other = scope.file();
    mkdirSync(`${other}.lock`);
    expect(() => checkReserved(`${other}.lock`)).not.toThrow();
  });
});

describe('one file, one lock directory', () => {
  it('a file created through a symlinked directory is locked under its real path', () => {
    const real = scope.dir();
    const link = `${scope.dir()}/link`;
    symlinkSync(real, link);
    const c = scope.open(`${link}/x.db`, { locking: 'exclusive' });
    c.exec('CREATE TABLE t (x)');
    expect(existsSync(`${real}/x.db.lock`)).toBe(true);
    expect(c.path).toBe(`${realpathSync(real)}/x.db`);
  });
});

describe('opening while another process holds the file', () => {
  it('open() succeeds; the options are applied by the first statement that gets the lock', () => {
    const file = scope.file();
    const c = open(file);
    c.exec('CREATE TABLE t (x)');
    c.close();
    mkdirSync(`${file}.lock`); // someone else holds it
    const d = scope.open(file, { synchronous: 'normal', journalMode: 'persist', busyTimeout: 0 });
    checkSqliteError(thrown(() => d.get('SELECT count(*) FROM t')), 'busy', 'SQLITE_BUSY');
    rmSync(`${file}.lock`, { recursive: true });
    expect(d.get('SELECT count(*) AS n FROM t')).toEqual({ n: 0 });
    expect(d.get('PRAGMA synchronous')).toEqual({ synchronous: 1 });
    expect(d.get('PRAGMA journal_mode')).toEqual({ journal_mode: 'persist' });
  });

  it('the first transaction() after a deferred option works: it waits, applies the option, then begins', async () => {
    const file = scope.file();
    const c = open(file);
    c.exec('CREATE TABLE t (x)');
    c.close();
    mkdirSync(`${file}.lock`); // someone else holds it ...
    const d = scope.open(file, { synchronous: 'normal' });
    setTimeout(() => rmSync(`${file}.lock`, { recursive: true }), 100); // ... for 100 ms
    // Used to fail with "Safety level may not be changed inside a transaction".
    await d.transaction((tx) => tx.run('INSERT INTO t VALUES (1)'));
    expect(d.get('PRAGMA synchronous')).toEqual({ synchronous: 1 });
    expect(d.all('SELECT x FROM t')).toEqual([{ x: 1 }]);
  });
});

describe('journals and journal modes', () => {
  it('PRAGMA journal_mode = wal is refused with kind misuse saying why; the mode stays', () => {
    const c = scope.open(scope.file());
    const e = checkSqliteError(thrown(() => c.exec('PRAGMA journal_mode = WAL')), 'misuse');
    expect(e.message).toMatch(/no shared memory.*cannot run WAL/);
    expect(c.get('PRAGMA journal_mode')).toEqual({ journal_mode: 'delete' });
    checkSqliteError(thrown(() => c.get('PRAGMA main.journal_mode = wal')), 'misuse');
  });

  it('a zeroed journal left by a dead holder is removed by the next process that takes the lock', () => {
    const file = scope.file();
    const c = open(file);
    c.exec('CREATE TABLE t (x); INSERT INTO t VALUES (1)');
    c.close();
    writeFileSync(`${file}-journal`, Buffer.concat([Buffer.alloc(28), Buffer.alloc(1000, 7)]));
    const d = scope.open(file);
    expect(d.get('SELECT x FROM t')).toEqual({ x: 1 });
    expect(existsSync(`${file}-journal`)).toBe(false);
    d.close();
    // A journal that is not zeroed (hot, or someone else's) is left to SQLite.
    writeFileSync(`${file}-journal`, Buffer.alloc(1000, 7));
    const e = scope.open(file);
    try {
      e.get('SELECT x FROM t');
    } catch {
      // SQLite judges that garbage; what matters is that siblite did not delete it
    }
    expect(existsSync(`${file}-journal`)).toBe(true);
  });
});

describe('locking modes and the hand-off', () => {
  it("'auto' keeps the lock while used and hands it back when idle", async () => {
    const file = scope.file();
    const c = scope.open(file);
    c.exec('CREATE TABLE t (x)');
    for (let i = 0; i < 10; i++) c.get('SELECT count(*) FROM t');
    expect(existsSync(`${file}.lock`)).toBe(true);
    await waitFor(() => !existsSync(`${file}.lock`));
    // And takes it again on the next statement.
    c.run('INSERT INTO t VALUES (1)');
    expect(existsSync(`${file}.lock`)).toBe(true);
  });

  it("'shared' holds no lock between statements; 'exclusive' keeps it until close", async () => {
    const a = scope.file();
    const s = scope.open(a, { locking: 'shared' });
    s.exec('CREATE TABLE t (x)');
    s.get('SELECT count(*) FROM t');
    expect(existsSync(`${a}.lock`)).toBe(false);

    const b = scope.file();
    const x = open(b, { locking: 'exclusive' });
    x.exec('CREATE TABLE t (x)');
    await new Promise((r) => setTimeout(r, 150));
    expect(existsSync(`${b}.lock`)).toBe(true);
    x.close();
    expect(existsSync(`${b}.lock`)).toBe(false);
  });

  it('a waiting connection gets the lock from an auto holder that is idle on the event loop', async () => {
    const file = scope.file();
    const a = openDatabaseFile(file, { timings: { idleMs: 60_000 } }); // never idle: only the waiter counts
    const b = openDatabaseFile(file, { locking: 'shared' });
    try {
      a.access.beforeUse();
      a.db.exec('CREATE TABLE t (x)');
      a.access.afterUse(false);
      expect(a.access.holdsLock).toBe(true);
      expect(() => b.db.exec('INSERT INTO t VALUES (1)')).toThrow(/locked/);
      expect(existsSync(`${file}.lock-wait`)).toBe(true);
      await waitFor(() => !a.access.holdsLock);
      expect(a.access.stats().waiterReleases).toBe(1);
      b.db.exec('INSERT INTO t VALUES (1)');
      expect(existsSync(`${file}.lock-wait`)).toBe(false); // the waiter got in and cleared it
    } finally {
      for (const o of [a, b]) {
        o.access.close();
        o.db.close();
      }
    }
  });

  it('a holder in a synchronous loop hands the lock back at the end of its transaction once someone waits', () => {
    const file = scope.file();
    const a = openDatabaseFile(file, { timings: { idleMs: 60_000, checkMs: 1 } });
    try {
      const use = (sql: string) => {
        a.access.beforeUse();
        try {
          a.db.exec(sql);
        } finally {
          a.access.afterUse(a.db.inTransaction);
        }
      };
      use('CREATE TABLE t (x)');
      markWaiting(`${file}.lock`); // as a refused process would
      // Inside a transaction the lock is kept...
      use('BEGIN IMMEDIATE');
      const t0 = Date.now();
      while (Date.now() - t0 < 5) use('INSERT INTO t VALUES (1)');
      expect(a.access.holdsLock).toBe(true);
      // ...and handed back at the first point where no transaction is open.
      use('COMMIT');
      expect(a.access.holdsLock).toBe(false);
      expect(a.access.stats().waiterReleases).toBe(1);
      // Grace period: while the waiter has not taken the lock, this process's statements are
      // refused at once (BusyError), without touching the file.
      const e = checkSqliteError(thrown(() => use('INSERT INTO t VALUES (2)')), 'busy', 'SQLITE_BUSY');
      expect(e.message).toContain('handing');
      expect(a.access.holdsLock).toBe(false);
      // The waiter got in (it removes the marker when it takes the lock): back to holding.
      rmSync(`${file}.lock-wait`);
      use('INSERT INTO t VALUES (2)');
      expect(a.access.holdsLock).toBe(true);
      expect(a.access.stats().graceRefusals).toBe(1);
    } finally {
      a.access.close();
      a.db.close();
    }
  });
});
