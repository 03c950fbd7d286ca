/**
 * Statements (spec "Statements"): exec scripts, run/get/all/iterate, prepared statements,
 * parameters and values, RETURNING, and bad input that must change nothing.
 */
import { describe, expect, it } from 'vitest';
import { open, SqliteError, type Connection } from '../src/index.js';
import { expectSqliteError, thrown, useScope } from './helpers.js';

const scope = useScope();

function memory(): Connection {
  return scope.open(':memory:');
}

describe('exec', () => {
  it('runs several statements, with semicolons in strings, comments and trigger bodies', () => {
    const db = memory();
    db.exec(`
      -- a comment; with a semicolon
      CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); /* block; comment */
      CREATE TABLE log (what TEXT);
      CREATE TRIGGER t_ins AFTER INSERT ON t BEGIN
        INSERT INTO log VALUES ('ins;' || new.v);
        INSERT INTO log VALUES (CASE WHEN new.v = 'x' THEN 'case;x' ELSE 'case;other' END);
      END;
      CREATE TEMP TRIGGER t_del AFTER DELETE ON main.t BEGIN INSERT INTO log VALUES ('del;' || old.v); END;
      INSERT INTO t (v) VALUES ('a;b'), ('x');
      INSERT INTO t (v) VALUES ('it''s; "quoted"');
      DELETE FROM t WHERE v = 'x';;;
      -- trailing comment without newline`);
    expect(db.all('SELECT v FROM t ORDER BY id')).toEqual([{ v: 'a;b' }, { v: `it's; "quoted"` }]);
    expect(db.all('SELECT what FROM log ORDER BY rowid').map((r) => r.what)).toEqual([
      'ins;a;b',
      'case;other',
      'ins;x',
      'case;x',
      `ins;it's; "quoted"`,
      'case;other',
      'del;x',
    ]);
    db.exec('');
    db.exec('  -- nothing but a comment\n /* and another */ ');
  });

  it('stops at the first failing statement; statements before it stay applied', () => {
    const db = memory();
    db.exec('CREATE TABLE t (x UNIQUE)');
    expectSqliteError(
      () => db.exec('INSERT INTO t VALUES (1); INSERT INTO t VALUES (1); INSERT INTO t VALUES (2)'),
      'constraint',
      'SQLITE_CONSTRAINT_UNIQUE',
    );
    expect(db.all('SELECT x FROM t')).toEqual([{ x: 1 }]);
  });
});

