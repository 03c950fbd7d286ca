/**
 * A handle's session: its transaction state, and the routing of every statement between the
 * handle's own transaction and what other handles hold on the shared engine (its statements
 * are compiled into the engine's shared cache, see engine/statement-cache.ts). The rules (see docs/concurrency.md):
 *
 * - No transaction active in the engine: run at once (autocommit).
 * - Another handle's transaction is active: a read-only statement whose tables that
 *   transaction has not written runs beside it; anything else either moves a concurrent
 *   transaction out of the engine (park) or, against a pessimistic one, throws `SQLITE_BUSY`.
 * - A `BEGIN CONCURRENT` transaction's statements bring it into the engine (resume, which
 *   validates) and are logged with what they showed the application.
 * @module
 */
import { ConcurrentTransaction, logEntry, privateCopy, withRowid, type LogEntry } from './concurrent/transaction.js';
import type { Engine, HandleState, InsertTable, OpenTransaction, RowidPlan } from './engine/engine.js';
import type { BindParams, Outcome, PreparedSql, Row, RowFormat, Want } from './engine/execute.js';
import type { CompiledSql } from './engine/statement-cache.js';
import { digestPolicy } from './engine/row-digest.js';
import { heldAgainst } from './concurrent/hold.js';
import type { Lane } from './lane.js';
import { ALL_TABLES, intersects, type Footprint } from './engine/footprint.js';
import { DEFAULT_BUSY_TIMEOUT_MS, parseBusyTimeoutPragma, waitOutSync } from './busy-timeout.js';
import { closedError, fromEngineError, misuseError, sqliteError, SqliteError } from './errors.js';
import { walRefused } from './file/database.js';
import { isWellFormed } from './engine/direct.js';
import { classify, splitStatements, tokenize, type BeginMode, type StatementClass } from './sql/lexer.js';

/** A pessimistic transaction (`BEGIN [DEFERRED|IMMEDIATE|EXCLUSIVE]`, or an outer SAVEPOINT). */
export class PessimisticTransaction implements OpenTransaction {
  readonly kind = 'pessimistic' as const;
  readonly writes = new Set<string>();
  /** Another handle's failed statement ended the real transaction (see Engine.checkRealTransaction). */
  lostBy: unknown = undefined;
  constructor(
    readonly mode: Exclude<BeginMode, 'concurrent'>,
    readonly handleId: number,
  ) {}

  realTransactionLost(cause: unknown): void {
    this.lostBy = cause;
  }
}

export type { CompiledSql };

const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);
const NO_ROWS: Outcome = { rows: undefined, changes: 0, insertedRowid: undefined };

export class Session {
  readonly id: number;
  tx: PessimisticTransaction | ConcurrentTransaction | null = null;
  /** What `last_insert_rowid()`, `changes()` and `total_changes()` answer for this handle. */
  readonly state: HandleState = { lastInsertRowid: 0, changes: 0, totalChanges: 0, totalChangesKnown: true };
  /** A read-only handle refuses statements that would write. */
  readonly = false;
  /** How long a statement waits for a file lock held by another process, in ms (`PRAGMA busy_timeout`). */
  busyTimeout = DEFAULT_BUSY_TIMEOUT_MS;
  private open = true;
  /** The last transaction ended in SQLITE_BUSY_SNAPSHOT: the next ROLLBACK is a no-op. */
  private abortedBySnapshot = false;
  /** Set while a `transaction()` callback runs with its transaction open (see {@link Session.aborted}). */
  inTransactionFn = false;
  /**
   * Set while this handle's transaction waits in a commit group (commit-group.ts): its COMMIT is
   * under way, so every statement of the handle is refused (kind `misuse`, nothing changed) until
   * it settles. A `COMMIT` there would commit the other members applied below it before the
   * group does (and the group would then commit them again), and a statement would join a
   * transaction whose COMMIT was already asked for.
   */
  commitPending = false;
  /**
   * The priority lane of the `transaction()` call running on this handle, when the call may
   * queue there (a concurrent transaction with retries): its hot statements may be refused
   * while the lane is in use (see lane.ts).
   */
  lane: Lane | undefined = undefined;
  /**
   * The error that ended the transaction of a running `transaction()` callback (a conflict, an
   * `OR ROLLBACK`): the callback may have swallowed it and still believes it is inside its
   * transaction, so every statement (and COMMIT) throws it again, instead of running in
   * autocommit, until ROLLBACK or the end of `transaction()`.
   */
  private aborted: SqliteError | null = null;
  private readonly owned = new Set<{ finalizeFromSession(): void }>();
  /**
   * A copy of {@link Session.state} as it is now, shared by the log entries of the statements
   * that run while it does not change (made again on the first use after a change).
   */
  private stateCopy: HandleState | undefined;
  /** The rowid plan the last {@link Session.executeSteered} call used (a field: no closure per statement). */
  private steeredBy: RowidPlan | null = null;
  /** Inside {@link Session.withFile}: the file lock is already managed. */
  private usingFile = false;
  /** The row format of the statement being run (raw / safe integers), for execution and the log. */
  private format: RowFormat | undefined;

