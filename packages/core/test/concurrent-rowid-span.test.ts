/**
 * Rowid spans (engine/rowid-span.ts, engine/written-rowids.ts): a logged read whose bytecode
 * proves it sees only a rowid range of a table is not re-checked after commits that wrote only
 * rows outside that range. These tests pin both directions: every write that changes what such
 * a read returned must still conflict (at the range's edges, through indexes, deletes, moved
 * rowids, upserts, REPLACE, triggers, foreign-key cascades, a forgotten write log), and writes
 * proven outside the range must not re-run the read (counted with a user function).
 */
import { afterEach, describe, expect, it, vi } from 'vitest';
import type { Connection } from '../src/index.js';
import { PreparedSql } from '../src/engine/execute.js';
import { MAX_WRITTEN_ROWIDS } from '../src/engine/written-rowids.js';
import { useScope } from './helpers.js';

const scope = useScope();

interface Setup {
  a: Connection;
  b: Connection;
  /** How many times a statement ran with this SQL (the application's run and re-checks). */
  runs: (sql: string) => number;
}

afterEach(() => {
  vi.restoreAllMocks();
});

function setup(extra = ''): Setup {
  const root = scope.open(':memory:');
  root.exec(`CREATE TABLE sp (id INTEGER PRIMARY KEY, v INT NOT NULL, u TEXT UNIQUE);
    WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 200)
    INSERT INTO sp SELECT n, n, 'u' || n FROM c;
    CREATE TABLE own (id INTEGER PRIMARY KEY, n INT NOT NULL);
    INSERT INTO own VALUES (1, 0), (2, 0);
    ${extra}`);
  // Every way a logged read runs: rows (execute), rows and digest (allDigested), a re-check by digest (matchesDigest).
  const counted = new Map<string, number>();
  for (const method of ['execute', 'allDigested', 'matchesDigest'] as const) {
    const original = PreparedSql.prototype[method] as (...args: unknown[]) => unknown;
    vi.spyOn(PreparedSql.prototype, method).mockImplementation(function (this: PreparedSql, ...args: unknown[]) {
      counted.set(this.sql, (counted.get(this.sql) ?? 0) + 1);
      return original.apply(this, args);
    } as never);
  }
  return { a: scope.track(root.connect()), b: scope.track(root.connect()), runs: (sql) => counted.get(sql) ?? 0 };
}

/**
 * `a` reads in a concurrent transaction, `b` commits `write`, then `a` writes a row of its own
 * and commits: 'committed', or the conflict's message.
 */
function readThenCommit(s: Setup, read: [string, unknown?], write: (b: Connection) => void): string {
  const { a, b } = s;
  a.exec('BEGIN CONCURRENT');
  a.all(read[0], read[1] as never);
  write(b);
  try {
    a.run('UPDATE own SET n = n + 1 WHERE id = 1');
    a.exec('COMMIT');
    return 'committed';
  } catch (e) {
    expect((e as { kind?: string }).kind).toBe('busy_snapshot');
    return (e as Error).message;
  }
}

const run = (sql: string, params?: unknown) => (b: Connection) => void b.run(sql, params as never);
/** The same write in a concurrent transaction of `b`, committed. */
const inTx = (...sqls: Array<[string, unknown?]>) => (b: Connection) => {
  b.exec('BEGIN CONCURRENT');
  for (const [sql, params] of sqls) b.run(sql, params as never);
  b.exec('COMMIT');
};

const GT = ['SELECT id, v FROM sp WHERE id > ?', [100]] as [string, unknown];
const BUMP = 'UPDATE sp SET v = v + 1 WHERE id = ?';

