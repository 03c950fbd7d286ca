// Group commit on a database file: concurrent transaction() commits (and the bus's sends and
// acks) that become ready in one turn of the event loop share one real COMMIT, so one set of
// fsyncs. Measured side by side in interleaved rounds: siblite with group commit (the default),
// siblite with it off, a global mutex on one raw connection, and plainjob on better-sqlite3 (WAL,
// synchronous NORMAL) for the bus rows. fsyncs are counted by wrapping fs.fsyncSync, which the
// node-sqlite3-wasm VFS calls for every xSync (and for the directory after a journal delete).
import fs from 'node:fs';
import { interleaved, sleep } from '../lib/measure.mjs';
import { Mutex } from '../lib/mutex.mjs';
import { loadBus, loadPlainjob, loadSiblite, loadWasm, tempDir } from '../lib/peers.mjs';

export const name = 'group-commit';
export const title = 'Group commit on a file (full durability)';
const HANDLERS = 32;
const PRODUCERS = 64;
const BATCH_PRODUCERS = 16;
const BATCH = 100;
const WORKERS = 16;
export const workload =
  'Every case on a database FILE; siblite and the raw engine with journal_mode DELETE and synchronous FULL (every COMMIT fsyncs the ' +
  'journal and the database); plainjob with its own settings, WAL and synchronous NORMAL (a commit appends to the WAL and does not fsync). ' +
  `*${HANDLERS} handlers*: each runs transactions that read its own row, \`await\` 2 ms (setTimeout), write its own row, commit; ` +
  "siblite `h.transaction(fn)` (concurrent) on sibling handles, with group commit (default, window 0 = the same turn of the event loop), " +
  'with `groupCommit: { window: 2 }`, and with `groupCommit: false`; *global mutex*: one raw node-sqlite3-wasm connection, ' +
  '`BEGIN` .. `COMMIT` inside one async mutex. Figures: committed tx/s, and fsyncs per committed transaction (calls of fs.fsyncSync ' +
  `in the process / commits). *bus send*: ${PRODUCERS} concurrent producers each \`await bus.send()\` in a loop (no conn: ` +
  `the bus's own transaction); *sendMany*: ${BATCH_PRODUCERS} concurrent producers each sending batches of ${BATCH} with \`bus.sendMany\`; ` +
  `plainjob: \`queue.add\` / \`queue.addMany\` from the same number of async producers (its calls are synchronous). *claim + handle + ack*: ` +
  `N commands queued; ${WORKERS} concurrent handlers (\`listen\` concurrency ${WORKERS}; plainjob: ${WORKERS} \`defineWorker\`s) handle ` +
  'an async no-op; time until all are handled.';
export const ratio = 'siblite with group commit vs the global mutex (32 handlers) and vs plainjob on better-sqlite3 WAL (bus rows).';
export const target = '32 handlers >= 15x the mutex; bus send >= 0.5x plainjob (sendMany >= 1x); claim + handle + ack >= 1x plainjob; fsyncs per transaction <= 0.5.';

// Counts the fsyncs of this process (the WebAssembly engine's VFS calls fs.fsyncSync).
let fsyncs = 0;
const realFsync = fs.fsyncSync;
fs.fsyncSync = (fd) => {
  fsyncs++;
  return realFsync(fd);
};

