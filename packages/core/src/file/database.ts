/**
 * Opening a database file: options, checks that turn bad paths into precise errors before the
 * engine touches the disk, and the durability settings.
 * @module
 */
import fs from 'node:fs';
import path from 'node:path';
import { fromEngineError, misuseError, sqliteError, type SqliteError } from '../errors.js';
import { createFileAccess, type AccessTimings, type FileAccess, type LockingMode } from './access.js';
import { loadSqlite, type WasmDatabase } from './load.js';
import { allowLocklessReads, lockDirOf } from './lock.js';

/** `PRAGMA synchronous`: when SQLite waits for the disk. */
export type SynchronousMode = 'off' | 'normal' | 'full' | 'extra';
/** `PRAGMA journal_mode` values this engine supports (its VFS has no WAL). */
export type JournalMode = 'delete' | 'truncate' | 'persist' | 'memory' | 'off';

/** The file options of `open()`. */
export interface FileOptions {
  /** The engine only needs to read. A file that is not writable is then opened read-only. */
  readonly?: boolean;
  /** Fail instead of creating the file. */
  fileMustExist?: boolean;
  /** How the file lock is held. Default `'auto'`. */
  locking?: LockingMode;
  /** `PRAGMA synchronous`. Default `'full'`. */
  synchronous?: SynchronousMode;
  /** `PRAGMA journal_mode`. Default `'delete'`. `'wal'` is rejected (kind `misuse`). */
  journalMode?: JournalMode;
  /** Hand-off timings of `locking: 'auto'` (tests, tuning). */
  timings?: Partial<AccessTimings>;
}

/** The settings a file engine runs with, after defaults. */
export interface FileSettings {
  locking: LockingMode;
  synchronous: SynchronousMode;
  journalMode: JournalMode;
}

export const DEFAULT_FILE_SETTINGS: Readonly<FileSettings> = Object.freeze({
  locking: 'auto',
  synchronous: 'full',
  journalMode: 'delete',
});

const LOCKING: readonly LockingMode[] = ['auto', 'shared', 'exclusive'];
const SYNCHRONOUS: readonly SynchronousMode[] = ['off', 'normal', 'full', 'extra'];
const JOURNAL: readonly JournalMode[] = ['delete', 'truncate', 'persist', 'memory', 'off'];

function pick<T extends string>(name: string, value: unknown, allowed: readonly T[], fallback: T): T {
  if (value === undefined) return fallback;
  if (typeof value === 'string' && (allowed as readonly string[]).includes(value.toLowerCase())) {
    return value.toLowerCase() as T;
  }
  throw misuseError(`open(): option ${name} must be one of ${allowed.map((a) => `'${a}'`).join(', ')}; got ${JSON.stringify(value)}`);
}

/**
 * Validates the file options and applies defaults. Throws a `SqliteError` of kind `misuse` for
 * an unknown value, and for `journalMode: 'wal'` (this engine's VFS has no shared memory).
 */
export function fileSettings(options: Omit<FileOptions, 'readonly' | 'fileMustExist' | 'timings'> = {}): FileSettings {
  const jm = options.journalMode as unknown;
  if (typeof jm === 'string' && jm.toLowerCase() === 'wal') throw walRefused("open(): journalMode 'wal'");
  return {
    locking: pick('locking', options.locking, LOCKING, DEFAULT_FILE_SETTINGS.locking),
    synchronous: pick('synchronous', options.synchronous, SYNCHRONOUS, DEFAULT_FILE_SETTINGS.synchronous),
    journalMode: pick('journalMode', jm, JOURNAL, DEFAULT_FILE_SETTINGS.journalMode),
  };
}

/**
 * The error for WAL, asked for by `open()` or by `PRAGMA journal_mode = wal`: the engine would
 * accept the pragma and keep the rollback journal, or (with the file held) lock every other
 * process out, so it is refused with the reason.
 */
export function walRefused(what = 'PRAGMA journal_mode = wal'): SqliteError {
  return misuseError(
    `${what} is not supported: this engine's file system layer has no shared memory, ` +
      "so SQLite cannot run WAL; use 'delete' (default), 'truncate' or 'persist'. Nothing was changed",
  );
}

/**
 * The error for a database file with several names (hard links). SQLite names the journal, and
 * the engine its lock directory, after the path: two names would have two journals, and a crash
 * under one name would leave a hot journal the other name never sees.
 */
export function hardLinked(file: string, links: number): SqliteError {
  return cantOpen(
    `cannot open database "${file}": the file has ${links} hard links (names). Its rollback journal and lock are named ` +
      `after the path, so two names of one file would not see each other's journal; remove the other names ` +
      `(\`find / -xdev -samefile "${file}"\` lists them), or use a symlink instead`,
  );
}