  constructor(readonly engine: Engine) {
    this.id = engine.retain();
  }

  get isOpen(): boolean {
    return this.open;
  }

  /** The rowid of the last row this handle inserted. */
  get lastInsertRowid(): number | bigint {
    return this.state.lastInsertRowid;
  }

  assertOpen(): void {
    if (!this.open) throw closedError(`Handle #${this.id}`);
    const failure = this.engine.failure;
    if (failure !== undefined) throw sqliteError(failure.message, failure.code, failure, failure.kind);
  }

  // ---- compiling ----------------------------------------------------------------------------

  /** Compiles one statement, cached in the engine for every handle (see statement-cache.ts). */
  compileCached(sql: string): CompiledSql {
    const cache = this.engine.statements;
    const c = cache.get(sql);
    if (c !== undefined) {
      this.assertOpen();
      return c;
    }
    const compiled = this.compileOne(sql);
    cache.add(compiled);
    return compiled;
  }

  /** Compiles exactly one statement (uncached): the caller owns and finalizes it. */
  compileOne(sql: string): CompiledSql {
    this.assertOpen();
    assertSqlText(sql);
    const parts = splitStatements(sql);
    if (parts.length === 0) throw misuseError('The SQL contains no statement');
    if (parts.length > 1) throw misuseError('Only one statement is allowed here; use exec() for scripts');
    return this.compileTokens(sql, classify((parts[0] as { tokens: ReturnType<typeof tokenize> }).tokens));
  }

  private compileTokens(sql: string, cls: StatementClass): CompiledSql {
    // Control statements need no SQLite statement. A setting (PRAGMA x = y, VACUUM, ATTACH, ...)
    // must not be prepared before it is admitted: SQLite applies flag PRAGMAs (foreign_keys,
    // recursive_triggers, ...) while preparing them. It is prepared when it runs (runSetting).
    const lazy = cls.type !== 'dml' && cls.type !== 'ddl' && cls.type !== 'journal_mode' && cls.type !== 'busy_timeout';
    if (lazy) return { sql, cls, prepared: undefined };
    // Preparing reads the schema, which needs the file: wait for it like a statement does.
    return { sql, cls, prepared: waitOutSync(this.busyTimeout, () => this.withFile(() => this.engine.prepare(sql, cls))) };
  }

  /** Registers a user statement to finalize when the handle closes. */
  own(s: { finalizeFromSession(): void }): void {
    this.owned.add(s);
  }

  disown(s: { finalizeFromSession(): void }): void {
    this.owned.delete(s);
  }

  // ---- running ------------------------------------------------------------------------------

  /** Runs a script of statements without parameters, one by one, stopping at the first error. */
  execScript(script: string): void {
    this.assertOpen();
    assertSqlText(script);
    for (const part of splitStatements(script)) {
      const c = this.compileTokens(part.sql, classify(part.tokens));
      try {
        this.run(c, undefined, 'run');
      } finally {
        c.prepared?.finalize();
      }
    }
  }

  /**
   * Runs one compiled statement for this handle; `format` shapes its rows. A refusal by the file
   * lock (another process holds the file) is waited out synchronously for up to
   * {@link Session.busyTimeout} ms.
   */
  run(c: CompiledSql, params: BindParams | undefined, want: Want, format?: RowFormat): Outcome {
    this.assertOpen();
    if (this.commitPending) throw commitPendingError(this.id);
    if (this.aborted !== null) {
      if (c.cls.type === 'rollback') {
        this.aborted = null;
        return NO_ROWS;
      }
      throw this.abortedError(this.aborted);
    }
    // Read once: what is checked, logged and bound must be the same values.
    const values = snapshotParams(params);
    // In memory there is no file lock to wait out: no closures per statement.
    if (this.engine.fileAccess === undefined) return this.runNow(c, values, want, format);
    return waitOutSync(this.busyTimeout, () => this.withFile(() => this.runNow(c, values, want, format)));
  }

  /** One attempt of {@link Session.run}, on the engine (inside {@link Session.withFile} on a file). */
  private runNow(c: CompiledSql, values: BindParams | undefined, want: Want, format: RowFormat | undefined): Outcome {
    this.engine.caller = this.state;
    this.format = format;
    try {
      const state = this.state;
      const writesRows = c.prepared !== undefined && c.prepared.writesRows;
      // Marked before it runs: a statement may change rows and then fail (OR FAIL).
      if (writesRows && state.totalChangesKnown && this.engine.footprints.of(c.sql).subPrograms === true) {
        state.totalChangesKnown = false;
        this.stateCopy = undefined;
      }
      let out: Outcome;
      try {
        out = this.route(c, values, want);
      } catch (e) {
        this.engine.checkRealTransaction(e);
        throw e;
      }
      if (out.insertedRowid !== undefined) {
        state.lastInsertRowid = out.insertedRowid;
        this.stateCopy = undefined;
      }
      if (writesRows) {
        state.changes = out.changes;
        state.totalChanges += out.changes;
        this.stateCopy = undefined;
      }
      return out;
    } finally {
      this.format = undefined;
    }
  }

