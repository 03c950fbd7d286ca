// The bus on PostgreSQL (@siblite/bus-postgres, PgBus) side by side with pg-boss, the most
// used PostgreSQL queue for Node, in the same run on the same server: send, claim + handle +
// ack with 1/4/16 workers, fan-out to 3 consumer groups; and the cost of the event log's
// sequencer (an advisory lock per publish), measured explicitly. Each run of each peer gets its
// own fresh schema (dropped afterwards), the same payloads, and the server's default durability
// (synchronous_commit on) for both. Without a server the suite is skipped, loudly.
import { createRequire } from 'node:module';
import { randomUUID } from 'node:crypto';
import { interleaved } from '../lib/measure.mjs';

const require = createRequire(import.meta.url);

export const name = 'postgres';
export const title = 'The bus on PostgreSQL, next to pg-boss';
export const workload =
  '*send*: N commands sent one after another, each its own autocommit statement (`bus.send(name, { i })` / `boss.send(name, { i })`). ' +
  '*consume, W workers*: N commands already queued (inserted in one transaction before the clock starts); time until W concurrent ' +
  'no-op handlers have emptied the queue. PgBus: `bus.listen(handlers, { concurrency: W })`; every handler is given `context.client`, ' +
  'a transaction that commits with the acknowledgement (exactly-once effects), begun with its first query (a no-op handler opens none, and its ' +
  'acknowledgement is batched with the others that finish together). pg-boss: its `work()` loop without ' +
  'the polling pause (`work()` waits `pollingIntervalSeconds`, at least 0.5 s, after every batch, which would cap it at 2W msg/s): ' +
  '`fetch(name, { batchSize: W })`, the W handlers at once, then `complete(name, ids)` not awaited, as `work()` does. ' +
  '*fan-out*: N events already published; time until 3 consumer groups (PgBus `subscribe`, concurrency 1 each) or 3 queues ' +
  'subscribed to the event (pg-boss `subscribe` + `publish`, one fetch-1/complete loop each) have handled all of them; ' +
  'figure: deliveries/s = 3N / time. *handler inserts a row*: as consume, with a handler that inserts one row into a table: ' +
  'PgBus through `context.client` (in the transaction that acknowledges: exactly once), pg-boss through a pool of the ' +
  'application (its own commit, then the completion: at least once), and PgBus the same way (the application\'s pool, at least once) for a like-for-like ratio. *sequencer*: `bus.publish` outside a transaction inserts the event and then runs the ' +
  'sequencer (which numbers committed events in commit order under a transaction-scoped advisory lock); the same publish ' +
  'through a client in autocommit skips the sequencer (the next claim or publish numbers it): the difference is its cost, ' +
  'with 1 publisher and with 8 concurrent ones. The server: the local PostgreSQL, default settings (fsync and ' +
  'synchronous_commit on), shared with the benchmark process on the same 2 cores.';
export const ratio = 'PgBus msg/s vs pg-boss msg/s for the same workload (goal: above 1 on every row).';
export const target = 'PgBus ahead of pg-boss on every row (ratio >= 1).';

const WORKERS = [1, 4, 16];
const GROUPS = ['g1', 'g2', 'g3'];
const PUBLISHERS = 8;
const EFFECT_WORKERS = 4;

/** The server (override with SIBLITE_PG_URL, as the tests do). */
const PG_URL = process.env.SIBLITE_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/test';

async function serverProblem(pg) {
  const c = new pg.Client({ connectionString: PG_URL, connectionTimeoutMillis: 3000 });
  try {
    await c.connect();
    const v = (await c.query('SHOW server_version')).rows[0].server_version;
    const sync = (await c.query('SHOW synchronous_commit')).rows[0].synchronous_commit;
    const fsync = (await c.query('SHOW fsync')).rows[0].fsync;
    return { problem: null, version: v, sync, fsync };
  } catch (e) {
    return { problem: `no PostgreSQL server at ${PG_URL}: ${e.message}` };
  } finally {
    await c.end().catch(() => {});
  }
}

