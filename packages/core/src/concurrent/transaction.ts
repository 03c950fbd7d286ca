/**
 * `BEGIN CONCURRENT`: an optimistic transaction that keeps its state private while other
 * handles use the engine.
 *
 * The engine has one real SQLite transaction at a time. A concurrent transaction lives in it
 * while its handle runs statements; when another handle needs the engine for something that
 * could see or change its uncommitted rows, it is *parked* (rolled back) and later *resumed*:
 * BEGIN, then its logged statements run again. The rule that makes this serializable: a resumed
 * or committing transaction is valid only if re-running its statements shows the application
 * exactly what it was shown before (the same rows from every read, the same `changes`,
 * `lastInsertRowid`, `RETURNING` rows and errors from every write). Then the transaction is
 * equivalent to having run entirely at its commit point. Reads of tables that no commit changed
 * since they were last checked are not run again (per-table commit counters); writes always
 * are, to rebuild the uncommitted state.
 * @module
 */
import { sqliteError, type SqliteError } from '../errors.js';
import type { Engine, HandleState, OpenTransaction } from '../engine/engine.js';
import { ROWID_PARAM } from '../engine/engine.js';
import type { BindParams, Outcome, PreparedSql, RowFormat, Want } from '../engine/execute.js';
import { intersects, UNKNOWN_FOOTPRINT, type Footprint } from '../engine/footprint.js';
import { DIGEST_BLOCK_ROWS, type RowDigest } from '../engine/row-digest.js';
import { addWrittenRowids, spanRange, type WrittenRowidMap } from '../engine/rowid-span.js';
import { laneOf } from '../lane.js';
import { statementKey } from './hot-reads.js';

/** One statement the application ran inside the transaction, and what it was shown. */
export interface LogEntry {
  readonly sql: string;
  readonly params: BindParams | undefined;
  readonly want: Want;
  /** The row format the application was shown (raw arrays, safe integers); replays use it too. */
  readonly format?: RowFormat | undefined;
  /** Refreshed when the schema or a setting changes (see {@link ConcurrentTransaction.refreshFootprints}). */
  footprint: Footprint;
  /**
   * What the connection-state SQL functions answered when it ran (replays answer the same); kept
   * only when its footprint calls them ({@link Footprint.handleState}).
   */
  readonly state?: HandleState | undefined;
  /** Savepoint statements are replayed but show nothing to compare. */
  readonly control: boolean;
  outcome?: Outcome;
  /** For a large read: its rows' digest, compared on replay instead of rows (engine/row-digest.ts). */
  digest?: RowDigest;
  error?: string;
  /** For a single-row INSERT that inserted: replay it with this explicit rowid. */
  rowid?: { table: string; sql: string; value: number | bigint };
}

/**
 * A log entry with every field in place from the start: fields added later (the outcome, a
 * digest, an error) would each grow the object's out-of-object property store.
 */
export function logEntry(
  sql: string,
  params: BindParams | undefined,
  want: Want,
  format: RowFormat | undefined,
  footprint: Footprint,
  control: boolean,
  state: HandleState | undefined,
): LogEntry {
  return { sql, params, want, format, footprint, state, control, outcome: undefined, digest: undefined, error: undefined, rowid: undefined };
}

/** No log entries (shared; never changed: {@link ConcurrentTransaction.record} replaces it). */
const NO_ENTRIES: LogEntry[] = [];

/** No tables (shared; never changed). */
const NO_TABLES: ReadonlySet<string> = new Set();

/** The tables re-run writes may have changed differently, during one resume (a set made on first use). */
interface Rederived {
  tables: Set<string> | undefined;
}

/** An open `BEGIN CONCURRENT` transaction of one handle. */
export class ConcurrentTransaction implements OpenTransaction {
  readonly kind = 'concurrent' as const;
  /**
   * The tables written, set at the first write: a transaction that reads and then awaits (the
   * common shape) keeps no empty set alive across its await. Until a write adds a table the
   * first one did not, this is that statement's footprint set itself (shared, never changed
   * here: {@link ConcurrentTransaction.ownsWritten} is false), so most transactions make no set.
   */
  private written: ReadonlySet<string> | undefined;
  /** Whether {@link ConcurrentTransaction.written} is this transaction's own set (else a footprint's). */
  private ownsWritten = false;
  /**
   * The statements run so far, in order. Replaced, not pushed to, for the first two entries: a
   * push onto an empty array reserves 17 slots, and most transactions log one or two statements.
   */
  private entries: LogEntry[] = NO_ENTRIES;
  /** Every read in the log was valid as of this commit counter. */
  validatedSeq: number;
  /** Rowids this transaction was told by single-row INSERTs (made on first use: most transactions insert none). */
  private reserved: Array<[string, number | bigint]> | undefined;
  /** The engine's schema epoch the log's footprints were learned in. */
  private epoch: number;

