/**
 * Rowid spans: which rows of a table a statement can touch, proven from its bytecode (`EXPLAIN`),
 * so that a commit that wrote rows outside what a logged read could see does not make the read
 * be re-checked (see concurrent/transaction.ts and Engine.spanChangedSince).
 *
 * Two facts are learned, each only for programs simple enough to prove it, and otherwise not at
 * all (the caller then falls back to "the table changed"):
 *
 * - **Read spans.** A read-only statement whose only access to a rowid table `T` is one cursor
 *   on `T`'s table b-tree (none of its indexes), positioned exactly once, by `SeekGT`/`SeekGE`
 *   and then stepped only forward (`Next`), by `SeekLT`/`SeekLE` and stepped only backward
 *   (`Prev`), or by `SeekRowid` and never stepped, with a seek key that is a constant or a
 *   parameter (loaded by the one instruction that writes its register): every row of `T` the
 *   statement can see has its rowid in the half-line (or point) the seek starts from. Its result
 *   is then a function of the rows of `T` in that span alone.
 * - **Write points.** A statement that writes one rowid table `T` only, runs no trigger or
 *   foreign-key program, and positions every cursor on `T`'s table b-tree with `SeekRowid` or
 *   `NotExists` on constant or parameter keys, inserting only at the cursor's current rowid or at
 *   such a key (no `NewRowid`, no scan): it changes at most the rows with those rowids (and their
 *   index entries). `UPDATE t SET ... WHERE id = ?`, `DELETE FROM t WHERE id = ?`, and an update
 *   that moves a row to a rowid given as a parameter are such statements; `REPLACE` or an upsert
 *   that may delete or update a row found through an index are not.
 *
 * (The footprint analyzer asks for read spans only of reads that call no function that may
 * answer differently: such a read is re-checked whenever its tables changed.)
 *
 * Every instruction of the program must be one this module knows (which registers it writes,
 * which operand is a cursor); a program with any other instruction proves nothing.
 * @module
 */
import type { BindParams } from './execute.js';

/** One row of `EXPLAIN` output. */
export interface ExplainRow {
  readonly opcode: string;
  readonly p1: number;
  readonly p2: number;
  readonly p3: number;
  readonly p4: unknown;
  readonly p5: number;
}

/** A rowid bound: a constant, or the 1-based index of a positional parameter. */
export type RowidKey = { readonly value: number } | { readonly param: number };

/** The rows of one table a read can see: rowids in `[low, high]` (a missing side is unbounded). */
export interface ReadSpan {
  readonly low?: RowidKey;
  /** The low bound itself is excluded (`SeekGT`). */
  readonly lowOpen?: boolean;
  readonly high?: RowidKey;
  /** The high bound itself is excluded (`SeekLT`). */
  readonly highOpen?: boolean;
}

/** What the bytecode proves about the rowids a statement touches, per table (`schema.table`). */
export interface RowidAccess {
  /** Read-only statements: the span of each table read through one ranged cursor. */
  readonly reads?: ReadonlyMap<string, ReadSpan>;
  /** Writes: the rowid keys of the only rows the statement may change, in its one written table. */
  readonly writes?: ReadonlyMap<string, readonly RowidKey[]>;
}

/** What the analysis needs to know about a root page. */
export interface RootInfo {
  readonly table: string;
  /** The table's own b-tree (not one of its indexes). */
  readonly tableRoot: boolean;
}

/** A closed range of rowids; infinite sides are unbounded. */
export interface RowidRange {
  readonly low: number;
  readonly high: number;
}

/**
 * Instructions whose effect the analysis knows: the registers they may write (as inclusive
 * ranges computed from the operands) and whether operand p1 is a cursor. Any instruction not
 * listed makes the analysis prove nothing.
 */
type Writes = (r: ExplainRow) => readonly [number, number] | null;
const none: Writes = () => null;
const p1: Writes = (r) => [r.p1, r.p1];
const p2: Writes = (r) => [r.p2, r.p2];
const p3: Writes = (r) => [r.p3, r.p3];

interface OpInfo {
  readonly writes: Writes;
  readonly cursor?: boolean;
}

