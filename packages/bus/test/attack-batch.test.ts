// Attacks on the bus's write batch on a file (src/sqlite/sends.ts, acks.ts, batch.ts).
import { afterEach, describe, expect, it } from 'vitest';
import { open, type Statement } from '@siblite/core';
import { makeBus, until } from './helpers.js';

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0)) await c();
});
async function fileBus() {
  const f = await makeBus('file');
  cleanups.push(f.cleanup);
  return f;
}

describe('sends of one turn (file): one refused by the database', () => {
  it('the sends before it are reported stored (they are), not as duplicates', async () => {
    const { bus, conn } = await fileBus();
    conn.exec("CREATE TRIGGER boom BEFORE INSERT ON bus_queue WHEN NEW.name = 'boom' BEGIN SELECT RAISE(ABORT, 'boom'); END");
    const results = await Promise.allSettled([
      bus.send('a', 1, { id: 'a1' }),
      bus.send('a', 2, { id: 'a2' }),
      bus.send('boom', 3, { id: 'b' }),
      bus.send('a', 4, { id: 'a4' }),
    ]);
    expect(results.map((r) => r.status)).toEqual(['fulfilled', 'fulfilled', 'rejected', 'fulfilled']);
    expect(conn.all('SELECT id FROM bus_queue ORDER BY seq').map((r) => r.id)).toEqual(['a1', 'a2', 'a4']);
    // Each stored command was stored by its own send: none of them is a duplicate.
    expect(results.map((r) => (r.status === 'fulfilled' ? r.value.stored : 'rejected'))).toEqual([true, true, 'rejected', true]);
  });

  it('with a full statement of 16 rows before it', async () => {
    const { bus, conn } = await fileBus();
    conn.exec("CREATE TRIGGER boom BEFORE INSERT ON bus_queue WHEN NEW.name = 'boom' BEGIN SELECT RAISE(ABORT, 'boom'); END");
    const results = await Promise.allSettled([
      ...Array.from({ length: 16 }, (_, i) => bus.send('a', i, { id: `a${i}` })),
      bus.send('boom', 0, { id: 'b' }),
    ]);
    expect(results.filter((r) => r.status === 'fulfilled' && r.value.stored)).toHaveLength(16);
  });

  it('duplicate ids in one turn: the first is stored, the second reported not stored', async () => {
    const { bus, conn } = await fileBus();
    const r = await Promise.all([bus.send('a', 1, { id: 'x' }), bus.send('a', 2, { id: 'x' }), bus.send('a', 3, { id: 'y' })]);
    expect(r.map((x) => x.stored)).toEqual([true, false, true]);
    expect(conn.all("SELECT payload FROM bus_queue WHERE id = 'x'").map((x) => String(x.payload))).toEqual(['1']);
    const m = await bus.sendMany([{ name: 'a', payload: 1, id: 'z' }, { name: 'a', payload: 2, id: 'z' }, { name: 'a', payload: 3, id: 'x' }]);
    expect(m.map((x) => x.stored)).toEqual([true, false, false]);
  });
});

describe('duplicate ids inside one 16-row statement and across statements (file)', () => {
  it.each(['send', 'sendMany'] as const)('%s: the first of each id is stored, the others reported not stored', async (how) => {
    const { bus, conn } = await fileBus();
    const ids = Array.from({ length: 40 }, (_, i) => `i${i}`);
    ids[15] = 'i0'; // same statement
    ids[16] = 'i3'; // next statement
    ids[39] = 'i20'; // a single-row statement after two full ones
    const msgs = ids.map((id, i) => ({ name: 'job', payload: i, id, key: i % 2 ? 'odd' : null }));
    const r =
      how === 'send'
        ? await Promise.all(msgs.map((m) => bus.send(m.name, m.payload, { id: m.id, ...(m.key ? { key: m.key } : {}) })))
        : await bus.sendMany(msgs.map((m) => ({ name: m.name, payload: m.payload, id: m.id, ...(m.key ? { key: m.key } : {}) })));
    expect(r.map((x, i) => (x.stored ? i : -1)).filter((i) => i < 0)).toHaveLength(3);
    expect([r[15]!.stored, r[16]!.stored, r[39]!.stored]).toEqual([false, false, false]);
    const rows = conn.all<{ id: string; payload: string; head: number }>('SELECT id, payload, head FROM bus_queue ORDER BY seq');
    expect(rows.map((x) => x.id)).toEqual(ids.filter((_, i) => ![15, 16, 39].includes(i)));
    expect(rows.find((x) => x.id === 'i0')!.payload).toBe('0');
    // Ordering key 'odd': exactly one head.
    expect(conn.get<{ n: number }>("SELECT count(*) AS n FROM bus_queue WHERE key = 'odd' AND head = 1")!.n).toBe(1);
  });
});

