// An installed Drizzle app, type-checked by tsc against the installed typings.
import { open } from '@siblite/core';
import { drizzle, retryTransaction } from '@siblite/drizzle';
import { eq } from 'drizzle-orm';
import { integer, sqliteTable } from 'drizzle-orm/sqlite-core';

const acct = sqliteTable('acct', { id: integer('id').primaryKey(), n: integer('n').notNull() });
const root = open(':memory:');
root.exec('CREATE TABLE acct (id INTEGER PRIMARY KEY, n INTEGER NOT NULL); INSERT INTO acct VALUES (1, 0)');
const db = drizzle(root);
await Promise.all(
  Array.from({ length: 8 }, () =>
    retryTransaction(db, async (tx) => {
      const [row] = await tx.select().from(acct).where(eq(acct.id, 1));
      await new Promise((r) => setTimeout(r, 2));
      await tx.update(acct).set({ n: row!.n + 1 }).where(eq(acct.id, 1));
    }),
  ),
);
const [first] = await db.select().from(acct);
root.close();
if (first?.n !== 8) throw new Error(`expected 8, got ${first?.n}`);
console.log(`drizzle ts ok n=${first.n}`);
