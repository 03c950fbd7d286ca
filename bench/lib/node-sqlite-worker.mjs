// The measurements of bench/suites/node-sqlite.mjs, run under a Node that has node:sqlite.
// Prints progress lines, then the result as JSON on the last line.
import { DatabaseSync } from 'node:sqlite';
import { interleaved, opsPerSecond, prng, sleep } from './measure.mjs';
import { loadSiblite, tempDir } from './peers.mjs';

const quick = process.argv[2] === 'quick';
const log = (s) => console.log(s);
const ROWS = 10_000;
const HANDLERS = 32;
const perHandler = quick ? 2 : 15;
const rounds = quick ? 2 : 7;
const budgetMs = quick ? 30 : 300;
const failures = [];
const notes = [];

const sib = await loadSiblite(['open']);
if (!sib.ok) throw new Error(sib.reason);
const tmp = tempDir('siblite-bench-nodesqlite-');
let fileNo = 0;
const fresh = () => tmp.file(`db-${++fileNo}.sqlite`);
const SCHEMA = `CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT, n INT);
  WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ${ROWS})
  INSERT INTO t (id, v, n) SELECT x, 'value ' || x, x * 7 FROM c;`;

// ---- point selects ---------------------------------------------------------------------------
const SELECT = 'SELECT id, v, n FROM t WHERE id = ?';
const sibFile = sib.open(fresh());
sibFile.exec(SCHEMA);
const sibMem = sib.open(':memory:');
sibMem.exec(SCHEMA);
const nsFile = new DatabaseSync(fresh());
nsFile.exec('PRAGMA journal_mode = WAL');
nsFile.exec(SCHEMA);
const nsMem = new DatabaseSync(':memory:');
nsMem.exec(SCHEMA);
const nsFileGet = nsFile.prepare(SELECT);
const nsMemGet = nsMem.prepare(SELECT);
const ids = (() => {
  const r = prng(7);
  return Array.from({ length: 4096 }, () => 1 + Math.floor(r() * ROWS));
})();
const check = (row, id, label) => {
  if (!row || Number(row.id) !== id || Number(row.n) !== id * 7) failures.push(`${label}: wrong row for id ${id}`);
};
const selectCases = [
  ['select-file', 'siblite', (i) => sibFile.get(SELECT, [ids[i & 4095]])],
  ['select-file', 'node:sqlite', (i) => nsFileGet.get(ids[i & 4095])],
  ['select-memory', 'siblite', (i) => sibMem.get(SELECT, [ids[i & 4095]])],
  ['select-memory', 'node:sqlite', (i) => nsMemGet.get(ids[i & 4095])],
];
for (const [g, p, op] of selectCases) check(op(5), ids[5], `${g} ${p}`);

// ---- 32 handlers that await inside transactions ----------------------------------------------
const TX_SCHEMA = `CREATE TABLE IF NOT EXISTS acct (id INTEGER PRIMARY KEY, n INTEGER NOT NULL);
  WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ${HANDLERS})
  INSERT INTO acct (id, n) SELECT x, 0 FROM c;`;

async function sibliteHandlers() {
  // The durability node:sqlite gets below (synchronous NORMAL); siblite has no WAL (the engine's VFS cannot).
  const root = sib.open(fresh(), { synchronous: 'normal' });
  root.exec(TX_SCHEMA);
  const handles = Array.from({ length: HANDLERS }, () => root.connect());
  try {
    const t0 = performance.now();
    await Promise.all(
      handles.map(async (h, k) => {
        for (let j = 0; j < perHandler; j++) {
          await h.transaction(async (tx) => {
            const { n } = tx.get('SELECT n FROM acct WHERE id = ?', [k + 1]);
            await sleep(2);
            tx.run('UPDATE acct SET n = ? WHERE id = ?', [n + 1, k + 1]);
          }, { retry: { retries: 10_000, maxTimeout: 10 } });
        }
      }),
    );
    const elapsed = performance.now() - t0;
    verify(root.all('SELECT n FROM acct'), 'siblite');
    return (HANDLERS * perHandler) / (elapsed / 1000);
  } finally {
    for (const h of handles) h.close();
    root.close();
  }
}

