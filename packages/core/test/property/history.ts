/**
 * The serializability property of BEGIN CONCURRENT, shared by the CI property test and
 * `pnpm fuzz`: random programs on several handles, interleaved statement by statement with
 * awaits in between. Every committed transaction (autocommit statements included) is replayed
 * serially, in commit order, on a fresh database, one handle per program: each must be shown
 * exactly what it was shown in the concurrent run, and the final tables must be equal.
 *
 * The operations cover every class of hole an adversarial review found: writes that read other
 * tables, a write with `random()` read back, triggers that write other tables and fire
 * depending on another table, foreign-key cascades with the pragma toggled, `OR FAIL` with
 * partial changes, `OR REPLACE`, upserts, AUTOINCREMENT and WITHOUT ROWID tables, the
 * connection-state SQL functions, bad parameters, and applications that mutate returned rows.
 */
import fc from 'fast-check';
import { errorKind, open, type Connection } from '../../src/index.js';

/** One operation of a program; `m` asks the application to mutate the rows it was given. */
export type Op =
  | { t: 'get'; k: number; m?: boolean }
  | { t: 'range'; lo: number; hi: number; m?: boolean }
  | { t: 'sum'; above: number }
  | { t: 'put'; k: number; v: number }
  | { t: 'add'; k: number; d: number }
  | { t: 'del'; k: number }
  | { t: 'incr'; k: number }
  | { t: 'ins'; v: number }
  | { t: 'derive'; k: number }
  | { t: 'setcfg'; x: number }
  | { t: 'flag' }
  | { t: 'audit'; k: number }
  | { t: 'rset'; k: number }
  | { t: 'rget'; k: number }
  | { t: 'bump'; lo: number }
  | { t: 'replace'; k: number; v: number }
  | { t: 'parent'; id: number }
  | { t: 'unparent'; id: number }
  | { t: 'child'; id: number; pid: number }
  | { t: 'children'; pid: number }
  | { t: 'fk'; on: boolean }
  | { t: 'ains'; v: number }
  | { t: 'adel' }
  | { t: 'wput'; k: number; v: number }
  | { t: 'wget'; k: number }
  | { t: 'wins'; k: number; v: number }
  | { t: 'lir' }
  | { t: 'lirins' }
  | { t: 'bad'; kind: number }
  | { t: 'span'; shape: number; b: number }
  | { t: 'sbump'; k: number }
  | { t: 'smove'; k: number; to: number }
  | { t: 'sdel'; k: number }
  | { t: 'sput'; k: number; u: number }
  | { t: 'supsert'; k: number; u: number }
  | { t: 'sreplace'; k: number; u: number };

/** A program: one handle's work, as one concurrent transaction or as autocommit statements. */
export interface Program {
  mode: 'concurrent' | 'autocommit';
  ops: Op[];
  end: 'commit' | 'rollback';
}

/** Operations that only make sense outside a transaction (they change the shared connection). */
const AUTOCOMMIT_ONLY = new Set<Op['t']>(['fk']);

export const key = fc.integer({ min: 1, max: 8 });
const small = fc.integer({ min: 1, max: 4 });
/** Rowids of the `sp` table (rows 2, 4, ..., 10 at first) and a little beyond. */
const spot = fc.integer({ min: 0, max: 12 });
/**
 * The reads of the `sp` family: rowid ranges up and down (each bound inclusive or not), a point,
 * an aggregate, a filter, and a scan of the unique index (no rowid span).
 */
const SPAN_READS = [
  'SELECT id, v, u FROM sp WHERE id > ?',
  'SELECT id, v, u FROM sp WHERE id >= ?',
  'SELECT id, v, u FROM sp WHERE id < ? ORDER BY id DESC',
  'SELECT id, v, u FROM sp WHERE id <= ? ORDER BY id DESC',
  'SELECT v, u FROM sp WHERE id = ?',
  'SELECT count(*) AS n, total(v) AS s FROM sp WHERE id > ?',
  'SELECT id, v FROM sp WHERE id > ? AND v > 4',
  'SELECT id, v FROM sp WHERE u > ? ORDER BY u',
];

