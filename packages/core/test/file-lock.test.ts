/**
 * The lock manager and the lock policy, in one process: owner records and the rules for
 * breaking a lock, locks that are never broken, the waiting marker and the hand-off, idle
 * release, and the three locking modes.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, realpathSync, rmSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { BusyError, open } from '../src/index.js';
import { openDatabaseFile } from '../src/file/database.js';
import { checkReserved, isHeld, lockStats, markWaiting, ownerIsGone, self, type LockOwner } from '../src/file/lock.js';
import { checkSqliteError, thrown, useScope } from './helpers.js';

const scope = useScope();

/** The pid of a process that has exited (and been reaped). */
function deadPid(): number {
  const r = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))']);
  return Number(r.stdout.toString());
}

function record(over: Partial<LockOwner>): LockOwner {
  return { ...self, token: 'test', since: Date.now(), ...over };
}

async function waitFor(cond: () => boolean, ms = 3000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not reached in time');
    await new Promise((r) => setTimeout(r, 5));
  }
}

describe('owner records: when is the owner provably gone', () => {
  it('this process is alive; an earlier process with our pid is gone', () => {
    expect(ownerIsGone(record({}))).toBe(false);
    expect(ownerIsGone(record({ start: '1' }))).toBe(self.start !== null);
  });

  it('a pid that exited is gone; a live pid with the same start time is not; pid reuse is detected', () => {
    expect(ownerIsGone(record({ pid: deadPid() }))).toBe(true);
    const parentStart = readFileSync(`/proc/${process.ppid}/stat`, 'utf8').split(') ')[1]?.split(' ')[19] ?? null;
    expect(ownerIsGone(record({ pid: process.ppid, start: parentStart }))).toBe(false);
    expect(ownerIsGone(record({ pid: process.ppid, start: '12345' }))).toBe(true);
  });

  it('another host or pid namespace is never judged gone; another boot is', () => {
    const dead = deadPid();
    expect(ownerIsGone(record({ pid: dead, host: `${self.host}-elsewhere` }))).toBe(false);
    expect(ownerIsGone(record({ pid: dead, pidns: 'pid:[1]' }))).toBe(false);
    expect(ownerIsGone(record({ pid: process.pid, boot: 'an-earlier-boot' }))).toBe(self.boot !== null);
  });
});

describe('stale locks', () => {
  it('a lock whose recorded owner died is broken by the next statement', () => {
    const file = scope.file();
    const c = scope.open(file);
    c.exec('CREATE TABLE t (x); INSERT INTO t VALUES (1)');
    c.close();
    mkdirSync(`${file}.lock`);
    writeFileSync(`${file}.lock/owner`, JSON.stringify(record({ pid: deadPid(), token: 'dead-1' })));
    const before = lockStats().staleBroken;
    const d = scope.open(file);
    expect(d.get('SELECT x FROM t')).toEqual({ x: 1 });
    expect(lockStats().staleBroken).toBe(before + 1);
  });

  it('a lock without an owner record is never broken; the error names the lock directory', () => {
    const file = scope.file();
    const c = open(file);
    c.exec('CREATE TABLE t (x)');
    c.close();
    // A plain node-sqlite3-wasm process holds it: an empty lock directory.
    mkdirSync(`${file}.lock`);
    const d = scope.open(file);
    for (let i = 0; i < 3; i++) {
      const e = checkSqliteError(thrown(() => d.get('SELECT count(*) FROM t')), 'busy', 'SQLITE_BUSY');
      expect(e).toBeInstanceOf(BusyError);
      expect(e.message).toContain(`${file}.lock`);
      expect(e.message).toContain('no owner record');
    }
    expect(existsSync(`${file}.lock`)).toBe(true);
  });

  it('a record that cannot be parsed counts as no record', () => {
    const file = scope.file();
    mkdirSync(`${file}.lock`);
    writeFileSync(`${file}.lock/owner`, '{"pid": 1'); // half-written
    const d = scope.open(file);
    checkSqliteError(thrown(() => d.get('SELECT 1 FROM sqlite_schema')), 'busy');
    expect(existsSync(`${file}.lock`)).toBe(true);
  });

  it('a break in progress (fresh <file>.lock-break) defers breaking; an abandoned one is removed', () => {
    const file = scope.file();
    scope.open(file).close();
    mkdirSync(`${file}.lock`);
    writeFileSync(`${file}.lock/owner`, JSON.stringify(record({ pid: deadPid(), token: 'dead-2' })));
    mkdirSync(`${file}.lock-break`);
    const d = scope.open(file);
    checkSqliteError(thrown(() => d.get('SELECT 1 FROM sqlite_schema')), 'busy');
    expect(existsSync(`${file}.lock`)).toBe(true);
    const old = Date.now() / 1000 - 60;
    utimesSync(`${file}.lock-break`, old, old);
    expect(d.get('SELECT 1 AS one FROM sqlite_schema')).toBeUndefined();
    expect(existsSync(`${file}.lock-break`)).toBe(false);
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
    const d = scope.open(file, { synchronous: 'normal', journalMode: 'persist' });
    checkSqliteError(thrown(() => d.get('SELECT count(*) FROM t')), 'busy', 'SQLITE_BUSY');
    rmSync(`${file}.lock`, { recursive: true });
    expect(d.get('SELECT count(*) AS n FROM t')).toEqual({ n: 0 });
    expect(d.get('PRAGMA synchronous')).toEqual({ synchronous: 1 });
    expect(d.get('PRAGMA journal_mode')).toEqual({ journal_mode: 'persist' });
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
