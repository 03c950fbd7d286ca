/**
 * Transaction control (`BEGIN`, `COMMIT`, `ROLLBACK`) on the engine connection, prepared once per
 * engine and stepped directly: every concurrent transaction runs two or three of them, and
 * `sqlite3_exec` parsed the text again each time (about twice the cost of the statement itself).
 * @module
 */
import { loadSqlite, type WasmDatabase, type WasmStatement } from '../file/load.js';

/** The control statements kept prepared; any other SQL goes through `sqlite3_exec`. */
const CONTROL_SQL = new Set(['BEGIN', 'COMMIT', 'ROLLBACK', 'BEGIN DEFERRED', 'BEGIN IMMEDIATE', 'BEGIN EXCLUSIVE']);

interface Stepper {
  _sqlite3_step(ptr: number): number;
  _sqlite3_reset(ptr: number): number;
}

/** node-sqlite3-wasm's private parts used here: the statement's pointer and its database's error check. */
interface StatementInternals {
  readonly _ptr: number;
  readonly _db: { _handleError(code: number): void };
}

const SQLITE_DONE = 101;

/** The prepared control statements of one engine connection. */
export class ControlStatements {
  private readonly prepared = new Map<string, WasmStatement>();
  private readonly low = loadSqlite() as unknown as Stepper;

  constructor(private readonly db: WasmDatabase) {}

  /**
   * Runs `sql` when it is a control statement and returns true; false (nothing run) for other
   * SQL. Throws the engine's own error (what `sqlite3_exec` would have thrown) on failure.
   */
  run(sql: string): boolean {
    if (!CONTROL_SQL.has(sql)) return false;
    let stmt = this.prepared.get(sql);
    if (stmt === undefined) this.prepared.set(sql, (stmt = this.db.prepare(sql)));
    const s = stmt as unknown as StatementInternals;
    const rc = this.low._sqlite3_step(s._ptr);
    if (rc === SQLITE_DONE) {
      this.low._sqlite3_reset(s._ptr);
      return true;
    }
    try {
      // The message is the connection's, set by the failed step: read it before the reset.
      s._db._handleError(rc);
    } finally {
      this.low._sqlite3_reset(s._ptr);
    }
    return true;
  }

  /** Finalizes the statements (before the connection closes). */
  clear(): void {
    for (const stmt of this.prepared.values()) {
      try {
        stmt.finalize();
      } catch {
        // freed anyway
      }
    }
    this.prepared.clear();
  }
}
