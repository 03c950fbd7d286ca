/**
 * An independent serializability checker: real histories on the real engine (several sibling
 * handles, random interleavings with awaits), then every committed unit (autocommit statement,
 * BEGIN CONCURRENT, BEGIN IMMEDIATE, transaction()) is replayed serially in commit order on a
 * fresh plain-SQLite database (oracle.ts). Every result each committed unit saw, and the final
 * tables, must be identical.
 */
import { errorKind, open, type Connection } from '../../src/index.js';
import { prng } from '../helpers.js';
import { rawDatabase } from './oracle.js';

export type HistoryKind = 'mixed' | 'settings' | 'lane' | 'exotic' | 'hot' | 'span' | 'evict';

interface Step {
  sql: string;
  params: unknown[] | undefined;
  want: 'run' | 'get' | 'all' | 'pluck' | 'raw';
  saw: unknown;
}
interface Unit {
  kind: 'auto' | 'concurrent' | 'immediate' | 'txfn';
  handle: number;
  steps: Step[];
  seq?: number;
}

export const SCHEMA = `
CREATE TABLE kv (k INTEGER PRIMARY KEY, v INT NOT NULL);
CREATE INDEX kv_big ON kv(v) WHERE v > 50;
CREATE INDEX kv_mod ON kv(v % 7);
CREATE TABLE cfg (id INTEGER PRIMARY KEY, x INT NOT NULL);
CREATE TABLE parent (id INTEGER PRIMARY KEY, n INT NOT NULL);
CREATE TABLE child (id INTEGER PRIMARY KEY, pid INT REFERENCES parent(id) ON DELETE CASCADE, w INT, nul INT REFERENCES parent(id) ON DELETE SET NULL);
CREATE TABLE audit (id INTEGER PRIMARY KEY, what TEXT, val INT);
CREATE TABLE uniq (id INTEGER PRIMARY KEY, u INT UNIQUE, w INT);
CREATE TABLE gen (id INTEGER PRIMARY KEY, a INT, b INT GENERATED ALWAYS AS (a * 2) STORED, c INT GENERATED ALWAYS AS (a + 1) VIRTUAL);
CREATE TABLE log (id INTEGER PRIMARY KEY, v INT NOT NULL);
CREATE TABLE chain (id INTEGER PRIMARY KEY, n INT NOT NULL);
CREATE TABLE wr (k TEXT PRIMARY KEY, v INT) WITHOUT ROWID;
CREATE TABLE dchild (id INTEGER PRIMARY KEY, pid INT REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED);
CREATE TRIGGER log_nine BEFORE INSERT ON log WHEN new.v = 9 BEGIN SELECT RAISE(FAIL, 'nine'); END;
CREATE TRIGGER gen_cap BEFORE UPDATE ON gen WHEN new.a > 20 BEGIN SELECT RAISE(IGNORE); END;
CREATE VIEW vtot AS SELECT count(*) AS n, total(v) AS s FROM kv WHERE v > 30;
CREATE TRIGGER kv_big_audit AFTER UPDATE OF v ON kv WHEN new.v > 50 AND old.v <= 50 BEGIN INSERT INTO audit (what, val) VALUES ('big', new.v); END;
CREATE TRIGGER parent_gone AFTER DELETE ON parent BEGIN UPDATE cfg SET x = x + 100 WHERE id = 2; END;
CREATE TRIGGER child_neg BEFORE INSERT ON child WHEN new.w < 0 BEGIN SELECT RAISE(ABORT, 'negative w'); END;
CREATE TRIGGER chain_step AFTER UPDATE ON chain WHEN new.n > 0 AND new.id < 5 BEGIN UPDATE chain SET n = new.n - 1 WHERE id = new.id + 1; END;
CREATE TRIGGER wr_mirror AFTER INSERT ON wr BEGIN UPDATE gen SET a = a + 1 WHERE id = 1; END;
INSERT INTO kv VALUES (1, 10), (2, 20), (3, 30), (4, 40), (5, 50), (6, 60);
INSERT INTO cfg VALUES (1, 7), (2, 0);
INSERT INTO parent VALUES (1, 1), (2, 2), (3, 3);
INSERT INTO child VALUES (1, 1, 5, 2), (2, 1, 6, 3), (3, 2, 7, 1), (4, 3, 8, 2);
INSERT INTO uniq VALUES (1, 10, 0), (2, 20, 0), (3, 30, 0);
INSERT INTO gen (id, a) VALUES (1, 1), (2, 2);
INSERT INTO chain VALUES (1, 0), (2, 0), (3, 0), (4, 0), (5, 0);
INSERT INTO wr VALUES ('a', 1);
CREATE TABLE sp (id INTEGER PRIMARY KEY, v INT NOT NULL, u INT UNIQUE);
CREATE TABLE sn (a INT, b INT);
CREATE TABLE spc (id INTEGER PRIMARY KEY, pid INT REFERENCES sp(id) ON DELETE CASCADE);
INSERT INTO sp VALUES (-2, -2, -20), (1, 1, 10), (2, 2, 20), (3, 3, 30), (5, 5, 50), (8, 8, 80), (9, 9, 90);
INSERT INTO sn (rowid, a, b) VALUES (1, 1, 1), (2, 2, 2), (4, 4, 4), (6, 6, 6);
INSERT INTO spc VALUES (1, 1), (2, 5), (3, 8);
CREATE TABLE ev (id INTEGER PRIMARY KEY, v INT NOT NULL);
WITH RECURSIVE r(x) AS (SELECT 1000 UNION ALL SELECT x + 7 FROM r WHERE x < 21000) INSERT INTO ev SELECT x, x % 10 FROM r;
CREATE TEMP TABLE tmp (id INTEGER PRIMARY KEY, v INT);
INSERT INTO tmp VALUES (1, 1);
`;

