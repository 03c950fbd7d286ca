import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { open } from '@siblite/core';
import { buildPlans, SqliteBus, type Logger, type Message } from '../src/index.js';
import { makeBus, sleep, until } from './helpers.js';

afterEach(() => {
  vi.restoreAllMocks();
});

describe('SqliteBus: one clock for every process, deaf to wall-clock steps', () => {
  it('a backward step does not strand sent commands; a forward step neither expires leases nor runs a handler twice', async () => {
    const { bus, path, cleanup } = await makeBus('file');
    const conn2 = open(path);
    const other = await SqliteBus.open(conn2, { logger: null }); // a second bus on the file agrees on the clock
    expect(Math.abs(other.now() - bus.now())).toBeLessThan(1_000);
    const real = Date.now;
    await bus.send('a', 'before');
    // The wall clock jumps one hour back: commands sent now are still claimable, in order.
    vi.spyOn(Date, 'now').mockImplementation(() => real() - 3_600_000);
    await other.send('a', 'after-back-step');
    const seen: string[] = [];
    for (;;) {
      const d = await other.receive();
      if (!d) break;
      seen.push(d.message.payload as string);
      await d.ack();
    }
    expect(seen).toEqual(['before', 'after-back-step']);
    // The wall clock jumps two hours forward while a handler holds a 1 s lease.
    vi.restoreAllMocks();
    let calls = 0;
    await bus.send('slow', 1);
    const w = bus.listen(
      {
        slow: async () => {
          calls++;
          vi.spyOn(Date, 'now').mockImplementation(() => real() + 7_200_000);
          await sleep(150);
        },
      },
      { lease: 1_000, pollInterval: 10 },
    );
    const w2 = other.listen({ slow: () => void calls++ }, { pollInterval: 10 });
    await until(() => w.counters.handled === 1, 10_000, 'handled');
    await sleep(50);
    await w.stop();
    await w2.stop();
    expect(calls).toBe(1);
    expect(w.counters.stale + w2.counters.stale).toBe(0);
    // times never go backwards
    const t1 = bus.now();
    expect(bus.now()).toBeGreaterThanOrEqual(t1);
    await other.close();
    conn2.close();
    await cleanup();
  });
});

describe('SqliteBus: the clock across processes and reboots', () => {
  it('another process reads the same bus clock; after a reboot the clock starts at the latest stored time', async () => {
    const { bus, conn, path, cleanup } = await makeBus('file');
    // Another process (its own engine) computes the time from the anchor stored in the file.
    const dist = new URL('../dist/index.js', import.meta.url).href;
    const core = import.meta.resolve('@siblite/core');
    const script = `const { open } = await import(${JSON.stringify(core)}); const { SqliteBus } = await import(${JSON.stringify(dist)});
      const c = open(${JSON.stringify(path)}); const b = await SqliteBus.open(c, { logger: null });
      const t = b.now(); await b.close(); c.close(); console.log(JSON.stringify({ t, wall: Date.now() }));`;
    // The wall clock of the other process is an hour off: the bus clock is not.
    const before = bus.now();
    const { stdout } = await promisify(execFile)(process.execPath, ['--input-type=module', '-e', `Date.now = ((n) => () => n() - 3_600_000)(Date.now); ${script}`], { timeout: 30_000 });
    const after = bus.now();
    const theirs = JSON.parse(stdout) as { t: number; wall: number };
    expect(theirs.wall).toBeLessThan(before - 3_000_000);
    expect(theirs.t).toBeGreaterThanOrEqual(before - 50);
    expect(theirs.t).toBeLessThanOrEqual(after + 50);

    // A reboot: the stored anchor belongs to another boot, and a stored time is ahead of the
    // wall clock (the wall clock was stepped back across the reboot). The new clock never
    // starts before what is stored.
    await bus.send('a', 1);
    const ahead = Date.now() + 3_600_000;
    conn.run('UPDATE bus_queue SET created_at = ?', [ahead]);
    conn.run(`UPDATE bus_meta SET value = json_set(value, '$.boot', 'a boot before this one') WHERE key = 'clock'`);
    const again = await SqliteBus.open(conn, { logger: null });
    expect(again.now()).toBeGreaterThanOrEqual(ahead);
    expect(JSON.parse(conn.get<{ value: string }>(`SELECT value FROM bus_meta WHERE key = 'clock'`)!.value).boot).not.toBe('a boot before this one');
    await again.close();
    await cleanup();
  }, 60_000);
});

