/**
 * Group commit: the COMMITs of `transaction()` calls (concurrent mode, file databases) that
 * become ready close together share one real SQLite transaction and so one set of fsyncs.
 *
 * A committing transaction joins its engine's pending group; the group is flushed after the
 * window (default: the same turn of the event loop, `setImmediate`) or at once when it reaches
 * the cap. A member that joins while it is in the engine stays applied there (uncommitted) until
 * the flush, and other concurrent transactions run on top of the applied members in a savepoint
 * (see {@link CommitGroup}). The flush, synchronously: the applied members are there, valid, in
 * order; then BEGIN if none is, and each other member in turn inside a SAVEPOINT: brought in by
 * replaying its log, which is its validation against the state that includes every earlier
 * member. A member that conflicts is rolled back to its savepoint and fails alone
 * (`SQLITE_BUSY_SNAPSHOT`, its retry loop runs it again); the others are RELEASEd, then one COMMIT
 * makes them all durable, and only then do their promises resolve, in the order of application.
 * So the serial order is the order of application, and a crash loses only members whose promises
 * had not resolved. When the shared COMMIT fails (a deferred foreign key, a busy or I/O error)
 * the group is rolled back and every member commits alone, as it would have without grouping, so
 * only a bad member fails.
 * @module
 */
import type { ConcurrentTransaction } from './concurrent/transaction.js';
import type { Connection } from './connection.js';
import type { Engine, GroupHooks } from './engine/engine.js';
import { errorKind, misuseError, sqliteError, type SqliteError } from './errors.js';
import type { Session } from './session.js';

/** Options of group commit (`open(path, { groupCommit })`). */
export interface GroupCommitOptions {
  /**
   * How long, in ms, a committing transaction waits for others to join its group. Default 0:
   * the group is flushed once the current turn of the event loop is over (`setImmediate`), so a
   * lone commit is delayed by one turn only.
   */
  window?: number;
  /** The most transactions in one group; a full group is flushed at once. Default 64. */
  cap?: number;
}

/** Resolved settings of one engine's group commit (`false`: off). */
type Settings = Required<GroupCommitOptions> | false;

/** The defaults (see {@link GroupCommitOptions}). */
const DEFAULTS: Required<GroupCommitOptions> = Object.freeze({ window: 0, cap: 64 });

/**
 * Checks the `groupCommit` option of `open()`: `undefined` or `true` (the defaults), `false`
 * (off), or an object of {@link GroupCommitOptions}. Throws kind `misuse` for anything else.
 */
export function groupCommitOption(value: unknown): Settings {
  if (value === undefined || value === true) return DEFAULTS;
  if (value === false) return false;
  if (value === null || typeof value !== 'object') {
    throw misuseError('open(): groupCommit must be true, false or an object { window?, cap? }');
  }
  const { window = DEFAULTS.window, cap = DEFAULTS.cap } = value as GroupCommitOptions;
  if (typeof window !== 'number' || !(window >= 0) || window > 1000) {
    throw misuseError(`open(): groupCommit.window must be a number of milliseconds from 0 to 1000; got ${String(window)}`);
  }
  if (typeof cap !== 'number' || !Number.isInteger(cap) || cap < 1) {
    throw misuseError(`open(): groupCommit.cap must be an integer >= 1; got ${String(cap)}`);
  }
  return { window, cap };
}

/** Whether two settings are the same (an engine is configured once, by its first `open()`). */
export function sameGroupCommit(a: Settings, b: Settings): boolean {
  return a === b || (a !== false && b !== false && a.window === b.window && a.cap === b.cap);
}

/** One transaction waiting in a group. */
interface Member {
  readonly session: Session;
  readonly tx: ConcurrentTransaction;
  /** Whether it may commit in the group now (false: the priority lane holds it back). */
  readonly mayGroup: () => boolean;
  /** Commits it alone, as without grouping (the caller's own COMMIT path with its waits). */
  readonly alone: () => Promise<void> | undefined;
  readonly resolve: () => void;
  readonly reject: (e: unknown) => void;
}