  /**
   * Runs one step on the engine between the file policy's `beforeUse` and `afterUse` (which
   * hands the file to a waiting process when no transaction is open), with busy errors
   * explained; once however deeply nested. One attempt: the callers decide how to wait.
   */
  withFile<T>(step: () => T): T {
    const file = this.engine.fileAccess;
    if (!file || this.usingFile) return step();
    try {
      file.beforeUse();
    } catch (e) {
      throw this.engine.explain(e);
    }
    this.usingFile = true;
    try {
      return step();
    } catch (e) {
      throw this.engine.explain(e);
    } finally {
      this.usingFile = false;
      file.afterUse(this.engine.inRealTransaction);
    }
  }

  /**
   * The rows of a query for `iterate()`: a lazy cursor when that is safe (this handle in
   * autocommit, no transaction in the engine, an in-memory database, a read-only statement),
   * otherwise every row read now like `all()` (inside a transaction the read must be logged
   * whole; on a file the file lock must not be held across other work).
   */
  iterate(c: CompiledSql, params: BindParams | undefined, format?: RowFormat): Iterator<Row> {
    this.assertOpen();
    const engine = this.engine;
    const p = c.prepared;
    if (
      p !== undefined &&
      this.tx === null &&
      this.aborted === null &&
      engine.active === null &&
      !engine.isFile &&
      c.cls.type === 'dml' &&
      p.returnsRows &&
      engine.footprints.of(c.sql).readonly
    ) {
      this.primeLastInsertRowid(c);
      return p.openCursor(params, format);
    }
    return (this.run(c, params, 'all', format).rows ?? [])[Symbol.iterator]();
  }

  private route(c: CompiledSql, params: BindParams | undefined, want: Want): Outcome {
    const cls = c.cls;
    switch (cls.type) {
      case 'begin':
        this.begin(cls.mode);
        return NO_ROWS;
      case 'commit':
        this.commit();
        return NO_ROWS;
      case 'rollback':
        this.rollback();
        return NO_ROWS;
      case 'savepoint':
      case 'release':
      case 'rollback_to':
        this.savepoint(c);
        return NO_ROWS;
      case 'busy_timeout':
        if (cls.value !== null) this.busyTimeout = parseBusyTimeoutPragma(cls.value);
        return { rows: want === 'run' ? undefined : [{ timeout: this.busyTimeout }], changes: 0, insertedRowid: undefined };
      case 'journal_mode':
        if (cls.value === 'wal') throw walRefused();
        if (cls.value !== null) this.engine.mvcc = cls.value === 'mvcc';
        if (this.engine.mvcc) {
          return { rows: want === 'run' ? undefined : [{ journal_mode: 'mvcc' }], changes: 0, insertedRowid: undefined };
        }
        return this.statement(c, params, want);
      default:
        return this.statement(c, params, want);
    }
  }

  // ---- transaction control -------------------------------------------------------------------

  begin(mode: BeginMode): void {
    // transaction() calls this after awaits (a lock waited out, a turn in the priority lane):
    // a transaction begun for a handle closed meanwhile would never end (a pessimistic one would
    // hold the engine, and the file, for good).
    this.assertOpen();
    if (this.tx) throw misuseError('cannot start a transaction within a transaction');
    this.abortedBySnapshot = false;
    if (mode === 'concurrent') {
      // The baseline of other processes' commits is taken now, so that a commit by another
      // process after this point counts as a change at the first validation.
      if (this.engine.isFile) {
        try {
          this.withFile(() => this.engine.checkExternalChanges());
        } catch (e) {
          // Run beside the transaction in the engine, whose real transaction a failure may end.
          this.engine.checkRealTransaction(e);
          throw e;
        }
      }
      this.tx = new ConcurrentTransaction(this.engine, this.id);
      return;
    }
    this.claimForPessimistic();
    this.engine.exec(`BEGIN ${mode.toUpperCase()}`);
    this.tx = new PessimisticTransaction(mode, this.id);
    this.engine.active = this.tx;
  }

  commit(): void {
    try {
      this.commitNow();
    } catch (e) {
      // A read-only transaction's reads are re-checked beside the transaction in the engine,
      // whose real transaction a failure there may end (transaction() commits here directly).
      this.engine.checkRealTransaction(e);
      throw e;
    }
  }

  private commitNow(): void {
    const tx = this.tx;
    if (!tx) {
      if (this.aborted !== null) throw this.abortedError(this.aborted);
      throw misuseError('cannot commit - no transaction is active');
    }
    if (tx.kind === 'pessimistic') {
      this.throwIfLost(tx);
      this.finishRealCommit(tx);
      return;
    }
    const engine = this.engine;
    tx.refreshFootprints();
    // This COMMIT ends the whole real transaction: never with a commit group's applied members
    // below it (it would commit them behind the group's back). They step out first, whether
    // this transaction runs on top of them or is brought in now (not on top: bringIn(tx, false)).
    if (engine.group?.isTop(tx)) engine.park();
    if (engine.active !== tx) {
      if (tx.readOnly) {
        this.validateReadOnly(tx);
        this.endConcurrent(tx, true);
        return;
      }
      this.bringIn(tx, false);
    }
    this.finishRealCommit(tx);
  }