describe('run / get / all / iterate', () => {
  it('run() reports changes and lastInsertRowid per handle; a SELECT reports 0 changes', () => {
    const a = memory();
    const b = scope.connect(a);
    a.exec('CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)');
    expect(a.run('INSERT INTO t (v) VALUES (?)', ['a1'])).toEqual({ changes: 1, lastInsertRowid: 1 });
    expect(b.run('INSERT INTO t (v) VALUES (?), (?)', ['b1', 'b2'])).toEqual({ changes: 2, lastInsertRowid: 3 });
    // a's last insert is still its own, not the engine-wide last one.
    expect(a.run('UPDATE t SET v = v || ?', ['!'])).toEqual({ changes: 3, lastInsertRowid: 1 });
    expect(a.run('SELECT * FROM t')).toEqual({ changes: 0, lastInsertRowid: 1 });
    expect(b.run('DELETE FROM t WHERE id > 1')).toEqual({ changes: 2, lastInsertRowid: 3 });
    expect(b.run('SELECT count(*) FROM t')).toEqual({ changes: 0, lastInsertRowid: 3 });
    expect(a.run('INSERT OR IGNORE INTO t (id, v) VALUES (1, ?)', ['dup'])).toEqual({ changes: 0, lastInsertRowid: 1 });
    expect(a.run('CREATE TABLE u (x)').changes).toBe(0);
    const fresh = scope.connect(a);
    expect(fresh.run('SELECT 1')).toEqual({ changes: 0, lastInsertRowid: 0 });
  });

  it('an upsert that updates does not report another handle\'s rowid as this handle\'s lastInsertRowid', () => {
    const a = memory();
    const b = scope.connect(a);
    a.exec('CREATE TABLE t (k TEXT PRIMARY KEY, n INT)');
    expect(a.run("INSERT INTO t (k, n) VALUES ('x', 1)").lastInsertRowid).toBe(1);
    b.exec("INSERT INTO t (k, n) VALUES ('y', 1), ('z', 1)");
    const r = a.run("INSERT INTO t (k, n) VALUES ('x', 1) ON CONFLICT (k) DO UPDATE SET n = n + 1");
    expect(r.changes).toBe(1);
    expect(a.get("SELECT n FROM t WHERE k = 'x'")).toEqual({ n: 2 });
    // SQLite leaves last_insert_rowid alone when an upsert updates: a's own last insert was rowid 1.
    expect(r.lastInsertRowid).toBe(1);
  });

  it('get() returns the first row or undefined; all() and iterate() return every row', () => {
    const db = memory();
    db.exec('CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t (v) VALUES (1), (2), (3)');
    expect(db.get('SELECT id FROM t ORDER BY id')).toEqual({ id: 1 });
    expect(db.get('SELECT id FROM t WHERE id > 10')).toBeUndefined();
    expect(db.all('SELECT id FROM t WHERE id > 10')).toEqual([]);
    expect(db.all('SELECT id FROM t ORDER BY id DESC')).toEqual([{ id: 3 }, { id: 2 }, { id: 1 }]);
    const it = db.iterate<{ id: number }>('SELECT id FROM t ORDER BY id');
    expect(it.next()).toEqual({ done: false, value: { id: 1 } });
    // Other statements between the rows do not disturb the iteration.
    db.run('DELETE FROM t WHERE id = 2');
    expect([...it].map((r) => r.id)).toEqual([2, 3]);
    expect([...db.iterate('SELECT id FROM t WHERE id > 10')]).toEqual([]);
    // get() of a query with more rows leaves nothing half-done: a write on another handle works.
    db.get('SELECT id FROM t');
    scope.connect(db).run('INSERT INTO t (v) VALUES (4)');
    expect(db.get('SELECT count(*) AS n FROM t')).toEqual({ n: 3 });
  });

  it('prepare() gives a Statement with run/get/all/iterate/finalize', () => {
    const db = memory();
    db.exec('CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)');
    const ins = db.prepare('INSERT INTO t (v) VALUES (?)');
    const sel = db.prepare<{ id: number; v: string }>('SELECT id, v FROM t WHERE id >= ? ORDER BY id');
    expect(ins.source).toBe('INSERT INTO t (v) VALUES (?)');
    for (let i = 1; i <= 5; i++) expect(ins.run([`v${i}`])).toEqual({ changes: 1, lastInsertRowid: i });
    expect(sel.get([4])).toEqual({ id: 4, v: 'v4' });
    expect(sel.get([9])).toBeUndefined();
    expect(sel.all([4])).toEqual([
      { id: 4, v: 'v4' },
      { id: 5, v: 'v5' },
    ]);
    expect([...sel.iterate([5])]).toEqual([{ id: 5, v: 'v5' }]);
    expect(sel.run([1])).toEqual({ changes: 0, lastInsertRowid: 5 });
    expect(ins.isFinalized).toBe(false);
    ins.finalize();
    expect(ins.isFinalized).toBe(true);
    expectSqliteError(() => ins.run(['x']), 'closed');
    expectSqliteError(() => ins.finalize(), 'misuse');
    expect(sel.all([1])).toHaveLength(5);
    // Transaction control can be prepared too.
    const begin = db.prepare('BEGIN IMMEDIATE');
    const commit = db.prepare('COMMIT');
    begin.run();
    expect(db.transactionMode).toBe('immediate');
    commit.run();
    begin.run();
    db.run('DELETE FROM t');
    commit.run();
    expect(db.inTransaction).toBe(false);
    expect(sel.all([0])).toEqual([]);
  });
});

