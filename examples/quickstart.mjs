// Quickstart (the README's main example, in a temp directory): open a database, connect
// sibling handles, write from one and read from another, and run concurrent transactions that
// await in the middle without losing an update.
//   pnpm example        (= pnpm run build && node examples/quickstart.mjs)
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { open } from '@siblite/core';

const dir = mkdtempSync(join(tmpdir(), 'siblite-quickstart-'));
try {
  const db = open(join(dir, 'shop.db')); // every open() of shop.db in this process shares one engine
  db.exec('CREATE TABLE IF NOT EXISTS stock (item TEXT PRIMARY KEY, qty INT NOT NULL)');
  db.run("INSERT OR IGNORE INTO stock VALUES ('apple', 10)");

  // Write from one handle, read from a sibling: committed writes are visible at once.
  const clerk = db.connect();
  clerk.run('INSERT INTO stock VALUES (?, ?)', ['pear', 4]);
  const pear = db.get('SELECT item, qty FROM stock WHERE item = ?', ['pear']);
  console.log('written by one handle, read by another:', pear);
  assert.deepEqual(pear, { item: 'pear', qty: 4 });
  clerk.close();

  async function buy(item) {
    const h = db.connect(); // a sibling handle: its own transactions
    try {
      return await h.transaction(
        async (tx) => {
          const { qty } = tx.get('SELECT qty FROM stock WHERE item = ?', [item]);
          await new Promise((r) => setTimeout(r, 5)); // any await: a payment call, a fetch...
          tx.run('UPDATE stock SET qty = ? WHERE item = ?', [qty - 1, item]);
          return qty - 1;
        },
        { mode: 'concurrent' }, // optimistic, serializable, retried on conflict
      );
    } finally {
      h.close();
    }
  }

  // Three purchases at once: each reads, awaits, writes. The transactions run side by side;
  // the ones that conflict are run again, so no update is lost.
  const left = await Promise.all([buy('apple'), buy('apple'), buy('apple')]);
  console.log('each purchase saw qty left:', left.sort((a, b) => b - a).join(', '));
  const apple = db.get("SELECT qty FROM stock WHERE item = 'apple'");
  console.log('apples now:', apple, '(no lost update)');
  assert.deepEqual(apple, { qty: 7 });
  assert.deepEqual(left, [9, 8, 7]);
  db.close();
} finally {
  rmSync(dir, { recursive: true, force: true });
}