  constructor(
    private readonly engine: Engine,
    readonly handleId: number,
  ) {
    engine.concurrentOpen++;
    this.validatedSeq = engine.commitSeq;
    this.epoch = engine.schemaEpoch;
  }

  /** The statements run so far, in order (never changed by the caller). */
  get log(): readonly LogEntry[] {
    return this.entries;
  }

  /** The tables this transaction has written (so far). */
  get writes(): ReadonlySet<string> {
    return this.written ?? NO_TABLES;
  }

  /** True when the transaction has written nothing (so far). */
  get readOnly(): boolean {
    return this.written === undefined;
  }

  /** Adds the tables a logged statement writes to {@link ConcurrentTransaction.writes}. */
  private noteWrites(tables: ReadonlySet<string>): void {
    if (tables.size === 0) return;
    const written = this.written;
    if (written === undefined) {
      this.written = tables;
      return;
    }
    if (written === tables) return;
    let own: Set<string>;
    if (this.ownsWritten) own = written as Set<string>;
    else {
      let added = false;
      for (const t of tables) if (!written.has(t)) added = true;
      if (!added) return;
      own = new Set(written);
      this.written = own;
      this.ownsWritten = true;
    }
    for (const t of tables) own.add(t);
  }

  /**
   * Learns the footprints of the logged statements again after the schema or a setting changed
   * (foreign keys turned on, a trigger created, ...): re-running them may now touch more tables.
   */
  refreshFootprints(): void {
    const engine = this.engine;
    if (this.epoch === engine.schemaEpoch) return;
    // All or nothing: a busy error (the file is locked) leaves the old footprints and the
    // epoch as they were, so that a retry learns them again.
    const learned: Footprint[] = [];
    for (const entry of this.log) {
      if (entry.control) {
        learned.push(entry.footprint);
        continue;
      }
      try {
        learned.push(engine.footprints.of(entry.sql));
      } catch (e) {
        if ((e as SqliteError).kind === 'busy') throw e;
        learned.push(UNKNOWN_FOOTPRINT); // no longer compiles: replay will report it
      }
    }
    // Tables written before stay written: the real transaction may hold their changes now.
    this.log.forEach((entry, i) => {
      entry.footprint = learned[i] as Footprint;
      this.noteWrites(entry.footprint.writes);
    });
    this.epoch = engine.schemaEpoch;
  }

  /** Records a statement the application saw the result of. */
  record(entry: LogEntry): void {
    const log = this.entries;
    if (log.length === 0) this.entries = [entry];
    else if (log.length === 1) this.entries = [log[0] as LogEntry, entry];
    else log.push(entry);
    this.noteWrites(entry.footprint.writes);
    if (entry.rowid) {
      (this.reserved ??= []).push([entry.rowid.table, entry.rowid.value]);
      this.engine.reserve(entry.rowid.table, entry.rowid.value, this);
    }
  }

  /**
   * Brings the transaction back into the engine: BEGIN, then re-run the log and check that the
   * application would have been shown the same. The engine must be free (nothing active).
   * Throws BusyError `SQLITE_BUSY_SNAPSHOT` (after ending the transaction) on a conflict, or
   * `SQLITE_BUSY` (the transaction stays parked) when the file is locked by another process.
   * `within`: replay inside the real transaction that is open now (a commit group's savepoint,
   * see commit-group.ts) instead of a BEGIN of its own; on failure the caller undoes its part.
   */
  resume(within = false): void {
    const engine = this.engine;
    if (!within) engine.exec('BEGIN');
    engine.active = this;
    const caller = engine.caller;
    try {
      engine.checkExternalChanges();
      this.refreshFootprints();
      const rederived: Rederived = { tables: undefined };
      for (const entry of this.log) this.replay(entry, rederived);
    } catch (e) {
      engine.active = null;
      if (!within) engine.abandonRealTransaction();
      throw e;
    } finally {
      engine.caller = caller;
    }
    this.validatedSeq = engine.commitSeq;
  }