/** A generator per kind of operation. */
const OPS: Record<Op['t'], fc.Arbitrary<Op>> = {
  get: fc.record({ t: fc.constant('get' as const), k: key, m: fc.boolean() }),
  range: fc.record({ t: fc.constant('range' as const), lo: key, hi: key, m: fc.boolean() }),
  sum: fc.record({ t: fc.constant('sum' as const), above: fc.integer({ min: 0, max: 80 }) }),
  put: fc.record({ t: fc.constant('put' as const), k: key, v: fc.integer({ min: 0, max: 99 }) }),
  add: fc.record({ t: fc.constant('add' as const), k: key, d: fc.integer({ min: -5, max: 5 }) }),
  del: fc.record({ t: fc.constant('del' as const), k: key }),
  incr: fc.record({ t: fc.constant('incr' as const), k: key }),
  ins: fc.record({ t: fc.constant('ins' as const), v: fc.integer({ min: 0, max: 99 }) }),
  derive: fc.record({ t: fc.constant('derive' as const), k: key }),
  setcfg: fc.record({ t: fc.constant('setcfg' as const), x: fc.integer({ min: 0, max: 9 }) }),
  flag: fc.record({ t: fc.constant('flag' as const) }),
  audit: fc.record({ t: fc.constant('audit' as const), k: key }),
  rset: fc.record({ t: fc.constant('rset' as const), k: small }),
  rget: fc.record({ t: fc.constant('rget' as const), k: small }),
  bump: fc.record({ t: fc.constant('bump' as const), lo: key }),
  replace: fc.record({ t: fc.constant('replace' as const), k: key, v: fc.integer({ min: 0, max: 99 }) }),
  parent: fc.record({ t: fc.constant('parent' as const), id: small }),
  unparent: fc.record({ t: fc.constant('unparent' as const), id: small }),
  child: fc.record({ t: fc.constant('child' as const), id: key, pid: small }),
  children: fc.record({ t: fc.constant('children' as const), pid: small }),
  fk: fc.record({ t: fc.constant('fk' as const), on: fc.boolean() }),
  ains: fc.record({ t: fc.constant('ains' as const), v: fc.integer({ min: 0, max: 99 }) }),
  adel: fc.record({ t: fc.constant('adel' as const) }),
  wput: fc.record({ t: fc.constant('wput' as const), k: small, v: fc.integer({ min: 0, max: 99 }) }),
  wget: fc.record({ t: fc.constant('wget' as const), k: small }),
  wins: fc.record({ t: fc.constant('wins' as const), k: small, v: fc.integer({ min: 0, max: 99 }) }),
  lir: fc.record({ t: fc.constant('lir' as const) }),
  lirins: fc.record({ t: fc.constant('lirins' as const) }),
  bad: fc.record({ t: fc.constant('bad' as const), kind: fc.integer({ min: 0, max: 3 }) }),
  span: fc.record({ t: fc.constant('span' as const), shape: fc.integer({ min: 0, max: SPAN_READS.length - 1 }), b: spot }),
  sbump: fc.record({ t: fc.constant('sbump' as const), k: spot }),
  smove: fc.record({ t: fc.constant('smove' as const), k: spot, to: spot }),
  sdel: fc.record({ t: fc.constant('sdel' as const), k: spot }),
  sput: fc.record({ t: fc.constant('sput' as const), k: spot, u: spot }),
  supsert: fc.record({ t: fc.constant('supsert' as const), k: spot, u: spot }),
  sreplace: fc.record({ t: fc.constant('sreplace' as const), k: spot, u: spot }),
};
const KINDS = Object.keys(OPS) as Op['t'][];

/** Kinds that interact, so that a history drawing one or two families exercises the interaction. */
const FAMILIES: Op['t'][][] = [
  ['get', 'range', 'sum', 'put', 'add', 'del', 'incr'],
  ['derive', 'setcfg', 'get', 'range', 'incr'],
  ['flag', 'audit', 'add', 'put', 'incr', 'get'],
  ['rset', 'rget'],
  ['bump', 'get', 'sum', 'range', 'add'],
  ['replace', 'put', 'get', 'range'],
  ['fk', 'parent', 'unparent', 'child', 'children'],
  ['ains', 'adel', 'lir', 'lirins'],
  ['wput', 'wins', 'wget', 'ins', 'lir', 'lirins'],
  ['bad', 'put', 'get'],
  // Rowid-span reads (engine/rowid-span.ts) with writes inside and outside their ranges: by
  // rowid, moving rowids, through the unique index (upsert, REPLACE).
  ['span', 'sbump', 'smove', 'sdel', 'sput', 'supsert', 'sreplace'],
  ['span', 'sbump', 'sdel'],
];

