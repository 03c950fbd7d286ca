/**
 * The rowids that commits wrote in each table, since the oldest open concurrent transaction
 * began, so that a logged read whose rowid span (engine/rowid-span.ts) no commit wrote into is
 * not re-checked although its table changed. Kept as each written rowid's last commit number,
 * so that a point read (`WHERE id = ?`, the common case) is checked in O(1) however many
 * transactions commit meanwhile (a list of ranges scanned per check made 1,024 concurrent
 * handlers quadratic). Bounded: each table keeps at most {@link MAX_WRITTEN_ROWIDS} rowids; those
 * last written by the older half of the commits are then dropped, and count as "anything may
 * have changed" for transactions validated before them, as does a commit whose rows are not known.
 * @module
 */
import type { RowidRange } from './rowid-span.js';

/** Rowids kept per table (older ones are forgotten, conservatively). */
export const MAX_WRITTEN_ROWIDS = 8192;

/** A read span at most this wide is checked rowid by rowid; a wider one scans what is kept. */
const POINTWISE_WIDTH = 64;

interface TableLog {
  /** The last commit number at which rows of the table changed that are not known. */
  unknownAt: number;
  /** Rowid to the last commit number that wrote it. */
  rowids: Map<number, number>;
}

/** Per table: which rowids each commit wrote (see the module documentation). */
export class WrittenRowids {
  private tables = new Map<string, TableLog>();

  private log(table: string): TableLog {
    let t = this.tables.get(table);
    if (t === undefined) this.tables.set(table, (t = { unknownAt: 0, rowids: new Map() }));
    return t;
  }

  /** Commit `seq` changed rows of `table` that are not known: any row may have changed. */
  unknown(table: string, seq: number): void {
    const t = this.log(table);
    t.unknownAt = seq;
    // Older rowids can no longer decide anything. A new map, not clear(): V8's clear() of a
    // long-lived map costs about 0.6 µs, and every commit with an unbounded write comes here.
    if (t.rowids.size > 0) t.rowids = new Map();
  }

  /** Commit `seq` changed only rows of `table` with these rowids. */
  wrote(table: string, seq: number, rowids: readonly number[]): void {
    if (rowids.length === 0) {
      this.unknown(table, seq); // a table changed by no known row: nothing to bound it by
      return;
    }
    const t = this.log(table);
    const kept = t.rowids;
    // Set only (a delete first, to keep the map in commit order, costs V8 a rehash of the
    // long-lived map every few writes: about 0.4 µs each).
    for (const id of rowids) kept.set(id, seq);
    if (kept.size > MAX_WRITTEN_ROWIDS) this.forgetOlderHalf(t);
  }

  /**
   * Keeps the rowids written by the newer half of the commits kept (by their last write); a
   * transaction validated before the cut treats the table as changed.
   */
  private forgetOlderHalf(t: TableLog): void {
    const seqs = Float64Array.from(t.rowids.values()).sort();
    const cut = seqs[seqs.length >> 1] as number;
    const kept = new Map<number, number>();
    for (const [id, at] of t.rowids) if (at > cut) kept.set(id, at);
    t.rowids = kept;
    if (cut > t.unknownAt) t.unknownAt = cut;
  }

  /** Whether a commit after commit number `seq` may have written a row of `table` in `range`. */
  touched(table: string, seq: number, range: RowidRange): boolean {
    const t = this.tables.get(table);
    if (t === undefined) return true; // changed, how is not recorded
    if (t.unknownAt > seq) return true;
    const kept = t.rowids;
    const low = Math.ceil(range.low);
    const high = Math.floor(range.high);
    if (high - low < POINTWISE_WIDTH) {
      for (let id = low; id <= high; id++) if ((kept.get(id) ?? 0) > seq) return true;
      return false;
    }
    for (const [id, at] of kept) if (at > seq && id >= low && id <= high) return true;
    return false;
  }

  /** Forgets everything (no concurrent transaction is open). */
  clear(): void {
    if (this.tables.size > 0) this.tables = new Map(); // not clear(): see unknown()
  }
}