  rollback(): void {
    const tx = this.tx;
    this.aborted = null;
    if (!tx) {
      if (this.abortedBySnapshot) {
        this.abortedBySnapshot = false;
        return;
      }
      throw misuseError('cannot rollback - no transaction is active');
    }
    this.rollbackTx(tx);
  }

  private rollbackTx(tx: PessimisticTransaction | ConcurrentTransaction): void {
    const engine = this.engine;
    if (tx.kind === 'concurrent') engine.group?.release(tx);
    try {
      if (engine.active === tx) {
        engine.active = null;
        if (tx.writes.has(ALL_TABLES) && tx.kind === 'pessimistic') engine.schemaChanged();
        engine.abandonRealTransaction();
      }
    } finally {
      // Ended here even if the engine failed: it refuses everything from then on.
      if (tx.kind === 'concurrent') tx.end();
      this.tx = null;
    }
  }

  private savepoint(c: CompiledSql): void {
    const engine = this.engine;
    const tx = this.tx;
    const name = (c.cls as { name: string }).name;
    // The engine's own savepoints (commit group, rowid checks) live in the real transaction that
    // other handles' work shares: a RELEASE or ROLLBACK TO of one would end that work.
    if (RESERVED_SAVEPOINT.test(name)) throw misuseError(`savepoint name ${name} is reserved by siblite; choose another name`);
    if (!tx) {
      if (c.cls.type !== 'savepoint') {
        throw misuseError(`no such savepoint: ${name}`);
      }
      // An outermost SAVEPOINT starts a deferred transaction, as in SQLite.
      this.claimForPessimistic();
      engine.exec(c.sql);
      this.tx = new PessimisticTransaction('deferred', this.id);
      engine.active = this.tx;
      return;
    }
    if (tx.kind === 'pessimistic') {
      this.throwIfLost(tx);
      try {
        engine.exec(c.sql);
      } catch (e) {
        // It ended the transaction (an I/O error rolls it all back): as after OR ROLLBACK.
        if (!engine.inRealTransaction) {
          this.endPessimistic(tx, false);
          this.noteAborted(e);
        }
        throw e;
      }
      if (!engine.inRealTransaction) this.endPessimistic(tx, true); // RELEASE of the outermost
      return;
    }
    if (engine.active !== tx) this.bringIn(tx);
    try {
      engine.exec(c.sql);
    } catch (e) {
      // Whatever part of it ran, the transaction is parked and rebuilt from its log, which does
      // not have this statement: as if it had not run.
      engine.abandonRealTransaction();
      throw e;
    }
    tx.record(logEntry(c.sql, undefined, 'run', undefined, CONTROL_FOOTPRINT, true, undefined));
  }

  /** Commits the real SQLite transaction of `tx` (which is active). */
  private finishRealCommit(tx: PessimisticTransaction | ConcurrentTransaction): void {
    const engine = this.engine;
    try {
      engine.exec('COMMIT');
    } catch (e) {
      if (!engine.inRealTransaction) {
        // SQLite gave up the transaction; it is gone.
        engine.active = null;
        if (tx.kind === 'concurrent') tx.end();
        this.tx = null;
      }
      throw e;
    }
    if (tx.kind === 'pessimistic') this.endPessimistic(tx, true);
    else this.endConcurrent(tx, true);
  }

  /**
   * Ends a pessimistic transaction whose real transaction another handle's failed statement
   * ended (see Engine.checkRealTransaction), as after OR ROLLBACK, and throws why.
   */
  private throwIfLost(tx: PessimisticTransaction): void {
    if (tx.lostBy === undefined) return;
    const cause = fromEngineError(tx.lostBy);
    this.endPessimistic(tx, false);
    const error = sqliteError(
      `the transaction of handle #${this.id} was rolled back: a statement of another handle failed while it was open ` +
        `(${cause.message}), and SQLite then rolls the whole transaction back`,
      cause.code,
      cause,
    );
    this.noteAborted(error);
    throw error;
  }

  private endPessimistic(tx: PessimisticTransaction, committed: boolean): void {
    const engine = this.engine;
    if (engine.active === tx) engine.active = null;
    if (tx.writes.has(ALL_TABLES)) engine.schemaChanged();
    else if (committed && tx.writes.size > 0) engine.noteChanged(tx.writes);
    this.tx = null;
  }

  private endConcurrent(tx: ConcurrentTransaction, committed: boolean): void {
    if (this.engine.active === tx) this.engine.active = null;
    if (committed && tx.writes.size > 0) tx.noteCommitted();
    tx.end();
    this.tx = null;
  }

  /**
   * A commit group committed `tx` (see commit-group.ts): it ends as a committed transaction. Its
   * tables were counted as changed by the group, as each member was applied.
   */
  endGroupMember(tx: ConcurrentTransaction): void {
    this.endConcurrent(tx, false);
  }

