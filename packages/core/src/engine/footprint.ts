/**
 * The footprint of a statement: which tables it reads and writes, learned from its bytecode
 * (`EXPLAIN`), trigger and foreign-key sub-programs included, without running it. The
 * concurrency tracker uses footprints to decide whether a statement can run beside another
 * handle's open transaction, and which tables a commit changed.
 * @module
 */
import { fromEngineError } from '../errors.js';
import { finalizeStatement, type WasmDatabase } from '../file/load.js';
import { classify, tokenize } from '../sql/lexer.js';
import { analyzeRowids, type ExplainRow, type RootInfo, type RowidAccess } from './rowid-span.js';

/** Tables are named `schema.table`; this one name stands for "every table". */
export const ALL_TABLES = '*';

/** What a statement touches. */
export interface Footprint {
  /** Tables whose rows the statement may read (written tables included). */
  readonly reads: ReadonlySet<string>;
  /** Tables the statement may change. */
  readonly writes: ReadonlySet<string>;
  /** True when the statement starts no write transaction. */
  readonly readonly: boolean;
  /**
   * False when the statement (its triggers included) calls a function that may answer
   * differently when run again on the same data: `random()`, the date and time functions,
   * user functions, anything not known to be deterministic.
   */
  readonly deterministic: boolean;
  /**
   * True when the statement (its triggers included) calls `last_insert_rowid()`: SQLite's own
   * value must then be the calling handle's when it starts (see Engine.primeLastInsertRowid).
   */
  readonly lastInsertRowid?: boolean;
  /**
   * True when the statement (its triggers included) calls `last_insert_rowid()`, `changes()` or
   * `total_changes()`: what it does depends on the calling handle's state, which a replay must
   * restore (a concurrent transaction's log keeps that state only for such statements).
   */
  readonly handleState?: boolean;
  /** True when the statement may run trigger or foreign-key-action programs (`OP_Program`). */
  readonly subPrograms?: boolean;
  /**
   * Which rows (by rowid) of which tables the statement can see or change, where its bytecode
   * proves it (engine/rowid-span.ts); tables not listed: any row.
   */
  readonly rowids?: RowidAccess;
}

const EMPTY: ReadonlySet<string> = new Set();
const EVERYTHING: ReadonlySet<string> = new Set([ALL_TABLES]);

/** A footprint that conflicts with everything: used where the bytecode cannot tell. */
export const UNKNOWN_FOOTPRINT: Footprint = { reads: EVERYTHING, writes: EVERYTHING, readonly: false, deterministic: false };

/**
 * Built-in functions whose result depends only on their arguments (and, for the per-handle
 * connection-state functions, on values that replays restore). Anything else counts as
 * non-deterministic. The date and time functions are left out on purpose: with 'now' they are not.
 */
const DETERMINISTIC_FUNCTIONS = new Set(
  (
    'abs char coalesce concat concat_ws format glob hex ifnull iif if instr length like likelihood likely lower ' +
    'ltrim max min nullif octet_length printf quote replace round rtrim sign soundex substr substring trim typeof ' +
    'unhex unicode unlikely upper zeroblob unistr unistr_quote ' +
    'json json_array json_array_length json_error_position json_extract json_insert json_object json_patch ' +
    'json_pretty json_quote json_remove json_replace json_set json_type json_valid jsonb jsonb_array jsonb_extract ' +
    'jsonb_insert jsonb_object jsonb_patch jsonb_remove jsonb_replace jsonb_set -> ->> ' +
    'acos acosh asin asinh atan atan2 atanh ceil ceiling cos cosh degrees exp floor ln log log10 log2 mod pi pow ' +
    'power radians sin sinh sqrt tan tanh trunc ' +
    'count sum total avg group_concat string_agg ' +
    'last_insert_rowid changes total_changes'
  ).split(' '),
);

/** True when the two sets share a table (either may be {@link ALL_TABLES}). */
export function intersects(a: ReadonlySet<string>, b: ReadonlySet<string>): boolean {
  if (a.size === 0 || b.size === 0) return false;
  if (a.has(ALL_TABLES) || b.has(ALL_TABLES)) return true;
  const [small, big] = a.size <= b.size ? [a, b] : [b, a];
  for (const t of small) if (big.has(t)) return true;
  return false;
}

/** Computes footprints on one engine, caching the root-page map until the schema changes. */
export class FootprintAnalyzer {
  private roots: Map<string, RootInfo> | undefined; // "db:rootpage" -> table, and whether it is the table's own b-tree
  private readonly cache = new Map<string, Footprint>();

  constructor(private readonly db: WasmDatabase) {}

  /** Forgets everything learned: call after any schema change. */
  invalidate(): void {
    this.roots = undefined;
    this.cache.clear();
  }

  /** The footprint of `sql`, which must be one statement. */
  of(sql: string): Footprint {
    let fp = this.cache.get(sql);
    if (!fp) {
      try {
        fp = this.compute(sql);
      } catch (e) {
        // Its queries need the file lock: SQLITE_BUSY when another process holds it.
        throw fromEngineError(e);
      }
      if (this.cache.size > 2000) this.cache.clear();
      this.cache.set(sql, fp);
    }
    return fp;
  }

