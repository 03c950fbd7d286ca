/**
 * PostgreSQL-specific guarantees: the commit-ordered log under out-of-order commits, the
 * outbox inside the caller's transaction, exactly-once effects through `context.client`,
 * and idempotent schema creation by concurrent openers.
 */
import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { PgBus } from '../src/index.js';
import { PG_URL, dropSchema, freshSchema, makePgBus, serverProblem } from './helpers.js';

const problem = await serverProblem();
if (problem !== null) console.warn(`[siblite/bus-postgres] SKIPPING the PostgreSQL tests: ${problem}`);
const suite = problem === null ? describe : describe.skip;

async function until(cond: () => boolean | Promise<boolean>, what: string, timeoutMs = 30_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

suite(`PgBus on PostgreSQL${problem === null ? '' : ` (skipped: ${problem})`}`, () => {
  it('out-of-order commits: a group sees every event once, in commit order, none skipped', async () => {
    const { bus, cleanup } = await makePgBus();
    const clients: pg.Client[] = [];
    try {
      const seen: string[] = [];
      const w = bus.subscribe('g', { e: (m) => void seen.push(m.payload as string) }, { pollInterval: 10 });
      // 12 publishers open transactions and publish; they commit in a shuffled order while
      // autocommit publishes keep arriving, so sequence values are far from commit order.
      const N = 12;
      for (let i = 0; i < N; i++) {
        const c = new pg.Client({ connectionString: PG_URL });
        await c.connect();
        clients.push(c);
        await c.query('BEGIN');
        await bus.publish('e', `tx-${i}`, { client: c });
      }
      const commitOrder: string[] = [];
      const order = [...Array(N).keys()].sort(() => Math.random() - 0.5);
      for (const [k, i] of order.entries()) {
        await bus.publish('e', `auto-${k}`);
        commitOrder.push(`auto-${k}`);
        await clients[i]!.query('COMMIT');
        commitOrder.push(`tx-${i}`);
        await new Promise((r) => setTimeout(r, 5)); // let the group pass the positions handed out so far
      }
      await until(() => seen.length >= 2 * N, 'every event');
      await w.drain();
      await w.stop();
      expect(seen.length).toBe(2 * N);
      expect(new Set(seen).size).toBe(2 * N);
      expect(seen).toEqual(commitOrder);
      const stats = await bus.stats();
      expect(stats.groups.g?.lag).toBe(0);
      expect(stats.events).toBe(2 * N);
    } finally {
      await Promise.all(clients.map((c) => c.end().catch(() => {})));
      await cleanup();
    }
  });

  it('many concurrent publishers with transactions held open: every event once per group', async () => {
    const { bus, cleanup } = await makePgBus();
    try {
      const seen = new Map<string, number>();
      const w = bus.subscribe('g', { e: (m) => void seen.set(m.payload as string, (seen.get(m.payload as string) ?? 0) + 1) }, { pollInterval: 10, concurrency: 8 });
      const P = 8;
      const per = 15;
      await Promise.all(
        [...Array(P).keys()].map(async (p) => {
          const c = new pg.Client({ connectionString: PG_URL });
          await c.connect();
          try {
            for (let i = 0; i < per; i++) {
              await c.query('BEGIN');
              await bus.publish('e', `${p}:${i}`, { client: c });
              await new Promise((r) => setTimeout(r, Math.random() * 8)); // held open while others commit
              await c.query('COMMIT');
            }
          } finally {
            await c.end();
          }
        }),
      );
      await until(() => seen.size === P * per, 'every event');
      await w.drain();
      await w.stop();
      expect([...seen.values()].every((n) => n === 1)).toBe(true);
      // Per publisher, commit order is its own order: the group saw each publisher's events in order.
      expect((await bus.stats()).groups.g?.lag).toBe(0);
    } finally {
      await cleanup();
    }
  });

  it('outbox: a message sent in a rolled-back transaction never exists; a committed one is handled', async () => {
    const { bus, cleanup } = await makePgBus();
    const c = new pg.Client({ connectionString: PG_URL });
    await c.connect();
    try {
      await c.query('BEGIN');
      await bus.send('job', 'rolled-back', { client: c, id: 'a' });
      await bus.publish('evt', 'rolled-back', { client: c, id: 'ea' });
      await c.query('ROLLBACK');
      await c.query('BEGIN');
      await bus.send('job', 'committed', { client: c, id: 'b' });
      await c.query('COMMIT');
      expect(await bus.get('a')).toBeUndefined();
      expect(await bus.get('ea', { kind: 'event' })).toBeUndefined();
      const handled: string[] = [];
      const w = bus.listen({ job: (m) => void handled.push(m.payload as string) }, { pollInterval: 10 });
      await until(() => handled.length === 1, 'handled');
      await w.stop();
      expect(handled).toEqual(['committed']);
    } finally {
      await c.end();
      await cleanup();
    }
  });

  it('delivery.ack({ client }) counts only if the caller commits; a siblite conn is refused', async () => {
    const { bus, cleanup } = await makePgBus();
    const c = new pg.Client({ connectionString: PG_URL });
    await c.connect();
    try {
      await bus.send('job', 1, { id: 'j' });
      const d = await bus.receive({ lease: 60_000 });
      await expect(d!.ack({ conn: {} as never })).rejects.toThrow(/client/);
      await c.query('BEGIN');
      await d!.ack({ client: c });
      await c.query('ROLLBACK');
      expect((await bus.get('j'))?.state).toBe('inflight');
      expect(await bus.receive({ lease: 60_000 })).toBeUndefined(); // still leased: redelivered after the lease
    } finally {
      await c.end();
      await cleanup();
    }
  });

  it('exactly-once effects: writes through context.client commit with the ack, or not at all', async () => {
    const { bus, schema, cleanup } = await makePgBus();
    try {
      const admin = new pg.Client({ connectionString: PG_URL });
      await admin.connect();
      await admin.query(`CREATE TABLE "${schema}".effects (id text PRIMARY KEY)`);
      let failFirst = true;
      const w = bus.listen(
        {
          job: async (m, { client }) => {
            await client.query(`INSERT INTO "${schema}".effects (id) VALUES ($1)`, [m.id]);
            if (failFirst && m.id === 'x1') {
              failFirst = false;
              throw new Error('after the write: must roll back');
            }
          },
        },
        { pollInterval: 10, backoff: 1, concurrency: 4 },
      );
      for (let i = 0; i < 20; i++) await bus.send('job', i, { id: `x${i}` });
      await until(() => w.counters.handled === 20, 'all handled');
      await w.stop();
      expect(w.counters.retried).toBe(1);
      const rows = await admin.query(`SELECT count(*)::int AS n FROM "${schema}".effects`);
      expect(rows.rows[0].n).toBe(20);
      await admin.end();
    } finally {
      await cleanup();
    }
  });

  it('the BEGIN of a handler transaction rides with its first query: queries fired together or left running keep exactly-once effects', async () => {
    const { bus, schema, cleanup } = await makePgBus();
    try {
      const admin = new pg.Client({ connectionString: PG_URL });
      await admin.connect();
      await admin.query(`CREATE TABLE "${schema}".effects (id text PRIMARY KEY)`);
      const insert = (client: pg.PoolClient, id: string) => client.query(`INSERT INTO "${schema}".effects (id) VALUES ($1)`, [id]);
      const seenInTx: number[] = [];
      const failed = new Set<string>();
      const w = bus.listen(
        {
          // two statements written back to back, without waiting for the first
          together: async (m, { client }) => {
            const a = insert(client, `${m.id}:a`);
            const b = insert(client, `${m.id}:b`);
            await Promise.all([a, b]);
            const r = await client.query(`SELECT count(*)::int AS n FROM "${schema}".effects WHERE id LIKE $1`, [`${m.id}:%`]);
            seenInTx.push(r.rows[0].n);
            if (!failed.has(m.id)) {
              failed.add(m.id);
              throw new Error('after both writes: must roll back both');
            }
          },
          // a query still running when the handler returns: the acknowledgement follows it
          leftRunning: async (m, { client }) => {
            void insert(client, m.id).then(() => client.query('SELECT pg_sleep(0.02)'));
          },
        },
        { pollInterval: 10, backoff: 1, concurrency: 4 },
      );
      for (let i = 0; i < 10; i++) await bus.send('together', i, { id: `t${i}` });
      for (let i = 0; i < 10; i++) await bus.send('leftRunning', i, { id: `l${i}` });
      await until(() => w.counters.handled === 20, 'all handled');
      await w.stop();
      expect(w.counters.retried).toBe(10);
      expect(seenInTx).toEqual(Array(20).fill(2));
      const rows = await admin.query(`SELECT id FROM "${schema}".effects ORDER BY id`);
      expect(rows.rows.length).toBe(30);
      expect(rows.rows.filter((r) => r.id.startsWith('l')).length).toBe(10);
      await admin.end();
    } finally {
      await cleanup();
    }
  });

  it('a handler cannot end the bus transaction through context.client', async () => {
    const { bus, cleanup } = await makePgBus();
    try {
      const w = bus.listen({ sneaky: async (_m, { client }) => void (await client.query('COMMIT')) }, { pollInterval: 10, maxAttempts: 1 });
      await bus.send('sneaky', 1, { id: 's' });
      await until(() => w.counters.deadLettered === 1, 'dead-lettered');
      await w.stop();
      const [d] = await bus.deadLetters();
      expect(d?.reason).toMatch(/ended the bus transaction/);
    } finally {
      await cleanup();
    }
  });

  it('NOTIFY wakes idle workers for outbox commits, also after the LISTEN connection was killed', async () => {
    const { bus, cleanup } = await makePgBus();
    const c = new pg.Client({ connectionString: PG_URL });
    await c.connect();
    try {
      const handled: number[] = [];
      // A poll interval far beyond the test: only a NOTIFY can wake this worker.
      const w = bus.listen({ job: (m) => void handled.push(m.payload as number) }, { pollInterval: 600_000 });
      await w.drain();
      const sendInTx = async (n: number) => {
        await c.query('BEGIN');
        await bus.send('job', n, { client: c });
        await c.query('COMMIT');
      };
      await sendInTx(1);
      await until(() => handled.length === 1, 'woken by NOTIFY');
      const channel = `sb_${(bus as unknown as { instance: string }).instance}`;
      const killed = await c.query(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = $1`, [`LISTEN ${channel}`]);
      expect(killed.rowCount).toBe(1);
      await until(async () => (await c.query(`SELECT 1 FROM pg_stat_activity WHERE query = $1`, [`LISTEN ${channel}`])).rowCount === 1, 'LISTEN again');
      await sendInTx(2);
      await until(() => handled.length === 2, 'woken by NOTIFY after the reconnect');
      await w.stop();
    } finally {
      await c.end();
      await cleanup();
    }
  });

  it('workers that would hold every pool client are refused, not left to stall', async () => {
    const { bus, cleanup } = await makePgBus();
    try {
      const a = bus.listen({ x: () => {} }, { concurrency: 10 });
      expect(() => bus.listen({ x: () => {} }, { concurrency: 9 })).toThrow(/pool/);
      await a.stop();
      const b = bus.listen({ x: () => {} }, { concurrency: 18 });
      await b.stop();
    } finally {
      await cleanup();
    }
  });

  it('claims commit without waiting for the disk, for their own transaction only: acks and sends on the same connections still wait', async () => {
    const schema = freshSchema();
    const bus = await PgBus.open({ connection: { connectionString: PG_URL, max: 3 }, schema, logger: null });
    try {
      for (let i = 0; i < 6; i++) await bus.send('c', i);
      for (let i = 0; i < 3; i++) await bus.publish('e', i);
      for (let i = 0; i < 6; i++) await (await bus.receive())!.ack();
      for (let i = 0; i < 3; i++) await (await bus.receive({ group: 'g' }))!.ack();
      // every pooled connection ran claims; none kept synchronous_commit off afterwards
      const pool = (bus as unknown as { pool: pg.Pool }).pool;
      const clients = await Promise.all([pool.connect(), pool.connect(), pool.connect()]);
      try {
        for (const c of clients) expect((await c.query('SHOW synchronous_commit')).rows[0].synchronous_commit).toBe('on');
      } finally {
        for (const c of clients) c.release();
      }
    } finally {
      await bus.close();
      await dropSchema(schema);
    }
  });

  it('with clients to spare, a worker claims for a slot while its handler transaction commits; without, the slot waits', async () => {
    for (const spare of [true, false]) {
      const schema = freshSchema();
      const S = `"${schema}"`;
      // max 4: one slot leaves one client to spare for a commit; max 3 leaves none.
      const bus = await PgBus.open({ connection: { connectionString: PG_URL, max: spare ? 4 : 3 }, schema, logger: null });
      const admin = new pg.Client({ connectionString: PG_URL });
      await admin.connect();
      try {
        await admin.query(`CREATE TABLE ${S}.effects (id text PRIMARY KEY)`);
        await bus.send('job', 'a', { id: 'a' });
        await bus.send('job', 'b', { id: 'b' });
        const handled: string[] = [];
        let locked!: () => void;
        const lockTaken = new Promise<void>((r) => (locked = r));
        const w = bus.listen(
          {
            job: async (m, { client }) => {
              await client.query(`INSERT INTO ${S}.effects (id) VALUES ($1)`, [m.id]);
              if (m.id === 'a') {
                // Hold the row of 'a', so that its acknowledgement (and so its commit) waits.
                await admin.query('BEGIN');
                await admin.query(`SELECT 1 FROM ${S}.queue WHERE id = 'a' FOR UPDATE`);
                locked();
              }
              handled.push(m.id);
            },
          },
          { concurrency: 1, pollInterval: 10 },
        );
        await lockTaken;
        if (spare) {
          await until(() => handled.includes('b'), "'b' handled while the commit of 'a' waits", 10_000);
        } else {
          await new Promise((r) => setTimeout(r, 300));
          expect(handled).toEqual(['a']);
        }
        await admin.query('COMMIT');
        await w.drain();
        await w.stop();
        expect(handled.sort()).toEqual(['a', 'b']);
        expect((await admin.query(`SELECT id FROM ${S}.effects ORDER BY id`)).rows.map((r) => r.id)).toEqual(['a', 'b']);
        expect((await bus.get('a'))?.state).toBe('done');
      } finally {
        await admin.query('ROLLBACK').catch(() => {});
        await admin.end();
        await bus.close();
        await dropSchema(schema);
      }
    }
  });

  it('a command claim reads the head of a fresh (unanalyzed) backlog, not all of it; a version 2 bus is migrated to it', async () => {
    const schema = freshSchema();
    const S = `"${schema}"`;
    const admin = new pg.Client({ connectionString: PG_URL });
    await admin.connect();
    let bus = await PgBus.open({ connection: PG_URL, schema, logger: null });
    try {
      // A bus written by schema version 2 has no claim_commands function yet.
      await admin.query(`DROP FUNCTION ${S}.claim_commands`);
      await admin.query(`UPDATE ${S}.meta SET value = '2' WHERE key = 'schema_version'`);
      await bus.close();
      bus = await PgBus.open({ connection: PG_URL, schema, logger: null });
      expect((await admin.query(`SELECT value FROM ${S}.meta WHERE key = 'schema_version'`)).rows[0].value).toBe('3');
      await bus.sendMany(Array.from({ length: 3000 }, (_, i) => (i % 2 === 0 ? { name: 'job', payload: i } : { name: 'job', payload: i, key: `k${i % 7}` })));
      await bus.pause({ name: 'other' });
      // Rows of the queue table the claim reads, from this backend's statistics for its transaction.
      const read = async () => {
        const r = await admin.query(`SELECT seq_tup_read + coalesce(idx_tup_fetch, 0) AS n FROM pg_stat_xact_user_tables WHERE relid = '${S}.queue'::regclass`);
        return Number(r.rows[0]?.n ?? 0);
      };
      await admin.query('BEGIN');
      const before = await read();
      const claimed = await admin.query(`SELECT r_seq FROM ${S}.claim_commands('{job}', 4, 'token', 30000) ORDER BY r_seq`);
      const rows = (await read()) - before;
      expect((await admin.query('SHOW synchronous_commit')).rows[0].synchronous_commit).toBe('off');
      await admin.query('ROLLBACK');
      expect(claimed.rows.map((r) => Number(r.r_seq))).toEqual([1, 2, 3, 4]);
      expect(rows).toBeLessThan(100);
      // The claim still honours pauses and ordering keys.
      await bus.pause({ name: 'job' });
      expect(await bus.receive()).toBeUndefined();
      await bus.resume({ name: 'job' });
      const got: number[] = [];
      for (let i = 0; i < 4; i++) got.push((await bus.receive())!.message.payload as number);
      expect(got).toEqual([0, 1, 2, 3]);
    } finally {
      await bus.close();
      await admin.end();
      await dropSchema(schema);
    }
  });

  it('concurrent opens of one schema create it once; a bad schema name is refused', async () => {
    const schema = freshSchema();
    try {
      const buses = await Promise.all([1, 2, 3, 4].map(() => PgBus.open({ connection: PG_URL, schema, logger: null })));
      await buses[0]!.send('x', 1, { id: 'one' });
      expect((await buses[3]!.get('one'))?.state).toBe('ready');
      await Promise.all(buses.map((b) => b.close()));
      await expect(PgBus.open({ connection: PG_URL, schema: 'a'.repeat(64) })).rejects.toThrow(/63 bytes/);
      await expect(PgBus.open({ connection: PG_URL, schema: 'pg_x' })).rejects.toThrow(/pg_/);
    } finally {
      await dropSchema(schema);
    }
  });
});
