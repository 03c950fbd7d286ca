// A randomized stress of handlers on a file: some never touch context.conn (acknowledged in the
// write batch, their slot reused while it commits), some write through it (after an await,
// too), some throw after writing on their first attempt; ordering keys; two workers with random
// concurrency started and stopped at random. Invariants: each command is done exactly once at
// the end; every effect written through context.conn is committed exactly once per command
// (never for a failed attempt); no command of a key starts before the earlier ones are done.
import { afterEach, describe, expect, it } from 'vitest';
import type { Worker } from '../src/index.js';
import { makeBus, sleep } from './helpers.js';

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0)) await c();
});

function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

describe('settling, lazy transactions and ordering keys under random stops (file)', () => {
  const from = Number(process.env.STRESS_FROM ?? 1);
  const seeds = Array.from({ length: Number(process.env.STRESS_SEEDS ?? 4) }, (_, i) => from + i);
  for (const seed of seeds) {
    it(`seed ${seed}`, async () => {
      const rnd = prng(seed);
      const f = await makeBus('file');
      cleanups.push(f.cleanup);
      const { bus, conn } = f;
      conn.exec('CREATE TABLE effects (id INTEGER PRIMARY KEY, msg TEXT NOT NULL)');
      const N = 150;
      const kinds = ['noop', 'write', 'lateWrite', 'throwAfterWrite', 'readOnly'] as const;
      const msgs = Array.from({ length: N }, (_, i) => ({
        name: kinds[Math.floor(rnd() * kinds.length)] as string,
        payload: i,
        id: `m${i}`,
        ...(rnd() < 0.6 ? { key: `k${Math.floor(rnd() * 5)}` } : {}),
      }));
      await bus.sendMany(msgs);
      const problems: string[] = [];
      const started = new Map<string, number>();
      const checkOrder = (m: { id: string; key: string | null }) => {
        started.set(m.id, (started.get(m.id) ?? 0) + 1);
        if (m.key === null) return;
        const n = conn.get<{ n: number }>(
          "SELECT count(*) AS n FROM bus_queue WHERE key = ? AND seq < (SELECT seq FROM bus_queue WHERE id = ?) AND state <> 'done'",
          [m.key, m.id],
        )!.n;
        if (n > 0) problems.push(`${m.id} started before ${n} earlier command(s) of ${m.key} were done`);
      };
      const pause = async () => {
        const r = rnd();
        if (r < 0.3) await null;
        else if (r < 0.5) await new Promise((res) => setImmediate(res));
        else if (r < 0.6) await sleep(Math.floor(rnd() * 4));
      };
      const handlers = {
        noop: async (m: never) => {
          checkOrder(m);
          await pause();
        },
        readOnly: async (m: never, ctx: { conn: { get(sql: string): unknown } }) => {
          checkOrder(m);
          await pause();
          ctx.conn.get('SELECT count(*) FROM effects');
        },
        write: async (m: { id: string }, ctx: { conn: { run(sql: string, p: unknown[]): unknown } }) => {
          checkOrder(m as never);
          ctx.conn.run('INSERT INTO effects (msg) VALUES (?)', [m.id]);
          await pause();
        },
        lateWrite: async (m: { id: string }, ctx: { conn: { run(sql: string, p: unknown[]): unknown } }) => {
          checkOrder(m as never);
          await pause();
          await pause();
          ctx.conn.run('INSERT INTO effects (msg) VALUES (?)', [m.id]);
        },
        throwAfterWrite: async (m: { id: string; attempts: number }, ctx: { conn: { run(sql: string, p: unknown[]): unknown } }) => {
          checkOrder(m as never);
          ctx.conn.run('INSERT INTO effects (msg) VALUES (?)', [m.id]);
          await pause();
          if (m.attempts === 1) throw new Error('first attempt fails after writing');
        },
      };
      const options = () => ({ concurrency: 1 + Math.floor(rnd() * 6), lease: 5_000, pollInterval: 20, backoff: 1, maxAttempts: 50 });
      const workers: (Worker | null)[] = [null, null];
      const remaining = () => conn.get<{ n: number }>("SELECT count(*) AS n FROM bus_queue WHERE state <> 'done'")!.n;
      const deadline = Date.now() + 60_000;
      while (remaining() > 0 && Date.now() < deadline) {
        const i = Math.floor(rnd() * 2);
        const w = workers[i];
        if (w === null || w === undefined) workers[i] = bus.listen(handlers as never, options());
        else if (rnd() < 0.5) {
          await w.stop(rnd() < 0.3 ? { timeout: Math.floor(rnd() * 3) } : {});
          workers[i] = null;
        }
        await sleep(Math.floor(rnd() * 30));
      }
      for (let i = 0; i < 2; i++) if (!workers[i]) workers[i] = bus.listen(handlers as never, options());
      while (remaining() > 0 && Date.now() < deadline) await sleep(20);
      for (const w of workers) await w?.stop();
      expect(remaining()).toBe(0);
      expect(problems).toEqual([]);
      const writers = msgs.filter((m) => m.name !== 'noop' && m.name !== 'readOnly').map((m) => m.id).sort();
      const effects = conn.all<{ msg: string; n: number }>('SELECT msg, count(*) AS n FROM effects GROUP BY msg ORDER BY msg');
      expect(effects.filter((e) => e.n !== 1)).toEqual([]);
      expect(effects.map((e) => e.msg)).toEqual(writers);
      expect(await bus.deadLetters()).toEqual([]);
    }, 90_000);
  }
});
