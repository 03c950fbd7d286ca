/**
 * Loads node-sqlite3-wasm once per process, with its file lock routed through siblite's lock
 * manager (`lock.ts`).
 *
 * The package is a single CommonJS file that reaches the file system through a module-local
 * `var fs = require("node:fs")`. Its source is evaluated here, like Node's own CommonJS loader
 * does (same `module`, `exports`, `__filename`, `__dirname`, so it finds its `.wasm` next to
 * itself), except that `require("node:fs")` returns a thin object whose prototype is the real
 * `fs` and which overrides `mkdirSync`, `rmdirSync` and `accessSync` for paths ending in `.lock`,
 * and the mode of files the engine creates (`openSync`). Everything else (reads, writes, fsync, the wasm binary) goes straight to the real `fs`.
 *
 * The WebAssembly heap belongs to one load: {@link loadSqlite} is memoized, and every siblite
 * engine of the process uses the same module.
 * @module
 */
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import vm from 'node:vm';
import { locateEngine } from '../locate-engine.js';
import { acquire, checkReserved, release } from './lock.js';

/** The parts of node-sqlite3-wasm that siblite uses. */
export interface WasmStatement {
  run(values?: unknown): { changes: number; lastInsertRowid: number | bigint };
  iterate(values?: unknown): IterableIterator<Record<string, unknown>>;
  all(values?: unknown): Record<string, unknown>[];
  get(values?: unknown): Record<string, unknown> | null;
  finalize(): void;
  readonly isFinalized: boolean;
}

/**
 * Finalizes `stmt` if it is not already. `sqlite3_finalize` always frees the statement; the error
 * it may report only repeats the last evaluation's (a `database is locked` from a step that
 * another process refused, say), which the caller has already seen or does not care about, so
 * it is dropped: cleanup (closing a handle or an engine) must never fail for it.
 */
export function finalizeStatement(stmt: WasmStatement): void {
  if (stmt.isFinalized) return;
  try {
    stmt.finalize();
  } catch {
    // freed anyway (the wrapper clears its pointer in a finally)
  }
}

/** One SQLite connection of node-sqlite3-wasm. */
export interface WasmDatabase {
  exec(sql: string): void;
  prepare(sql: string): WasmStatement;
  close(): void;
  readonly isOpen: boolean;
  readonly inTransaction: boolean;
  function(name: string, fn: (...args: any[]) => unknown, options?: { deterministic?: boolean }): WasmDatabase;
}

/** The module: its Database constructor and error class. */
export interface SqliteModule {
  Database: new (path: string, options?: { fileMustExist?: boolean; readOnly?: boolean }) => WasmDatabase;
  SQLite3Error: new (message: string) => Error;
}

/** The version this loader was written and checked against. */
export const ENGINE_PACKAGE_VERSION = '0.8.60';

let loaded: SqliteModule | undefined;

function isLockDir(p: unknown): p is string {
  return typeof p === 'string' && p.endsWith('.lock');
}

/**
 * The `fs` the engine sees: the real one, with the lock directory operations intercepted.
 * The engine calls `mkdirSync(dir)` / `rmdirSync(dir)` / `accessSync(dir, F_OK)` for locks only;
 * calls with other arguments pass through untouched.
 */
function lockingFs(): typeof fs {
  const wrapped = Object.create(fs) as typeof fs;
  const real = { mkdirSync: fs.mkdirSync, rmdirSync: fs.rmdirSync, accessSync: fs.accessSync, openSync: fs.openSync };
  Object.assign(wrapped, {
    // The engine creates files with a fixed mode (0600 whatever the umask). Like SQLite's unix
    // VFS: a database gets 0666 less the umask, a journal the mode of its database.
    openSync(p: fs.PathLike, flags?: fs.OpenMode, mode?: fs.Mode | null) {
      if (typeof p !== 'string' || typeof mode !== 'number') return real.openSync(p, flags as fs.OpenMode, mode);
      const journalOf = p.endsWith('-journal') ? p.slice(0, -'-journal'.length) : undefined;
      const dbMode = journalOf === undefined ? undefined : fs.statSync(journalOf, { throwIfNoEntry: false })?.mode;
      return real.openSync(p, flags as fs.OpenMode, dbMode === undefined ? 0o666 : dbMode & 0o777);
    },
    mkdirSync(p: fs.PathLike, options?: fs.MakeDirectoryOptions | fs.Mode | null) {
      if (isLockDir(p) && options === undefined) return acquire(p);
      return real.mkdirSync(p, options as fs.MakeDirectoryOptions);
    },
    rmdirSync(p: fs.PathLike, options?: fs.RmDirOptions) {
      if (isLockDir(p) && options === undefined) return release(p);
      return real.rmdirSync(p, options);
    },
    accessSync(p: fs.PathLike, mode?: number) {
      if (isLockDir(p)) return checkReserved(p, mode);
      return real.accessSync(p, mode);
    },
  });
  return wrapped;
}

/**
 * Loads node-sqlite3-wasm once per process (one WebAssembly heap for all engines), with
 * siblite's lock manager in its VFS.
 */
export function loadSqlite(): SqliteModule {
  if (loaded) return loaded;
  const filename = locateEngine();
  const source = fs.readFileSync(filename, 'utf8');
  const pkgRequire = createRequire(filename);
  const fsForEngine = lockingFs();
  const engineRequire = (id: string): unknown => (id === 'node:fs' || id === 'fs' ? fsForEngine : pkgRequire(id));
  const mod: { exports: Record<string, unknown> } = { exports: {} };
  // Lines appended: the current heap view (replaced when memory grows), so result digests can
  // hash text and blobs in place (engine/row-digest.ts), and the wrapper's own string helpers, so
  // statements that bind and read through the `_sqlite3_*` exports directly (engine/direct.ts)
  // convert text exactly as the wrapper does.
  const exposed =
    `${source}\n;module.exports.__sibliteHeap = () => HEAPU8;` +
    '\nmodule.exports.__sibliteText = { UTF8ToString, stringToUTF8, lengthBytesUTF8 };';
  const fn = vm.compileFunction(exposed, ['exports', 'require', 'module', '__filename', '__dirname'], { filename });
  fn.call(mod.exports, mod.exports, engineRequire, mod, filename, path.dirname(filename));
  const m = mod.exports as unknown as Partial<SqliteModule>;
  if (typeof m.Database !== 'function' || typeof m.SQLite3Error !== 'function') {
    throw new Error(
      `siblite: node-sqlite3-wasm at ${filename} did not export Database and SQLite3Error ` +
        `(this loader expects version ${ENGINE_PACKAGE_VERSION})`,
    );
  }
  loaded = m as SqliteModule;
  return loaded;
}