describe('rowid spans: a write that changes what a ranged read returned conflicts', () => {
  const cases: Array<[string, [string, unknown?], (b: Connection) => void, string?]> = [
    ['low edge, open (SeekGT)', GT, run(BUMP, [101])],
    ['low edge, closed (SeekGE)', ['SELECT id, v FROM sp WHERE id >= ?', [100]], run(BUMP, [100])],
    ['high edge, open (SeekLT, descending)', ['SELECT id, v FROM sp WHERE id < ? ORDER BY id DESC', [50]], run(BUMP, [49])],
    ['high edge, closed (SeekLE, descending)', ['SELECT id, v FROM sp WHERE id <= ? ORDER BY id DESC', [50]], run(BUMP, [50])],
    ['a constant bound', ['SELECT id, v FROM sp WHERE id > 100'], run(BUMP, [101])],
    ['a BigInt bound', ['SELECT id, v FROM sp WHERE id > ?', [100n]], run(BUMP, [101n])],
    ['a text bound (not proven: the whole table)', ['SELECT id, v FROM sp WHERE id > ?', ['100']], run(BUMP, [101])],
    ['an aggregate over the range', ['SELECT count(*) AS n, total(v) AS s FROM sp WHERE id >= ?', [150]], run(BUMP, [150])],
    ['a point read, its row deleted', ['SELECT v FROM sp WHERE id = ?', [7]], run('DELETE FROM sp WHERE id = ?', [7])],
    ['a point read of a missing row, then inserted', ['SELECT v FROM sp WHERE id = ?', [300]], run('INSERT INTO sp (id, v) VALUES (?, ?)', [300, 1])],
    ['a row inserted past the last one', GT, run('INSERT INTO sp (v) VALUES (?)', [1])],
    ['a row deleted in the range', GT, run('DELETE FROM sp WHERE id = ?', [200])],
    ['in a concurrent transaction of another handle', GT, inTx([BUMP, [5]], [BUMP, [150]])],
    ['a proven write outside and an unproven one inside, one transaction', GT, inTx([BUMP, [5]], ['UPDATE sp SET v = v + 1 WHERE id > ?', [199]])],
    ['a row moved into the range (rowid from a parameter)', GT, run('UPDATE sp SET id = ? WHERE id = ?', [250, 5])],
    ['a row moved into the range (computed rowid)', GT, run('UPDATE sp SET id = id + 1000 WHERE id = ?', [5])],
    ['a row moved into the range (constant rowid)', GT, run('UPDATE sp SET id = 250 WHERE id = 5')],
    ['a row moved out of the range', GT, run('UPDATE sp SET id = ? WHERE id = ?', [0, 150])],
    ['a row moved out of the range (constant rowids)', GT, run('UPDATE sp SET id = 0 WHERE id = 150')],
    ['an upsert whose conflict (through an index) updates a row in the range', GT,
      run('INSERT INTO sp (id, v, u) VALUES (?, 0, ?) ON CONFLICT (u) DO UPDATE SET v = v + 1', [0, 'u150'])],
    ['REPLACE deleting a row of the range through a unique index', GT, run('REPLACE INTO sp (id, v, u) VALUES (?, 1, ?)', [0, 'u150'])],
    ['UPDATE OR REPLACE deleting a row of the range', GT, run("UPDATE OR REPLACE sp SET u = 'u150' WHERE id = ?", [5])],
    ['a read through an index (not a span)', ['SELECT id, u FROM sp WHERE u > ? ORDER BY u', ['u50']], run("UPDATE sp SET u = 'u99x' WHERE id = ?", [5])],
  ];
  for (const [name, read, write] of cases) {
    it(name, () => {
      expect(readThenCommit(setup(), read, write)).not.toBe('committed');
    });
  }

  it('a trigger that writes a row of the range', () => {
    const s = setup(`CREATE TRIGGER sp_t AFTER UPDATE ON sp WHEN new.id = 5 BEGIN UPDATE sp SET v = v + 1 WHERE id = 150; END;`);
    expect(readThenCommit(s, GT, run(BUMP, [5]))).not.toBe('committed');
  });

  it('a trigger on another table that writes a row of the range', () => {
    const s = setup(`CREATE TABLE side (id INTEGER PRIMARY KEY, x INT); INSERT INTO side VALUES (1, 0);
      CREATE TRIGGER side_t AFTER UPDATE ON side BEGIN UPDATE sp SET v = v + 1 WHERE id = 150; END;`);
    expect(readThenCommit(s, GT, run('UPDATE side SET x = 1 WHERE id = 1'))).not.toBe('committed');
  });

  it('a foreign-key cascade that deletes rows of the range', () => {
    const s = setup(`CREATE TABLE par (id INTEGER PRIMARY KEY); INSERT INTO par VALUES (1), (2);
      CREATE TABLE kid (id INTEGER PRIMARY KEY, pid REFERENCES par ON DELETE CASCADE ON UPDATE CASCADE);
      WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 200) INSERT INTO kid SELECT n, 1 + n % 2 FROM c;
      PRAGMA foreign_keys = ON;`);
    expect(readThenCommit(s, ['SELECT id, pid FROM kid WHERE id > ?', [100]], run('DELETE FROM par WHERE id = ?', [1]))).not.toBe('committed');
    expect(readThenCommit(s, ['SELECT id, pid FROM kid WHERE id > ?', [100]], run('UPDATE par SET id = 9 WHERE id = ?', [2]))).not.toBe('committed');
  });

  it('a WITHOUT ROWID table (keys, not rowids)', () => {
    const s = setup(`CREATE TABLE wr (k INTEGER PRIMARY KEY, v INT) WITHOUT ROWID;
      WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 200) INSERT INTO wr SELECT n, n FROM c;`);
    expect(readThenCommit(s, ['SELECT k, v FROM wr WHERE k > ?', [100]], run('UPDATE wr SET v = v + 1 WHERE k = ?', [150]))).not.toBe('committed');
  });

  it('a write in the range whose record was forgotten (more commits than the log keeps) still conflicts', () => {
    const s = setup();
    const write = (b: Connection) => {
      b.run(BUMP, [150]);
      // Distinct rowids outside the read's span (no such rows: the writes change nothing), so
      // that the record of 150 is the oldest and is forgotten.
      for (let i = 0; i < MAX_WRITTEN_ROWIDS + 10; i++) b.run(BUMP, [-1 - i]);
    };
    expect(readThenCommit(s, GT, write)).not.toBe('committed');
  });
});

