/**
 * Large reads of a concurrent transaction are logged as a digest of their rows, not the rows
 * (engine/row-digest.ts): an unrelated commit to the table must not make them conflict, and
 * every change a serial execution would show must.
 */
import { describe, expect, it } from 'vitest';
import type { Connection } from '../src/index.js';
import { useScope } from './helpers.js';

const scope = useScope();
const ROWS = 1000;

function setup(): { a: Connection; b: Connection } {
  const root = scope.open(':memory:');
  root.exec(`CREATE TABLE big (id INTEGER PRIMARY KEY, i, r, s, x);
    WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < ${ROWS + 10})
    INSERT INTO big SELECT n, n * 1000003, n * 1.5, 'value ' || n, randomblob(8) FROM c;
    UPDATE big SET i = 9007199254740993 WHERE id = 7;`);
  return { a: scope.track(root.connect()), b: scope.track(root.connect()) };
}

/** Reads rows 1..ROWS in a concurrent transaction of `a`, lets `b` run `sql`, then commits `a`. */
function readThenCommit(a: Connection, b: Connection, sql: string, params: unknown[] = []): 'committed' | string {
  a.exec('BEGIN CONCURRENT');
  expect(a.all(`SELECT * FROM big WHERE id <= ${ROWS}`)).toHaveLength(ROWS);
  b.run(sql, params as never);
  try {
    a.run('UPDATE big SET s = s WHERE id = 1');
    a.exec('COMMIT');
    return 'committed';
  } catch (e) {
    expect((e as { kind?: string }).kind).toBe('busy_snapshot');
    return (e as Error).message;
  }
}

describe('reads logged by digest', () => {
  it('a commit outside the rows read does not conflict', () => {
    const { a, b } = setup();
    expect(readThenCommit(a, b, `UPDATE big SET s = 'other' WHERE id = ${ROWS + 5}`)).toBe('committed');
    expect(readThenCommit(a, b, 'UPDATE big SET s = s, i = i, r = r, x = x WHERE id = 500')).toBe('committed');
  });

  it('every change of what was read conflicts: value, type, text, blob, big integer, rows added or gone', () => {
    const cases: Array<[string, unknown[]]> = [
      ['UPDATE big SET i = i + 1 WHERE id = 999', []],
      ['UPDATE big SET r = CAST(r AS INTEGER) WHERE id = 2', []], // 3.0 -> 3 (same number in JS, another type)
      ["UPDATE big SET s = 'valuf 300' WHERE id = 300", []], // same length
      ['UPDATE big SET x = zeroblob(8) WHERE id = 1000', []],
      ['UPDATE big SET i = 9007199254740992 WHERE id = 7', []], // equal as doubles, not as integers
      ['DELETE FROM big WHERE id = 256', []],
      ['INSERT INTO big (id, s) VALUES (0, NULL)', []],
      ['UPDATE big SET s = NULL WHERE id = 1', []],
      ['UPDATE big SET id = 100000 WHERE id = 1000', []],
    ];
    for (const [sql, params] of cases) {
      const { a, b } = setup();
      expect(readThenCommit(a, b, sql, params), sql).toMatch(/compared by digest/);
    }
  });

  it('the log keeps no rows of a large read', async () => {
    const { a } = setup();
    a.exec('BEGIN CONCURRENT');
    a.all('SELECT * FROM big');
    const tx = (a as unknown as { session: { tx: { log: Array<{ outcome?: { rows?: unknown[] }; digest?: unknown }> } } }).session.tx;
    expect(tx.log[0]?.outcome?.rows).toBeUndefined();
    expect(tx.log[0]?.digest).toBeDefined();
    a.exec('ROLLBACK');
  });
});
