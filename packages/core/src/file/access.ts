/**
 * The file-access policy: when a file database holds its lock, and when it hands it back.
 *
 * - `shared`: the engine's own per-statement locking (`PRAGMA locking_mode = NORMAL`): every
 *   statement outside a transaction takes and drops the lock directory and revalidates the page
 *   cache. Slow for reads (~4.5k point selects/s) but never holds the file between statements.
 * - `exclusive`: `PRAGMA locking_mode = EXCLUSIVE` for the life of the engine: the first
 *   statement takes the lock and it is kept until close. Other processes get `SQLITE_BUSY` until
 *   then.
 * - `auto` (default): exclusive while this process is using the file, handed back when
 *   (a) the process has been idle for {@link AccessTimings.idleMs}, or
 *   (b) another process asked for it: a process refused with SQLITE_BUSY touches
 *   `<file>.lock-wait` (see `lock.ts`); the holder looks at that marker every
 *   {@link AccessTimings.checkMs} (on an unref'd timer and after statements), and at the next
 *   point where no transaction is open it switches to NORMAL locking and runs a cheap read so
 *   SQLite drops the lock. Then, for a grace period that ends when the waiter got in (it
 *   removes the marker when it takes the lock) or after {@link AccessTimings.graceMs}, the
 *   holder's own statements throw BusyError without touching the file, so the waiter's next
 *   retry finds the file free. Then the holder locks exclusively again.
 *
 * The engine calls {@link FileAccess.beforeUse} before it runs SQL for a handle and
 * {@link FileAccess.afterUse} after, with whether a real transaction is still open.
 * @module
 */
import { markFileLockBusy } from '../busy-timeout.js';
import { fromEngineError, SqliteError, sqliteError, type SqliteErrorCode } from '../errors.js';
import { finalizeStatement, type WasmDatabase, type WasmStatement } from './load.js';
import { isHeld, lockDirOf, recentBusyInfo, recentLockFailure, someoneWaiting, sweepNextTime, waitMarkerExists, watchLock } from './lock.js';

/** How a file database locks its file. See the module documentation. */
export type LockingMode = 'auto' | 'shared' | 'exclusive';

/** The hand-off timings of `locking: 'auto'`, in milliseconds. */
export interface AccessTimings {
  /** How often the holder looks for a waiting process (timer and statements). Default 10. */
  checkMs: number;
  /** The holder hands the lock back after this long without statements. Default 50. */
  idleMs: number;
  /**
   * After handing the lock to a waiter, the holder's statements are refused with BusyError
   * until the waiter took the lock, at most this long. Default 150 (longer than the largest
   * delay of siblite's `retry()` defaults, 100).
   */
  graceMs: number;
  /**
   * While another process waits, the holder hands the lock over after this long at the latest
   * (at the next point where no transaction is open), even if the waiter did not ask again.
   * Default 50.
   */
  sliceMs: number;
}

export const DEFAULT_TIMINGS: Readonly<AccessTimings> = Object.freeze({ checkMs: 10, idleMs: 50, graceMs: 150, sliceMs: 50 });

/** Counters of one {@link FileAccess}, for tests and diagnostics. */
export interface AccessStats {
  /** Lock hand-backs because the process was idle. */
  idleReleases: number;
  /** Lock hand-backs because another process was waiting. */
  waiterReleases: number;
  /** Statements of this process refused during a hand-off's grace period. */
  graceRefusals: number;
  /** Errors swallowed while handing the lock back (the last one is kept). */
  releaseErrors: number;
  lastReleaseError: unknown;
}

/** The policy object the engine calls around its use of a file database. */
export interface FileAccess {
  /** The database file (absolute). */
  readonly path: string;
  /** The lock directory of the file. */
  readonly lockDir: string;
  readonly mode: LockingMode;
  /** Before the engine runs SQL for a handle. */
  beforeUse(): void;
  /** After the engine ran SQL; `inTransaction`: a real transaction is still open. */
  afterUse(inTransaction: boolean): void;
  /** Whether this process holds the file lock right now. */
  readonly holdsLock: boolean;
  /**
   * When this file's lock was refused in the current synchronous run of JavaScript (so a
   * "database is locked" error being handled now came from it), an explanation naming the lock
   * directory and its owner; else undefined.
   */
  busyDetail(): string | undefined;
  /**
   * Returns `error` with {@link busyDetail} appended to its message when it is a busy error that
   * came from the file lock just now; anything else is returned unchanged.
   */
  explain(error: unknown): unknown;
  /** Hands the lock back now if no transaction is open (as if idle). Returns whether it did. */
  handBack(): boolean;
  /**
   * Set by the engine: moves an open transaction out of the engine if it can (a `BEGIN
   * CONCURRENT` transaction can always be parked and resumed later), so a waiting process need
   * not wait for it to end. Returns whether the engine is now outside any transaction.
   */
  yieldTransaction?: () => boolean;
  stats(): AccessStats;
  /** Stops the timer and finalizes the policy's statements; call before closing the database. */
  close(): void;
}

