// Transactions that await: 32 request handlers, each running transactions that read its own
// row, await 2 ms of simulated I/O, then write its own row. siblite sibling handles in
// `BEGIN CONCURRENT` transactions vs the usual cure, one global async mutex around a single
// connection (what Kysely's and Drizzle's SQLite drivers amount to).
import { interleaved, sleep } from '../lib/measure.mjs';
import { Mutex } from '../lib/mutex.mjs';
import { loadWasm, loadSiblite, tempDir } from '../lib/peers.mjs';

export const name = 'concurrent-tx';
export const title = 'Concurrent transactions that await';
const HANDLERS = 32;
export const workload =
  `${HANDLERS} handlers run side by side; each runs a series of transactions: read its own row, \`await\` 2 ms of simulated I/O ` +
  '(`setTimeout`), write its own row (`n = n_read + 1`), commit. With *overlap* p, that fraction of the transactions also reads ' +
  'a shared hot row before the await and increments it after (a read-modify-write every one of them conflicts on). ' +
  '*siblite*: one `open(":memory:")` plus one `conn.connect()` sibling per handler, each transaction ' +
  "`await h.transaction(fn, { mode: 'concurrent', retry: { retries: 10000, minTimeout: 1, maxTimeout: 10, onRetry } })`. " +
  '*global mutex*: one raw node-sqlite3-wasm connection, each transaction `BEGIN` .. `COMMIT` inside one async mutex. ' +
  'The same at 0% overlap on a database file (journal_mode DELETE, synchronous FULL: every commit is fsynced). ' +
  'Figures: committed transactions per second; abort rate = retries / (commits + retries). After every run the bench checks that ' +
  'every row holds exactly the number of committed increments (no lost update); a mismatch fails the bench.';
export const ratio = 'committed tx/s of siblite concurrent transactions vs the global mutex, at 0% overlap (and the abort rate as overlap grows).';
export const target = 'siblite >= 10x the global mutex at 0% overlap.';

const OVERLAPS = [0, 0.1, 0.5];

/** Does transaction j of handler i touch the hot row? Exactly round(p*10) of every 10, spread across handlers. */
const touchesHot = (i, j, overlap) => (i + j * 7) % 10 < Math.round(overlap * 10);

const SCHEMA = `CREATE TABLE acct (id INTEGER PRIMARY KEY, n INTEGER NOT NULL);
  WITH RECURSIVE c(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM c WHERE x < ${HANDLERS})
  INSERT INTO acct (id, n) SELECT x, 0 FROM c;`;

function expectedHot(perHandler, overlap) {
  let hot = 0;
  for (let i = 1; i <= HANDLERS; i++) for (let j = 0; j < perHandler; j++) if (touchesHot(i, j, overlap)) hot++;
  return hot;
}

/** Compares the final rows with the committed work; returns an error message or null. */
function verify(rows, perHandler, overlap) {
  const byId = new Map(rows.map((r) => [Number(r.id), Number(r.n)]));
  const wrong = [];
  for (let i = 1; i <= HANDLERS; i++) if (byId.get(i) !== perHandler) wrong.push(`row ${i} = ${byId.get(i)}, expected ${perHandler}`);
  const hot = expectedHot(perHandler, overlap);
  if (byId.get(0) !== hot) wrong.push(`hot row = ${byId.get(0)}, expected ${hot}`);
  const sum = [...byId.values()].reduce((a, b) => a + b, 0);
  const expectedSum = HANDLERS * perHandler + hot;
  if (sum !== expectedSum) wrong.push(`sum = ${sum}, expected ${expectedSum}`);
  return wrong.length ? wrong.slice(0, 5).join('; ') : null;
}