  /**
   * Checks a read-only transaction's reads without moving it into the engine (they depend on
   * committed state only). The caller guarantees that the active transaction, if any, wrote
   * none of the tables read.
   */
  validateReads(): void {
    const engine = this.engine;
    const caller = engine.caller;
    try {
      engine.checkExternalChanges();
      this.refreshFootprints();
      for (const entry of this.log) if (!entry.control) this.replay(entry, undefined);
    } finally {
      engine.caller = caller;
    }
    this.validatedSeq = engine.commitSeq;
  }

  /**
   * Whether this transaction's logged reads of `tables` would show what they showed if run now,
   * on top of the engine's active transaction (another handle's, which wrote `tables`): the
   * priority lane's test of whether that transaction's commit would make this one conflict.
   * Only reads are run; `false` (unsure) when one of them follows this transaction's own
   * write of a table it reads, is kept as a digest, failed, or is not deterministic, or when a
   * write of this transaction reads `tables` (its outcome could change and cannot be re-run there).
   */
  readsSameOnTop(tables: ReadonlySet<string>): boolean {
    const engine = this.engine;
    const written = new Set<string>();
    const caller = engine.caller;
    try {
      for (const entry of this.log) {
        if (entry.control) return false;
        const fp = entry.footprint;
        if (!intersects(fp.reads, tables)) {
          for (const t of fp.writes) written.add(t);
          continue;
        }
        if (!fp.readonly || !fp.deterministic || entry.digest || entry.error !== undefined || intersects(fp.reads, written)) return false;
        if (fp.handleState === true && !entry.state) return false; // its state was not kept (see replay)
        if (entry.state) {
          engine.caller = entry.state;
          engine.primeLastInsertRowid(fp, entry.state);
        }
        const now = engine.statement(entry.sql).execute(engine.db, entry.params, entry.want, entry.format);
        if (describeDifference(entry.outcome as Outcome, now) !== undefined) return false;
      }
      return true;
    } catch (e) {
      // A read that failed may have ended the real transaction (an I/O error): then the
      // transaction in the engine is parked, not active, and its commit brings it back.
      engine.checkRealTransaction(e);
      return false;
    } finally {
      engine.caller = caller;
    }
  }

  /** Parked by the engine (see Engine.checkRealTransaction): its log rebuilds it when its handle needs it. */
  realTransactionLost(): void {}

  /** The tables this transaction read, for deciding whether it may validate in place. */
  readTables(): Set<string> {
    const out = new Set<string>();
    for (const e of this.log) for (const t of e.footprint.reads) out.add(t);
    return out;
  }

  /**
   * For the tables this transaction wrote, the rowids of the only rows it changed, where every
   * write to the table proves them (engine/rowid-span.ts); other tables map to `null` (any row).
   */
  writtenRowids(): WrittenRowidMap {
    const into: WrittenRowidMap = new Map();
    for (const e of this.log) {
      if (e.control || e.footprint.readonly) continue;
      // An insert replayed with an explicit rowid runs other SQL: its rows are not proven.
      addWrittenRowids(e.footprint.writes, e.rowid ? undefined : e.footprint.rowids, e.params, into);
    }
    return into;
  }

  /**
   * Tells the engine what this transaction's commit changed (see Engine.noteChanged): when one
   * statement made every write (the common case), straight from its parameters.
   */
  noteCommitted(): void {
    const only = this.onlyWrite();
    // Only when its tables are all the transaction wrote (refreshed footprints may have moved).
    if (only !== undefined && this.written === only.footprint.writes) this.engine.noteWrite(only.footprint, only.params);
    else this.engine.noteChanged(this.writes, this.writtenRowids());
  }

  /** The one write statement of the log, when there is exactly one and it was not replayed with an explicit rowid. */
  private onlyWrite(): LogEntry | undefined {
    let only: LogEntry | undefined;
    for (const e of this.log) {
      if (e.control || e.footprint.readonly) continue;
      if (only !== undefined || e.rowid) return undefined;
      only = e;
    }
    return only;
  }

  /** Releases the transaction's rowid reservations and its place in the engine's counters. */
  end(): void {
    if (this.reserved !== undefined) {
      for (const [table, rowid] of this.reserved) this.engine.unreserve(table, rowid, this);
      this.reserved = undefined;
    }
    if (--this.engine.concurrentOpen === 0) this.engine.forgetCounters();
  }