/** Creates the policy for one engine connection on one file (see the module documentation). */
export function createFileAccess(
  db: WasmDatabase,
  path: string,
  mode: LockingMode,
  timings: Partial<AccessTimings> = {},
  setup: readonly string[] = [],
): FileAccess {
  return new Policy(db, path, mode, { ...DEFAULT_TIMINGS, ...timings }, setup);
}

/** SQLite codes for errno codes of a failed lock operation. */
const LOCK_FAILURE_CODES: Record<string, SqliteErrorCode> = {
  ENOSPC: 'SQLITE_FULL',
  EDQUOT: 'SQLITE_FULL',
  EACCES: 'SQLITE_READONLY',
  EPERM: 'SQLITE_READONLY',
  EROFS: 'SQLITE_READONLY',
  ENOTDIR: 'SQLITE_CANTOPEN',
  EMLINK: 'SQLITE_CANTOPEN',
};

/** Open policies, for the exit hook. */
const live = new Set<Policy>();
let exitHooked = false;

/**
 * At process exit (a normal exit, not a kill), hands back the locks of databases left open, the
 * way SQLite itself drops a lock (so the journal is cleaned up too). A database inside a
 * transaction keeps its lock: the next opener finds it stale and rolls the transaction back.
 */
function releaseAtExit(): void {
  for (const p of live) p.exitRelease();
}

class Policy implements FileAccess {
  readonly lockDir: string;
  yieldTransaction?: () => boolean;
  /** `PRAGMA locking_mode` is EXCLUSIVE now. */
  private exclusive = false;
  /** This process holds the lock directory (kept up to date by the lock manager). */
  private holding: boolean;
  private used = false;
  /** When this process last took the lock (for the time slice). */
  private acquiredAt = 0;
  private quietTicks = 0;
  private nextCheck = 0;
  private yieldPending = false;
  private graceUntil = 0;
  private timer: NodeJS.Timeout | undefined;
  private touch: WasmStatement | undefined;
  private readonly unwatch: () => void;
  private closed = false;
  /** SQL that needs the file lock, run before the first statement (pragmas of the options). */
  private setup: string[] | undefined;
  private readonly counters: AccessStats = { idleReleases: 0, waiterReleases: 0, graceRefusals: 0, releaseErrors: 0, lastReleaseError: undefined };

  constructor(
    private readonly db: WasmDatabase,
    readonly path: string,
    readonly mode: LockingMode,
    private readonly t: AccessTimings,
    setup: readonly string[],
  ) {
    this.setup = setup.length > 0 ? [...setup] : undefined;
    this.lockDir = lockDirOf(path);
    sweepNextTime(this.lockDir);
    this.holding = isHeld(this.lockDir);
    if (mode !== 'shared') this.setExclusive(true);
    this.unwatch =
      mode === 'auto'
        ? watchLock(this.lockDir, {
            acquired: () => this.onAcquired(),
            released: () => this.onReleased(),
          })
        : () => {};
    if (this.holding && mode === 'auto') this.onAcquired();
    live.add(this);
    if (!exitHooked) {
      exitHooked = true;
      process.on('exit', releaseAtExit);
    }
  }

  get holdsLock(): boolean {
    return isHeld(this.lockDir);
  }

  beforeUse(): void {
    if (this.setup) this.runSetup();
    if (this.mode !== 'auto' || this.exclusive) return;
    if (this.graceUntil !== 0) {
      if (Date.now() < this.graceUntil && waitMarkerExists(this.lockDir)) {
        this.counters.graceRefusals++;
        throw markFileLockBusy(
          sqliteError(
            `database is locked: this process is handing "${this.path}" to another process that waits for it ` +
              `(for at most ${this.t.graceMs} ms); retry`,
            'SQLITE_BUSY',
          ),
        );
      }
      this.graceUntil = 0;
    }
    this.setExclusive(true);
    if (this.holding) this.startTimer();
  }

  afterUse(inTransaction: boolean): void {
    if (!this.holding) return;
    this.used = true;
    const now = Date.now();
    if (now >= this.nextCheck) {
      this.nextCheck = now + this.t.checkMs;
      if (!this.yieldPending && this.othersWait(now)) this.yieldPending = true;
    }
    // Right after a statement, an open transaction is not parked: its code is running and will
    // commit or await soon (a parked BEGIN CONCURRENT would need a second turn to come back).
    // The timer parks it if it awaits something; otherwise the hand-over happens when it ends.
    if (this.yieldPending && !inTransaction) this.release(true);
  }

  busyDetail(): string | undefined {
    return recentBusyInfo(this.lockDir)?.detail;
  }

