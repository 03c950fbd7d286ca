/**
 * The engine: one SQLite connection (node-sqlite3-wasm) shared by every sibling handle of one
 * database in this process. It holds the state that handles share: whose transaction is in the
 * real SQLite transaction right now, the per-table commit counters that let optimistic
 * transactions skip re-checking reads nobody could have changed, rowid reservations, and the
 * statement footprints.
 * @module
 */
import { fromEngineError, sqliteError, type SqliteError } from '../errors.js';
import { loadSqlite, type WasmDatabase } from '../file/load.js';
import { openDatabaseFile, type FileOptions, type FileSettings } from '../file/database.js';
import { insertTarget, singleRowInsert, tokenize, classify, type SingleRowInsert, type StatementClass } from '../sql/lexer.js';
import { ControlStatements } from './control.js';
import { settleCursor } from './cursor.js';
import { engineLastInsertRowid, PreparedSql, type BindParams } from './execute.js';
import { ALL_TABLES, FootprintAnalyzer, intersects, type Footprint } from './footprint.js';
import { StatementCache } from './statement-cache.js';
import { WrittenRowids } from './written-rowids.js';
import { keyValues, type RowidRange } from './rowid-span.js';

/** What every open transaction tells the engine. */
export interface OpenTransaction {
  readonly kind: 'pessimistic' | 'concurrent';
  /** The id of the handle that owns it, for messages. */
  readonly handleId: number;
  /** Tables written so far ({@link ALL_TABLES} after DDL). */
  readonly writes: ReadonlySet<string>;
  /**
   * The real transaction ended under it because another handle's statement failed (see
   * {@link Engine.checkRealTransaction}); `cause` is that failure.
   */
  realTransactionLost(cause: unknown): void;
}

/**
 * Hooks a file database installs to manage its file lock (see src/file/). The engine calls
 * `beforeUse` before it runs SQL for a handle and `afterUse` once the engine is back in
 * autocommit or holds a transaction across an await.
 */
export interface FileAccess {
  beforeUse(): void;
  afterUse(inTransaction: boolean): void;
  /** Set by the engine: parks an active concurrent transaction when another process waits. */
  yieldTransaction?: () => boolean;
  /** Adds what the file lock knows (lock directory, owner) to a busy error from the last use. */
  explain?(error: unknown): unknown;
  close(): void;
}

/**
 * What the engine's commit group (commit-group.ts) lets the engine and the sessions call. While
 * members of a pending group are applied in the real transaction, another concurrent transaction
 * may run on top of them in a savepoint; everything else must not see them.
 */
export interface GroupHooks {
  /** The tables written by the members applied in the real transaction (empty when none is). */
  readonly pendingWrites: ReadonlySet<string>;
  /** Moves the applied members out of the engine (rolled back, still pending), if any; returns whether it did. */
  settle(): boolean;
  /** Brings `tx` in on top of the applied members (validating it); false when none is applied. */
  stack(tx: object): boolean;
  /** `tx` ends (rolled back): takes it out of the group's state in the engine first. */
  release(tx: object): void;
  /** Whether `tx` runs on top of the applied members. */
  isTop(tx: object): boolean;
  /**
   * The engine is about to run SQL outside any real transaction, which may begin one: the group
   * makes its state match the engine first, while {@link Engine.committedSerial} still tells
   * whether its members' transaction was committed (a later COMMIT overwrites it, and the
   * members would then be taken for rolled back and committed a second time).
   */
  reconcile(): void;
}

/** A plan to give a single-row INSERT an explicit rowid (see {@link Engine.rowidPlan}). */
export interface RowidPlan {
  /** `schema.table`, as in footprints. */
  readonly table: string;
  /** The INSERT with `rowid` added to its columns and `:__siblite_rowid` to its values. */
  readonly sql: string;
  /**
   * The INSERT with `rowid` added to its columns, and as its value one above the largest rowid
   * of the table, above `sqlite_sequence` for AUTOINCREMENT, and above `:__siblite_rowid` (the
   * reservations' high-water mark): the rowid of {@link Engine.freeRowid} chosen by the
   * statement itself, without a query of its own.
   */
  readonly floorSql: string;
  /** The table is AUTOINCREMENT: a rowid must also be above `sqlite_sequence`. */
  readonly autoincrement: boolean;
}

