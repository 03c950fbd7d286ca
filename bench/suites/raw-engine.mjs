// Raw engine speed: what one statement costs through each driver, in memory and on a file.
// Peers: raw node-sqlite3-wasm (the engine siblite runs on) with default locking and with
// `PRAGMA locking_mode=EXCLUSIVE`, better-sqlite3 (native), and siblite (`open(path)`,
// `conn.get`, `conn.run`) once @siblite/core is built.
import { interleaved, opsPerSecond, prng } from '../lib/measure.mjs';
import { loadWasm, loadBetterSqlite3, loadSiblite, tempDir } from '../lib/peers.mjs';

export const name = 'raw-engine';
export const title = 'Single statements: point select and autocommit insert';
export const workload =
  'Table `t(id INTEGER PRIMARY KEY, v TEXT, n INT)` with 10,000 rows. *Point select*: `SELECT id, v, n FROM t WHERE id = ?` ' +
  'with pseudo-random ids (same sequence for every peer). *Insert*: `INSERT INTO t (v, n) VALUES (?, ?)`, one autocommit ' +
  'transaction per row. Each on `:memory:` and on a file (journal_mode DELETE, synchronous FULL, the defaults of every peer). ' +
  'Statements are prepared once for the raw drivers; siblite is called as users call it, `conn.get(sql, params)` / ' +
  '`conn.run(sql, params)` (it caches prepared statements). Each peer has its own database file.';
export const ratio =
  'siblite vs raw node-sqlite3-wasm with `locking_mode=EXCLUSIVE` for point selects on a file (the spec: "reads on a file ' +
  'database should run at close to exclusive-locking speed"), and siblite vs raw node-sqlite3-wasm in memory (the cost of the wrapper).';
export const target =
  'siblite file point selects within 1.3x of raw EXCLUSIVE (>= 0.77x) and ahead of better-sqlite3 (> 1x); siblite in-memory point selects within 1.3x of raw node-sqlite3-wasm (>= 0.77x).';

const ROWS = 10_000;
const SELECT = 'SELECT id, v, n FROM t WHERE id = ?';
const INSERT = 'INSERT INTO t (v, n) VALUES (?, ?)';
const SCHEMA = 'CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT, n INT)';

function populateSql(exec) {
  exec('BEGIN');
  exec(`WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ${ROWS})
        INSERT INTO t (id, v, n) SELECT x, 'row-' || x, x * 7 FROM c`);
  exec('COMMIT');
}