  explain(error: unknown): unknown {
    if (!(error instanceof SqliteError)) return error;
    if (error.kind === 'io') {
      // The engine says only "disk I/O error": name the file and the cause when it was the lock.
      const failure = recentLockFailure(this.lockDir);
      if (failure === undefined) return error;
      return sqliteError(`${error.message}: ${failure.detail}`, LOCK_FAILURE_CODES[failure.code] ?? 'SQLITE_IOERR_LOCK', error);
    }
    if (error.kind !== 'busy') return error;
    const detail = this.busyDetail();
    if (detail === undefined) return error;
    markFileLockBusy(error);
    if (error.message.includes(this.lockDir)) return error;
    error.message = `${error.message}: ${detail}`;
    if (error.stack) error.stack = `${error.name}: ${error.message}\n${error.stack.split('\n').slice(1).join('\n')}`;
    return error;
  }

  handBack(): boolean {
    if (this.mode === 'exclusive' || this.closed || !this.db.isOpen || this.db.inTransaction) return false;
    if (this.exclusive) this.release(false);
    return !isHeld(this.lockDir);
  }

  stats(): AccessStats {
    return { ...this.counters };
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    live.delete(this);
    this.stopTimer();
    this.unwatch();
    if (this.touch) finalizeStatement(this.touch);
    this.touch = undefined;
  }

  /** See {@link releaseAtExit}. */
  exitRelease(): void {
    if (this.closed || !this.db.isOpen || !isHeld(this.lockDir) || this.db.inTransaction) return;
    this.release(false);
  }

  // ---- internals ----------------------------------------------------------------------------

  private runSetup(): void {
    const setup = this.setup as string[];
    while (setup.length > 0) {
      try {
        this.db.exec(setup[0] as string);
      } catch (e) {
        throw this.explain(fromEngineError(e, `applying the open() options to "${this.path}"`));
      }
      setup.shift();
    }
    this.setup = undefined;
  }

  private setExclusive(on: boolean): void {
    try {
      this.db.exec(on ? 'PRAGMA locking_mode = EXCLUSIVE' : 'PRAGMA locking_mode = NORMAL');
    } catch (e) {
      throw fromEngineError(e, this.path);
    }
    this.exclusive = on;
  }

  /**
   * Someone asked for the file since this process took it (the marker changed), or someone is
   * waiting (the marker exists) and this process has held the file for a whole time slice:
   * waiters starved of CPU may not ask again for a while, and must still get their turn.
   */
  private othersWait(now: number): boolean {
    return someoneWaiting(this.lockDir) || (now - this.acquiredAt >= this.t.sliceMs && waitMarkerExists(this.lockDir));
  }

  private onAcquired(): void {
    this.acquiredAt = Date.now();
    this.holding = true;
    this.used = true;
    this.quietTicks = 0;
    this.yieldPending = false;
    this.nextCheck = Date.now() + this.t.checkMs;
    if (this.exclusive) this.startTimer();
  }

  private startTimer(): void {
    if (this.timer || this.closed) return;
    this.timer = setInterval(() => this.tick(), this.t.checkMs);
    this.timer.unref();
  }

  private onReleased(): void {
    this.holding = false;
    this.yieldPending = false;
    this.stopTimer();
  }

  private stopTimer(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  /** The unref'd timer, every checkMs while this process holds the lock in auto mode. */
  private tick(): void {
    if (this.closed || !this.holding || !this.db.isOpen) {
      this.stopTimer();
      return;
    }
    const waiting = this.yieldPending || this.othersWait(Date.now());
    if (this.db.inTransaction) {
      // An open transaction held across an await: a concurrent one is parked (it resumes by
      // re-execution when its handle next needs the engine); a pessimistic one keeps the lock
      // and the hand-back happens when it ends (afterUse).
      if (!waiting) return;
      if (this.yieldTransaction?.() !== true) {
        this.yieldPending = true;
        return;
      }
    }
    if (waiting) {
      this.release(true);
      return;
    }
    if (this.used) {
      this.used = false;
      this.quietTicks = 0;
    } else if (++this.quietTicks * this.t.checkMs >= this.t.idleMs) {
      this.release(false);
    }
  }

  /**
   * Switches to NORMAL locking and runs a cheap read outside any transaction: SQLite drops the
   * lock at its end. For a waiter, the grace period starts.
   */
  private release(forWaiter: boolean): void {
    this.yieldPending = false;
    try {
      this.setExclusive(false);
      this.touch ??= this.db.prepare('SELECT 1 FROM sqlite_schema LIMIT 1');
      this.touch.all(); // to completion: a statement left active would keep the lock
    } catch (e) {
      this.counters.releaseErrors++;
      this.counters.lastReleaseError = e;
    }
    if (forWaiter) {
      this.counters.waiterReleases++;
      this.graceUntil = Date.now() + this.t.graceMs;
    } else {
      this.counters.idleReleases++;
    }
  }
}
