// The README's quickstart, as an installed app (ESM).
import { open } from '@siblite/core';
import { rmSync } from 'node:fs';

rmSync('shop.db', { force: true });
const db = open('shop.db');
db.exec('CREATE TABLE IF NOT EXISTS stock (item TEXT PRIMARY KEY, qty INT NOT NULL)');
db.run("INSERT OR IGNORE INTO stock VALUES ('apple', 10)");

async function buy(item) {
  const h = db.connect();
  try {
    return await h.transaction(async (tx) => {
      const { qty } = tx.get('SELECT qty FROM stock WHERE item = ?', [item]);
      await new Promise((r) => setTimeout(r, 5));
      tx.run('UPDATE stock SET qty = ? WHERE item = ?', [qty - 1, item]);
      return qty - 1;
    });
  } finally {
    h.close();
  }
}
await Promise.all([buy('apple'), buy('apple'), buy('apple')]);
const { qty } = db.get("SELECT qty FROM stock WHERE item = 'apple'");
db.close();
if (qty !== 7) throw new Error(`expected 7 apples, got ${qty}`);
console.log(`esm ok qty=${qty}`);