/** A rowid table an INSERT writes into (see {@link Engine.insertTable}). */
export interface InsertTable {
  /** `schema.table`, as in footprints. */
  readonly key: string;
  readonly autoincrement: boolean;
}

/** The rowids reserved in one table, by their owners, and the highest ever reserved. */
interface TableReservations {
  readonly owners: Map<number | bigint, object>;
  /** How many rowids each owner holds here: "someone else holds one" in O(1). */
  readonly perOwner: Map<object, number>;
  /** The high-water mark: no rowid at or below it is chosen for others while any is held. */
  high: bigint;
}

/**
 * What SQL's connection-state functions (`last_insert_rowid()`, `changes()`,
 * `total_changes()`) answer: the values of the handle whose statement runs, as they were when
 * that statement started. The engine's own values belong to whichever handle ran last.
 */
export interface HandleState {
  lastInsertRowid: number | bigint;
  changes: number;
  totalChanges: number;
  /**
   * False once the handle changed rows with a statement that may run trigger or foreign-key
   * action programs: SQLite's total counts the rows those change, which this build cannot
   * report per handle, so `total_changes()` then refuses to answer rather than answer wrong.
   */
  totalChangesKnown: boolean;
}

/**
 * Width of the rowid stripes of a table this process lost a rowid to another process in: it
 * then picks only rowids congruent to its slot modulo this (see {@link Engine.freeRowid}).
 */
const ROWID_STRIPES = 64n;
const INT64_MAX = 9223372036854775807n;

/** The parameter name the rowid plans use. */
export const ROWID_PARAM = ':__siblite_rowid';

/** What `total_changes()` throws once a handle's total cannot be known (see HandleState). */
function totalChangesUnknown(): Error {
  return new Error(
    'total_changes() cannot be answered for this handle: it changed rows with a statement that runs triggers or ' +
      'foreign-key actions, whose rows siblite cannot count per handle; use the changes reported by run()',
  );
}

/** How many of its own statements (replays, bookkeeping queries) an engine keeps prepared. */
const INTERNAL_STATEMENTS = 500;

export class Engine {
  readonly db: WasmDatabase;
  readonly footprints: FootprintAnalyzer;
  /** The prepared statements of every handle's `run()`, `get()`, `all()`, shared. */
  readonly statements = new StatementCache();
  /** The transaction that lives in the real SQLite transaction now, if any. */
  active: OpenTransaction | null = null;
  /**
   * Counts the real SQLite transactions begun on the connection, so that the one open now can be
   * told from an earlier one (the commit group checks that its members' transaction is still
   * the one open, see commit-group.ts).
   */
  realSerial = 0;
  /** The {@link Engine.realSerial} of the last real transaction that a COMMIT (or RELEASE) ended. */
  committedSerial = 0;
  /** Open `BEGIN CONCURRENT` transactions (commit counters are kept only while > 0). */
  concurrentOpen = 0;
  /** Moves whenever footprints learned before may be stale (see {@link Engine.schemaChanged}). */
  schemaEpoch = 0;
  /** Counts commits that changed something while concurrent transactions were open. */
  commitSeq = 0;
  /** `PRAGMA journal_mode = mvcc` was asked for (compatibility only). */
  mvcc = false;
  /**
   * Set when a real transaction could not be ended after a failure (see
   * {@link Engine.abandonRealTransaction}): every handle refuses statements from then on, so that
   * none runs inside a transaction nobody owns.
   */
  failure: SqliteError | undefined;
  fileAccess: FileAccess | undefined;
  /** The commit group of a file database (see commit-group.ts), when group commit is on. */
  group: GroupHooks | undefined;
  /** The state the connection-state SQL functions answer now (see {@link HandleState}). */
  caller: HandleState = { lastInsertRowid: 0, changes: 0, totalChanges: 0, totalChangesKnown: true };
  /** Locking and durability settings of a file database (see src/file/). */
  readonly fileSettings: FileSettings | undefined;
  private refs = 0;
  private tableSeq = new Map<string, number>();
  private allSeq = 0;
  private readonly written = new WrittenRowids();
  private readonly internal = new StatementCache(INTERNAL_STATEMENTS);
  /** BEGIN, COMMIT and ROLLBACK, prepared once (see control.ts). */
  private readonly control: ControlStatements;
  private readonly rowidPlans = new Map<string, RowidPlan | null>();
  private readonly reservations = new Map<string, TableReservations>();
  private readonly insertTables = new Map<string, InsertTable | null>();
  /** The query of {@link Engine.usedRowid} per table (built once). */
  private readonly usedRowidSql = new Map<string, string>();
  /** Tables whose chosen rowids are striped: this process lost a rowid to another commit there. */
  private readonly stripedTables = new Set<string>();
  /** This process's stripe: processes started together get distinct pids, so distinct slots. */
  private rowidSlot = BigInt((globalThis.process?.pid ?? Math.floor(Math.random() * 1e9)) % Number(ROWID_STRIPES));
  private lastDataVersion: number | undefined;
  private nextHandle = 1;