describe('parameters and values', () => {
  it('positional arrays, a single value, numbered and named parameters with every prefix', () => {
    const db = memory();
    expect(db.get('SELECT ? AS a, ? AS b', [1, 'two'])).toEqual({ a: 1, b: 'two' });
    expect(db.get('SELECT ? AS a', 'one')).toEqual({ a: 'one' });
    expect(db.get('SELECT ? AS a', 7)).toEqual({ a: 7 });
    expect(db.get('SELECT ? AS a', null)).toEqual({ a: null });
    expect(db.get('SELECT ?2 AS a, ?1 AS b', [1, 2])).toEqual({ a: 2, b: 1 });
    expect(db.get('SELECT ? AS a, ? AS b', [1, null])).toEqual({ a: 1, b: null });
    for (const p of [':', '@', '$']) {
      const sql = `SELECT ${p}x AS x, ${p}y AS y`;
      expect(db.get(sql, { x: 1, y: 'b' })).toEqual({ x: 1, y: 'b' });
      expect(db.get(sql, { [`${p}x`]: 2, [`${p}y`]: 'c' })).toEqual({ x: 2, y: 'c' });
      const stmt = db.prepare(sql);
      expect(stmt.get({ x: 3, [`${p}y`]: 'd' })).toEqual({ x: 3, y: 'd' });
      stmt.finalize();
    }
    expect(db.get('SELECT :a AS a, @b AS b, $c AS c', { a: 1, b: 2, c: 3 })).toEqual({ a: 1, b: 2, c: 3 });
  });

  it('numbers, bigints, strings, blobs, null and booleans round-trip', () => {
    const db = memory();
    db.exec('CREATE TABLE v (id INTEGER PRIMARY KEY, x ANY) STRICT');
    const big = 2n ** 62n + 12345n;
    const cases: Array<[unknown, unknown]> = [
      [0, 0],
      [-1, -1],
      [2 ** 31, 2 ** 31],
      [Number.MAX_SAFE_INTEGER, Number.MAX_SAFE_INTEGER],
      [1.5, 1.5],
      [-0.25, -0.25],
      [12n, 12],
      [big, big],
      [-big, -big],
      [2n ** 63n - 1n, 2n ** 63n - 1n],
      [-(2n ** 63n), -(2n ** 63n)],
      ['', ''],
      ['héllo ✓ 𝄞', 'héllo ✓ 𝄞'],
      [new Uint8Array([0, 1, 2, 255]), new Uint8Array([0, 1, 2, 255])],
      [new Uint8Array([]), new Uint8Array([])],
      [null, null],
      [true, 1],
      [false, 0],
    ];
    const ins = db.prepare('INSERT INTO v (x) VALUES (?) RETURNING x');
    for (const [input, expected] of cases) {
      const id = db.run('INSERT INTO v (x) VALUES (?)', [input as never]).lastInsertRowid;
      expect(db.get('SELECT x FROM v WHERE id = ?', [id])).toEqual({ x: expected });
      expect(db.get('SELECT ? AS x', [input as never])).toEqual({ x: expected });
      expect(ins.get(input as never)).toEqual({ x: expected });
    }
    expect(typeof db.get<{ x: unknown }>('SELECT ? AS x', [big])?.x).toBe('bigint');
    expect(db.get('SELECT typeof(?) AS t', [big])).toEqual({ t: 'integer' });
    expect(db.get('SELECT ? + 1 AS x', [big])).toEqual({ x: big + 1n });
    // A rowid beyond 2^53 comes back as a bigint.
    db.exec('CREATE TABLE r (id INTEGER PRIMARY KEY, x)');
    expect(db.run('INSERT INTO r (id, x) VALUES (?, 1)', [big]).lastInsertRowid).toBe(big);
    expect(db.run('INSERT INTO r (x) VALUES (2)').lastInsertRowid).toBe(big + 1n);
  });

  // The engine binding passes text as NUL-terminated C strings: a string parameter with a NUL is
  // refused with a typed error instead of being silently truncated (reading text that contains a
  // NUL, built in SQL, still stops at the NUL: a documented limitation of the binding).
  it('a string with an embedded NUL is rejected with a typed error, never silently truncated', () => {
    const db = memory();
    db.exec('CREATE TABLE v (x TEXT)');
    for (const act of [
      () => db.run('INSERT INTO v VALUES (?)', ['a\u0000b']),
      () => db.run('INSERT INTO v VALUES (?)', 'a\u0000b'),
      () => db.run('INSERT INTO v VALUES (:x)', { x: 'a\u0000b' }),
    ]) {
      expect(act).toThrow(expect.objectContaining({ kind: 'misuse', code: 'SQLITE_MISMATCH' }));
    }
    expect(db.all('SELECT x FROM v')).toEqual([]);
    db.run('INSERT INTO v VALUES (?)', [new TextEncoder().encode('a\u0000b')]);
    expect(db.get('SELECT length(x) AS n FROM v')).toEqual({ n: 3 });
  });

  it('RETURNING rows come back from run, get, all and prepared statements', () => {
    const db = memory();
    db.exec('CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)');
    expect(db.all('INSERT INTO t (v) VALUES (?), (?) RETURNING id, v', ['a', 'b'])).toEqual([
      { id: 1, v: 'a' },
      { id: 2, v: 'b' },
    ]);
    expect(db.get("INSERT INTO t (v) VALUES ('c') RETURNING id")).toEqual({ id: 3 });
    expect(db.run("INSERT INTO t (v) VALUES ('d'), ('e') RETURNING id")).toEqual({ changes: 2, lastInsertRowid: 5 });
    expect(db.all('UPDATE t SET v = upper(v) WHERE id <= 2 RETURNING v')).toEqual(expect.arrayContaining([{ v: 'A' }, { v: 'B' }]));
    expect(db.run('UPDATE t SET v = v || v WHERE id > 3 RETURNING id').changes).toBe(2);
    const del = db.prepare<{ id: number }>('DELETE FROM t WHERE id >= ? RETURNING id');
    // get() consumes only one returned row, but the DELETE itself is complete.
    expect(del.get([4])).toBeDefined();
    expect(db.all('SELECT id FROM t ORDER BY id')).toEqual([{ id: 1 }, { id: 2 }, { id: 3 }]);
    expect(del.all([2]).map((r) => r.id).sort()).toEqual([2, 3]);
    expect(db.all('SELECT id, v FROM t')).toEqual([{ id: 1, v: 'A' }]);
  });
});

