import { createRequire } from 'node:module';

/** The parts of node-sqlite3-wasm that siblite uses. */
export interface WasmStatement {
  run(values?: unknown): { changes: number; lastInsertRowid: number | bigint };
  iterate(values?: unknown): IterableIterator<Record<string, unknown>>;
  all(values?: unknown): Record<string, unknown>[];
  get(values?: unknown): Record<string, unknown> | null;
  finalize(): void;
  readonly isFinalized: boolean;
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

let loaded: SqliteModule | undefined;

/** Loads node-sqlite3-wasm once per process (one WebAssembly heap for all engines). */
export function loadSqlite(): SqliteModule {
  loaded ??= createRequire(import.meta.url)('node-sqlite3-wasm') as SqliteModule;
  return loaded;
}
