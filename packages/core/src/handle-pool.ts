/**
 * A pool of sibling handles with their prepared statements, for adapters (Kysely, Drizzle) that
 * give every connection or transaction a handle of its own.
 * @module
 */
import type { Connection } from './connection.js';
import { misuseError } from './errors.js';
import type { Statement } from './statement.js';

const STATEMENTS_PER_HANDLE = 128;

/** A sibling handle from a {@link HandlePool}, with a cache of its prepared statements. */
export class PooledHandle {
  private readonly statements = new Map<string, Statement>();

  /** @internal */
  constructor(
    /** The sibling handle. */
    readonly handle: Connection,
  ) {}

  /** A prepared statement for `sql` on this handle, cached (the least recently prepared of 128 is finalized). */
  statement(sql: string): Statement {
    let stmt = this.statements.get(sql);
    if (stmt && !stmt.isFinalized) return stmt;
    stmt = this.handle.prepare(sql);
    if (this.statements.size >= STATEMENTS_PER_HANDLE) {
      const [oldest, old] = this.statements.entries().next().value as [string, Statement];
      if (!old.isFinalized) old.finalize();
      this.statements.delete(oldest);
    }
    this.statements.set(sql, stmt);
    return stmt;
  }

  /** Finalizes the cached statements and closes the handle. */
  close(): void {
    for (const s of this.statements.values()) if (!s.isFinalized) s.finalize();
    this.statements.clear();
    this.handle.close();
  }
}

/**
 * Sibling handles of one database, reused: {@link HandlePool.acquire} hands out an idle one (or
 * connects a new one), {@link HandlePool.release} takes it back. Handles never block each other,
 * so there is no limit on how many are out at once; only idle ones are capped.
 */
export class HandlePool {
  private readonly idle: PooledHandle[] = [];
  /** The handles handed out and not yet released: a second release must not make one idle twice. */
  private readonly out = new Set<PooledHandle>();
  private closed = false;

  /**
   * @param root - the database's handle; pooled handles are `root.connect()` siblings.
   * @param maxIdle - how many idle handles to keep (each keeps its statement cache). Default 32.
   */
  constructor(
    readonly root: Connection,
    private readonly maxIdle = 32,
  ) {
    // Idle siblings would keep the engine (and a file's lock) alive after the root closed.
    root.onClose(() => this.close());
  }

  /**
   * An idle handle, or a new sibling.
   * @throws SqliteError of kind `closed` when the root handle or the pool is closed.
   */
  acquire(): PooledHandle {
    if (this.closed) throw new Error('siblite: the handle pool is closed');
    const pooled = this.idle.pop() ?? new PooledHandle(this.root.connect());
    this.out.add(pooled);
    return pooled;
  }

  /**
   * Takes a handle back; a transaction left open on it is rolled back first.
   * @throws SqliteError of kind `misuse` when the handle is not out of this open pool (released
   * twice, or acquired elsewhere), or when its transaction's `commitAsync()` has not settled
   * yet: nothing changes.
   */
  release(pooled: PooledHandle): void {
    // Its commit is under way in a commit group: rolling back now is refused (see commitAsync).
    if (pooled.handle.isOpen && pooled.handle.session.commitPending) {
      throw misuseError('This handle is committing its transaction (commitAsync() has not settled): await the commit before releasing it');
    }
    // After close() every handle is closed and none is out: a late release changes nothing.
    if (!this.out.delete(pooled) && !this.closed) {
      throw misuseError('This handle is not out of the pool (released twice, or never acquired from it)');
    }
    if (!pooled.handle.isOpen) return;
    if (pooled.handle.inTransaction) pooled.handle.exec('ROLLBACK');
    if (!this.closed && this.idle.length < this.maxIdle) this.idle.push(pooled);
    else pooled.close();
  }

  /**
   * Closes every handle of the pool, idle or handed out (a transaction still open on one is
   * rolled back; its next statement throws kind `closed`). The root stays open; closing the root
   * closes the pool too, so that no sibling keeps the engine (and a file's lock) alive.
   */
  close(): void {
    this.closed = true;
    for (const p of this.idle.splice(0)) p.close();
    for (const p of this.out) p.close();
    this.out.clear();
  }
}
