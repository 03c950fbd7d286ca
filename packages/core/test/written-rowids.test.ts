/**
 * The record of the rowids commits wrote (engine/written-rowids.ts): point checks, wide spans,
 * and what is forgotten when it is full (conservatively: as changed, never as unchanged).
 */
import { describe, expect, it } from 'vitest';
import { MAX_WRITTEN_ROWIDS, WrittenRowids } from '../src/engine/written-rowids.js';

const point = (id: number) => ({ low: id, high: id });

describe('written rowids', () => {
  it('a point or narrow span is touched only by a later write inside it', () => {
    const w = new WrittenRowids();
    w.wrote('main.t', 5, [10, 20]);
    expect(w.touched('main.t', 4, point(10))).toBe(true);
    expect(w.touched('main.t', 5, point(10))).toBe(false); // validated at or after that commit
    expect(w.touched('main.t', 4, point(11))).toBe(false);
    expect(w.touched('main.t', 4, { low: 11, high: 19 })).toBe(false);
    expect(w.touched('main.t', 4, { low: 11, high: 20 })).toBe(true);
    w.wrote('main.t', 9, [10]); // a re-write moves the rowid's commit number
    expect(w.touched('main.t', 6, point(10))).toBe(true);
    expect(w.touched('main.t', 6, point(20))).toBe(false);
  });

  it('wide and unbounded spans scan the record', () => {
    const w = new WrittenRowids();
    w.wrote('main.t', 3, [1_000_000]);
    expect(w.touched('main.t', 2, { low: 100, high: Infinity })).toBe(true);
    expect(w.touched('main.t', 2, { low: -Infinity, high: 999_999 })).toBe(false);
    expect(w.touched('main.t', 3, { low: -Infinity, high: Infinity })).toBe(false);
  });

  it('an unknown write or an untracked table counts as touching everything', () => {
    const w = new WrittenRowids();
    expect(w.touched('main.other', 0, point(1))).toBe(true);
    w.wrote('main.t', 2, [1]);
    w.unknown('main.t', 3);
    expect(w.touched('main.t', 2, point(500))).toBe(true);
    expect(w.touched('main.t', 3, point(500))).toBe(false);
    w.wrote('main.t', 4, []); // no known row: unknown
    expect(w.touched('main.t', 3, point(500))).toBe(true);
  });

  it('when full, the rowids of the older half of the commits are forgotten as changed', () => {
    const w = new WrittenRowids();
    for (let i = 0; i <= MAX_WRITTEN_ROWIDS; i++) w.wrote('main.t', i + 1, [i]);
    // Rowid 0 (commit 1) was dropped: a reader validated before the cut sees "changed"...
    expect(w.touched('main.t', 0, point(-5))).toBe(true);
    // ...one validated after the cut is still exact, for kept and for never-written rowids.
    const late = MAX_WRITTEN_ROWIDS - 10;
    expect(w.touched('main.t', late, point(-5))).toBe(false);
    expect(w.touched('main.t', late, point(MAX_WRITTEN_ROWIDS))).toBe(true);
    expect(w.touched('main.t', late, point(late - 5))).toBe(false);
  });
});
