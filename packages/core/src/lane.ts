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
 * @module
 */
import type { Engine } from './engine/engine.js';
import { intersects } from './engine/footprint.js';
import { sqliteError } from './errors.js';
import type { Session } from './session.js';

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

  /**
   * Whether the commit of `session`'s transaction must wait for the priority holder: it would
   * change a table the holder has read.
   */
  blocks(session: Session): boolean {
    const holder = this.priority;
    if (holder === undefined || holder === session) return false;
    const mine = session.tx;
    const theirs = holder.tx;
    if (mine?.kind !== 'concurrent' || mine.writes.size === 0 || theirs?.kind !== 'concurrent') return false;
    return intersects(theirs.readTables(), mine.writes);
  }

  /** Whether someone holds the lane now (so contention is going on). */
  get inUse(): boolean {
    return this.held;
  }

  /**
   * Resolves once the caller holds the lane; call {@link Lane.release} exactly once after.
   * Rejects with a `BusyError` when the lane is not free within `timeoutMs`.
   */
  acquire(timeoutMs: number): Promise<void> {
    if (!this.held) {
      this.held = true;
      return Promise.resolve();
    }
    return new Promise((resolve, reject) => {
      const granted = () => {
        clearTimeout(timer);
        resolve();
      };
      const timer = setTimeout(() => {
        const i = this.waiting.indexOf(granted);
        if (i >= 0) this.waiting.splice(i, 1);
        reject(sqliteError('database is locked: waited too long for the transactions ahead in the priority lane', 'SQLITE_BUSY'));
      }, Math.max(0, timeoutMs));
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

const lanes = new WeakMap<Engine, Lane>();

/** The lane of `engine`. */
export function laneOf(engine: Engine): Lane {
  let lane = lanes.get(engine);
  if (!lane) lanes.set(engine, (lane = new Lane()));
  return lane;
}