describe('settling handlers (file)', () => {
  it('the next command of an ordering key runs only after the previous one\'s ack committed', async () => {
    const { bus, conn } = await fileBus();
    conn.exec('CREATE TABLE effects (id TEXT PRIMARY KEY)');
    const keys = ['k1', 'k2', 'k3'];
    const order = new Map<string, string[]>();
    const msgs = Array.from({ length: 60 }, (_, i) => ({ name: i % 3 === 0 ? 'write' : 'noop', payload: i, key: keys[i % keys.length] as string, id: `m${i}` }));
    await bus.sendMany(msgs);
    const violations: string[] = [];
    const lastOf = new Map<string, string>();
    const check = (id: string, key: string) => {
      const prev = lastOf.get(key);
      if (prev) {
        const st = conn.get<{ state: string }>('SELECT state FROM bus_queue WHERE id = ?', [prev])!.state;
        if (st !== 'done') violations.push(`${id} ran while ${prev} was ${st}`);
      }
      lastOf.set(key, id);
      const l = order.get(key) ?? [];
      l.push(id);
      order.set(key, l);
    };
    const w = bus.listen(
      {
        noop: async (m) => {
          check(m.id, m.key as string);
          await null;
        },
        write: async (m, ctx) => {
          check(m.id, m.key as string);
          await new Promise((r) => setTimeout(r, 1));
          ctx.conn.run('INSERT INTO effects (id) VALUES (?)', [m.id]);
        },
      },
      { concurrency: 4, pollInterval: 1_000 },
    );
    await w.drain();
    await w.stop();
    expect(violations).toEqual([]);
    for (const k of keys) expect(order.get(k)).toEqual(msgs.filter((m) => m.key === k).map((m) => m.id));
    expect(conn.get<{ n: number }>('SELECT count(*) AS n FROM effects')!.n).toBe(20);
  });

  it('stop() at any moment: no handler runs after it resolves, each command handled once, effects once', async () => {
    for (let round = 0; round < 6; round++) {
      const { bus, conn } = await fileBus();
      conn.exec('CREATE TABLE effects (id TEXT PRIMARY KEY, n INT NOT NULL DEFAULT 1)');
      const N = 120;
      await bus.sendMany(Array.from({ length: N }, (_, i) => ({ name: i % 4 === 0 ? 'write' : 'noop', payload: i, id: `m${i}` })));
      const runs = new Map<string, number>();
      let running = 0;
      let afterStop = 0;
      let stopped = false;
      const body = async (id: string) => {
        running++;
        if (stopped) afterStop++;
        runs.set(id, (runs.get(id) ?? 0) + 1);
        await null;
        running--;
      };
      const start = () =>
        bus.listen(
          {
            noop: async (m) => body(m.id),
            write: async (m, ctx) => {
              await body(m.id);
              ctx.conn.run('INSERT INTO effects (id) VALUES (?) ON CONFLICT (id) DO UPDATE SET n = n + 1', [m.id]);
            },
          },
          { concurrency: 1 + (round % 4) * 2, pollInterval: 1_000 },
        );
      let w = start();
      await until(() => runs.size >= 10 + round * 13, 20_000);
      for (let i = round % 3; i > 0; i--) await new Promise<void>((r) => setImmediate(r));
      await w.stop();
      stopped = true;
      expect(running).toBe(0);
      await new Promise((r) => setTimeout(r, 20));
      expect(afterStop).toBe(0);
      stopped = false;
      expect(conn.get<{ n: number }>("SELECT count(*) AS n FROM bus_queue WHERE state = 'inflight'")!.n).toBe(0);
      w = start();
      await w.drain();
      await w.stop();
      expect(conn.get<{ n: number }>("SELECT count(*) AS n FROM bus_queue WHERE state = 'done'")!.n).toBe(N);
      expect([...runs.values()].filter((n) => n !== 1)).toEqual([]);
      expect(conn.get<{ n: number }>('SELECT count(*) AS n FROM effects WHERE n <> 1')!.n).toBe(0);
      expect(conn.get<{ n: number }>('SELECT count(*) AS n FROM effects')!.n).toBe(N / 4);
    }
  }, 120_000);

  it('the same delivery acknowledged twice in one turn: once, as without the batch', async () => {
    const { bus } = await fileBus();
    await bus.send('job', 1);
    const d = (await bus.receive({ lease: 60_000 }))!;
    const r = await Promise.allSettled([d.ack(), d.ack()]);
    const mem = await makeBus('memory');
    cleanups.push(mem.cleanup);
    await mem.bus.send('job', 1);
    const dm = (await mem.bus.receive({ lease: 60_000 }))!;
    const rm = await Promise.allSettled([dm.ack(), dm.ack()]);
    expect(r.map((x) => x.status)).toEqual(rm.map((x) => x.status));
  });
});

