// The bus: messages per second for send, for claim + handle + ack with 1/4/16 workers, and
// for fan-out to 3 groups, on :memory: and on a file; the cost of a claim behind backlogs
// nothing can claim (one busy ordering key, a stuck event with many settled above it); and
// handler calls per message with 4 worker processes on one file. Peers: @siblite/bus (SqliteBus),
// a minimal hand-written baseline running the same SQL (the bus's own plans) on one raw
// node-sqlite3-wasm connection, and plainjob (a SQLite job queue on better-sqlite3) where
// it is installed.
import { interleaved, sleep } from '../lib/measure.mjs';
import { loadBus, loadPlainjob, loadSiblite, loadWasm, tempDir } from '../lib/peers.mjs';

export const name = 'bus';
export const title = 'Message bus throughput';
export const workload =
  '*send*: N commands sent one after another (`await bus.send(name, { i })`), each its own autocommit INSERT. ' +
  '*consume, W workers*: N commands already queued; time from starting W concurrent handlers to an empty queue; each message is ' +
  'claimed (atomic `UPDATE ... RETURNING`, up to W per claim), handed to an async no-op handler, and acknowledged; for SqliteBus the ' +
  'handler runs in a `BEGIN CONCURRENT` transaction (`context.conn`) that commits with the ack. ' +
  '*fan-out*: N events already in the log; time until 3 consumer groups have each handled all of them (figure: deliveries/s = 3N / time). ' +
  '*raw SQL baseline*: the same statements (the bus\'s SQL plans) on one node-sqlite3-wasm connection with JS loops, no transactions ' +
  'around handlers, no retries, no validation: the floor cost of the storage design. *plainjob*: `queue.add` / W `defineWorker`s ' +
  '(each handles one job at a time) on better-sqlite3; it has no consumer groups.';
export const ratio = 'SqliteBus msg/s vs the raw-SQL baseline of the same statements (the overhead of the bus and of the core).';
export const target = 'none: reported for information.';

const WORKERS = [1, 4, 16];
const GROUPS = ['g1', 'g2', 'g3'];