async function nodeSqliteHandlers() {
  const file = fresh();
  const setup = new DatabaseSync(file);
  setup.exec('PRAGMA journal_mode = WAL');
  setup.exec(TX_SCHEMA);
  setup.close();
  const conns = Array.from({ length: HANDLERS }, () => {
    const db = new DatabaseSync(file, { timeout: 0 });
    db.exec('PRAGMA synchronous = NORMAL');
    return { db, get: db.prepare('SELECT n FROM acct WHERE id = ?'), set: db.prepare('UPDATE acct SET n = ? WHERE id = ?') };
  });
  try {
    const t0 = performance.now();
    await Promise.all(
      conns.map(async (c, k) => {
        for (let j = 0; j < perHandler; j++) {
          for (let attempt = 0; ; attempt++) {
            try {
              c.db.exec('BEGIN IMMEDIATE');
            } catch (e) {
              if (!/locked|busy/i.test(e.message)) throw e;
              await sleep(Math.random() * Math.min(10, 2 ** attempt));
              continue;
            }
            try {
              const { n } = c.get.get(k + 1);
              await sleep(2);
              c.set.run(n + 1, k + 1);
              c.db.exec('COMMIT');
              break;
            } catch (e) {
              if (c.db.isTransaction) c.db.exec('ROLLBACK');
              throw e;
            }
          }
        }
      }),
    );
    const elapsed = performance.now() - t0;
    verify(conns[0].db.prepare('SELECT n FROM acct').all(), 'node:sqlite');
    return (HANDLERS * perHandler) / (elapsed / 1000);
  } finally {
    for (const c of conns) c.db.close();
  }
}

function verify(rows, label) {
  const wrong = rows.filter((r) => Number(r.n) !== perHandler);
  if (wrong.length || rows.length !== HANDLERS) failures.push(`${label}: ${wrong.length} of ${rows.length} rows differ from ${perHandler}`);
}

const groups = { 'select-file': 'point select, file (ops/s)', 'select-memory': 'point select, :memory: (ops/s)', tx: '32 handlers awaiting, file (committed tx/s)' };
const cases = selectCases.map(([g, p, op]) => ({ id: `${g}:${p}`, group: groups[g], peer: p, unit: 'ops/s', run: () => opsPerSecond(op, budgetMs) }));
cases.push({ id: 'tx:siblite', group: groups.tx, peer: 'siblite', unit: 'tx/s', run: sibliteHandlers });
cases.push({ id: 'tx:node:sqlite', group: groups.tx, peer: 'node:sqlite', unit: 'tx/s', run: nodeSqliteHandlers });
log(`${cases.length} cases, ${rounds} interleaved rounds (+1 warm-up)`);
let samples;
try {
  samples = await interleaved({ rounds, warmup: 1, cases, log });
} finally {
  sibFile.close();
  sibMem.close();
  nsFile.close();
  nsMem.close();
  tmp.cleanup();
}
const figures = cases.map((c) => ({ id: c.id, group: c.group, peer: c.peer === 'siblite' ? 'siblite' : 'node:sqlite (native, Node 22)', unit: c.unit, samples: samples.get(c.id) }));
const ratios = [
  { label: 'siblite / node:sqlite, point select, file', num: 'select-file:siblite', den: 'select-file:node:sqlite' },
  { label: 'siblite / node:sqlite, point select, :memory:', num: 'select-memory:siblite', den: 'select-memory:node:sqlite' },
  { label: 'siblite / node:sqlite, 32 handlers awaiting in transactions, file', num: 'tx:siblite', den: 'tx:node:sqlite' },
];
const checks = [
  failures.length
    ? { ok: false, message: `wrong results: ${failures.slice(0, 3).join(' | ')}` }
    : { ok: true, message: 'every point select returned the right row; every transaction run ended with exact row values' },
];
const sqliteVersion = new DatabaseSync(':memory:').prepare('SELECT sqlite_version() AS v').get().v;
console.log(JSON.stringify({ rounds, figures, ratios, notes, checks, versions: { 'node:sqlite (SQLite)': sqliteVersion, '@siblite/core': sib.version } }));
