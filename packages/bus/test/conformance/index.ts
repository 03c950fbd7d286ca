/**
 * The transport conformance suite: behaviour every `Bus` implementation must show. It uses
 * only the `Bus` interface, so a second transport (PostgreSQL, NATS JetStream) runs it by
 * calling `busConformance('postgres', makeBus)`.
 *
 * Timing: short leases and backoffs, and assertions that wait for outcomes (never for
 * durations), so the suite does not flake on slow machines.
 */
import { describe, expect, it } from 'vitest';
import { PermanentError, StaleClaimError, ValidationError, type Bus, type Message } from '../../src/index.js';

/** What a transport factory returns. */
export interface BusFixture {
  /** The bus; its handler context is the transport's (`conn` for SQLite, `client` for PostgreSQL). */
  bus: Bus<any>;
  cleanup(): Promise<void>;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

async function until(cond: () => boolean | Promise<boolean>, what: string, timeoutMs = 20_000): Promise<void> {
  const end = performance.now() + timeoutMs;
  while (!(await cond())) {
    if (performance.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

async function withBus(make: () => Promise<BusFixture>, fn: (bus: Bus<any>) => Promise<void>): Promise<void> {
  const f = await make();
  try {
    await fn(f.bus);
  } finally {
    await f.cleanup();
  }
}

/**
 * Registers the conformance tests for one transport.
 *
 * @param make - opens a fresh, empty bus (and says how to clean it up) for each test.
 * @param label - names the transport in the test titles.
 * @param features - `sqliteConn: false` for transports whose handler context has no siblite
 *   `conn` (its guard test is then skipped, saying why).
 */
export function busConformance(make: () => Promise<BusFixture>, label = 'transport', features: { sqliteConn?: boolean } = {}): void {
  const sqliteConn = features.sqliteConn !== false;
  describe(`Bus conformance: ${label}`, () => {
    it('point-to-point: N commands, several workers, each handled exactly once', async () => {
      await withBus(make, async (bus) => {
        const N = 200;
        const seen = new Map<number, number>();
        const handler = async (m: Message) => {
          const i = (m.payload as { i: number }).i;
          seen.set(i, (seen.get(i) ?? 0) + 1);
          await sleep(Math.random() * 2);
        };
        const workers = [1, 2, 3].map(() => bus.listen({ 'job.run': handler }, { concurrency: 4, pollInterval: 20 }));
        for (let i = 0; i < N; i++) await bus.send('job.run', { i });
        await until(() => seen.size === N, 'all commands');
        await Promise.all(workers.map((w) => w.drain()));
        await Promise.all(workers.map((w) => w.stop()));
        expect([...seen.values()].every((n) => n === 1)).toBe(true);
        expect(workers.reduce((a, w) => a + w.counters.handled, 0)).toBe(N);
        const stats = await bus.stats();
        expect(stats.queue['job.run']?.ready ?? 0).toBe(0);
        expect(stats.queue['job.run']?.inFlight ?? 0).toBe(0);
      });
    });

    it('fan-out: two groups each see every event in log order', async () => {
      await withBus(make, async (bus) => {
        const a: number[] = [];
        const b: number[] = [];
        const wa = bus.subscribe('group-a', { 'thing.happened': (m) => void a.push(m.payload as number) }, { pollInterval: 20 });
        const wb = bus.subscribe('group-b', { 'thing.happened': (m) => void b.push(m.payload as number) }, { pollInterval: 20 });
        for (let i = 0; i < 50; i++) await bus.publish('thing.happened', i);
        await until(() => a.length === 50 && b.length === 50, 'both groups');
        const expected = Array.from({ length: 50 }, (_, i) => i);
        expect(a).toEqual(expected);
        expect(b).toEqual(expected);
        await wa.stop();
        await wb.stop();
        const stats = await bus.stats();
        expect(stats.groups['group-a']?.lag).toBe(0);
        expect(stats.groups['group-b']?.offset).toBe(stats.groups['group-a']?.offset);
      });
    });

    it('a group subscribing later starts from the beginning, or from the end if asked', async () => {
      await withBus(make, async (bus) => {
        for (let i = 0; i < 5; i++) await bus.publish('evt', i);
        const early: number[] = [];
        const late: number[] = [];
        const w1 = bus.subscribe('late-beginning', { evt: (m) => void early.push(m.payload as number) }, { pollInterval: 20 });
        const w2 = bus.subscribe('late-end', { evt: (m) => void late.push(m.payload as number) }, { pollInterval: 20, startFrom: 'end' });
        await w1.drain();
        await w2.drain();
        await bus.publish('evt', 5);
        await until(() => early.length === 6 && late.length === 1, 'late groups');
        expect(early).toEqual([0, 1, 2, 3, 4, 5]);
        expect(late).toEqual([5]);
        await w1.stop();
        await w2.stop();
      });
    });

    it('a retryable failure is redelivered with backoff', async () => {
      await withBus(make, async (bus) => {
        const attempts: number[] = [];
        const retries: number[] = [];
        const w = bus.listen(
          {
            flaky: async (m) => {
              attempts.push(m.attempts);
              if (m.attempts < 3) throw new Error('transient');
            },
          },
          { backoff: { base: 20, max: 100, jitter: false }, maxAttempts: 5, pollInterval: 10, onEvent: (e) => void (e.type === 'retry' && retries.push(e.delay)) },
        );
        await bus.send('flaky', null);
        await until(() => w.counters.handled === 1, 'handled after retries');
        await w.stop();
        expect(attempts).toEqual([1, 2, 3]);
        expect(retries).toEqual([20, 40]);
        expect(w.counters.retried).toBe(2);
        expect((await bus.stats()).queue.flaky?.dead ?? 0).toBe(0);
      });
    });

    it("the group's offset does not advance past an unsettled event", async () => {
      await withBus(make, async (bus) => {
        let release = false;
        const handled: number[] = [];
        const w = bus.subscribe(
          'g-offset',
          {
            e: async (m) => {
              if (m.payload === 1 && !release) throw new Error('not yet');
              handled.push(m.payload as number);
            },
          },
          { concurrency: 2, backoff: 30, maxAttempts: 1000, pollInterval: 10 },
        );
        for (let i = 1; i <= 3; i++) await bus.publish('e', i);
        await until(() => handled.includes(2) && handled.includes(3), 'events 2 and 3');
        await until(async () => (await bus.stats()).groups['g-offset']?.lag === 1, 'lag 1');
        const before = (await bus.stats()).groups['g-offset'];
        expect(before?.offset).toBe(0);
        release = true;
        await until(() => handled.includes(1), 'event 1');
        await until(async () => (await bus.stats()).groups['g-offset']?.lag === 0, 'lag 0');
        expect((await bus.stats()).groups['g-offset']?.offset).toBe(3);
        await w.stop();
      });
    });

    it('ordered: a failing event holds back later events of the group until it succeeds', async () => {
      await withBus(make, async (bus) => {
        const seen: string[] = [];
        const w = bus.subscribe(
          'strict',
          {
            e: (m) => {
              if (m.payload === 1 && m.attempts < 3) throw new Error('not yet');
              seen.push(`${m.payload as number}@${m.attempts}`);
            },
          },
          { ordered: true, concurrency: 4, backoff: 10, pollInterval: 10 },
        );
        for (let i = 0; i < 5; i++) await bus.publish('e', i);
        await until(() => seen.length === 5, 'all events');
        await w.stop();
        expect(seen).toEqual(['0@1', '1@3', '2@1', '3@1', '4@1']);
      });
    });

    it('maxAttempts dead-letters with the reason and the whole message', async () => {
      await withBus(make, async (bus) => {
        const w = bus.listen({ doomed: () => Promise.reject(new Error('boom')) }, { maxAttempts: 2, backoff: 5, pollInterval: 10 });
        await bus.send('doomed', { x: [1, 'two'] }, { id: 'doomed-1', headers: { 'correlation-id': 'c-1' }, key: 'k' });
        await until(() => w.counters.deadLettered === 1, 'dead letter');
        await w.stop();
        const dead = await bus.deadLetters({ source: 'queue' });
        expect(dead).toHaveLength(1);
        const d = dead[0]!;
        expect(d.reason).toMatch(/boom/);
        expect(d.reason).toMatch(/2 of 2/);
        expect(d.attempts).toBe(2);
        expect(d.status).toBe('dead');
        expect(d.message).toMatchObject({ id: 'doomed-1', name: 'doomed', payload: { x: [1, 'two'] }, headers: { 'correlation-id': 'c-1' }, key: 'k' });
        expect((await bus.stats()).queue.doomed).toMatchObject({ ready: 0, inFlight: 0, dead: 1 });
        // replay puts it back with a fresh attempt count; purge removes dead letters
        expect(await bus.replayDeadLetter(d.deadId)).toBe(true);
        const again = await bus.receive();
        expect(again?.message.id).toBe('doomed-1');
        expect(again?.message.attempts).toBe(1);
        await again!.park('a person should look at this');
        const parked = await bus.deadLetters({ status: 'parked' });
        expect(parked.map((p) => p.reason)).toEqual(['a person should look at this']);
        expect(await bus.purgeDeadLetters()).toBe(1);
        expect(await bus.deadLetters()).toEqual([]);
      });
    });

    it('PermanentError dead-letters at once', async () => {
      await withBus(make, async (bus) => {
        const w = bus.listen({ bad: () => Promise.reject(new PermanentError('invalid input')) }, { maxAttempts: 10, pollInterval: 10 });
        await bus.send('bad', 1);
        await until(() => w.counters.deadLettered === 1, 'dead letter');
        await w.stop();
        const [d] = await bus.deadLetters();
        expect(d?.attempts).toBe(1);
        expect(d?.reason).toMatch(/invalid input/);
      });
    });

    it('a stale worker whose lease expired cannot ack the newer claim', async () => {
      await withBus(make, async (bus) => {
        await bus.send('slow', 'x');
        const first = await bus.receive({ lease: 30 });
        expect(first?.message.attempts).toBe(1);
        await sleep(60);
        const second = await bus.receive({ lease: 30_000 });
        expect(second?.message.id).toBe(first?.message.id);
        expect(second?.message.attempts).toBe(2);
        await expect(first!.ack()).rejects.toBeInstanceOf(StaleClaimError);
        await expect(first!.nack()).rejects.toBeInstanceOf(StaleClaimError);
        await expect(first!.deadLetter('x')).rejects.toBeInstanceOf(StaleClaimError);
        await expect(first!.extendLease(1000)).rejects.toBeInstanceOf(StaleClaimError);
        await second!.extendLease(60_000);
        await second!.ack();
        await expect(second!.ack()).rejects.toBeInstanceOf(StaleClaimError);
        expect(await bus.receive()).toBeUndefined();
      });
    });

    it('a stale event claim cannot ack the newer claim of the group', async () => {
      await withBus(make, async (bus) => {
        await bus.publish('ev', 'x');
        const first = await bus.receive({ group: 'stale-g', lease: 30 });
        await sleep(60);
        const second = await bus.receive({ group: 'stale-g' });
        expect(second?.message.position).toBe(first?.message.position);
        await expect(first!.ack()).rejects.toBeInstanceOf(StaleClaimError);
        await second!.ack();
        await until(async () => (await bus.stats()).groups['stale-g']?.lag === 0, 'lag 0');
      });
    });

    it('a handler that extends its lease keeps the message from other workers', async () => {
      await withBus(make, async (bus) => {
        let calls = 0;
        const handler = async (_m: Message, ctx: { extendLease(ms: number): Promise<void> }) => {
          calls++;
          await ctx.extendLease(30_000);
          await sleep(500);
        };
        const workers = [0, 1].map(() => bus.listen({ long: handler }, { lease: 200, pollInterval: 5 }));
        await bus.send('long', 1);
        await until(() => workers.reduce((a, w) => a + w.counters.handled, 0) === 1, 'handled');
        await Promise.all(workers.map((w) => w.stop()));
        expect(calls).toBe(1);
        expect(workers.reduce((a, w) => a + w.counters.stale, 0)).toBe(0);
      });
    });

    it('nack puts a command back after its delay', async () => {
      await withBus(make, async (bus) => {
        await bus.send('n', 1);
        const d = await bus.receive();
        // A delay far above a loaded CI machine's pauses, so that the first checks run within it.
        const nacked = Date.now();
        await d!.nack({ delay: 1000 });
        expect(await bus.receive()).toBeUndefined();
        expect((await bus.stats()).queue.n?.delayed).toBe(1);
        let again = await bus.receive();
        while (again === undefined && Date.now() - nacked < 10_000) {
          await sleep(25);
          again = await bus.receive();
        }
        expect(Date.now() - nacked).toBeGreaterThanOrEqual(900);
        expect(again?.message.attempts).toBe(2);
        await again!.ack();
      });
    });

    it('the same id twice is stored once', async () => {
      await withBus(make, async (bus) => {
        expect(await bus.send('once', 1, { id: 'same' })).toEqual({ id: 'same', stored: true });
        expect(await bus.send('once', 2, { id: 'same' })).toEqual({ id: 'same', stored: false });
        expect(await bus.publish('once', 1, { id: 'same' })).toEqual({ id: 'same', stored: true });
        expect(await bus.publish('once', 2, { id: 'same' })).toEqual({ id: 'same', stored: false });
        const d = await bus.receive();
        expect(d?.message.payload).toBe(1);
        await d!.ack();
        expect((await bus.send('once', 3, { id: 'same' })).stored).toBe(false);
        expect(await bus.receive()).toBeUndefined();
        expect((await bus.stats()).events).toBe(1);
      });
    });

    it('sendMany stores a batch in order, with per-message options; repeated ids are stored once', async () => {
      await withBus(make, async (bus) => {
        expect(await bus.sendMany([])).toEqual([]);
        const out = await bus.sendMany([
          { name: 'batch.a', payload: { i: 1 }, id: 'm1', key: 'k' },
          { name: 'batch.b', payload: new Uint8Array([1, 2]), headers: { h: 'v' }, priority: 5 },
          { name: 'batch.a', payload: { i: 3 }, id: 'm1' }, // repeated in the batch
          { name: 'batch.a', payload: { i: 4 }, delay: 60_000 },
        ]);
        expect(out.map((r) => r.stored)).toEqual([true, true, false, true]);
        expect(out[0]!.id).toBe('m1');
        expect((await bus.sendMany([{ name: 'batch.a', payload: 0, id: 'm1' }]))[0]).toEqual({ id: 'm1', stored: false });
        const stats = await bus.stats();
        expect(stats.queue['batch.a']).toMatchObject({ ready: 1, delayed: 1 });
        expect(stats.queue['batch.b']).toMatchObject({ ready: 1 });
        const first = await bus.receive();
        expect(first?.message).toMatchObject({ name: 'batch.b', headers: { h: 'v' } }); // priority 5 first
        expect(first?.message.payload).toEqual(new Uint8Array([1, 2]));
        await first!.ack();
        const second = await bus.receive();
        expect(second?.message).toMatchObject({ id: 'm1', payload: { i: 1 }, key: 'k' });
        await second!.ack();
        expect(await bus.receive()).toBeUndefined();
        // 1,000 at once.
        const many = await bus.sendMany(Array.from({ length: 1000 }, (_, i) => ({ name: 'batch.c', payload: i })));
        expect(many.every((r) => r.stored)).toBe(true);
        expect((await bus.stats()).queue['batch.c']).toMatchObject({ ready: 1000 });
      });
    });

    it('sendMany validates every message first: one bad message writes nothing, and the error names it', async () => {
      await withBus(make, async (bus) => {
        const bad: [string, unknown, string][] = [
          ['not an array', 'nope', 'messages'],
          ['bad name', [{ name: 'ok', payload: 1 }, { name: 'bad name', payload: 1 }], 'messages[1].name'],
          ['bad payload', [{ name: 'ok', payload: 1 }, { name: 'ok', payload: 1n }], 'messages[1].payload'],
          ['bad delay', [{ name: 'ok', payload: 1, delay: -1 }], 'messages[0].delay'],
          ['bad priority', [{ name: 'ok', payload: 1 }, { name: 'ok', payload: 1, priority: 5000 }], 'messages[1].priority'],
          ['bad id', [{ name: 'ok', payload: 1, id: '' }], 'messages[0].id'],
          ['null message', [{ name: 'ok', payload: 1 }, null], 'messages[1].message'],
        ];
        for (const [what, messages, argument] of bad) {
          let error: unknown;
          try {
            await bus.sendMany(messages as never);
          } catch (e) {
            error = e;
          }
          expect(error, what).toBeInstanceOf(ValidationError);
          expect((error as ValidationError).argument, what).toBe(argument);
        }
        expect((await bus.stats()).queue).toEqual({});
      });
    });

    it('delayed commands are not claimable before their time', async () => {
      await withBus(make, async (bus) => {
        // A delay far above a loaded CI machine's pauses: 'a' is handled well before 'b' is due.
        await bus.send('later', 'b', { delay: 1000 });
        await bus.send('later', 'a');
        const seen: string[] = [];
        const w = bus.listen({ later: (m) => void seen.push(m.payload as string) }, { pollInterval: 10 });
        await until(() => seen.length === 1, 'first');
        expect(seen).toEqual(['a']);
        await until(() => seen.length === 2, 'the delayed one');
        expect(seen).toEqual(['a', 'b']);
        await w.stop();
      });
    });

    it('messages sharing an ordering key are handled one at a time, in order', async () => {
      await withBus(make, async (bus) => {
        const order = new Map<string, number[]>();
        let running = new Map<string, number>();
        let overlap = false;
        const w = bus.listen(
          {
            k: async (m) => {
              const key = m.key!;
              running.set(key, (running.get(key) ?? 0) + 1);
              if (running.get(key)! > 1) overlap = true;
              await sleep(Math.random() * 3);
              if ((m.payload as number) % 7 === 3 && m.attempts === 1) {
                running.set(key, running.get(key)! - 1);
                throw new Error('retry me');
              }
              order.set(key, [...(order.get(key) ?? []), m.payload as number]);
              running.set(key, running.get(key)! - 1);
            },
          },
          { concurrency: 8, backoff: 5, pollInterval: 10 },
        );
        for (let i = 0; i < 60; i++) await bus.send('k', i, { key: `key-${i % 3}` });
        await until(() => [...order.values()].reduce((a, v) => a + v.length, 0) === 60, 'all keyed');
        await w.stop();
        expect(overlap).toBe(false);
        for (const [key, seq] of order) {
          const k = Number(key.slice(4));
          expect(seq).toEqual(Array.from({ length: 20 }, (_, j) => j * 3 + k));
        }
        running = new Map();
      });
    });

    it('stop() is graceful: in-flight handlers finish, nothing new is claimed', async () => {
      await withBus(make, async (bus) => {
        let finished = 0;
        let started = 0;
        const w = bus.listen(
          {
            s: async () => {
              started++;
              await sleep(30);
              finished++;
            },
          },
          { concurrency: 2, pollInterval: 10 },
        );
        for (let i = 0; i < 6; i++) await bus.send('s', i);
        await until(() => started >= 2, 'two started');
        await w.stop();
        expect(finished).toBe(started);
        const startedAtStop = started;
        await sleep(50);
        expect(started).toBe(startedAtStop);
        const stats = await bus.stats();
        expect(stats.queue.s?.inFlight ?? 0).toBe(0);
        expect(stats.queue.s?.ready).toBe(6 - finished);
      });
    });

    it('an AbortSignal stops the worker', async () => {
      await withBus(make, async (bus) => {
        const ac = new AbortController();
        let n = 0;
        const w = bus.listen({ a: () => void n++ }, { signal: ac.signal, pollInterval: 10 });
        await bus.send('a', 1);
        await until(() => n === 1, 'one');
        ac.abort();
        await w.stop();
        await bus.send('a', 2);
        await sleep(40);
        expect(n).toBe(1);
      });
    });

    it('unknown names: a command worker leaves them for a worker that handles them; ack and deadLetter on request', async () => {
      await withBus(make, async (bus) => {
        const known: string[] = [];
        const w = bus.listen({ known: (m) => void known.push(m.id) }, { pollInterval: 10 });
        await bus.send('billing.charge', 1, { id: 'charge-1' });
        await bus.send('known', 1, { id: 'known-1' });
        await w.drain();
        await w.stop();
        expect(known).toEqual(['known-1']);
        expect(w.counters.unknown).toBe(0);
        expect((await bus.get('charge-1'))?.state).toBe('ready');
        const billing: string[] = [];
        const w2 = bus.listen({ 'billing.charge': (m) => void billing.push(m.id) }, { pollInterval: 10 });
        await w2.drain();
        await w2.stop();
        expect(billing).toEqual(['charge-1']);
        await bus.send('nobody', 1, { id: 'n-1' });
        const acker = bus.listen({ known: () => {} }, { pollInterval: 10, onUnknown: 'ack' });
        await acker.drain();
        await acker.stop();
        expect(acker.counters.unknown).toBe(1);
        expect((await bus.get('n-1'))?.state).toBe('done');
        await bus.send('nobody', 2, { id: 'n-2' });
        const burier = bus.listen({ known: () => {} }, { pollInterval: 10, onUnknown: 'deadLetter' });
        await burier.drain();
        await burier.stop();
        expect((await bus.get('n-2'))?.state).toBe('dead');
      });
    });

    it('a group settles events it has no handler for, so they never hold back its offset', async () => {
      await withBus(make, async (bus) => {
        const seen: number[] = [];
        const w = bus.subscribe('g-unknown', { wanted: (m) => void seen.push(m.payload as number) }, { pollInterval: 10 });
        for (let i = 0; i < 10; i++) await bus.publish(i % 2 ? 'wanted' : 'other', i);
        await until(async () => (await bus.stats()).groups['g-unknown']?.lag === 0, 'lag 0');
        await w.drain();
        await w.stop();
        expect(seen).toEqual([1, 3, 5, 7, 9]);
        expect(w.counters.unknown).toBe(5);
        expect((await bus.stats()).groups['g-unknown']?.offset).toBe(10);
      });
    });

    it('events sharing a key are handled one at a time, in log order, per group, with retries', async () => {
      await withBus(make, async (bus) => {
        const order = new Map<string, number[]>();
        const running = new Map<string, number>();
        let overlap = false;
        const w = bus.subscribe(
          'keyed-g',
          {
            ev: async (m) => {
              const key = m.key!;
              running.set(key, (running.get(key) ?? 0) + 1);
              if (running.get(key)! > 1) overlap = true;
              await sleep(Math.random() * 3);
              running.set(key, running.get(key)! - 1);
              if ((m.payload as number) % 5 === 2 && m.attempts === 1) throw new Error('retry me');
              order.set(key, [...(order.get(key) ?? []), m.payload as number]);
            },
          },
          { concurrency: 6, backoff: 5, pollInterval: 10 },
        );
        for (let i = 0; i < 90; i++) await bus.publish('ev', i, { key: `key-${i % 3}` });
        await until(() => [...order.values()].reduce((a, v) => a + v.length, 0) === 90, 'all keyed events');
        await until(async () => (await bus.stats()).groups['keyed-g']?.lag === 0, 'lag 0');
        await w.stop();
        expect(overlap).toBe(false);
        for (const [key, seq] of order) {
          const k = Number(key.slice(4));
          expect(seq).toEqual(Array.from({ length: 30 }, (_, j) => j * 3 + k));
        }
        expect((await bus.stats()).groups['keyed-g']?.offset).toBe(90);
      });
    });

    it('a stuck event does not stop the group: later events are handled, the offset waits for it', async () => {
      await withBus(make, async (bus) => {
        let release = false;
        const seen: number[] = [];
        const w = bus.subscribe(
          'stuck-g',
          {
            e: async (m) => {
              if (m.payload === 0) while (!release) await sleep(5);
              seen.push(m.payload as number);
            },
          },
          { concurrency: 4, pollInterval: 10 },
        );
        for (let i = 0; i < 40; i++) await bus.publish('e', i);
        // handled counts committed acknowledgements (a handler's push happens before its commit)
        await until(() => seen.length === 39 && w.counters.handled === 39, 'the 39 after the stuck one');
        expect((await bus.stats()).groups['stuck-g']).toMatchObject({ offset: 0, lag: 1, inFlight: 1 });
        release = true;
        await until(async () => (await bus.stats()).groups['stuck-g']?.offset === 40, 'offset past everything');
        await w.stop();
        expect(seen.sort((a, b) => a - b)).toEqual(Array.from({ length: 40 }, (_, i) => i));
      });
    });

    it('stop({ timeout }) aborts context.signal, abandons a handler that never settles, and releases its message', async () => {
      await withBus(make, async (bus) => {
        let aborted: unknown;
        let started = 0;
        const w = bus.listen(
          {
            stuck: (_m, ctx) =>
              new Promise<void>(() => {
                started++;
                ctx.signal.addEventListener('abort', () => (aborted = ctx.signal.reason));
              }),
          },
          { pollInterval: 10, maxAttempts: 1 },
        );
        await bus.send('stuck', 1, { id: 'stuck-1' });
        await until(() => started === 1, 'handler started');
        await w.stop({ timeout: 50 });
        expect(aborted).toBeInstanceOf(Error);
        expect(w.counters.released).toBe(1);
        expect(w.counters.inFlight).toBe(0);
        // released at once, for another worker: not dead-lettered although maxAttempts is 1
        const info = await bus.get('stuck-1');
        expect(info?.state).toBe('ready');
        const d = await bus.receive();
        expect(d?.message.id).toBe('stuck-1');
        await d!.ack();
      });
    });

    it('a handler that stops when its signal is aborted by stop() does not use up an attempt', async () => {
      await withBus(make, async (bus) => {
        let started = 0;
        const w = bus.listen(
          {
            polite: (_m, ctx) =>
              new Promise<void>((_, reject) => {
                started++;
                ctx.signal.addEventListener('abort', () => reject(ctx.signal.reason));
              }),
          },
          { pollInterval: 10, maxAttempts: 1 },
        );
        await bus.send('polite', 1, { id: 'polite-1' });
        await until(() => started === 1, 'handler started');
        await w.stop();
        expect(w.counters.deadLettered).toBe(0);
        expect(w.counters.retried).toBe(0);
        const d = await bus.receive();
        expect(d?.message.attempts).toBe(1);
        await d!.ack();
        expect(await bus.deadLetters()).toEqual([]);
      });
    });

    it('close() does not hang on a handler that never settles', async () => {
      const f = await make();
      try {
        let started = false;
        f.bus.listen({ forever: () => new Promise<void>(() => void (started = true)) }, { pollInterval: 10 });
        await f.bus.send('forever', 1);
        await until(() => started, 'started');
        await f.bus.close({ timeout: 20 });
      } finally {
        await f.cleanup();
      }
    });

    it('the lease is renewed while a handler runs: a long handler is not handled twice', async () => {
      await withBus(make, async (bus) => {
        let calls = 0;
        const handler = async () => {
          calls++;
          await sleep(400);
        };
        const workers = [0, 1].map(() => bus.listen({ long: handler }, { lease: 90, pollInterval: 5 }));
        await bus.send('long', 1);
        await until(() => workers.reduce((a, w) => a + w.counters.handled, 0) === 1, 'handled');
        await Promise.all(workers.map((w) => w.stop()));
        expect(calls).toBe(1);
        expect(workers.reduce((a, w) => a + w.counters.stale, 0)).toBe(0);
      });
    });

    it('a per-name handler timeout aborts the signal, rolls the attempt back and retries', async () => {
      await withBus(make, async (bus) => {
        const attempts: number[] = [];
        const w = bus.listen(
          {
            slow: async (m, ctx) => {
              attempts.push(m.attempts);
              if (m.attempts === 1) await new Promise((r) => ctx.signal.addEventListener('abort', r));
            },
            fast: () => {},
          },
          { timeout: { slow: 30 }, backoff: 5, pollInterval: 10 },
        );
        await bus.send('slow', 1, { id: 'slow-1' });
        await until(() => w.counters.handled === 1, 'handled on the second attempt');
        await w.stop();
        expect(attempts).toEqual([1, 2]);
        expect(w.counters.retried).toBe(1);
      });
    });

    it('the worker yields to the event loop: timers keep firing while it drains a backlog', async () => {
      await withBus(make, async (bus) => {
        for (let i = 0; i < 300; i++) await bus.send('tick', i);
        let ticks = 0;
        const timer = setInterval(() => ticks++, 1);
        let ticksAtHalf = -1;
        let handled = 0;
        const w = bus.listen(
          {
            tick: () => {
              if (++handled === 150) ticksAtHalf = ticks;
            },
          },
          { concurrency: 4, pollInterval: 5_000 },
        );
        const before = ticks;
        await w.drain();
        clearInterval(timer);
        await w.stop();
        expect(handled).toBe(300);
        // timers fired during the first half and during the second half of the drain
        expect(ticksAtHalf).toBeGreaterThan(before);
        expect(ticks).toBeGreaterThan(ticksAtHalf);
      });
    });

    it('priorities: higher first, then oldest first', async () => {
      await withBus(make, async (bus) => {
        await bus.send('p', 'low', { priority: -5 });
        await bus.send('p', 'normal-1');
        await bus.send('p', 'high', { priority: 10 });
        await bus.send('p', 'normal-2');
        const order: string[] = [];
        for (;;) {
          const d = await bus.receive();
          if (!d) break;
          order.push(d.message.payload as string);
          await d.ack();
        }
        expect(order).toEqual(['high', 'normal-1', 'normal-2', 'low']);
        await expect(bus.send('p', 1, { priority: 1.5 })).rejects.toBeInstanceOf(ValidationError);
        await expect(bus.send('p', 1, { priority: 1001 })).rejects.toBeInstanceOf(ValidationError);
      });
    });

    it('get and cancel by id', async () => {
      await withBus(make, async (bus) => {
        await bus.send('c', 1, { id: 'c-1', delay: 60_000 });
        await bus.send('c', 2, { id: 'c-2' });
        expect(await bus.get('c-1')).toMatchObject({ state: 'delayed', attempts: 0, message: { id: 'c-1', payload: 1 } });
        expect(await bus.get('nope')).toBeUndefined();
        expect(await bus.cancel('c-1')).toBe(true);
        expect(await bus.cancel('c-1')).toBe(false);
        expect((await bus.get('c-1'))?.state).toBe('cancelled');
        const d = await bus.receive();
        expect(d?.message.id).toBe('c-2');
        expect((await bus.get('c-2'))?.state).toBe('inflight');
        expect(await bus.cancel('c-2')).toBe(false); // running: not cancellable
        await d!.ack();
        expect((await bus.get('c-2'))?.state).toBe('done');
        expect(await bus.receive()).toBeUndefined();
        await bus.publish('e', 1, { id: 'e-1' });
        expect(await bus.get('e-1', { kind: 'event' })).toMatchObject({ state: 'logged', message: { id: 'e-1', kind: 'event' } });
      });
    });

    it('cancelling the head of an ordering key lets the next one run', async () => {
      await withBus(make, async (bus) => {
        await bus.send('k', 1, { id: 'k-1', key: 'same', delay: 60_000 });
        await bus.send('k', 2, { id: 'k-2', key: 'same' });
        expect(await bus.receive()).toBeUndefined();
        expect(await bus.cancel('k-1')).toBe(true);
        const d = await bus.receive();
        expect(d?.message.id).toBe('k-2');
        await d!.ack();
      });
    });

    it('pause and resume: the whole queue, one name, one group', async () => {
      await withBus(make, async (bus) => {
        await bus.send('a', 1);
        await bus.send('b', 1);
        await bus.pause();
        expect(await bus.receive()).toBeUndefined();
        await bus.resume();
        await bus.pause({ name: 'a' });
        const d = await bus.receive();
        expect(d?.message.name).toBe('b');
        await d!.ack();
        expect(await bus.receive()).toBeUndefined();
        await bus.resume({ name: 'a' });
        const a = await bus.receive();
        expect(a?.message.name).toBe('a');
        await a!.ack();
        await bus.publish('e', 1);
        await bus.pause({ group: 'pg' });
        expect(await bus.receive({ group: 'pg' })).toBeUndefined();
        await bus.resume({ group: 'pg' });
        const e = await bus.receive({ group: 'pg' });
        expect(e?.message.payload).toBe(1);
        await e!.ack();
        await expect(bus.pause({ name: 'bad name' })).rejects.toBeInstanceOf(ValidationError);
      });
    });

    it('settling a delivery twice says it was already settled, not that another worker has it', async () => {
      await withBus(make, async (bus) => {
        await bus.send('twice', 1);
        const d = await bus.receive();
        await d!.ack();
        await expect(d!.ack()).rejects.toThrow(/already settled with ack/);
        await expect(d!.nack()).rejects.toBeInstanceOf(StaleClaimError);
      });
    });

    it('lossy payloads and absurd durations are refused with ValidationError, nothing thrown synchronously', async () => {
      await withBus(make, async (bus) => {
        let deep: unknown = 1;
        for (let i = 0; i < 3_000; i++) deep = [deep];
        const withExtra = Object.assign([1, 2], { extra: true });
        // eslint-disable-next-line no-sparse-arrays
        const sparse = [1, , 3];
        const bad: [string, () => Promise<unknown>][] = [
          ['deep', () => bus.send('ok', deep as never)],
          ['sparse', () => bus.send('ok', sparse as never)],
          ['-0', () => bus.send('ok', { n: -0 })],
          ['array property', () => bus.send('ok', withExtra as never)],
          ['NUL in id', () => bus.send('ok', 1, { id: 'a\u0000b' })],
          ['NUL in key', () => bus.publish('ok', 1, { key: 'a\u0000b' })],
          ['huge delay', () => bus.send('ok', 1, { delay: 1e300 })],
          ['huge lease', () => bus.receive({ lease: 1e300 })],
        ];
        for (const [what, fn] of bad) {
          let error: unknown;
          try {
            await fn();
          } catch (e) {
            error = e;
          }
          expect(error, what).toBeInstanceOf(ValidationError);
        }
        expect((await bus.stats()).queue).toEqual({});
        await bus.send('ok', 1);
        const d = await bus.receive();
        let thrown: unknown;
        let p: Promise<void> | undefined;
        try {
          p = d!.nack({ delay: -5 });
        } catch (e) {
          thrown = e;
        }
        expect(thrown).toBeUndefined();
        await expect(p).rejects.toBeInstanceOf(ValidationError);
        await expect(d!.extendLease(1e300)).rejects.toBeInstanceOf(ValidationError);
        await d!.ack();
      });
    });

    (sqliteConn ? it : it.skip)(`a handler cannot end the bus transaction through context.conn${sqliteConn ? '' : ' (skipped: this transport has no siblite context.conn)'}`, async () => {
      await withBus(make, async (bus) => {
        const errors: unknown[] = [];
        const w = bus.listen(
          {
            sneaky: (_m, { conn }) => {
              for (const sql of ['COMMIT', 'end transaction', '  /* x */ ROLLBACK', 'BEGIN']) {
                try {
                  conn.run(sql);
                } catch (e) {
                  errors.push(e);
                }
              }
              try {
                conn.close();
              } catch (e) {
                errors.push(e);
              }
            },
          },
          { pollInterval: 10 },
        );
        await bus.send('sneaky', 1);
        await until(() => w.counters.handled === 1, 'handled');
        await w.stop();
        expect(errors).toHaveLength(5);
        expect(errors.every((e) => (e as { code?: string }).code === 'SIBLITE_BUS_HANDLER_TRANSACTION')).toBe(true);
      });
    });

    it('bad input is rejected with typed errors and nothing is written', async () => {
      await withBus(make, async (bus) => {
        const cyclic: Record<string, unknown> = {};
        cyclic.self = cyclic;
        const bad: [string, () => Promise<unknown> | unknown][] = [
          ['empty name', () => bus.send('', 1)],
          ['space in name', () => bus.send('a b', 1)],
          ['quote in name', () => bus.send('a"; DROP TABLE x; --', 1)],
          ['long name', () => bus.send('x'.repeat(129), 1)],
          ['unicode name', () => bus.publish('é', 1)],
          ['bigint', () => bus.send('ok', { n: 1n } as never)],
          ['cycle', () => bus.send('ok', cyclic as never)],
          ['function', () => bus.send('ok', { f: () => 1 } as never)],
          ['NaN', () => bus.send('ok', Number.NaN)],
          ['date', () => bus.send('ok', { d: new Date() } as never)],
          ['negative delay', () => bus.send('ok', 1, { delay: -1 })],
          ['NaN delay', () => bus.send('ok', 1, { delay: Number.NaN })],
          ['event delay', () => bus.publish('ok', 1, { delay: 5 } as never)],
          ['empty id', () => bus.send('ok', 1, { id: '' })],
          ['bad header', () => bus.send('ok', 1, { headers: { a: 1 } as never })],
          ['bad group', () => bus.subscribe('g.with.dots', { ok: () => {} })],
          ['bad group receive', () => bus.receive({ group: 'no spaces' })],
          ['bad handler name', () => bus.listen({ 'bad name': () => {} })],
          ['bad concurrency', () => bus.listen({ ok: () => {} }, { concurrency: 0 })],
          ['bad lease', () => bus.listen({ ok: () => {} }, { lease: -5 })],
        ];
        for (const [what, fn] of bad) {
          let error: unknown;
          try {
            await fn();
          } catch (e) {
            error = e;
          }
          expect(error, what).toBeInstanceOf(ValidationError);
        }
        const stats = await bus.stats();
        expect(stats.queue).toEqual({});
        expect(stats.events).toBe(0);
        expect(Object.keys(stats.groups)).toEqual([]);
      });
    });

    it('binary payloads round-trip with their content type', async () => {
      await withBus(make, async (bus) => {
        await bus.send('bin', new Uint8Array([0, 1, 2, 255]), { contentType: 'application/x-thing' });
        await bus.send('json', { a: 'é', b: [null, true, 1.5] });
        const a = await bus.receive();
        expect(a?.message.payload).toEqual(new Uint8Array([0, 1, 2, 255]));
        expect(a?.message.contentType).toBe('application/x-thing');
        await a!.ack();
        const b = await bus.receive();
        expect(b?.message.payload).toEqual({ a: 'é', b: [null, true, 1.5] });
        expect(b?.message.contentType).toBe('application/json');
        await b!.ack();
      });
    });

    it('drain() resolves when nothing is claimable', async () => {
      await withBus(make, async (bus) => {
        let n = 0;
        const w = bus.listen({ d: () => void n++ }, { concurrency: 4, pollInterval: 5_000 });
        await w.drain();
        for (let i = 0; i < 20; i++) await bus.send('d', i);
        await w.drain();
        expect(n).toBe(20);
        await w.stop();
      });
    });
  });
}
