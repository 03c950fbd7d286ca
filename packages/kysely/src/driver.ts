/**
 * The driver: a pool of sibling handles, one per Kysely connection, and transactions in the
 * dialect's mode.
 * @module
 */
import { HandlePool, type BindParams, type Connection, type PooledHandle, type TransactionMode } from '@siblite/core';
import type { CompiledQuery, DatabaseConnection, Driver, QueryResult, TransactionSettings } from 'kysely';
import type { SibliteDialectConfig } from './dialect.js';

const MODES: ReadonlySet<string> = new Set(['concurrent', 'immediate', 'exclusive', 'deferred']);

/** One Kysely connection: a pooled sibling handle and its prepared statements. */
export class SibliteKyselyConnection implements DatabaseConnection {
  /** @internal */
  constructor(
    /** The pooled sibling handle this connection runs on. */
    readonly pooled: PooledHandle,
  ) {}

  /** The sibling handle this connection runs on. */
  get handle(): Connection {
    return this.pooled.handle;
  }

  /** Runs one compiled query: rows for queries and `RETURNING`, counts for other writes. */
  async executeQuery<R>(compiledQuery: CompiledQuery): Promise<QueryResult<R>> {
    const stmt = this.pooled.statement(compiledQuery.sql);
    const params = compiledQuery.parameters as unknown as BindParams;
    if (stmt.reader) return { rows: stmt.all(params) as R[] };
    const { changes, lastInsertRowid } = stmt.run(params);
    return { numAffectedRows: BigInt(changes), insertId: BigInt(lastInsertRowid), rows: [] };
  }

  /** Streams the rows of a query (or of a write with `RETURNING`) in chunks of `chunkSize`. */
  async *streamQuery<R>(compiledQuery: CompiledQuery, chunkSize = 100): AsyncIterableIterator<QueryResult<R>> {
    const stmt = this.pooled.statement(compiledQuery.sql);
    if (!stmt.reader) throw new TypeError('siblite: only statements that return rows can be streamed');
    let chunk: R[] = [];
    for (const row of stmt.iterate(compiledQuery.parameters as unknown as BindParams)) {
      chunk.push(row as R);
      if (chunk.length >= Math.max(1, chunkSize)) {
        yield { rows: chunk };
        chunk = [];
      }
    }
    if (chunk.length > 0) yield { rows: chunk };
  }
}

/** The Kysely driver of {@link SibliteDialect}: no mutex, a sibling handle per connection. */
export class SibliteDriver implements Driver {
  private pool: HandlePool | undefined;
  private readonly mode: TransactionMode;

  constructor(private readonly config: SibliteDialectConfig) {
    this.mode = config.transactionMode ?? 'concurrent';
    if (!MODES.has(this.mode)) throw new TypeError(`siblite: unknown transactionMode "${String(this.mode)}"`);
  }

  /** Opens (or takes) the database. */
  async init(): Promise<void> {
    const db = this.config.database;
    this.pool = new HandlePool(typeof db === 'function' ? await db() : db, this.config.maxIdleHandles ?? 32);
  }

  /** A sibling handle of its own: from the idle pool, or new. */
  async acquireConnection(): Promise<DatabaseConnection> {
    if (!this.pool) throw new Error('siblite: the Kysely driver is not initialized or was destroyed');
    const conn = new SibliteKyselyConnection(this.pool.acquire());
    await this.config.onCreateConnection?.(conn);
    return conn;
  }

  /** `BEGIN <mode>` on the connection's own handle (`BEGIN CONCURRENT` by default). */
  async beginTransaction(connection: DatabaseConnection, _settings: TransactionSettings): Promise<void> {
    handleOf(connection).exec(`BEGIN ${this.mode.toUpperCase()}`);
  }

  /** `COMMIT`: a conflict throws `BusyError` (`SQLITE_BUSY_SNAPSHOT`), already rolled back. */
  async commitTransaction(connection: DatabaseConnection): Promise<void> {
    handleOf(connection).exec('COMMIT');
  }

  /** `ROLLBACK` (a no-op after a conflict ended the transaction). */
  async rollbackTransaction(connection: DatabaseConnection): Promise<void> {
    handleOf(connection).exec('ROLLBACK');
  }

  /** `SAVEPOINT name`. */
  async savepoint(connection: DatabaseConnection, name: string): Promise<void> {
    handleOf(connection).exec(`SAVEPOINT ${quote(name)}`);
  }

  /** `ROLLBACK TO name`. */
  async rollbackToSavepoint(connection: DatabaseConnection, name: string): Promise<void> {
    handleOf(connection).exec(`ROLLBACK TO ${quote(name)}`);
  }

  /** `RELEASE name`. */
  async releaseSavepoint(connection: DatabaseConnection, name: string): Promise<void> {
    handleOf(connection).exec(`RELEASE ${quote(name)}`);
  }

  /** Returns the handle to the pool; a transaction left open on it is rolled back first. */
  async releaseConnection(connection: DatabaseConnection): Promise<void> {
    const pooled = (connection as SibliteKyselyConnection).pooled;
    if (this.pool) this.pool.release(pooled);
    else if (pooled.handle.isOpen) pooled.close();
  }

  /** Closes the pooled handles and the database. */
  async destroy(): Promise<void> {
    this.pool?.close();
    this.pool?.root.close();
    this.pool = undefined;
  }
}

function handleOf(connection: DatabaseConnection): Connection {
  return (connection as SibliteKyselyConnection).handle;
}

function quote(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}