/** Counters of one engine's group commits, for tests and benchmarks. */
export interface GroupCommitStats {
  /** Groups flushed with a shared COMMIT that succeeded. */
  groups: number;
  /** Transactions committed in those groups. */
  committed: number;
  /** Members that conflicted inside a group (failed alone). */
  conflicts: number;
  /** Members sent to commit alone (a group of one, the lane, a failed shared COMMIT, ...). */
  alone: number;
  /** Times a transaction was brought in on top of a pending group's members (no fsync to move it out). */
  stacked: number;
  /**
   * Times the real transaction holding applied members was committed by something other than
   * the group (they were then resolved as committed, not replayed). 0 unless there is a bug:
   * tests assert it.
   */
  outside: number;
}

const SAVEPOINT = 'siblite_group_member';
/** The savepoint a concurrent transaction runs in on top of a group's pending members. */
const TOP = 'siblite_group_top';

/**
 * One engine's commit group. Members that join while they are in the engine stay there,
 * *pending* (applied in the open real transaction, not committed), instead of being rolled back
 * when another handle writes: another concurrent transaction runs on top of them inside the
 * savepoint {@link TOP} (it is validated against a state that includes them, as it will be at
 * its own commit, which comes after theirs), and moving it out is a `ROLLBACK TO`, which costs no
 * fsync, where a ROLLBACK of the whole transaction does. Anything else that needs the engine
 * (an autocommit statement, a pessimistic transaction, a setting, the file hand-over) first
 * rolls them back ({@link CommitGroup.settle}; they are replayed at the flush, as parked members
 * are), so nothing outside the group ever sees a pending member's uncommitted rows.
 */
class CommitGroup implements GroupHooks {
  private pending: Member[] = [];
  private scheduled = false;
  /** Members applied in the engine's real transaction, in order (see the class documentation). */
  private applied: Member[] = [];
  /** The concurrent transaction running on top of {@link CommitGroup.applied}, in savepoint TOP. */
  private top: ConcurrentTransaction | null = null;
  /** The tables the applied members wrote. */
  pendingWrites = new Set<string>();
  /**
   * Whether a transaction has run on top of the applied members since they were applied: it was
   * validated against their uncommitted rows, so if they do not commit, the tables they wrote
   * must count as changed (it re-checks what it read of them).
   */
  private readOnTop = false;
  /** The engine's {@link Engine.realSerial} of the real transaction the members are applied in. */
  private appliedIn = 0;
  readonly stats: GroupCommitStats = { groups: 0, committed: 0, conflicts: 0, alone: 0, stacked: 0, outside: 0 };

  constructor(
    private readonly engine: Engine,
    readonly settings: Required<GroupCommitOptions>,
  ) {
    engine.group = this;
  }

  join(m: Omit<Member, 'resolve' | 'reject'>): Promise<void> {
    let member: Member | undefined;
    const session = m.session;
    const promise = new Promise<void>((resolve, reject) => {
      // Until the member settles, its handle refuses statements (see Session.commitPending).
      member = {
        ...m,
        resolve: () => {
          session.commitPending = false;
          resolve();
        },
        reject: (e: unknown) => {
          session.commitPending = false;
          reject(e);
        },
      };
    });
    this.keepApplied(member as Member);
    this.pending.push(member as Member);
    session.commitPending = true;
    if (this.pending.length >= this.settings.cap) this.flush();
    else if (!this.scheduled) {
      this.scheduled = true;
      if (this.settings.window > 0) setTimeout(() => this.flush(), this.settings.window);
      else setImmediate(() => this.flush());
    }
    return promise;
  }

  /** A member that is in the engine now stays applied there until the flush. */
  private keepApplied(m: Member): void {
    const engine = this.engine;
    this.reconcile();
    if (engine.active !== m.tx || !engine.inRealTransaction) return;
    if (this.applied.length === 0) {
      if (this.top !== null) return; // cannot happen: a top needs applied members below it
    } else {
      if (this.top !== m.tx) return;
      this.top = null;
      try {
        engine.exec(`RELEASE ${TOP}`);
      } catch (e) {
        // Part of the group's state may be gone: end it all, the members are pending and replayed at the flush.
        engine.abandonRealTransaction();
        throw e;
      }
    }
    m.tx.refreshFootprints();
    if (this.applied.length === 0) this.appliedIn = engine.realSerial;
    this.applied.push(m);
    for (const t of m.tx.writes) this.pendingWrites.add(t);
    // Transactions validated before must re-check what they read of these tables.
    engine.noteChanged(m.tx.writes);
  }