  /** `tx` conflicted inside a commit group and was rolled back to its savepoint: it ends, failed. */
  abortGroupMember(tx: ConcurrentTransaction, cause: SqliteError): void {
    this.abortConcurrent(tx, cause);
  }

  /**
   * Whether committing this handle's concurrent transaction now would leave every read of
   * `other` (another handle's open concurrent transaction) showing what it showed; `false` when
   * that cannot be told (see {@link ConcurrentTransaction.readsSameOnTop}). Brings this
   * transaction into the engine first, validating it: throws what its COMMIT would.
   */
  keepsReadsOf(other: ConcurrentTransaction): boolean {
    const tx = this.tx;
    if (tx?.kind !== 'concurrent') return false;
    return this.withFile(() => {
      tx.refreshFootprints();
      if (this.engine.group?.isTop(tx)) return false;
      if (this.engine.active !== tx) this.bringIn(tx);
      return other.readsSameOnTop(tx.writes);
    });
  }

  /** Makes room for this handle's pessimistic transaction, or throws SQLITE_BUSY. */
  private claimForPessimistic(): void {
    const a = this.engine.active;
    if (!a) return;
    if (a.kind === 'pessimistic') throw lockedBy(a);
    this.engine.park();
  }

  /**
   * Moves the concurrent transaction `tx` into the engine, validating it: on top of a commit
   * group's applied members when there are and `stack` allows it, else alone (they step out).
   */
  private bringIn(tx: ConcurrentTransaction, stack = true): void {
    const a = this.engine.active;
    if (a && a.kind === 'pessimistic') throw lockedBy(a);
    const held = heldAgainst(a, tx, this, this.inTransactionFn);
    if (held) throw held;
    try {
      // On top of a commit group's applied members when there are (see commit-group.ts).
      if (stack && this.engine.group?.stack(tx)) return;
      this.engine.park();
      tx.resume();
    } catch (e) {
      if ((e as SqliteError).kind === 'busy_snapshot') this.abortConcurrent(tx, e as SqliteError);
      throw e;
    }
  }

  private validateReadOnly(tx: ConcurrentTransaction): void {
    const engine = this.engine;
    const reads = tx.readTables();
    const a = engine.active;
    if (a && engine.touchesUncommitted(reads, a)) {
      if (a.kind === 'pessimistic') throw lockedBy(a);
      engine.park();
    }
    // Validate inside one read transaction so every read is checked against one snapshot.
    const own = engine.active === null;
    if (own) engine.exec('BEGIN');
    try {
      tx.validateReads();
    } catch (e) {
      if ((e as SqliteError).kind === 'busy_snapshot') this.abortConcurrent(tx, e as SqliteError);
      throw e;
    } finally {
      if (own) engine.abandonRealTransaction();
    }
  }

  private abortConcurrent(tx: ConcurrentTransaction, cause: SqliteError): void {
    if (this.engine.active === tx) this.engine.active = null;
    tx.end();
    if (this.tx === tx) this.tx = null;
    this.abortedBySnapshot = true;
    this.noteAborted(cause);
  }

  /** The transaction of a running `transaction()` callback ended by `cause`: enter the aborted state. */
  private noteAborted(cause: unknown): void {
    if (!this.inTransactionFn || this.aborted !== null) return;
    this.aborted = cause instanceof SqliteError ? cause : sqliteError(`the transaction was rolled back (${String(cause)})`, 'SQLITE_ERROR', cause);
  }

  /**
   * Ends this handle's transaction because it cannot go on (`cause` says why), rolling it back;
   * inside a `transaction()` callback the handle is then aborted (see {@link Session.aborted}).
   */
  abortTransaction(cause: unknown): void {
    if (this.tx) this.rollbackTx(this.tx);
    this.noteAborted(cause);
  }

  /** Whether the handle is in the aborted state (see {@link Session.aborted}). */
  get isAborted(): boolean {
    return this.aborted !== null;
  }

  /** Throws the error that aborted the handle, if it is aborted (see {@link Session.aborted}). */
  throwIfAborted(): void {
    if (this.aborted !== null) throw this.abortedError(this.aborted);
  }

  /** Leaves the aborted state: the `transaction()` call whose transaction it was has ended. */
  endTransactionFn(): void {
    this.inTransactionFn = false;
    this.aborted = null;
  }

  private abortedError(cause: SqliteError): SqliteError {
    return sqliteError(
      `the transaction of this transaction() callback on handle #${this.id} already ended: ${cause.message} ` +
        'Every statement fails until the callback ends (or ROLLBACK); transaction() runs it again when the error is a conflict.',
      cause.code,
      cause,
      cause.kind,
    );
  }

  // ---- statements ---------------------------------------------------------------------------

