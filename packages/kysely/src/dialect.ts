/**
 * The dialect: siblite's driver with Kysely's own SQLite adapter, query compiler and introspector.
 * @module
 */
import type { Connection, TransactionMode } from '@siblite/core';
import {
  SqliteAdapter,
  SqliteIntrospector,
  SqliteQueryCompiler,
  type DatabaseConnection,
  type DatabaseIntrospector,
  type Dialect,
  type DialectAdapter,
  type Driver,
  type Kysely,
  type QueryCompiler,
} from 'kysely';
import { SibliteDriver } from './driver.js';

/** Options of {@link SibliteDialect}. */
export interface SibliteDialectConfig {
  /**
   * The database: a handle from `open()` (or a function returning one). Every Kysely connection
   * is a sibling of it (`database.connect()`). `db.destroy()` closes it.
   */
  database: Connection | (() => Connection | Promise<Connection>);
  /**
   * The mode of `db.transaction()` and `db.startTransaction()`. Default `concurrent`
   * (`BEGIN CONCURRENT`: optimistic, serializable, never blocks other connections). DDL is refused
   * inside it: use `immediate` for a Kysely instance that changes the schema in transactions.
   */
  transactionMode?: TransactionMode;
  /** How many idle sibling handles to keep for reuse (each keeps its statement cache). Default 32. */
  maxIdleHandles?: number;
  /** Called once for every new Kysely connection (sibling handle), e.g. to run pragmas. */
  onCreateConnection?: (connection: DatabaseConnection) => Promise<void>;
}

/**
 * A Kysely dialect for siblite.
 *
 * @example
 * ```ts
 * import { Kysely } from 'kysely';
 * import { open } from '@siblite/core';
 * import { SibliteDialect, retryTransaction } from '@siblite/kysely';
 *
 * const db = new Kysely<DB>({ dialect: new SibliteDialect({ database: open('app.db') }) });
 * await retryTransaction(db, async (trx) => {
 *   const user = await trx.selectFrom('users').select('credits').where('id', '=', 7).executeTakeFirstOrThrow();
 *   await somethingSlow();                       // other requests keep running
 *   await trx.updateTable('users').set({ credits: user.credits - 1 }).where('id', '=', 7).execute();
 * });
 * ```
 */
export class SibliteDialect implements Dialect {
  constructor(private readonly config: SibliteDialectConfig) {}

  /** The driver: one sibling handle per Kysely connection. */
  createDriver(): Driver {
    return new SibliteDriver(this.config);
  }

  /** Kysely's SQLite query compiler. */
  createQueryCompiler(): QueryCompiler {
    return new SqliteQueryCompiler();
  }

  /** Kysely's SQLite adapter. */
  createAdapter(): DialectAdapter {
    return new SqliteAdapter();
  }

  /** Kysely's SQLite introspector (`db.introspection`). */
  createIntrospector(db: Kysely<any>): DatabaseIntrospector {
    return new SqliteIntrospector(db);
  }
}
