// The README's quickstart, type-checked by tsc against the installed typings.
import { open, type Connection, type SqliteError } from '@siblite/core';

const db: Connection = open(':memory:');
db.exec('CREATE TABLE IF NOT EXISTS stock (item TEXT PRIMARY KEY, qty INT NOT NULL)');
db.run("INSERT OR IGNORE INTO stock VALUES ('apple', 10)");

async function buy(item: string): Promise<number> {
  const h = db.connect();
  try {
    return await h.transaction(async (tx) => {
      const row = tx.get<{ qty: number }>('SELECT qty FROM stock WHERE item = ?', [item]);
      await new Promise((r) => setTimeout(r, 5));
      tx.run('UPDATE stock SET qty = ? WHERE item = ?', [row!.qty - 1, item]);
      return row!.qty - 1;
    });
  } finally {
    h.close();
  }
}
await Promise.all([buy('apple'), buy('apple'), buy('apple')]);
const row = db.get<{ qty: number }>("SELECT qty FROM stock WHERE item = 'apple'");
const code: SqliteError['code'] | undefined = undefined;
db.close();
if (row?.qty !== 7) throw new Error(`expected 7 apples, got ${row?.qty} ${code}`);
console.log(`ts ok qty=${row.qty}`);