export async function run({ quick, log }) {
  const notes = [];
  const versions = {};
  const checks = [];
  const failures = [];
  const rounds = quick ? 1 : 3;
  const perHandler = quick ? 3 : 15;
  const sends = quick ? 128 : 1_280;
  const batches = quick ? 1 : 4; // per batch producer
  const consumeN = quick ? 64 : 600;

  const wasm = loadWasm();
  if (!wasm.ok) throw new Error(wasm.reason);
  versions['node-sqlite3-wasm'] = wasm.version;
  const sib = await loadSiblite(['open', 'groupCommitStats']);
  const busMod = await loadBus(['SqliteBus']);
  if (!sib.ok || !busMod.ok) throw new Error(`the group-commit suite needs @siblite/core and @siblite/bus built: ${sib.reason ?? busMod.reason}`);
  versions['@siblite/core'] = sib.version;
  const pj = await loadPlainjob();
  if (pj.ok) versions.plainjob = pj.version;
  else notes.push(`plainjob skipped: ${pj.reason}`);
  notes.push(
    'Durability: siblite and the mutex run synchronous FULL with a rollback journal (each durable COMMIT fsyncs); plainjob runs WAL with ' +
      'synchronous NORMAL (its commits are not fsynced; a power loss can lose the last ones). A process kill loses nothing in either.',
  );
  notes.push('Shared 2-core machine with other agents running: absolute numbers are noisy; compare ratios within one run.');

  const tmp = tempDir('siblite-bench-gc-');
  let fileNo = 0;
  const newFile = () => tmp.file(`gc-${++fileNo}.db`);
  const fsyncPer = new Map(); // case id -> [fsyncs per commit per round]
  const noteFsyncs = (id, count, commits) => {
    if (!fsyncPer.has(id)) fsyncPer.set(id, []);
    fsyncPer.get(id).push(count / commits);
  };

  // ---------------------------------------------------------------- 32 handlers
  const SCHEMA = `CREATE TABLE acct (id INTEGER PRIMARY KEY, n INTEGER NOT NULL);
    WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ${HANDLERS})
    INSERT INTO acct (id, n) SELECT x, 0 FROM c;`;
  const checkRows = (label, rows) => {
    const bad = rows.filter((r) => Number(r.n) !== perHandler);
    if (bad.length || rows.length !== HANDLERS) failures.push(`${label}: ${bad.length} rows wrong`);
  };
  const siblite = (id, groupCommit) => async () => {
    const db = sib.open(newFile(), groupCommit === undefined ? {} : { groupCommit });
    db.exec(SCHEMA);
    const hs = Array.from({ length: HANDLERS }, () => db.connect());
    const f0 = fsyncs;
    const t0 = performance.now();
    await Promise.all(
      hs.map(async (h, i) => {
        for (let k = 0; k < perHandler; k++) {
          await h.transaction(async (tx) => {
            const { n } = tx.get('SELECT n FROM acct WHERE id = ?', [i + 1]);
            await sleep(2);
            tx.run('UPDATE acct SET n = ? WHERE id = ?', [n + 1, i + 1]);
          });
        }
      }),
    );
    const rate = (HANDLERS * perHandler) / ((performance.now() - t0) / 1000);
    noteFsyncs(id, fsyncs - f0, HANDLERS * perHandler);
    checkRows(id, db.all('SELECT n FROM acct'));
    for (const h of hs) h.close();
    db.close();
    return rate;
  };
  const mutexCase = (id) => async () => {
    const db = new wasm.Database(newFile());
    db.exec(SCHEMA);
    const read = db.prepare('SELECT n FROM acct WHERE id = ?');
    const write = db.prepare('UPDATE acct SET n = ? WHERE id = ?');
    const mutex = new Mutex();
    const f0 = fsyncs;
    const t0 = performance.now();
    await Promise.all(
      Array.from({ length: HANDLERS }, async (_, i) => {
        for (let k = 0; k < perHandler; k++) {
          await mutex.run(async () => {
            db.exec('BEGIN');
            const { n } = read.get([i + 1]);
            await sleep(2);
            write.run([n + 1, i + 1]);
            db.exec('COMMIT');
          });
        }
      }),
    );
    const rate = (HANDLERS * perHandler) / ((performance.now() - t0) / 1000);
    noteFsyncs(id, fsyncs - f0, HANDLERS * perHandler);
    checkRows(id, db.all('SELECT n FROM acct'));
    read.finalize();
    write.finalize();
    db.close();
    return rate;
  };

  // ---------------------------------------------------------------- bus
  async function withBus(groupCommit, fn) {
    const conn = sib.open(newFile(), groupCommit === undefined ? {} : { groupCommit });
    const bus = await busMod.SqliteBus.open(conn, { logger: null });
    try {
      return await fn(bus, conn);
    } finally {
      await bus.close();
      conn.close();
    }
  }
  const busSend = (id, groupCommit) => () =>
    withBus(groupCommit, async (bus) => {
      const per = sends / PRODUCERS;
      const f0 = fsyncs;
      const t0 = performance.now();
      await Promise.all(
        Array.from({ length: PRODUCERS }, async (_, p) => {
          for (let i = 0; i < per; i++) await bus.send('bench.job', { p, i });
        }),
      );
      const rate = sends / ((performance.now() - t0) / 1000);
      noteFsyncs(id, fsyncs - f0, sends);
      const stored = (await bus.stats()).queue['bench.job']?.ready ?? 0;
      if (stored !== sends) failures.push(`${id}: ${stored} stored of ${sends}`);
      return rate;
    });
  const busSendMany = (id) => () =>
    withBus(undefined, async (bus) => {
      const n = BATCH_PRODUCERS * batches * BATCH;
      const f0 = fsyncs;
      const t0 = performance.now();
      await Promise.all(
        Array.from({ length: BATCH_PRODUCERS }, async (_, p) => {
          for (let b = 0; b < batches; b++) {
            await bus.sendMany(Array.from({ length: BATCH }, (_, i) => ({ name: 'bench.job', payload: { p, b, i } })));
          }
        }),
      );
      const rate = n / ((performance.now() - t0) / 1000);
      noteFsyncs(id, fsyncs - f0, n);
      const stored = (await bus.stats()).queue['bench.job']?.ready ?? 0;
      if (stored !== n) failures.push(`${id}: ${stored} stored of ${n}`);
      return rate;
    });
  const busConsume = (id, groupCommit) => () =>
    withBus(groupCommit, async (bus, conn) => {
      const h = conn.connect();
      await h.transaction(async (tx) => {
        await bus.sendMany(Array.from({ length: consumeN }, (_, i) => ({ name: 'bench.job', payload: { i } })), { conn: tx });
      });
      h.close();
      let handled = 0;
      const f0 = fsyncs;
      const t0 = performance.now();
      const w = bus.listen({ 'bench.job': async () => void handled++ }, { concurrency: WORKERS, pollInterval: 1_000 });
      await w.drain();
      const rate = consumeN / ((performance.now() - t0) / 1000);
      noteFsyncs(id, fsyncs - f0, consumeN);
      await w.stop();
      if (handled !== consumeN) failures.push(`${id}: handled ${handled} of ${consumeN}`);
      return rate;
    });

  async function withPlainjob(fn) {
    const db = new pj.Database(newFile());
    const silent = { error() {}, warn() {}, info() {}, debug() {} };
    const queue = pj.defineQueue({ connection: pj.better(db), logger: silent });
    try {
      return await fn(queue, silent, db);
    } finally {
      queue.close();
      db.close();
    }
  }
  const pjSend = () =>
    withPlainjob(async (queue) => {
      const per = sends / PRODUCERS;
      const t0 = performance.now();
      await Promise.all(
        Array.from({ length: PRODUCERS }, async (_, p) => {
          for (let i = 0; i < per; i++) {
            await null;
            queue.add('bench.job', { p, i });
          }
        }),
      );
      return sends / ((performance.now() - t0) / 1000);
    });
  const pjSendMany = () =>
    withPlainjob(async (queue) => {
      const n = BATCH_PRODUCERS * batches * BATCH;
      const t0 = performance.now();
      await Promise.all(
        Array.from({ length: BATCH_PRODUCERS }, async (_, p) => {
          for (let b = 0; b < batches; b++) {
            await null;
            queue.addMany('bench.job', Array.from({ length: BATCH }, (_, i) => ({ p, b, i })));
          }
        }),
      );
      return n / ((performance.now() - t0) / 1000);
    });
  const pjConsume = () =>
    withPlainjob(async (queue, logger) => {
      queue.addMany('bench.job', Array.from({ length: consumeN }, (_, i) => ({ i })));
      let handled = 0;
      const ws = Array.from({ length: WORKERS }, () => pj.defineWorker('bench.job', async () => void handled++, { queue, logger, pollIntervall: 1 }));
      const t0 = performance.now();
      const running = ws.map((w) => w.start());
      while (handled < consumeN) await sleep(1);
      const rate = consumeN / ((performance.now() - t0) / 1000);
      await Promise.all(ws.map((w) => w.stop()));
      await Promise.allSettled(running);
      if (handled !== consumeN) failures.push(`plainjob consume: handled ${handled} of ${consumeN}`);
      return rate;
    });

  // ---------------------------------------------------------------- cases
  const G32 = `${HANDLERS} handlers: read, await 2 ms, write own row (file)`;
  const SEND = `bus send, ${PRODUCERS} concurrent producers (file)`;
  const MANY = `bus sendMany, ${BATCH_PRODUCERS} producers x batches of ${BATCH} (file)`;
  const CONSUME = `bus claim + handle + ack, ${WORKERS} workers (file)`;
  const cases = [
    { id: 'h32:group', group: G32, peer: 'siblite, group commit (default)', run: siblite('h32:group', undefined) },
    { id: 'h32:window2', group: G32, peer: 'siblite, group commit window 2 ms', run: siblite('h32:window2', { window: 2 }) },
    { id: 'h32:off', group: G32, peer: 'siblite, group commit off', run: siblite('h32:off', false) },
    { id: 'h32:mutex', group: G32, peer: 'global mutex (raw node-sqlite3-wasm)', run: mutexCase('h32:mutex') },
    { id: 'send:group', group: SEND, peer: 'SqliteBus, group commit (default)', run: busSend('send:group', undefined) },
    { id: 'send:off', group: SEND, peer: 'SqliteBus, core group commit off (bus write batching still on)', run: busSend('send:off', false) },
    { id: 'many:group', group: MANY, peer: 'SqliteBus sendMany', run: busSendMany('many:group') },
    { id: 'consume:group', group: CONSUME, peer: 'SqliteBus, group commit (default)', run: busConsume('consume:group', undefined) },
    { id: 'consume:off', group: CONSUME, peer: 'SqliteBus, core group commit off (bus write batching still on)', run: busConsume('consume:off', false) },
  ];
  if (pj.ok) {
    const label = `plainjob ${pj.version} (better-sqlite3, WAL, synchronous NORMAL)`;
    cases.push({ id: 'send:plainjob', group: SEND, peer: label, run: pjSend });
    cases.push({ id: 'many:plainjob', group: MANY, peer: `${label}, addMany`, run: pjSendMany });
    cases.push({ id: 'consume:plainjob', group: CONSUME, peer: label, run: pjConsume });
  }
  // GROUP_COMMIT_CASES=send,many,consume runs only the cases whose id starts with one of those
  // prefixes (a ratio whose two cases did not both run is left out).
  const only = process.env.GROUP_COMMIT_CASES?.split(',').filter(Boolean);
  if (only?.length) {
    const keep = cases.filter((c) => only.some((o) => c.id.startsWith(o)));
    cases.splice(0, cases.length, ...keep);
  }
  log(`${cases.length} cases, ${rounds} interleaved rounds (+1 warm-up round)`);
  let samples;
  try {
    samples = await interleaved({ rounds, warmup: 1, cases, log });
  } finally {
    tmp.cleanup();
  }
  const unitOf = (id) => (id.startsWith('h32') ? 'tx/s' : 'msg/s');
  const figures = cases.map((c) => ({ id: c.id, group: c.group, peer: c.peer, unit: unitOf(c.id), samples: samples.get(c.id) }));
  // fsyncs per committed transaction (or per message), warm-up round excluded.
  for (const c of cases) {
    const per = fsyncPer.get(c.id);
    if (!per) continue;
    figures.push({ id: `fsync:${c.id}`, group: `fsyncs per committed transaction / message: ${c.group}`, peer: c.peer, unit: 'fsyncs', samples: per.slice(1) });
  }
  const ratios = [
    { label: `${HANDLERS} handlers: group commit / global mutex`, num: 'h32:group', den: 'h32:mutex' },
    { label: `${HANDLERS} handlers: group commit window 2 ms / global mutex`, num: 'h32:window2', den: 'h32:mutex' },
    { label: `${HANDLERS} handlers: group commit off / global mutex`, num: 'h32:off', den: 'h32:mutex' },
    { label: 'bus send: core group commit on / off', num: 'send:group', den: 'send:off' },
    { label: 'bus consume: core group commit on / off', num: 'consume:group', den: 'consume:off' },
  ];
  if (pj.ok) {
    ratios.push({ label: `bus send x${PRODUCERS}: SqliteBus / plainjob`, num: 'send:group', den: 'send:plainjob' });
    ratios.push({ label: `bus sendMany: SqliteBus / plainjob addMany`, num: 'many:group', den: 'many:plainjob' });
    ratios.push({ label: `bus sendMany: SqliteBus / plainjob add x${PRODUCERS} (one at a time)`, num: 'many:group', den: 'send:plainjob' });
    ratios.push({ label: `bus claim + handle + ack x${WORKERS}: SqliteBus / plainjob`, num: 'consume:group', den: 'consume:plainjob' });
  }
  const ran = new Set(cases.map((c) => c.id));
  ratios.splice(0, ratios.length, ...ratios.filter((r) => ran.has(r.num) && ran.has(r.den)));
  const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  for (const c of cases) {
    const per = fsyncPer.get(c.id);
    if (!per) continue;
    const m = median(per.slice(1).length ? per.slice(1) : per);
    checks.push({ ok: true, message: `fsyncs per committed ${c.id.startsWith('h32') ? 'transaction' : 'message'}, ${c.group} | ${c.peer}: ${m.toFixed(3)} (reported, not checked; goal <= 0.5 at ${HANDLERS} handlers)` });
  }
  checks.push(
    failures.length
      ? { ok: false, message: `wrong results: ${failures.slice(0, 3).join(' | ')}` }
      : { ok: true, message: 'every run committed exactly its work (rows, messages stored, messages handled)' },
  );
  for (const f of failures) console.error(`ERROR: ${f}`);
  return { name, title, workload, ratio, target, rounds, figures, ratios, notes, checks, versions };
}

export default { name, title, workload, ratio, target, run };
