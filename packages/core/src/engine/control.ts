/**
 * Transaction control (`BEGIN`, `COMMIT`, `ROLLBACK`) on the engine connection, prepared once per
 * engine and run with {@link PreparedSql.runControl}: every concurrent transaction runs two or
 * three of them, and `sqlite3_exec` parsed the text again each time (about twice the cost of
 * the statement itself).
 * @module
 */
import type { PreparedSql } from './execute.js';

/** What a control statement does to the real transaction. */
export type ControlKind = 'begin' | 'commit' | 'rollback';

/** The control statements kept prepared; any other SQL goes through `sqlite3_exec`. */
const CONTROL_SQL = new Map<string, ControlKind>([
  ['BEGIN', 'begin'],
  ['BEGIN DEFERRED', 'begin'],
  ['BEGIN IMMEDIATE', 'begin'],
  ['BEGIN EXCLUSIVE', 'begin'],
  ['COMMIT', 'commit'],
  ['ROLLBACK', 'rollback'],
]);

/** The prepared control statements of one engine connection. */
export class ControlStatements {
  private readonly prepared = new Map<string, PreparedSql>();

  constructor(private readonly prepare: (sql: string) => PreparedSql) {}

  /** What `sql` does when it is a control statement kept prepared, else `undefined`. */
  kindOf(sql: string): ControlKind | undefined {
    return CONTROL_SQL.get(sql);
  }

  /**
   * Runs `sql`, a control statement ({@link ControlStatements.kindOf} knows it). Throws what
   * `sqlite3_exec` would have thrown on failure.
   */
  run(sql: string): void {
    let stmt = this.prepared.get(sql);
    if (stmt === undefined) this.prepared.set(sql, (stmt = this.prepare(sql)));
    stmt.runControl();
  }

  /** Finalizes the statements (before the connection closes). */
  clear(): void {
    for (const stmt of this.prepared.values()) stmt.finalize();
    this.prepared.clear();
  }
}