/** Programs whose operations come from `kinds`. */
function programArb(kinds: readonly Op['t'][]): fc.Arbitrary<Program> {
  const op = fc.oneof(...kinds.map((k) => OPS[k]));
  const inTx = kinds.filter((k) => !AUTOCOMMIT_ONLY.has(k));
  const concurrent = fc.record({
    mode: fc.constant('concurrent' as const),
    ops: fc.array(inTx.length > 0 ? fc.oneof(...inTx.map((k) => OPS[k])) : op, { minLength: 1, maxLength: 6 }),
    end: fc.oneof({ weight: 9, arbitrary: fc.constant('commit' as const) }, { weight: 1, arbitrary: fc.constant('rollback' as const) }),
  });
  const autocommit = fc.record({
    mode: fc.constant('autocommit' as const),
    ops: fc.array(op, { minLength: 1, maxLength: 6 }),
    end: fc.constant('commit' as const),
  });
  if (inTx.length === 0) return autocommit;
  return fc.oneof({ weight: 4, arbitrary: concurrent }, { weight: 1, arbitrary: autocommit });
}

/**
 * Everything a history needs: the programs and the interleaving. Each history draws its
 * operations from a random handful of kinds (swarm testing): rare interactions between two or
 * three kinds then come up often instead of being drowned by the other kinds.
 */
export const historyArb = fc
  .oneof(
    fc.subarray(KINDS, { minLength: 2, maxLength: 7 }),
    fc.subarray(FAMILIES, { minLength: 1, maxLength: 3 }).map((fs) => [...new Set(fs.flat())]),
  )
  .chain((kinds) =>
    fc.tuple(fc.array(programArb(kinds), { minLength: 2, maxLength: 6 }), fc.array(fc.nat({ max: 7 }), { minLength: 0, maxLength: 60 })),
  );


export const SCHEMA = `
  PRAGMA foreign_keys = OFF;
  CREATE TABLE kv (k INTEGER PRIMARY KEY, v INT NOT NULL CHECK (v <= 100));
  INSERT INTO kv VALUES (1, 10), (2, 20), (3, 30), (4, 40), (5, 50), (6, 60);
  CREATE TABLE log (id INTEGER PRIMARY KEY, v);
  CREATE TABLE cfg (id INTEGER PRIMARY KEY, x INT NOT NULL);
  INSERT INTO cfg VALUES (1, 3), (2, 1);
  CREATE TABLE audit (k INT, v INT);
  CREATE TRIGGER kv_audit AFTER UPDATE OF v ON kv WHEN (SELECT x FROM cfg WHERE id = 2) = 1
    BEGIN INSERT INTO audit VALUES (new.k, new.v); END;
  CREATE TABLE rnd (k INTEGER PRIMARY KEY, v INT NOT NULL);
  INSERT INTO rnd VALUES (1, 0), (2, 0), (3, 0), (4, 0);
  CREATE TABLE parent (id INTEGER PRIMARY KEY);
  INSERT INTO parent VALUES (1), (2), (3);
  CREATE TABLE child (id INTEGER PRIMARY KEY, pid REFERENCES parent ON DELETE CASCADE);
  INSERT INTO child VALUES (1, 1), (2, 1), (3, 2);
  CREATE TABLE alog (id INTEGER PRIMARY KEY AUTOINCREMENT, v);
  CREATE TABLE wr (k TEXT PRIMARY KEY, v INT) WITHOUT ROWID;
  CREATE TABLE sp (id INTEGER PRIMARY KEY, v INT NOT NULL, u INT UNIQUE);
  INSERT INTO sp VALUES (2, 2, 2), (4, 4, 4), (6, 6, 6), (8, 8, 8), (10, 10, 10);
`;

const TABLES = ['kv', 'log', 'cfg', 'audit', 'rnd', 'parent', 'child', 'alog', 'wr', 'sp'];

/** What a handle was told last, to check the connection-state SQL functions against. */
interface Told {
  rowid: number | bigint;
  changes: number;
}

/** Thrown when an invariant that needs no serial replay is broken. */
export class Violation extends Error {}

function invariant(ok: boolean, what: string): void {
  if (!ok) throw new Violation(what);
}