const OPS = new Map<string, OpInfo>([
  // control flow, no registers
  ['Init', { writes: none }],
  ['Goto', { writes: none }],
  ['Halt', { writes: none }],
  ['HaltIfNull', { writes: none }],
  ['Transaction', { writes: none }],
  ['TableLock', { writes: none }],
  ['Noop', { writes: none }],
  ['Explain', { writes: none }],
  ['Once', { writes: none }],
  ['ResultRow', { writes: none }],
  ['Eq', { writes: none }],
  ['Ne', { writes: none }],
  ['Lt', { writes: none }],
  ['Le', { writes: none }],
  ['Gt', { writes: none }],
  ['Ge', { writes: none }],
  ['ElseEq', { writes: none }],
  ['If', { writes: none }],
  ['IfNot', { writes: none }],
  ['IsNull', { writes: none }],
  ['NotNull', { writes: none }],
  ['Compare', { writes: none }],
  ['Jump', { writes: none }],
  ['Return', { writes: none }],
  // loading values
  ['Integer', { writes: p2 }],
  ['Int64', { writes: p2 }],
  ['Real', { writes: p2 }],
  ['String8', { writes: p2 }],
  ['String', { writes: p2 }],
  ['Blob', { writes: p2 }],
  ['Variable', { writes: p2 }],
  ['Null', { writes: (r) => [r.p2, Math.max(r.p2, r.p3)] }],
  ['SoftNull', { writes: p1 }],
  ['Copy', { writes: (r) => [r.p2, r.p2 + r.p3] }],
  ['SCopy', { writes: p2 }],
  ['IntCopy', { writes: p2 }],
  ['Move', { writes: (r) => [r.p2, r.p2 + Math.max(0, r.p3 - 1)] }],
  // computing
  ['Add', { writes: p3 }],
  ['Subtract', { writes: p3 }],
  ['Multiply', { writes: p3 }],
  ['Divide', { writes: p3 }],
  ['Remainder', { writes: p3 }],
  ['Concat', { writes: p3 }],
  ['BitAnd', { writes: p3 }],
  ['BitOr', { writes: p3 }],
  ['ShiftLeft', { writes: p3 }],
  ['ShiftRight', { writes: p3 }],
  ['And', { writes: p3 }],
  ['Or', { writes: p3 }],
  ['Not', { writes: p2 }],
  ['BitNot', { writes: p2 }],
  ['IsTrue', { writes: p2 }],
  ['Function', { writes: p3 }],
  ['PureFunc', { writes: p3 }],
  ['CollSeq', { writes: (r) => (r.p1 > 0 ? [r.p1, r.p1] : null) }],
  ['AggStep', { writes: p3 }],
  ['AggStep1', { writes: p3 }],
  ['AggFinal', { writes: p1 }],
  ['AggValue', { writes: p3 }],
  ['Affinity', { writes: (r) => [r.p1, r.p1 + Math.max(0, r.p2 - 1)] }],
  ['MustBeInt', { writes: p1 }],
  ['Cast', { writes: p1 }],
  ['RealAffinity', { writes: p1 }],
  ['IfPos', { writes: p1 }],
  ['DecrJumpZero', { writes: p1 }],
  ['OffsetLimit', { writes: p2 }],
  ['Gosub', { writes: p1 }],
  ['BeginSubrtn', { writes: p2 }],
  ['MakeRecord', { writes: p3 }],
  // cursors
  ['OpenRead', { writes: none, cursor: true }],
  ['OpenWrite', { writes: none, cursor: true }],
  ['Close', { writes: none, cursor: true }],
  ['ColumnsUsed', { writes: none, cursor: true }],
  ['SeekGT', { writes: none, cursor: true }],
  ['SeekGE', { writes: none, cursor: true }],
  ['SeekLT', { writes: none, cursor: true }],
  ['SeekLE', { writes: none, cursor: true }],
  ['SeekRowid', { writes: none, cursor: true }],
  ['NotExists', { writes: none, cursor: true }],
  ['Rewind', { writes: none, cursor: true }],
  ['Last', { writes: none, cursor: true }],
  ['Next', { writes: none, cursor: true }],
  ['Prev', { writes: none, cursor: true }],
  ['NullRow', { writes: none, cursor: true }],
  ['Rowid', { writes: p2, cursor: true }],
  ['Column', { writes: p3, cursor: true }],
  ['Insert', { writes: none, cursor: true }],
  ['Delete', { writes: none, cursor: true }],
  ['IdxInsert', { writes: none, cursor: true }],
  ['IdxDelete', { writes: none, cursor: true }],
  ['NoConflict', { writes: none, cursor: true }],
  ['Found', { writes: none, cursor: true }],
  ['NotFound', { writes: none, cursor: true }],
  ['IdxRowid', { writes: p2, cursor: true }],
  ['IdxGT', { writes: none, cursor: true }],
  ['IdxGE', { writes: none, cursor: true }],
  ['IdxLT', { writes: none, cursor: true }],
  ['IdxLE', { writes: none, cursor: true }],
]);

