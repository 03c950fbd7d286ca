// Sibling handles: each has its own transaction state on one shared database.
// Shows isolation of BEGIN CONCURRENT, a pessimistic transaction making others fail fast with
// BusyError, prepared statements, and handle lifetimes.
//   pnpm run build && node examples/siblings.mjs
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { open, BusyError, SqliteError } from '@siblite/core';

const dir = mkdtempSync(join(tmpdir(), 'siblite-siblings-'));
try {
  const root = open(join(dir, 'siblings.db'));
  root.exec('CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT NOT NULL)');
  const a = root.connect();
  const b = root.connect();

  root.run('INSERT INTO kv VALUES (?, ?), (?, ?)', ['color', 'white', 'size', 'small']);

  // 1. Two concurrent transactions side by side, in plain SQL. Neither sees the other's
  //    uncommitted writes; both commit because they touch different rows.
  a.exec('BEGIN CONCURRENT');
  b.exec('BEGIN CONCURRENT');
  a.run('UPDATE kv SET v = ? WHERE k = ?', ['blue', 'color']);
  b.run('UPDATE kv SET v = ? WHERE k = ?', ['large', 'size']);
  // Each sees its own write; the others see neither until COMMIT. (Had b also read the row a
  // wrote, and a the row b wrote, that would be write skew and one COMMIT would fail: see retry.mjs.)
  assert.equal(a.get('SELECT v FROM kv WHERE k = ?', ['color']).v, 'blue');
  assert.equal(b.get('SELECT v FROM kv WHERE k = ?', ['size']).v, 'large');
  assert.deepEqual(root.all('SELECT v FROM kv ORDER BY k'), [{ v: 'white' }, { v: 'small' }]);
  console.log(`a and b are both in a ${a.transactionMode} transaction; root still sees the old values`);
  a.exec('COMMIT');
  b.exec('COMMIT');
  console.log('both committed:', root.all('SELECT k, v FROM kv ORDER BY k'));
  assert.deepEqual(root.all('SELECT v FROM kv ORDER BY k'), [{ v: 'blue' }, { v: 'large' }]);

  // 2. A pessimistic transaction (BEGIN IMMEDIATE) holds the write lock until it ends. Another
  //    handle's statement that would see or change its uncommitted state fails at once with
  //    BusyError (never a hang, never a blocked event loop); it can be retried later.
  a.exec('BEGIN IMMEDIATE');
  a.run('UPDATE kv SET v = ? WHERE k = ?', ['green', 'color']);
  try {
    b.run('UPDATE kv SET v = ? WHERE k = ?', ['red', 'color']);
    assert.fail('expected BusyError');
  } catch (e) {
    assert.ok(e instanceof BusyError);
    console.log(`while a holds BEGIN IMMEDIATE, b got ${e.name}: code ${e.code}, kind ${e.kind}, retryable ${e.retryable}`);
    assert.equal(e.code, 'SQLITE_BUSY');
    assert.equal(e.retryable, true);
  }
  a.exec('COMMIT');
  b.run('UPDATE kv SET v = ? WHERE k = ?', ['red', 'color']); // the retry, once a has committed
  assert.equal(root.get('SELECT v FROM kv WHERE k = ?', ['color']).v, 'red');
  console.log('after a committed, b ran its statement again: color =', root.get("SELECT v FROM kv WHERE k = 'color'").v);

  // 3. Prepared statements belong to a handle and are finalized for you (at close at the latest).
  const lookup = b.prepare('SELECT v FROM kv WHERE k = ?');
  console.log('prepared lookup of "size":', lookup.get(['size']));
  assert.deepEqual(lookup.all(['size']), [{ v: 'large' }]);

  // 4. Lifetimes: a sibling outlives its parent; a closed handle throws kind "closed";
  //    close() twice is harmless; the engine closes with its last handle.
  root.close();
  root.close();
  assert.equal(a.get('SELECT count(*) AS n FROM kv').n, 2);
  try {
    root.get('SELECT 1');
    assert.fail('expected an error');
  } catch (e) {
    assert.ok(e instanceof SqliteError);
    assert.equal(e.kind, 'closed');
    console.log(`a closed handle throws ${e.name} of kind "${e.kind}"; its siblings still work`);
  }
  a.close();
  b.close();
} finally {
  rmSync(dir, { recursive: true, force: true });
}
