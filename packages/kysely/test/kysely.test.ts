/**
 * Kysely's own kinds of queries against the siblite dialect: the query builder (select, joins,
 * insert/update/delete with returning, upserts, aggregates, subqueries), transactions that await
 * side by side, conflicts and retryTransaction, savepoints, streaming, introspection and
 * migrations.
 */
import { open, SqliteError, type Connection } from '@siblite/core';
import { Kysely, Migrator, sql, type Generated, type Migration } from 'kysely';
import { afterEach, describe, expect, it } from 'vitest';
import { SibliteDialect, retryTransaction } from '../src/index.js';

interface DB {
  person: { id: Generated<number>; first_name: string; last_name: string | null; credits: number };
  pet: { id: Generated<number>; name: string; owner_id: number; species: string };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const dbs: Kysely<any>[] = [];

async function setup(options: { transactionMode?: 'concurrent' | 'immediate' } = {}): Promise<{ db: Kysely<DB>; root: Connection }> {
  const root = open(':memory:');
  root.exec(`
    CREATE TABLE person (id INTEGER PRIMARY KEY, first_name TEXT NOT NULL, last_name TEXT, credits INT NOT NULL DEFAULT 0);
    CREATE TABLE pet (id INTEGER PRIMARY KEY, name TEXT NOT NULL, owner_id INT NOT NULL REFERENCES person(id), species TEXT NOT NULL);
  `);
  const db = new Kysely<DB>({ dialect: new SibliteDialect({ database: root, ...options }) });
  dbs.push(db);
  await db
    .insertInto('person')
    .values([
      { first_name: 'Jennifer', last_name: 'Aniston', credits: 10 },
      { first_name: 'Arnold', last_name: 'Schwarzenegger', credits: 10 },
      { first_name: 'Sylvester', last_name: null, credits: 10 },
    ])
    .execute();
  await db
    .insertInto('pet')
    .values([
      { name: 'Catto', owner_id: 1, species: 'cat' },
      { name: 'Doggo', owner_id: 2, species: 'dog' },
      { name: 'Hammo', owner_id: 2, species: 'hamster' },
    ])
    .execute();
  return { db, root };
}

afterEach(async () => {
  for (const db of dbs.splice(0)) await db.destroy();
});

describe('query builder', () => {
  it('selects, filters, orders, joins, aggregates, subqueries', async () => {
    const { db } = await setup();
    const people = await db.selectFrom('person').selectAll().where('last_name', 'is not', null).orderBy('id').execute();
    expect(people.map((p) => p.first_name)).toEqual(['Jennifer', 'Arnold']);
    const joined = await db
      .selectFrom('person')
      .innerJoin('pet', 'pet.owner_id', 'person.id')
      .select(['person.first_name', 'pet.name as pet_name'])
      .orderBy('pet.id')
      .execute();
    expect(joined).toEqual([
      { first_name: 'Jennifer', pet_name: 'Catto' },
      { first_name: 'Arnold', pet_name: 'Doggo' },
      { first_name: 'Arnold', pet_name: 'Hammo' },
    ]);
    const counts = await db
      .selectFrom('pet')
      .select(['owner_id', (eb) => eb.fn.countAll<number>().as('n')])
      .groupBy('owner_id')
      .having((eb) => eb.fn.countAll(), '>', 1)
      .execute();
    expect(counts).toEqual([{ owner_id: 2, n: 2 }]);
    const owners = await db
      .selectFrom('person')
      .select('first_name')
      .where('id', 'in', (eb) => eb.selectFrom('pet').select('owner_id').where('species', '=', 'cat'))
      .execute();
    expect(owners).toEqual([{ first_name: 'Jennifer' }]);
    const one = await db.selectFrom('person').select('first_name').where('id', '=', 42).executeTakeFirst();
    expect(one).toBeUndefined();
  });

  it('insert, update, delete report counts and insertId; returning and upserts return rows', async () => {
    const { db } = await setup();
    const ins = await db.insertInto('person').values({ first_name: 'Ada', last_name: 'Lovelace', credits: 1 }).executeTakeFirstOrThrow();
    expect(ins.insertId).toBe(4n);
    const up = await db.updateTable('person').set({ credits: 5 }).where('credits', '=', 10).executeTakeFirstOrThrow();
    expect(up.numUpdatedRows).toBe(3n);
    const ret = await db
      .insertInto('person')
      .values({ first_name: 'Grace', last_name: 'Hopper', credits: 2 })
      .returning(['id', 'first_name'])
      .executeTakeFirstOrThrow();
    expect(ret).toEqual({ id: 5, first_name: 'Grace' });
    const upsert = await db
      .insertInto('person')
      .values({ id: 5, first_name: 'Grace', last_name: 'Brewster', credits: 3 })
      .onConflict((oc) => oc.column('id').doUpdateSet((eb) => ({ last_name: eb.ref('excluded.last_name') })))
      .returning(['id', 'last_name'])
      .executeTakeFirstOrThrow();
    expect(upsert).toEqual({ id: 5, last_name: 'Brewster' });
    const del = await db.deleteFrom('pet').where('species', '=', 'hamster').returning('name').execute();
    expect(del).toEqual([{ name: 'Hammo' }]);
    const raw = await sql<{ n: number }>`SELECT count(*) AS n FROM pet`.execute(db);
    expect(raw.rows).toEqual([{ n: 2 }]);
  });

  it('errors are siblite SqliteErrors with codes', async () => {
    const { db } = await setup();
    const err = await db.insertInto('person').values({ id: 1, first_name: 'x', last_name: null, credits: 0 }).execute().catch((e) => e);
    expect(err).toBeInstanceOf(SqliteError);
    expect((err as SqliteError).code).toMatch(/^SQLITE_CONSTRAINT/);
  });
});

describe('transactions', () => {
  it('32 transactions await side by side on their own handles, and the totals are exact', async () => {
    const { db, root } = await setup();
    await db.deleteFrom('pet').execute();
    await db.deleteFrom('person').execute();
    await db.insertInto('person').values(Array.from({ length: 32 }, (_, i) => ({ id: i + 1, first_name: `p${i}`, last_name: null, credits: 0 }))).execute();
    let inside = 0;
    let maxInside = 0;
    const handler = async (id: number) => {
      for (let j = 0; j < 3; j++) {
        await retryTransaction(db, async (trx) => {
          inside++;
          maxInside = Math.max(maxInside, inside);
          try {
            const { credits } = await trx.selectFrom('person').select('credits').where('id', '=', id).executeTakeFirstOrThrow();
            await sleep(2);
            await trx.updateTable('person').set({ credits: credits + 1 }).where('id', '=', id).execute();
          } finally {
            inside--;
          }
        });
      }
    };
    await Promise.all(Array.from({ length: 32 }, (_, i) => handler(i + 1)));
    // No mutex: many transactions were open at the same time.
    expect(maxInside).toBeGreaterThan(8);
    expect(root.get<{ s: number }>('SELECT sum(credits) AS s FROM person')?.s).toBe(96);
  });

  it('db.transaction() runs BEGIN CONCURRENT on its own handle; others read and write meanwhile', async () => {
    const { db, root } = await setup();
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let mode: string | null = null;
    const p = db.transaction().execute(async (trx) => {
      await trx.updateTable('person').set({ credits: 0 }).where('id', '=', 1).execute();
      const conn = await sql`SELECT 1`.execute(trx); // runs on the transaction's handle
      expect(conn.rows.length).toBe(1);
      await gate;
    });
    await sleep(1);
    for (const h of [root]) mode = h.transactionMode; // the root handle is not the transaction's
    expect(mode).toBeNull();
    // Another Kysely connection writes the same table while the transaction awaits.
    await db.updateTable('person').set({ credits: 11 }).where('id', '=', 2).execute();
    expect((await db.selectFrom('person').select('credits').where('id', '=', 1).executeTakeFirstOrThrow()).credits).toBe(10);
    release();
    await p;
    expect((await db.selectFrom('person').select('credits').where('id', '=', 1).executeTakeFirstOrThrow()).credits).toBe(0);
  });

  it('a lost update is rejected with SQLITE_BUSY_SNAPSHOT, and retryTransaction reruns it to an exact result', async () => {
    const { db } = await setup();
    const bump = (trx: Parameters<Parameters<typeof retryTransaction<DB, void>>[1]>[0], gate: Promise<void>) =>
      (async () => {
        const { credits } = await trx.selectFrom('person').select('credits').where('id', '=', 1).executeTakeFirstOrThrow();
        await gate;
        await trx.updateTable('person').set({ credits: credits + 1 }).where('id', '=', 1).execute();
      })();
    // Without retry: the second committer conflicts.
    let open1!: () => void;
    const g = new Promise<void>((r) => (open1 = r));
    const a = db.transaction().execute((trx) => bump(trx, g));
    const b = db.transaction().execute((trx) => bump(trx, g));
    await sleep(5);
    open1();
    const results = await Promise.allSettled([a, b]);
    const rejected = results.filter((r) => r.status === 'rejected') as PromiseRejectedResult[];
    expect(rejected.length).toBe(1);
    expect((rejected[0]!.reason as SqliteError).code).toBe('SQLITE_BUSY_SNAPSHOT');
    expect((await db.selectFrom('person').select('credits').where('id', '=', 1).executeTakeFirstOrThrow()).credits).toBe(11);
    // With retry: both land.
    let attempts = 0;
    let open2!: () => void;
    const g2 = new Promise<void>((r) => (open2 = r));
    const run = () =>
      retryTransaction(db, (trx) => {
        attempts++;
        return bump(trx, g2);
      });
    const both = Promise.all([run(), run()]);
    await sleep(5);
    open2();
    await both;
    expect(attempts).toBe(3);
    expect((await db.selectFrom('person').select('credits').where('id', '=', 1).executeTakeFirstOrThrow()).credits).toBe(13);
  });

  it('savepoints of a controlled transaction roll back and release', async () => {
    const { db } = await setup();
    const trx = await db.startTransaction().execute();
    await trx.insertInto('pet').values({ name: 'Fisho', owner_id: 3, species: 'fish' }).execute();
    const sp = await trx.savepoint('before_bird').execute();
    await sp.insertInto('pet').values({ name: 'Birdo', owner_id: 3, species: 'bird' }).execute();
    const back = await sp.rollbackToSavepoint('before_bird').execute();
    const sp2 = await back.savepoint('second').execute();
    await sp2.insertInto('pet').values({ name: 'Snako', owner_id: 3, species: 'snake' }).execute();
    await (await sp2.releaseSavepoint('second').execute()).commit().execute();
    const names = (await db.selectFrom('pet').select('name').where('owner_id', '=', 3).orderBy('id').execute()).map((r) => r.name);
    expect(names).toEqual(['Fisho', 'Snako']);
  });

  it('a rolled-back transaction leaves nothing, and its handle goes back to the pool clean', async () => {
    const { db } = await setup();
    await expect(
      db.transaction().execute(async (trx) => {
        await trx.deleteFrom('pet').execute();
        throw new Error('boom');
      }),
    ).rejects.toThrow('boom');
    expect((await db.selectFrom('pet').select((eb) => eb.fn.countAll<number>().as('n')).executeTakeFirstOrThrow()).n).toBe(3);
  });

  it('DDL inside a concurrent transaction is refused with a clear error; transactionMode immediate allows it', async () => {
    const { db } = await setup();
    const err = await db
      .transaction()
      .execute((trx) => trx.schema.createTable('x').addColumn('a', 'integer').execute())
      .catch((e) => e);
    expect((err as SqliteError).kind).toBe('misuse');
    expect(String(err.message)).toMatch(/DDL/);
    const { db: imm } = await setup({ transactionMode: 'immediate' });
    await imm.transaction().execute((trx) => trx.schema.createTable('x').addColumn('a', 'integer').execute());
    expect((await imm.introspection.getTables()).map((t) => t.name)).toContain('x');
  });
});

describe('streaming, introspection, migrations', () => {
  it('streams rows in chunks', async () => {
    const { db } = await setup();
    await db.insertInto('pet').values(Array.from({ length: 250 }, (_, i) => ({ name: `n${i}`, owner_id: 1, species: 'ant' }))).execute();
    let n = 0;
    for await (const row of db.selectFrom('pet').select('name').where('species', '=', 'ant').orderBy('id').stream(100)) {
      expect(row.name).toBe(`n${n}`);
      n++;
    }
    expect(n).toBe(250);
  });

  it('introspects tables and columns', async () => {
    const { db } = await setup();
    const tables = await db.introspection.getTables();
    const person = tables.find((t) => t.name === 'person')!;
    expect(person.columns.map((c) => c.name)).toEqual(['id', 'first_name', 'last_name', 'credits']);
    expect(person.columns.find((c) => c.name === 'last_name')?.isNullable).toBe(true);
  });

  it('runs migrations up and down with Kysely\'s Migrator', async () => {
    const db = new Kysely<any>({ dialect: new SibliteDialect({ database: open(':memory:') }) });
    dbs.push(db);
    const migrations: Record<string, Migration> = {
      '001_init': {
        up: async (k) => {
          await k.schema.createTable('note').addColumn('id', 'integer', (c) => c.primaryKey()).addColumn('body', 'text', (c) => c.notNull()).execute();
          await k.schema.createIndex('note_body').on('note').column('body').execute();
        },
        down: async (k) => {
          await k.schema.dropTable('note').execute();
        },
      },
      '002_tag': {
        up: async (k) => {
          await k.schema.alterTable('note').addColumn('tag', 'text').execute();
        },
        down: async (k) => {
          await k.schema.alterTable('note').dropColumn('tag').execute();
        },
      },
    };
    const migrator = new Migrator({ db, provider: { getMigrations: async () => migrations } });
    const up = await migrator.migrateToLatest();
    expect(up.error).toBeUndefined();
    expect(up.results?.map((r) => [r.migrationName, r.status])).toEqual([
      ['001_init', 'Success'],
      ['002_tag', 'Success'],
    ]);
    await db.insertInto('note').values({ body: 'hi', tag: 't' }).execute();
    const down = await migrator.migrateDown();
    expect(down.error).toBeUndefined();
    const cols = (await db.introspection.getTables()).find((t) => t.name === 'note')!.columns.map((c) => c.name);
    expect(cols).toEqual(['id', 'body']);
  });

  it('destroy() closes the pooled handles and the database', async () => {
    const root = open(':memory:');
    const db = new Kysely<any>({ dialect: new SibliteDialect({ database: root }) });
    await sql`SELECT 1`.execute(db);
    await db.destroy();
    expect(root.isOpen).toBe(false);
  });
});