/** A write through run(): remembers what the handle was told. */
function write(h: Connection, told: Told, sql: string, params?: unknown): number {
  const r = params === undefined ? h.run(sql) : h.run(sql, params as never);
  told.rowid = r.lastInsertRowid;
  told.changes = r.changes;
  return r.changes;
}

/** A copy of rows as the application saw them, before it mutates them. */
function seen<T>(rows: T): T {
  return structuredClone(rows);
}

function mutate(rows: Record<string, unknown>[] | Record<string, unknown> | undefined): void {
  for (const r of Array.isArray(rows) ? rows : rows ? [rows] : []) for (const k of Object.keys(r)) if (typeof r[k] === 'number') (r[k] as number) += 1;
}

/** The ops another process may run: plain writes whose result is their `changes`. */
export type PlainWrite = Extract<Op, { t: 'put' | 'add' | 'del' | 'setcfg' }>;

/** The SQL and parameters of a {@link PlainWrite}. */
export function plainWrite(o: PlainWrite): [string, unknown[]] {
  switch (o.t) {
    case 'put':
      return ['INSERT INTO kv (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v', [o.k, o.v]];
    case 'add':
      return ['UPDATE kv SET v = v + ? WHERE k = ?', [o.d, o.k]];
    case 'del':
      return ['DELETE FROM kv WHERE k = ?', [o.k]];
    case 'setcfg':
      return ['UPDATE cfg SET x = ? WHERE id = 1', [o.x]];
  }
}

