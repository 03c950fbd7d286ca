/**
 * Rowids chosen by SQLite when several processes insert into one table in concurrent
 * transactions: each process reserves rowids only against its own handles, so two processes
 * are handed the same "largest + 1" and the second to commit conflicts. Once a process has
 * lost a rowid to another process in a table, it picks that table's rowids in its own stripe
 * (docs/concurrency.md, "Rowids chosen by SQLite"), and the reruns stop.
 */
import { execFile, fork, type ChildProcess } from 'node:child_process';
import { promisify } from 'node:util';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { errorKind } from '../src/index.js';
import { coreDir, ensureBuilt } from './fixtures/harness.js';
import { thrown, useScope } from './helpers.js';

beforeAll(() => ensureBuilt(), 120_000);
const scope = useScope();
const STRIPES = 64;

/** Runs autocommit statements in a separate node process on `file`. */
async function otherProcess(file: string, ...sql: string[]): Promise<void> {
  const dist = pathToFileURL(join(coreDir, 'dist', 'index.js')).href;
  const script = `const { open } = await import(${JSON.stringify(dist)}); const db = open(${JSON.stringify(file)});
    for (const s of ${JSON.stringify(sql)}) db.run(s); db.close();`;
  await promisify(execFile)(process.execPath, ['--input-type=module', '-e', script], { timeout: 30_000 });
}

const children = new Set<ChildProcess>();
afterEach(() => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  children.clear();
});