  constructor(
    readonly path: string,
    readonly isFile: boolean,
    options: { readonly?: boolean; fileMustExist?: boolean } & FileOptions,
    private readonly onClose: (engine: Engine) => void,
  ) {
    if (isFile) {
      // Checks the path, opens with crash-proof locks, applies durability and the lock policy.
      const opened = openDatabaseFile(path, options);
      this.db = opened.db;
      this.fileAccess = opened.access;
      this.fileSettings = opened.settings;
      this.fileAccess.yieldTransaction = () => {
        if (this.active?.kind !== 'concurrent') return !this.db.inTransaction;
        this.park();
        return true;
      };
    } else {
      const { Database } = loadSqlite();
      try {
        this.db = new Database(path, { readOnly: options.readonly ?? false, fileMustExist: options.fileMustExist ?? false });
      } catch (e) {
        throw fromEngineError(e, path);
      }
    }
    this.footprints = new FootprintAnalyzer(this.db);
    this.control = new ControlStatements((sql) => this.prepare(sql));
    // Per-handle answers instead of the shared connection's (which would show one handle
    // another's uncommitted insert).
    this.db.function('changes', () => this.caller.changes);
    this.db.function('total_changes', () => {
      if (!this.caller.totalChangesKnown) throw totalChangesUnknown();
      return this.caller.totalChanges;
    });
  }

  /** Registers a handle; returns its id. */
  retain(): number {
    this.refs++;
    return this.nextHandle++;
  }

  /** Unregisters a handle; the last one closes the engine. */
  release(): void {
    if (--this.refs > 0) return;
    settleCursor();
    this.statements.clear();
    this.internal.clear();
    this.control.clear();
    this.fileAccess?.close();
    try {
      if (this.db.inTransaction) this.db.exec('ROLLBACK');
    } catch {
      // closing anyway
    }
    this.db.close();
    this.onClose(this);
  }

  get isOpen(): boolean {
    return this.db.isOpen;
  }

  /**
   * Runs SQL without results on the engine, mapping errors. Keeps {@link Engine.realSerial} and
   * {@link Engine.committedSerial}: only SQL run here begins or commits a real transaction (a
   * prepared statement can only end one by rolling it back, with `OR ROLLBACK`). Before anything
   * that may begin one, the commit group checks its state against them (see GroupHooks.reconcile).
   */
  exec(sql: string): void {
    settleCursor();
    const kind = this.control.kindOf(sql);
    if (kind === undefined) return this.execScript(sql);
    if (kind === 'begin') this.group?.reconcile();
    try {
      this.control.run(sql);
    } catch (e) {
      throw this.explain(fromEngineError(e));
    }
    // A COMMIT that failed, even one that ended its transaction, counts as rolled back, as its
    // caller treats it.
    if (kind === 'begin') this.realSerial++;
    else if (kind === 'commit') this.committedSerial = this.realSerial;
  }

