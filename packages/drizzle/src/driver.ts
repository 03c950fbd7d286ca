/**
 * The driver: Drizzle's SQLite proxy session, given a sibling handle per transaction.
 * @module
 */
import { HandlePool, type BindParams, type Connection, type PooledHandle, type TransactionMode } from '@siblite/core';
import { createTableRelationsHelpers, DefaultLogger, extractTablesRelationalConfig, type DrizzleConfig, type Logger } from 'drizzle-orm';
import { SQLiteAsyncDialect, type SQLiteTransactionConfig } from 'drizzle-orm/sqlite-core';
import {
  SQLiteProxyTransaction,
  SQLiteRemoteSession,
  SqliteRemoteDatabase,
  type AsyncBatchRemoteCallback,
  type AsyncRemoteCallback,
} from 'drizzle-orm/sqlite-proxy';

/** Options of {@link drizzle}: Drizzle's own (`schema`, `logger`, `casing`) and siblite's. */
export interface SibliteDrizzleConfig<TSchema extends Record<string, unknown> = Record<string, never>>
  extends Pick<DrizzleConfig<TSchema>, 'schema' | 'logger' | 'casing'> {
  /**
   * The mode of `db.transaction()` when it is given no `behavior`. Default `concurrent`
   * (`BEGIN CONCURRENT`: optimistic, serializable, never blocks other handles; DDL is refused in
   * it). `db.transaction(fn, { behavior: 'immediate' })` picks a pessimistic mode per transaction.
   */
  transactionMode?: TransactionMode;
  /** How many idle sibling handles to keep for reuse. Default 32. */
  maxIdleHandles?: number;
}

/** A Drizzle database over siblite (Drizzle's `SqliteRemoteDatabase` type). */
export type SibliteDrizzleDatabase<TSchema extends Record<string, unknown> = Record<string, never>> = SqliteRemoteDatabase<TSchema> & {
  /** The pool of sibling handles the database runs on. */
  readonly $pool: HandlePool;
};

type RemoteResult = { rows: unknown[]; changes?: number; lastInsertRowid?: number | bigint };

/** Runs one statement on a handle the way Drizzle's proxy expects: rows as arrays. */
function execute(pooled: PooledHandle, sql: string, params: unknown[], method: 'run' | 'all' | 'values' | 'get'): RemoteResult {
  const stmt = pooled.statement(sql);
  const values = params as unknown as BindParams;
  if (method === 'run' || !stmt.reader) {
    const { changes, lastInsertRowid } = stmt.run(values);
    return { rows: [], changes, lastInsertRowid };
  }
  stmt.raw(true);
  if (method === 'get') return { rows: stmt.get(values) as unknown as unknown[] };
  return { rows: stmt.all(values) };
}

const clientFor =
  (pooled: PooledHandle): AsyncRemoteCallback =>
  async (sql, params, method) =>
    execute(pooled, sql, params, method);

/** One session per handle: the database's (autocommit) or a transaction's. */
class SibliteSession extends SQLiteRemoteSession<Record<string, unknown>, any> {
  constructor(
    private readonly pool: HandlePool,
    pooled: PooledHandle,
    private readonly sqliteDialect: SQLiteAsyncDialect,
    private readonly relational: any,
    private readonly logOptions: { logger?: Logger },
    private readonly mode: TransactionMode,
  ) {
    super(clientFor(pooled), sqliteDialect, relational, batchFor(pool, mode), logOptions);
  }

  /** A transaction on a sibling handle of its own: `BEGIN <behavior or mode>`, `fn`, `COMMIT`. */
  override async transaction<T>(
    fn: (tx: SQLiteProxyTransaction<Record<string, unknown>, any>) => Promise<T>,
    config?: SQLiteTransactionConfig,
  ): Promise<T> {
    const pooled = this.pool.acquire();
    const handle = pooled.handle;
    try {
      const session = new SibliteSession(this.pool, pooled, this.sqliteDialect, this.relational, this.logOptions, this.mode);
      const tx = new SQLiteProxyTransaction('async', this.sqliteDialect, session, this.relational);
      handle.exec(`BEGIN ${(config?.behavior ?? this.mode).toUpperCase()}`);
      try {
        const result = await fn(tx);
        handle.exec('COMMIT');
        return result;
      } catch (e) {
        if (handle.isOpen && handle.inTransaction) handle.exec('ROLLBACK');
        throw e;
      }
    } finally {
      this.pool.release(pooled);
    }
  }
}

/** `db.batch([...])`: every query on one handle, in one transaction. */
function batchFor(pool: HandlePool, mode: TransactionMode): AsyncBatchRemoteCallback {
  return async (batch) => {
    const pooled = pool.acquire();
    try {
      pooled.handle.exec(`BEGIN ${mode.toUpperCase()}`);
      try {
        const results = batch.map((q) => execute(pooled, q.sql, q.params, q.method));
        pooled.handle.exec('COMMIT');
        return results as { rows: any[] }[];
      } catch (e) {
        if (pooled.handle.inTransaction) pooled.handle.exec('ROLLBACK');
        throw e;
      }
    } finally {
      pool.release(pooled);
    }
  };
}

/**
 * A Drizzle database on a siblite database. Statements outside transactions run on one sibling
 * handle; every `db.transaction()` gets a handle of its own (from a pool), so transactions never
 * wait for each other and may await anything.
 *
 * @example
 * ```ts
 * import { open } from '@siblite/core';
 * import { drizzle, retryTransaction } from '@siblite/drizzle';
 * const db = drizzle(open('app.db'), { schema });
 * await retryTransaction(db, async (tx) => {
 *   const [u] = await tx.select().from(users).where(eq(users.id, 7));
 *   await somethingSlow();
 *   await tx.update(users).set({ credits: u!.credits - 1 }).where(eq(users.id, 7));
 * });
 * ```
 */
export function drizzle<TSchema extends Record<string, unknown> = Record<string, never>>(
  database: Connection,
  config: SibliteDrizzleConfig<TSchema> = {},
): SibliteDrizzleDatabase<TSchema> {
  const dialect = new SQLiteAsyncDialect({ casing: config.casing });
  const logger = config.logger === true ? new DefaultLogger() : config.logger === false ? undefined : config.logger;
  let relational: any;
  if (config.schema) {
    const tables = extractTablesRelationalConfig(config.schema, createTableRelationsHelpers);
    relational = { fullSchema: config.schema, schema: tables.tables, tableNamesMap: tables.tableNamesMap };
  }
  const pool = new HandlePool(database, config.maxIdleHandles ?? 32);
  const mode = config.transactionMode ?? 'concurrent';
  const session = new SibliteSession(pool, pool.acquire(), dialect, relational, logger ? { logger } : {}, mode);
  const db = new SqliteRemoteDatabase('async', dialect, session as any, relational) as SibliteDrizzleDatabase<TSchema>;
  Object.defineProperty(db, '$pool', { value: pool });
  return db;
}