/**
 * The one name of a database file that every process uses (so its lock directory `<name>.lock`
 * and journal `<name>-journal` are the same for all): the absolute path with every symlink
 * resolved, including a symlink whose target does not exist yet (it names its target).
 */
export function canonicalDatabasePath(file: string): string {
  let abs = path.resolve(file);
  for (let hops = 0; hops < 40; hops++) {
    try {
      return fs.realpathSync(abs);
    } catch {
      // Not there (yet): resolve the directory, then follow a dangling symlink at the end.
    }
    let dir: string;
    try {
      dir = fs.realpathSync(path.dirname(abs));
    } catch {
      return abs; // the directory is missing: open() reports that
    }
    const joined = path.join(dir, path.basename(abs));
    let target: string;
    try {
      target = fs.readlinkSync(joined);
    } catch {
      return joined; // not a symlink: a file to be created
    }
    abs = path.resolve(dir, target);
  }
  throw cantOpen(`cannot open database "${file}": too many levels of symbolic links`);
}

const cantOpen = (message: string, cause?: unknown): SqliteError => sqliteError(message, 'SQLITE_CANTOPEN', cause);

function errno(e: unknown): string | undefined {
  return (e as NodeJS.ErrnoException | undefined)?.code;
}

function canAccess(p: string, mode: number): boolean {
  try {
    fs.accessSync(p, mode);
    return true;
  } catch {
    return false;
  }
}

const MAGIC = Buffer.from('SQLite format 3\0', 'latin1');

/**
 * Checks a path before the engine opens it, so that bad paths fail with a precise error and
 * leave nothing on disk. Returns whether the engine must open the file read-only.
 */
function checkPath(file: string, readonly: boolean, mustExist: boolean, needsJournalFile: boolean): { readOnlyOpen: boolean; exists: boolean } {
  const dir = path.dirname(file);
  let dirStat: fs.Stats;
  try {
    dirStat = fs.statSync(dir);
  } catch (e) {
    const code = errno(e);
    if (code === 'ENOENT') throw cantOpen(`cannot open database "${file}": directory "${dir}" does not exist`, e);
    if (code === 'ENOTDIR') throw cantOpen(`cannot open database "${file}": "${dir}" is not a directory (a part of the path is a file)`, e);
    if (code === 'EACCES') throw cantOpen(`cannot open database "${file}": permission denied on its directory`, e);
    throw cantOpen(`cannot open database "${file}": ${(e as Error).message}`, e);
  }
  if (!dirStat.isDirectory()) throw cantOpen(`cannot open database "${file}": "${dir}" is not a directory`);

  const lockPath = `${file}.lock`;
  const lockStat = fs.lstatSync(lockPath, { throwIfNoEntry: false });
  if (lockStat && !lockStat.isDirectory()) {
    throw cantOpen(
      `cannot open database "${file}": "${lockPath}" is not a directory, but the engine locks "${file}" by creating ` +
        `a directory of that name (is "${lockPath}" another database? a database must not be named like another one's ` +
        `lock, <name>.lock); rename or move one of them`,
    );
  }

  let st: fs.Stats | undefined;
  try {
    st = fs.statSync(file);
  } catch (e) {
    const code = errno(e);
    if (code === 'EACCES') throw cantOpen(`cannot open database "${file}": permission denied on its directory`, e);
    if (code !== 'ENOENT') throw cantOpen(`cannot open database "${file}": ${(e as Error).message}`, e);
  }
  if (st === undefined) {
    if (readonly || mustExist) throw cantOpen(`cannot open database "${file}": the file does not exist`);
    if (!canAccess(dir, fs.constants.W_OK | fs.constants.X_OK)) {
      throw cantOpen(`cannot create database "${file}": permission denied: the directory "${dir}" is not writable`);
    }
    return { readOnlyOpen: false, exists: false };
  }
  if (st.isDirectory()) throw cantOpen(`cannot open database "${file}": it is a directory`);
  if (!st.isFile()) throw cantOpen(`cannot open database "${file}": not a regular file`);
  if (st.nlink > 1) throw hardLinked(file, st.nlink);
  if (!canAccess(file, fs.constants.R_OK)) throw cantOpen(`cannot open database "${file}": permission denied (not readable)`);

  if (st.size > 0) {
    const head = Buffer.alloc(16);
    let n = 0;
    let fd: number | undefined;
    try {
      fd = fs.openSync(file, 'r');
      n = fs.readSync(fd, head, 0, 16, 0);
    } catch (e) {
      throw cantOpen(`cannot open database "${file}": ${(e as Error).message}`, e);
    } finally {
      if (fd !== undefined) fs.closeSync(fd);
    }
    if (n < 16 || !head.equals(MAGIC)) {
      throw sqliteError(`file is not a database: "${file}" (it does not start with the SQLite header)`, 'SQLITE_NOTADB');
    }
  }

  const writable = canAccess(file, fs.constants.W_OK);
  const dirWritable = canAccess(dir, fs.constants.W_OK | fs.constants.X_OK);
  if (readonly) return { readOnlyOpen: !writable, exists: true };
  if (!writable) {
    throw sqliteError(
      `cannot open database "${file}" for writing: the file is read-only (open it with readonly: true, or change its permissions)`,
      'SQLITE_READONLY',
    );
  }
  if (needsJournalFile && !dirWritable) {
    throw sqliteError(
      `cannot open database "${file}" for writing: its directory "${dir}" is not writable, so SQLite cannot create ` +
        `its rollback journal there (open it with readonly: true, or change the directory's permissions)`,
      'SQLITE_READONLY',
    );
  }
  return { readOnlyOpen: false, exists: true };
}