export async function run({ quick, log }) {
  const notes = [];
  const versions = {};
  const checks = [];
  const failures = [];
  const rounds = quick ? 1 : 3;
  const sizes = { memory: quick ? 100 : 2_000, file: quick ? 30 : 300 };

  const wasm = loadWasm();
  if (!wasm.ok) throw new Error(wasm.reason);
  versions['node-sqlite3-wasm'] = wasm.version;
  const sib = await loadSiblite(['open']);
  const busMod = await loadBus(['SqliteBus', 'buildPlans', 'claimCommandRows', 'claimEventRows', 'inImmediate']);
  if (!sib.ok || !busMod.ok) throw new Error(`the bus suite needs @siblite/core and @siblite/bus built: ${sib.reason ?? busMod.reason}`);
  versions['@siblite/core'] = sib.version;
  versions['@siblite/bus'] = 'workspace';
  const plans = busMod.buildPlans('bus');
  const pj = await loadPlainjob();
  if (pj.ok) versions.plainjob = pj.version;
  else {
    notes.push(`plainjob skipped: ${pj.reason}`);
    log(`note: plainjob skipped: ${pj.reason}`);
  }

  const tmp = tempDir('siblite-bench-bus-');
  let fileNo = 0;
  const pathFor = (storage) => (storage === 'file' ? tmp.file(`bus-${++fileNo}.db`) : ':memory:');
  const verify = (label, got, want) => {
    if (got !== want) failures.push(`${label}: handled ${got}, expected ${want}`);
  };

  // ------------------------------------------------------------------ SqliteBus
  async function withBus(storage, fn) {
    const conn = sib.open(pathFor(storage));
    const bus = await busMod.SqliteBus.open(conn, { logger: null });
    try {
      return await fn(bus, conn);
    } finally {
      await bus.close();
      conn.close();
    }
  }
  const busSend = (storage) =>
    withBus(storage, async (bus) => {
      const n = sizes[storage];
      const t0 = performance.now();
      for (let i = 0; i < n; i++) await bus.send('bench.job', { i });
      return n / ((performance.now() - t0) / 1000);
    });
  const fill = async (bus, conn, n) => {
    const h = conn.connect();
    await h.transaction(async (tx) => {
      for (let i = 0; i < n; i++) await bus.send('bench.job', { i }, { conn: tx });
    }, { mode: 'immediate' });
    h.close();
  };
  const busConsume = (storage, workers) =>
    withBus(storage, async (bus, conn) => {
      const n = sizes[storage];
      await fill(bus, conn, n);
      let handled = 0;
      const t0 = performance.now();
      const w = bus.listen({ 'bench.job': async () => void handled++ }, { concurrency: workers, pollInterval: 1_000 });
      await w.drain();
      const rate = n / ((performance.now() - t0) / 1000);
      await w.stop();
      verify(`SqliteBus consume x${workers} ${storage}`, handled, n);
      return rate;
    });
  const busFanout = (storage) =>
    withBus(storage, async (bus, conn) => {
      const n = sizes[storage];
      const h = conn.connect();
      await h.transaction(async (tx) => {
        for (let i = 0; i < n; i++) await bus.publish('bench.event', { i }, { conn: tx });
      }, { mode: 'immediate' });
      h.close();
      let handled = 0;
      const t0 = performance.now();
      const ws = GROUPS.map((g) => bus.subscribe(g, { 'bench.event': async () => void handled++ }, { pollInterval: 1_000 }));
      await Promise.all(ws.map((w) => w.drain()));
      const rate = (n * GROUPS.length) / ((performance.now() - t0) / 1000);
      await Promise.all(ws.map((w) => w.stop()));
      verify(`SqliteBus fan-out ${storage}`, handled, n * GROUPS.length);
      return rate;
    });

  // ------------------------------------------------------------------ raw SQL baseline
  function rawOpen(storage) {
    const db = new wasm.Database(pathFor(storage));
    db.exec(plans.createMeta);
    for (const sql of plans.migrations.flat()) db.exec(sql);
    const stmts = [];
    const prep = (sql) => {
      const s = db.prepare(sql);
      stmts.push(s);
      return s;
    };
    // The bus's claim procedures take a handle with all/get/run/exec; this one runs them on the
    // raw connection with cached statements (named parameters get the ':' prefix it wants;
    // positional ones, an array, pass as they are).
    const cache = new Map();
    const st = (sql) => cache.get(sql) ?? cache.set(sql, prep(sql)).get(sql);
    const pre = (p) => (!p || Array.isArray(p) ? p : Object.fromEntries(Object.entries(p).map(([k, v]) => [`:${k}`, v])));
    const handle = {
      all: (sql, p) => st(sql).all(pre(p)),
      get: (sql, p) => st(sql).all(pre(p))[0], // to completion: a half-read statement would block COMMIT
      run: (sql, p) => st(sql).run(pre(p)),
      exec: (sql) => db.exec(sql),
      get inTransaction() { return db.inTransaction; },
    };
    return { db, prep, handle, close: () => { for (const s of stmts) s.finalize(); db.close(); } };
  }
  const sendParams = (i) => {
    const now = Date.now();
    return { ':id': `m-${i}-${Math.random()}`, ':name': 'bench.job', ':encoding': 'json', ':payload': JSON.stringify({ i }), ':contentType': 'application/json', ':headers': '{}', ':key': null, ':now': now, ':availableAt': now, ':priority': 0 };
  };
  function rawSend(storage) {
    const r = rawOpen(storage);
    try {
      const ins = r.prep(plans.send);
      const n = sizes[storage];
      const t0 = performance.now();
      for (let i = 0; i < n; i++) ins.run(sendParams(i));
      return n / ((performance.now() - t0) / 1000);
    } finally {
      r.close();
    }
  }
  async function rawConsume(storage, workers) {
    const r = rawOpen(storage);
    try {
      const ins = r.prep(plans.send);
      const n = sizes[storage];
      r.db.exec('BEGIN');
      for (let i = 0; i < n; i++) ins.run(sendParams(i));
      r.db.exec('COMMIT');
      const ack = r.prep(plans.ackCommand);
      let handled = 0;
      const t0 = performance.now();
      // one claimer feeding W handler slots, like the bus's worker loop
      const loop = async () => {
        for (;;) {
          const now = Date.now();
          const token = `t-${Math.random()}`;
          const rows = busMod.inImmediate(r.handle, () =>
            busMod.claimCommandRows(r.handle, plans, { token, now, leaseUntil: now + 30_000, limit: workers, names: null }));
          if (rows.length === 0) return;
          await Promise.all(rows.map(async (row) => {
            JSON.parse(row.payload);
            await Promise.resolve(); // the no-op handler
            ack.run({ ':seq': row.seq, ':token': token, ':now': Date.now() });
            handled++;
          }));
        }
      };
      await loop();
      const rate = n / ((performance.now() - t0) / 1000);
      verify(`raw consume x${workers} ${storage}`, handled, n);
      return rate;
    } finally {
      r.close();
    }
  }
  async function rawFanout(storage) {
    const r = rawOpen(storage);
    try {
      const n = sizes[storage];
      const pub = r.prep(plans.publish);
      r.db.exec('BEGIN');
      for (let i = 0; i < n; i++) {
        const now = Date.now();
        pub.run({ ':id': `e-${i}`, ':name': 'bench.event', ':encoding': 'json', ':payload': JSON.stringify({ i }), ':contentType': 'application/json', ':headers': '{}', ':key': null, ':now': now });
      }
      r.db.exec('COMMIT');
      r.db.run(plans.sequence);
      const create = r.prep(plans.createGroup);
      const get = r.prep(plans.getEvent);
      const ack = r.prep(plans.ackEvent);
      const advance = r.prep(plans.advanceGroup);
      const lift = r.prep(plans.liftHighWater);
      const compact = r.prep(plans.compactGroup);
      let handled = 0;
      const t0 = performance.now();
      await Promise.all(GROUPS.map(async (g) => {
        create.run({ ':grp': g, ':fromEnd': 0, ':now': Date.now() });
        for (;;) {
          const now = Date.now();
          const token = `t-${Math.random()}`;
          const rows = busMod.inImmediate(r.handle, () =>
            busMod.claimEventRows(r.handle, plans, { group: g, token, now, leaseUntil: now + 30_000, limit: 1, ordered: false }));
          if (rows.length === 0) return;
          for (const row of rows) {
            JSON.parse(get.get({ ':pos': row.pos }).payload);
            await Promise.resolve();
            ack.run({ ':grp': g, ':pos': row.pos, ':token': token });
            advance.run({ ':grp': g });
            lift.run({ ':grp': g });
            compact.run({ ':grp': g });
            handled++;
          }
        }
      }));
      const rate = (n * GROUPS.length) / ((performance.now() - t0) / 1000);
      verify(`raw fan-out ${storage}`, handled, n * GROUPS.length);
      return rate;
    } finally {
      r.close();
    }
  }

  // ------------------------------------------------------------------ plainjob
  async function withPlainjob(storage, fn) {
    const db = new pj.Database(pathFor(storage));
    const silent = { error() {}, warn() {}, info() {}, debug() {} };
    const queue = pj.defineQueue({ connection: pj.better(db), logger: silent });
    try {
      return await fn(queue, silent);
    } finally {
      queue.close();
      db.close();
    }
  }
  const pjSend = (storage) =>
    withPlainjob(storage, async (queue) => {
      const n = sizes[storage];
      const t0 = performance.now();
      for (let i = 0; i < n; i++) queue.add('bench.job', { i });
      return n / ((performance.now() - t0) / 1000);
    });
  const pjConsume = (storage, workers) =>
    withPlainjob(storage, async (queue, logger) => {
      const n = sizes[storage];
      queue.addMany('bench.job', Array.from({ length: n }, (_, i) => ({ i })));
      let handled = 0;
      const ws = Array.from({ length: workers }, () =>
        pj.defineWorker('bench.job', async () => void handled++, { queue, logger, pollIntervall: 1 }),
      );
      const t0 = performance.now();
      const running = ws.map((w) => w.start());
      while (handled < n) await sleep(1);
      const rate = n / ((performance.now() - t0) / 1000);
      await Promise.all(ws.map((w) => w.stop()));
      await Promise.allSettled(running);
      verify(`plainjob consume x${workers} ${storage}`, handled, n);
      return rate;
    });

  // ------------------------------------------------------------------ claim cost
  // ms per claim + ack of one message (SqliteBus.receive, :memory:), behind backlogs that
  // nothing can claim: a single ordering key whose head is in flight, and a group whose first
  // event is stuck in flight with many events settled above it. Bounded claims stay near the
  // flat case (target: within 3x).
  const backlog = quick ? 5_000 : 100_000;
  const settledAbove = quick ? 2_000 : 20_000;
  const CLAIMS = quick ? 100 : 300;
  const perClaim = async (bus, options) => {
    const t0 = performance.now();
    for (let i = 0; i < CLAIMS; i++) {
      const d = await bus.receive(options);
      if (!d) throw new Error(`claim cost: nothing claimable after ${i} claims`);
      await d.ack();
    }
    return (performance.now() - t0) / CLAIMS;
  };
  const costFlat = () =>
    withBus('memory', async (bus, conn) => {
      await fillWith(conn, async (tx) => { for (let i = 0; i < backlog; i++) await bus.send('c', i, { conn: tx }); });
      return perClaim(bus, {});
    });
  // The same behind smaller single-key backlogs: a bounded claim costs the same at every size
  // (before the head design: 0.9 / 10 / 74 ms at 1k / 10k / 100k).
  const keySizes = quick ? [500, backlog] : [1_000, 10_000, backlog];
  const costKey = (size = backlog) =>
    withBus('memory', async (bus, conn) => {
      await fillWith(conn, async (tx) => {
        for (let i = 0; i < size; i++) await bus.send('c', i, { conn: tx, key: 'hot' });
        for (let i = 0; i < CLAIMS; i++) await bus.send('c', i, { conn: tx });
      });
      const head = await bus.receive({ lease: 3_600_000 }); // the hot key's head stays in flight
      if (!head) throw new Error('claim cost: no head');
      return perClaim(bus, {});
    });
  const costEventsFlat = () =>
    withBus('memory', async (bus, conn) => {
      await fillWith(conn, async (tx) => { for (let i = 0; i <= settledAbove + CLAIMS; i++) await bus.publish('e', i, { conn: tx }); });
      return perClaim(bus, { group: 'g' });
    });
  const costEventsStuck = () =>
    withBus('memory', async (bus, conn) => {
      await fillWith(conn, async (tx) => { for (let i = 0; i <= settledAbove + CLAIMS; i++) await bus.publish('e', i, { conn: tx }); });
      const stuck = await bus.receive({ group: 'g', lease: 3_600_000 });
      if (!stuck) throw new Error('claim cost: no event');
      for (let i = 0; i < settledAbove; i++) await (await bus.receive({ group: 'g' })).ack();
      return perClaim(bus, { group: 'g' });
    });
  // The same with keyed events (100 keys): the stuck event also holds back the later events of
  // its key, which the claims must step over (before the window design: 20k did not finish in
  // 3 minutes). Enough events are published that C stay claimable behind the held-back ones.
  const KEYS = 100;
  const publishKeyed = (bus, conn, n) =>
    fillWith(conn, async (tx) => { for (let i = 0; i < n; i++) await bus.publish('e', i, { conn: tx, key: `k${i % KEYS}` }); });
  const costKeyedFlat = () =>
    withBus('memory', async (bus, conn) => {
      await publishKeyed(bus, conn, settledAbove + 2 * CLAIMS);
      return perClaim(bus, { group: 'g' });
    });
  const costKeyedStuck = () =>
    withBus('memory', async (bus, conn) => {
      await publishKeyed(bus, conn, settledAbove + 2 * CLAIMS);
      const stuck = await bus.receive({ group: 'g', lease: 3_600_000 });
      if (!stuck) throw new Error('claim cost: no event');
      for (let i = 0; i < settledAbove; i++) await (await bus.receive({ group: 'g' })).ack();
      return perClaim(bus, { group: 'g' });
    });
  async function fillWith(conn, fn) {
    const h = conn.connect();
    await h.transaction(fn, { mode: 'immediate' });
    h.close();
  }
  const costCases = [
    { id: 'cost:flat', group: `claim + ack cost, ${backlog} queued commands`, peer: 'SqliteBus (flat backlog)', run: costFlat },
    ...keySizes.map((size) => ({
      id: size === backlog ? 'cost:key' : `cost:key@${size}`,
      group: size === backlog ? `claim + ack cost, ${backlog} queued commands` : `claim + ack cost, ${size} queued on one ordering key`,
      peer: 'SqliteBus (one ordering key, head in flight)',
      run: () => costKey(size),
    })),
    { id: 'cost:events', group: `claim + ack cost, events of a group`, peer: 'SqliteBus (flat log)', run: costEventsFlat },
    { id: 'cost:stuck', group: `claim + ack cost, events of a group`, peer: `SqliteBus (first event stuck, ${settledAbove} settled above it)`, run: costEventsStuck },
    { id: 'cost:events-keyed', group: `claim + ack cost, keyed events of a group (${KEYS} keys)`, peer: 'SqliteBus (flat log)', run: costKeyedFlat },
    { id: 'cost:stuck-keyed', group: `claim + ack cost, keyed events of a group (${KEYS} keys)`, peer: `SqliteBus (first event stuck, ${settledAbove} settled above it)`, run: costKeyedStuck },
  ];

  // ------------------------------------------------------------------ several processes
  // 4 worker processes on one file drain N commands; every handler call is logged by the
  // child (appendFileSync, before the handler's work), so calls per message counts reruns and
  // re-deliveries. Two handler kinds: effects keyed by a fresh id, and effects in a rowid table
  // (two processes inserting at once are first handed the same rowid: a real conflict, rerun;
  // then each process picks that table's rowids in its own stripe, see docs/concurrency.md).
  async function multiProcess(keyed) {
    const { fork } = await import('node:child_process');
    const { readFileSync } = await import('node:fs');
    const { fileURLToPath } = await import('node:url');
    const fixture = fileURLToPath(new URL('../../packages/bus/test/fixtures/proc-worker.mjs', import.meta.url));
    const n = quick ? 80 : 400;
    const path = pathFor('file');
    const calls = `${path}.calls`;
    const conn = sib.open(path);
    const bus = await busMod.SqliteBus.open(conn, { logger: null });
    conn.exec(keyed ? 'CREATE TABLE effects (call TEXT PRIMARY KEY, msg TEXT, pid INTEGER, grp TEXT) WITHOUT ROWID' : 'CREATE TABLE effects (msg TEXT, pid INTEGER, grp TEXT)');
    await fillWith(conn, async (tx) => { for (let i = 0; i < n; i++) await bus.send('fx', i, { conn: tx }); });
    await bus.close();
    conn.close();
    const t0 = performance.now();
    const kids = await Promise.all([1, 2, 3, 4].map(() => new Promise((resolve, reject) => {
      const c = fork(fixture, [path, '2000', 'queue', '4', calls], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
      c.once('message', () => resolve(c));
      c.once('error', reject);
    })));
    const watch = sib.open(path);
    try {
      for (;;) {
        await sleep(100);
        let left;
        try {
          left = watch.get(`SELECT count(*) AS n FROM bus_queue WHERE state IN ('ready', 'inflight')`).n;
        } catch {
          continue;
        }
        if (left === 0) break;
      }
    } finally {
      for (const k of kids) k.kill('SIGTERM');
      await Promise.all(kids.map((k) => new Promise((r) => (k.exitCode !== null ? r() : k.once('exit', r)))));
    }
    const seconds = (performance.now() - t0) / 1000;
    let effects;
    for (;;) {
      try {
        effects = watch.get('SELECT count(*) AS total, count(DISTINCT msg) AS uniq FROM effects');
        break;
      } catch {
        await sleep(5);
      }
    }
    watch.close();
    const lines = readFileSync(calls, 'utf8').trim().split('\n').length;
    if (effects.total !== n || effects.uniq !== n) failures.push(`multi-process (${keyed ? 'keyed' : 'rowid'}): ${effects.total} effects for ${n} messages`);
    return { perMessage: lines / n, rate: n / seconds };
  }

  // ------------------------------------------------------------------ cases
  const peers = [
    { key: 'bus', label: 'SqliteBus', send: busSend, consume: busConsume, fanout: busFanout },
    { key: 'raw', label: 'raw SQL baseline (node-sqlite3-wasm)', send: rawSend, consume: rawConsume, fanout: rawFanout },
  ];
  if (pj.ok) peers.push({ key: 'plainjob', label: `plainjob ${pj.version} (better-sqlite3)`, send: pjSend, consume: pjConsume, fanout: null });
  const cases = [];
  for (const storage of ['memory', 'file']) {
    for (const p of peers) {
      cases.push({ id: `send:${p.key}@${storage}`, group: `send, ${storage}`, peer: p.label, run: () => p.send(storage) });
      for (const w of WORKERS) {
        cases.push({ id: `consume${w}:${p.key}@${storage}`, group: `claim + handle + ack, ${w} worker${w > 1 ? 's' : ''}, ${storage}`, peer: p.label, run: () => p.consume(storage, w) });
      }
      if (p.fanout) cases.push({ id: `fanout:${p.key}@${storage}`, group: `fan-out to 3 groups (deliveries/s), ${storage}`, peer: p.label, run: () => p.fanout(storage) });
    }
  }
  log(`${cases.length} cases, N = ${sizes.memory} (:memory:) / ${sizes.file} (file), ${rounds} interleaved rounds (+1 warm-up round)`);
  let samples;
  let costSamples;
  const multi = {};
  try {
    samples = await interleaved({ rounds, warmup: 1, cases, log });
    log(`claim cost: ${costCases.length} cases, backlog ${backlog}, ${settledAbove} settled above a stuck event`);
    costSamples = await interleaved({ rounds, warmup: 0, cases: costCases, log });
    for (const keyed of [true, false]) {
      const r = await multiProcess(keyed);
      multi[keyed ? 'keyed' : 'rowid'] = r;
      log(`4 processes, effects ${keyed ? 'keyed by id' : 'in a rowid table'}: ${r.perMessage.toFixed(3)} handler calls per message, ${r.rate.toFixed(0)} msg/s`);
    }
  } finally {
    tmp.cleanup();
  }
  const figures = cases.map((c) => ({ id: c.id, group: c.group, peer: c.peer, unit: 'msg/s', samples: samples.get(c.id) }));
  for (const c of costCases) figures.push({ id: c.id, group: c.group, peer: c.peer, unit: 'ms per claim', samples: costSamples.get(c.id) });
  for (const [kind, r] of Object.entries(multi)) {
    const label = kind === 'keyed' ? 'effects keyed by a fresh id' : 'effects in a rowid table';
    figures.push({ id: `procs:calls:${kind}`, group: '4 worker processes on one file: handler calls per message', peer: `SqliteBus (${label})`, unit: 'calls/msg', samples: [r.perMessage] });
    figures.push({ id: `procs:rate:${kind}`, group: '4 worker processes on one file: throughput', peer: `SqliteBus (${label})`, unit: 'msg/s', samples: [r.rate] });
  }
  const ratios = [];
  for (const storage of ['memory', 'file']) {
    ratios.push({ label: `SqliteBus / raw SQL, send, ${storage}`, num: `send:bus@${storage}`, den: `send:raw@${storage}` });
    for (const w of WORKERS) ratios.push({ label: `SqliteBus / raw SQL, consume x${w}, ${storage}`, num: `consume${w}:bus@${storage}`, den: `consume${w}:raw@${storage}` });
    ratios.push({ label: `SqliteBus / raw SQL, fan-out, ${storage}`, num: `fanout:bus@${storage}`, den: `fanout:raw@${storage}` });
    if (pj.ok) {
      ratios.push({ label: `SqliteBus / plainjob, send, ${storage}`, num: `send:bus@${storage}`, den: `send:plainjob@${storage}` });
      for (const w of WORKERS) ratios.push({ label: `SqliteBus / plainjob, consume x${w}, ${storage}`, num: `consume${w}:bus@${storage}`, den: `consume${w}:plainjob@${storage}` });
    }
  }
  for (const size of keySizes) {
    if (size !== backlog) ratios.push({ label: `claim cost, ${size} on one busy ordering key / flat backlog`, num: `cost:key@${size}`, den: 'cost:flat' });
  }
  ratios.push({ label: 'claim cost, one busy ordering key / flat backlog', num: 'cost:key', den: 'cost:flat' });
  ratios.push({ label: 'claim cost, events settled above a stuck one / flat log', num: 'cost:stuck', den: 'cost:events' });
  ratios.push({ label: 'claim cost, keyed events settled above a stuck one / flat keyed log', num: 'cost:stuck-keyed', den: 'cost:events-keyed' });
  const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  const costChecks = [
    ...keySizes.map((size) => [size === backlog ? 'cost:key' : `cost:key@${size}`, 'cost:flat', `one busy key (${size} queued)`]),
    ['cost:stuck', 'cost:events', `a stuck event (${settledAbove} settled above it)`],
    ['cost:stuck-keyed', 'cost:events-keyed', `a stuck keyed event (${settledAbove} settled above it, ${KEYS} keys)`],
  ];
  for (const [num, den, what] of costChecks) {
    const r = median(costSamples.get(num)) / median(costSamples.get(den));
    // Quick mode runs one short round on a busy machine: reported, not checked.
    checks.push({ ok: quick || r <= 3, message: `claim cost behind ${what}: ${r.toFixed(2)}x the flat case (target <= 3x${quick ? '; quick mode: not checked' : ''})` });
  }
  for (const [kind, what] of [['keyed', 'effects keyed by a fresh id'], ['rowid', 'effects in a rowid table']]) {
    const c = multi[kind]?.perMessage;
    if (c !== undefined) checks.push({ ok: quick || c < 1.3, message: `4 processes: ${c.toFixed(3)} handler calls per message with ${what} (target < 1.3${quick ? '; quick mode: not checked' : ''})` });
  }
  checks.push(
    failures.length
      ? { ok: false, message: `messages lost or duplicated: ${failures.slice(0, 3).join(' | ')}` }
      : { ok: true, message: `every run of every peer handled exactly N messages (${cases.length * (rounds + 1)} runs)` },
  );
  for (const f of failures) console.error(`ERROR: ${f}`);
  return { name, title, workload, ratio, target, rounds, figures, ratios, notes, checks, versions };
}

export default { name, title, workload, ratio, target, run };