  /** {@link Engine.exec} of any other SQL (savepoints, settings, scripts): the serials by what changed. */
  private execScript(sql: string): void {
    const db = this.db;
    const before = db.inTransaction;
    if (!before) this.group?.reconcile();
    try {
      db.exec(sql);
    } catch (e) {
      // A failed script may have begun a transaction.
      if (!before && db.inTransaction) this.realSerial++;
      throw this.explain(fromEngineError(e));
    }
    if (before !== db.inTransaction) {
      if (!before) this.realSerial++;
      else if (/^\s*(COMMIT|END|RELEASE)\b/i.test(sql)) this.committedSerial = this.realSerial;
    }
  }

  /** Adds the file lock's explanation (lock directory, owner) to a busy error. */
  explain(e: unknown): unknown {
    return this.fileAccess?.explain ? this.fileAccess.explain(e) : e;
  }

  /** Prepares a new engine statement (the caller finalizes it). */
  prepare(sql: string, cls: StatementClass = classify(tokenize(sql))): PreparedSql {
    settleCursor();
    let stmt;
    try {
      stmt = this.db.prepare(sql);
    } catch (e) {
      throw this.explain(fromEngineError(e));
    }
    const p = new PreparedSql(sql, stmt, cls);
    if (p.verb === 'insert') {
      try {
        const target = this.insertTable(sql);
        p.rowidTarget = target !== null;
        if (target) p.rowidExists = (rowid) => this.rowidExists(target, rowid);
      } catch (e) {
        p.finalize();
        throw this.explain(fromEngineError(e));
      }
    }
    return p;
  }

  private rowidExists(table: InsertTable, rowid: bigint): boolean {
    return this.rowidTaken(table.key, rowid);
  }

  /** Whether a row with this rowid exists in `table` (a table key, `schema.name`). */
  rowidTaken(table: string, rowid: number | bigint): boolean {
    const [schema, name] = splitTable(table);
    return (
      (this.statement(`SELECT 1 AS x FROM ${sqlIdent(schema)}.${sqlIdent(name)} WHERE rowid = ?`).execute(this.db, [rowid], 'get').rows
        ?.length ?? 0) > 0
    );
  }

  /**
   * Before a statement that calls `last_insert_rowid()` (footprint `lastInsertRowid`) runs on
   * behalf of `state`: makes SQLite's own value the handle's, by inserting (and deleting) a row
   * with that rowid in a scratch temp table. SQLite then tracks the rows the statement inserts
   * while it runs, inside trigger programs included, exactly as for a connection of its own.
   */
  primeLastInsertRowid(fp: Footprint, state: HandleState): void {
    if (fp.lastInsertRowid !== true) return;
    const want = BigInt(state.lastInsertRowid);
    if (engineLastInsertRowid(this.db) === want) return;
    this.db.exec('CREATE TEMP TABLE IF NOT EXISTS siblite_last_insert_rowid (x)');
    this.statement('INSERT INTO temp.siblite_last_insert_rowid (rowid) VALUES (?)').execute(this.db, [want], 'run');
    this.statement('DELETE FROM temp.siblite_last_insert_rowid').execute(this.db, undefined, 'run');
  }

  /**
   * An engine-owned cached statement, for replays and bookkeeping queries. The cache evicts the
   * least recently used statement, one at a time, so a statement a caller has just fetched (and
   * may still hold while it fetches a few others) is never the one finalized.
   */
  statement(sql: string): PreparedSql {
    const cached = this.internal.get(sql);
    if (cached !== undefined) return cached.prepared as PreparedSql;
    const prepared = this.prepare(sql);
    this.internal.add({ sql, cls: prepared.cls, prepared });
    return prepared;
  }

  /** Whether the real SQLite connection is inside a transaction. */
  get inRealTransaction(): boolean {
    return this.db.inTransaction;
  }

  /**
   * Records that a commit (or autocommit statement) changed these tables; `rowids`, when given,
   * has for some of them the only rowids it wrote (see engine/written-rowids.ts).
   */
  noteChanged(tables: Iterable<string>, rowids?: ReadonlyMap<string, readonly number[] | null>): void {
    if (this.concurrentOpen === 0) return;
    const seq = ++this.commitSeq;
    for (const t of tables) this.noteTable(t, seq, rowids?.get(t));
  }