/** A file database opened by {@link openDatabaseFile}. */
export interface OpenedFile {
  /** The engine connection. */
  db: WasmDatabase;
  /** The absolute path it was opened with. */
  path: string;
  /** The engine connection is read-only (`readonly` was asked for and the file is not writable). */
  readOnly: boolean;
  settings: FileSettings;
  /** The lock policy; the engine calls it around its use of `db`, and closes it before `db`. */
  access: FileAccess;
}

/**
 * Opens a database file for an engine: validates the options and the path (precise errors, with
 * the path in the message; nothing created on disk when the open fails), opens the engine
 * connection through siblite's loader (crash-proof locks), applies `synchronous` and
 * `journal_mode`, and creates the lock policy.
 *
 * Errors (all `SqliteError`): kind `misuse` for bad options; `io` (`SQLITE_CANTOPEN`) for a
 * missing directory, a directory in place of the file, a file that does not exist with
 * `readonly`/`fileMustExist`, permission denied; `corrupt` (`SQLITE_NOTADB`) for a file that is
 * not a database; `readonly` (`SQLITE_READONLY`) for a read-only file (or a read-only directory,
 * where the journal cannot be created) opened for writing.
 */
export function openDatabaseFile(file: string, options: FileOptions = {}): OpenedFile {
  const settings = fileSettings(options);
  const abs = path.resolve(file);
  const needsJournalFile = settings.journalMode !== 'memory' && settings.journalMode !== 'off';
  const { readOnlyOpen, exists } = checkPath(abs, options.readonly === true, options.fileMustExist === true, needsJournalFile);
  const { Database } = loadSqlite();
  let db: WasmDatabase;
  try {
    db = new Database(abs, { readOnly: readOnlyOpen, fileMustExist: exists || options.fileMustExist === true });
  } catch (e) {
    removeIfCreated(abs, exists);
    throw cantOpen(`cannot open database "${abs}": the engine refused to open it (${(e as Error).message})`, e);
  }
  try {
    // These pragmas need the file lock. When another process holds it now, they run before the
    // first statement instead (which then gets a BusyError, like any statement would).
    const pragmas: string[] = [];
    if (settings.synchronous !== 'full') pragmas.push(`PRAGMA synchronous = ${settings.synchronous.toUpperCase()}`);
    if (settings.journalMode !== 'delete') pragmas.push(`PRAGMA journal_mode = ${settings.journalMode.toUpperCase()}`);
    const setup: string[] = [];
    for (const sql of pragmas) {
      if (setup.length === 0) {
        try {
          db.exec(sql);
          continue;
        } catch (e) {
          if (!/^database is locked/i.test((e as Error).message)) throw fromEngineError(e, abs);
        }
      }
      setup.push(sql);
    }
    if (options.readonly === true) allowLocklessReads(lockDirOf(abs));
    const access = createFileAccess(db, abs, settings.locking, options.timings, setup);
    return { db, path: abs, readOnly: readOnlyOpen, settings, access };
  } catch (e) {
    try {
      db.close();
    } catch {
      // ignore
    }
    removeIfCreated(abs, exists);
    throw e;
  }
}

/** Removes a file the failed open created (empty, so it holds nothing). */
function removeIfCreated(file: string, existed: boolean): void {
  if (existed) return;
  try {
    if (fs.statSync(file).size === 0) fs.unlinkSync(file);
  } catch {
    // ignore
  }
}