  private statement(c: CompiledSql, params: BindParams | undefined, want: Want): Outcome {
    const engine = this.engine;
    const tx = this.tx;
    const setting = c.cls.type === 'setting';
    if (this.readonly && (c.cls.type === 'ddl' || setting || !engine.footprints.of(c.sql).readonly)) {
      throw sqliteError(
        `attempt to write a readonly database (handle #${this.id} was opened read-only${setting ? ' and cannot change the shared connection\'s settings' : ''})`,
        'SQLITE_READONLY',
      );
    }
    if (tx === null) {
      const a = engine.active;
      if (a === null) return this.autocommit(c, params, want);
      if (setting) {
        // It would fail, or be ignored, inside another handle's real transaction.
        if (a.kind === 'pessimistic') throw lockedBy(a);
        engine.park();
        return this.autocommit(c, params, want);
      }
      const fp = engine.footprints.of(c.sql);
      if (fp.readonly && !engine.touchesUncommitted(fp.reads, a)) return this.execute(c, params, want);
      if (a.kind === 'pessimistic') throw lockedBy(a);
      engine.park();
      return this.autocommit(c, params, want);
    }
    if (tx.kind === 'pessimistic') return this.pessimisticStatement(tx, c, params, want);
    return this.concurrentStatement(tx, c, params, want);
  }

  private autocommit(c: CompiledSql, params: BindParams | undefined, want: Want): Outcome {
    const engine = this.engine;
    try {
      if (c.cls.type === 'setting') return this.runSetting(c, params, want);
      return this.executeSteered(c, params, want, null);
    } finally {
      // Counted on failure too: a statement may change rows before it fails (OR FAIL,
      // RAISE(FAIL) in a trigger) and those changes stay committed.
      if (c.cls.type === 'ddl' || c.cls.type === 'setting') engine.schemaChanged();
      else if (engine.concurrentOpen > 0 && !(c.cls.type === 'dml' && c.cls.verb === 'select')) {
        const fp = engine.footprints.of(c.sql);
        if (!fp.readonly) engine.noteWrite(fp, params);
      }
    }
  }

  /**
   * Runs an admitted setting, prepared now (never earlier: preparing it may apply it) and
   * afresh (SQLite compiles some settings to nothing when prepared inside a transaction).
   */
  private runSetting(c: CompiledSql, params: BindParams | undefined, want: Want): Outcome {
    const fresh = this.engine.prepare(c.sql, c.cls);
    try {
      return fresh.execute(this.engine.db, params, want, this.format);
    } finally {
      fresh.finalize();
    }
  }

  private pessimisticStatement(
    tx: PessimisticTransaction,
    c: CompiledSql,
    params: BindParams | undefined,
    want: Want,
  ): Outcome {
    const engine = this.engine;
    this.throwIfLost(tx);
    const setting = c.cls.type === 'setting';
    if (c.cls.type === 'ddl' || setting) tx.writes.add(ALL_TABLES);
    else for (const t of engine.footprints.of(c.sql).writes) tx.writes.add(t);
    try {
      return setting ? this.runSetting(c, params, want) : this.executeSteered(c, params, want, tx);
    } catch (e) {
      if (!engine.inRealTransaction) {
        this.endPessimistic(tx, false); // e.g. OR ROLLBACK
        this.noteAborted(e);
      }
      throw e;
    }
  }

  private concurrentStatement(
    tx: ConcurrentTransaction,
    c: CompiledSql,
    params: BindParams | undefined,
    want: Want,
  ): Outcome {
    const engine = this.engine;
    if (c.cls.type === 'ddl') {
      throw misuseError(
        'DDL (CREATE, DROP, ALTER, ...) is not allowed inside BEGIN CONCURRENT; the transaction is still open. ' +
          'Run schema changes outside it, or in a BEGIN IMMEDIATE transaction.',
      );
    }
    if (c.cls.type === 'setting') {
      throw misuseError(
        'PRAGMA settings, VACUUM, ATTACH and DETACH are not allowed inside BEGIN CONCURRENT (they change the connection ' +
          'every handle shares); the transaction is still open. Run them outside any transaction.',
      );
    }
    if (this.lane !== undefined && this.inTransactionFn) {
      const refusal = this.lane.refusal(this, c.sql, params);
      if (refusal) throw refusal;
    }
    tx.refreshFootprints();
    const fp = engine.footprints.of(c.sql);
    if (engine.active !== tx) {
      const a = engine.active;
      const inPlace = fp.readonly && !intersects(fp.reads, tx.writes) && (a === null || !engine.touchesUncommitted(fp.reads, a));
      if (!inPlace) this.bringIn(tx);
    }
    // The handle's state only where a replay needs it (see Footprint.handleState).
    const state = fp.handleState === true ? (this.stateCopy ??= { ...this.state }) : undefined;
    const entry = logEntry(c.sql, privateParams(params), want, this.format, fp, false, state);
    this.steeredBy = null;
    try {
      const out = isDigestable(c, fp, want) ? this.allDigested(c, params, entry) : this.executeSteered(c, params, want, tx);
      const plan = this.steeredBy as RowidPlan | null;
      // A private copy: the application may mutate the rows it was given.
      entry.outcome = entry.digest ? DIGESTED : privateCopy(out);
      if (plan !== null && out.insertedRowid !== undefined) {
        entry.rowid = { table: plan.table, sql: plan.sql, value: out.insertedRowid };
      }
      tx.record(entry);
      return out;
    } catch (e) {
      const err = e as SqliteError;
      if (engine.active === tx && !engine.inRealTransaction) {
        // The statement ended the whole transaction (OR ROLLBACK, RAISE(ROLLBACK)).
        engine.active = null;
        this.abortConcurrent(tx, err);
        this.abortedBySnapshot = false;
      } else if (err.kind !== 'busy') {
        entry.error = err.message;
        tx.record(entry);
      }
      throw e;
    }
  }