  /**
   * {@link Engine.noteChanged} for what one write statement with footprint `fp` and these
   * parameters changed (an autocommit write, or a transaction whose only write it was): its
   * rowids are read off its parameters without building a map per commit.
   */
  noteWrite(fp: Footprint, params: BindParams | undefined): void {
    if (this.concurrentOpen === 0) return;
    const seq = ++this.commitSeq;
    const keys = fp.rowids?.writes;
    for (const t of fp.writes) {
      const tableKeys = keys?.get(t);
      this.noteTable(t, seq, tableKeys === undefined ? null : keyValues(tableKeys, params));
    }
  }

  /** Commit `seq` changed `table`: the rows `ids` only, or any row (`null`, `undefined`). */
  private noteTable(table: string, seq: number, ids: readonly number[] | null | undefined): void {
    if (table === ALL_TABLES) {
      this.allSeq = seq;
      return;
    }
    this.tableSeq.set(table, seq);
    if (ids === undefined || ids === null) this.written.unknown(table, seq);
    else this.written.wrote(table, seq, ids);
  }

  /**
   * Whether a commit after commit number `seq` may have changed a row of `table` whose rowid is
   * in `range` (or, without a range, any row of it).
   */
  rowsChangedSince(table: string, seq: number, range: RowidRange | undefined): boolean {
    if (this.allSeq > seq) return true;
    if ((this.tableSeq.get(table) ?? 0) <= seq) return false;
    return range === undefined || this.written.touched(table, seq, range);
  }

  /** Whether any of `tables` may have changed after commit number `seq`. */
  changedSince(tables: ReadonlySet<string>, seq: number): boolean {
    if (this.allSeq > seq) return true;
    for (const t of tables) {
      if (t === ALL_TABLES) return this.commitSeq > seq;
      if ((this.tableSeq.get(t) ?? 0) > seq) return true;
    }
    return false;
  }

  /**
   * The schema or a setting that decides what statements touch changed (DDL, a PRAGMA,
   * ATTACH, another process's commit): forget footprints and treat every table as changed.
   */
  schemaChanged(): void {
    this.footprints.invalidate();
    this.rowidPlans.clear();
    this.insertTables.clear();
    this.usedRowidSql.clear();
    this.schemaEpoch++;
    this.noteChanged([ALL_TABLES]);
  }

  /** Called when the count of open concurrent transactions drops to zero. */
  forgetCounters(): void {
    // A new map, not clear(): V8's clear() of a long-lived map costs about 0.6 µs, and a
    // handle that runs one concurrent transaction at a time comes here at every commit.
    if (this.tableSeq.size > 0) this.tableSeq = new Map();
    this.written.clear();
    this.allSeq = 0;
    this.commitSeq = 0;
  }

  /**
   * Notices commits by other processes (file databases): when `PRAGMA data_version` moved, every
   * table counts as changed and footprints are re-learned.
   */
  checkExternalChanges(): void {
    if (!this.isFile) return;
    const row = this.statement('PRAGMA data_version').execute(this.db, undefined, 'get').rows?.[0];
    const v = row ? Number(Object.values(row)[0]) : 0;
    if (this.lastDataVersion !== undefined && v !== this.lastDataVersion) this.schemaChanged();
    this.lastDataVersion = v;
  }

  /**
   * Moves the active concurrent transaction out of the engine (ROLLBACK); it comes back by
   * re-execution when its handle runs its next statement or commits. Leaves the engine outside
   * any real transaction (a commit group's applied members step out too, still pending).
   */
  park(): void {
    // Members of a commit group applied in the real transaction step out with everything above them.
    if (this.group?.settle()) return;
    if (!this.active) return;
    if (this.active.kind !== 'concurrent') throw new Error('siblite: cannot park a pessimistic transaction');
    this.abandonRealTransaction();
  }