  /** Commits the pending members (see the module documentation). Never throws. */
  flush(): void {
    this.scheduled = false;
    // The real transaction may have ended since the members were applied (see reconcile):
    // without this, dropping the top savepoint below threw 'no such savepoint' out of the timer.
    this.reconcile();
    const members = this.pending;
    if (members.length === 0) return;
    this.pending = [];
    const ready: Member[] = [];
    const alone: Member[] = [];
    for (const m of members) (m.session.tx === m.tx && m.mayGroup() ? ready : alone).push(m);
    // An applied member that must commit alone (the lane holds it back): undo them all first.
    if (this.applied.some((m) => !ready.includes(m))) this.undoApplied();
    if (ready.length < 2 || this.engine.active?.kind === 'pessimistic') {
      this.leaveForAlone();
      this.commitAlone(members);
      return;
    }
    let committed: Member[];
    try {
      committed = (ready[0] as Member).session.withFile(() => this.applyAll(ready));
    } catch {
      // The group could not be built or committed (a lock, an I/O error, a constraint checked at
      // COMMIT): it was rolled back, and each member commits alone, so only a bad one fails.
      this.commitAlone([...alone, ...ready.filter((m) => m.session.tx === m.tx)]);
      return;
    }
    this.finish(committed, alone);
  }

  private finish(committed: Member[], alone: Member[]): void {
    this.stats.groups++;
    this.stats.committed += committed.length;
    for (const m of committed) m.resolve();
    this.commitAlone(alone);
  }

  /**
   * BEGIN (unless members are applied already), each other member in its savepoint, COMMIT.
   * Returns the members committed; a conflicting member is ended and rejected here. On any other
   * failure everything is rolled back (the members stay open, parked) and the error thrown.
   */
  private applyAll(ready: Member[]): Member[] {
    const engine = this.engine;
    this.reconcile();
    let ok: Member[] = [];
    try {
      // Dropping the top may fail and end the real transaction, members applied below it included.
      this.dropTop();
      ok = [...this.applied];
      if (ok.length === 0) {
        // A lone member in the engine is valid as it stands: it goes first.
        const lead = ready.find((m) => engine.active === m.tx);
        if (lead) {
          lead.tx.refreshFootprints();
          ok.push(lead);
          engine.noteChanged(lead.tx.writes);
        } else {
          engine.park();
          engine.exec('BEGIN');
        }
      }
      for (const m of ready) {
        if (ok.includes(m)) continue;
        engine.exec(`SAVEPOINT ${SAVEPOINT}`);
        try {
          m.tx.resume(true);
        } catch (e) {
          if (errorKind(e) !== 'busy_snapshot' || !engine.inRealTransaction) throw e;
          // If the undo fails, the members before this one went with the real transaction.
          if (!engine.undoOrAbandon(`ROLLBACK TO ${SAVEPOINT}; RELEASE ${SAVEPOINT}`)) throw e;
          this.stats.conflicts++;
          m.session.abortGroupMember(m.tx, e as SqliteError);
          m.reject(e);
          continue;
        }
        engine.exec(`RELEASE ${SAVEPOINT}`);
        engine.noteChanged(m.tx.writes);
        ok.push(m);
      }
      engine.active = null;
      if (ok.length > 0) engine.exec('COMMIT');
      else engine.abandonRealTransaction();
    } catch (e) {
      // Rolled back: transactions validated on top of the members re-check what they read of them.
      this.undoApplied(ready);
      throw e;
    }
    this.forgetApplied();
    for (const m of ok) m.session.endGroupMember(m.tx);
    return ok;
  }

  // ---- GroupHooks: what the engine and the sessions call --------------------------------------

  settle(): boolean {
    this.reconcile();
    if (this.applied.length === 0) return false;
    // Something outside the group needs the engine: the applied members step out (they stay
    // pending and are replayed at the flush). Committing them here, inside another handle's
    // statement, would commit them before that statement while their promises resolve after it.
    this.undoApplied();
    return true;
  }

