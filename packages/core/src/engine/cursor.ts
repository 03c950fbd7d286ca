/**
 * Lazy `iterate()`: a cursor that steps its statement one row per `next()` while nothing else
 * uses the engine. All engines of the process share one WebAssembly heap and one thread, and a
 * SQLite cursor must not stay open while other SQL runs on its connection (it could see another
 * handle's uncommitted writes, or be reset under it). So at most one cursor is open in the
 * process, and every other use of an engine first *settles* it: the rest of its rows are read
 * into a buffer at once and the statement is reset. The iterator then hands out the buffered
 * rows; nothing changes for the application but when the rows were read.
 * @module
 */
import { fromEngineError } from '../errors.js';

let current: RowCursor | null = null;

/** Reads the rest of the open cursor's rows (if any) into its buffer and closes it. Never throws. */
export function settleCursor(): void {
  const c = current;
  // A user function called while the cursor steps may run SQL itself (as it may inside all()):
  // that nested use happens within the step, so the cursor stays as it is.
  if (c === null || c.stepping) return;
  current = null;
  c.drain();
}

/** An iterator over a statement's rows that reads them from the engine on demand. */
export class RowCursor<T = unknown> implements IterableIterator<T> {
  private buffer: T[] | null = null;
  private next_ = 0;
  private error: unknown;
  private live = true;
  /** True while the statement is being stepped (user functions may run SQL meanwhile). @internal */
  stepping = false;

  /**
   * @param step - reads the next row from the bound statement, or `undefined` at the end.
   * @param close - resets the statement (called once, when the rows end or are abandoned).
   */
  constructor(
    private readonly step: () => T | undefined,
    private readonly close: () => void,
  ) {
    settleCursor();
    current = this;
  }

  /** True while the statement is open in the engine. */
  get isOpen(): boolean {
    return this.live;
  }

  next(): IteratorResult<T> {
    if (this.buffer !== null) {
      if (this.next_ < this.buffer.length) return { value: this.buffer[this.next_++] as T, done: false };
      if (this.error !== undefined) {
        const e = this.error;
        this.error = undefined;
        throw e;
      }
      return { value: undefined, done: true };
    }
    if (!this.live) return { value: undefined, done: true };
    let row: T | undefined;
    try {
      row = this.stepOnce();
    } catch (e) {
      this.finish();
      throw fromEngineError(e);
    }
    if (row === undefined) {
      this.finish();
      return { value: undefined, done: true };
    }
    return { value: row, done: false };
  }

  /** Stops early (a `break` out of `for...of`): the statement is reset, nothing more is read. */
  return(): IteratorResult<T> {
    if (this.live) this.finish();
    this.buffer = [];
    return { value: undefined, done: true };
  }

  [Symbol.iterator](): this {
    return this;
  }

  /** Reads every remaining row now (another use of the engine is about to run). */
  drain(): void {
    if (!this.live) return;
    const rows: T[] = [];
    try {
      for (let row = this.stepOnce(); row !== undefined; row = this.stepOnce()) rows.push(row);
    } catch (e) {
      this.error = fromEngineError(e); // thrown by next() after the rows read before it
    }
    this.buffer = rows;
    this.finish();
  }

  private stepOnce(): T | undefined {
    this.stepping = true;
    try {
      return this.step();
    } finally {
      this.stepping = false;
    }
  }

  private finish(): void {
    this.live = false;
    if (current === this) current = null;
    this.close();
  }
}