describe('result columns follow the schema', () => {
  it('a cached or prepared SELECT * shows the columns of the schema it runs on, after ALTER or a re-created table', () => {
    const db = memory();
    db.exec("CREATE TABLE t (a, b); INSERT INTO t VALUES (1, 'x')");
    const stmt = db.prepare('SELECT * FROM t');
    expect(db.all('SELECT * FROM t')).toEqual([{ a: 1, b: 'x' }]);
    expect(stmt.get()).toEqual({ a: 1, b: 'x' });
    db.exec('ALTER TABLE t ADD COLUMN c DEFAULT 3');
    expect(db.all('SELECT * FROM t')).toEqual([{ a: 1, b: 'x', c: 3 }]);
    expect(stmt.get()).toEqual({ a: 1, b: 'x', c: 3 });
    // Same column count, other names: the names are checked, not only their number.
    db.exec('DROP TABLE t; CREATE TABLE t (p, q, r); INSERT INTO t VALUES (7, 8, 9)');
    expect(db.get('SELECT * FROM t')).toEqual({ p: 7, q: 8, r: 9 });
    expect([...stmt.iterate()]).toEqual([{ p: 7, q: 8, r: 9 }]);
    expect(stmt.raw().all()).toEqual([[7, 8, 9]]);
  });
});