  /**
   * A concurrent transaction's read through `all()`: rows and their digest in one pass. A large
   * result is logged as its digest only (see engine/row-digest.ts), a small one as rows.
   */
  private allDigested(c: CompiledSql, params: BindParams | undefined, entry: LogEntry): Outcome {
    this.primeLastInsertRowid(c);
    const { rows, digest } = (c.prepared as PreparedSql).allDigested(params, this.format);
    if (rows.length > digestPolicy.aboveRows) entry.digest = digest;
    return { rows, changes: 0, insertedRowid: undefined };
  }

  /**
   * Executes, giving a single-row INSERT an explicit rowid when another transaction holds
   * reserved rowids in its table (so no two in-flight transactions are told the same rowid),
   * or, in a concurrent transaction, when the table's rowids are striped across processes.
   */
  private executeSteered(
    c: CompiledSql,
    params: BindParams | undefined,
    want: Want,
    owner: object | null,
  ): Outcome {
    const engine = this.engine;
    if (c.cls.type === 'dml' && c.cls.verb === 'insert' && (owner instanceof ConcurrentTransaction || engine.hasReservations)) {
      const plan = engine.rowidPlan(c.sql);
      if (plan) {
        this.steeredBy = plan;
        // Striped: another process took a rowid this one was told here (see Engine.rowidLost).
        const striped = owner instanceof ConcurrentTransaction && engine.stripes(plan.table);
        if (striped || engine.hasForeignReservations(plan.table, owner)) {
          // Checked against the application's SQL: the rewrite adds a parameter of its own.
          (c.prepared as PreparedSql).checkParams(params);
          // Striped: the rowid first (its queries use the engine's statement cache too); otherwise
          // the statement itself takes the first rowid above the table's and the reservations'.
          const high = engine.reservedHigh(plan.table);
          const rowid = striped ? engine.freeRowid(plan) : high <= MAX_SAFE ? Number(high) : high;
          const stmt = engine.statement(striped ? plan.sql : plan.floorSql);
          this.primeLastInsertRowid(c);
          return stmt.execute(engine.db, withRowid(stmt, params, rowid), want, this.format);
        }
      } else if (engine.hasReservations) {
        const target = engine.insertTable(c.sql);
        if (target && engine.hasForeignReservations(target.key, owner)) return this.insertAboveReservations(c, params, want, target, owner);
      }
    }
    return this.execute(c, params, want);
  }

  /**
   * An INSERT that cannot be given explicit rowids (several rows, SELECT, ...) into a table where
   * another transaction holds reserved rowids: the rows SQLite numbers must land above the
   * reservations' high-water mark. AUTOINCREMENT tables get `sqlite_sequence` raised to it; in
   * a plain rowid table SQLite numbers from its largest rowid, so the statement runs in a
   * savepoint and is undone with a BusyError if it took a reserved rowid.
   */
  private insertAboveReservations(
    c: CompiledSql,
    params: BindParams | undefined,
    want: Want,
    target: InsertTable,
    owner: object | null,
  ): Outcome {
    const engine = this.engine;
    const high = engine.reservedHigh(target.key);
    const before = engine.usedRowid(target);
    if (before >= high) return this.execute(c, params, want);
    if (target.autoincrement) {
      engine.raiseSequence(target, high);
      return this.execute(c, params, want);
    }
    engine.exec('SAVEPOINT siblite_rowids');
    let out: Outcome | undefined;
    let failure: unknown;
    try {
      out = this.execute(c, params, want);
    } catch (e) {
      failure = e;
    }
    if (!engine.inRealTransaction) throw failure; // OR ROLLBACK ended everything
    if (engine.reservedBetween(target.key, before, engine.usedRowid(target), owner)) {
      // If the undo fails, the whole real transaction ends: the caller handles that as after OR ROLLBACK.
      engine.undoOrAbandon('ROLLBACK TO siblite_rowids; RELEASE siblite_rowids');
      throw sqliteError(
        `database is locked: this INSERT would take rowids of ${target.key.replace(/^main\./, '')} that an open BEGIN CONCURRENT ` +
          'transaction of another handle was told; retry when it ends (or insert one row per statement, which gets a free rowid)',
        'SQLITE_BUSY',
      );
    }
    try {
      engine.exec('RELEASE siblite_rowids');
    } catch (e) {
      // Not released (a lock on the commit of an autocommit INSERT, an I/O error): the
      // savepoint, and this statement's rows in it, must not stay behind in a real transaction
      // that nobody owns or that reports the statement failed. The caller handles the real
      // transaction's end as after OR ROLLBACK (an autocommit statement is then waited out and run again).
      engine.abandonRealTransaction();
      throw e;
    }
    if (failure !== undefined) throw failure;
    return out as Outcome;
  }