export async function run({ quick, log }) {
  const notes = [];
  const versions = {};
  const checks = [];
  const failures = [];
  const rounds = quick ? 1 : 3;
  const n = quick ? 40 : 1_000;
  const nFan = quick ? 30 : 500;

  let pg;
  let PgBus;
  let PgBoss;
  try {
    pg = require('pg');
    ({ PgBus } = await import('@siblite/bus-postgres'));
    PgBoss = require('pg-boss');
    versions['pg-boss'] = require('pg-boss/package.json').version;
    versions.pg = require('pg/package.json').version;
  } catch (e) {
    throw new Error(`the postgres suite needs pg, pg-boss and a built @siblite/bus-postgres (pnpm run build): ${e.message}`);
  }
  const server = await serverProblem(pg);
  if (server.problem) {
    const msg = `SKIPPED: ${server.problem} (start one, or set SIBLITE_PG_URL; CI starts it in .ci/run)`;
    console.error(`\n!!!!! postgres suite ${msg}\n`);
    notes.push(msg);
    return { name, title, workload, ratio, target, rounds: 0, figures: [], ratios: [], notes, checks, versions };
  }
  versions.PostgreSQL = `${server.version} (fsync ${server.fsync}, synchronous_commit ${server.sync})`;
  versions['@siblite/bus-postgres'] = 'workspace';

  const admin = new pg.Client({ connectionString: PG_URL });
  await admin.connect();
  const schemas = new Set();
  const fresh = (prefix) => {
    const s = `bench_${prefix}_${randomUUID().replaceAll('-', '').slice(0, 12)}`;
    schemas.add(s);
    return s;
  };
  const drop = async (s) => {
    await admin.query(`DROP SCHEMA IF EXISTS "${s}" CASCADE`);
    schemas.delete(s);
  };
  const verify = (label, got, want) => {
    if (got !== want) failures.push(`${label}: handled ${got}, expected ${want}`);
  };
  const rate = (count, t0) => count / ((performance.now() - t0) / 1000);

  // ------------------------------------------------------------------ PgBus
  async function withBus(fn) {
    const schema = fresh('sb');
    const bus = await PgBus.open({ connection: PG_URL, schema, logger: null });
    try {
      return await fn(bus, schema);
    } finally {
      await bus.close({ timeout: 5_000 });
      await drop(schema);
    }
  }
  const inOneTx = async (bus, fn) => {
    const c = new pg.Client({ connectionString: PG_URL });
    await c.connect();
    try {
      await c.query('BEGIN');
      await fn(c);
      await c.query('COMMIT');
    } finally {
      await c.end();
    }
  };
  const busSend = () =>
    withBus(async (bus) => {
      const t0 = performance.now();
      for (let i = 0; i < n; i++) await bus.send('bench.job', { i });
      return rate(n, t0);
    });
  const busConsume = (workers) =>
    withBus(async (bus) => {
      await inOneTx(bus, async (c) => {
        for (let i = 0; i < n; i++) await bus.send('bench.job', { i }, { client: c });
      });
      let handled = 0;
      const t0 = performance.now();
      const w = bus.listen({ 'bench.job': async () => void handled++ }, { concurrency: workers });
      await w.drain();
      const r = rate(n, t0);
      await w.stop();
      verify(`PgBus consume x${workers}`, handled, n);
      return r;
    });
  // A handler with a database effect: one INSERT into a table of the application. PgBus writes it
  // through context.client, in the transaction that acknowledges (exactly once); pg-boss's
  // handler writes through a pool of the application and completes afterwards (at least once).
  const busEffect = (workers) =>
    withBus(async (bus, schema) => {
      await inOneTx(bus, async (c) => {
        await c.query(`CREATE TABLE "${schema}".effects (id text PRIMARY KEY)`);
        for (let i = 0; i < n; i++) await bus.send('bench.job', { i }, { client: c });
      });
      const t0 = performance.now();
      const w = bus.listen({ 'bench.job': async (m, { client }) => void (await client.query(`INSERT INTO "${schema}".effects (id) VALUES ($1)`, [m.id])) }, { concurrency: workers });
      await w.drain();
      const r = rate(n, t0);
      await w.stop();
      verify(`PgBus effects x${workers}`, Number((await admin.query(`SELECT count(*) AS n FROM "${schema}".effects`)).rows[0].n), n);
      return r;
    });
  // The same work as pg-boss's row below: the handler writes through the application's own pool
  // (its own commit, then the acknowledgement: at least once), for a like-for-like ratio.
  const busEffectAtLeastOnce = (workers) =>
    withBus(async (bus, schema) => {
      await inOneTx(bus, async (c) => {
        await c.query(`CREATE TABLE "${schema}".effects (id text PRIMARY KEY)`);
        for (let i = 0; i < n; i++) await bus.send('bench.job', { i }, { client: c });
      });
      const app = new pg.Pool({ connectionString: PG_URL, max: workers });
      try {
        const t0 = performance.now();
        const w = bus.listen({ 'bench.job': async (m) => void (await app.query(`INSERT INTO "${schema}".effects (id) VALUES ($1)`, [m.id])) }, { concurrency: workers });
        await w.drain();
        const r = rate(n, t0);
        await w.stop();
        verify(`PgBus at-least-once effects x${workers}`, Number((await admin.query(`SELECT count(*) AS n FROM "${schema}".effects`)).rows[0].n), n);
        return r;
      } finally {
        await app.end();
      }
    });
  const busFanout = () =>
    withBus(async (bus) => {
      await inOneTx(bus, async (c) => {
        for (let i = 0; i < nFan; i++) await bus.publish('bench.event', { i }, { client: c });
      });
      await bus.sequence();
      let handled = 0;
      const t0 = performance.now();
      const ws = GROUPS.map((g) => bus.subscribe(g, { 'bench.event': async () => void handled++ }));
      await Promise.all(ws.map((w) => w.drain()));
      const r = rate(nFan * GROUPS.length, t0);
      await Promise.all(ws.map((w) => w.stop()));
      verify('PgBus fan-out', handled, nFan * GROUPS.length);
      return r;
    });
  // The sequencer's cost: publish with it (outside a transaction) and without it (through a
  // client in autocommit: the event is numbered later, by the next claim or publish).
  const busPublish = (publishers, sequenced) =>
    withBus(async (bus) => {
      const per = Math.ceil(n / publishers);
      const clients = [];
      for (let p = 0; p < publishers; p++) {
        const c = new pg.Client({ connectionString: PG_URL });
        await c.connect();
        clients.push(c);
      }
      try {
        const t0 = performance.now();
        await Promise.all(
          clients.map(async (c, p) => {
            for (let i = 0; i < per; i++) await bus.publish('bench.event', { p, i }, sequenced ? {} : { client: c });
          }),
        );
        const r = rate(per * publishers, t0);
        await bus.sequence();
        const s = await bus.stats();
        verify(`PgBus publish x${publishers}${sequenced ? '' : ' (no sequencer)'}`, s.events, per * publishers);
        return r;
      } finally {
        await Promise.all(clients.map((c) => c.end()));
      }
    });

  // ------------------------------------------------------------------ pg-boss
  async function withBoss(fn) {
    const schema = fresh('boss');
    // supervise/schedule off: no maintenance or cron timers running during the measurement.
    const boss = new PgBoss({ connectionString: PG_URL, schema, supervise: false, schedule: false, max: 20 });
    boss.on('error', (e) => failures.push(`pg-boss error: ${e.message}`));
    await boss.start();
    try {
      await boss.createQueue('bench.job');
      return await fn(boss, schema);
    } finally {
      await boss.stop({ graceful: false, wait: true, timeout: 1_000 });
      await drop(schema);
    }
  }
  const bossSend = () =>
    withBoss(async (boss) => {
      const t0 = performance.now();
      for (let i = 0; i < n; i++) await boss.send('bench.job', { i });
      return rate(n, t0);
    });
  // pg-boss's work() loop (fetch a batch, run the handler, complete without awaiting), without
  // its polling pause between batches.
  async function bossDrain(boss, queue, batchSize, handle) {
    const completing = [];
    for (;;) {
      const jobs = await boss.fetch(queue, { batchSize });
      if (jobs.length === 0) break;
      await Promise.all(jobs.map(handle));
      completing.push(boss.complete(queue, jobs.map((j) => j.id)));
    }
    await Promise.all(completing);
  }
  const bossConsume = (workers) =>
    withBoss(async (boss) => {
      for (let i = 0; i < n; i += 500) await boss.insert(Array.from({ length: Math.min(500, n - i) }, (_, k) => ({ name: 'bench.job', data: { i: i + k } })));
      let handled = 0;
      const t0 = performance.now();
      await bossDrain(boss, 'bench.job', workers, async () => void handled++);
      const r = rate(n, t0);
      verify(`pg-boss consume x${workers}`, handled, n);
      return r;
    });
  const bossEffect = (workers) =>
    withBoss(async (boss, schema) => {
      await admin.query(`CREATE TABLE "${schema}".effects (id text PRIMARY KEY)`);
      const app = new pg.Pool({ connectionString: PG_URL, max: workers });
      try {
        for (let i = 0; i < n; i += 500) await boss.insert(Array.from({ length: Math.min(500, n - i) }, (_, k) => ({ name: 'bench.job', data: { i: i + k } })));
        const t0 = performance.now();
        await bossDrain(boss, 'bench.job', workers, async (job) => void (await app.query(`INSERT INTO "${schema}".effects (id) VALUES ($1)`, [job.id])));
        const r = rate(n, t0);
        verify(`pg-boss effects x${workers}`, Number((await admin.query(`SELECT count(*) AS n FROM "${schema}".effects`)).rows[0].n), n);
        return r;
      } finally {
        await app.end();
      }
    });
  const bossFanout = () =>
    withBoss(async (boss) => {
      for (const g of GROUPS) {
        await boss.createQueue(g);
        await boss.subscribe('bench.event', g);
      }
      for (let i = 0; i < nFan; i++) await boss.publish('bench.event', { i });
      let handled = 0;
      const t0 = performance.now();
      await Promise.all(GROUPS.map((g) => bossDrain(boss, g, 1, async () => void handled++)));
      const r = rate(nFan * GROUPS.length, t0);
      verify('pg-boss fan-out', handled, nFan * GROUPS.length);
      return r;
    });

  // ------------------------------------------------------------------ cases
  const cases = [
    { id: 'send:pg', group: 'send', peer: 'PgBus', run: busSend },
    { id: 'send:boss', group: 'send', peer: `pg-boss ${versions['pg-boss']}`, run: bossSend },
  ];
  for (const w of WORKERS) {
    const group = `claim + handle + ack, ${w} worker${w > 1 ? 's' : ''}`;
    cases.push({ id: `consume${w}:pg`, group, peer: 'PgBus', run: () => busConsume(w) });
    cases.push({ id: `consume${w}:boss`, group, peer: `pg-boss ${versions['pg-boss']}`, run: () => bossConsume(w) });
  }
  cases.push({ id: `effect${EFFECT_WORKERS}:pg`, group: `claim + handle + ack, ${EFFECT_WORKERS} workers, handler inserts a row`, peer: 'PgBus (through context.client: exactly once)', run: () => busEffect(EFFECT_WORKERS) });
  cases.push({ id: `effect${EFFECT_WORKERS}:pg1`, group: `claim + handle + ack, ${EFFECT_WORKERS} workers, handler inserts a row`, peer: "PgBus (through the application's pool: at least once, as pg-boss)", run: () => busEffectAtLeastOnce(EFFECT_WORKERS) });
  cases.push({ id: `effect${EFFECT_WORKERS}:boss`, group: `claim + handle + ack, ${EFFECT_WORKERS} workers, handler inserts a row`, peer: `pg-boss ${versions['pg-boss']} (through the application's pool: at least once)`, run: () => bossEffect(EFFECT_WORKERS) });
  cases.push({ id: 'fanout:pg', group: 'fan-out to 3 groups (deliveries/s)', peer: 'PgBus', run: busFanout });
  cases.push({ id: 'fanout:boss', group: 'fan-out to 3 groups (deliveries/s)', peer: `pg-boss ${versions['pg-boss']} (3 subscribed queues)`, run: bossFanout });
  cases.push({ id: 'publish1:seq', group: 'publish, 1 publisher', peer: 'PgBus (insert, then the sequencer)', run: () => busPublish(1, true) });
  cases.push({ id: 'publish1:noseq', group: 'publish, 1 publisher', peer: 'PgBus (insert only, numbered later)', run: () => busPublish(1, false) });
  cases.push({ id: `publish${PUBLISHERS}:seq`, group: `publish, ${PUBLISHERS} concurrent publishers`, peer: 'PgBus (insert, then the sequencer)', run: () => busPublish(PUBLISHERS, true) });
  cases.push({ id: `publish${PUBLISHERS}:noseq`, group: `publish, ${PUBLISHERS} concurrent publishers`, peer: 'PgBus (insert only, numbered later)', run: () => busPublish(PUBLISHERS, false) });

  log(`${cases.length} cases, N = ${n} (fan-out ${nFan} events), ${rounds} interleaved rounds${quick ? '' : ' (+1 warm-up round)'}; PostgreSQL ${server.version}`);
  let samples;
  try {
    samples = await interleaved({ rounds, warmup: quick ? 0 : 1, cases, log });
  } finally {
    for (const s of [...schemas]) await drop(s).catch(() => {});
    await admin.end();
  }
  const figures = cases.map((c) => ({ id: c.id, group: c.group, peer: c.peer, unit: 'msg/s', samples: samples.get(c.id) }));
  const ratios = [
    { label: 'PgBus / pg-boss, send', num: 'send:pg', den: 'send:boss', target: 1 },
    ...WORKERS.map((w) => ({ label: `PgBus / pg-boss, consume x${w}`, num: `consume${w}:pg`, den: `consume${w}:boss`, target: 1 })),
    { label: `PgBus / pg-boss, consume x${EFFECT_WORKERS}, handler inserts a row`, num: `effect${EFFECT_WORKERS}:pg`, den: `effect${EFFECT_WORKERS}:boss`, target: 1 },
    { label: `PgBus / pg-boss, consume x${EFFECT_WORKERS}, handler inserts a row, both at least once`, num: `effect${EFFECT_WORKERS}:pg1`, den: `effect${EFFECT_WORKERS}:boss`, target: 1 },
    { label: 'PgBus / pg-boss, fan-out to 3 groups', num: 'fanout:pg', den: 'fanout:boss', target: 1 },
    { label: 'publish with the sequencer / without, 1 publisher', num: 'publish1:seq', den: 'publish1:noseq' },
    { label: `publish with the sequencer / without, ${PUBLISHERS} publishers`, num: `publish${PUBLISHERS}:seq`, den: `publish${PUBLISHERS}:noseq` },
  ];
  notes.push(
    'pg-boss runs with `supervise: false, schedule: false` (no maintenance timers during the runs) and a pool of 20, like PgBus; ' +
      'its `work()` as shipped polls at least every 0.5 s between batches, so it is driven by its own fetch/complete calls instead.',
  );
  checks.push(
    failures.length
      ? { ok: false, message: `messages lost or duplicated: ${failures.slice(0, 3).join(' | ')}` }
      : { ok: true, message: `every run of every peer handled exactly N messages (${cases.length * (rounds + (quick ? 0 : 1))} runs)` },
  );
  for (const f of failures) console.error(`ERROR: ${f}`);
  return { name, title, workload, ratio, target, rounds, figures, ratios, notes, checks, versions };
}

export default { name, title, workload, ratio, target, run };
