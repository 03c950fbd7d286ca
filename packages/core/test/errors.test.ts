/**
 * Errors (spec "Errors"): every kind the real engine can produce, with its code, `retryable`,
 * `cause`, and errorKind()/isRetryable() on anything.
 */
import { closeSync, mkdirSync, openSync, readFileSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  BusyError,
  ERROR_KINDS,
  errorKind,
  isRetryable,
  open,
  retry,
  retryableError,
  SqliteError,
  type Connection,
  type ErrorKind,
} from '../src/index.js';
import { checkSqliteError, expectSqliteError, useScope } from './helpers.js';

const scope = useScope();

/** Asserts the error carries the engine's original error as `cause`. */
function expectEngineCause(e: SqliteError): void {
  expect(e.cause).toBeInstanceOf(Error);
  const cause = e.cause as Error;
  expect(cause.name).toBe('SQLite3Error');
  expect(e.message.startsWith(cause.message)).toBe(true);
}

function memory(): Connection {
  const db = scope.open(':memory:');
  db.exec(`
    CREATE TABLE parent (id INTEGER PRIMARY KEY);
    CREATE TABLE t (
      id INTEGER PRIMARY KEY,
      u TEXT UNIQUE,
      nn TEXT NOT NULL DEFAULT 'x',
      c INT CHECK (c > 0),
      p INT REFERENCES parent(id)
    );
    CREATE TABLE s (i INTEGER, b BLOB) STRICT;
    INSERT INTO parent VALUES (1);
    INSERT INTO t (id, u, c, p) VALUES (1, 'taken', 1, 1);
  `);
  return db;
}

