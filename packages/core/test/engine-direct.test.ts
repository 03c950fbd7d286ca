/**
 * The engine statement layer (engine/execute.ts, engine/direct.ts): parameters bound and
 * results read through the engine's exports directly, as the wrapper would, and transaction
 * control run from a statement prepared once.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { PreparedSql } from '../src/engine/execute.js';
import { loadSqlite, type WasmDatabase } from '../src/file/load.js';
import { classify, tokenize } from '../src/sql/lexer.js';

const open: WasmDatabase[] = [];
afterEach(() => {
  for (const db of open.splice(0)) db.close();
});

function engine(): { db: WasmDatabase; prepare: (sql: string) => PreparedSql } {
  const db = new (loadSqlite().Database)(':memory:');
  open.push(db);
  return { db, prepare: (sql) => new PreparedSql(sql, db.prepare(sql), classify(tokenize(sql))) };
}

describe('binding and reading', () => {
  it('values round-trip with the wrapper conversions, also beyond the reused parameter buffer', () => {
    const { db, prepare } = engine();
    const s = prepare('SELECT ? AS a, ? AS b, ? AS c, ? AS d, typeof(?) AS e');
    const long = 'é'.repeat(70_000);
    const blob = new Uint8Array(100_000).map((_v, i) => i & 0xff);
    const row = s.execute(db, ['x', long, blob, new Uint8Array(), null], 'get').rows?.[0];
    expect(row).toEqual({ a: 'x', b: long, c: blob, d: new Uint8Array(), e: 'null' });
    // Two text parameters in one call each keep their own bytes (the buffer is reused).
    expect(s.execute(db, ['first', 'second', 1, 2 ** 40, true], 'get').rows).toEqual([{ a: 'first', b: 'second', c: 1, d: 2 ** 40, e: 'integer' }]);
    const ints = prepare('SELECT 9007199254740991 AS a, 9007199254740992 AS b, -9007199254740992 AS c, -0.0 AS d');
    expect(ints.execute(db, undefined, 'get').rows).toEqual([{ a: 2 ** 53 - 1, b: 2n ** 53n, c: -(2n ** 53n), d: -0 }]);
    expect(ints.execute(db, undefined, 'get', { safeIntegers: true, raw: true }).rows).toEqual([[2n ** 53n - 1n, 2n ** 53n, -(2n ** 53n), -0]]);
  });

  it('a finalized statement and a closed connection fail as the wrapper reports them', () => {
    const { db, prepare } = engine();
    const s = prepare('SELECT 1 AS x');
    s.finalize();
    expect(() => s.execute(db, undefined, 'get')).toThrow(expect.objectContaining({ code: 'SQLITE_MISUSE', message: 'Statement already finalized' }));
    const other = new (loadSqlite().Database)(':memory:');
    const t = new PreparedSql('SELECT 1 AS x', other.prepare('SELECT 1 AS x'), classify(tokenize('SELECT 1 AS x')));
    const wrapper = other as unknown as { _ptr: number | null };
    const ptr = wrapper._ptr;
    wrapper._ptr = null; // closed as the wrapper marks it, without freeing anything yet
    expect(() => t.execute(other, undefined, 'get')).toThrow(expect.objectContaining({ code: 'SIBLITE_CLOSED' }));
    wrapper._ptr = ptr;
    t.finalize();
    other.close();
  });
});

describe('runControl', () => {
  it('runs BEGIN, COMMIT and ROLLBACK prepared once, with the errors exec() gives', () => {
    const { db, prepare } = engine();
    db.exec('CREATE TABLE t (v)');
    const [begin, commit, rollback] = [prepare('BEGIN'), prepare('COMMIT'), prepare('ROLLBACK')];
    const insert = prepare('INSERT INTO t VALUES (?)');
    begin.runControl();
    expect(db.inTransaction).toBe(true);
    insert.execute(db, [1], 'run');
    commit.runControl();
    expect(db.inTransaction).toBe(false);
    begin.runControl();
    insert.execute(db, [2], 'run');
    rollback.runControl();
    expect(prepare('SELECT count(*) AS n FROM t').execute(db, undefined, 'get').rows).toEqual([{ n: 1 }]);
    let viaExec: unknown;
    try {
      db.exec('COMMIT');
    } catch (e) {
      viaExec = e;
    }
    expect(() => commit.runControl()).toThrow(
      expect.objectContaining({ code: 'SQLITE_MISUSE', message: (viaExec as Error).message }),
    );
    begin.runControl();
    expect(() => begin.runControl()).toThrow(expect.objectContaining({ code: 'SQLITE_MISUSE' }));
    commit.runControl();
    expect(db.inTransaction).toBe(false);
  });
});