describe('a write batch that failed before its gathered writes ran (file)', () => {
  it('later sends and acks are still written, not failed with the old error', async () => {
    const f = await makeBus('file', { retry: { retries: 1, minTimeout: 1, maxTimeout: 2 } } as never);
    cleanups.push(f.cleanup);
    const { bus, path } = f;
    await bus.send('job', 0, { id: 'first' });
    // Another engine (as another process would) holds the file's write lock past the bus's retries.
    const other = open(path, { busyTimeout: 0 } as never);
    other.exec('BEGIN IMMEDIATE');
    other.run("UPDATE bus_queue SET priority = priority WHERE id = 'none'");
    let other2 = other;
    const failed = await Promise.allSettled([bus.send('job', 1, { id: 'blocked' })]);
    other.exec('COMMIT');
    other.close();
    expect(failed[0]!.status).toBe('rejected');
    // The lock is gone: a new send must be written.
    const later = await Promise.allSettled([bus.send('job', 2, { id: 'later' })]);
    expect(later[0]).toEqual({ status: 'fulfilled', value: { id: 'later', stored: true } });
    // And acks: a claim's ack after a failed batch of acks.
    const d1 = (await bus.receive({ lease: 60_000 }))!;
    other2 = open(path);
    other2.exec('BEGIN IMMEDIATE');
    other2.run("UPDATE bus_queue SET priority = priority WHERE id = 'none'");
    const ackFailed = await Promise.allSettled([d1.ack()]);
    other2.exec('COMMIT');
    other2.close();
    expect(ackFailed[0]!.status).toBe('rejected');
    const d2 = (await bus.receive({ lease: 60_000 }))!;
    expect(await Promise.allSettled([d2.ack()])).toEqual([{ status: 'fulfilled', value: undefined }]);
  }, 60_000);
});

describe('a statement prepared on context.conn and reused by a later handler call (file)', () => {
  it('cannot write outside that call\'s transaction: effects stay exactly once', async () => {
    const { bus, conn } = await fileBus();
    conn.exec('CREATE TABLE effects (id INTEGER PRIMARY KEY, msg TEXT NOT NULL)');
    await bus.sendMany([{ name: 'job', payload: 0, id: 'a' }, { name: 'job', payload: 1, id: 'b' }]);
    let stmt: Statement | undefined;
    const errors: unknown[] = [];
    const w = bus.listen(
      {
        job: async (m, ctx) => {
          try {
            stmt ??= ctx.conn.prepare('INSERT INTO effects (msg) VALUES (?)');
            stmt.run([m.id]);
          } catch (e) {
            errors.push(e);
            throw e;
          }
          if (m.id === 'b' && m.attempts === 1) throw new Error('fails after writing, first attempt');
        },
      },
      { concurrency: 1, pollInterval: 20, backoff: 1 },
    );
    await w.drain();
    await w.stop();
    // Either the reused statement is refused (the handler fails and runs again), or it wrote in
    // the call's own transaction: never an effect committed by a failed attempt.
    const effects = conn.all<{ msg: string; n: number }>('SELECT msg, count(*) AS n FROM effects GROUP BY msg ORDER BY msg');
    expect(effects.filter((e) => e.n !== 1)).toEqual([]);
  });
});

describe('context.conn used after the handler call returned (file)', () => {
  it('is refused, instead of opening a transaction nobody commits', async () => {
    const { bus, conn } = await fileBus();
    conn.exec('CREATE TABLE effects (id INTEGER PRIMARY KEY, msg TEXT NOT NULL)');
    await bus.sendMany([{ name: 'late', payload: 0, id: 'a' }, { name: 'early', payload: 1, id: 'b' }]);
    const outcomes: string[] = [];
    let later: Promise<void> | undefined;
    const w = bus.listen(
      {
        // Reads context.conn only after returning: in the next turn (while its acknowledgement
        // waits in the write batch) and later.
        late: async (m, ctx) => {
          setImmediate(() => {
            try {
              ctx.conn.get('SELECT 1');
              outcomes.push('ran');
            } catch (e) {
              outcomes.push((e as { code?: string }).code ?? String(e));
            }
          });
          later = new Promise<void>((resolve) => setTimeout(resolve, 20)).then(() => {
            try {
              ctx.conn.run('INSERT INTO effects (msg) VALUES (?)', [m.id]);
              outcomes.push('ran');
            } catch (e) {
              outcomes.push((e as { code?: string }).code ?? String(e));
            }
          });
        },
        // Took context.conn while running, used it after returning.
        early: async (m, ctx) => {
          const c = ctx.conn;
          c.get('SELECT 1');
          setTimeout(() => {
            try {
              c.run('INSERT INTO effects (msg) VALUES (?)', [m.id]);
              outcomes.push('ran');
            } catch (e) {
              outcomes.push((e as { code?: string }).code ?? String(e));
            }
          }, 20);
        },
      },
      { concurrency: 1, pollInterval: 20 },
    );
    await w.drain();
    await later;
    await new Promise((r) => setTimeout(r, 60));
    await w.stop();
    expect(outcomes).toEqual(['SIBLITE_BUS_HANDLER_TRANSACTION', 'SIBLITE_BUS_HANDLER_TRANSACTION', 'SIBLITE_BUS_HANDLER_TRANSACTION']);
    expect(conn.get<{ n: number }>('SELECT count(*) AS n FROM effects')!.n).toBe(0);
  });
});
