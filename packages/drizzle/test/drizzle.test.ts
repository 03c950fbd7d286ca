/**
 * The Drizzle driver: joins of same-named columns, relational queries, transactions that await
 * side by side on their own handles, retries through Drizzle's wrapped errors, batches, and
 * drizzle-kit migrations (generate with the real CLI, apply with migrate()).
 */
import { isRetryable, open, SqliteError, type Connection } from '@siblite/core';
import { eq, sql } from 'drizzle-orm';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import os from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { drizzle, migrate, retryTransaction } from '../src/index.js';
import * as schema from './fixtures/schema.js';
import { posts, users } from './fixtures/schema.js';

const here = dirname(fileURLToPath(import.meta.url));
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const roots: Connection[] = [];
afterEach(() => {
  for (const r of roots.splice(0)) r.close();
});

function setup() {
  const root = open(':memory:');
  roots.push(root);
  root.exec(`
    CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL, credits INTEGER NOT NULL DEFAULT 0);
    CREATE TABLE posts (id INTEGER PRIMARY KEY, name TEXT NOT NULL, author_id INTEGER NOT NULL REFERENCES users(id));
    INSERT INTO users VALUES (1, 'ada', 10), (2, 'grace', 10);
    INSERT INTO posts VALUES (10, 'engines', 1), (11, 'compilers', 2), (12, 'cobol', 2);
  `);
  return { root, db: drizzle(root, { schema }) };
}

describe('queries', () => {
  it('joins tables with same-named columns (id, name) exactly', async () => {
    const { db } = setup();
    const rows = await db.select().from(posts).innerJoin(users, eq(posts.authorId, users.id)).orderBy(posts.id);
    expect(rows).toEqual([
      { posts: { id: 10, name: 'engines', authorId: 1 }, users: { id: 1, name: 'ada', credits: 10 } },
      { posts: { id: 11, name: 'compilers', authorId: 2 }, users: { id: 2, name: 'grace', credits: 10 } },
      { posts: { id: 12, name: 'cobol', authorId: 2 }, users: { id: 2, name: 'grace', credits: 10 } },
    ]);
    const partial = await db
      .select({ post: posts.name, author: users.name })
      .from(posts)
      .leftJoin(users, eq(posts.authorId, users.id))
      .where(eq(posts.id, 11));
    expect(partial).toEqual([{ post: 'compilers', author: 'grace' }]);
  });

  it('relational queries with nested relations', async () => {
    const { db } = setup();
    const grace = await db.query.users.findFirst({ where: eq(users.id, 2), with: { posts: { orderBy: posts.id } } });
    expect(grace).toEqual({
      id: 2,
      name: 'grace',
      credits: 10,
      posts: [
        { id: 11, name: 'compilers', authorId: 2 },
        { id: 12, name: 'cobol', authorId: 2 },
      ],
    });
    const withAuthors = await db.query.posts.findMany({ with: { author: true }, orderBy: posts.id });
    expect(withAuthors.map((p) => [p.name, p.author.name])).toEqual([
      ['engines', 'ada'],
      ['compilers', 'grace'],
      ['cobol', 'grace'],
    ]);
  });

  it('insert/update/delete with returning, get, values, run', async () => {
    const { db } = setup();
    const [u] = await db.insert(users).values({ name: 'linus' }).returning();
    expect(u).toEqual({ id: 3, name: 'linus', credits: 0 });
    const one = await db.select().from(users).where(eq(users.id, 3)).get();
    expect(one?.name).toBe('linus');
    expect(await db.select().from(users).where(eq(users.id, 99)).get()).toBeUndefined();
    const upd = await db.update(users).set({ credits: 5 }).where(eq(users.id, 3)).returning({ credits: users.credits });
    expect(upd).toEqual([{ credits: 5 }]);
    expect(await db.values(sql`SELECT id, name FROM users WHERE id = 3`)).toEqual([[3, 'linus']]);
    await db.delete(users).where(eq(users.id, 3));
    expect(await db.select().from(users)).toHaveLength(2);
  });

  it('batch runs in one transaction: a failing query undoes the batch', async () => {
    const { db } = setup();
    const [a, b] = await db.batch([db.insert(users).values({ name: 'x' }).returning(), db.select().from(users)]);
    expect(a).toHaveLength(1);
    expect(b).toHaveLength(3);
    await expect(db.batch([db.insert(users).values({ name: 'y' }), db.insert(users).values({ id: 1, name: 'dup' })])).rejects.toThrow();
    expect((await db.select().from(users)).map((u) => u.name)).not.toContain('y');
  });
});