/** Instructions that move a cursor to another row. */
const POSITIONING = new Set(['SeekGT', 'SeekGE', 'SeekLT', 'SeekLE', 'SeekRowid', 'NotExists', 'Rewind', 'Last', 'Found', 'NotFound', 'NoConflict']);
/** Instructions on a cursor that neither move it elsewhere nor change rows. */
const READING = new Set(['OpenRead', 'OpenWrite', 'Close', 'ColumnsUsed', 'Rowid', 'Column', 'NullRow']);

/**
 * Learns what `program` proves about the rowids it touches. `root(db, page)` names the table a
 * root page belongs to (undefined: unknown); `write` is the table the statement writes when it
 * writes exactly one and runs no sub-program (undefined for reads, or when nothing can be proven).
 */
export function analyzeRowids(
  program: readonly ExplainRow[],
  root: (db: number, page: number) => RootInfo | undefined,
  readonly: boolean,
  write: string | undefined,
): RowidAccess | undefined {
  if (!readonly && write === undefined) return undefined;
  // Register writers, and the cursors by table.
  const writers = new Map<number, number[]>(); // register -> instruction addresses writing it
  const opens = new Map<number, number>(); // cursor -> how many Open* instructions open it
  const cursorTable = new Map<number, { info: RootInfo; intKey: boolean }>();
  const tableCursors = new Map<string, number>(); // table -> instructions opening any of its b-trees
  for (let i = 0; i < program.length; i++) {
    const r = program[i] as ExplainRow;
    const op = OPS.get(r.opcode);
    if (op === undefined) return undefined;
    const w = op.writes(r);
    if (w !== null) {
      if (w[1] - w[0] > 4096) return undefined;
      for (let reg = w[0]; reg <= w[1]; reg++) {
        const list = writers.get(reg);
        if (list) list.push(i);
        else writers.set(reg, [i]);
      }
    }
    if (r.opcode === 'OpenRead' || r.opcode === 'OpenWrite') {
      if ((r.p5 & 0x10) !== 0) return undefined; // the root page is in a register
      const info = root(r.p3, r.p2);
      if (info === undefined) return undefined;
      opens.set(r.p1, (opens.get(r.p1) ?? 0) + 1);
      // A table b-tree's cursor takes a column count as P4; an index (or WITHOUT ROWID) a key description.
      cursorTable.set(r.p1, { info, intKey: /^\d+$/.test(String(r.p4 ?? '')) });
      tableCursors.set(info.table, (tableCursors.get(info.table) ?? 0) + 1);
    }
  }
  /** The key a register holds for the whole run: written by one constant or parameter load. */
  const keyOf = (reg: number): RowidKey | undefined => {
    const list = writers.get(reg);
    if (list === undefined || list.length !== 1) return undefined;
    return loadedKey(program[list[0] as number] as ExplainRow);
  };
  const uses = (cursor: number): ExplainRow[] => program.filter((r) => OPS.get(r.opcode)?.cursor === true && r.p1 === cursor);

  if (readonly) {
    const reads = new Map<string, ReadSpan>();
    for (const [cursor, { info, intKey }] of cursorTable) {
      if (!info.tableRoot || !intKey || opens.get(cursor) !== 1 || tableCursors.get(info.table) !== 1) continue;
      const span = readSpan(uses(cursor), keyOf);
      if (span !== undefined) reads.set(info.table, span);
    }
    return reads.size > 0 ? { reads } : undefined;
  }

  // A write: every cursor on the written table's b-tree is positioned only at constant keys.
  const keys: RowidKey[] = [];
  const onTable = (cursor: number) => {
    const c = cursorTable.get(cursor);
    return c !== undefined && c.info.table === write && c.info.tableRoot;
  };
  /**
   * Adds the keys a register used to position or insert may hold: each instruction writing it
   * must load a constant or a parameter (a key), or put there NULL, the same value as an
   * integer, or the rowid of a row of the table a cursor is at (one of the keys already, since
   * every cursor on it is only ever positioned at keys). False when something else writes it.
   */
  const addKeys = (reg: number): boolean => {
    for (const at of writers.get(reg) ?? []) {
      const w = program[at] as ExplainRow;
      if (w.opcode === 'Null' || w.opcode === 'SoftNull' || w.opcode === 'MustBeInt') continue;
      if (w.opcode === 'Rowid' && onTable(w.p1)) continue;
      const k = loadedKey(w);
      if (k === undefined) return false;
      keys.push(k);
    }
    return true;
  };
  let tableCursor = false;
  for (const [cursor, { info, intKey }] of cursorTable) {
    if (info.table !== write) continue;
    if (!info.tableRoot) continue; // index maintenance of the same rows
    if (!intKey || opens.get(cursor) !== 1) return undefined;
    tableCursor = true;
    for (const r of uses(cursor)) {
      if (READING.has(r.opcode) || r.opcode === 'Delete') continue;
      // SeekRowid and NotExists go to the row with the key in P3; Insert puts the row there.
      if ((r.opcode === 'SeekRowid' || r.opcode === 'NotExists' || r.opcode === 'Insert') && addKeys(r.p3)) continue;
      return undefined; // Next, Rewind, a computed key, ...
    }
  }
  if (!tableCursor || keys.length === 0) return undefined;
  return { writes: new Map([[write as string, keys]]) };
}

