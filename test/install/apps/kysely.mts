// An installed Kysely app, type-checked by tsc against the installed typings.
import { open } from '@siblite/core';
import { SibliteDialect, retryTransaction } from '@siblite/kysely';
import { Kysely, type Generated } from 'kysely';

interface DB {
  acct: { id: Generated<number>; n: number };
}
const db = new Kysely<DB>({ dialect: new SibliteDialect({ database: open(':memory:') }) });
await db.schema.createTable('acct').addColumn('id', 'integer', (c) => c.primaryKey()).addColumn('n', 'integer').execute();
await db.insertInto('acct').values({ n: 0 }).execute();
await Promise.all(
  Array.from({ length: 8 }, () =>
    retryTransaction(db, async (trx) => {
      const { n } = await trx.selectFrom('acct').select('n').where('id', '=', 1).executeTakeFirstOrThrow();
      await new Promise((r) => setTimeout(r, 2));
      await trx.updateTable('acct').set({ n: n + 1 }).where('id', '=', 1).execute();
    }),
  ),
);
const row = await db.selectFrom('acct').select('n').executeTakeFirstOrThrow();
await db.destroy();
if (row.n !== 8) throw new Error(`expected 8, got ${row.n}`);
console.log(`kysely ts ok n=${row.n}`);