  private compute(sql: string): Footprint {
    // Preparing a setting may apply it (flag PRAGMAs), and EXPLAIN prepares: never analyze one.
    if (classify(tokenize(sql)).type === 'setting') return UNKNOWN_FOOTPRINT;
    let rows: Record<string, unknown>[];
    const stmt = this.db.prepare(`EXPLAIN ${sql}`);
    try {
      rows = stmt.all();
    } finally {
      finalizeStatement(stmt);
    }
    const reads = new Set<string>();
    const writes = new Set<string>();
    let readonly = true;
    let unknown = false;
    let deterministic = true;
    let opensDatabase = false;
    let lastInsertRowid = false;
    let handleState = false;
    let subPrograms = false;
    for (const r of rows) {
      const op = r.opcode as string;
      switch (op) {
        case 'OpenRead':
        case 'ReopenIdx':
          reads.add(this.table(r.p3 as number, r.p2 as number));
          break;
        case 'OpenWrite':
          if (((r.p5 as number) & 0x10) !== 0) unknown = true; // root page held in a register
          else {
            const t = this.table(r.p3 as number, r.p2 as number);
            reads.add(t);
            writes.add(t);
          }
          break;
        case 'Clear': {
          const t = this.table(r.p2 as number, r.p1 as number);
          reads.add(t);
          writes.add(t);
          break;
        }
        case 'Function':
        case 'PureFunc':
        case 'AggStep':
        case 'AggStep1':
        case 'AggInverse':
        case 'AggValue':
        case 'AggFinal': {
          const p4 = String(r.p4 ?? '');
          const paren = p4.lastIndexOf('(');
          const name = (paren > 0 ? p4.slice(0, paren) : p4).toLowerCase();
          if (!DETERMINISTIC_FUNCTIONS.has(name)) deterministic = false;
          if (name === 'last_insert_rowid') lastInsertRowid = true;
          if (name === 'last_insert_rowid' || name === 'changes' || name === 'total_changes') handleState = true;
          break;
        }
        case 'Program':
          subPrograms = true;
          break;
        case 'Transaction':
          opensDatabase = true;
          if ((r.p2 as number) !== 0) readonly = false;
          break;
        case 'VOpen':
        case 'VUpdate':
        case 'VFilter':
        case 'Destroy':
        case 'CreateBtree':
        case 'ParseSchema':
          unknown = true;
          break;
        default:
          break;
      }
    }
    const fp = ((): Footprint => {
      if (unknown) return readonly ? { reads: EVERYTHING, writes: EMPTY, readonly, deterministic } : UNKNOWN_FOOTPRINT;
      if (!readonly && writes.size === 0) return UNKNOWN_FOOTPRINT; // SetCookie & co: schema-wide
      // It reads the database but no table: database state (page_count, freelist_count,
      // data_version, ...) that any commit may change, so it counts as reading everything.
      if (opensDatabase && reads.size === 0) return { reads: EVERYTHING, writes: EMPTY, readonly, deterministic };
      return { reads, writes, readonly, deterministic };
    })();
    // Row-level facts, for statements whose tables are all known. A read that calls a function
    // that may answer differently is re-run whenever its tables changed, as before (its answer
    // may change without any row changing).
    let rowids: RowidAccess | undefined;
    if (fp !== UNKNOWN_FOOTPRINT && !fp.reads.has(ALL_TABLES) && !subPrograms && (!fp.readonly || fp.deterministic)) {
      const only = fp.writes.size === 1 ? (fp.writes.values().next().value as string) : undefined;
      rowids = analyzeRowids(rows as unknown as ExplainRow[], (db, page) => this.rootInfo(db, page), fp.readonly, fp.readonly ? undefined : only);
    }
    return lastInsertRowid || handleState || subPrograms || rowids ? { ...fp, lastInsertRowid, handleState, subPrograms, rowids } : fp;
  }

  private table(db: number, root: number): string {
    return this.rootInfo(db, root)?.table ?? ALL_TABLES;
  }

  private rootInfo(db: number, root: number): RootInfo | undefined {
    this.roots ??= this.loadRoots();
    return this.roots.get(`${db}:${root}`);
  }

  private loadRoots(): Map<string, RootInfo> {
    const map = new Map<string, RootInfo>();
    const dbs = this.db.prepare('PRAGMA database_list');
    let list: Record<string, unknown>[];
    try {
      list = dbs.all();
    } finally {
      finalizeStatement(dbs);
    }
    for (const d of list) {
      const seq = d.seq as number;
      const name = d.name as string;
      map.set(`${seq}:1`, { table: `${name}.sqlite_schema`, tableRoot: true });
      const q = this.db.prepare(
        `SELECT rootpage, tbl_name, type FROM "${name.replace(/"/g, '""')}".sqlite_schema WHERE rootpage > 0`,
      );
      try {
        for (const row of q.all()) {
          map.set(`${seq}:${row.rootpage as number}`, {
            table: `${name}.${(row.tbl_name as string).toLowerCase()}`,
            tableRoot: row.type === 'table',
          });
        }
      } finally {
        finalizeStatement(q);
      }
    }
    return map;
  }
}
