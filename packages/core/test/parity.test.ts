/**
 * better-sqlite3 parity: each API the README's parity table says "yes" to, tested here; and
 * how the row formats behave inside concurrent transactions (logged and validated as shown).
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { open, type Connection } from '../src/index.js';
import { expectSqliteError, useScope } from './helpers.js';

const scope = useScope();

function people(): Connection {
  const db = scope.open(':memory:');
  db.exec(`
    CREATE TABLE person (id INTEGER PRIMARY KEY, name TEXT, big INTEGER);
    CREATE TABLE pet (id INTEGER PRIMARY KEY, name TEXT, owner INTEGER);
    INSERT INTO person VALUES (1, 'ada', 9007199254740993), (2, 'grace', 7);
    INSERT INTO pet VALUES (10, 'rex', 1);
  `);
  return db;
}

describe('Statement row shapes', () => {
  it('raw() returns arrays and keeps same-named columns; raw(false) goes back to objects', () => {
    const db = people();
    const s = db.prepare('SELECT person.id, person.name, pet.id, pet.name FROM person JOIN pet ON pet.owner = person.id');
    expect(s.get()).toEqual({ id: 10, name: 'rex' }); // objects: the later same-named column wins
    expect(s.raw().get()).toEqual([1, 'ada', 10, 'rex']);
    expect(s.all()).toEqual([[1, 'ada', 10, 'rex']]);
    expect([...s.iterate()]).toEqual([[1, 'ada', 10, 'rex']]);
    expect(s.raw(false).get()).toEqual({ id: 10, name: 'rex' });
  });

  it('pluck() returns the first column; expand() groups by table, expressions under $', () => {
    const db = people();
    expect(db.prepare('SELECT name FROM person ORDER BY id').pluck().all()).toEqual(['ada', 'grace']);
    expect(db.prepare('SELECT name FROM person WHERE id = 5').pluck().get()).toBeUndefined();
    const e = db.prepare('SELECT person.name, pet.name, 1 + 1 AS two FROM person JOIN pet ON pet.owner = person.id').expand();
    expect(e.get()).toEqual({ person: { name: 'ada' }, pet: { name: 'rex' }, $: { two: 2 } });
    // The shapes exclude each other, as in better-sqlite3.
    const s = db.prepare('SELECT id, name FROM person WHERE id = 2').pluck();
    expect(s.raw().get()).toEqual([2, 'grace']);
    expect(s.pluck().get()).toBe(2);
  });

  it('raw/pluck/expand are refused on a statement that returns no rows', () => {
    const db = people();
    const s = db.prepare('UPDATE person SET name = name');
    expect(s.reader).toBe(false);
    expectSqliteError(() => s.raw(), 'misuse');
    expectSqliteError(() => s.pluck(), 'misuse');
  });

  it('reader, readonly, source, columns(), busy', () => {
    const db = people();
    const q = db.prepare('SELECT person.id AS pid, upper(name) AS up FROM person');
    expect(q.reader).toBe(true);
    expect(q.readonly).toBe(true);
    expect(q.busy).toBe(false);
    expect(q.source).toBe('SELECT person.id AS pid, upper(name) AS up FROM person');
    expect(q.database).toBe(db);
    expect(q.columns()).toEqual([
      { name: 'pid', table: 'person', column: null, database: null, type: null },
      { name: 'up', table: null, column: null, database: null, type: null },
    ]);
    const w = db.prepare('INSERT INTO pet (name) VALUES (?) RETURNING id');
    expect(w.reader).toBe(true);
    expect(w.readonly).toBe(false);
    const u = db.prepare('DELETE FROM pet');
    expect(u.reader).toBe(false);
    expect(u.columns()).toEqual([]);
  });

  it('bind() binds for good; later calls with parameters are refused', () => {
    const db = people();
    const s = db.prepare('SELECT name FROM person WHERE id = ?').pluck().bind([2]);
    expect(s.get()).toBe('grace');
    expectSqliteError(() => s.get([1]), 'misuse');
    expectSqliteError(() => s.bind([1]), 'misuse');
  });
});

describe('safe integers', () => {
  it('safeIntegers() returns every INTEGER as a bigint, others untouched', () => {
    const db = people();
    const s = db.prepare('SELECT id, name, big, 1.5 AS f FROM person ORDER BY id');
    expect(s.all()[1]).toEqual({ id: 2, name: 'grace', big: 7, f: 1.5 });
    expect(s.all()[0]!.big).toBe(9007199254740993n); // beyond 2^53: a bigint anyway
    expect(s.safeIntegers().all()).toEqual([
      { id: 1n, name: 'ada', big: 9007199254740993n, f: 1.5 },
      { id: 2n, name: 'grace', big: 7n, f: 1.5 },
    ]);
    expect(s.raw().get()).toEqual([1n, 'ada', 9007199254740993n, 1.5]);
    expect(s.safeIntegers(false).raw().get()).toEqual([1, 'ada', 9007199254740993n, 1.5]);
  });

  it('defaultSafeIntegers() applies to get/all and new statements of the handle and of later siblings', () => {
    const db = people();
    db.defaultSafeIntegers();
    expect(db.get('SELECT id FROM person WHERE id = 2')).toEqual({ id: 2n });
    expect(db.prepare('SELECT id FROM person WHERE id = 2').get()).toEqual({ id: 2n });
    expect(db.prepare('SELECT id FROM person WHERE id = 2').safeIntegers(false).get()).toEqual({ id: 2 });
    const sib = scope.track(db.connect());
    expect(sib.all('SELECT id FROM person ORDER BY id')).toEqual([{ id: 1n }, { id: 2n }]);
    db.defaultSafeIntegers(false);
    expect(db.get('SELECT id FROM person WHERE id = 2')).toEqual({ id: 2 });
  });
});

describe('row formats inside BEGIN CONCURRENT are logged and validated as shown', () => {
  it('a raw read of two same-named columns conflicts when the one an object row would hide changed', async () => {
    const db = people();
    const a = scope.track(db.connect());
    const b = scope.track(db.connect());
    a.exec('BEGIN CONCURRENT');
    // As objects, `name` would show only pet.name; raw shows person.name too.
    const seen = a.prepare('SELECT person.name, pet.name FROM person JOIN pet ON pet.owner = person.id').raw().get();
    expect(seen).toEqual(['ada', 'rex']);
    a.run('UPDATE pet SET name = ? WHERE id = 10', ['max']);
    b.run("UPDATE person SET name = 'ADA' WHERE id = 1"); // parks a, commits
    expectSqliteError(() => a.exec('COMMIT'), 'busy_snapshot');
    expect(db.get('SELECT name FROM pet')).toEqual({ name: 'rex' });
  });

  it('an unchanged raw / safe-integer / plucked read validates and commits', () => {
    const db = people();
    const a = scope.track(db.connect());
    const b = scope.track(db.connect());
    a.exec('BEGIN CONCURRENT');
    expect(a.prepare('SELECT id, big FROM person WHERE id = 1').raw().safeIntegers().get()).toEqual([1n, 9007199254740993n]);
    expect(a.prepare('SELECT name FROM person WHERE id = 2').pluck().get()).toBe('grace');
    a.run('UPDATE pet SET name = ? WHERE id = 10', ['max']);
    b.run('INSERT INTO person VALUES (3, ?, 0)', ['linus']); // parks a; its reads are unchanged
    a.exec('COMMIT');
    expect(db.get('SELECT name FROM pet')).toEqual({ name: 'max' });
  });
});

describe('Connection', () => {
  it('name, memory, open, inTransaction', () => {
    const mem = people();
    expect(mem.name).toBe(':memory:');
    expect(mem.memory).toBe(true);
    expect(mem.open).toBe(true);
    const file = scope.file();
    const f = scope.open(file);
    expect(f.memory).toBe(false);
    expect(f.name).toBe(f.path);
    expect(f.inTransaction).toBe(false);
    f.exec('BEGIN');
    expect(f.inTransaction).toBe(true);
    f.exec('ROLLBACK');
    f.close();
    expect(f.open).toBe(false);
  });

  it('pragma() returns rows, or with simple the first value', () => {
    const db = people();
    expect(db.pragma('foreign_keys', { simple: true })).toBe(1);
    expect((db.pragma('table_info(person)') as { name: string }[]).map((c) => c.name)).toEqual(['id', 'name', 'big']);
    db.pragma('foreign_keys = OFF');
    expect(db.pragma('foreign_keys', { simple: true })).toBe(0);
    expect(db.pragma('user_version', { simple: true })).toBe(0);
  });

  it('function() registers a SQL function for every sibling; deterministic ones work in indexes', () => {
    const db = people();
    db.function('twice', (x) => (typeof x === 'number' ? x * 2 : null), { deterministic: true });
    expect(db.get('SELECT twice(21) AS v')).toEqual({ v: 42 });
    const sib = scope.track(db.connect());
    expect(sib.get('SELECT twice(id) AS v FROM person WHERE id = 2')).toEqual({ v: 4 });
    sib.exec('CREATE INDEX person_twice ON person (twice(id))');
    db.function('boom', () => {
      throw new Error('no!');
    });
    expect(() => db.get('SELECT boom()')).toThrow(/no!/);
  });

  it('a user function read inside BEGIN CONCURRENT runs again at validation; a changed result is a conflict', () => {
    const db = people();
    let calls = 0;
    let answer = 1;
    db.function('answer', () => {
      calls++;
      return answer;
    });
    const a = scope.track(db.connect());
    const b = scope.track(db.connect());
    a.exec('BEGIN CONCURRENT');
    expect(a.get('SELECT answer() AS v, name FROM person WHERE id = 1')).toEqual({ v: 1, name: 'ada' });
    a.run("UPDATE pet SET name = 'max'");
    b.run("UPDATE person SET big = 0 WHERE id = 2"); // a commit to a table the read used
    answer = 2;
    const before = calls;
    expectSqliteError(() => a.exec('COMMIT'), 'busy_snapshot');
    expect(calls).toBeGreaterThan(before); // it ran again
  });

  it('backup() writes a consistent copy with VACUUM INTO; serialize() returns the bytes', async () => {
    const db = people();
    const dest = join(scope.dir(), 'copy.db');
    await db.backup(dest);
    expect(existsSync(dest)).toBe(true);
    const copy = open(dest);
    try {
      expect(copy.all('SELECT name FROM person ORDER BY id')).toEqual([{ name: 'ada' }, { name: 'grace' }]);
    } finally {
      copy.close();
    }
    const bytes = db.serialize();
    expect(Buffer.from(bytes.subarray(0, 15)).toString()).toBe('SQLite format 3');
    await expect(db.backup(dest)).rejects.toThrow(); // exists already
    db.exec('BEGIN');
    await expect(db.backup(join(scope.dir(), 'x.db'))).rejects.toThrow(/inside a transaction/);
    db.exec('ROLLBACK');
  });

  it('backup() of a file database copies committed state only, while a sibling has a transaction open', async () => {
    const db = scope.open(scope.file());
    db.exec('CREATE TABLE t (x); INSERT INTO t VALUES (1)');
    const w = scope.track(db.connect());
    w.exec('BEGIN CONCURRENT');
    w.run('INSERT INTO t VALUES (2)');
    const dest = join(scope.dir(), 'snap.db');
    await db.backup(dest);
    w.exec('COMMIT');
    const copy = open(dest);
    try {
      expect(copy.all('SELECT x FROM t')).toEqual([{ x: 1 }]);
    } finally {
      copy.close();
    }
    expect(db.all('SELECT x FROM t ORDER BY x')).toEqual([{ x: 1 }, { x: 2 }]);
  });
});

describe('backup() beside a pessimistic transaction', () => {
  it('throws BusyError while another handle holds BEGIN IMMEDIATE, and works once it ends', async () => {
    const db = scope.open(':memory:');
    db.exec('CREATE TABLE t (x)');
    const w = scope.track(db.connect());
    w.exec('BEGIN IMMEDIATE');
    w.run('INSERT INTO t VALUES (1)');
    const err = await db.backup(join(scope.dir(), 'a.db')).catch((e) => e);
    expect(err.kind).toBe('busy');
    w.exec('COMMIT');
    const bytes = db.serialize();
    expect(bytes.length).toBeGreaterThan(0);
  });
});