  /**
   * Re-runs one logged statement and compares what it shows. `rederived` (rebuilding the
   * transaction's state; undefined when only validating reads) collects the tables written by
   * re-run writes whose effect may differ from the first run: a write whose inputs changed
   * (a table it reads, triggers and foreign keys included, was committed to, or was itself
   * re-derived) or that calls a non-deterministic function. A later read of such a table is
   * re-checked even when no commit touched it: the write may have put different values there.
   */
  private replay(entry: LogEntry, rederived: Rederived | undefined): void {
    const engine = this.engine;
    if (entry.control) {
      engine.exec(entry.sql);
      return;
    }
    const fp = entry.footprint;
    const inputsChanged =
      (fp.readonly ? this.readChanged(entry) : engine.changedSince(fp.reads, this.validatedSeq)) ||
      (rederived?.tables !== undefined && intersects(fp.reads, rederived.tables));
    if (fp.readonly) {
      if (!inputsChanged) return;
    } else {
      if (rederived === undefined) return;
      if (inputsChanged || !fp.deterministic) {
        const tables = (rederived.tables ??= new Set());
        for (const t of fp.writes) tables.add(t);
      }
    }
    const rowid = entry.rowid;
    if (rowid && engine.changedSince(fp.writes, this.validatedSeq) && engine.rowidTaken(rowid.table, rowid.value)) {
      // Another commit (another process's, or an explicit rowid) took the rowid this insert was
      // told: replaying it would fail, or, as REPLACE or an upsert, overwrite that row.
      if (engine.isFile) engine.rowidLost(rowid.table);
      throw this.conflict(entry, `was told rowid ${String(rowid.value)}, which a commit has taken since`);
    }
    let outcome: Outcome | undefined;
    let differsAt = -1;
    if (entry.state) engine.caller = entry.state;
    else if (fp.handleState === true) {
      // Logged before a schema change made it call changes() or last_insert_rowid() (a new
      // trigger): the handle's state then was not kept, so it cannot be re-run faithfully.
      throw this.conflict(entry, 'now depends on the handle state (changes(), last_insert_rowid()) after a schema change');
    }
    try {
      // Preparing can fail too, when a schema change removed what the statement used.
      let stmt: PreparedSql;
      let params = entry.params;
      if (entry.rowid) {
        stmt = engine.statement(entry.rowid.sql);
        params = withRowid(stmt, entry.params, entry.rowid.value);
      } else {
        stmt = engine.statement(entry.sql);
      }
      if (entry.state) engine.primeLastInsertRowid(entry.footprint, entry.state);
      if (entry.digest) differsAt = stmt.matchesDigest(params, entry.digest);
      else outcome = stmt.execute(engine.db, params, entry.want, entry.format);
    } catch (e) {
      const err = e as SqliteError;
      // A lock, or the disk or memory failing, is not a conflict: the transaction stays parked.
      if (err.kind === 'busy' || isEnvironmentFailure(err)) throw err;
      if (entry.error === err.message) return;
      throw this.conflict(entry, `now fails with "${err.message}"`);
    }
    if (entry.error !== undefined) throw this.conflict(entry, `no longer fails with "${entry.error}"`);
    if (entry.digest) {
      if (differsAt < 0) return;
      const from = Math.max(1, differsAt - DIGEST_BLOCK_ROWS + 1);
      throw this.conflict(entry, `returned ${entry.digest.count} rows and would now return different ones (compared by digest: the first difference is in rows ${from} to ${differsAt + 1})`);
    }
    const before = entry.outcome as Outcome;
    const diff = describeDifference(before, outcome as Outcome);
    if (diff) throw this.conflict(entry, diff);
  }

  /**
   * Whether a commit since the last validation may have changed what a logged read saw: a row of
   * a table it read, or, where its bytecode proves the read sees only a rowid span of a table
   * (engine/rowid-span.ts), a row in that span.
   */
  private readChanged(entry: LogEntry): boolean {
    const engine = this.engine;
    const fp = entry.footprint;
    const spans = fp.rowids?.reads;
    if (spans === undefined) return engine.changedSince(fp.reads, this.validatedSeq);
    // Spans are only learned where every table read is known (no ALL_TABLES): each table's own
    // counter is checked first by rowsChangedSince.
    for (const t of fp.reads) {
      const span = spans.get(t);
      if (engine.rowsChangedSince(t, this.validatedSeq, span && spanRange(span, entry.params))) return true;
    }
    return false;
  }

