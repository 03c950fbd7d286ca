/**
 * The priority lane of an engine: where `transaction(fn, { mode: 'concurrent' })` runs an
 * attempt after its earlier attempts kept failing. Holders of the lane go one at a time, in
 * the order they arrived. A holder first runs optimistically with priority: while it is open,
 * other `transaction()` commits that would change a table it read wait their turn in the lane
 * (their statements still run), so it cannot be overtaken by them. If it conflicts anyway (an
 * autocommit write, a hand-written COMMIT), its next lane attempt runs pessimistically
 * (`BEGIN IMMEDIATE`), which cannot conflict. Under contention on a hot row the transactions
 * thus degrade to a FIFO mutex instead of aborting each other until one gives up, while
 * transactions that touch other tables keep running.
 *
 * While the lane is in use, a `transaction()` callback that is not its holder and runs a
 * statement that is *hot* (its re-check made a transaction conflict lately, same SQL and
 * parameters: see concurrent/hot-reads.ts) is refused at that statement with a `BusyError`,
 * before it has awaited anything, and queues in the lane at once: the attempt it would have
 * run optimistically would only have conflicted with the holder's commit. So under full
 * contention on one row the transactions queue as behind a mutex, each running once, while
 * transactions that read other rows keep running optimistically beside the lane.
 * @module
 */
import type { Engine } from './engine/engine.js';
import type { BindParams } from './engine/execute.js';
import { intersects } from './engine/footprint.js';
import { HotReads, statementKey } from './concurrent/hot-reads.js';
import { sqliteError, type SqliteError } from './errors.js';
import type { Session } from './session.js';
import type { ConcurrentTransaction } from './concurrent/transaction.js';

/** Failed attempts (busy or conflict) after which a concurrent transaction takes the lane. */
export const LANE_AFTER_FAILURES = 3;

/** A first-in first-out async mutex. */
export class Lane {
  private held = false;
  private readonly waiting: Array<() => void> = [];
  /** The holder running optimistically with priority, if any. */
  priority: Session | undefined;
  /** A handle that holds the lane between a conflicted commit and its rerun. */
  keptFor: Session | undefined;
  /** The handle whose `transaction()` attempt runs in the lane now, if any. */
  holder: Session | undefined;
  /** The statements whose re-check conflicted lately (see concurrent/hot-reads.ts). */
  readonly hot = new HotReads();

  /**
   * Whether the commit of `session`'s transaction must wait for the priority holder, judged by
   * tables: it would change a table the holder has read (used where the transaction cannot be
   * brought into the engine to look closer, in a commit group).
   */
  blocks(session: Session): boolean {
    const theirs = this.priorityTx(session);
    return theirs !== undefined && intersects(theirs.readTables(), (session.tx as ConcurrentTransaction).writes);
  }

  /**
   * Whether the commit of `session`'s transaction must wait for the priority holder: it would
   * change what the holder has read. Judged by tables first, then, when they meet, by
   * re-running the holder's reads of those tables on top of `session`'s writes (which brings
   * `session`'s transaction into the engine, validating it: this throws what its COMMIT
   * would). A commit to the rows beside the contended one thus goes ahead; holding it back
   * would serialize every transaction that shares a table with the holder.
   */
  holdsBack(session: Session): boolean {
    const theirs = this.priorityTx(session);
    if (theirs === undefined) return false;
    const mine = session.tx as ConcurrentTransaction;
    if (!intersects(theirs.readTables(), mine.writes)) return false;
    return !session.keepsReadsOf(theirs);
  }

  /** The priority holder's transaction when `session`'s concurrent transaction has written and another handle holds priority. */
  private priorityTx(session: Session): ConcurrentTransaction | undefined {
    const holder = this.priority;
    if (holder === undefined || holder === session) return undefined;
    const mine = session.tx;
    const theirs = holder.tx;
    if (mine?.kind !== 'concurrent' || mine.writes.size === 0 || theirs?.kind !== 'concurrent') return undefined;
    return theirs;
  }

  /**
   * The refusal for a statement of a `transaction()` attempt on `session` outside the lane when
   * it is hot and the lane is in use (the attempt queues in the lane instead), else `undefined`.
   * A statement of the lane's holder keeps its statement hot.
   */
  refusal(session: Session, sql: string, params: BindParams | undefined): SqliteError | undefined {
    if (!this.held || this.hot.empty) return undefined;
    const key = statementKey(sql, params);
    if (key === undefined) return undefined;
    const now = performance.now();
    if (!this.hot.has(key, now)) return undefined;
    if (this.holder === session) {
      this.hot.touch(key, now);
      return undefined;
    }
    const error = sqliteError(
      'database is locked: this statement read a row that transactions conflicted on lately, and the priority lane is in use; ' +
        'transaction() runs this callback again in the lane, in turn',
      'SQLITE_BUSY',
    );
    queuedRefusals.add(error);
    return error;
  }

  /** Whether someone holds the lane now (so contention is going on). */
  get inUse(): boolean {
    return this.held;
  }

  /**
   * Resolves once the caller holds the lane; call {@link Lane.release} exactly once after.
   * Rejects with a `BusyError` when the lane is not free within `timeoutMs`, and with the
   * signal's reason as soon as `signal` is aborted (the caller then does not hold the lane).
   */
  acquire(timeoutMs: number, signal?: AbortSignal): Promise<void> {
    if (signal?.aborted) return Promise.reject(signal.reason);
    if (!this.held) {
      this.held = true;
      return Promise.resolve();
    }
    return new Promise((resolve, reject) => {
      const stopWaiting = () => {
        clearTimeout(timer);
        signal?.removeEventListener('abort', aborted);
      };
      const leave = () => {
        stopWaiting();
        const i = this.waiting.indexOf(granted);
        if (i >= 0) this.waiting.splice(i, 1);
      };
      const granted = () => {
        stopWaiting();
        resolve();
      };
      const aborted = () => {
        leave();
        reject(signal?.reason);
      };
      const timer = setTimeout(() => {
        leave();
        reject(sqliteError('database is locked: waited too long for the transactions ahead in the priority lane', 'SQLITE_BUSY'));
      }, Math.max(0, timeoutMs));
      signal?.addEventListener('abort', aborted, { once: true });
      this.waiting.push(granted);
    });
  }

  /** Hands the lane to the next waiter, in arrival order. */
  release(): void {
    const next = this.waiting.shift();
    if (next) next();
    else this.held = false;
  }
}

const queuedRefusals = new WeakSet<object>();

/**
 * Whether `e` is a refusal of {@link Lane.refusal}: the attempt did no work worth counting as a
 * failure, and its rerun waits in the lane at once (without the retry loop's backoff delay).
 */
export function isQueuedRefusal(e: unknown): boolean {
  return typeof e === 'object' && e !== null && queuedRefusals.has(e);
}

const lanes = new WeakMap<Engine, Lane>();

/** The lane of `engine`. */
export function laneOf(engine: Engine): Lane {
  let lane = lanes.get(engine);
  if (!lane) lanes.set(engine, (lane = new Lane()));
  return lane;
}