/** Runs one op on `h`; returns what the application saw (`serial` is set on the serial replay). */
export function apply(h: Connection, o: Op, told: Told, serial: boolean): unknown {
  switch (o.t) {
    case 'get': {
      const row = h.get<{ v: number }>('SELECT v FROM kv WHERE k = ?', [o.k]);
      const saw = seen(row ?? null);
      if (o.m) mutate(row);
      return saw;
    }
    case 'range': {
      const rows = h.all('SELECT k, v FROM kv WHERE k BETWEEN ? AND ? ORDER BY k', [Math.min(o.lo, o.hi), Math.max(o.lo, o.hi)]);
      const saw = seen(rows);
      if (o.m) mutate(rows);
      return saw;
    }
    case 'sum':
      return h.get('SELECT count(*) AS n, total(v) AS s FROM kv WHERE v > ?', [o.above]);
    case 'put':
    case 'add':
    case 'del':
    case 'setcfg':
      return write(h, told, ...plainWrite(o));
    case 'incr': {
      // Read-modify-write in the application: the classic lost-update shape.
      const row = h.get<{ v: number }>('SELECT v FROM kv WHERE k = ?', [o.k]);
      if (!row) return null;
      const v = row.v;
      mutate(row); // the application keeps using (and changing) the object it was given
      write(h, told, 'UPDATE kv SET v = ? WHERE k = ?', [v + 1, o.k]);
      return v;
    }
    case 'ins':
      write(h, told, 'INSERT INTO log (v) VALUES (?)', [o.v]);
      return Number(told.rowid);
    case 'derive':
      // A write whose value comes from another table.
      return write(h, told, 'UPDATE kv SET v = (SELECT x FROM cfg WHERE id = 1) + k WHERE k = ?', [o.k]);
    case 'flag':
      // Turns the audit trigger on or off: writes to kv fire it depending on this table.
      return write(h, told, 'UPDATE cfg SET x = 1 - x WHERE id = 2');
    case 'audit':
      return h.get('SELECT count(*) AS n, total(v) AS s FROM audit WHERE k = ?', [o.k]);
    case 'rset':
      // A non-deterministic write (see replaySerial for how the oracle treats it).
      return write(h, told, 'UPDATE rnd SET v = abs(random() % 1000) + 1 WHERE k = ?', [o.k]);
    case 'rget':
      return h.get<{ v: number }>('SELECT v FROM rnd WHERE k = ?', [o.k])?.v ?? null;
    case 'bump':
      // OR FAIL: rows before the failing one stay changed (CHECK v <= 100).
      return write(h, told, 'UPDATE OR FAIL kv SET v = v + 45 WHERE k >= ?', [o.lo]);
    case 'replace':
      return write(h, told, 'INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)', [o.k, o.v]);
    case 'parent':
      return write(h, told, 'INSERT OR IGNORE INTO parent (id) VALUES (?)', [o.id]);
    case 'unparent':
      return write(h, told, 'DELETE FROM parent WHERE id = ?', [o.id]);
    case 'child':
      return write(h, told, 'INSERT INTO child (id, pid) VALUES (?, ?)', [o.id, o.pid]);
    case 'children':
      return h.all('SELECT id FROM child WHERE pid = ? ORDER BY id', [o.pid]);
    case 'fk':
      h.exec(`PRAGMA foreign_keys = ${o.on ? 'ON' : 'OFF'}`);
      return o.on;
    case 'ains':
      write(h, told, 'INSERT INTO alog (v) VALUES (?)', [o.v]);
      return Number(told.rowid);
    case 'adel':
      return write(h, told, 'DELETE FROM alog WHERE id = (SELECT max(id) FROM alog)');
    case 'wput': {
      const before = told.rowid;
      const n = write(h, told, 'INSERT INTO wr VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v', [`k${o.k}`, o.v]);
      // A WITHOUT ROWID insert sets no rowid: the handle's last rowid must not move.
      if (!serial) invariant(told.rowid === before, `lastInsertRowid moved from ${before} to ${told.rowid} on a WITHOUT ROWID insert`);
      told.rowid = before;
      return n;
    }
    case 'wins': {
      const before = told.rowid;
      const n = write(h, told, 'INSERT OR IGNORE INTO wr VALUES (?, ?)', [`k${o.k}`, o.v]);
      if (!serial) invariant(told.rowid === before, `lastInsertRowid moved from ${before} to ${told.rowid} on a WITHOUT ROWID insert`);
      told.rowid = before;
      return n;
    }
    case 'wget':
      return h.get('SELECT v FROM wr WHERE k = ?', [`k${o.k}`]) ?? null;
    case 'lir': {
      const r = h.get<{ r: number; c: number }>('SELECT last_insert_rowid() AS r, changes() AS c')!;
      if (!serial) {
        invariant(r.r === Number(told.rowid), `last_insert_rowid() answered ${r.r}, the handle was told ${told.rowid}`);
        invariant(r.c === told.changes, `changes() answered ${r.c}, the handle was told ${told.changes}`);
      }
      return null;
    }
    case 'lirins': {
      // Stores the handle's own last rowid: another handle's uncommitted one must never leak in.
      // (Into a WITHOUT ROWID table, so the handle's last rowid does not move.)
      const before = told.rowid;
      const n = write(h, told, "INSERT INTO wr (k, v) VALUES ('lir', last_insert_rowid()) ON CONFLICT (k) DO UPDATE SET v = excluded.v");
      told.rowid = before;
      return n;
    }
    case 'span':
      return h.all(SPAN_READS[o.shape] as string, [o.b]);
    case 'sbump':
      return write(h, told, 'UPDATE sp SET v = v + 1 WHERE id = ?', [o.k]);
    case 'smove':
      return write(h, told, 'UPDATE sp SET id = ? WHERE id = ?', [o.to, o.k]);
    case 'sdel':
      return write(h, told, 'DELETE FROM sp WHERE id = ?', [o.k]);
    case 'sput':
      return write(h, told, 'INSERT INTO sp (id, v, u) VALUES (?, ?, ?)', [o.k, o.k, o.u]);
    case 'supsert':
      return write(h, told, 'INSERT INTO sp (id, v, u) VALUES (?, 0, ?) ON CONFLICT (u) DO UPDATE SET v = v + 1', [o.k, o.u]);
    case 'sreplace':
      return write(h, told, 'REPLACE INTO sp (id, v, u) VALUES (?, 50, ?)', [o.k, o.u]);
    case 'bad': {
      const bad: Array<() => unknown> = [
        () => h.run('INSERT INTO log (v) VALUES (?)', [2n ** 64n + 5n]),
        () => h.run('INSERT INTO log (id, v) VALUES (?, ?)', [1000]),
        () => (h.run as (...a: unknown[]) => unknown)('INSERT INTO log (id, v) VALUES (?, ?)', 1000, 1),
        () => h.run('INSERT INTO log (v) VALUES (?)', [undefined as never]),
      ];
      try {
        bad[o.kind % bad.length]!();
      } catch (e) {
        // The statement may first bring the transaction back, and that can conflict.
        if (errorKind(e) === 'busy_snapshot' || errorKind(e) === 'busy') throw e;
        if (!serial) invariant(errorKind(e) === 'misuse', `bad parameters gave ${String(e)}`);
        return null;
      }
      throw new Violation(`bad parameters (${o.kind}) were accepted`);
    }
  }
}