  /**
   * Ends the real transaction whatever it holds: for the paths that must leave the engine without
   * one (parking, rolling back, undoing after a failure). Whoever was in it counts as moved out:
   * an active concurrent transaction is parked (its log rebuilds it), a commit group's applied
   * members are pending again (see GroupHooks.reconcile); an active pessimistic transaction is
   * left to its caller, which ends it on seeing the real transaction gone (as after `OR
   * ROLLBACK`). Once SQLite runs a ROLLBACK it ends the transaction even when it reports an error
   * (an I/O error while rolling back), so an error is not thrown when the transaction ended; if
   * the prepared ROLLBACK could not run, `sqlite3_exec` tries again. A transaction that still
   * cannot be ended makes the engine refuse all further work ({@link Engine.failure}) and throws.
   */
  abandonRealTransaction(): void {
    if (this.active?.kind === 'concurrent') this.active = null;
    if (this.db.inTransaction) {
      try {
        this.exec('ROLLBACK');
      } catch (e) {
        this.rollbackAfterFailure(e);
      }
    }
    this.group?.reconcile();
  }

  /** {@link Engine.abandonRealTransaction} once the prepared ROLLBACK failed with `first`. */
  private rollbackAfterFailure(first: unknown): void {
    if (!this.db.inTransaction) return; // it ended the transaction anyway
    try {
      this.db.exec('ROLLBACK');
    } catch {
      // judged by the state below
    }
    if (!this.db.inTransaction) return;
    const cause = fromEngineError(first);
    this.failure = sqliteError(
      `the engine could not roll back a transaction (${cause.message}); every handle of this database now refuses ` +
        'statements, so that none runs inside it: close them all and open the database again',
      cause.code,
      cause,
    );
    throw this.failure;
  }

  /**
   * Called when a statement failed. SQLite rolls the whole real transaction back when a statement
   * fails with an I/O error, a full disk or out of memory, a read another handle ran beside the
   * transaction included. If that happened under a transaction recorded as in the engine, it is
   * not in it any more: it is told ({@link OpenTransaction.realTransactionLost}: a concurrent one
   * is then parked and its log rebuilds it, a pessimistic one ends at its handle's next
   * statement), and a commit group's applied members are pending again.
   */
  checkRealTransaction(cause: unknown): void {
    const a = this.active;
    if (a === null || this.db.inTransaction) return;
    this.active = null;
    a.realTransactionLost(cause);
    this.group?.reconcile();
  }

  /**
   * Runs an undo inside the real transaction (`ROLLBACK TO x; RELEASE x`). If it fails, part of
   * it may have run, so the whole real transaction is ended instead
   * ({@link Engine.abandonRealTransaction}): everything in it is moved out, and rebuilt by replay
   * when needed, rather than left half undone. Returns false when that happened.
   */
  undoOrAbandon(sql: string): boolean {
    try {
      this.exec(sql);
      return true;
    } catch {
      this.abandonRealTransaction();
      return false;
    }
  }

  // ---- rowid reservations ------------------------------------------------------------------

  /**
   * How to give this INSERT an explicit rowid, or null when it is not a single-row
   * `INSERT ... VALUES` into a rowid table that leaves the rowid to SQLite.
   */
  rowidPlan(sql: string): RowidPlan | null {
    let plan = this.rowidPlans.get(sql);
    if (plan === undefined) {
      plan = this.computeRowidPlan(sql);
      this.rowidPlans.set(sql, plan);
    }
    return plan;
  }

  private computeRowidPlan(sql: string): RowidPlan | null {
    const ins: SingleRowInsert | undefined = singleRowInsert(tokenize(sql));
    if (!ins) return null;
    const schema = ins.schema ?? 'main';
    const info = this.statement(`SELECT name, type, pk FROM pragma_table_info(${sqlString(ins.table)}, ${sqlString(schema)})`)
      .execute(this.db, undefined, 'all').rows as { name: string; type: string; pk: number }[];
    if (info.length === 0) return null;
    const target = this.tableOf(schema, ins.table);
    if (!target) return null;
    const pks = info.filter((c) => c.pk > 0);
    const ipk = pks.length === 1 && pks[0]?.type.toUpperCase() === 'INTEGER' ? pks[0].name.toLowerCase() : undefined;
    const names = new Set(info.map((c) => c.name.toLowerCase()));
    if (names.has('rowid')) return null;
    if (ins.columns.some((c) => c === 'rowid' || c === '_rowid_' || c === 'oid' || c === ipk)) return null;
    const withValue = (value: string) =>
      ins.defaults
        ? sql.slice(0, ins.defaults.start) + `(rowid) VALUES (${value})` + sql.slice(ins.defaults.end)
        : sql.slice(0, ins.columnsClose) + ', rowid' + sql.slice(ins.columnsClose, ins.valuesClose) + `, ${value}` + sql.slice(ins.valuesClose);
    const [s, n] = [sqlIdent(schema), sqlIdent(ins.table)];
    const sequence = target.autoincrement
      ? `, coalesce((SELECT max(seq) FROM ${s}.sqlite_sequence WHERE name = ${sqlString(ins.table)} COLLATE NOCASE), 0)`
      : '';
    const floor = `(SELECT max(${ROWID_PARAM}, coalesce((SELECT max(rowid) FROM ${s}.${n}), 0)${sequence}) + 1)`;
    return { table: target.key, sql: withValue(ROWID_PARAM), floorSql: withValue(floor), autoincrement: target.autoincrement };
  }

