// The cost curves of BEGIN CONCURRENT where they used to have cliffs (issue 13): many handlers,
// long transactions that await between statements, large reads, one hot row, rowid
// reservations, a handle per request, many distinct statements. Each row runs siblite side by
// side with a global async mutex around one raw connection and with the raw engine running the
// same statements and awaits with no isolation ("raw, same awaits": the floor any design on
// this engine pays), in interleaved rounds, and prints its goal next to it.
import { interleaved, prng, sleep } from '../lib/measure.mjs';
import { Mutex } from '../lib/mutex.mjs';
import { loadWasm, loadSiblite } from '../lib/peers.mjs';

export const name = 'concurrent-cliffs';
export const title = 'Concurrent transactions without cliffs';
export const workload =
  'One row of the table per cost curve of issue 13; every row says what it runs in its figures. Peers: *siblite*: `open(":memory:")` ' +
  'and one `conn.connect()` handle per handler, `transaction(fn, { mode: "concurrent" })`; *global mutex*: one raw node-sqlite3-wasm ' +
  'connection, each transaction `BEGIN` .. `COMMIT` inside one async mutex; *raw, same awaits*: one raw connection running the same ' +
  'statements and awaits in autocommit, with no isolation at all. CPU figures are `process.cpuUsage()` (user + system) over the run.';
export const ratio = 'each row: siblite vs the raw engine (same awaits) or vs the global mutex, with the goal of issue 13 next to it.';
export const target = 'the goal printed next to each ratio.';

const cpuMs = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
};
const tick = () => new Promise((r) => setImmediate(r));
const gc = () => globalThis.gc?.();

/** Jain's fairness index of per-handler counts: 1 = all equal, 1/n = one handler did everything. */
export function jain(counts) {
  const sum = counts.reduce((a, b) => a + b, 0);
  const squares = counts.reduce((a, b) => a + b * b, 0);
  return squares === 0 ? 1 : (sum * sum) / (counts.length * squares);
}

