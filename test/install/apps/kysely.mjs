// An installed Kysely app (ESM): 16 requests, each a transaction that awaits, side by side.
import { open } from '@siblite/core';
import { SibliteDialect, retryTransaction } from '@siblite/kysely';
import { Kysely } from 'kysely';

const db = new Kysely({ dialect: new SibliteDialect({ database: open(':memory:') }) });
await db.schema.createTable('acct').ifNotExists().addColumn('id', 'integer', (c) => c.primaryKey()).addColumn('n', 'integer', (c) => c.notNull()).execute();
await db.insertInto('acct').values(Array.from({ length: 16 }, (_, i) => ({ id: i, n: 0 }))).execute();
await Promise.all(
  Array.from({ length: 16 }, (_, i) =>
    retryTransaction(db, async (trx) => {
      const { n } = await trx.selectFrom('acct').select('n').where('id', '=', i).executeTakeFirstOrThrow();
      await new Promise((r) => setTimeout(r, 2));
      await trx.updateTable('acct').set({ n: n + 1 }).where('id', '=', i).execute();
      // every request also bumps a shared counter: conflicts, retried
      const hot = await trx.selectFrom('acct').select('n').where('id', '=', 0).executeTakeFirstOrThrow();
      await trx.updateTable('acct').set({ n: hot.n + 1 }).where('id', '=', 0).execute();
    }),
  ),
);
const { s } = await db.selectFrom('acct').select((eb) => eb.fn.sum('n').as('s')).executeTakeFirstOrThrow();
await db.destroy();
if (Number(s) !== 32) throw new Error(`expected 32, got ${s}`);
console.log(`kysely esm ok sum=${s}`);
