/**
 * `open()`: the process-wide registry that gives every open of one file the same engine.
 * @module
 */
import { realpathSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { Connection } from './connection.js';
import { Engine } from './engine/engine.js';
import { misuseError } from './errors.js';
import type { LockingMode } from './file/access.js';
import { fileSettings, type JournalMode, type SynchronousMode } from './file/database.js';

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
  if (options === null || typeof options !== 'object') throw misuseError('open(path, options): options must be an object');
  const readonly = options.readonly === true;
  const settings = fileSettings(options); // validates (rejects journalMode 'wal')
  if (path === ':memory:' || path === '') {
    const engine = new Engine(':memory:', false, {}, () => {});
    return new Connection(engine, readonly);
  }
  const key = canonicalPath(path);
  let engine = engines.get(key);
  if (!engine || !engine.isOpen) {
    engine = new Engine(key, true, { ...settings, readonly, fileMustExist: options.fileMustExist === true || readonly }, (e) => {
      if (engines.get(key) === e) engines.delete(key);
    });
    engines.set(key, engine);
  } else {
    for (const k of ['locking', 'synchronous', 'journalMode'] as const) {
      if (options[k] !== undefined && engine.fileSettings && settings[k] !== engine.fileSettings[k]) {
        throw misuseError(
          `open(${JSON.stringify(path)}): ${k} '${settings[k]}' differs from '${engine.fileSettings[k]}', ` +
            'which the file was already opened with in this process (one engine per file)',
        );
      }
    }
  }
  return new Connection(engine, readonly);
}

function canonicalPath(path: string): string {
  const abs = resolve(path);
  try {
    return realpathSync(abs);
  } catch {
    // Not created yet: resolve the directory, so that every process names the file (and its
    // lock directory, `<path>.lock`) the same way, whatever symlinks led to it.
    try {
      return join(realpathSync(dirname(abs)), basename(abs));
    } catch {
      return abs;
    }
  }
}