  /** The rowid table `sql` inserts into, or null (not an INSERT, a view, WITHOUT ROWID, ...). */
  insertTable(sql: string): InsertTable | null {
    let t = this.insertTables.get(sql);
    if (t === undefined) {
      const target = insertTarget(tokenize(sql));
      t = target ? this.tableOf(target.schema ?? 'main', target.table) : null;
      if (this.insertTables.size > 2000) this.insertTables.clear();
      this.insertTables.set(sql, t);
    }
    return t;
  }

  private tableOf(schema: string, table: string): InsertTable | null {
    const ddl = this.statement(`SELECT sql FROM ${sqlIdent(schema)}.sqlite_schema WHERE type = 'table' AND name = ${sqlString(table)} COLLATE NOCASE`)
      .execute(this.db, undefined, 'get').rows?.[0]?.sql as string | undefined;
    if (!ddl || /without\s+rowid/i.test(ddl)) return null;
    return { key: `${schema.toLowerCase()}.${table.toLowerCase()}`, autoincrement: /\bautoincrement\b/i.test(ddl) };
  }

  /** Whether some transaction other than `owner` holds reserved rowids in `table` (O(1)). */
  hasForeignReservations(table: string, owner: object | null): boolean {
    const r = this.reservations.get(table);
    if (!r) return false;
    return r.perOwner.size > (owner !== null && r.perOwner.has(owner) ? 1 : 0);
  }

  /**
   * The highest rowid SQLite would count as used in `table` right now: its largest rowid, and
   * for an AUTOINCREMENT table also `sqlite_sequence` (ids are never reused there).
   */
  usedRowid(table: InsertTable | RowidPlan): bigint {
    const key = 'key' in table ? table.key : table.table;
    let sql = this.usedRowidSql.get(key);
    if (sql === undefined) {
      const [schema, name] = splitTable(key);
      const max = `SELECT max(rowid) FROM ${sqlIdent(schema)}.${sqlIdent(name)}`;
      sql = table.autoincrement
        ? `SELECT max(coalesce((${max}), 0), coalesce((SELECT max(seq) FROM ${sqlIdent(schema)}.sqlite_sequence WHERE name = ${sqlString(name)} COLLATE NOCASE), 0))`
        : max;
      if (this.usedRowidSql.size > 2000) this.usedRowidSql.clear();
      this.usedRowidSql.set(key, sql);
    }
    return this.statement(sql).integer() ?? 0n;
  }

  /** Raises `sqlite_sequence` of an AUTOINCREMENT table to at least `to`. */
  raiseSequence(table: InsertTable, to: bigint): void {
    const [schema, name] = splitTable(table.key);
    const seq = `${sqlIdent(schema)}.sqlite_sequence`;
    const up = this.statement(`UPDATE ${seq} SET seq = ?1 WHERE name = ?2 COLLATE NOCASE AND seq < ?1`).execute(this.db, [to, name], 'run');
    if (up.changes === 0) {
      this.statement(`INSERT INTO ${seq} (name, seq) SELECT ?2, ?1 WHERE NOT EXISTS (SELECT 1 FROM ${seq} WHERE name = ?2 COLLATE NOCASE)`)
        .execute(this.db, [to, name], 'run');
    }
    this.noteChanged([`${schema.toLowerCase()}.sqlite_sequence`]);
  }