const TABLES = ['ev', 'sp', 'sn', 'spc', 'kv', 'cfg', 'parent', 'child', 'audit', 'uniq', 'gen', 'log', 'chain', 'wr', 'dchild', 'temp.tmp'];


class Abort extends Error {}

/** How wide the rowid range of the 'evict' histories' floods is. */
const FLOOD_SPREAD = 30_000;

// Histories no longer steer around the findings of FINDINGS.md (all fixed); `ADV_REPORT_KNOWN`
// is accepted and changes nothing.

const CONTROL = /^\s*(SAVEPOINT|RELEASE|ROLLBACK)/i;

function dbl(x: unknown): unknown {
  return typeof x === 'number' ? (x * 2) % 97 : x;
}

/** Runs one history; returns undefined when serializable, else a description. */
export async function runHistory(seed: number, kind: HistoryKind): Promise<{ ok: true; committed: number } | { ok: false; report: string }> {
  const rnd = prng(seed);
  const int = (lo: number, hi: number) => lo + Math.floor(rnd() * (hi - lo + 1));
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)] as T;
  const db = open(':memory:');
  db.exec(SCHEMA);
  db.function('dbl', dbl as never, { deterministic: true });
  let seq = 0;
  const units: Unit[] = [];
  const nHandles = kind === 'evict' ? int(3, 6) : int(2, 5);
  const handles: Connection[] = [];
  const makeHandle = () => {
    const h = db.connect();
    const session = (h as unknown as { session: { commit(): void } }).session;
    const commit = session.commit.bind(session);
    let current: Unit | undefined;
    session.commit = () => {
      if (process.env.ADV_DEBUG) console.log(`h? commit handle#${h.id} inTx=${h.inTransaction} unit=${current?.kind}`);
      commit();
      if (current) current.seq = ++seq;
    };
    (h as unknown as { setUnit(u: Unit | undefined): void }).setUnit = (u) => (current = u);
    return h;
  };
  for (let i = 0; i < nHandles; i++) handles.push(makeHandle());
  const prepared = new Map<Connection, Map<string, ReturnType<Connection['prepare']>>>();
  // Deterministic for a seed (no timers): 1-3 hops through the event loop.
  const tick = async () => {
    for (let i = int(1, 3); i > 0; i--) await new Promise<void>((r) => setImmediate(r));
  };
  const aborted: Unit[] = [];

  const step = (h: Connection, u: Unit, sql: string, params: unknown[] | undefined, want: Step['want']): unknown => {
    let saw: unknown;
    try {
      if (want === 'pluck' || want === 'raw') {
        let m = prepared.get(h);
        if (!m) prepared.set(h, (m = new Map()));
        let st = m.get(sql);
        if (!st) m.set(sql, (st = h.prepare(sql))); // reused across transactions
        st.pluck(want === 'pluck').raw(want === 'raw');
        saw = params ? st.all(params as never) : st.all();
      } else if (want === 'run') {
        const r = params ? h.run(sql, params as never) : h.run(sql);
        saw = CONTROL.test(sql) ? null : /^\s*insert into (log|sp) \(v/i.test(sql) && r.changes > 0 ? { changes: r.changes, rowid: Number(r.lastInsertRowid) } : { changes: r.changes };
      } else if (want === 'get') saw = (params ? h.get(sql, params as never) : h.get(sql)) ?? null;
      else saw = params ? h.all(sql, params as never) : h.all(sql);
    } catch (e) {
      const k = errorKind(e);
      if (k === 'busy' || k === 'busy_snapshot') throw e;
      if (k === 'misuse') throw e;
      saw = { error: (e as Error).message };
    }
    if (process.env.ADV_DEBUG) console.log(`h${u.handle} ${u.kind} ${h.transactionMode ?? 'auto'} ${sql} ${JSON.stringify(params, big)} -> ${JSON.stringify(saw, big)} inTx=${h.inTransaction}`);
    const record: Step = { sql, params: params ? [...params] : undefined, want, saw: structuredClone(saw) };
    // An autocommit statement commits as it runs: its place in the commit order is now.
    if (u.kind === 'auto') units.push({ kind: 'auto', handle: u.handle, steps: [record], seq: ++seq });
    u.steps.push(record);
    // Mutating what the application was given must not matter (issue 9, class 7).
    if (Array.isArray(saw)) for (const r of saw) if (r && typeof r === 'object') for (const key of Object.keys(r)) (r as Record<string, unknown>)[key] = 'mutated';
    return structuredClone(u.steps[u.steps.length - 1]?.saw);
  };

  /** One random operation; `tx` says whether savepoints may be used. */
  const operation = async (h: Connection, u: Unit, tx: boolean) => {
    const k = kind === 'hot' ? int(1, 2) : int(1, 6); // 'hot': two rows everybody fights over
    const s = (sql: string, params?: unknown[], want: Step['want'] = 'run') => step(h, u, sql, params, want);
    if (kind === 'evict' && rnd() < 0.4) {
      // The written-rowid record (engine/written-rowids.ts) keeps 8,192 rowids per table and then
      // forgets those of the older half of the commits: floods of distinct point writes make it
      // evict while other transactions' logged reads (points and spans, inside and outside the
      // flooded range) wait to be re-checked.
      const far = (): number => (rnd() < 0.5 ? int(-3, 11) : int(1000, 1000 + FLOOD_SPREAD));
      switch (int(-3, 9)) {
        case -3:
        case -2:
        case -1:
        case 0: {
          const base = int(1000, 1000 + FLOOD_SPREAD);
          const n = int(5000, 12000);
          const stride = int(1, 2);
          // One step per rowid: each statement is a proven write point.
          for (let i = 0; i < n; i++) s('UPDATE ev SET v = ? WHERE id = ?', [i % 9, base + i * stride]);
          return;
        }
        case 1: return s('INSERT OR IGNORE INTO ev (id, v) VALUES (?, ?)', [far(), int(0, 9)]);
        case 2: return s('SELECT v FROM ev WHERE id = ?', [far()], 'get');
        case 3: {
          const lo = far();
          return s('SELECT id, v FROM ev WHERE id >= ? AND id <= ?', [lo, lo + int(0, 40)], 'all');
        }
        case 4: {
          const lo = far();
          return s('SELECT count(*) AS n, total(v) AS t FROM ev WHERE id BETWEEN ? AND ?', [lo, lo + int(50, 5000)], 'get');
        }
        case 5: return s('SELECT max(id) AS m FROM ev WHERE id <= ?', [far()], 'get');
        case 6: return s('UPDATE ev SET v = v + 1 WHERE id = ?', [far()]);
        case 7: return s('DELETE FROM ev WHERE id = ?', [far()]);
        case 8: return s('SELECT id, v FROM ev WHERE id > ? LIMIT 2', [far()], 'all');
        default: return s('UPDATE ev SET id = ? WHERE id = ?', [far(), far()]);
      }
    }
    if ((kind === 'span' || kind === 'evict') && rnd() < 0.85) {
      // Rowid spans (engine/rowid-span.ts): reads that see a rowid range, writes at proven rowids
      // just inside and outside them, and writes that only look bounded.
      const key = (): unknown => {
        const n = int(-3, 11);
        const r = rnd();
        return r < 0.7 ? n : r < 0.8 ? BigInt(n) : r < 0.9 ? String(n) : n + 0.5;
      };
      switch (int(0, 25)) {
        case 0: return s('SELECT id, v FROM sp WHERE id >= ?', [key()], 'all');
        case 1: return s('SELECT id, v FROM sp WHERE id > ? AND id < ?', [key(), key()], 'all');
        case 2: return s('SELECT count(*) AS n, total(v) AS t FROM sp WHERE id BETWEEN ? AND ?', [key(), key()], 'get');
        case 3: return s('SELECT id, v FROM sp WHERE id < ? ORDER BY id DESC', [key()], 'all');
        case 4: return s('SELECT max(id) AS m FROM sp WHERE id <= ?', [key()], 'get');
        case 5: return s('SELECT v, u FROM sp WHERE id = ?', [key()], 'get');
        case 6: return s('SELECT rowid, a, b FROM sn WHERE rowid >= ? LIMIT 2 OFFSET 1', [key()], 'all');
        case 7: return s('SELECT (SELECT v FROM sp WHERE id = ?) AS a, (SELECT count(*) FROM spc) AS c', [key()], 'get');
        case 8: return s('SELECT sp.id, spc.id AS c FROM spc, sp WHERE sp.id >= ? ORDER BY 1, 2', [key()], 'all');
        case 9: return s('SELECT min(id) AS m FROM sp WHERE id > ?', [key()], 'get');
        case 10: return s('UPDATE sp SET v = ? WHERE id = ?', [int(0, 99), key()]);
        case 11: return s('DELETE FROM sp WHERE id = ?', [key()]);
        case 12: return s('UPDATE sp SET id = ? WHERE id = ?', [key(), key()]);
        case 13: return s('UPDATE OR REPLACE sp SET id = ? WHERE id = ?', [key(), key()]);
        case 14: return s('UPDATE sp SET id = id + ? WHERE id = ?', [int(-2, 2), key()]);
        case 15: return s('UPDATE OR REPLACE sp SET u = ? WHERE id = ?', [int(0, 9) * 10, key()]);
        case 16: return s('INSERT OR REPLACE INTO sp (id, v, u) VALUES (?, ?, ?)', [key(), int(0, 9), int(0, 9) * 10]);
        case 17: return s('INSERT INTO sp (v, u) VALUES (?, ?)', [int(0, 9), int(100, 999)]);
        case 18: return s('UPDATE sn SET rowid = ? WHERE rowid = ?', [key(), key()]);
        case 19: return s('DELETE FROM sn WHERE rowid = ?', [key()]);
        case 20: return s('UPDATE sn SET b = b + 1 WHERE rowid = ?', [key()]);
        case 21: return s('DELETE FROM sp WHERE id IN (?, ?)', [key(), key()]);
        case 22: return s('SELECT id, pid FROM spc WHERE id >= ?', [key()], 'all');
        case 23: return s('INSERT INTO sp (id, v) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET v = v + 1', [key(), int(0, 9)]);
        case 24: return s('UPDATE sp SET v = (SELECT count(*) FROM sp WHERE id < ?) WHERE id = ?', [key(), key()]);
        default: return s('SELECT id, v FROM sp WHERE id >= ? LIMIT 3', [key()], 'all');
      }
    }
    if (kind === 'exotic' && rnd() < 0.45) {
      switch (int(0, 7)) {
        case 0: return s('UPDATE OR FAIL uniq SET u = u + 10 WHERE id <= ?', [int(1, 5)]);
        case 1: return s('INSERT INTO log (v) VALUES (?), (?), (?)', [int(0, 9), int(0, 9), int(0, 9)]);
        case 2: return s('INSERT INTO log (v) SELECT v % 10 FROM kv WHERE k <= ?', [int(1, 3)]);
        case 3: return s('INSERT INTO dchild (id, pid) VALUES (?, ?)', [int(1, 6), int(1, 5)]);
        case 4: return s('DELETE FROM dchild WHERE pid = ?', [int(1, 5)]);
        case 5: return s('UPDATE gen SET a = a + ? WHERE id = ?', [int(3, 9), int(1, 2)]);
        case 6: {
          // Bad parameters: a typed error and nothing written (never recorded as a step).
          const before = JSON.stringify(h.all('SELECT * FROM kv ORDER BY k'));
          let threw = false;
          try {
            h.run('UPDATE kv SET v = ? WHERE k = ?', [2n ** 64n + 5n, k] as never);
          } catch (e) {
            threw = errorKind(e) === 'misuse';
            if (!threw) throw e;
          }
          if (process.env.ADV_DEBUG) console.log(`h${u.handle} badparam threw=${threw} inTx=${h.inTransaction}`);
          if (!threw || JSON.stringify(h.all('SELECT * FROM kv ORDER BY k')) !== before) throw new Error(`bad parameter was accepted (seed ${seed})`);
          return;
        }
        default:
          if (!tx) return s('SELECT count(*) AS n FROM dchild', undefined, 'get');
          s('UPDATE kv SET v = v + 0 WHERE k <= ?', [k]);
          return s('SELECT changes() AS c', undefined, 'get');
      }
    }
    switch (int(0, 27)) {
      case 0: return s('SELECT v FROM kv WHERE k = ?', [k], 'get');
      case 1: return s('SELECT k, v FROM kv WHERE v BETWEEN ? AND ? ORDER BY k', [int(0, 40), int(30, 90)], 'all');
      case 2: return s('SELECT * FROM vtot', undefined, 'get');
      case 3: return s('WITH c AS (SELECT pid, count(*) AS n, total(w) AS s FROM child GROUP BY pid) SELECT p.id, p.n, c.n AS cn, c.s FROM parent p LEFT JOIN c ON c.pid = p.id ORDER BY p.id', undefined, 'all');
      case 4: return s('SELECT count(*) AS n, max(val) AS m FROM audit', undefined, 'get');
      case 5: return s('SELECT v FROM kv ORDER BY k', undefined, 'pluck');
      case 6: return s('SELECT u, w FROM uniq ORDER BY u', undefined, 'raw');
      case 7: return s('SELECT id, a, b, c FROM gen WHERE b > ? ORDER BY id', [int(0, 6)], 'all');
      case 8: return s('SELECT k FROM kv WHERE v % 7 = ? ORDER BY k', [int(0, 6)], 'all');
      case 9: return s('INSERT INTO kv (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v', [k, int(0, 99)]);
      case 10: return s('UPDATE kv SET v = v + ? WHERE k = ?', [int(-5, 25), k]);
      case 11: return s('DELETE FROM kv WHERE k = ?', [k]);
      case 12: {
        const row = s('SELECT v FROM kv WHERE k = ?', [k], 'get') as { v: number } | null;
        if (row && typeof row.v === 'number') s('UPDATE kv SET v = ? WHERE k = ?', [row.v + 1, k]);
        return;
      }
      case 13:
        // UPDATE ... ORDER BY/LIMIT is a syntax error in this engine build (its parser lacks
        // SQLITE_ENABLE_UPDATE_DELETE_LIMIT although compile_options lists it): RETURNING only.
        if (rnd() < 0.5) return s('UPDATE kv SET v = v + 1 WHERE k = (SELECT k FROM kv WHERE v < ? ORDER BY v DESC, k LIMIT 1) RETURNING k, v', [int(10, 70)], 'all');
        return s('UPDATE kv SET v = v + 2 WHERE v > ? RETURNING k, v', [int(10, 70)], 'get');
      case 14: return s('INSERT OR REPLACE INTO uniq (id, u, w) VALUES (?, ?, ?) RETURNING id, u, w', [int(1, 5), pick([10, 20, 30, 40]), int(0, 9)], 'all');
      case 15: return s('DELETE FROM parent WHERE id = ?', [int(1, 4)]);
      case 16: return s('INSERT INTO child (id, pid, w, nul) VALUES (?, ?, ?, ?)', [int(5, 9), int(1, 4), int(-1, 9), int(1, 3)]);
      case 17: return s('UPDATE cfg SET x = x + ? WHERE id = 1', [int(1, 3)]);
      case 18: return s('UPDATE kv SET v = (SELECT x FROM cfg WHERE id = 1) WHERE k = ?', [k]);
      case 19: return s('INSERT INTO parent (id, n) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET n = n + 1', [int(1, 4), int(0, 9)]);
      case 20: return s('INSERT INTO log (v) VALUES (?)', [int(0, 9)]);
      case 21: return s('UPDATE gen SET a = a + ? WHERE id = ?', [int(1, 3), int(1, 2)]);
      case 22: return s('INSERT INTO kv (k, v) VALUES (?, NULL)', [k]);
      case 23: return s('UPDATE chain SET n = ? WHERE id = 1', [int(0, 4)]);
      case 24: return s('SELECT id, n FROM chain ORDER BY id', undefined, 'all');
      case 25: return s('UPDATE kv SET v = dbl(v) WHERE k = ?', [k]);
      case 26:
        if (rnd() < 0.5) return s('INSERT INTO wr (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = v + 1', [pick(['a', 'b', 'c']), int(0, 9)]);
        return s('SELECT k, v FROM wr ORDER BY k', undefined, 'all');
      default:
        if (rnd() < 0.5) return s('UPDATE temp.tmp SET v = v + 1 WHERE id = 1');
        if (tx && rnd() < 0.7) {
          s('SAVEPOINT sp');
          await operation(h, u, false);
          await tick();
          await operation(h, u, false);
          s(rnd() < 0.5 ? 'ROLLBACK TO sp' : 'RELEASE sp');
          return s('SELECT v FROM kv ORDER BY k', undefined, 'pluck');
        }
        return s('SELECT v FROM temp.tmp', undefined, 'pluck');
    }
  };

  const settingsUnit = (h: Connection, u: Unit) => {
    const choice = int(0, 4);
    const sql =
      choice === 0 ? `PRAGMA foreign_keys = ${int(0, 1)}` :
      choice === 1 ? `PRAGMA recursive_triggers = ${int(0, 1)}` :
      choice === 2 ? 'CREATE INDEX IF NOT EXISTS child_w ON child(w)' :
      choice === 3 ? 'DROP INDEX IF EXISTS child_w' : 'PRAGMA case_sensitive_like = 1';
    try {
      h.run(sql);
    } catch (e) {
      aborted.push({ kind: 'auto', handle: u.handle, steps: [{ sql, params: undefined, want: 'run', saw: { error: (e as Error).message } }] });
      throw e;
    }
    units.push({ kind: 'auto', handle: u.handle, steps: [{ sql, params: undefined, want: 'run', saw: null }], seq: ++seq });
  };

  const runUnit = async (hi: number) => {
    const h = handles[hi] as Connection;
    const setUnit = (h as unknown as { setUnit(u: Unit | undefined): void }).setUnit;
    const r = rnd();
    const kindOfUnit: Unit['kind'] =
      kind === 'lane' ? (r < 0.7 ? 'txfn' : r < 0.85 ? 'concurrent' : 'auto') :
      r < 0.45 ? 'concurrent' : r < 0.65 ? 'txfn' : r < 0.9 ? 'auto' : 'immediate';
    const nOps = kind === 'hot' ? int(2, 6) : int(1, 4);
    if (kindOfUnit === 'auto') {
      const u: Unit = { kind: 'auto', handle: hi, steps: [] };
      try {
        if (kind === 'settings' && rnd() < 0.25) settingsUnit(h, u);
        else await operation(h, u, false); // an RMW op is two autocommit steps: split below
      } catch (e) {
        const k = errorKind(e);
        if (k !== 'busy') throw e;
      }
      return;
    }
    if (kindOfUnit === 'txfn') {
      let attempt: Unit | undefined;
      try {
        await h.transaction(
          async (t) => {
            attempt = { kind: 'txfn', handle: hi, steps: [] };
            setUnit(attempt);
            for (let i = 0; i < nOps; i++) {
              if (kind === 'exotic' && rnd() < 0.3) {
                const a = attempt;
                const fail = rnd() < 0.4;
                a.steps.push({ sql: 'SAVEPOINT nest', params: undefined, want: 'run', saw: null });
                if (process.env.ADV_DEBUG) console.log(`h${hi} nested begin inTx=${t.inTransaction} fail=${fail}`);
                try {
                  await t.transaction(async (n) => {
                    await operation(n, a, false);
                    await tick();
                    await operation(n, a, false);
                    if (fail) throw new Abort();
                  });
                  a.steps.push({ sql: 'RELEASE nest', params: undefined, want: 'run', saw: null });
                } catch (e) {
                  if (process.env.ADV_DEBUG) console.log(`h${hi} nested threw ${(e as Error).message} inTx=${t.inTransaction}`);
                  if (!(e instanceof Abort)) throw e;
                  // A rejected nested call whose rollback ended the transaction must say so (a conflict).
                  if (!t.inTransaction) throw new Error(`nested-rollback-hides-conflict (seed ${seed})`);
                  a.steps.push({ sql: 'ROLLBACK TO nest', params: undefined, want: 'run', saw: null }, { sql: 'RELEASE nest', params: undefined, want: 'run', saw: null });
                }
              } else if ((kind === 'exotic' || kind === 'lane') && rnd() < 0.15) {
                // A callback that swallows a conflict (a logging wrapper, a "no row" helper):
                // its later statements must not run in autocommit (statements-after-conflict-autocommit).
                try {
                  await operation(t, attempt, true);
                } catch (e) {
                  if (errorKind(e) !== 'busy_snapshot') throw e;
                }
              } else await operation(t, attempt, true);
              await tick();
            }
          },
          { retry: { retries: 8, minTimeout: 0, maxTimeout: 2, maxElapsedMs: 3000 } },
        );
        if (attempt) units.push(attempt);
      } catch (e) {
        const k = errorKind(e);
        if (k !== 'busy' && k !== 'busy_snapshot' && k !== 'constraint' && !(e instanceof Abort)) throw e;
        if (attempt) aborted.push(attempt);
      } finally {
        setUnit(undefined);
      }
      return;
    }
    const u: Unit = { kind: kindOfUnit, handle: hi, steps: [] };
    try {
      h.exec(kindOfUnit === 'concurrent' ? 'BEGIN CONCURRENT' : 'BEGIN IMMEDIATE');
    } catch (e) {
      if (errorKind(e) === 'busy') return;
      throw e;
    }
    setUnit(u);
    try {
      for (let i = 0; i < nOps; i++) {
        for (let tries = 0; ; tries++) {
          const before = u.steps.length;
          try {
            await operation(h, u, true);
            break;
          } catch (e) {
            // A busy statement showed nothing; try it again later, unless the operation had
            // already run statements (a savepoint, the read of a read-modify-write).
            if (errorKind(e) !== 'busy' || tries > 20 || u.steps.length !== before) throw e;
            await tick();
          }
        }
        await tick();
      }
      if (kindOfUnit === 'concurrent' && rnd() < 0.1) throw new Abort();
      if (kind === 'exotic' && rnd() < 0.08) {
        // Closing a handle mid-transaction rolls it back; a fresh handle takes its place.
        h.close();
        prepared.delete(h); // finalized by close()
        handles[hi] = makeHandle();
        aborted.push(u);
        return;
      }
      for (let tries = 0; ; tries++) {
        try {
          h.exec('COMMIT');
          break;
        } catch (e) {
          if (errorKind(e) !== 'busy' || tries > 40 || !h.inTransaction) throw e;
          await tick();
        }
      }
      units.push(u);
    } catch (e) {
      const k = errorKind(e);
      if (!(e instanceof Abort) && k !== 'busy' && k !== 'busy_snapshot' && k !== 'constraint') throw e;
      aborted.push(u);
      if (h.inTransaction) h.exec('ROLLBACK');
      else if (k === 'busy_snapshot') h.exec('ROLLBACK'); // must be a no-op after a conflict
    } finally {
      setUnit(undefined);
    }
  };

  const perHandle = int(2, 6);
  await Promise.all(
    handles.map(async (_h, hi) => {
      for (let i = 0; i < perHandle; i++) {
        await runUnit(hi);
        await tick();
      }
    }),
  );
  const finalState = Object.fromEntries(TABLES.map((t) => [t, db.all(`SELECT * FROM ${t} ORDER BY 1`)]));
  for (const m of prepared.values()) for (const st of m.values()) st.finalize();
  for (const h of handles) h.close();
  db.close();

  // ---- the oracle: serial replay in commit order ---------------------------------------------
  const raw = rawDatabase();
  raw.exec('PRAGMA foreign_keys = 1');
  raw.exec(SCHEMA);
  (raw as unknown as { function(n: string, f: unknown, o: unknown): void }).function('dbl', dbl, { deterministic: true });
  const committed = units.filter((u) => u.seq !== undefined).sort((a, b) => (a.seq as number) - (b.seq as number));
  const report = (msg: string) => {
    const trace = committed.map((u) => `#${u.seq} ${u.kind} h${u.handle}: ` + u.steps.map((s) => `${s.sql} ${JSON.stringify(s.params ?? [], big)} -> ${JSON.stringify(s.saw, big)}`).join(' ; ')).join('\n');
    const ab = aborted.map((u) => `aborted ${u.kind} h${u.handle}: ` + u.steps.map((s) => `${s.sql} ${JSON.stringify(s.params ?? [], big)} -> ${JSON.stringify(s.saw, big)}`).join(' ; ')).join('\n');
    return `seed ${seed} (${kind}): ${msg}\n${trace}\n${ab}`;
  };
  for (const u of committed) {
    const inTx = u.kind !== 'auto';
    if (inTx) raw.exec('BEGIN');
    for (const st of u.steps) {
      let sql = st.sql;
      let params = st.params;
      const told = (st.saw as { rowid?: number } | null)?.rowid;
      if (told !== undefined && /^INSERT INTO log \(v\) VALUES \(\?\)$/.test(sql)) {
        sql = 'INSERT INTO log (id, v) VALUES (?, ?)';
        params = [told, ...(params ?? [])];
      } else if (told !== undefined && /^INSERT INTO sp \(v, u\) VALUES \(\?, \?\)$/.test(sql)) {
        sql = 'INSERT INTO sp (id, v, u) VALUES (?, ?, ?)';
        params = [told, ...(params ?? [])];
      }
      let got: unknown;
      try {
        if (st.want === 'pluck') got = raw.all(sql, params).map((r) => Object.values(r)[0]);
        else if (st.want === 'raw') got = raw.all(sql, params).map((r) => Object.values(r));
        else if (st.want === 'run') {
          const r = raw.run(sql, params);
          got = told !== undefined ? { changes: r.changes, rowid: sql === st.sql ? Number(r.lastInsertRowid) : told } : { changes: r.changes };
          if (/^\s*(PRAGMA|CREATE|DROP)/i.test(sql) || CONTROL.test(sql)) got = null;
        } else if (st.want === 'get') got = raw.all(sql, params)[0] ?? null;
        else got = raw.all(sql, params);
      } catch (e) {
        got = { error: (e as Error).message };
      }
      if (JSON.stringify(got, big) !== JSON.stringify(st.saw, big)) {
        raw.close();
        return { ok: false, report: report(`unit #${u.seq} (${u.kind}, handle ${u.handle}) saw ${JSON.stringify(st.saw, big)} for ${sql} ${JSON.stringify(params, big)}; serial execution shows ${JSON.stringify(got, big)}`) };
      }
    }
    if (inTx) raw.exec('COMMIT');
  }
  for (const t of TABLES) {
    const want = JSON.stringify(raw.all(`SELECT * FROM ${t} ORDER BY 1`), big);
    const have = JSON.stringify(finalState[t], big);
    if (want !== have) {
      raw.close();
      return { ok: false, report: report(`final ${t} differs: engine ${have}, serial ${want}`) };
    }
  }
  raw.close();
  return { ok: true, committed: committed.length };
}

function big(_k: string, v: unknown): unknown {
  return typeof v === 'bigint' ? Number(v) : v;
}
