/**
 * The driver: a pool of sibling handles, one per Kysely connection, and transactions in the
 * dialect's mode.
 * @module
 */
import type { BindParams, Connection, Statement, TransactionMode } from '@siblite/core';
import type { CompiledQuery, DatabaseConnection, Driver, QueryResult, TransactionSettings } from 'kysely';
import type { SibliteDialectConfig } from './dialect.js';

const STATEMENTS_PER_HANDLE = 128;
const MODES: ReadonlySet<string> = new Set(['concurrent', 'immediate', 'exclusive', 'deferred']);

/** One Kysely connection: a sibling handle and its prepared statements. */
export class SibliteKyselyConnection implements DatabaseConnection {
  private readonly statements = new Map<string, Statement>();

  /** @internal */
  constructor(
    /** The sibling handle this connection runs on. */
    readonly handle: Connection,
  ) {}

  /** Runs one compiled query: rows for queries and `RETURNING`, counts for other writes. */
  async executeQuery<R>(compiledQuery: CompiledQuery): Promise<QueryResult<R>> {
    const stmt = this.statement(compiledQuery.sql);
    const params = compiledQuery.parameters as unknown as BindParams;
    if (stmt.reader) return { rows: stmt.all(params) as R[] };
    const { changes, lastInsertRowid } = stmt.run(params);
    return { numAffectedRows: BigInt(changes), insertId: BigInt(lastInsertRowid), rows: [] };
  }

  /** Streams the rows of a query (or of a write with `RETURNING`) in chunks of `chunkSize`. */
  async *streamQuery<R>(compiledQuery: CompiledQuery, chunkSize = 100): AsyncIterableIterator<QueryResult<R>> {
    const stmt = this.statement(compiledQuery.sql);
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

  /** Finalizes the cached statements. @internal */
  clearStatements(): void {
    for (const s of this.statements.values()) if (!s.isFinalized) s.finalize();
    this.statements.clear();
  }

  private statement(sql: string): Statement {
    let stmt = this.statements.get(sql);
    if (stmt && !stmt.isFinalized) return stmt;
    stmt = this.handle.prepare(sql);
    if (this.statements.size >= STATEMENTS_PER_HANDLE) {
      const [oldest, old] = this.statements.entries().next().value as [string, Statement];
      if (!old.isFinalized) old.finalize();
      this.statements.delete(oldest);
    }
    this.statements.set(sql, stmt);
    return stmt;
  }
}

/** The Kysely driver of {@link SibliteDialect}: no mutex, a sibling handle per connection. */
export class SibliteDriver implements Driver {
  private root: Connection | undefined;
  private readonly idle: SibliteKyselyConnection[] = [];
  private readonly mode: TransactionMode;
  private readonly maxIdle: number;

  constructor(private readonly config: SibliteDialectConfig) {
    this.mode = config.transactionMode ?? 'concurrent';
    if (!MODES.has(this.mode)) throw new TypeError(`siblite: unknown transactionMode "${String(this.mode)}"`);
    this.maxIdle = config.maxIdleHandles ?? 32;
  }

  /** Opens (or takes) the database. */
  async init(): Promise<void> {
    const db = this.config.database;
    this.root = typeof db === 'function' ? await db() : db;
  }

  /** A sibling handle of its own: from the idle pool, or new. */
  async acquireConnection(): Promise<DatabaseConnection> {
    const pooled = this.idle.pop();
    if (pooled) return pooled;
    if (!this.root) throw new Error('siblite: the Kysely driver is not initialized or was destroyed');
    const conn = new SibliteKyselyConnection(this.root.connect());
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
    const conn = connection as SibliteKyselyConnection;
    if (!conn.handle.isOpen) return;
    if (conn.handle.inTransaction) conn.handle.exec('ROLLBACK');
    if (this.root && this.idle.length < this.maxIdle) this.idle.push(conn);
    else close(conn);
  }

  /** Closes the pooled handles and the database. */
  async destroy(): Promise<void> {
    for (const conn of this.idle.splice(0)) close(conn);
    this.root?.close();
    this.root = undefined;
  }
}

function handleOf(connection: DatabaseConnection): Connection {
  return (connection as SibliteKyselyConnection).handle;
}

function close(conn: SibliteKyselyConnection): void {
  conn.clearStatements();
  conn.handle.close();
}

function quote(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}
