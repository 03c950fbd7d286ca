// Attacks on rowid spans: every way another handle can commit a write inside a span must conflict.
import { describe, expect, it } from 'vitest';
import { commitAsync, type Connection } from '../src/index.js';
import { useScope } from './helpers.js';

const scope = useScope();

function setup(): { a: Connection; b: Connection; c: Connection } {
  const root = scope.open(':memory:');
  root.exec(`CREATE TABLE sp (id INTEGER PRIMARY KEY, v INT NOT NULL, u TEXT UNIQUE);
    WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 200) INSERT INTO sp SELECT n, n, 'u' || n FROM c;
    CREATE TABLE own (id INTEGER PRIMARY KEY, n INT NOT NULL); INSERT INTO own VALUES (1, 0), (2, 0);`);
  return { a: scope.track(root.connect()), b: scope.track(root.connect()), c: scope.track(root.connect()) };
}

async function readThenCommit(read: [string, unknown?], write: (b: Connection, c: Connection) => unknown): Promise<string> {
  const { a, b, c } = setup();
  a.exec('BEGIN CONCURRENT');
  a.all(read[0], read[1] as never);
  await write(b, c);
  try {
    a.run('UPDATE own SET n = n + 1 WHERE id = 1');
    a.exec('COMMIT');
    return 'committed';
  } catch (e) {
    return (e as Error).message;
  }
}

const GT: [string, unknown] = ['SELECT id, v FROM sp WHERE id > ?', [100]];
describe('rowid spans: more ways to write inside a span', () => {
  const cases: Array<[string, [string, unknown?], (b: Connection, c: Connection) => unknown]> = [
    ['an exec() script', GT, (b) => b.exec('UPDATE sp SET v = 0 WHERE id = 5; UPDATE sp SET v = 0 WHERE id = 150')],
    ['a scalar parameter', GT, (b) => b.run('UPDATE sp SET v = 0 WHERE id = ?', 150 as never)],
    ['a prepared statement', GT, (b) => b.prepare('UPDATE sp SET v = 0 WHERE id = ?').run([150])],
    ['a prepared statement run twice', GT, (b) => { const s = b.prepare('UPDATE sp SET v = 0 WHERE id = ?'); s.run([5]); s.run([150]); }],
    ['a savepoint as the transaction', GT, (b) => b.exec('SAVEPOINT x; UPDATE sp SET v = 0 WHERE id = 150; RELEASE x')],
    ['BEGIN IMMEDIATE', GT, (b) => b.exec('BEGIN IMMEDIATE; UPDATE sp SET v = 0 WHERE id = 150; COMMIT')],
    ['a ROLLBACK TO then another write', GT, (b) => b.exec('BEGIN CONCURRENT; SAVEPOINT s; UPDATE sp SET v = 0 WHERE id = 5; ROLLBACK TO s; UPDATE sp SET v = 0 WHERE id = 150; COMMIT')],
    ['transaction()', GT, (b) => b.transaction((t) => t.run('UPDATE sp SET v = 0 WHERE id = ?', [150]), { mode: 'concurrent' } as never)],
    ['a commit group', GT, async (b, c) => {
      b.exec('BEGIN CONCURRENT'); b.run('UPDATE sp SET v = 0 WHERE id = ?', [150]);
      c.exec('BEGIN CONCURRENT'); c.run('UPDATE sp SET v = 0 WHERE id = ?', [5]);
      await Promise.all([commitAsync(b), commitAsync(c)]);
    }],
    ['iterate() of a write', GT, (b) => [...b.iterate('UPDATE sp SET v = 0 WHERE id = ? RETURNING id', [150])]],
    ['a real key', GT, (b) => b.run('UPDATE sp SET v = 0 WHERE id = ?', [150.0])],
    ['a boolean key (1)', ['SELECT id, v FROM sp WHERE id < ? ORDER BY id DESC', [3]], (b) => b.run('UPDATE sp SET v = 0 WHERE id = ?', [true])],
    ['a text key', GT, (b) => b.run('UPDATE sp SET v = 0 WHERE id = ?', ['150'])],
    ['a move with a text target', GT, (b) => b.run('UPDATE sp SET id = ? WHERE id = ?', ['250', 5])],
    ['a move with a real target', GT, (b) => b.run('UPDATE sp SET id = ? WHERE id = ?', [250.0, 5])],
    ['a numbered parameter', GT, (b) => b.run('UPDATE sp SET v = ?1 WHERE id = ?2', [0, 150])],
    ['a named parameter', GT, (b) => b.run('UPDATE sp SET v = 0 WHERE id = :id', { id: 150 } as never)],
    ['a named parameter bound by position', GT, (b) => b.run('UPDATE sp SET v = :v WHERE id = :id', [0, 150] as never)],
    ['a repeated parameter', GT, (b) => b.run('UPDATE sp SET v = ?1 + 1 WHERE id = ?1', [150])],
    ['a point read, BigInt key, write by number', ['SELECT v FROM sp WHERE id = ?', [7n]], (b) => b.run('DELETE FROM sp WHERE id = ?', [7])],
    ['a span read through a view', ['SELECT * FROM (SELECT id, v FROM sp WHERE id >= 150)'], (b) => b.run('DELETE FROM sp WHERE id = ?', [180])],
    ['a negative span', ['SELECT id, v FROM sp WHERE id < ? ORDER BY id DESC', [-5]], (b) => b.run('UPDATE sp SET id = ? WHERE id = ?', [-300, 150])],
    ['a span read via rowid of an aliased table', ['SELECT id, v FROM sp WHERE rowid > ?', [100]], (b) => b.run('UPDATE sp SET v = 0 WHERE rowid = ?', [150])],
    ['a span read via oid, written via _rowid_', ['SELECT id, v FROM sp WHERE oid > ?', [100]], (b) => b.run('UPDATE sp SET v = 0 WHERE _rowid_ = ?', [150])],
    ['UPDATE OR IGNORE move', GT, (b) => b.run('UPDATE OR IGNORE sp SET id = ? WHERE id = ?', [300, 150])],
  ];
  for (const [name, read, write] of cases) {
    it(name, async () => {
      expect(await readThenCommit(read, write)).not.toBe('committed');
    });
  }
});
