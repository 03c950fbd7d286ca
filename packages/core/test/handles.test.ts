/**
 * Handles (spec "Handles"): one engine per file, private :memory: databases, siblings, closing.
 */
import { existsSync, mkdirSync, symlinkSync } from 'node:fs';
import { join, relative } from 'node:path';
import { describe, expect, it } from 'vitest';
import { open, type Connection, type TransactionMode } from '../src/index.js';
import { expectBusy, expectSqliteError, useScope } from './helpers.js';

const scope = useScope();

/** True when `b` runs on the same SQLite connection as `a`: TEMP tables are per connection. */
function sameEngine(a: Connection, b: Connection): boolean {
  const name = `probe_${Math.random().toString(36).slice(2)}`;
  a.exec(`CREATE TEMP TABLE ${name} (x)`);
  try {
    return b.get(`SELECT 1 AS one FROM temp.sqlite_schema WHERE name = ?`, [name]) !== undefined;
  } finally {
    a.exec(`DROP TABLE temp.${name}`);
  }
}

describe('open() shares one engine per file', () => {
  it('absolute, relative, dotted and symlinked paths of one file share one engine', () => {
    const dir = scope.dir();
    const file = join(dir, 'a.db');
    const a = scope.open(file);
    a.exec('CREATE TABLE t (x)');
    const rel = scope.open(relative(process.cwd(), file));
    const dotted = scope.open(join(dir, '.', 'sub', '..', 'a.db'));
    const fileLink = join(dir, 'link.db');
    symlinkSync(file, fileLink);
    const viaFileLink = scope.open(fileLink);
    mkdirSync(join(dir, 'real'));
    const dirLink = join(dir, 'dirlink');
    symlinkSync(dir, dirLink);
    const viaDirLink = scope.open(join(dirLink, 'a.db'));

    for (const other of [rel, dotted, viaFileLink, viaDirLink]) {
      expect(sameEngine(a, other)).toBe(true);
      expect(sameEngine(other, a)).toBe(true);
      // A write on one is seen by the other at once, both ways.
      const v = Math.random();
      a.run('INSERT INTO t VALUES (?)', [v]);
      expect(other.get('SELECT count(*) AS n FROM t WHERE x = ?', [v])).toEqual({ n: 1 });
      other.run('DELETE FROM t WHERE x = ?', [v]);
      expect(a.get('SELECT count(*) AS n FROM t WHERE x = ?', [v])).toEqual({ n: 0 });
    }
    // The same engine means the same transaction arbiter: an uncommitted write of one handle
    // makes the other's read of that table busy (two engines would not know of each other).
    a.exec('BEGIN IMMEDIATE');
    a.run('INSERT INTO t VALUES (1)');
    expectBusy(() => viaFileLink.all('SELECT * FROM t'));
    a.exec('ROLLBACK');
    expect(viaFileLink.all('SELECT * FROM t')).toEqual([]);
  });

  it('two different files do not share', () => {
    const a = scope.open(scope.file());
    const b = scope.open(scope.file());
    expect(sameEngine(a, b)).toBe(false);
  });

  it("each open(':memory:') is a new private database; its siblings share it", () => {
    const a = scope.open(':memory:');
    const b = scope.open(':memory:');
    const c = scope.open('');
    a.exec('CREATE TABLE t (x); INSERT INTO t VALUES (1)');
    expectSqliteError(() => b.all('SELECT * FROM t'), 'sql', 'SQLITE_ERROR');
    expectSqliteError(() => c.all('SELECT * FROM t'), 'sql', 'SQLITE_ERROR');
    b.exec('CREATE TABLE t (x); INSERT INTO t VALUES (2)');
    expect(a.all('SELECT x FROM t')).toEqual([{ x: 1 }]);
    expect(b.all('SELECT x FROM t')).toEqual([{ x: 2 }]);
    expect(sameEngine(a, b)).toBe(false);
    const sib = scope.connect(a);
    expect(sameEngine(a, sib)).toBe(true);
    expect(sib.all('SELECT x FROM t')).toEqual([{ x: 1 }]);
    expect(sib.path).toBe(a.path);
  });
});