export async function run({ quick, log }) {
  const notes = [];
  const versions = {};
  const tmp = tempDir('siblite-bench-raw-');
  const peers = [];

  const wasm = loadWasm();
  if (!wasm.ok) throw new Error(wasm.reason);
  versions['node-sqlite3-wasm'] = wasm.version;
  const wasmPeer = (exclusive) => (path) => {
    const db = new wasm.Database(path);
    if (exclusive) db.exec('PRAGMA locking_mode = EXCLUSIVE');
    db.exec(SCHEMA);
    populateSql((s) => db.exec(s));
    const sel = db.prepare(SELECT);
    const ins = db.prepare(INSERT);
    return {
      get: (id) => sel.get([id]),
      insert: (i) => ins.run(['x', i]),
      close: () => {
        sel.finalize();
        ins.finalize();
        db.close();
      },
    };
  };
  peers.push({ key: 'wasm', label: 'node-sqlite3-wasm, default', open: wasmPeer(false) });
  peers.push({ key: 'wasmx', label: 'node-sqlite3-wasm, EXCLUSIVE', open: wasmPeer(true) });

  const better = loadBetterSqlite3();
  if (better.ok) {
    versions['better-sqlite3'] = `${better.version} (SQLite ${better.sqlite})`;
    peers.push({
      key: 'better',
      label: 'better-sqlite3, default',
      open: (path) => {
        const db = new better.Database(path);
        db.exec(SCHEMA);
        populateSql((s) => db.exec(s));
        const sel = db.prepare(SELECT);
        const ins = db.prepare(INSERT);
        return { get: (id) => sel.get(id), insert: (i) => ins.run('x', i), close: () => db.close() };
      },
    });
  } else {
    notes.push(better.reason);
    log(`note: ${better.reason}`);
  }

  const sib = await loadSiblite(['open']);
  if (sib.ok) {
    versions['@siblite/core'] = sib.version;
    peers.push({
      key: 'siblite',
      label: 'siblite, default',
      open: (path) => {
        const conn = sib.open(path);
        conn.exec(SCHEMA);
        populateSql((s) => conn.exec(s));
        return { get: (id) => conn.get(SELECT, [id]), insert: (i) => conn.run(INSERT, ['x', i]), close: () => conn.close() };
      },
    });
  } else {
    notes.push(`siblite skipped: ${sib.reason}`);
    log(`note: siblite skipped: ${sib.reason}`);
  }

  const groups = [
    { key: 'mem-select', label: 'point select, :memory:', file: false, op: 'get' },
    { key: 'mem-insert', label: 'insert autocommit, :memory:', file: false, op: 'insert' },
    { key: 'file-select', label: 'point select, file', file: true, op: 'get' },
    { key: 'file-insert', label: 'insert autocommit, file', file: true, op: 'insert' },
  ];
  const budgetMs = quick ? 15 : 200;
  const rounds = quick ? 2 : 11;

  const cases = [];
  const handles = [];
  try {
    for (const g of groups) {
      for (const p of peers) {
        const path = g.file ? tmp.file(`${p.key}-${g.key}.db`) : ':memory:';
        const h = p.open(path);
        handles.push(h);
        const rand = prng(7);
        const ids = Int32Array.from({ length: 4096 }, () => 1 + Math.floor(rand() * ROWS));
        const op =
          g.op === 'get'
            ? (i) => {
                const row = h.get(ids[i & 4095]);
                if (row === undefined || row === null) throw new Error(`${p.label}: row ${ids[i & 4095]} missing`);
              }
            : (i) => h.insert(i);
        cases.push({ id: `${g.key}:${p.key}`, group: g.label, peer: p.label, run: () => opsPerSecond(op, budgetMs, g.file && g.op === 'insert' ? 1 : 16) });
      }
    }
    log(`${cases.length} cases, ${rounds} interleaved rounds of ~${budgetMs} ms each (+1 warm-up round)`);
    const samples = await interleaved({ rounds, warmup: 1, cases, log });
    const figures = cases.map((c) => ({ id: c.id, group: c.group, peer: c.peer, unit: 'ops/s', samples: samples.get(c.id) }));
    const ratios = [
      { label: 'siblite / raw EXCLUSIVE, file point select', num: 'file-select:siblite', den: 'file-select:wasmx', target: 1 / 1.3 },
      { label: 'siblite / raw default, file point select', num: 'file-select:siblite', den: 'file-select:wasm' },
      { label: 'siblite / raw, :memory: point select', num: 'mem-select:siblite', den: 'mem-select:wasm', target: 1 / 1.3 },
      { label: 'siblite / raw, :memory: insert', num: 'mem-insert:siblite', den: 'mem-insert:wasm' },
      { label: 'raw EXCLUSIVE / raw default, file point select', num: 'file-select:wasmx', den: 'file-select:wasm' },
      { label: 'better-sqlite3 / raw default, file point select', num: 'file-select:better', den: 'file-select:wasm' },
      { label: 'siblite / better-sqlite3, file point select', num: 'file-select:siblite', den: 'file-select:better', target: 1 },
    ];
    return { name, title, workload, ratio, target, rounds, figures, ratios, notes, versions };
  } finally {
    for (const h of handles) {
      try {
        h.close();
      } catch {}
    }
    tmp.cleanup();
  }
}

export default { name, title, workload, ratio, target, run };
