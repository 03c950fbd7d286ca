/**
 * `open()`: the process-wide registry that gives every open of one file the same engine.
 * @module
 */
import { Connection } from './connection.js';
import { Engine } from './engine/engine.js';
import { isWellFormed } from './engine/direct.js';
import { misuseError } from './errors.js';
import type { LockingMode } from './file/access.js';
import { busyTimeoutOption } from './busy-timeout.js';
import { configureGroupCommit, groupCommitOption, groupCommitSettings, sameGroupCommit, type GroupCommitOptions } from './commit-group.js';
import { canonicalDatabasePath, fileSettings, type JournalMode, type SynchronousMode } from './file/database.js';

/** Options of {@link open}. */
export interface OpenOptions {
  /** Refuse writes through this handle and its siblings (`SQLITE_READONLY`); never create the file. Default false. */
  readonly?: boolean;
  /** Fail (kind `io`, `SQLITE_CANTOPEN`) instead of creating the file when it does not exist. Default false. */
  fileMustExist?: boolean;
  /**
   * File databases: how the file lock is held (see docs/files-and-processes.md). `'auto'`
   * (default): held while this process uses the file, handed back when it is idle or another
   * process waits. `'shared'`: taken and dropped by every statement. `'exclusive'`: held until
   * the engine closes.
   */
  locking?: LockingMode;
  /** File databases: `PRAGMA synchronous`. Default `'full'`. */
  synchronous?: SynchronousMode;
  /** File databases: `PRAGMA journal_mode`. Default `'delete'`; `'wal'` is rejected (kind `misuse`). */
  journalMode?: JournalMode;
  /**
   * File databases: how long, in ms, a statement waits for the file while another process (or
   * worker thread) holds it, before it throws `BusyError`. Default 5000, like better-sqlite3's
   * `timeout`; 0 throws at once. Statements wait synchronously (the event loop is blocked while
   * they wait); `transaction()` waits for BEGIN and COMMIT without blocking. Siblings made by
   * `connect()` inherit it; `PRAGMA busy_timeout = N` changes it per handle.
   */
  busyTimeout?: number;
  /** Alias of {@link OpenOptions.busyTimeout} (better-sqlite3's name). */
  timeout?: number;
  /**
   * File databases: group commit (see docs/concurrency.md). The COMMITs of concurrent
   * `transaction()` calls that become ready in the same turn of the event loop (or within
   * `window` ms) are made durable together, with one real COMMIT, each transaction still
   * validated on its own and failing alone. Default `true` (window 0: the same turn; cap 64);
   * `false` turns it off; `{ window, cap }` tunes it. Synchronous `exec('COMMIT')` and
   * pessimistic transactions always commit alone. Ignored for in-memory databases (they have no
   * fsync to share). Set by the first `open()` of a file in a process.
   */
  groupCommit?: boolean | GroupCommitOptions;
}

const engines = new Map<string, Engine>();

/**
 * Opens a database and returns a handle onto it. Every `open()` of the same file in this
 * process (after resolving the path and symlinks) shares one engine; `':memory:'` (or `''`)
 * always makes a new private in-memory database. Close every handle you open or connect; the
 * engine closes with its last handle.
 *
 * @example
 * ```ts
 * import { open } from '@siblite/core';
 * const db = open('app.db');
 * db.exec('CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL)');
 * const worker = db.connect();
 * worker.run('INSERT INTO notes (body) VALUES (?)', ['hello']);
 * db.get('SELECT body FROM notes'); // { body: 'hello' }
 * ```
 * @throws SqliteError of kind `io` (`SQLITE_CANTOPEN`) when the file cannot be opened, `corrupt`
 *   (`SQLITE_NOTADB`) when it is not a database, `misuse` for bad options.
 */
export function open(path: string, options: OpenOptions = {}): Connection {
  if (typeof path !== 'string') throw misuseError('open(path): path must be a string');
  // The engine wrapper and Node's fs encode a lone surrogate differently (one cuts the path, the
  // other writes U+FFFD): the database and its lock files would not be the same file's.
  if (!isWellFormed(path)) throw misuseError('open(path): the path has a lone UTF-16 surrogate, which has no UTF-8 file name');
  if (options === null || typeof options !== 'object') throw misuseError('open(path, options): options must be an object');
  const readonly = options.readonly === true;
  const settings = fileSettings(options); // validates (rejects journalMode 'wal')
  const busyTimeout = busyTimeoutOption(options);
  const grouping = groupCommitOption(options.groupCommit);
  if (path === ':memory:' || path === '') {
    const engine = new Engine(':memory:', false, {}, () => {});
    return withBusyTimeout(new Connection(engine, readonly), busyTimeout);
  }
  const key = canonicalDatabasePath(path);
  let engine = engines.get(key);
  if (!engine || !engine.isOpen) {
    engine = new Engine(key, true, { ...settings, readonly, fileMustExist: options.fileMustExist === true || readonly }, (e) => {
      if (engines.get(key) === e) engines.delete(key);
    });
    engines.set(key, engine);
    configureGroupCommit(engine, grouping);
  } else {
    if (options.groupCommit !== undefined && !sameGroupCommit(grouping, groupCommitSettings(engine))) {
      throw misuseError(
        `open(${JSON.stringify(path)}): groupCommit differs from the setting the file was already opened with in this process (one engine per file)`,
      );
    }
    for (const k of ['locking', 'synchronous', 'journalMode'] as const) {
      if (options[k] !== undefined && engine.fileSettings && settings[k] !== engine.fileSettings[k]) {
        throw misuseError(
          `open(${JSON.stringify(path)}): ${k} '${settings[k]}' differs from '${engine.fileSettings[k]}', ` +
            'which the file was already opened with in this process (one engine per file)',
        );
      }
    }
  }
  return withBusyTimeout(new Connection(engine, readonly), busyTimeout);
}

function withBusyTimeout(conn: Connection, ms: number): Connection {
  conn.session.busyTimeout = ms;
  return conn;
}