  stack(tx: ConcurrentTransaction): boolean {
    const engine = this.engine;
    this.reconcile();
    if (this.applied.length === 0) return false;
    if (this.applied.some((m) => m.tx === tx)) {
      // A pending member's own handle runs a statement again: undo the group (its members come
      // back by replay at the flush) and let the usual path bring this one in.
      this.undoApplied();
      return false;
    }
    this.dropTop();
    // Dropping the top failed and ended the real transaction: nothing to stack on.
    if (this.applied.length === 0) return false;
    engine.exec(`SAVEPOINT ${TOP}`);
    try {
      tx.resume(true);
    } catch (e) {
      if (engine.inRealTransaction) {
        engine.active = this.lastApplied();
        engine.undoOrAbandon(`ROLLBACK TO ${TOP}; RELEASE ${TOP}`);
      } else this.forgetApplied(); // the replay ended the whole transaction (OR ROLLBACK)
      throw e;
    }
    this.top = tx;
    this.readOnTop = true;
    this.stats.stacked++;
    return true;
  }

  release(tx: ConcurrentTransaction): void {
    this.reconcile();
    if (this.top === tx) this.dropTop();
    else if (this.applied.some((m) => m.tx === tx)) this.undoApplied();
    // A pending member's transaction ends before its commit (its handle was closed).
    const i = this.pending.findIndex((m) => m.tx === tx);
    if (i >= 0) {
      const [m] = this.pending.splice(i, 1) as [Member];
      m.reject(sqliteError(`Handle #${m.session.id} was closed before its group commit: its transaction was rolled back`, 'SIBLITE_CLOSED'));
    }
  }

  isTop(tx: ConcurrentTransaction): boolean {
    return this.top === tx;
  }

  // ---- helpers --------------------------------------------------------------------------------

  /** Moves the transaction on top out of the engine (`ROLLBACK TO`, no fsync): it is parked. */
  private dropTop(): void {
    if (this.top === null) return;
    const engine = this.engine;
    // Parked before the undo runs: should it fail half way, the top must not be taken for active.
    this.top = null;
    engine.active = this.lastApplied();
    engine.undoOrAbandon(`ROLLBACK TO ${TOP}; RELEASE ${TOP}`);
  }

  /**
   * Rolls the applied members back (they stay pending, parked, and are replayed at the flush);
   * the tables they wrote, and those of `alsoIn` (members brought into the real transaction by
   * a flush that failed), count as changed.
   */
  private undoApplied(alsoIn: readonly Member[] = []): void {
    const engine = this.engine;
    engine.active = null;
    const writes = new Set(this.pendingWrites);
    for (const m of alsoIn) for (const t of m.tx.writes) writes.add(t);
    this.forgetApplied();
    try {
      engine.abandonRealTransaction();
    } finally {
      // The rows they wrote are back as they were: whoever validated on top of them re-checks.
      engine.noteChanged(writes);
    }
  }

  /**
   * Before members commit alone: a lone applied member stays active (its own COMMIT commits it),
   * unless a transaction ran on top of it: that one read its uncommitted rows, and a COMMIT of
   * the member that then failed would roll them back unseen (it is rolled back too, and
   * commits alone by replay, its tables counted as changed).
   */
  private leaveForAlone(): void {
    if (this.applied.length === 0) return;
    this.dropTop();
    if (this.applied.length > 1 || this.readOnTop) this.undoApplied();
    else this.forgetApplied();
  }

  /**
   * Makes the group's state match the engine when the real transaction its members were applied
   * in is no longer the one open (checked by the engine's serials, see Engine.realSerial). A
   * statement of the transaction on top may have ended it (`OR ROLLBACK`): the members are parked
   * and replayed at the flush. If a COMMIT ended it (nothing but the group should, but a member
   * must never be replayed onto a commit that already holds it: that would commit it twice), the
   * members are durable: they are ended as committed and resolved now.
   */
  reconcile(): void {
    if (this.applied.length === 0) return;
    const engine = this.engine;
    if (engine.inRealTransaction && engine.realSerial === this.appliedIn) return;
    const applied = this.applied;
    const writes = [...this.pendingWrites];
    this.forgetApplied();
    if (engine.active !== null && engine.active.kind === 'concurrent' && !engine.inRealTransaction) engine.active = null;
    if (engine.committedSerial === this.appliedIn) {
      this.stats.outside++;
      for (const m of applied) {
        const i = this.pending.indexOf(m);
        if (i < 0) continue;
        this.pending.splice(i, 1);
        if (m.session.tx === m.tx) m.session.endGroupMember(m.tx);
        this.stats.committed++;
        m.resolve();
      }
    }
    engine.noteChanged(writes);
  }