describe('rowids chosen by SQLite, several processes on one file', () => {
  it('a rowid lost to another process is a conflict; the table is then striped and the same race commits', async () => {
    const file = scope.file();
    const db = scope.open(file);
    db.exec("CREATE TABLE t (id INTEGER PRIMARY KEY, tag TEXT NOT NULL); INSERT INTO t (tag) VALUES ('seed')");
    const a = scope.connect(db);

    // Dense while nothing collided: largest + 1, as SQLite.
    a.exec('BEGIN CONCURRENT');
    expect(a.run("INSERT INTO t (tag) VALUES ('a1')").lastInsertRowid).toBe(2);
    await otherProcess(file, "INSERT INTO t (tag) VALUES ('other1')"); // also handed 2
    const e = thrown(() => a.exec('COMMIT'));
    expect(errorKind(e)).toBe('busy_snapshot');
    expect(String((e as Error).message)).toMatch(/was told rowid 2, which a commit has taken since/);
    expect(db.all('SELECT id, tag FROM t ORDER BY id')).toEqual([{ id: 1, tag: 'seed' }, { id: 2, tag: 'other1' }]);

    // Striped now: this process picks above the largest rowid, in its own stripe (pid mod 64).
    const slot = process.pid % STRIPES;
    const stripe = (above: number) => above + 1 + ((((slot - (above + 1)) % STRIPES) + STRIPES) % STRIPES);
    if (stripe(2) === 3) db.run("INSERT INTO t (tag) VALUES ('filler')"); // keep the race meaningful
    const max = db.get<{ m: number }>('SELECT max(id) AS m FROM t')!.m;
    a.exec('BEGIN CONCURRENT');
    const mine = Number(a.run("INSERT INTO t (tag) VALUES ('a2')").lastInsertRowid);
    expect(mine).toBe(stripe(max));
    expect(mine % STRIPES).toBe(slot);
    await otherProcess(file, "INSERT INTO t (tag) VALUES ('other2')"); // largest + 1: not ours
    a.exec('COMMIT');
    expect(db.get("SELECT id FROM t WHERE tag = 'a2'")).toEqual({ id: mine });
    expect(db.get("SELECT id FROM t WHERE tag = 'other2'")).toEqual({ id: max + 1 });

    // Autocommit statements and other tables stay dense.
    expect(db.run("INSERT INTO t (tag) VALUES ('auto')").lastInsertRowid).toBe(mine + 1);
    db.exec('CREATE TABLE u (id INTEGER PRIMARY KEY, v)');
    a.exec('BEGIN CONCURRENT');
    expect(a.run('INSERT INTO u (v) VALUES (1)').lastInsertRowid).toBe(1);
    a.exec('COMMIT');
  }, 60_000);

  it('AUTOINCREMENT: a striped rowid is above sqlite_sequence and every rowid used, never one handed out before', async () => {
    const file = scope.file();
    const db = scope.open(file);
    db.exec('CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, tag TEXT NOT NULL)');
    const a = scope.connect(db);
    a.exec('BEGIN CONCURRENT');
    expect(a.run("INSERT INTO t (tag) VALUES ('a1')").lastInsertRowid).toBe(1);
    await otherProcess(file, "INSERT INTO t (tag) VALUES ('other1')"); // also handed 1
    expect(errorKind(thrown(() => a.exec('COMMIT')))).toBe('busy_snapshot');
    // Striped now. The other process used ids up to 100, then deleted them: never reused.
    await otherProcess(file, "INSERT INTO t (id, tag) VALUES (100, 'x')", 'DELETE FROM t WHERE id > 1');
    expect(db.get('SELECT max(id) AS m FROM t')).toEqual({ m: 1 });
    expect(db.get("SELECT seq FROM sqlite_sequence WHERE name = 't'")).toEqual({ seq: 100 });
    const slot = process.pid % STRIPES;
    a.exec('BEGIN CONCURRENT');
    const mine = Number(a.run("INSERT INTO t (tag) VALUES ('a2')").lastInsertRowid);
    expect(mine).toBeGreaterThan(100);
    expect(mine).toBeLessThanOrEqual(100 + STRIPES);
    expect(mine % STRIPES).toBe(slot);
    a.exec('COMMIT');
    expect(db.get("SELECT seq FROM sqlite_sequence WHERE name = 't'")).toEqual({ seq: mine });
  }, 60_000);

  it('REPLACE is never replayed over the row another process committed at the rowid it was told', async () => {
    const file = scope.file();
    const db = scope.open(file);
    db.exec('CREATE TABLE t (id INTEGER PRIMARY KEY, tag TEXT NOT NULL)');
    const a = scope.connect(db);
    a.exec('BEGIN CONCURRENT');
    expect(a.run("INSERT OR REPLACE INTO t (tag) VALUES ('mine')").lastInsertRowid).toBe(1);
    await otherProcess(file, "INSERT INTO t (tag) VALUES ('theirs')");
    expect(errorKind(thrown(() => a.exec('COMMIT')))).toBe('busy_snapshot');
    expect(db.all('SELECT id, tag FROM t')).toEqual([{ id: 1, tag: 'theirs' }]);
  }, 60_000);

  it('4 processes inserting at once: every row committed once, under 1.3 transaction runs per row', async () => {
    const file = scope.file();
    const db = scope.open(file);
    db.exec('CREATE TABLE t (id INTEGER PRIMARY KEY, tag TEXT NOT NULL UNIQUE)');
    const PER = 50;
    const fixture = join(coreDir, 'test', 'fixtures', 'rowid-inserter.mjs');
    const kids = await Promise.all(
      [1, 2, 3, 4].map(
        () =>
          new Promise<ChildProcess>((resolve, reject) => {
            const c = fork(fixture, [file, String(PER), '4', '30'], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
            children.add(c);
            c.once('message', () => resolve(c));
            c.once('error', reject);
          }),
      ),
    );
    const results = await Promise.all(
      kids.map(
        (c) =>
          new Promise<{ calls: number; committed: number; rowids: number[] }>((resolve, reject) => {
            c.once('message', resolve);
            c.once('exit', (code) => code !== 0 && reject(new Error(`inserter exited with ${code}`)));
            c.send('go');
          }),
      ),
    );
    const calls = results.reduce((n, r) => n + r.calls, 0);
    const committed = results.reduce((n, r) => n + r.committed, 0);
    expect(committed).toBe(4 * PER);
    expect(db.get('SELECT count(*) AS n, count(DISTINCT tag) AS tags FROM t')).toEqual({ n: 4 * PER, tags: 4 * PER });
    // Every rowid a transaction was shown is the one that committed.
    const shown = results.flatMap((r) => r.rowids).sort((x, y) => x - y);
    expect(db.all<{ id: number }>('SELECT id FROM t ORDER BY id').map((r) => r.id)).toEqual(shown);
    if (process.env.SIBLITE_TEST_DEBUG) console.log(`calls per row: ${(calls / committed).toFixed(3)}`);
    // Without stripes: 2.2 here (every hand-off of the file between processes cost a rerun).
    expect(calls / committed).toBeLessThan(1.3);
  }, 120_000);
});