describe('parameter values are taken at the call', () => {
  // A BEGIN CONCURRENT transaction logs its statements' parameters to replay them when it resumes
  // after being parked: blobs the caller reuses after the call must be replayed as they were.
  it('a blob mutated after run() inside BEGIN CONCURRENT still commits the bytes passed', () => {
    const db = memory();
    const other = scope.connect(db);
    db.exec('CREATE TABLE b (id INTEGER PRIMARY KEY, x BLOB); CREATE TABLE o (x)');
    const buf = new Uint8Array([1, 2, 3]);
    db.exec('BEGIN CONCURRENT');
    db.run('INSERT INTO b (id, x) VALUES (1, ?)', [buf]);
    db.run('INSERT INTO b (id, x) VALUES (2, ?)', buf);
    buf.set([9, 9, 9]);
    other.run('INSERT INTO o VALUES (1)'); // parks db's transaction; COMMIT replays it
    db.exec('COMMIT');
    expect(other.all('SELECT x FROM b ORDER BY id')).toEqual([
      { x: new Uint8Array([1, 2, 3]) },
      { x: new Uint8Array([1, 2, 3]) },
    ]);
  });
});

describe('SQL text with a lone UTF-16 surrogate', () => {
  // The engine wrapper's encoder under-counts such text and cut the statement's end off: this
  // UPDATE ran as `... WHERE id = 1` and changed the wrong row.
  it('is refused with kind misuse before anything runs; the same value as a parameter is stored and read back', () => {
    const db = memory();
    db.exec("CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT); INSERT INTO t VALUES (1, 'one'), (10, 'ten')");
    const e = expectSqliteError(() => db.run("UPDATE t SET a = '\uD800\u00e9' WHERE id = 10"), 'misuse');
    expect(e.message).toMatch(/lone UTF-16 surrogate \(at index 18\)/);
    expect(db.all('SELECT id, a FROM t ORDER BY id')).toEqual([{ id: 1, a: 'one' }, { id: 10, a: 'ten' }]);
    db.run('UPDATE t SET a = ? WHERE id = ?', ['\uD800\u00e9', 10]);
    expect(db.all('SELECT id, a FROM t ORDER BY id')).toEqual([{ id: 1, a: 'one' }, { id: 10, a: '\uD800\u00e9' }]);
    // A well-formed pair is fine anywhere.
    expect(db.get("SELECT '\uD83D\uDE00' AS s")).toEqual({ s: '\uD83D\uDE00' });
  });

  it('returned by a user function fails its statement instead of being stored cut short; a name with one is refused', () => {
    const db = memory();
    db.exec('CREATE TABLE t (v TEXT)');
    db.function('lone', () => '\uD800\u00e9xyz'); // stored as '\uD800\u00e9xy' before
    const e = thrown(() => db.run('INSERT INTO t VALUES (lone())'));
    expect(e).toBeInstanceOf(SqliteError);
    expect(String((e as Error).message)).toMatch(/lone\(\) returned text with a lone UTF-16 surrogate/);
    expect(db.all('SELECT v FROM t')).toEqual([]);
    db.function('echo', (x) => x);
    expect(() => db.get('SELECT echo(?) AS v', ['\uD800\u00e9xyz'])).toThrow(/lone UTF-16 surrogate/);
    expect(db.get('SELECT echo(?) AS v', ['\uD83D\uDE00xyz'])).toEqual({ v: '\uD83D\uDE00xyz' });
    expectSqliteError(() => db.function('f\uD800', () => 1), 'misuse');
  });

  it('as a file path is refused by open() with kind misuse, creating nothing', () => {
    expectSqliteError(() => open('/tmp/siblite-\uD800\u00e9.db'), 'misuse');
  });
});

