// An installed Drizzle app (ESM): 16 transactions that await, side by side, with a hot row.
import { open } from '@siblite/core';
import { drizzle, retryTransaction } from '@siblite/drizzle';
import { eq, sql } from 'drizzle-orm';
import { integer, sqliteTable, text } from 'drizzle-orm/sqlite-core';

const acct = sqliteTable('acct', { id: integer('id').primaryKey(), name: text('name'), n: integer('n').notNull() });
const root = open(':memory:');
root.exec('CREATE TABLE IF NOT EXISTS acct (id INTEGER PRIMARY KEY, name TEXT, n INTEGER NOT NULL)');
const db = drizzle(root);
await db.insert(acct).values(Array.from({ length: 16 }, (_, i) => ({ id: i, name: `a${i}`, n: 0 })));
await Promise.all(
  Array.from({ length: 16 }, (_, i) =>
    retryTransaction(db, async (tx) => {
      const [own] = await tx.select().from(acct).where(eq(acct.id, i));
      await new Promise((r) => setTimeout(r, 2));
      await tx.update(acct).set({ n: own.n + 1 }).where(eq(acct.id, i));
      const [hot] = await tx.select().from(acct).where(eq(acct.id, 0));
      await tx.update(acct).set({ n: hot.n + 1 }).where(eq(acct.id, 0));
    }),
  ),
);
const [{ s }] = await db.select({ s: sql`sum(${acct.n})` }).from(acct);
root.close();
if (Number(s) !== 32) throw new Error(`expected 32, got ${s}`);
console.log(`drizzle esm ok sum=${s}`);