interface Committed {
  seq: number;
  program: number;
  autocommit: boolean;
  steps: Array<{ op: Op; saw: unknown }>;
}

/** A gate per handle: the scheduler lets one handle run one step at a time. */
class Scheduler {
  private waiting = new Map<number, () => void>();
  private arrived: (() => void) | undefined;
  done = new Map<number, Promise<void>>();
  async turn(h: number): Promise<void> {
    await new Promise<void>((resolve) => {
      this.waiting.set(h, resolve);
      this.arrived?.();
    });
  }
  async step(h: number): Promise<boolean> {
    const go = this.waiting.get(h);
    if (!go) return false;
    this.waiting.delete(h);
    const arrived = new Promise<void>((r) => (this.arrived = r));
    go();
    await Promise.race([arrived, this.done.get(h)]);
    return true;
  }
  pending(): number[] {
    return [...this.waiting.keys()];
  }
  /** Lets the driver go on while this handle waits for something else (an async commit). */
  aside(): void {
    this.arrived?.();
  }
}

/** Runs one op, turning an error the application would see into what it saw. */
function attempt(h: Connection, o: Op, told: Told, serial: boolean): unknown {
  try {
    return apply(h, o, told, serial);
  } catch (e) {
    if (e instanceof Violation) throw e;
    const kind = errorKind(e);
    if (kind === 'busy_snapshot' || kind === 'busy' || kind === 'other') throw e;
    return { error: (e as Error).message };
  }
}

/** Options of {@link runHistory}: an external step runs between the steps of the handles. */
export interface HistoryOptions {
  /** A database to run on instead of a fresh in-memory one (already has {@link SCHEMA}). */
  db?: Connection;
  /**
   * Another process's commits: called at some schedule points with the op index; returns the
   * op it committed, or undefined. The ops are part of the serial order.
   */
  external?: (i: number) => Promise<{ op: Op; saw: unknown } | undefined>;
  /**
   * How a concurrent program commits (default `h.exec('COMMIT')`). An async commit that resolves
   * in the serial order (group commit's `commitAsync`: members resolve in the order the group
   * applied them) is numbered in the order its promise resolves.
   */
  commit?: (h: Connection) => void | Promise<void>;
}

/** Runs one history and checks it against the serial replay; throws on any difference. */
export async function runHistory(programs: Program[], schedule: number[], options: HistoryOptions = {}): Promise<void> {
  const db = options.db ?? open(':memory:');
  if (!options.db) db.exec(SCHEMA);
  const committed: Committed[] = [];
  let seq = 0;
  const sched = new Scheduler();
  const tasks = programs.map((p, i) => {
    const h = db.connect();
    const told: Told = { rowid: 0, changes: 0 };
    const task = (async () => {
      await sched.turn(i);
      if (p.mode === 'autocommit') {
        for (const o of p.ops) {
          try {
            const saw = attempt(h, o, told, false);
            committed.push({ seq: ++seq, program: i, autocommit: true, steps: [{ op: o, saw }] });
          } catch (e) {
            if (errorKind(e) !== 'busy') throw e; // refused: nothing was changed
          }
          await sched.turn(i);
        }
        h.close();
        return;
      }
      h.exec('BEGIN CONCURRENT');
      const steps: Committed['steps'] = [];
      try {
        for (const o of p.ops) {
          await sched.turn(i);
          try {
            steps.push({ op: o, saw: attempt(h, o, told, false) });
          } catch (e) {
            if (errorKind(e) !== 'busy') throw e; // refused, not logged: the transaction goes on
          }
        }
        await sched.turn(i);
        if (p.end === 'rollback') h.exec('ROLLBACK');
        else {
          if (options.commit) {
            const committing = options.commit(h);
            sched.aside(); // other handles run (and commit) while this commit waits for its group
            await committing;
          } else h.exec('COMMIT');
          committed.push({ seq: ++seq, program: i, autocommit: false, steps });
        }
      } catch (e) {
        if (errorKind(e) !== 'busy_snapshot') throw e;
        h.exec('ROLLBACK'); // a no-op after a conflict
        if (h.inTransaction) throw new Violation('a conflict left the transaction open');
      } finally {
        h.close();
      }
    })();
    sched.done.set(i, task);
    return task;
  });
  // Drive the interleaving: the schedule first, then round-robin until everyone is done.
  await new Promise((r) => setImmediate(r));
  let s = 0;
  for (;;) {
    const pending = sched.pending();
    if (pending.length === 0) break;
    const pick = s < schedule.length ? (schedule[s] as number) % programs.length : -1;
    if (options.external && s < schedule.length && (schedule[s] as number) % 3 === 0) {
      const ext = await options.external(s);
      if (ext) committed.push({ seq: ++seq, program: -1, autocommit: true, steps: [ext] });
    }
    s++;
    const h = pending.includes(pick) ? pick : (pending[s % pending.length] as number);
    await sched.step(h);
    await new Promise((r) => setImmediate(r));
  }
  await Promise.all(tasks);
  try {
    replaySerial(db, programs.length, committed);
  } finally {
    if (!options.db) db.close();
  }
}