describe('transactions', () => {
  it('32 transactions await side by side on their own handles; totals exact', async () => {
    const { db, root } = setup();
    root.exec('WITH RECURSIVE c(x) AS (SELECT 100 UNION ALL SELECT x + 1 FROM c WHERE x < 131) INSERT INTO users (id, name) SELECT x, x FROM c');
    let inside = 0;
    let most = 0;
    await Promise.all(
      Array.from({ length: 32 }, async (_, k) => {
        for (let j = 0; j < 3; j++) {
          await retryTransaction(db, async (tx) => {
            inside++;
            most = Math.max(most, inside);
            try {
              const [u] = await tx.select().from(users).where(eq(users.id, 100 + k));
              await sleep(2);
              await tx.update(users).set({ credits: u!.credits + 1 }).where(eq(users.id, 100 + k));
            } finally {
              inside--;
            }
          });
        }
      }),
    );
    expect(most).toBeGreaterThan(8);
    expect(root.get<{ s: number }>('SELECT sum(credits) AS s FROM users WHERE id >= 100')?.s).toBe(96);
  });

  it('a conflict surfacing inside a query is wrapped by Drizzle; retryTransaction sees through it', async () => {
    const { db, root } = setup();
    // Force the conflict to surface during a statement (a resume), not at COMMIT: the
    // transaction reads, another handle commits a change to what it read and runs a statement
    // that parks it, then the transaction's next statement resumes it and conflicts.
    const attempt = () =>
      db.transaction(async (tx) => {
        const [u] = await tx.select().from(users).where(eq(users.id, 1));
        await tx.update(users).set({ credits: u!.credits + 1 }).where(eq(users.id, 1));
        await sleep(5);
        await tx.select().from(users).where(eq(users.id, 1));
      });
    const first = attempt();
    await sleep(1);
    root.run('UPDATE users SET credits = 100 WHERE id = 1');
    const err = await first.catch((e) => e);
    expect(err).not.toBeInstanceOf(SqliteError); // Drizzle's DrizzleQueryError
    expect((err as Error).cause).toBeInstanceOf(SqliteError);
    expect(((err as Error).cause as SqliteError).code).toBe('SQLITE_BUSY_SNAPSHOT');
    expect(isRetryable(err)).toBe(true);
    // Now through retryTransaction: the second attempt succeeds.
    let attempts = 0;
    const retried = retryTransaction(db, async (tx) => {
      attempts++;
      const [u] = await tx.select().from(users).where(eq(users.id, 1));
      await tx.update(users).set({ credits: u!.credits + 1 }).where(eq(users.id, 1));
      await sleep(5);
      await tx.select().from(users).where(eq(users.id, 1));
    });
    await sleep(1);
    root.run('UPDATE users SET credits = 200 WHERE id = 1');
    await retried;
    expect(attempts).toBe(2);
    expect(root.get<{ credits: number }>('SELECT credits FROM users WHERE id = 1')?.credits).toBe(201);
  });

  it('nested transactions are savepoints; behavior picks a pessimistic mode', async () => {
    const { db } = setup();
    await db.transaction(async (tx) => {
      await tx.insert(users).values({ id: 5, name: 'kept' });
      await tx
        .transaction(async (inner) => {
          await inner.insert(users).values({ id: 6, name: 'undone' });
          inner.rollback();
        })
        .catch(() => {});
    });
    const names = (await db.select().from(users)).map((u) => u.name);
    expect(names).toContain('kept');
    expect(names).not.toContain('undone');
    await db.transaction(
      async (tx) => {
        await tx.run(sql`CREATE TABLE made_in_tx (x)`);
      },
      { behavior: 'immediate' },
    );
    await expect(db.transaction(async (tx) => tx.run(sql`CREATE TABLE refused (x)`))).rejects.toThrow();
  });
});

describe('drizzle-kit migrations', () => {
  it('drizzle-kit generate writes SQL; migrate() applies it once, atomically', async () => {
    const out = mkdtempSync(join(os.tmpdir(), 'siblite-drizzle-kit-'));
    try {
      execFileSync(
        join(here, '..', 'node_modules', '.bin', 'drizzle-kit'),
        ['generate', '--dialect=sqlite', `--schema=${join(here, 'fixtures', 'schema.ts')}`, `--out=${out}`, '--name=init'],
        { cwd: join(here, '..'), stdio: 'pipe', env: { ...process.env, NODE_PATH: '' } },
      );
      expect(readdirSync(out).some((f) => f.endsWith('.sql'))).toBe(true);
      const root = open(':memory:');
      roots.push(root);
      const db = drizzle(root, { schema });
      await migrate(db, { migrationsFolder: out });
      await migrate(db, { migrationsFolder: out }); // a second run applies nothing
      await db.insert(users).values({ name: 'ada' });
      await db.insert(posts).values({ name: 'p', authorId: 1 });
      const rows = await db.select().from(posts).innerJoin(users, eq(posts.authorId, users.id));
      expect(rows).toEqual([{ posts: { id: 1, name: 'p', authorId: 1 }, users: { id: 1, name: 'ada', credits: 0 } }]);
      expect(root.get<{ n: number }>('SELECT count(*) AS n FROM __drizzle_migrations')?.n).toBe(1);
    } finally {
      rmSync(out, { recursive: true, force: true });
    }
  });
});

describe('closing', () => {
  it('closing the database handle closes the driver\'s handles: the engine closes with it', async () => {
    const { db, root } = setup();
    await db.select().from(users);
    await db.transaction(async (tx) => tx.select().from(users));
    const pool = db.$pool;
    root.close();
    expect(() => pool.acquire()).toThrow(/closed/);
    await expect(db.select().from(users)).rejects.toThrow();
  });
});