/** The key a constant or parameter load puts in its register, or undefined. */
function loadedKey(r: ExplainRow): RowidKey | undefined {
  if (r.opcode === 'Integer') return { value: r.p1 };
  if (r.opcode === 'Int64') {
    const v = Number(r.p4);
    return Number.isSafeInteger(v) && String(v) === String(r.p4) ? { value: v } : undefined;
  }
  if (r.opcode === 'Variable') return { param: r.p1 };
  return undefined;
}

/** The span of a table cursor's uses, when they prove one. */
function readSpan(uses: readonly ExplainRow[], keyOf: (reg: number) => RowidKey | undefined): ReadSpan | undefined {
  let seek: ExplainRow | undefined;
  let next = false;
  let prev = false;
  for (const r of uses) {
    if (READING.has(r.opcode)) continue;
    if (r.opcode === 'Next') next = true;
    else if (r.opcode === 'Prev') prev = true;
    else if (POSITIONING.has(r.opcode) && seek === undefined) seek = r;
    else return undefined;
  }
  if (seek === undefined) return undefined;
  const key = keyOf(seek.p3);
  if (key === undefined) return undefined;
  switch (seek.opcode) {
    case 'SeekGT':
    case 'SeekGE':
      return prev ? undefined : { low: key, lowOpen: seek.opcode === 'SeekGT' };
    case 'SeekLT':
    case 'SeekLE':
      return next ? undefined : { high: key, highOpen: seek.opcode === 'SeekLT' };
    case 'SeekRowid':
      return next || prev ? undefined : { low: key, high: key };
    default:
      return undefined;
  }
}

/** The integer a key stands for with these parameters, or undefined when it is not a safe integer. */
export function keyValue(key: RowidKey, params: BindParams | undefined): number | undefined {
  let v: unknown;
  if ('value' in key) v = key.value;
  else if (Array.isArray(params)) v = (params as readonly unknown[])[key.param - 1];
  else if (key.param === 1 && (params === null || typeof params !== 'object')) v = params;
  else return undefined; // named parameters: not mapped
  if (typeof v === 'number') return Number.isSafeInteger(v) ? v : undefined;
  if (typeof v === 'bigint') return v >= -9007199254740991n && v <= 9007199254740991n ? Number(v) : undefined;
  return undefined;
}

/** The rowid range of a read span with these parameters, or undefined when a bound is not known. */
export function spanRange(span: ReadSpan, params: BindParams | undefined): RowidRange | undefined {
  let low = -Infinity;
  let high = Infinity;
  if (span.low !== undefined) {
    const v = keyValue(span.low, params);
    if (v === undefined) return undefined;
    low = span.lowOpen ? v + 1 : v;
  }
  if (span.high !== undefined) {
    const v = keyValue(span.high, params);
    if (v === undefined) return undefined;
    high = span.highOpen ? v - 1 : v;
  }
  return { low, high };
}

/**
 * The rowids written per table: a list, or `null` for a table whose changed rows are not known
 * (any row).
 */
export type WrittenRowidMap = Map<string, number[] | null>;

/**
 * Adds the rowids a write statement changes, with these parameters, to `into` (per table), for
 * each of the tables it `writes`; a table whose rows it may change are not known is set to
 * `null` (for good). Several statements accumulate: a transaction's rowids.
 */
export function addWrittenRowids(
  writes: ReadonlySet<string>,
  access: RowidAccess | undefined,
  params: BindParams | undefined,
  into: WrittenRowidMap,
): void {
  for (const t of writes) {
    const before = into.get(t);
    if (before === null) continue;
    const keys = access?.writes?.get(t);
    into.set(t, keys === undefined ? null : keyValues(keys, params, before));
  }
}

/**
 * The rowids `keys` stand for with these parameters, appended to `into` (returned), or `null`
 * when one of them is not a safe integer (the rows changed are then not known).
 */
export function keyValues(keys: readonly RowidKey[], params: BindParams | undefined, into?: number[]): number[] | null {
  // Sized exactly when new: a push onto an empty array reserves 17 slots (one write: one key).
  const out = into ?? new Array<number>(keys.length);
  let at = into === undefined ? 0 : into.length;
  for (const k of keys) {
    const v = keyValue(k, params);
    if (v === undefined) return null;
    out[at++] = v;
  }
  return out;
}