/** Replays the committed transactions in commit order on a fresh database and compares. */
function replaySerial(db: Connection, programs: number, committed: Committed[]): void {
  const serial = open(':memory:');
  serial.exec(SCHEMA);
  const handles = Array.from({ length: programs + 1 }, () => serial.connect());
  const told = handles.map((): Told => ({ rowid: 0, changes: 0 }));
  const used = new Set<number>(); // every AUTOINCREMENT id ever handed out and committed
  let marker = 0;
  try {
    for (const c of committed.sort((a, b) => a.seq - b.seq)) {
      const h = handles[c.program + 1] as Connection;
      const t = told[c.program + 1] as Told;
      if (!c.autocommit) h.exec('BEGIN');
      for (const { op: o, saw } of c.steps) {
        const where = `${JSON.stringify(o)} in commit #${c.seq} (program ${c.program})`;
        if (o.t === 'ins' || o.t === 'ains') {
          // Rowids chosen beside reservations may differ from a serial max+1: replay with the rowid told.
          const table = o.t === 'ins' ? 'log' : 'alog';
          if (typeof saw === 'number') {
            if (o.t === 'ains') {
              if (used.has(saw)) throw new Violation(`AUTOINCREMENT id ${saw} handed out twice (${where})`);
              used.add(saw);
            }
            h.run(`INSERT INTO ${table} (id, v) VALUES (?, ?)`, [saw, o.v]);
          } else {
            const now = attempt(h, o, t, true);
            if (JSON.stringify(now) !== JSON.stringify(saw)) throw new Violation(`${where}: saw ${JSON.stringify(saw)}, serially ${JSON.stringify(now)}`);
          }
          continue;
        }
        if (o.t === 'rset') {
          // random(): the serial value is unknown until the transaction reads it back (a marker).
          const n = h.run('UPDATE rnd SET v = ? WHERE k = ?', [-++marker, o.k]).changes;
          if (n !== saw) throw new Violation(`${where}: saw ${JSON.stringify(saw)}, serially ${n}`);
          continue;
        }
        if (o.t === 'rget') {
          const v = h.get<{ v: number }>('SELECT v FROM rnd WHERE k = ?', [o.k])?.v ?? null;
          if (v !== null && v < 0 && typeof saw === 'number') h.run('UPDATE rnd SET v = ? WHERE k = ?', [saw, o.k]);
          else if (v !== saw) throw new Violation(`${where}: saw ${JSON.stringify(saw)}, serially ${JSON.stringify(v)}`);
          continue;
        }
        const now = attempt(h, o, t, true);
        if (JSON.stringify(now) !== JSON.stringify(saw)) {
          throw new Violation(`${where}: saw ${JSON.stringify(saw)}, serially ${JSON.stringify(now)}`);
        }
      }
      if (!c.autocommit) h.exec('COMMIT');
    }
    for (const table of TABLES) {
      const order = table === 'wr' ? 'k' : 'rowid';
      const a = db.all(`SELECT * FROM ${table} ORDER BY ${order}`);
      const b = serial.all(`SELECT * FROM ${table} ORDER BY ${order}`);
      const same =
        table === 'rnd'
          ? a.length === b.length && a.every((r, i) => (b[i]!.v as number) < 0 || JSON.stringify(r) === JSON.stringify(b[i]))
          : JSON.stringify(a) === JSON.stringify(b);
      if (!same) throw new Violation(`final ${table} differs: concurrent ${JSON.stringify(a)}, serial ${JSON.stringify(b)}`);
    }
  } finally {
    for (const h of handles) h.close();
    serial.close();
  }
}
