// An installed Kysely app (CommonJS).
const { open } = require('@siblite/core');
const { SibliteDialect, retryTransaction } = require('@siblite/kysely');
const { Kysely } = require('kysely');

(async () => {
  const db = new Kysely({ dialect: new SibliteDialect({ database: open(':memory:') }) });
  await db.schema.createTable('acct').addColumn('id', 'integer', (c) => c.primaryKey()).addColumn('n', 'integer').execute();
  await db.insertInto('acct').values([{ id: 1, n: 0 }]).execute();
  await Promise.all(
    Array.from({ length: 8 }, () =>
      retryTransaction(db, async (trx) => {
        const { n } = await trx.selectFrom('acct').select('n').where('id', '=', 1).executeTakeFirstOrThrow();
        await new Promise((r) => setTimeout(r, 2));
        await trx.updateTable('acct').set({ n: n + 1 }).where('id', '=', 1).execute();
      }),
    ),
  );
  const { n } = await db.selectFrom('acct').select('n').executeTakeFirstOrThrow();
  await db.destroy();
  if (n !== 8) throw new Error(`expected 8, got ${n}`);
  console.log(`kysely cjs ok n=${n}`);
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
