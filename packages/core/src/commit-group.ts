/**
 * Group commit: the COMMITs of `transaction()` calls (concurrent mode, file databases) that
 * become ready close together share one real SQLite transaction and so one set of fsyncs.
 *
 * A committing transaction joins its engine's pending group; the group is flushed after the
 * window (default: the same turn of the event loop, `setImmediate`) or at once when it reaches
 * the cap. The flush, synchronously: takes the engine (a non-member's concurrent transaction is
 * parked), BEGIN, then each member in turn inside a SAVEPOINT: brought in by replaying its log,
 * which is its validation against the state that includes every earlier member (a member that
 * is already active in the engine is valid as it stands and goes first). A member that conflicts
 * is rolled back to its savepoint and fails alone (`SQLITE_BUSY_SNAPSHOT`, its retry loop runs it
 * again); the others are RELEASEd, then one COMMIT makes them all durable, and only then do their
 * promises resolve. So the serial order is the order of application, and a crash loses only
 * members whose promises had not resolved. When the shared COMMIT fails (a deferred foreign key,
 * a busy or I/O error) the group is rolled back and every member commits alone, as it would have
 * without grouping, so only a bad member fails.
 * @module
 */
import type { ConcurrentTransaction } from './concurrent/transaction.js';
import type { Connection } from './connection.js';
import type { Engine } from './engine/engine.js';
import { errorKind, misuseError, type SqliteError } from './errors.js';
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
}

const SAVEPOINT = 'siblite_group_member';

class CommitGroup {
  private pending: Member[] = [];
  private scheduled = false;
  readonly stats: GroupCommitStats = { groups: 0, committed: 0, conflicts: 0, alone: 0 };

  constructor(
    private readonly engine: Engine,
    readonly settings: Required<GroupCommitOptions>,
  ) {}

  join(m: Omit<Member, 'resolve' | 'reject'>): Promise<void> {
    const promise = new Promise<void>((resolve, reject) => this.pending.push({ ...m, resolve, reject }));
    if (this.pending.length >= this.settings.cap) this.flush();
    else if (!this.scheduled) {
      this.scheduled = true;
      if (this.settings.window > 0) setTimeout(() => this.flush(), this.settings.window);
      else setImmediate(() => this.flush());
    }
    return promise;
  }

  /** Commits the pending members (see the module documentation). Never throws. */
  flush(): void {
    this.scheduled = false;
    const members = this.pending;
    if (members.length === 0) return;
    this.pending = [];
    const engine = this.engine;
    const ready: Member[] = [];
    const alone: Member[] = [];
    for (const m of members) (m.session.tx === m.tx && m.mayGroup() ? ready : alone).push(m);
    if (ready.length < 2 || engine.active?.kind === 'pessimistic') {
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
    this.stats.groups++;
    this.stats.committed += committed.length;
    for (const m of committed) m.resolve();
    this.commitAlone(alone);
  }

  /**
   * BEGIN, each member in its savepoint, COMMIT. Returns the members committed; a conflicting
   * member is ended and rejected here. On any other failure everything is rolled back (the
   * members stay open, parked) and the error thrown.
   */
  private applyAll(ready: Member[]): Member[] {
    const engine = this.engine;
    const lead = ready.find((m) => engine.active === m.tx);
    const order = lead ? [lead, ...ready.filter((m) => m !== lead)] : ready;
    const ok: Member[] = [];
    try {
      if (lead) {
        lead.tx.refreshFootprints();
        ok.push(lead);
        // Later members must re-check what they read of the tables earlier members wrote.
        engine.noteChanged(lead.tx.writes);
      } else {
        engine.park();
        engine.exec('BEGIN');
      }
      for (const m of order) {
        if (m === lead) continue;
        engine.exec(`SAVEPOINT ${SAVEPOINT}`);
        try {
          m.tx.resume(true);
        } catch (e) {
          if (errorKind(e) !== 'busy_snapshot' || !engine.inRealTransaction) throw e;
          engine.exec(`ROLLBACK TO ${SAVEPOINT}; RELEASE ${SAVEPOINT}`);
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
      else engine.exec('ROLLBACK');
    } catch (e) {
      engine.active = null;
      if (engine.inRealTransaction) engine.exec('ROLLBACK');
      throw e;
    }
    for (const m of ok) m.session.endGroupMember(m.tx);
    return ok;
  }

  private commitAlone(members: readonly Member[]): void {
    for (const m of members) {
      this.stats.alone++;
      Promise.resolve()
        .then(m.alone)
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
  return { ...(groups.get(conn.session.engine)?.stats ?? { groups: 0, committed: 0, conflicts: 0, alone: 0 }) };
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
 * when a lock is in the way (the transaction stays open: commit again later). Use it where a
 * hand-written `BEGIN CONCURRENT` ends; `transaction()` does this by itself.
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