describe('siblings', () => {
  for (const where of ['memory', 'file'] as const) {
    it(`see each other's writes at once, both ways (${where})`, () => {
      const parent = scope.open(where === 'memory' ? ':memory:' : scope.file());
      const sib = scope.connect(parent);
      expect(sib.id).not.toBe(parent.id);
      parent.exec('CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)');
      parent.run('INSERT INTO t (v) VALUES (?)', ['from parent']);
      expect(sib.all('SELECT v FROM t')).toEqual([{ v: 'from parent' }]);
      sib.run('UPDATE t SET v = ?', ['from sibling']);
      expect(parent.get('SELECT v FROM t')).toEqual({ v: 'from sibling' });
      const grandchild = scope.connect(sib);
      grandchild.run('INSERT INTO t (v) VALUES (?)', ['from grandchild']);
      expect(parent.get('SELECT count(*) AS n FROM t')).toEqual({ n: 2 });
    });
  }

  it('a sibling outlives its closed parent, and can mint further siblings', () => {
    const file = scope.file();
    const parent = open(file);
    const sib = scope.connect(parent);
    parent.exec('CREATE TABLE t (x)');
    parent.exec('CREATE TEMP TABLE mark (x)');
    parent.close();
    expect(parent.isOpen).toBe(false);
    expect(sib.isOpen).toBe(true);
    sib.run('INSERT INTO t VALUES (1)');
    expect(sib.all('SELECT x FROM t')).toEqual([{ x: 1 }]);
    // Still the same engine: the parent's TEMP table lives on.
    expect(sib.all("SELECT name FROM temp.sqlite_schema WHERE name = 'mark'")).toHaveLength(1);
    const next = scope.connect(sib);
    expect(next.all('SELECT x FROM t')).toEqual([{ x: 1 }]);
    // A new open() of the file joins the engine the sibling keeps alive.
    const again = scope.open(file);
    expect(again.all("SELECT name FROM temp.sqlite_schema WHERE name = 'mark'")).toHaveLength(1);
  });

  it('a sibling of a read-only handle is read-only too', () => {
    const file = scope.file();
    scope.open(file).exec('CREATE TABLE t (x)');
    const ro = scope.open(file, { readonly: true });
    const sib = scope.connect(ro);
    expect(sib.readonly).toBe(true);
    expectSqliteError(() => sib.run('INSERT INTO t VALUES (1)'), 'readonly', 'SQLITE_READONLY');
    expect(sib.all('SELECT * FROM t')).toEqual([]);
  });
});