  /** The high-water mark of the rowids reserved in `table` (0 when none are). */
  reservedHigh(table: string): bigint {
    return this.reservations.get(table)?.high ?? 0n;
  }

  /** The foreign reservations of `table` in `(low, high]`, for checking an insert's rowids. */
  reservedBetween(table: string, low: bigint, high: bigint, owner: object | null): boolean {
    const r = this.reservations.get(table);
    if (!r) return false;
    for (const [rowid, o] of r.owners) {
      if (o === owner) continue;
      const b = BigInt(rowid);
      if (b > low && b <= high) return true;
    }
    return false;
  }

  /**
   * A rowid above every row in the table, above `sqlite_sequence` for AUTOINCREMENT, and above
   * the reservations' high-water mark: O(1) in the number of reservations. In a striped table
   * (see {@link Engine.rowidLost}) the first such rowid in this process's stripe.
   */
  freeRowid(plan: RowidPlan): number | bigint {
    let max = this.usedRowid(plan);
    const high = this.reservedHigh(plan.table);
    if (high > max) max = high;
    let next = max + 1n;
    if (this.stripedTables.has(plan.table)) {
      // The smallest rowid above `max` in this process's stripe: another process choosing from
      // the same committed state in another stripe never picks the same one.
      const up = next + ((((this.rowidSlot - next) % ROWID_STRIPES) + ROWID_STRIPES) % ROWID_STRIPES);
      if (up <= INT64_MAX) next = up;
    }
    return next <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(next) : next;
  }

  /** Whether this process stripes the rowids it chooses in `table` (see {@link Engine.rowidLost}). */
  stripes(table: string): boolean {
    return this.stripedTables.size > 0 && this.stripedTables.has(table);
  }

  /**
   * A rowid a concurrent transaction of this process was told in `table` was taken by another
   * commit (another process: this process's own choices never collide, see the reservations).
   * From now on this process chooses the rowids of its concurrent transactions' inserts there
   * in its own stripe, so that processes stop colliding; a collision in a table already
   * striped means another process has the same stripe, so this one moves to another.
   */
  rowidLost(table: string): void {
    if (!this.stripedTables.has(table)) this.stripedTables.add(table);
    else this.rowidSlot = (this.rowidSlot + 1n + BigInt(Math.floor(Math.random() * Number(ROWID_STRIPES - 1n)))) % ROWID_STRIPES;
  }

  reserve(table: string, rowid: number | bigint, owner: object): void {
    let r = this.reservations.get(table);
    if (!r) this.reservations.set(table, (r = { owners: new Map(), perOwner: new Map(), high: 0n }));
    const previous = r.owners.get(rowid);
    if (previous === owner) return;
    if (previous !== undefined) this.unreserve(table, rowid, previous);
    r.owners.set(rowid, owner);
    r.perOwner.set(owner, (r.perOwner.get(owner) ?? 0) + 1);
    const b = BigInt(rowid);
    if (b > r.high) r.high = b;
  }

  unreserve(table: string, rowid: number | bigint, owner: object): void {
    const r = this.reservations.get(table);
    if (!r || r.owners.get(rowid) !== owner) return;
    r.owners.delete(rowid);
    const n = (r.perOwner.get(owner) ?? 1) - 1;
    if (n === 0) r.perOwner.delete(owner);
    else r.perOwner.set(owner, n);
    if (r.owners.size === 0) this.reservations.delete(table);
  }

  /** Whether `reads` touches what the active transaction, or a commit group's applied members, wrote. */
  touchesUncommitted(reads: ReadonlySet<string>, active: OpenTransaction): boolean {
    return intersects(reads, active.writes) || (this.group !== undefined && intersects(reads, this.group.pendingWrites));
  }

  /** Whether any reservation exists (cheap guard for the hot path). */
  get hasReservations(): boolean {
    return this.reservations.size > 0;
  }
}

function sqlIdent(s: string): string {
  return `"${s.replace(/"/g, '""')}"`;
}

function sqlString(s: string): string {
  return `'${s.replace(/'/g, "''")}'`;
}

function splitTable(key: string): [string, string] {
  const dot = key.indexOf('.');
  return [key.slice(0, dot), key.slice(dot + 1)];
}
