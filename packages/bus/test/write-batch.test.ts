// The bus's write batch on a file (src/sqlite/batch.ts): the bus's own writes of one turn of the
// event loop share one transaction and one commit; one failing write fails alone; sendMany is all
// or nothing inside it; handlers that wrote through context.conn still commit with their ack.
import fs from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { StaleClaimError, ValidationError } from '../src/index.js';
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

/** Counts the fsyncs of this process while `fn` runs (the engine's VFS calls fs.fsyncSync). */
async function countFsyncs(fn: () => Promise<unknown>): Promise<number> {
  let n = 0;
  const real = fs.fsyncSync;
  fs.fsyncSync = (fd: number) => {
    n++;
    return real(fd);
  };
  try {
    await fn();
  } finally {
    fs.fsyncSync = real;
  }
  return n;
}

describe('bus write batch (file)', () => {
  it('64 concurrent sends share one commit; each resolves stored, a repeated id stored once', async () => {
    const { bus } = await fileBus();
    let results: { id: string; stored: boolean }[] = [];
    const fsyncs = await countFsyncs(async () => {
      results = await Promise.all([
        ...Array.from({ length: 63 }, (_, i) => bus.send('job', { i })),
        bus.send('job', { dup: 1 }, { id: 'same' }),
        bus.send('job', { dup: 2 }, { id: 'same' }),
      ]);
    });
    expect(results.filter((r) => r.stored)).toHaveLength(64);
    expect(results.slice(-2).map((r) => r.stored)).toEqual([true, false]);
    expect((await bus.stats()).queue.job).toMatchObject({ ready: 64 });
    // One commit (3-4 fsyncs), not one per message.
    expect(fsyncs).toBeLessThanOrEqual(8);
  });

  it('a stale ack fails alone; the acks beside it in the batch commit', async () => {
    const { bus } = await fileBus();
    await bus.sendMany(Array.from({ length: 4 }, (_, i) => ({ name: 'job', payload: i })));
    const ds = [];
    for (let i = 0; i < 4; i++) ds.push((await bus.receive({ lease: 60_000 }))!);
    await ds[1]!.ack(); // settled now: acking it again in the batch is refused
    const results = await Promise.allSettled([ds[0]!.ack(), ds[1]!.ack(), ds[2]!.ack(), ds[3]!.ack()]);
    expect(results.map((r) => r.status)).toEqual(['fulfilled', 'rejected', 'fulfilled', 'fulfilled']);
    expect((results[1] as PromiseRejectedResult).reason).toBeInstanceOf(StaleClaimError);
    expect(await bus.receive()).toBeUndefined();
    expect((await bus.get(ds[3]!.message.id))?.state).toBe('done');
  });

  it('concurrent sendMany calls share the batch, each all or nothing: one failing in the database writes nothing', async () => {
    const { bus, conn } = await fileBus();
    // A database-side failure on the second message of one batch (after its first was inserted).
    conn.exec("CREATE TRIGGER boom BEFORE INSERT ON bus_queue WHEN NEW.name = 'boom' BEGIN SELECT RAISE(ABORT, 'boom'); END");
    const [a, b, c, d] = await Promise.allSettled([
      bus.sendMany([{ name: 'a', payload: 1 }, { name: 'a', payload: 2 }]),
      bus.sendMany([{ name: 'b', payload: 1 }, { name: 'boom', payload: 2 }]),
      bus.sendMany([{ name: 'c', payload: 1 }]),
      bus.sendMany([{ name: 'd', payload: 1 }, { name: 'd d', payload: 2 }]),
    ]);
    expect([a.status, b.status, c.status, d.status]).toEqual(['fulfilled', 'rejected', 'fulfilled', 'rejected']);
    expect(String((b as PromiseRejectedResult).reason)).toMatch(/boom/);
    expect((d as PromiseRejectedResult).reason).toBeInstanceOf(ValidationError);
    const q = (await bus.stats()).queue;
    expect(Object.keys(q).sort()).toEqual(['a', 'c']); // nothing of b's batch, not even its first message
    expect(q.a).toMatchObject({ ready: 2 });
  });

  it('handlers that write through context.conn commit with their ack; no-op handlers ack in the batch', async () => {
    const { bus, conn } = await fileBus();
    conn.exec('CREATE TABLE effects (id TEXT PRIMARY KEY)');
    await bus.sendMany(Array.from({ length: 40 }, (_, i) => ({ name: i % 2 ? 'write' : 'noop', payload: i })));
    let noop = 0;
    const w = bus.listen(
      {
        write: async (m, { conn: tx }) => {
          await new Promise((r) => setTimeout(r, 1));
          tx.run('INSERT INTO effects (id) VALUES (?)', [m.id]);
        },
        noop: async () => {
          noop++;
        },
      },
      { concurrency: 16, pollInterval: 20 },
    );
    await until(() => noop === 20 && conn.get<{ n: number }>('SELECT count(*) AS n FROM effects')!.n === 20);
    await w.drain();
    await w.stop();
    expect(w.counters.handled).toBe(40);
    for (const q of Object.values((await bus.stats()).queue)) expect(q).toMatchObject({ ready: 0, inFlight: 0 });
    expect(await bus.receive()).toBeUndefined();
  });
});

