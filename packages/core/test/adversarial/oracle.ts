/**
 * The oracle of the adversarial tests: plain SQLite (node-sqlite3-wasm, one connection, no
 * siblite in between), which is what a serial execution shows.
 */
import { createRequire } from 'node:module';

interface RawDb {
  exec(sql: string): void;
  all(sql: string, params?: unknown): Record<string, unknown>[];
  run(sql: string, params?: unknown): { changes: number; lastInsertRowid: number | bigint };
  close(): void;
}

const require = createRequire(import.meta.url);
const { Database } = require('node-sqlite3-wasm') as { Database: new (path: string) => RawDb };

/** A fresh in-memory database of plain SQLite. */
export function rawDatabase(): RawDb {
  return new Database(':memory:');
}
