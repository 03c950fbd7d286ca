/**
 * PostgreSQL test fixtures: a fresh schema per bus, dropped afterwards. When no server is
 * reachable the suites are skipped with a loud warning (never passed silently).
 */
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { PgBus } from '../src/index.js';

/** The test server (override with SIBLITE_PG_URL). */
export const PG_URL = process.env.SIBLITE_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/test';

/** `null` when the server answers, else why it does not. */
export async function serverProblem(): Promise<string | null> {
  const c = new pg.Client({ connectionString: PG_URL, connectionTimeoutMillis: 3000 });
  try {
    await c.connect();
    await c.query('SELECT 1');
    return null;
  } catch (e) {
    return `no PostgreSQL server at ${PG_URL}: ${(e as Error).message}`;
  } finally {
    await c.end().catch(() => {});
  }
}

/** A fresh schema name for one bus. */
export function freshSchema(): string {
  return `t_${randomUUID().replaceAll('-', '').slice(0, 20)}`;
}

/** Drops a test schema. */
export async function dropSchema(schema: string): Promise<void> {
  const c = new pg.Client({ connectionString: PG_URL });
  await c.connect();
  try {
    await c.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
  } finally {
    await c.end();
  }
}

/** Opens a bus on a fresh schema; `cleanup` closes it and drops the schema. */
export async function makePgBus(): Promise<{ bus: PgBus; schema: string; cleanup(): Promise<void> }> {
  const schema = freshSchema();
  const bus = await PgBus.open({ connection: PG_URL, schema, logger: null });
  return {
    bus,
    schema,
    async cleanup() {
      await bus.close({ timeout: 1000 });
      await dropSchema(schema);
    },
  };
}
