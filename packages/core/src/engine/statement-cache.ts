/**
 * The prepared statements of `run()`, `get()`, `all()` and `iterate()`, shared by every handle
 * of one engine and evicted least-recently-used, so that a new handle (one per request) finds
 * the statements warm.
 *
 * Sharing one engine statement between handles is safe because no statement stays open while
 * other SQL runs: the engine is single-threaded, a cached statement is bound, stepped to
 * completion (or to its first row for `get()`) and reset within one synchronous call, and the one
 * statement a lazy `iterate()` may keep open is settled (its rows read, the statement reset, see
 * cursor.ts) before any other use of an engine: running, preparing (so before an eviction here
 * finalizes anything) or finalizing. Statements of `prepare()` are not cached: each belongs to
 * its `Statement` object.
 * @module
 */
import type { StatementClass } from '../sql/lexer.js';
import type { PreparedSql } from './execute.js';

/** A compiled statement: its class and, unless it is transaction control, its engine statement. */
export interface CompiledSql {
  readonly sql: string;
  readonly cls: StatementClass;
  readonly prepared: PreparedSql | undefined;
}

/** How many distinct statements an engine keeps prepared. */
export const STATEMENT_CACHE_SIZE = 512;

/** A least-recently-used cache of compiled statements, keyed by SQL text. */
export class StatementCache {
  /** In order of use, least recent first (a Map iterates in insertion order). */
  private readonly entries = new Map<string, CompiledSql>();
  private mostRecent: string | undefined;

  constructor(readonly capacity = STATEMENT_CACHE_SIZE) {}

  get size(): number {
    return this.entries.size;
  }

  /** The cached statement for `sql`, now the most recently used; undefined when absent. */
  get(sql: string): CompiledSql | undefined {
    const c = this.entries.get(sql);
    if (c === undefined) return undefined;
    if (c.prepared?.stmt.isFinalized) {
      this.entries.delete(sql);
      return undefined;
    }
    if (this.mostRecent !== sql) {
      this.entries.delete(sql);
      this.entries.set(sql, c);
      this.mostRecent = sql;
    }
    return c;
  }

  /** Adds a statement (as the most recently used), finalizing the least recently used when full. */
  add(c: CompiledSql): void {
    const old = this.entries.get(c.sql);
    if (old !== undefined && old !== c) {
      this.entries.delete(c.sql);
      old.prepared?.finalize();
    }
    while (this.entries.size >= this.capacity) {
      const [sql, lru] = this.entries.entries().next().value as [string, CompiledSql];
      this.entries.delete(sql);
      lru.prepared?.finalize();
    }
    this.entries.set(c.sql, c);
    this.mostRecent = c.sql;
  }

  /** Finalizes every statement (the engine is closing). */
  clear(): void {
    for (const c of this.entries.values()) c.prepared?.finalize();
    this.entries.clear();
    this.mostRecent = undefined;
  }
}