describe('bad input gives a typed error, changes nothing and leaves the handle usable', () => {
  type Bad = { name: string; kind: 'misuse' | 'sql' | 'closed'; act: (db: Connection) => unknown };
  const bads: Bad[] = [
    { name: 'unknown named parameter', kind: 'misuse', act: (db) => db.run('INSERT INTO t (v) VALUES (:v)', { w: 1 }) },
    { name: 'unknown prefixed named parameter', kind: 'misuse', act: (db) => db.run('INSERT INTO t (v) VALUES (:v)', { '@v': 1 }) },
    { name: 'object value', kind: 'misuse', act: (db) => db.run('INSERT INTO t (v) VALUES (?)', [{} as never]) },
    { name: 'Date value', kind: 'misuse', act: (db) => db.run('INSERT INTO t (v) VALUES (?)', [new Date() as never]) },
    { name: 'nested array value', kind: 'misuse', act: (db) => db.run('INSERT INTO t (v) VALUES (?)', [[1] as never]) },
    { name: 'undefined value', kind: 'misuse', act: (db) => db.run('INSERT INTO t (v) VALUES (?)', [undefined as never]) },
    { name: 'undefined named value', kind: 'misuse', act: (db) => db.run('INSERT INTO t (v) VALUES (:v)', { v: undefined as never }) },
    { name: 'function value', kind: 'misuse', act: (db) => db.run('INSERT INTO t (v) VALUES (?)', [(() => 1) as never]) },
    { name: 'function as the single value', kind: 'misuse', act: (db) => db.run('INSERT INTO t (v) VALUES (?)', (() => 1) as never) },
    { name: 'symbol value', kind: 'misuse', act: (db) => db.run('INSERT INTO t (v) VALUES (?)', [Symbol('s') as never]) },
    { name: 'symbol as the single value', kind: 'misuse', act: (db) => db.run('INSERT INTO t (v) VALUES (?)', Symbol('s') as never) },
    { name: 'bad value after good ones', kind: 'misuse', act: (db) => db.run('INSERT INTO t (v, w) VALUES (?, ?)', ['ok', {} as never]) },
    { name: 'too many positional parameters', kind: 'misuse', act: (db) => db.run('INSERT INTO t (v) VALUES (?)', [1, 2]) },
    { name: 'SQL syntax error', kind: 'sql', act: (db) => db.run('INSERT INTO t (v) VALUE (1)') },
    { name: 'syntax error in exec', kind: 'sql', act: (db) => db.exec('INSERT INTO t (v) VALUES (1') },
    { name: 'no such column', kind: 'sql', act: (db) => db.run('INSERT INTO t (nope) VALUES (1)') },
    { name: 'prepare of two statements', kind: 'misuse', act: (db) => db.prepare('INSERT INTO t (v) VALUES (1); INSERT INTO t (v) VALUES (2)') },
    { name: 'run of two statements', kind: 'misuse', act: (db) => db.run('INSERT INTO t (v) VALUES (1); INSERT INTO t (v) VALUES (2)') },
    { name: 'empty SQL to prepare', kind: 'misuse', act: (db) => db.prepare('') },
    { name: 'lone surrogate in run SQL', kind: 'misuse', act: (db) => db.run("INSERT INTO t (v) VALUES ('\uD800\u00e9')") },
    { name: 'lone surrogate in exec SQL', kind: 'misuse', act: (db) => db.exec("INSERT INTO t (v) VALUES (1); INSERT INTO t (v) VALUES ('\uDC00')") },
    { name: 'lone surrogate in prepare SQL', kind: 'misuse', act: (db) => db.prepare("SELECT '\uD800' || v FROM t") },
    { name: 'blank SQL to run', kind: 'misuse', act: (db) => db.run('   ') },
    { name: 'comment-only SQL to get', kind: 'misuse', act: (db) => db.get('-- nothing') },
    { name: 'non-string SQL', kind: 'misuse', act: (db) => db.run(42 as never) },
    {
      name: 'finalized statement',
      kind: 'closed',
      act: (db) => {
        const s = db.prepare('INSERT INTO t (v) VALUES (1)');
        s.finalize();
        return s.run();
      },
    },
    {
      name: 'double finalize',
      kind: 'misuse',
      act: (db) => {
        const s = db.prepare('INSERT INTO t (v) VALUES (1)');
        s.finalize();
        s.finalize();
      },
    },
    {
      name: 'statement of a closed sibling',
      kind: 'closed',
      act: (db) => {
        const sib = db.connect();
        const s = sib.prepare('INSERT INTO t (v) VALUES (1)');
        sib.close();
        return s.run();
      },
    },
    { name: 'misused prepared statement params', kind: 'misuse', act: (db) => db.prepare('INSERT INTO t (v) VALUES (@v)').run({ v: 1, x: 2 }) },
  ];

  function setup(where: 'memory' | 'file'): Connection {
    const db = where === 'memory' ? memory() : scope.open(scope.file());
    db.exec("CREATE TABLE t (id INTEGER PRIMARY KEY, v, w); INSERT INTO t (v) VALUES ('keep')");
    return db;
  }
  const contents = (db: Connection) => db.all('SELECT id, v, w FROM t ORDER BY id');

  for (const where of ['memory', 'file'] as const) {
    it(`in autocommit (${where})`, () => {
      const db = setup(where);
      for (const bad of bads) {
        const before = contents(db);
        const e = expectSqliteError(() => bad.act(db), bad.kind);
        expect(e.message, bad.name).not.toBe('');
        expect(contents(db), bad.name).toEqual(before);
        expect(db.inTransaction, bad.name).toBe(false);
        expect(db.run('INSERT INTO t (v) VALUES (?)', [bad.name]).changes, bad.name).toBe(1);
      }
      expect(db.get('SELECT count(*) AS n FROM t')).toEqual({ n: bads.length + 1 });
    });
  }

  for (const mode of ['DEFERRED', 'IMMEDIATE', 'EXCLUSIVE', 'CONCURRENT'] as const) {
    it(`inside an open ${mode} transaction, which stays open and usable`, () => {
      const db = setup('file');
      const other = scope.connect(db);
      db.exec(`BEGIN ${mode}`);
      db.run("INSERT INTO t (v) VALUES ('in tx')");
      for (const bad of bads) {
        const before = contents(db);
        expectSqliteError(() => bad.act(db), bad.kind);
        expect(contents(db), bad.name).toEqual(before);
        expect(db.inTransaction, bad.name).toBe(true);
        expect(db.transactionMode).toBe(mode.toLowerCase());
        db.run('INSERT INTO t (v) VALUES (?)', [bad.name]);
      }
      if (mode === 'CONCURRENT') {
        // Another handle's commit parks the transaction; resuming replays the failed statements too.
        other.exec('CREATE TABLE elsewhere (x)');
        other.run('INSERT INTO elsewhere VALUES (1)');
      } else {
        expect(other.all('SELECT count(*) AS n FROM sqlite_schema').length).toBe(1);
      }
      db.exec('COMMIT');
      expect(db.inTransaction).toBe(false);
      expect(other.get('SELECT count(*) AS n FROM t')).toEqual({ n: bads.length + 2 });
    });
  }

  it('bad input on a closed handle is kind closed, not a crash', () => {
    const db = open(':memory:');
    db.close();
    expectSqliteError(() => db.run('INSERT INTO t VALUES (?)', [{} as never]), 'closed');
    expectSqliteError(() => db.prepare(''), 'closed');
    expect(thrownIsSqliteError(() => db.exec(42 as never))).toBe(true);
  });
});

function thrownIsSqliteError(fn: () => unknown): boolean {
  try {
    fn();
    return false;
  } catch (e) {
    return e instanceof SqliteError;
  }
}