  private execute(c: CompiledSql, params: BindParams | undefined, want: Want): Outcome {
    this.primeLastInsertRowid(c);
    return (c.prepared as PreparedSql).execute(this.engine.db, params, want, this.format);
  }

  /** SQLite's own last_insert_rowid() becomes this handle's when `c` calls it (see Engine.primeLastInsertRowid). */
  private primeLastInsertRowid(c: CompiledSql): void {
    if (c.cls.type === 'dml') this.engine.primeLastInsertRowid(this.engine.footprints.of(c.sql), this.state);
  }

  // ---- closing ------------------------------------------------------------------------------

  close(): void {
    if (!this.open) return;
    try {
      if (this.tx) this.rollbackTx(this.tx);
    } finally {
      this.open = false;
      for (const s of this.owned) s.finalizeFromSession();
      this.owned.clear();
      this.engine.release();
    }
  }
}

/** The logged outcome of a read kept as a digest. */
const DIGESTED: Outcome = { rows: undefined, changes: 0, insertedRowid: undefined };

/** Whether a concurrent transaction's statement is a read whose result may be logged as a digest. */
function isDigestable(c: CompiledSql, fp: Footprint, want: Want): boolean {
  return want === 'all' && fp.readonly && c.prepared !== undefined && !c.prepared.writesRows;
}

const CONTROL_FOOTPRINT: Footprint = { reads: new Set(), writes: new Set(), readonly: true, deterministic: true };

/** The savepoints siblite runs itself in the shared real transaction (see commit-group.ts, insertAboveReservations). */
const RESERVED_SAVEPOINT = /^siblite_(group_|rowids$)/i;

/**
 * Refuses what is not a string, and SQL text with a lone UTF-16 surrogate (kind `misuse`,
 * nothing run): the engine wrapper's encoder under-counts such text and silently cuts the end
 * of the statement off, which could run a different statement (`... WHERE id = 10` becoming
 * `... WHERE id = 1`). Parameters are not affected: pass such a value as a parameter.
 */
function assertSqlText(sql: unknown): asserts sql is string {
  if (typeof sql !== 'string') throw misuseError('SQL must be a string');
  if (isWellFormed(sql)) return;
  const at = sql.search(/[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/);
  throw misuseError(
    `The SQL text has a lone UTF-16 surrogate (at index ${at}), which cannot be encoded as UTF-8 for the engine; ` +
      'nothing was run. Pass such a string as a parameter instead.',
  );
}

/** The refusal of a statement on a handle whose transaction waits in a commit group. */
function commitPendingError(id: number): SqliteError {
  return misuseError(
    `handle #${id} is committing its transaction (commitAsync() or transaction() has not settled yet); ` +
      'await that commit before running statements on this handle',
  );
}

function lockedBy(a: OpenTransaction): SqliteError {
  const what = a instanceof PessimisticTransaction ? `a BEGIN ${a.mode.toUpperCase()}` : 'a';
  return sqliteError(
    `database is locked: handle #${a.handleId} holds ${what} transaction whose uncommitted state this statement would see or change; retry when it ends`,
    'SQLITE_BUSY',
  );
}

/**
 * The application's parameters read exactly once (accessor properties, proxies): every later
 * check, log entry and binding uses this copy, so what was logged is what was bound.
 */
function snapshotParams(params: BindParams | undefined): BindParams | undefined {
  if (params === null || typeof params !== 'object' || params instanceof Uint8Array) return params;
  try {
    return (Array.isArray(params) ? (params as unknown[]).slice() : { ...(params as Record<string, unknown>) }) as BindParams;
  } catch (e) {
    throw sqliteError(`The parameters could not be read: ${(e as Error)?.message ?? String(e)}`, 'SQLITE_MISMATCH', e, 'misuse');
  }
}

/**
 * The parameters as they are now, for replaying them later, from the private snapshot
 * {@link Session.run} took ({@link snapshotParams}): only blobs, which the application may still
 * change in place, are copied (the snapshot itself when it holds none).
 */
function privateParams(params: BindParams | undefined): BindParams | undefined {
  if (params instanceof Uint8Array) return params.slice();
  if (Array.isArray(params)) {
    const list = params as unknown[];
    if (!list.some(isBlob)) return params;
    return list.map((v) => (v instanceof Uint8Array ? v.slice() : v)) as BindParams;
  }
  if (params !== null && typeof params === 'object') {
    const values = Object.values(params);
    if (!values.some(isBlob)) return params;
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(params)) out[k] = v instanceof Uint8Array ? v.slice() : v;
    return out as BindParams;
  }
  return params;
}

function isBlob(v: unknown): boolean {
  return v instanceof Uint8Array;
}
