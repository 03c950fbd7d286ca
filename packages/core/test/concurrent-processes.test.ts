/**
 * BEGIN CONCURRENT across processes: commits by another process between the steps of a
 * concurrent transaction are noticed at its validation (regression test of class 5 of the
 * isolation review).
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { beforeAll, describe, expect, it } from 'vitest';
import { errorKind } from '../src/index.js';
import { coreDir, ensureBuilt } from './fixtures/harness.js';
import { thrown, useScope } from './helpers.js';

beforeAll(() => ensureBuilt(), 120_000);
const scope = useScope();

/** Runs `sql` in a separate node process (one autocommit statement each) on `file`. */
async function otherProcess(file: string, ...sql: string[]): Promise<void> {
  const dist = pathToFileURL(join(coreDir, 'dist', 'index.js')).href;
  const script = `const { open } = await import(${JSON.stringify(dist)}); const db = open(${JSON.stringify(file)});
    for (const s of ${JSON.stringify(sql)}) db.run(s); db.close();`;
  await promisify(execFile)(process.execPath, ['--input-type=module', '-e', script], { timeout: 30_000 });
}

describe('class 5: the first validation of a process sees another process commit', () => {
  it.each(['auto', 'shared'] as const)('read in place, another process commits, the lost update is refused (%s locking)', async (locking) => {
    const file = scope.file();
    const db = scope.open(file, { locking });
    db.exec('CREATE TABLE counter (id INTEGER PRIMARY KEY, v INT NOT NULL); INSERT INTO counter VALUES (1, 0)');
    const a = scope.connect(db);
    a.exec('BEGIN CONCURRENT');
    const seen = a.get<{ v: number }>('SELECT v FROM counter WHERE id = 1')!.v;
    await otherProcess(file, 'UPDATE counter SET v = v + 100 WHERE id = 1');
    const e = thrown(() => {
      a.run('UPDATE counter SET v = ? WHERE id = 1', [seen + 1]);
      a.exec('COMMIT');
    });
    expect(errorKind(e)).toBe('busy_snapshot');
    expect(db.get('SELECT v FROM counter')).toEqual({ v: 100 });
  });

  it.each(['auto', 'shared'] as const)('the same with a read-only transaction that commits without writing (%s locking)', async (locking) => {
    const file = scope.file();
    const db = scope.open(file, { locking });
    db.exec('CREATE TABLE t (id INTEGER PRIMARY KEY, v INT NOT NULL); INSERT INTO t VALUES (1, 0), (2, 0)');
    const a = scope.connect(db);
    a.exec('BEGIN CONCURRENT');
    expect(a.get('SELECT v FROM t WHERE id = 1')).toEqual({ v: 0 });
    await otherProcess(file, 'UPDATE t SET v = 1 WHERE id = 1', 'UPDATE t SET v = 1 WHERE id = 2');
    expect(a.get('SELECT v FROM t WHERE id = 2')).toEqual({ v: 1 });
    // Read 1 = 0 and 2 = 1 is no serial state: the commit must refuse it.
    expect(errorKind(thrown(() => a.exec('COMMIT')))).toBe('busy_snapshot');
  });
});