// A listen worker's next claims ride on its acknowledgements' commit (src/sqlite/prefetch.ts).
describe('claims share the acks commit (file)', () => {
  const inflight = (conn: { get<T>(sql: string): T | undefined }) =>
    conn.get<{ n: number }>("SELECT count(*) AS n FROM bus_queue WHERE state = 'inflight'")!.n;

  it('16 no-op handlers: each command handled once, about one commit per round instead of two', async () => {
    const { bus, conn } = await fileBus();
    const N = 320;
    await bus.sendMany(Array.from({ length: N }, (_, i) => ({ name: 'job', payload: i })));
    const seen = new Map<number, number>();
    const fsyncs = await countFsyncs(async () => {
      const w = bus.listen({ job: async (m) => void seen.set(m.payload as number, (seen.get(m.payload as number) ?? 0) + 1) }, { concurrency: 16, pollInterval: 1_000 });
      await w.drain();
      await w.stop();
      expect(w.counters).toMatchObject({ handled: N, stale: 0 });
    });
    expect(seen.size).toBe(N);
    expect([...seen.values()].every((n) => n === 1)).toBe(true);
    expect(conn.get<{ n: number }>("SELECT count(*) AS n FROM bus_queue WHERE state = 'done' AND attempts = 1")!.n).toBe(N);
    // A durable commit costs 3-4 fsyncs. A claim commit and an ack commit per round of 16 would
    // be 40 commits (160 fsyncs measured); one shared commit per round of 16 about 21 (84);
    // rounds growing to 144 (slots reused while acks commit, claims doubling) about 6 (24).
    expect(fsyncs).toBeLessThanOrEqual(48);
  });

  it('a stale ack in the batch fails alone; the claim riding on that commit still holds', async () => {
    const { bus, conn } = await fileBus();
    const N = 64;
    await bus.sendMany(Array.from({ length: N }, (_, i) => ({ name: 'job', payload: i })));
    const handled: number[] = [];
    const w = bus.listen(
      {
        job: async (m) => {
          // Another worker took message 5 meanwhile (its lease ran out): this ack is stale.
          if (m.payload === 5) conn.run("UPDATE bus_queue SET token = 'other' WHERE id = ?", [m.id]);
          handled.push(m.payload as number);
        },
      },
      { concurrency: 8, pollInterval: 1_000 },
    );
    await w.drain();
    await w.stop();
    expect(w.counters).toMatchObject({ handled: N - 1, stale: 1 });
    expect(new Set(handled).size).toBe(N);
    expect(conn.get<{ n: number }>("SELECT count(*) AS n FROM bus_queue WHERE state = 'done'")!.n).toBe(N - 1);
    expect(conn.get<{ token: string }>("SELECT token FROM bus_queue WHERE state = 'inflight'")!.token).toBe('other');
  });

  it('a buffered claim older than a third of its lease is given back, not handed to a handler', async () => {
    const { bus, conn } = await fileBus();
    const N = 8;
    const lease = 600;
    await bus.sendMany(Array.from({ length: N }, (_, i) => ({ name: 'job', payload: i })));
    // Releases the worker makes while it still has work (not the give-back of an idle or stopping worker).
    const releasedEarly: { n: number; countAttempt: boolean }[] = [];
    let handled = 0;
    const release = bus.release.bind(bus);
    bus.release = (claims, countAttempt) => {
      if (handled < N) releasedEarly.push({ n: claims.length, countAttempt });
      return release(claims, countAttempt);
    };
    const leaseLeft: number[] = [];
    const w = bus.listen(
      {
        job: async (m) => {
          leaseLeft.push(conn.get<{ d: number }>('SELECT due_at AS d FROM bus_queue WHERE id = ?', [m.id])!.d - bus.now());
          // The first two handlers outlast a third of the lease: the claims the second one's
          // claim buffered (with the first one's ack) grow too old meanwhile.
          if ((m.payload as number) < 2) await new Promise((r) => setTimeout(r, lease / 2));
          handled++;
        },
      },
      { concurrency: 1, lease, pollInterval: 1_000 },
    );
    await w.drain();
    await w.stop();
    expect(w.counters).toMatchObject({ handled: N, stale: 0 });
    expect(releasedEarly.length).toBeGreaterThan(0);
    expect(releasedEarly.every((r) => r.n > 0 && !r.countAttempt)).toBe(true);
    // Every handler got a claim whose lease had at least two thirds left (it was renewed from there).
    expect(Math.min(...leaseLeft)).toBeGreaterThan(lease / 2);
    // The given-back claims counted no attempt: every command was handled on its first.
    expect(conn.get<{ n: number }>("SELECT count(*) AS n FROM bus_queue WHERE state = 'done' AND attempts = 1")!.n).toBe(N);
  });

  it('a handler slot is reused while the ack waits for its commit, never running more handlers than concurrency', async () => {
    const { bus, conn } = await fileBus();
    const N = 40;
    await bus.sendMany(Array.from({ length: N }, (_, i) => ({ name: 'job', payload: i })));
    let running = 0;
    let most = 0;
    let overlapped = 0;
    const ids: string[] = [];
    const w = bus.listen(
      {
        job: async (m) => {
          most = Math.max(most, ++running);
          const previous = ids.at(-1);
          // The previous handler returned, but its acknowledgement has not committed yet.
          if (previous && conn.get<{ state: string }>('SELECT state FROM bus_queue WHERE id = ?', [previous])!.state === 'inflight') overlapped++;
          ids.push(m.id);
          await null;
          running--;
        },
      },
      { concurrency: 1, pollInterval: 1_000 },
    );
    await w.drain();
    await w.stop();
    expect(w.counters).toMatchObject({ handled: N, stale: 0 });
    expect(most).toBe(1);
    expect(overlapped).toBeGreaterThan(0);
    expect(conn.get<{ n: number }>("SELECT count(*) AS n FROM bus_queue WHERE state = 'done' AND attempts = 1")!.n).toBe(N);
  });

  it('stop() gives prefetched claims back without burning an attempt', async () => {
    const { bus, conn } = await fileBus();
    const N = 200;
    await bus.sendMany(Array.from({ length: N }, (_, i) => ({ name: 'job', payload: i })));
    let handled = 0;
    let stopping: Promise<void> | undefined;
    const w = bus.listen(
      {
        job: async () => {
          if (++handled === 40) stopping = w.stop();
        },
      },
      { concurrency: 8, pollInterval: 1_000 },
    );
    await until(() => stopping !== undefined);
    await stopping;
    expect(inflight(conn)).toBe(0);
    const done = conn.get<{ n: number }>("SELECT count(*) AS n FROM bus_queue WHERE state = 'done'")!.n;
    expect(done).toBe(w.counters.handled);
    // Every command not handled is ready again with no attempt counted.
    expect(conn.get<{ n: number }>("SELECT count(*) AS n FROM bus_queue WHERE state = 'ready' AND attempts = 0")!.n).toBe(N - done);
  });
});