describe('engine errors get their code and kind', () => {
  const constraintCases: Array<[string, string, string]> = [
    ['UNIQUE', "INSERT INTO t (u) VALUES ('taken')", 'SQLITE_CONSTRAINT_UNIQUE'],
    ['NOT NULL', 'INSERT INTO t (nn) VALUES (NULL)', 'SQLITE_CONSTRAINT_NOTNULL'],
    ['CHECK', 'INSERT INTO t (c) VALUES (0)', 'SQLITE_CONSTRAINT_CHECK'],
    ['FOREIGN KEY (on by default)', 'INSERT INTO t (p) VALUES (99)', 'SQLITE_CONSTRAINT_FOREIGNKEY'],
    ['FOREIGN KEY on delete of a parent', 'DELETE FROM parent', 'SQLITE_CONSTRAINT_FOREIGNKEY'],
    ['datatype on a STRICT table', "INSERT INTO s (i) VALUES ('not a number')", 'SQLITE_CONSTRAINT_DATATYPE'],
  ];
  for (const [name, sql, code] of constraintCases) {
    it(`constraint: ${name}`, () => {
      const db = memory();
      const before = db.all('SELECT * FROM t');
      const e = expectSqliteError(() => db.run(sql), 'constraint', code);
      expectEngineCause(e);
      expect(db.all('SELECT * FROM t')).toEqual(before);
      // The same through a prepared statement and exec.
      expectSqliteError(() => db.prepare(sql).run(), 'constraint', code);
      expectSqliteError(() => db.exec(sql), 'constraint', code);
    });
  }

  it('constraint: primary key of a rowid table', () => {
    const db = memory();
    const e = expectSqliteError(() => db.run('INSERT INTO t (id) VALUES (1)'), 'constraint', /^SQLITE_CONSTRAINT_(PRIMARYKEY|UNIQUE)$/);
    expect(e.message).toMatch(/t\.id/);
  });

  const sqlCases: Array<[string, string, RegExp]> = [
    ['syntax error', 'SELEC 1', /syntax error/],
    ['no such table', 'SELECT * FROM nowhere', /no such table: nowhere/],
    ['no such column', 'SELECT nope FROM t', /no such column: nope/],
    ['no such function', 'SELECT nofunc(1)', /no such function/],
  ];
  for (const [name, sql, message] of sqlCases) {
    it(`sql: ${name}`, () => {
      const db = memory();
      for (const f of [() => db.run(sql), () => db.get(sql), () => db.prepare(sql), () => db.exec(sql)]) {
        const e = expectSqliteError(f, 'sql', 'SQLITE_ERROR');
        expect(e.message).toMatch(message);
        expectEngineCause(e);
      }
    });
  }

  it('closed', () => {
    const db = open(':memory:');
    db.close();
    const e = expectSqliteError(() => db.get('SELECT 1'), 'closed', 'SIBLITE_CLOSED');
    expect(e.message).toMatch(/closed/);
  });

  it('misuse', () => {
    const db = memory();
    expectSqliteError(() => db.exec('COMMIT'), 'misuse', 'SQLITE_MISUSE');
    db.exec('BEGIN');
    expectSqliteError(() => db.exec('BEGIN'), 'misuse', 'SQLITE_MISUSE');
    db.exec('ROLLBACK');
    expectSqliteError(() => db.run('SELECT :a', { b: 1 }), 'misuse');
    expectSqliteError(() => db.run('SELECT ?', [1, 2]), 'misuse');
    expectSqliteError(() => db.run('SELECT ?', [{} as never]), 'misuse');
    expectSqliteError(() => open(42 as never), 'misuse');
    expectSqliteError(() => open(':memory:', null as never), 'misuse');
  });

  it('readonly: open(file, { readonly: true }) refuses every kind of write, reads still work', () => {
    const file = scope.file();
    const rw = open(file);
    rw.exec('CREATE TABLE t (x); INSERT INTO t VALUES (1)');
    rw.close();
    const ro = scope.open(file, { readonly: true });
    const writes: Array<() => unknown> = [
      () => ro.run('INSERT INTO t VALUES (2)'),
      () => ro.exec('UPDATE t SET x = 3'),
      () => ro.prepare('DELETE FROM t').run(),
      () => ro.all('INSERT INTO t VALUES (4) RETURNING x'),
      () => ro.exec('CREATE TABLE u (y)'),
      () => ro.exec('DROP TABLE t'),
      () => ro.exec('PRAGMA user_version = 7'),
    ];
    for (const w of writes) expectSqliteError(w, 'readonly', 'SQLITE_READONLY');
    expect(ro.all('SELECT x FROM t')).toEqual([{ x: 1 }]);
    expect(ro.get('PRAGMA user_version')).toEqual({ user_version: 0 });
    // Inside its own transaction too.
    ro.exec('BEGIN');
    expectSqliteError(() => ro.run('INSERT INTO t VALUES (2)'), 'readonly', 'SQLITE_READONLY');
    ro.exec('COMMIT');
    // A read-write handle opened on the same file beside it still writes.
    const rw2 = scope.open(file);
    rw2.run('INSERT INTO t VALUES (5)');
    expect(ro.all('SELECT x FROM t ORDER BY x')).toEqual([{ x: 1 }, { x: 5 }]);
  });

  it('readonly open of a missing file is io (SQLITE_CANTOPEN) and does not create it', () => {
    const file = join(scope.dir(), 'missing.db');
    expectSqliteError(() => scope.open(file, { readonly: true }), 'io', 'SQLITE_CANTOPEN');
    expectSqliteError(() => scope.open(file, { fileMustExist: true }), 'io', 'SQLITE_CANTOPEN');
    expect(() => readFileSync(file)).toThrow();
  });

  it('busy: another handle holds a pessimistic transaction', () => {
    const db = memory();
    const other = scope.connect(db);
    db.exec("BEGIN IMMEDIATE; UPDATE t SET u = 'x'");
    const e = expectSqliteError(() => other.all('SELECT * FROM t'), 'busy', 'SQLITE_BUSY');
    expect(e).toBeInstanceOf(BusyError);
    expect(e.name).toBe('BusyError');
    db.exec('COMMIT');
  });

  it('busy_snapshot: two concurrent transactions read and update one row', () => {
    const db = memory();
    const a = scope.connect(db);
    const b = scope.connect(db);
    a.exec('BEGIN CONCURRENT');
    b.exec('BEGIN CONCURRENT');
    const ca = a.get<{ c: number }>('SELECT c FROM t WHERE id = 1')!.c;
    const cb = b.get<{ c: number }>('SELECT c FROM t WHERE id = 1')!.c;
    a.run('UPDATE t SET c = ? WHERE id = 1', [ca + 1]);
    b.run('UPDATE t SET c = ? WHERE id = 1', [cb + 1]);
    a.exec('COMMIT');
    const e = expectSqliteError(() => b.exec('COMMIT'), 'busy_snapshot', 'SQLITE_BUSY_SNAPSHOT');
    expect(e).toBeInstanceOf(BusyError);
    expect(b.inTransaction).toBe(false);
    b.exec('ROLLBACK'); // a no-op after SQLITE_BUSY_SNAPSHOT
    expectSqliteError(() => b.exec('ROLLBACK'), 'misuse');
    expect(db.get('SELECT c FROM t WHERE id = 1')).toEqual({ c: 2 });
  });

  it("corrupt: a file of garbage bytes is 'file is not a database' (SQLITE_NOTADB)", () => {
    const file = scope.file();
    writeFileSync(file, Buffer.alloc(8192, 'garbage!'));
    const e = expectSqliteError(() => {
      const db = scope.open(file);
      db.all('SELECT * FROM sqlite_schema');
    }, 'corrupt', 'SQLITE_NOTADB');
    expect(e.message).toMatch(/file is not a database/);
  });

  it("corrupt: damaged pages of a real database are 'database disk image is malformed'", () => {
    const file = scope.file();
    const db = open(file);
    db.exec("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); CREATE INDEX t_v ON t (v)");
    db.exec('BEGIN');
    for (let i = 0; i < 2000; i++) db.run('INSERT INTO t (v) VALUES (?)', [`value ${i} ${'x'.repeat(50)}`]);
    db.exec('COMMIT');
    db.close();
    const size = readFileSync(file).length;
    expect(size).toBeGreaterThan(3 * 4096);
    const fd = openSync(file, 'r+');
    try {
      // Keep page 1 (header and schema); scribble over every later page.
      for (let off = 4096; off < size; off += 4096) writeSync(fd, Buffer.alloc(4096, 0xa5), 0, 4096, off);
    } finally {
      closeSync(fd);
    }
    const again = scope.open(file);
    const e = expectSqliteError(() => again.all('SELECT * FROM t WHERE v > ?', ['value 5']), 'corrupt', /^SQLITE_CORRUPT/);
    expectEngineCause(e);
  });

  it('io: opening a path in a missing directory', () => {
    const file = join(scope.dir(), 'no', 'such', 'dir', 'x.db');
    const e = expectSqliteError(() => {
      const db = scope.open(file);
      db.exec('CREATE TABLE t (x)');
    }, 'io', /^SQLITE_(CANTOPEN|IOERR)/);
    expect(e.message.length).toBeGreaterThan(0);
  });

  it('io: opening a directory as a database', () => {
    const dir = scope.dir();
    mkdirSync(join(dir, 'adir'));
    expectSqliteError(() => {
      const db = scope.open(join(dir, 'adir'));
      db.exec('CREATE TABLE t (x)');
    }, 'io', /^SQLITE_(CANTOPEN|IOERR)/);
  });

  it('toobig: a blob over SQLITE_MAX_LENGTH', () => {
    const db = memory();
    const e = expectSqliteError(() => db.get('SELECT zeroblob(2000000000) AS z'), 'toobig', 'SQLITE_TOOBIG');
    expectEngineCause(e);
    expect(db.get('SELECT length(zeroblob(10)) AS n')).toEqual({ n: 10 });
  });

  it('full: a write past max_page_count', () => {
    const db = memory();
    db.exec('CREATE TABLE big (x BLOB)');
    db.get('PRAGMA max_page_count = 20');
    const e = expectSqliteError(() => {
      for (let i = 0; i < 100; i++) db.run('INSERT INTO big VALUES (zeroblob(4000))');
    }, 'full', 'SQLITE_FULL');
    expectEngineCause(e);
    db.run('DELETE FROM big');
  });

  it('retryable is true exactly for the busy kinds', () => {
    for (const kind of ERROR_KINDS) {
      const e = new SqliteError('x', { code: 'SQLITE_WHATEVER', kind });
      expect(e.retryable).toBe(kind === 'busy' || kind === 'busy_snapshot');
      expect(isRetryable(e)).toBe(e.retryable);
      expect(errorKind(e)).toBe(kind);
    }
  });

  it('codes map to kinds as SQLite names them', () => {
    const cases: Array<[string, ErrorKind]> = [
      ['SQLITE_BUSY', 'busy'],
      ['SQLITE_BUSY_SNAPSHOT', 'busy_snapshot'],
      ['SQLITE_BUSY_RECOVERY', 'busy'],
      ['SQLITE_CONSTRAINT_FOREIGNKEY', 'constraint'],
      ['SQLITE_ERROR', 'sql'],
      ['SQLITE_READONLY', 'readonly'],
      ['SQLITE_MISUSE', 'misuse'],
      ['SQLITE_IOERR_WRITE', 'io'],
      ['SQLITE_CANTOPEN', 'io'],
      ['SQLITE_CORRUPT', 'corrupt'],
      ['SQLITE_NOTADB', 'corrupt'],
      ['SQLITE_FULL', 'full'],
      ['SQLITE_TOOBIG', 'toobig'],
      ['SQLITE_NOMEM', 'other'],
    ];
    for (const [code, kind] of cases) {
      const e = new SqliteError('m', { code });
      expect([code, e.kind]).toEqual([code, kind]);
      expect(e.retryable).toBe(kind === 'busy' || kind === 'busy_snapshot');
    }
  });
});