describe('SqliteBus: leases and signals', () => {
  it('a lost lease aborts context.signal and nothing the handler wrote commits', async () => {
    const { bus, conn, cleanup } = await makeBus();
    conn.exec('CREATE TABLE fx (v TEXT)');
    let reason: unknown;
    const w = bus.listen(
      {
        lost: async (m, ctx) => {
          if (m.attempts > 1) {
            ctx.conn.run(`INSERT INTO fx VALUES ('second')`);
            return;
          }
          ctx.conn.run(`INSERT INTO fx VALUES ('first')`);
          // Another worker takes the message over (as after a frozen process's lease ran out).
          conn.run(`UPDATE bus_queue SET token = 'someone-else' WHERE state = 'inflight'`);
          await new Promise((r) => ctx.signal.addEventListener('abort', r));
          reason = ctx.signal.reason;
        },
      },
      { lease: 60, pollInterval: 10 },
    );
    await bus.send('lost', 1);
    await until(() => w.counters.handled === 1, 5_000, 'handled by the second delivery');
    await w.stop();
    expect(String((reason as Error).message)).toMatch(/lease was lost/);
    expect(w.counters).toMatchObject({ stale: 1, handled: 1, retried: 0, claimed: 2 });
    expect(conn.all('SELECT v FROM fx')).toEqual([{ v: 'second' }]);
    await cleanup();
  });
});

describe('SqliteBus: stopping during a claim', () => {
  it('a claim that completes after stop() is given back without using up an attempt', async () => {
    const { bus, conn, cleanup } = await makeBus();
    await bus.send('once', 1, { id: 'once-1' });
    const blocker = conn.connect();
    blocker.exec('BEGIN IMMEDIATE'); // the worker's claim waits (busy, retried) behind it
    blocker.run(`INSERT INTO bus_meta (key, value) VALUES ('blocker', '1')`);
    let ran = 0;
    const w = bus.listen({ once: () => void ran++ }, { maxAttempts: 1, pollInterval: 10 });
    await sleep(50);
    const stopped = w.stop();
    blocker.exec('ROLLBACK');
    await stopped;
    blocker.close();
    expect(ran).toBe(0);
    expect(await bus.get('once-1')).toMatchObject({ state: 'ready', attempts: 0 });
    // with maxAttempts 1 it still gets its one real attempt
    const w2 = bus.listen({ once: () => void ran++ }, { maxAttempts: 1, pollInterval: 10 });
    await w2.drain();
    await w2.stop();
    expect(ran).toBe(1);
    expect(w2.counters.deadLettered).toBe(0);
    await cleanup();
  });
});

describe('SqliteBus: logger', () => {
  it('failures go to the bus logger by default; logger: null silences a worker', async () => {
    const lines: string[] = [];
    const logger: Logger = { warn: (m) => void lines.push(`warn ${m}`), error: (m) => void lines.push(`error ${m}`) };
    const { bus, cleanup } = await makeBus('memory', { logger });
    const w = bus.listen({ bad: () => Promise.reject(new Error('nope')) }, { maxAttempts: 2, backoff: 1, pollInterval: 5 });
    await bus.send('bad', 1, { id: 'bad-1' });
    await until(() => w.counters.deadLettered === 1, 5_000, 'dead');
    await w.stop();
    expect(lines.some((l) => l.startsWith('warn') && l.includes('"bad-1"') && l.includes('retrying'))).toBe(true);
    expect(lines.some((l) => l.startsWith('error') && l.includes('dead-lettered'))).toBe(true);
    lines.length = 0;
    const quiet = bus.listen({ bad: () => Promise.reject(new Error('nope')) }, { maxAttempts: 1, pollInterval: 5, logger: null });
    await bus.send('bad', 2);
    await until(() => quiet.counters.deadLettered === 1, 5_000, 'dead');
    await quiet.stop();
    expect(lines).toEqual([]);
    expect(() => bus.listen({ x: () => {} }, { logger: {} as never })).toThrow(/logger/);
    await cleanup();
  });

  it('console is the default logger', async () => {
    const errors = vi.spyOn(console, 'error').mockImplementation(() => {});
    const conn = open(':memory:');
    const bus = await SqliteBus.open(conn);
    const w = bus.listen({ bad: () => Promise.reject(new Error('nope')) }, { maxAttempts: 1, pollInterval: 5 });
    await bus.send('bad', 1);
    await until(() => w.counters.deadLettered === 1, 5_000, 'dead');
    await bus.close();
    conn.close();
    expect(errors.mock.calls.some((c) => String(c[0]).includes('dead-lettered'))).toBe(true);
  });
});

