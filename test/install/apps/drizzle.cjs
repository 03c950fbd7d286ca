// An installed Drizzle app (CommonJS).
const { open } = require('@siblite/core');
const { drizzle, retryTransaction } = require('@siblite/drizzle');
const { eq } = require('drizzle-orm');
const { integer, sqliteTable } = require('drizzle-orm/sqlite-core');

const acct = sqliteTable('acct', { id: integer('id').primaryKey(), n: integer('n').notNull() });
(async () => {
  const root = open(':memory:');
  root.exec('CREATE TABLE acct (id INTEGER PRIMARY KEY, n INTEGER NOT NULL); INSERT INTO acct VALUES (1, 0)');
  const db = drizzle(root);
  await Promise.all(
    Array.from({ length: 8 }, () =>
      retryTransaction(db, async (tx) => {
        const [row] = await tx.select().from(acct).where(eq(acct.id, 1));
        await new Promise((r) => setTimeout(r, 2));
        await tx.update(acct).set({ n: row.n + 1 }).where(eq(acct.id, 1));
      }),
    ),
  );
  const [{ n }] = await db.select().from(acct);
  root.close();
  if (n !== 8) throw new Error(`expected 8, got ${n}`);
  console.log(`drizzle cjs ok n=${n}`);
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
