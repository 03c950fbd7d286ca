/**
 * `@siblite/core`: one SQLite engine (WebAssembly, no native build) shared by sibling handles,
 * each with its own transactions, including serializable, optimistic `BEGIN CONCURRENT`.
 * @packageDocumentation
 */
export { open, type OpenOptions } from './open.js';
export type { LockingMode } from './file/access.js';
export type { JournalMode, SynchronousMode } from './file/database.js';
export { Connection, type TransactionMode, type FunctionOptions, type PragmaOptions, type BackupMetadata } from './connection.js';
export { Statement, type RunResult, type ColumnDefinition } from './statement.js';
export type { TransactionOptions } from './transaction.js';
export { commitAsync, groupCommitStats, type GroupCommitOptions, type GroupCommitStats } from './commit-group.js';
export type { BindParams, Row, SqlValue } from './engine/execute.js';
export { retry, type RetryOptions } from './retry.js';
export { HandlePool, PooledHandle } from './handle-pool.js';
export {
  SqliteError,
  BusyError,
  errorKind,
  isRetryable,
  retryableError,
  ERROR_KINDS,
  type ErrorKind,
  type SqliteErrorOptions,
  type SqliteErrorCode,
} from './errors.js';