describe('rowid spans: writes proven outside a ranged read do not re-run it', () => {
  const RANGE = 'SELECT id, v FROM sp WHERE id > ?';
  it('updates and deletes of other rows, autocommit and in transactions', () => {
    const s = setup();
    const write = (b: Connection) => {
      b.run(BUMP, [100]); // the edge, outside
      b.run('DELETE FROM sp WHERE id = ?', [3]);
      inTx([BUMP, [5]], ['UPDATE sp SET v = 7 WHERE id = ?', [6]], ['UPDATE own SET n = 5 WHERE id = 2'])(b);
    };
    expect(readThenCommit(s, [RANGE, [100]], write)).toBe('committed');
    expect(s.runs(RANGE)).toBe(1); // read once, never re-checked
  });

  it('a point read', () => {
    const s = setup();
    const POINT = 'SELECT v FROM sp WHERE id = ?';
    expect(readThenCommit(s, [POINT, [7]], run(BUMP, [8]))).toBe('committed');
    expect(s.runs(POINT)).toBe(1);
  });

  it('but a write inside the range re-runs it, even one that changes nothing it shows', () => {
    const s = setup();
    expect(readThenCommit(s, [RANGE, [100]], run('UPDATE sp SET u = u WHERE id = ?', [101]))).toBe('committed');
    expect(s.runs(RANGE)).toBe(2);
  });

  it('and so does a write the bytecode cannot bound', () => {
    const s = setup();
    expect(readThenCommit(s, [RANGE, [100]], run('UPDATE sp SET v = v + 1 WHERE id < ?', [3]))).toBe('committed');
    expect(s.runs(RANGE)).toBe(2);
  });

  it('and so does a read that calls a function that may answer differently', () => {
    const s = setup();
    const CALLS = 'SELECT id, abs(random() % 1) + v AS v FROM sp WHERE id > ?';
    expect(readThenCommit(s, [CALLS, [100]], run(BUMP, [5]))).toBe('committed');
    expect(s.runs(CALLS)).toBe(2);
  });
});
