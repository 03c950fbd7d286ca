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

/** A cached statement and when it was last used (a tick of its cache's clock). */
interface Slot {
  readonly compiled: CompiledSql;
  used: number;
}

/**
 * A least-recently-used cache of compiled statements, keyed by SQL text. A hit only stamps the
 * entry with the cache's clock; the least recently used entry is searched for when a statement
 * must be evicted (a miss, which prepares a statement anyway). Moving the entry to the end of an
 * insertion-ordered Map on every hit cost microseconds per statement with a few statements in
 * rotation (V8 rehashes the Map's table as deleted entries pile up).
 */
export class StatementCache {
  private readonly entries = new Map<string, Slot>();
  private clock = 0;

  constructor(readonly capacity = STATEMENT_CACHE_SIZE) {}

  get size(): number {
    return this.entries.size;
  }

  /** The cached statement for `sql`, now the most recently used; undefined when absent. */
  get(sql: string): CompiledSql | undefined {
    const slot = this.entries.get(sql);
    if (slot === undefined) return undefined;
    if (slot.compiled.prepared?.stmt.isFinalized) {
      this.entries.delete(sql);
      return undefined;
    }
    slot.used = ++this.clock;
    return slot.compiled;
  }

  /** Adds a statement (as the most recently used), finalizing the least recently used when full. */
  add(c: CompiledSql): void {
    const old = this.entries.get(c.sql);
    if (old !== undefined && old.compiled !== c) {
      this.entries.delete(c.sql);
      old.compiled.prepared?.finalize();
    }
    while (this.entries.size >= this.capacity) this.evictLeastRecent();
    this.entries.set(c.sql, { compiled: c, used: ++this.clock });
  }

  /** Finalizes and drops the least recently used statement. */
  private evictLeastRecent(): void {
    let lru: Slot | undefined;
    for (const slot of this.entries.values()) if (lru === undefined || slot.used < lru.used) lru = slot;
    if (lru === undefined) return;
    this.entries.delete(lru.compiled.sql);
    lru.compiled.prepared?.finalize();
  }

  /** Finalizes every statement (the engine is closing). */
  clear(): void {
    for (const slot of this.entries.values()) slot.compiled.prepared?.finalize();
    this.entries.clear();
  }
}
