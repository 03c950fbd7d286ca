// Quickstart: open a database, mint a sibling handle, write from one, read from the other,
// and run a concurrent transaction that awaits in the middle.
//   pnpm run build && node examples/quickstart.mjs
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { open } from '@siblite/core';

const dir = mkdtempSync(join(tmpdir(), 'siblite-quickstart-'));
try {
  // One engine per file per process; every handle on it is a Connection.
  const db = open(join(dir, 'app.db'));
  const sibling = db.connect(); // a second handle: its own transactions, same database

  db.exec(`CREATE TABLE todo (
    id    INTEGER PRIMARY KEY,
    title TEXT NOT NULL,
    done  INTEGER NOT NULL DEFAULT 0
  )`);

  // Write from one handle...
  const { changes, lastInsertRowid } = db.run('INSERT INTO todo (title) VALUES (?)', ['write the docs']);
  console.log(`inserted ${changes} row, id ${lastInsertRowid}`);

  // ...read from the other: committed writes are visible to every sibling at once.
  const row = sibling.get('SELECT id, title, done FROM todo WHERE id = ?', [lastInsertRowid]);
  console.log('the sibling reads:', row);
  assert.deepEqual(row, { id: 1, title: 'write the docs', done: 0 });

  // A concurrent transaction may await anything. It takes no lock, other handles keep working
  // meanwhile, and its writes stay invisible to them until COMMIT.
  const pending = sibling.transaction(
    async (tx) => {
      const todo = tx.get('SELECT title FROM todo WHERE id = ?', [lastInsertRowid]);
      await new Promise((resolve) => setTimeout(resolve, 20)); // e.g. call another service
      tx.run('UPDATE todo SET done = 1 WHERE id = ?', [lastInsertRowid]);
      return todo.title;
    },
    { mode: 'concurrent' },
  );

  // While the transaction awaits, the first handle keeps working and does not see its write.
  db.run('INSERT INTO todo (title) VALUES (?)', ['ship it']);
  assert.equal(db.get('SELECT done FROM todo WHERE id = ?', [lastInsertRowid]).done, 0);
  console.log('during the transaction, the other handle still sees done = 0');

  const title = await pending; // COMMIT happened here
  console.log(`committed: marked "${title}" done`);

  const all = db.all('SELECT id, title, done FROM todo ORDER BY id');
  console.log('after commit:', all);
  assert.deepEqual(all, [
    { id: 1, title: 'write the docs', done: 1 },
    { id: 2, title: 'ship it', done: 0 },
  ]);

  sibling.close();
  db.close();
} finally {
  rmSync(dir, { recursive: true, force: true });
}