  private forgetApplied(): void {
    this.applied = [];
    this.top = null;
    this.readOnTop = false;
    // A new set, not clear(): V8's clear() of a long-lived set costs about 0.6 µs.
    if (this.pendingWrites.size > 0) this.pendingWrites = new Set();
  }

  private lastApplied(): ConcurrentTransaction | null {
    return this.applied.length > 0 ? (this.applied[this.applied.length - 1] as Member).tx : null;
  }

  private commitAlone(members: readonly Member[]): void {
    for (const m of members) {
      this.stats.alone++;
      Promise.resolve()
        .then(() => {
          // The member's own COMMIT path runs its handle's COMMIT: no longer refused.
          m.session.commitPending = false;
          return m.alone();
        })
        .then(m.resolve, m.reject);
    }
  }
}

const groups = new WeakMap<Engine, CommitGroup>();

/** Turns group commit on (with `settings`) or off for `engine`; called once, by `open()`. */
export function configureGroupCommit(engine: Engine, settings: Settings): void {
  if (settings === false) groups.delete(engine);
  else groups.set(engine, new CommitGroup(engine, settings));
}

/** The group-commit settings of `engine` (`false`: off). */
export function groupCommitSettings(engine: Engine): Settings {
  return groups.get(engine)?.settings ?? false;
}

/**
 * The counters of the group commits of `conn`'s database in this process (all 0 when it does not
 * group commits), for tests and monitoring.
 */
export function groupCommitStats(conn: Connection): GroupCommitStats {
  return { ...(groups.get(conn.session.engine)?.stats ?? { groups: 0, committed: 0, conflicts: 0, alone: 0, stacked: 0, outside: 0 }) };
}

/**
 * Commits the open concurrent transaction of `session` in its engine's group. Returns
 * `undefined` when grouping does not apply (group commit off or an in-memory database, a
 * read-only transaction, which needs no durable commit, or a transaction that is not
 * concurrent): the caller then commits alone. Else the promise resolves once the group's COMMIT
 * is durable, or rejects with this transaction's own error; `alone` is how the caller commits
 * alone, used when the group cannot take the transaction.
 */
export function joinCommitGroup(
  session: Session,
  mayGroup: () => boolean,
  alone: () => Promise<void> | undefined,
): Promise<void> | undefined {
  const group = groups.get(session.engine);
  const tx = session.tx;
  if (group === undefined || tx === null || tx.kind !== 'concurrent' || tx.readOnly) return undefined;
  return group.join({ session, tx, mayGroup, alone });
}

/**
 * Commits `conn`'s open transaction and resolves once it is durable. A `BEGIN CONCURRENT`
 * transaction on a file database shares its COMMIT with the other transactions that commit in
 * the same turn of the event loop (group commit, see `open()`'s `groupCommit`); anything else
 * commits at once, exactly as `conn.exec('COMMIT')`. Rejects as COMMIT throws: `BusyError`
 * `SQLITE_BUSY_SNAPSHOT` after a conflict (the transaction is then rolled back), `SQLITE_BUSY`
 * when a lock is in the way (the transaction stays open: commit again later). Until the promise
 * settles, `conn` refuses every statement with kind `misuse` (changing nothing), `COMMIT` and
 * `ROLLBACK` included; closing it rolls the transaction back and rejects with kind `closed`. Use
 * it where a hand-written `BEGIN CONCURRENT` ends; `transaction()` does this by itself.
 */
export function commitAsync(conn: Connection): Promise<void> {
  const alone = (): undefined => {
    conn.exec('COMMIT');
    return undefined;
  };
  try {
    return joinCommitGroup(conn.session, () => true, alone) ?? Promise.resolve(alone());
  } catch (e) {
    return Promise.reject(e);
  }
}