  private conflict(entry: LogEntry, what: string): SqliteError {
    const key = statementKey(entry.sql, entry.params);
    if (key !== undefined) laneOf(this.engine).hot.touch(key, performance.now());
    const tables = [...entry.footprint.reads].map((t) => t.replace(/^main\./, '')).join(', ');
    return sqliteError(
      `BEGIN CONCURRENT transaction of handle #${this.handleId} conflicted with a commit that happened after it began: ` +
        `${entry.footprint.readonly ? 'a read' : 'a write'} of ${tables || 'the database'} (${abbreviate(entry.sql)}) ${what}. ` +
        'The transaction was rolled back; run it again.',
      'SQLITE_BUSY_SNAPSHOT',
    );
  }
}

/** An I/O error, a full disk or out of memory: a failure of the machine, not of the statement. */
function isEnvironmentFailure(err: SqliteError): boolean {
  const code = String(err.code);
  return code.startsWith('SQLITE_IOERR') || code === 'SQLITE_FULL' || code === 'SQLITE_NOMEM';
}

/** Adds the explicit rowid to a statement's parameters. */
export function withRowid(stmt: PreparedSql, params: BindParams | undefined, rowid: number | bigint): BindParams {
  if (params !== null && typeof params === 'object' && !Array.isArray(params) && !(params instanceof Uint8Array)) {
    return { ...(params as Record<string, never>), [ROWID_PARAM]: rowid } as BindParams;
  }
  const index = stmt.parameterIndex(ROWID_PARAM);
  const list: unknown[] = Array.isArray(params) ? [...(params as unknown[])] : params === undefined ? [] : [params];
  while (list.length < index - 1) list.push(null);
  list[index - 1] = rowid;
  return list as BindParams;
}

/** A copy of an outcome that shares nothing mutable with the one handed to the application. */
export function privateCopy(out: Outcome): Outcome {
  if (out.rows === undefined || out.rows.length === 0) return out.rows === undefined ? out : { ...out, rows: [] };
  const rows = new Array<Record<string, unknown>>(out.rows.length);
  for (let i = 0; i < rows.length; i++) {
    const row = out.rows[i] as Record<string, unknown>;
    const copy: Record<string, unknown> = {};
    for (const k in row) {
      const v = row[k];
      copy[k] = v instanceof Uint8Array ? v.slice() : v;
    }
    rows[i] = copy;
  }
  return { rows, changes: out.changes, insertedRowid: out.insertedRowid };
}

function describeDifference(a: Outcome, b: Outcome): string | undefined {
  if (a.rows || b.rows) {
    const ra = a.rows ?? [];
    const rb = b.rows ?? [];
    const n = Math.max(ra.length, rb.length);
    for (let i = 0; i < n; i++) {
      if (!sameRow(ra[i], rb[i])) {
        return `returned ${show(ra[i])} as row ${i + 1} and would now return ${show(rb[i])}`;
      }
    }
  }
  if (a.changes !== b.changes) return `changed ${a.changes} row(s) and would now change ${b.changes}`;
  if (a.insertedRowid !== b.insertedRowid && String(a.insertedRowid) !== String(b.insertedRowid)) {
    return `inserted rowid ${String(a.insertedRowid)} and would now insert ${String(b.insertedRowid)}`;
  }
  return undefined;
}

function sameRow(a: Record<string, unknown> | undefined, b: Record<string, unknown> | undefined): boolean {
  if (a === undefined || b === undefined) return a === b;
  const ka = Object.keys(a);
  if (ka.length !== Object.keys(b).length) return false;
  for (const k of ka) {
    const x = a[k];
    const y = b[k];
    if (x === y) continue;
    if (x instanceof Uint8Array && y instanceof Uint8Array) {
      if (x.length !== y.length) return false;
      for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return false;
      continue;
    }
    if (typeof x === 'number' && typeof y === 'number' && Number.isNaN(x) && Number.isNaN(y)) continue;
    return false;
  }
  return true;
}

function show(row: Record<string, unknown> | undefined): string {
  if (row === undefined) return 'no row';
  const s = JSON.stringify(row, (_k, v) =>
    typeof v === 'bigint' ? `${v}n` : v instanceof Uint8Array ? `<${v.length} bytes>` : v,
  );
  return s.length > 200 ? `${s.slice(0, 200)}...` : s;
}

function abbreviate(sql: string): string {
  const s = sql.replace(/\s+/g, ' ').trim();
  return s.length > 120 ? `${s.slice(0, 120)}...` : s;
}