export async function run({ quick, log }) {
  const wasm = loadWasm();
  if (!wasm.ok) throw new Error(wasm.reason);
  const sib = await loadSiblite(['open']);
  if (!sib.ok) throw new Error(sib.reason);
  const versions = { 'node-sqlite3-wasm': wasm.version, '@siblite/core': sib.version };
  const figures = [];
  const ratios = [];
  const notes = [];
  const failures = [];
  const rounds = quick ? 1 : 5;
  // CLIFFS_ROWS=hot,handles runs only those rows (own, long, read, hot, rowid, handles, bigread).
  const only = process.env.CLIFFS_ROWS ? new Set(process.env.CLIFFS_ROWS.split(',')) : null;
  const want = (row) => !only || only.has(row);
  if (only) notes.push(`only the rows ${[...only].join(', ')} (CLIFFS_ROWS)`);

  /**
   * Runs `cases` in interleaved rounds and adds one figure per case and metric; with `curve`
   * ({ id, x }), the figures are the points at `x` of that curve (see `curves` below) instead of
   * a table of their own.
   */
  async function measure(group, cases, metrics, roundCount = rounds, curve = undefined, warmup = 1) {
    log(`${group}: ${cases.length} cases x ${roundCount} rounds`);
    const samples = await interleaved({ rounds: roundCount, warmup: quick ? 0 : warmup, cases, log });
    for (const c of cases) {
      for (const m of metrics) {
        const values = samples.get(c.id).map((s) => s[m.key]).filter((v) => v !== undefined);
        if (values.length === 0) continue;
        figures.push({ id: `${m.key}:${c.id}`, group: m.group ?? group, peer: c.label, unit: m.unit, higherIsBetter: m.higherIsBetter ?? true, samples: values, ...(curve && { curve }) });
      }
    }
  }
  const check = (what, ok, detail) => {
    if (!ok) failures.push(`${what}: ${detail}`);
  };

  /**
   * The three peers of a workload where `handlers` handlers each run `perHandler` transactions
   * `body(q, i, j)` (q has get/all/run(sql, params); i is the handler's 1-based number, j the
   * transaction's 0-based number for that handler; siblite may run a body again): siblite
   * sibling handles in BEGIN CONCURRENT, the global mutex, and the raw engine with the same
   * awaits. Each run returns { tps } and checks the final state with `verify(who, all)`.
   */
  function awaitingPeers({ schema, handlers, perHandler, body, verify }) {
    const total = handlers * perHandler;
    const sibRun = async () => {
      const root = sib.open(':memory:');
      root.exec(schema);
      const hs = Array.from({ length: handlers }, () => root.connect());
      const t0 = performance.now();
      await Promise.all(
        hs.map(async (h, k) => {
          for (let j = 0; j < perHandler; j++) await h.transaction((tx) => body(tx, k + 1, j), { mode: 'concurrent' });
        }),
      );
      const ms = performance.now() - t0;
      verify('siblite', (sql) => root.all(sql));
      for (const h of hs) h.close();
      root.close();
      return { tps: total / (ms / 1000) };
    };
    const rawRun = (isolated) => async () => {
      const db = new wasm.Database(':memory:');
      db.exec(schema);
      const prepared = new Map();
      const stmt = (sql) => prepared.get(sql) ?? prepared.set(sql, db.prepare(sql)).get(sql);
      const q = { get: (sql, p) => stmt(sql).get(p ?? []), all: (sql, p) => stmt(sql).all(p ?? []), run: (sql, p) => stmt(sql).run(p ?? []) };
      const mutex = new Mutex();
      const once = async (i, j) => {
        if (isolated) db.exec('BEGIN');
        await body(q, i, j);
        if (isolated) db.exec('COMMIT');
      };
      const t0 = performance.now();
      await Promise.all(
        Array.from({ length: handlers }, async (_, k) => {
          for (let j = 0; j < perHandler; j++) await (isolated ? mutex.run(() => once(k + 1, j)) : once(k + 1, j));
        }),
      );
      const ms = performance.now() - t0;
      verify(isolated ? 'mutex' : 'raw', (sql) => db.all(sql));
      for (const st of prepared.values()) st.finalize();
      db.close();
      return { tps: total / (ms / 1000) };
    };
    return { sibRun, mutexRun: rawRun(true), rawRun: rawRun(false) };
  }

  // ---- 1, 2: many handlers, each a transaction on its own row with a 2 ms await ----------
  async function ownRows(handlers, perHandler) {
    const { sibRun, mutexRun, rawRun } = awaitingPeers({
      schema: `CREATE TABLE acct (id INTEGER PRIMARY KEY, n INTEGER NOT NULL);
        WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ${handlers}) INSERT INTO acct SELECT x, 0 FROM c;`,
      handlers,
      perHandler,
      body: async (q, i) => {
        const own = q.get('SELECT n FROM acct WHERE id = ?', [i]);
        await sleep(2);
        q.run('UPDATE acct SET n = ? WHERE id = ?', [own.n + 1, i]);
      },
      verify: (who, all) => {
        const rows = all('SELECT n FROM acct');
        const bad = rows.filter((r) => Number(r.n) !== perHandler);
        check(`${handlers} handlers, ${who}`, rows.length === handlers && bad.length === 0, `${bad.length} rows wrong`);
      },
    });
    const id = `own${handlers}`;
    await measure(
      `committed tx/s, ${handlers} handlers, own rows, 2 ms await`,
      [
        { id: `${id}:siblite`, label: 'siblite, BEGIN CONCURRENT', run: sibRun },
        { id: `${id}:mutex`, label: 'global mutex', run: mutexRun },
        { id: `${id}:raw`, label: 'raw, same awaits', run: rawRun },
      ],
      [{ key: 'tps', unit: 'tx/s' }],
      // A run lasts 0.1 to 0.2 s, so one scheduler hiccup moves a ratio by 0.1: 5 rounds gave
      // medians from 0.63x to 0.87x for the same code in one hour. 15 rounds cost 10 s more.
      handlers >= 256 && !quick ? 15 : rounds,
      { id: 'handlers', x: handlers },
      // A run is 2,048 to 4,096 transactions: the first few runs of a process measure V8
      // compiling the engine's WebAssembly and siblite's code and growing its young generation
      // (measured: 0.2x to 0.4x in runs 1 to 5, then steady), not the steady state a server
      // sees. Every peer gets the same warm-up runs, interleaved as the measured ones.
      handlers >= 256 ? 4 : 1,
    );
    return id;
  }
  if (want('own')) {
    const own256 = await ownRows(256, quick ? 2 : 8);
    ratios.push({ label: '256 handlers, 2 ms await, own rows: siblite / raw, same awaits', num: `tps:${own256}:siblite`, den: `tps:${own256}:raw`, target: 0.8 });
    ratios.push({ label: '256 handlers: siblite / global mutex', num: `tps:${own256}:siblite`, den: `tps:${own256}:mutex` });
    const own1024 = await ownRows(1024, quick ? 1 : 4);
    ratios.push({ label: '1,024 handlers: siblite / raw, same awaits', num: `tps:${own1024}:siblite`, den: `tps:${own1024}:raw`, target: 0.7 });
    ratios.push({ label: '1,024 handlers: siblite / global mutex', num: `tps:${own1024}:siblite`, den: `tps:${own1024}:mutex` });
  }

  // ---- 3, 4: long transactions, an await after every statement ---------------------------
  // Two handlers take turns (an await after each statement), so each statement of one finds
  // the other's transaction in the engine: the worst case for park and resume.
  // Each sample runs the pair of transactions `reps` times (20 for 100 statements: a sample of
  // 2 x 100 statements is about 1.5 ms of CPU, where the CPU that V8's background threads (GC,
  // compilation) spend in the same process moved a round's ratio by 3x). Before the CPU window,
  // both peers get the same warm-up: each of the three statements runs once (on rows nobody
  // checks), as the raw peer's statements are prepared before its window; siblite learns a
  // statement's footprint and prepares it on first use in a new engine (about 2 ms for three).
  async function longTx(statements, reps) {
    const schema = 'CREATE TABLE acct (id INTEGER PRIMARY KEY, n INTEGER NOT NULL); INSERT INTO acct VALUES (1, 0), (2, 0); ' +
      'CREATE TABLE item (id INTEGER PRIMARY KEY, owner INTEGER NOT NULL, v INTEGER NOT NULL);';
    const step = (q, i, j) => {
      // q: { get, upd, ins }(i, j)
      const k = j % 3;
      if (k === 0) q.get(i);
      else if (k === 1) q.upd(i);
      else q.ins(i, j);
    };
    const warmUp = (q) => {
      for (let j = 0; j < 3; j++) step(q, 0, j); // row 0: no account, an item of owner 0
    };
    const verify = (who, all) => {
      const expected = Math.floor((statements + 1) / 3) * reps;
      const rows = all('SELECT id, n FROM acct ORDER BY id');
      check(`${statements} statements, ${who}`, rows.every((r) => Number(r.n) === expected), JSON.stringify(rows));
    };
    const sibRun = async () => {
      const root = sib.open(':memory:');
      root.exec(schema);
      const hs = [root.connect(), root.connect()];
      warmUp({
        get: (i) => root.get('SELECT n FROM acct WHERE id = ?', [i]),
        upd: (i) => root.run('UPDATE acct SET n = n + 1 WHERE id = ?', [i]),
        ins: (i, j) => root.run('INSERT INTO item (owner, v) VALUES (?, ?)', [i, j]),
      });
      const c0 = cpuMs();
      for (let r = 0; r < reps; r++) {
        await Promise.all(
          hs.map((h, k) =>
            h.transaction(
              async (tx) => {
                const q = {
                  get: (i) => tx.get('SELECT n FROM acct WHERE id = ?', [i]),
                  upd: (i) => tx.run('UPDATE acct SET n = n + 1 WHERE id = ?', [i]),
                  ins: (i, j) => tx.run('INSERT INTO item (owner, v) VALUES (?, ?)', [i, j]),
                };
                for (let j = 0; j < statements; j++) {
                  step(q, k + 1, j);
                  await tick();
                }
              },
              { mode: 'concurrent' },
            ),
          ),
        );
      }
      const cpu = cpuMs() - c0;
      verify('siblite', (s) => root.all(s));
      for (const h of hs) h.close();
      root.close();
      return { cpu: (cpu * 1000) / (2 * statements * reps) };
    };
    const rawRun = (isolated) => async () => {
      const db = new wasm.Database(':memory:');
      db.exec(schema);
      const g = db.prepare('SELECT n FROM acct WHERE id = ?');
      const u = db.prepare('UPDATE acct SET n = n + 1 WHERE id = ?');
      const ins = db.prepare('INSERT INTO item (owner, v) VALUES (?, ?)');
      const q = { get: (i) => g.get([i]), upd: (i) => u.run([i]), ins: (i, j) => ins.run([i, j]) };
      warmUp(q);
      const mutex = new Mutex();
      const c0 = cpuMs();
      for (let r = 0; r < reps; r++) {
        await Promise.all(
          [1, 2].map((i) => {
            const body = async () => {
              if (isolated) db.exec('BEGIN');
              for (let j = 0; j < statements; j++) {
                step(q, i, j);
                await tick();
              }
              if (isolated) db.exec('COMMIT');
            };
            return isolated ? mutex.run(body) : body();
          }),
        );
      }
      const cpu = cpuMs() - c0;
      verify(isolated ? 'mutex' : 'raw', (s) => db.all(s));
      for (const s of [g, u, ins]) s.finalize();
      db.close();
      return { cpu: (cpu * 1000) / (2 * statements * reps) };
    };
    const id = `long${statements}`;
    await measure(
      `CPU µs per statement, 2 transactions of ${statements} statements, an await after each${reps > 1 ? ` (${reps} pairs per sample)` : ''}`,
      [
        { id: `${id}:siblite`, label: 'siblite, BEGIN CONCURRENT', run: sibRun },
        { id: `${id}:mutex`, label: 'global mutex', run: rawRun(true) },
        { id: `${id}:raw`, label: 'raw, same awaits', run: rawRun(false) },
      ],
      [{ key: 'cpu', unit: 'µs', higherIsBetter: false }],
      quick ? 1 : reps > 1 ? 5 : 3,
      { id: 'statements', x: statements },
    );
    return id;
  }
  if (want('long')) {
    const long1000 = await longTx(quick ? 60 : 1000, 1);
    ratios.push({ label: '1,000 statements, an await after each: siblite CPU / raw, same awaits', num: `cpu:${long1000}:siblite`, den: `cpu:${long1000}:raw`, target: 5, atMost: true });
    const long100 = await longTx(quick ? 30 : 100, quick ? 1 : 20);
    ratios.push({ label: '100 statements, an await after each: siblite CPU / raw, same awaits', num: `cpu:${long100}:siblite`, den: `cpu:${long100}:raw`, target: 5, atMost: true });
  }

  // ---- 5: read 10k rows, await, write, 8 handlers ----------------------------------------
  async function readThenWrite(readRows, perHandler) {
    const handlers = 8;
    // Rows 1..8 belong to the handlers; each reads rows 101.. (nobody writes them).
    const schema = `CREATE TABLE big (id INTEGER PRIMARY KEY, v INTEGER NOT NULL);
      WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ${100 + readRows}) INSERT INTO big SELECT x, 0 FROM c;`;
    const { sibRun, mutexRun, rawRun } = awaitingPeers({
      schema,
      handlers,
      perHandler,
      body: async (q, i) => {
        const rows = q.all('SELECT id, v FROM big WHERE id > 100');
        await sleep(2);
        if (rows.length !== readRows) throw new Error(`read ${rows.length} rows`);
        q.run('UPDATE big SET v = v + 1 WHERE id = ?', [i]);
      },
      verify: (who, all) => {
        const rows = all('SELECT id, v FROM big WHERE id <= 8');
        check(`read ${readRows}, ${who}`, rows.every((r) => Number(r.v) === perHandler), JSON.stringify(rows));
      },
    });
    const id = `read${readRows}`;
    await measure(
      `committed tx/s, ${handlers} handlers: read ${readRows} rows, await 2 ms, write own row (same table)`,
      [
        { id: `${id}:siblite`, label: 'siblite, BEGIN CONCURRENT', run: sibRun },
        { id: `${id}:mutex`, label: 'global mutex', run: mutexRun },
        { id: `${id}:raw`, label: 'raw, same awaits', run: rawRun },
      ],
      [{ key: 'tps', unit: 'tx/s' }],
      rounds,
      { id: 'rows', x: readRows },
    );
    return id;
  }
  if (want('read')) {
    const readRows = quick ? 1000 : 10_000;
    const id = await readThenWrite(readRows, quick ? 2 : 6);
    ratios.push({ label: `read ${readRows} rows, await, write, 8 handlers: siblite / global mutex`, num: `tps:${id}:siblite`, den: `tps:${id}:mutex`, target: 0.9 });
  }

  // ---- 6: 32 handlers on one hot row, transaction() with its default retries -------------
  if (want('hot')) {
    const handlers = 32;
    const seconds = quick ? 1 : 10;
    const schema = 'CREATE TABLE hot (id INTEGER PRIMARY KEY, n INTEGER NOT NULL); INSERT INTO hot VALUES (1, 0);';
    const sibRun = async () => {
      const root = sib.open(':memory:');
      root.exec(schema);
      const hs = Array.from({ length: handlers }, () => root.connect());
      const commits = new Array(handlers).fill(0);
      const latencies = [];
      let gaveUp = 0;
      const t0 = performance.now();
      const deadline = t0 + seconds * 1000;
      await Promise.all(
        hs.map(async (h, k) => {
          while (performance.now() < deadline) {
            const s = performance.now();
            try {
              await h.transaction(
                async (tx) => {
                  const r = tx.get('SELECT n FROM hot WHERE id = 1');
                  await sleep(2);
                  tx.run('UPDATE hot SET n = ? WHERE id = 1', [r.n + 1]);
                },
                { mode: 'concurrent' },
              );
              commits[k]++;
              latencies.push(performance.now() - s);
            } catch (e) {
              if (e?.kind !== 'busy_snapshot' && e?.kind !== 'busy') throw e;
              gaveUp++;
            }
          }
        }),
      );
      const ms = performance.now() - t0;
      const total = commits.reduce((a, b) => a + b, 0);
      const n = Number(root.get('SELECT n FROM hot').n);
      check('hot row, siblite', n === total, `hot row = ${n}, commits = ${total}`);
      for (const h of hs) h.close();
      root.close();
      return { tps: total / (ms / 1000), fairness: jain(commits), gaveUp, p99: quantile(latencies, 0.99) };
    };
    const mutexRun = async () => {
      const db = new wasm.Database(':memory:');
      db.exec(schema);
      const get = db.prepare('SELECT n FROM hot WHERE id = 1');
      const set = db.prepare('UPDATE hot SET n = ? WHERE id = 1');
      const mutex = new Mutex();
      const commits = new Array(handlers).fill(0);
      const latencies = [];
      const t0 = performance.now();
      const deadline = t0 + seconds * 1000;
      await Promise.all(
        commits.map(async (_, k) => {
          while (performance.now() < deadline) {
            const s = performance.now();
            await mutex.run(async () => {
              db.exec('BEGIN');
              const r = get.get();
              await sleep(2);
              set.run([r.n + 1]);
              db.exec('COMMIT');
            });
            commits[k]++;
            latencies.push(performance.now() - s);
          }
        }),
      );
      const ms = performance.now() - t0;
      const total = commits.reduce((a, b) => a + b, 0);
      const n = Number(db.get('SELECT n FROM hot').n);
      check('hot row, mutex', n === total, `hot row = ${n}, commits = ${total}`);
      get.finalize();
      set.finalize();
      db.close();
      return { tps: total / (ms / 1000), fairness: jain(commits), gaveUp: 0, p99: quantile(latencies, 0.99) };
    };
    await measure(
      `${handlers} handlers on 1 hot row, ${seconds} s: read it, await 2 ms, write it`,
      [
        { id: 'hot:siblite', label: 'siblite, transaction() with default retries', run: sibRun },
        { id: 'hot:mutex', label: 'global mutex', run: mutexRun },
      ],
      [
        { key: 'tps', unit: 'tx/s', group: `committed tx/s, ${handlers} handlers on 1 hot row` },
        { key: 'fairness', unit: 'Jain index', group: `fairness (Jain index of commits per handler), ${handlers} handlers on 1 hot row` },
        { key: 'gaveUp', unit: 'tx', higherIsBetter: false, group: `transactions that gave up (retries exhausted), ${handlers} handlers on 1 hot row` },
        { key: 'p99', unit: 'ms', higherIsBetter: false, group: `p99 latency of a committed transaction, ${handlers} handlers on 1 hot row` },
      ],
      quick ? 1 : 3,
    );
    notes.push('The hot-row row has no "raw, same awaits" peer: without isolation every concurrent read-modify-write of one row loses updates.');
    ratios.push({ label: '32 handlers on 1 hot row: siblite / global mutex, tx/s', num: 'tps:hot:siblite', den: 'tps:hot:mutex', target: 0.95 });
    ratios.push({ label: '32 handlers on 1 hot row: siblite Jain fairness', num: 'fairness:hot:siblite', target: 0.8, unit: '' });
    ratios.push({ label: '32 handlers on 1 hot row: siblite transactions that gave up', num: 'gaveUp:hot:siblite', target: 0, atMost: true, unit: '' });
    ratios.push({ label: '32 handlers on 1 hot row: siblite p99 latency / global mutex', num: 'p99:hot:siblite', den: 'p99:hot:mutex', target: 1.1, atMost: true });
  }

  // ---- 7: autocommit INSERT while another transaction holds many reserved rowids ---------
  if (want('rowid')) {
    const reserved = quick ? 2000 : 100_000;
    // 10,000 inserts per sample and 9 rounds: with 2,000 (a 10-20 ms sample) one GC pause or
    // scheduler hiccup of a shared machine moved a round's ratio by 1x or more.
    const inserts = quick ? 200 : 10_000;
    const root = sib.open(':memory:');
    root.exec('CREATE TABLE item (id INTEGER PRIMARY KEY, v INTEGER); CREATE TABLE other (id INTEGER PRIMARY KEY, v INTEGER);');
    const holder = root.connect();
    const writer = root.connect();
    const t0 = performance.now();
    holder.exec('BEGIN CONCURRENT');
    for (let i = 0; i < reserved; i++) holder.run('INSERT INTO item (v) VALUES (?)', [i]);
    log(`  ${reserved} reserved rowids set up in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    writer.run('INSERT INTO item (v) VALUES (-1)'); // parks the holder once, before measuring
    const db = new wasm.Database(':memory:');
    db.exec('CREATE TABLE other (id INTEGER PRIMARY KEY, v INTEGER)');
    const rawIns = db.prepare('INSERT INTO other (v) VALUES (?)');
    const timed = (fn) => () => {
      const s = performance.now();
      for (let i = 0; i < inserts; i++) fn(i);
      return { us: ((performance.now() - s) * 1000) / inserts };
    };
    await measure(
      `µs per autocommit INSERT, another transaction holding ${reserved} reserved rowids`,
      [
        { id: 'rowid:reserved', label: `siblite, into the table with ${reserved} reserved rowids`, run: timed((i) => writer.run('INSERT INTO item (v) VALUES (?)', [i])) },
        { id: 'rowid:none', label: 'siblite, into a table with none', run: timed((i) => writer.run('INSERT INTO other (v) VALUES (?)', [i])) },
        { id: 'rowid:raw', label: 'raw engine', run: timed((i) => rawIns.run([i])) },
      ],
      [{ key: 'us', unit: 'µs', higherIsBetter: false }],
      quick ? 1 : 9,
    );
    holder.exec('ROLLBACK');
    rawIns.finalize();
    db.close();
    for (const h of [holder, writer, root]) h.close();
    ratios.push({ label: `autocommit INSERT with ${reserved} reserved rowids / with none`, num: 'us:rowid:reserved', den: 'us:rowid:none', target: 2, atMost: true });
  }

  // ---- 8, 9: handles per request, statement caching --------------------------------------
  if (want('handles')) {
    const schema = `CREATE TABLE acct (id INTEGER PRIMARY KEY, n INTEGER NOT NULL);
      WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 100) INSERT INTO acct SELECT x, 0 FROM c;`;
    const requests = quick ? 300 : 5000;
    const root = sib.open(':memory:');
    root.exec(schema);
    const reused = root.connect();
    const request = (h, i) => {
      const id = (i % 100) + 1;
      const r = h.get('SELECT n FROM acct WHERE id = ?', [id]);
      h.run('UPDATE acct SET n = ? WHERE id = ?', [r.n + 1, id]);
      h.get('SELECT count(*) AS c FROM acct WHERE n > ?', [r.n]);
    };
    const cpuOf = (fn, count) => () => {
      const c0 = cpuMs();
      for (let i = 0; i < count; i++) fn(i);
      return { us: ((cpuMs() - c0) * 1000) / count };
    };
    await measure(
      'CPU µs per request (3 statements)',
      [
        { id: 'req:new', label: 'siblite, a new connect() handle per request', run: cpuOf((i) => { const h = root.connect(); request(h, i); h.close(); }, requests) },
        { id: 'req:reused', label: 'siblite, one reused handle', run: cpuOf((i) => request(reused, i), requests) },
      ],
      [{ key: 'us', unit: 'µs', higherIsBetter: false }],
    );
    ratios.push({ label: 'a new connect() handle per request / one reused handle, CPU', num: 'us:req:new', den: 'us:req:reused', target: 1.3, atMost: true });

    // Distinct statement texts in rotation, each handle in turn running through all of them:
    // 300 vs 30.
    const hs = Array.from({ length: 8 }, () => root.connect());
    const rotation = (distinct) => (i) => hs[Math.floor(i / distinct) % 8].get(`SELECT n + ${i % distinct} AS v FROM acct WHERE id = ?`, [(i % 100) + 1]);
    const statements = quick ? 600 : 6000;
    await measure(
      'CPU µs per statement, distinct statement texts in rotation over 8 handles',
      [
        { id: 'stmts:300', label: 'siblite, 300 distinct statements', run: cpuOf(rotation(300), statements) },
        { id: 'stmts:30', label: 'siblite, 30 distinct statements', run: cpuOf(rotation(30), statements) },
      ],
      [{ key: 'us', unit: 'µs', higherIsBetter: false }],
    );
    ratios.push({ label: '300 distinct statements in rotation / 30, CPU per statement', num: 'us:stmts:300', den: 'us:stmts:30', target: 1.3, atMost: true });
    for (const h of [...hs, reused, root]) h.close();
  }

  // ---- 10: one transaction that read many rows --------------------------------------------
  if (want('bigread')) {
    const rows = quick ? 10_000 : 100_000;
    const schema = `CREATE TABLE big (id INTEGER PRIMARY KEY, v TEXT NOT NULL);
      WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ${rows + 1}) INSERT INTO big SELECT x, 'value ' || x FROM c;`;
    const READ = `SELECT id, v FROM big WHERE id <= ${rows}`;
    const root = sib.open(':memory:');
    root.exec(schema);
    const reader = root.connect();
    const writer = root.connect();
    const db = new wasm.Database(':memory:');
    db.exec(schema);
    const rawRead = db.prepare(READ);
    await measure(
      `one transaction that read ${rows} rows`,
      [
        {
          id: 'bigread:siblite',
          label: 'siblite, BEGIN CONCURRENT',
          run: () => {
            gc();
            const heap0 = process.memoryUsage().heapUsed;
            reader.exec('BEGIN CONCURRENT');
            let n = reader.all(READ).length; // the application drops the rows at once
            gc();
            const logBytes = process.memoryUsage().heapUsed - heap0;
            writer.run(`UPDATE big SET v = v || '!' WHERE id = ${rows + 1}`); // a commit to the table, outside what was read
            const s = performance.now();
            reader.exec('COMMIT'); // re-checks the read
            const stall = performance.now() - s;
            check('big read', n === rows, `read ${n}`);
            return { mb: Math.max(0, logBytes) / 2 ** 20, stall };
          },
        },
        {
          id: 'bigread:raw',
          label: 'raw engine, reading the rows once',
          run: () => {
            const s = performance.now();
            const n = rawRead.all().length;
            check('big read raw', n === rows, `read ${n}`);
            return { stall: performance.now() - s };
          },
        },
      ],
      [
        { key: 'mb', unit: 'MB', higherIsBetter: false, group: `JS heap kept by an open transaction that read ${rows} rows` },
        { key: 'stall', unit: 'ms', higherIsBetter: false, group: `event-loop stall of the re-check after an unrelated commit (${rows} rows read)` },
      ],
    );
    rawRead.finalize();
    db.close();
    for (const h of [reader, writer, root]) h.close();
    ratios.push({ label: `one transaction that read ${rows} rows: JS heap its log keeps, MB`, num: 'mb:bigread:siblite', target: 1, atMost: true, unit: ' MB' });
    ratios.push({ label: `re-check stall after an unrelated commit / raw engine reading the ${rows} rows once`, num: 'stall:bigread:siblite', den: 'stall:bigread:raw', target: 1.5, atMost: true });
  }

  // ---- the curves: the rows above swept over their main parameter ----------------------
  // (CLIFFS_ROWS=curves; the points of the rows own, long and read are on the same curves.)
  if (want('curves')) {
    for (const handlers of quick ? [4] : [1, 4, 16, 64]) await ownRows(handlers, Math.max(2, Math.ceil(256 / handlers)));
    for (const statements of quick ? [10] : [10, 30, 300]) await longTx(statements, quick ? 1 : Math.ceil(2000 / statements));
    for (const readRows of quick ? [100] : [100, 1000, 100_000]) await readThenWrite(readRows, readRows >= 100_000 ? 2 : 6);
    for (const share of quick ? [0.5] : [0, 0.1, 0.5, 1]) await contention(share, quick ? 4 : 20);
  }

  // ---- contention sweep: 32 handlers, a share of the transactions on one hot row ---------
  async function contention(share, perHandler) {
    const handlers = 32;
    const schema = `CREATE TABLE acct (id INTEGER PRIMARY KEY, n INTEGER NOT NULL);
      WITH RECURSIVE c(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM c WHERE x < ${handlers}) INSERT INTO acct SELECT x, 0 FROM c;`;
    // The same transactions for every peer: row 0 (hot) for a `share` of them, else the handler's own.
    const random = prng(7);
    const hot = Array.from({ length: handlers * perHandler }, () => random() < share);
    const hotCount = hot.filter(Boolean).length;
    const { sibRun, mutexRun } = awaitingPeers({
      schema,
      handlers,
      perHandler,
      body: async (q, i, j) => {
        const row = hot[(i - 1) * perHandler + j] ? 0 : i;
        const r = q.get('SELECT n FROM acct WHERE id = ?', [row]);
        await sleep(2);
        q.run('UPDATE acct SET n = ? WHERE id = ?', [r.n + 1, row]);
      },
      verify: (who, all) => {
        const n = Number(all('SELECT n FROM acct WHERE id = 0')[0].n);
        check(`contention ${share}, ${who}`, n === hotCount, `hot row ${n}, expected ${hotCount}`);
      },
    });
    const id = `contention${share}`;
    await measure(
      `committed tx/s, ${handlers} handlers, ${share * 100}% of the transactions on one hot row`,
      [
        { id: `${id}:siblite`, label: 'siblite, BEGIN CONCURRENT', run: sibRun },
        { id: `${id}:mutex`, label: 'global mutex', run: mutexRun },
      ],
      [{ key: 'tps', unit: 'tx/s' }],
      quick ? 1 : 3,
      { id: 'contention', x: share * 100 },
    );
  }

  const curves = [
    { id: 'handlers', title: 'Throughput vs handlers (own rows, 2 ms await)', x: 'handlers', about: 'Each handler runs transactions that read its own row, `await` 2 ms, and write it.' },
    { id: 'statements', title: 'CPU per statement vs statements per transaction', x: 'statements per transaction', higherIsBetter: false, about: 'Two transactions taking turns, an `await` after every statement (the worst case for park and resume).' },
    { id: 'rows', title: 'Throughput vs rows read', x: 'rows read', about: '8 handlers: read N rows nobody writes, `await` 2 ms, write the own row of the same table.' },
    {
      id: 'contention',
      title: 'Contention sweep: throughput vs share of transactions on one hot row',
      x: '% of transactions on the hot row',
      about: '32 handlers; each transaction reads a row, `await`s 2 ms and writes it: the hot row for the given share of transactions, else the handler\'s own row. `transaction()` with its default retries.',
    },
  ].filter((c) => figures.some((f) => f.curve?.id === c.id));

  const checks = [
    failures.length
      ? { ok: false, message: `wrong final values (lost or extra updates): ${failures.slice(0, 3).join(' | ')}` }
      : { ok: true, message: 'every isolated run ended with exact row values' },
  ];
  // "raw, same awaits" has no isolation: its lost updates are expected, not a failure.
  if (failures.length) for (const f of failures) console.error(`ERROR: ${f}`);
  return { name, title, workload, ratio, target, rounds, figures, ratios, curves, notes, checks, versions };
}

function quantile(values, q) {
  const sorted = [...values].sort((a, b) => a - b);
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((sorted.length - 1) * q))];
}

export default { name, title, workload, ratio, target, run };