describe('SqliteBus: claims read only what they need', () => {
  it('claim statements have a footprint of the bus tables only (no json_each: not "every table")', async () => {
    const { bus, conn, cleanup } = await makeBus();
    const plans = buildPlans('bus');
    const engine = (conn as unknown as { session: { engine: { footprints: { of(sql: string): { reads: Set<string> } } } } }).session.engine;
    for (const sql of [plans.candidatesBase + ' LIMIT 1', `${plans.claimCommandsIn} (:s0, :s1) ${plans.claimReturning}`, plans.claimPriorities, plans.openEvents, plans.freshEvents, plans.reclaimEvent]) {
      const reads = [...engine.footprints.of(sql).reads];
      expect(reads, sql).not.toContain('*');
      expect(reads.every((t) => t.startsWith('main.bus_')), sql).toBe(true);
    }
    await cleanup();
    void bus;
  });

  it('a claim behind a single-key backlog reads only the head of the key', async () => {
    const { bus, conn, cleanup } = await makeBus();
    const h = conn.connect();
    await h.transaction(
      async (tx) => {
        for (let i = 0; i < 2_000; i++) await bus.send('k', i, { key: 'hot', conn: tx });
        for (let i = 0; i < 3; i++) await bus.send('k', `free-${i}`, { conn: tx });
      },
      { mode: 'immediate' },
    );
    h.close();
    expect(conn.get<{ n: number }>(`SELECT count(*) AS n FROM bus_queue WHERE head = 1 AND state = 'ready'`)?.n).toBe(4);
    const first = await bus.receive();
    expect(first?.message.payload).toBe(0);
    const next: unknown[] = [];
    for (let i = 0; i < 4; i++) {
      const d = await bus.receive();
      if (d) next.push(d.message.payload);
    }
    expect(next).toEqual(['free-0', 'free-1', 'free-2']); // the key waits for its head
    await first!.ack();
    expect((await bus.receive())?.message.payload).toBe(1);
    await cleanup();
  });
});

describe('SqliteBus: upgrade from schema version 1', () => {
  it('keeps every message, computes key heads and group high-water marks', async () => {
    const conn = open(':memory:');
    const plans = buildPlans('bus');
    conn.exec(plans.createMeta);
    for (const sql of plans.migrations[0]!) conn.run(sql);
    conn.run(plans.setVersion, { version: '1' });
    const ins = (id: string, key: string | null, state: string) =>
      conn.run(
        `INSERT INTO bus_queue (id, name, kind, encoding, payload, content_type, headers, key, created_at, available_at, state, due_at, token)
         VALUES (?, 'k', 'command', 'json', '1', 'application/json', '{}', ?, 1, 1, ?, 1, ?)`,
        [id, key, state, state === 'inflight' ? 'tok' : null],
      );
    ins('a1', 'A', 'done');
    ins('a2', 'A', 'ready');
    ins('a3', 'A', 'ready');
    ins('n1', null, 'ready');
    for (let i = 1; i <= 5; i++) {
      conn.run(`INSERT INTO bus_log (pos, id, name, kind, encoding, payload, content_type, headers, created_at, available_at) VALUES (?, ?, 'e', 'event', 'json', ?, 'application/json', '{}', 1, 1)`, [i, `e${i}`, String(i)]);
    }
    conn.run(`INSERT INTO bus_groups (grp, upto, created_at) VALUES ('g', 1, 1)`);
    conn.run(`INSERT INTO bus_gstate (grp, pos, state, token, due_at, attempts) VALUES ('g', 3, 'done', NULL, 1, 1)`);
    const bus = await SqliteBus.open(conn, { logger: null });
    expect(conn.get<{ value: string }>(`SELECT value FROM bus_meta WHERE key = 'schema_version'`)?.value).toBe('3');
    expect(conn.all(`SELECT id, head FROM bus_queue WHERE state = 'ready' ORDER BY seq`)).toEqual([
      { id: 'a2', head: 1 },
      { id: 'a3', head: 0 },
      { id: 'n1', head: 1 },
    ]);
    const seen: unknown[] = [];
    const w = bus.subscribe('g', { e: (m: Message) => void seen.push(m.payload) }, { pollInterval: 5 });
    await w.drain();
    await w.stop();
    expect(seen.sort()).toEqual([2, 4, 5]); // 1 was settled (offset), 3 was settled above it
    await bus.close();
    conn.close();
  });
});
