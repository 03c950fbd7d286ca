/**
 * Transaction control (`BEGIN`, `COMMIT`, `ROLLBACK`) on the engine connection, prepared once per
 * engine and run with {@link PreparedSql.runControl}: every concurrent transaction runs two or
 * three of them, and `sqlite3_exec` parsed the text again each time (about twice the cost of
 * the statement itself).
 * @module
 */
import type { PreparedSql } from './execute.js';

/** The control statements kept prepared; any other SQL goes through `sqlite3_exec`. */
const CONTROL_SQL = new Set(['BEGIN', 'COMMIT', 'ROLLBACK', 'BEGIN DEFERRED', 'BEGIN IMMEDIATE', 'BEGIN EXCLUSIVE']);

/** The prepared control statements of one engine connection. */
export class ControlStatements {
  private readonly prepared = new Map<string, PreparedSql>();

  constructor(private readonly prepare: (sql: string) => PreparedSql) {}

  /**
   * Runs `sql` when it is a control statement and returns true; false (nothing run) for other
   * SQL. Throws what `sqlite3_exec` would have thrown on failure.
   */
  run(sql: string): boolean {
    if (!CONTROL_SQL.has(sql)) return false;
    let stmt = this.prepared.get(sql);
    if (stmt === undefined) this.prepared.set(sql, (stmt = this.prepare(sql)));
    stmt.runControl();
    return true;
  }

  /** Finalizes the statements (before the connection closes). */
  clear(): void {
    for (const stmt of this.prepared.values()) stmt.finalize();
    this.prepared.clear();
  }
}