describe('closed handles', () => {
  it('connect() and every statement method throw kind closed; close() twice is harmless', async () => {
    const conn = open(':memory:');
    const keep = scope.connect(conn);
    conn.exec('CREATE TABLE t (x)');
    const stmt = conn.prepare('SELECT * FROM t');
    const insert = conn.prepare('INSERT INTO t VALUES (?)');
    conn.close();
    conn.close();
    expect(conn.isOpen).toBe(false);
    expect(conn.inTransaction).toBe(false);
    const attempts: Array<() => unknown> = [
      () => conn.connect(),
      () => conn.exec('SELECT 1'),
      () => conn.exec(''),
      () => conn.run('INSERT INTO t VALUES (1)'),
      () => conn.get('SELECT 1'),
      () => conn.all('SELECT 1'),
      () => conn.iterate('SELECT 1'),
      () => conn.prepare('SELECT 1'),
      () => conn.run('BEGIN'),
      () => conn.exec('COMMIT'),
      () => stmt.all(),
      () => stmt.get(),
      () => stmt.iterate(),
      () => insert.run([1]),
    ];
    for (const attempt of attempts) expectSqliteError(attempt, 'closed');
    expect(stmt.isFinalized).toBe(true);
    // Statements of a closed handle were finalized for the user: finalize() is not needed.
    expect(keep.all('SELECT * FROM t')).toEqual([]);
    keep.close();
    keep.close();
  });

  it('transaction() on a closed handle rejects with kind closed and leaves siblings free', async () => {
    const conn = open(':memory:');
    const keep = scope.connect(conn);
    keep.exec('CREATE TABLE t (x)');
    conn.close();
    let ran = false;
    const err = await conn
      .transaction(() => {
        ran = true;
        return 1;
      })
      .then(
        () => undefined,
        (e: unknown) => e,
      );
    expectSqliteError(() => {
      throw err;
    }, 'closed');
    expect(ran).toBe(false);
    // The sibling is not blocked by a transaction begun for the closed handle.
    expect(keep.run('INSERT INTO t VALUES (1)').changes).toBe(1);
    keep.exec('BEGIN IMMEDIATE; COMMIT');
  });

  const modes: TransactionMode[] = ['deferred', 'immediate', 'exclusive', 'concurrent'];
  for (const mode of modes) {
    it(`closing a handle in a ${mode} transaction rolls it back and frees the others`, () => {
      const file = scope.file();
      const base = scope.open(file);
      base.exec("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'a')");
      const a = base.connect();
      const b = scope.connect(base);
      a.exec(`BEGIN ${mode.toUpperCase()}`);
      expect(a.transactionMode).toBe(mode);
      a.run('INSERT INTO t VALUES (2, ?)', ['uncommitted']);
      a.run("UPDATE t SET v = 'changed' WHERE id = 1");
      if (mode !== 'concurrent') {
        expectBusy(() => b.all('SELECT * FROM t'));
        expectBusy(() => b.exec('BEGIN IMMEDIATE'));
      }
      a.close();
      expect(a.inTransaction).toBe(false);
      expect(b.all('SELECT id, v FROM t ORDER BY id')).toEqual([{ id: 1, v: 'a' }]);
      b.exec('BEGIN IMMEDIATE');
      b.run('INSERT INTO t VALUES (2, ?)', ['b']);
      b.exec('COMMIT');
      expect(base.all('SELECT id, v FROM t ORDER BY id')).toEqual([
        { id: 1, v: 'a' },
        { id: 2, v: 'b' },
      ]);
    });
  }

  it('closing a handle whose concurrent transaction was parked by another handle rolls it back', async () => {
    const base = scope.open(':memory:');
    base.exec('CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)');
    const a = base.connect();
    a.exec('BEGIN CONCURRENT');
    a.run('INSERT INTO t VALUES (1, ?)', ['a']);
    base.run('INSERT INTO t VALUES (2, ?)', ['base']); // parks a
    a.close();
    expect(base.all('SELECT id FROM t')).toEqual([{ id: 2 }]);
    base.exec('BEGIN CONCURRENT');
    base.run('INSERT INTO t VALUES (1, ?)', ['base']);
    base.exec('COMMIT');
    expect(base.all('SELECT id FROM t ORDER BY id')).toEqual([{ id: 1 }, { id: 2 }]);
  });
});

describe('the engine closes with its last handle', () => {
  it('closes when the last handle closes; re-opening sees committed data on a new engine', () => {
    const file = scope.file();
    const a = open(file);
    const b = a.connect();
    a.exec('CREATE TABLE t (x); CREATE TEMP TABLE mark (x)');
    b.run('INSERT INTO t VALUES (?)', ['committed']);
    b.exec('BEGIN IMMEDIATE');
    b.run('INSERT INTO t VALUES (?)', ['never committed']);
    a.close();
    // One handle left: a new open() still joins the same engine.
    const c = open(file);
    expect(c.all("SELECT name FROM temp.sqlite_schema WHERE name = 'mark'")).toHaveLength(1);
    c.close();
    b.close();
    expect(existsSync(`${file}.lock`)).toBe(false);
    const d = scope.open(file);
    // A new engine: the TEMP table died with the old one; committed data is there.
    expect(d.all("SELECT name FROM temp.sqlite_schema WHERE name = 'mark'")).toEqual([]);
    expect(d.all('SELECT x FROM t')).toEqual([{ x: 'committed' }]);
    d.run('INSERT INTO t VALUES (?)', ['after']);
    expect(d.get('SELECT count(*) AS n FROM t')).toEqual({ n: 2 });
  });

  it(':memory: data goes with its last handle; closing in any order works', () => {
    const a = open(':memory:');
    const b = a.connect();
    const c = b.connect();
    a.exec('CREATE TABLE t (x)');
    b.close();
    a.close();
    c.run('INSERT INTO t VALUES (1)');
    expect(c.all('SELECT x FROM t')).toEqual([{ x: 1 }]);
    c.close();
    expectSqliteError(() => c.all('SELECT 1'), 'closed');
    const fresh = scope.open(':memory:');
    expectSqliteError(() => fresh.all('SELECT x FROM t'), 'sql');
  });
});
