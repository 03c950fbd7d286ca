/**
 * The rowids that commits wrote in each table, since the oldest open concurrent transaction
 * began, so that a logged read whose rowid span (engine/rowid-span.ts) no commit wrote into is
 * not re-checked although its table changed. Bounded: each table keeps at most
 * {@link MAX_WRITTEN_RANGES} ranges; older ones are dropped and then count as "anything may have
 * changed" for transactions validated before them, as does a commit whose rows are not known.
 * @module
 */
import type { RowidRange } from './rowid-span.js';

/** Ranges kept per table (older ones are forgotten, conservatively). */
export const MAX_WRITTEN_RANGES = 1024;

interface TableLog {
  /** The last commit number at which rows of the table changed that are not known. */
  unknownAt: number;
  /** Triples of (commit number, low, high), in commit order. */
  readonly ranges: number[];
}

/** Per table: which rowids each commit wrote (see the module documentation). */
export class WrittenRowids {
  private readonly tables = new Map<string, TableLog>();

  private log(table: string): TableLog {
    let t = this.tables.get(table);
    if (t === undefined) this.tables.set(table, (t = { unknownAt: 0, ranges: [] }));
    return t;
  }

  /** Commit `seq` changed rows of `table` that are not known: any row may have changed. */
  unknown(table: string, seq: number): void {
    const t = this.log(table);
    t.unknownAt = seq;
    t.ranges.length = 0; // older ranges can no longer decide anything
  }

  /** Commit `seq` changed only rows of `table` with these rowids. */
  wrote(table: string, seq: number, rowids: readonly number[]): void {
    if (rowids.length === 0) {
      this.unknown(table, seq); // a table changed by no known row: nothing to bound it by
      return;
    }
    const t = this.log(table);
    const r = t.ranges;
    for (const id of rowids) r.push(seq, id, id);
    if (r.length > MAX_WRITTEN_RANGES * 3) {
      // Forget the older half: a transaction validated before them treats the table as changed.
      const cut = Math.floor(r.length / 6) * 3;
      t.unknownAt = Math.max(t.unknownAt, r[cut - 3] as number);
      r.splice(0, cut);
    }
  }

  /** Whether a commit after commit number `seq` may have written a row of `table` in `range`. */
  touched(table: string, seq: number, range: RowidRange): boolean {
    const t = this.tables.get(table);
    if (t === undefined) return true; // changed, how is not recorded
    if (t.unknownAt > seq) return true;
    const r = t.ranges;
    for (let i = r.length - 3; i >= 0 && (r[i] as number) > seq; i -= 3) {
      if ((r[i + 1] as number) <= range.high && (r[i + 2] as number) >= range.low) return true;
    }
    return false;
  }

  /** Forgets everything (no concurrent transaction is open). */
  clear(): void {
    this.tables.clear();
  }
}