describe('errorKind() and isRetryable() accept anything and never throw', () => {
  const revoked = Proxy.revocable({}, {});
  revoked.revoke();
  const hostile = new Proxy(
    {},
    {
      getPrototypeOf() {
        throw new Error('hostile getPrototypeOf');
      },
      get() {
        throw new Error('hostile get');
      },
    },
  );
  const odd: unknown[] = [
    undefined,
    null,
    0,
    NaN,
    '',
    'database is locked',
    Symbol('s'),
    10n,
    true,
    () => 1,
    {},
    [],
    new Error('database is locked'),
    new TypeError('x'),
    { kind: 'busy', retryable: true, code: 'SQLITE_BUSY' },
    Object.create(null),
    Object.create(SqliteError.prototype),
    Object.create(BusyError.prototype),
    revoked.proxy,
    hostile,
  ];
  it('on odd values: kind other, not retryable', () => {
    for (const v of odd) {
      let kind: unknown;
      let retryable: unknown;
      expect(() => (kind = errorKind(v))).not.toThrow();
      expect(() => (retryable = isRetryable(v))).not.toThrow();
      expect(kind).toBe('other');
      expect(retryable).toBe(false);
    }
  });

  it('on arbitrary values (property)', () => {
    fc.assert(
      fc.property(fc.anything({ withBigInt: true, withMap: true, withSet: true, withTypedArray: true, withNullPrototype: true }), (v) => {
        expect(ERROR_KINDS).toContain(errorKind(v));
        expect(typeof isRetryable(v)).toBe('boolean');
      }),
      { numRuns: 300 },
    );
  });

  it('on real errors of every producible kind', () => {
    const db = memory();
    const collected: SqliteError[] = [];
    const grab = (f: () => unknown) => {
      try {
        f();
      } catch (e) {
        collected.push(e as SqliteError);
      }
    };
    grab(() => db.run("INSERT INTO t (u) VALUES ('taken')"));
    grab(() => db.run('SELEC'));
    grab(() => db.exec('COMMIT'));
    grab(() => db.get('SELECT zeroblob(2000000000)'));
    const other = scope.connect(db);
    db.exec("BEGIN IMMEDIATE; UPDATE t SET u = 'y'");
    grab(() => other.all('SELECT * FROM t'));
    db.exec('ROLLBACK');
    expect(collected.map((e) => errorKind(e))).toEqual(['constraint', 'sql', 'misuse', 'toobig', 'busy']);
    expect(collected.map((e) => isRetryable(e))).toEqual([false, false, false, false, true]);
    for (const e of collected) checkSqliteError(e, errorKind(e));
  });
});

describe('isRetryable and retry look through error.cause', () => {
  it('finds a busy error wrapped by a library, stops at cycles, ignores non-busy causes', async () => {
    const busy = new BusyError('database is locked', { code: 'SQLITE_BUSY_SNAPSHOT' });
    const wrapped = new Error('Failed query: UPDATE ...', { cause: new Error('inner', { cause: busy }) });
    expect(isRetryable(wrapped)).toBe(true);
    expect(retryableError(wrapped)).toBe(busy);
    const cyclic: { cause?: unknown } = new Error('a');
    cyclic.cause = cyclic;
    expect(isRetryable(cyclic)).toBe(false);
    expect(isRetryable(new Error('x', { cause: new SqliteError('UNIQUE constraint failed', { code: 'SQLITE_CONSTRAINT_UNIQUE' }) }))).toBe(false);
    let n = 0;
    const seen: string[] = [];
    const out = await retry(
      () => {
        if (++n < 3) throw new Error('wrapped', { cause: busy });
        return 'done';
      },
      { onRetry: (e) => seen.push(e.code) },
    );
    expect(out).toBe('done');
    expect(seen).toEqual(['SQLITE_BUSY_SNAPSHOT', 'SQLITE_BUSY_SNAPSHOT']);
  });
});
