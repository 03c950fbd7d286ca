/**
 * The footprint of a statement: which tables it reads and writes, learned from its bytecode
 * (`EXPLAIN`), trigger and foreign-key sub-programs included, without running it. The
 * concurrency tracker uses footprints to decide whether a statement can run beside another
 * handle's open transaction, and which tables a commit changed.
 * @module
 */
import { fromEngineError } from '../errors.js';
import type { WasmDatabase } from '../file/load.js';

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
}

const EMPTY: ReadonlySet<string> = new Set();
const EVERYTHING: ReadonlySet<string> = new Set([ALL_TABLES]);

/** A footprint that conflicts with everything: used where the bytecode cannot tell. */
export const UNKNOWN_FOOTPRINT: Footprint = { reads: EVERYTHING, writes: EVERYTHING, readonly: false };

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
  private roots: Map<string, string> | undefined; // "db:rootpage" -> "schema.table"
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
    let rows: Record<string, unknown>[];
    const stmt = this.db.prepare(`EXPLAIN ${sql}`);
    try {
      rows = stmt.all();
    } finally {
      stmt.finalize();
    }
    const reads = new Set<string>();
    const writes = new Set<string>();
    let readonly = true;
    let unknown = false;
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
        case 'Transaction':
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
    if (unknown) return readonly ? { reads: EVERYTHING, writes: EMPTY, readonly } : UNKNOWN_FOOTPRINT;
    if (!readonly && writes.size === 0) return UNKNOWN_FOOTPRINT; // SetCookie & co: schema-wide
    return { reads, writes, readonly };
  }

  private table(db: number, root: number): string {
    this.roots ??= this.loadRoots();
    return this.roots.get(`${db}:${root}`) ?? ALL_TABLES;
  }

  private loadRoots(): Map<string, string> {
    const map = new Map<string, string>();
    const dbs = this.db.prepare('PRAGMA database_list');
    let list: Record<string, unknown>[];
    try {
      list = dbs.all();
    } finally {
      dbs.finalize();
    }
    for (const d of list) {
      const seq = d.seq as number;
      const name = d.name as string;
      map.set(`${seq}:1`, `${name}.sqlite_schema`);
      const q = this.db.prepare(
        `SELECT rootpage, tbl_name FROM "${name.replace(/"/g, '""')}".sqlite_schema WHERE rootpage > 0`,
      );
      try {
        for (const row of q.all()) map.set(`${seq}:${row.rootpage as number}`, `${name}.${(row.tbl_name as string).toLowerCase()}`);
      } finally {
        q.finalize();
      }
    }
    return map;
  }
}