export async function run({ quick, log }) {
  const notes = [];
  const versions = {};
  const checks = [];
  const perHandler = quick ? 3 : 20;
  const rounds = quick ? 2 : 7;
  const failures = [];

  const wasm = loadWasm();
  if (!wasm.ok) throw new Error(wasm.reason);
  versions['node-sqlite3-wasm'] = wasm.version;

  // One run of the global-mutex peer: returns { txps, abortRate }.
  const tmp = tempDir('siblite-bench-tx-');
  let fileNo = 0;
  const pathFor = (storage) => (storage === 'file' ? tmp.file(`run-${++fileNo}.db`) : ':memory:');

  async function mutexRun(overlap, storage) {
    const db = new wasm.Database(pathFor(storage));
    try {
      db.exec(SCHEMA);
      const mutex = new Mutex();
      const getRow = db.prepare('SELECT n FROM acct WHERE id = ?');
      const setRow = db.prepare('UPDATE acct SET n = ? WHERE id = ?');
      const handler = async (i) => {
        for (let j = 0; j < perHandler; j++) {
          const hot = touchesHot(i, j, overlap);
          await mutex.run(async () => {
            db.exec('BEGIN');
            try {
              const own = getRow.get([i]);
              const h = hot ? getRow.get([0]) : null;
              await sleep(2);
              setRow.run([own.n + 1, i]);
              if (hot) setRow.run([h.n + 1, 0]);
              db.exec('COMMIT');
            } catch (e) {
              if (db.inTransaction) db.exec('ROLLBACK');
              throw e;
            }
          });
        }
      };
      const t0 = performance.now();
      await Promise.all(Array.from({ length: HANDLERS }, (_, k) => handler(k + 1)));
      const elapsed = performance.now() - t0;
      const problem = verify(db.all('SELECT id, n FROM acct'), perHandler, overlap);
      if (problem) failures.push(`global mutex, ${storage}, overlap ${overlap * 100}%: ${problem}`);
      getRow.finalize();
      setRow.finalize();
      return { txps: (HANDLERS * perHandler) / (elapsed / 1000), abortRate: 0 };
    } finally {
      db.close();
    }
  }

  const sib = await loadSiblite(['open']);
  // One run of the siblite peer.
  async function sibliteRun(overlap, storage) {
    const root = sib.open(pathFor(storage));
    const handles = [];
    try {
      root.exec(SCHEMA);
      for (let k = 0; k < HANDLERS; k++) handles.push(root.connect());
      let retries = 0;
      const options = { mode: 'concurrent', retry: { retries: 10_000, minTimeout: 1, maxTimeout: 10, onRetry: () => retries++ } };
      const handler = async (h, i) => {
        for (let j = 0; j < perHandler; j++) {
          const hot = touchesHot(i, j, overlap);
          await h.transaction(async (tx) => {
            const own = tx.get('SELECT n FROM acct WHERE id = ?', [i]);
            const hr = hot ? tx.get('SELECT n FROM acct WHERE id = ?', [0]) : null;
            await sleep(2);
            tx.run('UPDATE acct SET n = ? WHERE id = ?', [own.n + 1, i]);
            if (hot) tx.run('UPDATE acct SET n = ? WHERE id = ?', [hr.n + 1, 0]);
          }, options);
        }
      };
      const t0 = performance.now();
      await Promise.all(handles.map((h, k) => handler(h, k + 1)));
      const elapsed = performance.now() - t0;
      const committed = HANDLERS * perHandler;
      const problem = verify(root.all('SELECT id, n FROM acct'), perHandler, overlap);
      if (problem) failures.push(`siblite, ${storage}, overlap ${overlap * 100}%: ${problem}`);
      return { txps: committed / (elapsed / 1000), abortRate: (100 * retries) / (committed + retries) };
    } finally {
      for (const h of handles) h.close();
      root.close();
    }
  }
  if (sib.ok) versions['@siblite/core'] = sib.version;
  else {
    notes.push(`siblite skipped: ${sib.reason}`);
    log(`note: siblite skipped: ${sib.reason}`);
  }

  const peers = [{ key: 'mutex', label: 'global mutex, one connection', run: mutexRun }];
  if (sib.ok) peers.unshift({ key: 'siblite', label: 'siblite, BEGIN CONCURRENT', run: sibliteRun });

  const cases = [];
  for (const overlap of OVERLAPS) {
    for (const p of peers) cases.push({ id: `${p.key}@${overlap * 100}`, overlap, storage: 'memory', peer: p, run: () => p.run(overlap, 'memory') });
  }
  for (const p of peers) cases.push({ id: `${p.key}@file`, overlap: 0, storage: 'file', peer: p, run: () => p.run(0, 'file') });
  log(`${cases.length} cases, ${HANDLERS} handlers x ${perHandler} transactions each, ${rounds} interleaved rounds (+1 warm-up round)`);
  let samples;
  try {
    samples = await interleaved({ rounds, warmup: 1, cases, log });
  } finally {
    tmp.cleanup();
  }

  const figures = [];
  for (const c of cases) {
    figures.push({
      id: `tps:${c.id}`,
      group: c.storage === 'file' ? 'committed tx/s, 0% overlap, file' : `committed tx/s, ${c.overlap * 100}% overlap`,
      peer: c.peer.label,
      unit: 'tx/s',
      samples: samples.get(c.id).map((s) => s.txps),
    });
  }
  if (sib.ok) {
    for (const overlap of OVERLAPS) {
      figures.push({
        id: `abort:siblite@${overlap * 100}`,
        group: 'abort rate (retries / attempts)',
        peer: `siblite, ${overlap * 100}% overlap`,
        unit: '%',
        higherIsBetter: false,
        samples: samples.get(`siblite@${overlap * 100}`).map((s) => s.abortRate),
      });
    }
  }
  const ratios = OVERLAPS.map((o) => ({
    label: `siblite / global mutex, ${o * 100}% overlap`,
    num: `tps:siblite@${o * 100}`,
    den: `tps:mutex@${o * 100}`,
    ...(o === 0 ? { target: 10 } : {}),
  }));
  ratios.push({ label: 'siblite / global mutex, 0% overlap, file', num: 'tps:siblite@file', den: 'tps:mutex@file' });
  checks.push(
    failures.length
      ? { ok: false, message: `final sums wrong (lost or extra updates): ${failures.slice(0, 3).join(' | ')}` }
      : { ok: true, message: `every run of every peer ended with exact row values and sums (${cases.length * (rounds + 1)} runs)` },
  );
  if (failures.length) for (const f of failures) console.error(`ERROR: ${f}`);
  return { name, title, workload, ratio, target, rounds, figures, ratios, notes, checks, versions };
}

export default { name, title, workload, ratio, target, run };
