import { describe, expect, it } from 'vitest';
import { open } from '@siblite/core';
import { SqliteBus, StaleClaimError, ValidationError, type Message } from '../src/index.js';
import { makeBus, sleep, until } from './helpers.js';

describe('SqliteBus: storage', () => {
  it('creates its schema idempotently with a recorded version, per namespace', async () => {
    const conn = open(':memory:');
    const a = await SqliteBus.open(conn);
    const again = await SqliteBus.open(conn);
    const other = await SqliteBus.open(conn, { namespace: 'other-ns' });
    expect(conn.get<{ value: string }>(`SELECT value FROM bus_meta WHERE key = 'schema_version'`)?.value).toBe('3');
    await a.send('x', 1);
    expect((await again.stats()).queue.x?.ready).toBe(1);
    expect((await other.stats()).queue.x).toBeUndefined();
    const tables = conn.all<{ name: string }>(`SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name`).map((r) => r.name);
    expect(tables).toContain('other-ns_queue');
    await Promise.all([a.close(), again.close(), other.close()]);
    conn.close();
  });

  it('rejects invalid namespaces before any SQL runs', async () => {
    const conn = open(':memory:');
    for (const ns of ['', 'a b', 'x"; DROP TABLE t; --', 'sqlite_x', 'a.b', 'ü', 'n'.repeat(129)]) {
      await expect(SqliteBus.open(conn, { namespace: ns })).rejects.toBeInstanceOf(ValidationError);
    }
    expect(conn.all(`SELECT name FROM sqlite_schema`)).toEqual([]);
    conn.close();
  });

  it('enforces what it can with CHECK constraints', async () => {
    const { conn, cleanup } = await makeBus();
    const insert = (kind: string, name: string | null, headers: string) =>
      conn.run(
        `INSERT INTO bus_queue (id, name, kind, encoding, payload, content_type, headers, created_at, available_at, due_at)
         VALUES (?, ?, ?, 'json', '1', 'application/json', ?, 0, 0, 0)`,
        [`r-${Math.random()}`, name, kind, headers],
      );
    expect(() => insert('bogus', 'n', '{}')).toThrow(/CHECK/);
    expect(() => insert('command', null, '{}')).toThrow(/CHECK/);
    expect(() => insert('command', '', '{}')).toThrow(/CHECK/);
    expect(() => insert('command', 'n', '{bad')).toThrow(/CHECK/);
    expect(() => conn.run(`UPDATE bus_queue SET attempts = -1`)).not.toThrow(); // no rows
    await cleanup();
  });
});

describe('SqliteBus: corrupt rows', () => {
  it('good rows are handled, corrupt ones dead-lettered with the decode error, nothing blocks', async () => {
    const { bus, conn, cleanup } = await makeBus('file');
    await bus.send('good', 1);
    // Corrupt rows, written with raw SQL past the CHECK constraints.
    conn.exec('PRAGMA ignore_check_constraints = ON');
    const raw = (id: string, name: string | null, kind: string, headers: string, payload: string) =>
      conn.run(
        `INSERT INTO bus_queue (id, name, kind, encoding, payload, content_type, headers, created_at, available_at, due_at)
         VALUES (?, ?, ?, 'json', ?, 'application/json', ?, 1, 1, 1)`,
        [id, name, kind, payload, headers],
      );
    raw('bad-kind', 'good', 'bogus', '{}', '1');
    await bus.send('good', 2);
    raw('bad-headers', 'good', 'command', '{not json', '1');
    raw('missing-name', null, 'command', '{}', '1');
    raw('bad-payload', 'good', 'command', '{}', '{truncated');
    raw('headers-not-strings', 'good', 'command', '{"a":1}', '1');
    conn.exec('PRAGMA ignore_check_constraints = OFF');
    await bus.send('good', 3);
    const seen: number[] = [];
    const w = bus.listen({ good: (m) => void seen.push(m.payload as number) }, { pollInterval: 10 });
    await w.drain();
    await w.stop();
    expect(seen.sort()).toEqual([1, 2, 3]);
    expect(w.counters.deadLettered).toBe(5);
    const dead = await bus.deadLetters();
    const byId = new Map(dead.map((d) => [d.raw.id, d]));
    expect(byId.get('bad-kind')?.reason).toMatch(/decode error: bad kind "bogus"/);
    expect(byId.get('bad-headers')?.reason).toMatch(/decode error: bad headers JSON/);
    expect(byId.get('missing-name')?.reason).toMatch(/decode error: missing name/);
    expect(byId.get('bad-payload')?.reason).toMatch(/decode error: bad payload JSON/);
    expect(byId.get('headers-not-strings')?.reason).toMatch(/not a string/);
    for (const d of dead) {
      expect(d.message).toBeNull();
      expect(d.decodeError).toBeTruthy();
      expect(d.raw.payload).toBeDefined(); // the whole row is kept verbatim
    }
    const stats = await bus.stats();
    expect(stats.queue.good?.ready ?? 0).toBe(0);
    await cleanup();
  });

  it('corrupt events are dead-lettered for the group and the offset moves past them', async () => {
    const { bus, conn, cleanup } = await makeBus();
    await bus.publish('e', 1);
    conn.exec('PRAGMA ignore_check_constraints = ON');
    conn.run(
      `INSERT INTO bus_log (id, name, kind, encoding, payload, content_type, headers, created_at, available_at)
       VALUES ('bad-ev', 'e', 'command', 'json', '1', 'application/json', '{}', 1, 1)`,
    );
    conn.exec('PRAGMA ignore_check_constraints = OFF');
    await bus.publish('e', 2);
    const seen: number[] = [];
    const w = bus.subscribe('g', { e: (m) => void seen.push(m.payload as number) }, { pollInterval: 10 });
    await w.drain();
    await w.stop();
    expect(seen).toEqual([1, 2]);
    const [d] = await bus.deadLetters({ group: 'g' });
    expect(d?.reason).toMatch(/bad kind "command"/);
    await until(async () => (await bus.stats()).groups.g?.lag === 0, 2000, 'lag 0');
    expect((await bus.stats()).groups.g).toMatchObject({ offset: 3, lag: 0, dead: 1 });
    await cleanup();
  });
});

describe('SqliteBus: outbox and exactly-once effects', () => {
  it('send inside a transaction that rolls back leaves no message; one that commits does', async () => {
    const { bus, conn, cleanup } = await makeBus();
    conn.exec('CREATE TABLE orders (id INTEGER PRIMARY KEY)');
    const h = conn.connect();
    await expect(
      h.transaction(
        async (tx) => {
          tx.run('INSERT INTO orders (id) VALUES (1)');
          await bus.send('order.ship', { order: 1 }, { conn: tx });
          await bus.publish('order.placed', { order: 1 }, { conn: tx });
          throw new Error('roll back');
        },
        { mode: 'concurrent' },
      ),
    ).rejects.toThrow('roll back');
    let stats = await bus.stats();
    expect(stats.queue).toEqual({});
    expect(stats.events).toBe(0);
    expect(conn.all('SELECT * FROM orders')).toEqual([]);

    const seen: unknown[] = [];
    const w = bus.listen({ 'order.ship': (m) => void seen.push(m.payload) }, { pollInterval: 60_000 });
    await w.drain();
    await h.transaction(
      async (tx) => {
        tx.run('INSERT INTO orders (id) VALUES (2)');
        await bus.send('order.ship', { order: 2 }, { conn: tx });
        await bus.publish('order.placed', { order: 2 }, { conn: tx });
        await sleep(5);
      },
      { mode: 'concurrent' },
    );
    // the idle worker (polling once a minute) is woken by the commit, not by a poll
    await until(() => seen.length === 1, 10_000, 'the outbox command');
    expect(seen).toEqual([{ order: 2 }]);
    stats = await bus.stats();
    expect(stats.events).toBe(1);
    await w.stop();
    h.close();
    await cleanup();
  });

  it('pessimistic (immediate) transactions work as an outbox too', async () => {
    const { bus, conn, cleanup } = await makeBus('file');
    const h = conn.connect();
    await h.transaction(
      async (tx) => {
        for (let i = 0; i < 100; i++) await bus.send('batch', i, { conn: tx });
      },
      { mode: 'immediate' },
    );
    expect((await bus.stats()).queue.batch?.ready).toBe(100);
    h.close();
    await cleanup();
  });

  it('commit order: two transactions publish, commit in reverse order, a subscriber drains between: nothing skipped', async () => {
    const { bus, conn, cleanup } = await makeBus();
    const t1 = conn.connect();
    const t2 = conn.connect();
    const seen: string[] = [];
    const w = bus.subscribe('reader', { e: (m) => void seen.push(m.payload as string) }, { pollInterval: 10 });
    await w.drain();
    t1.exec('BEGIN CONCURRENT');
    t2.exec('BEGIN CONCURRENT');
    await bus.publish('e', 'first-written', { conn: t1 });
    await bus.publish('e', 'second-written', { conn: t2 });
    t2.exec('COMMIT');
    await until(() => seen.length === 1, 10_000, 'the first commit');
    await w.drain();
    expect(seen).toEqual(['second-written']);
    expect((await bus.stats()).groups.reader?.offset).toBe(1);
    t1.exec('COMMIT');
    await until(() => seen.length === 2, 10_000, 'the second commit');
    await w.drain();
    expect(seen).toEqual(['second-written', 'first-written']);
    await w.stop();
    // positions follow commit order
    const rows = conn.all<{ pos: number; payload: string }>('SELECT pos, payload FROM bus_log ORDER BY pos');
    expect(rows).toEqual([
      { pos: 1, payload: '"second-written"' },
      { pos: 2, payload: '"first-written"' },
    ]);
    t1.close();
    t2.close();
    await cleanup();
  });

  it('commit order with commands: a keyed command committed late is still handled', async () => {
    const { bus, conn, cleanup } = await makeBus();
    const t1 = conn.connect();
    const seen: number[] = [];
    const w = bus.listen({ c: (m) => void seen.push(m.payload as number) }, { pollInterval: 10 });
    t1.exec('BEGIN CONCURRENT');
    await bus.send('c', 1, { conn: t1, key: 'k' });
    await bus.send('c', 2, { key: 'k' });
    await until(() => seen.length === 1, 10_000, 'the committed one');
    t1.exec('COMMIT');
    await until(() => seen.length === 2, 10_000, 'the late one');
    expect(seen).toEqual([2, 1]);
    await w.stop();
    t1.close();
    await cleanup();
  });

  it('handler writes through context.conn take effect exactly once, even when a frozen holder wakes up late', async () => {
    const { bus, conn, cleanup } = await makeBus();
    conn.exec('CREATE TABLE effects (msg TEXT NOT NULL, n INTEGER NOT NULL)'); // no UNIQUE: duplicates would show
    for (let i = 0; i < 5; i++) await bus.send('fx', i, { id: `fx-${i}` });
    // A "frozen" holder: claims with a short lease and does not renew it (as a paused process would not).
    const frozen = [];
    for (let i = 0; i < 5; i++) frozen.push((await bus.receive({ lease: 20 }))!);
    await sleep(40);
    const w = bus.listen({ fx: (m, { conn: tx }) => void tx.run('INSERT INTO effects (msg, n) VALUES (?, ?)', [m.id, m.attempts]) }, { pollInterval: 5 });
    await w.drain();
    await w.stop();
    // The frozen holder wakes up and tries to apply its effects with its ack: refused, rolled back.
    for (const d of frozen) {
      const h = conn.connect();
      await expect(
        h.transaction(
          async (tx) => {
            tx.run('INSERT INTO effects (msg, n) VALUES (?, ?)', [d.message.id, d.message.attempts]);
            await d.ack({ conn: tx });
          },
          { mode: 'concurrent' },
        ),
      ).rejects.toBeInstanceOf(StaleClaimError);
      h.close();
    }
    const rows = conn.all<{ msg: string; c: number; n: number }>('SELECT msg, count(*) AS c, max(n) AS n FROM effects GROUP BY msg');
    expect(rows).toHaveLength(5);
    expect(rows.every((r) => r.c === 1 && r.n === 2)).toBe(true);
    expect((await bus.stats()).queue.fx?.ready ?? 0).toBe(0);
    await cleanup();
  });

  it('a handler can send follow-up messages in its own transaction', async () => {
    const { bus, cleanup } = await makeBus();
    const done: string[] = [];
    const w = bus.listen(
      {
        first: async (m, { conn }) => {
          await bus.send('second', m.payload, { conn, headers: { 'causation-id': m.id } });
        },
        second: (m) => void done.push(m.headers['causation-id'] ?? ''),
      },
      { pollInterval: 60_000 },
    );
    await bus.send('first', 1, { id: 'cause' });
    await until(() => done.length === 1, 10_000, 'second');
    expect(done).toEqual(['cause']);
    await w.stop();
    await cleanup();
  });
});

describe('SqliteBus: groups and dead letters', () => {
  it('several workers per group share its events; each event once per group', async () => {
    const { bus, cleanup } = await makeBus();
    const counts = new Map<string, Map<number, number>>();
    const make = (group: string) => (m: Message) => {
      const g = counts.get(group) ?? new Map<number, number>();
      counts.set(group, g);
      g.set(m.payload as number, (g.get(m.payload as number) ?? 0) + 1);
    };
    const workers = ['a', 'a', 'b', 'b', 'b'].map((g) => bus.subscribe(`g-${g}`, { e: make(g) }, { concurrency: 3, pollInterval: 10 }));
    for (let i = 0; i < 100; i++) await bus.publish('e', i);
    await until(() => (counts.get('a')?.size ?? 0) === 100 && (counts.get('b')?.size ?? 0) === 100, 20_000, 'all events');
    await Promise.all(workers.map((w) => w.stop()));
    for (const g of ['a', 'b']) expect([...counts.get(g)!.values()].every((n) => n === 1)).toBe(true);
    await until(async () => (await bus.stats()).groups['g-a']?.offset === 100, 5_000, 'offset a');
    await cleanup();
  });

  it('replaying a dead event delivers it again to that group only', async () => {
    const { bus, cleanup } = await makeBus();
    let fail = true;
    const a: number[] = [];
    const b: number[] = [];
    const wa = bus.subscribe(
      'ga',
      {
        e: (m) => {
          if (fail) throw new Error('down');
          a.push(m.payload as number);
        },
      },
      { maxAttempts: 1, pollInterval: 10 },
    );
    const wb = bus.subscribe('gb', { e: (m) => void b.push(m.payload as number) }, { pollInterval: 10 });
    await bus.publish('e', 7, { id: 'ev-7' });
    await until(() => wa.counters.deadLettered === 1 && b.length === 1, 10_000, 'dead + b');
    fail = false;
    const [d] = await bus.deadLetters({ group: 'ga' });
    expect(d?.message?.id).toBe('ev-7');
    expect(await bus.replayDeadLetter(d!.deadId)).toBe(true);
    expect(await bus.replayDeadLetter(d!.deadId)).toBe(false);
    await until(() => a.length === 1, 10_000, 'replayed');
    await wb.drain();
    expect(a).toEqual([7]);
    expect(b).toEqual([7]);
    await wa.stop();
    await wb.stop();
    await cleanup();
  });

  it('progress callbacks and counters report what happened', async () => {
    const { bus, cleanup } = await makeBus();
    const events: string[] = [];
    const w = bus.listen(
      { ok: () => {}, fail: () => Promise.reject(new Error('x')) },
      { maxAttempts: 2, backoff: 1, pollInterval: 10, onUnknown: 'ack', onEvent: (e) => events.push(e.type) },
    );
    await bus.send('ok', 1);
    await bus.send('fail', 1);
    await bus.send('nobody', 1);
    await until(() => w.counters.deadLettered === 1 && w.counters.handled === 1 && w.counters.unknown === 1, 10_000, 'counters');
    await w.stop();
    expect(w.counters).toMatchObject({ handled: 1, retried: 1, deadLettered: 1, unknown: 1, inFlight: 0 });
    expect(events.sort()).toEqual(['dead', 'handled', 'retry', 'unknown']);
    await cleanup();
  });

  it('bus.close() stops its workers and later calls fail with BusClosedError', async () => {
    const { bus, conn } = await makeBus();
    const w = bus.listen({ x: () => {} });
    await bus.close();
    await w.stop();
    await expect(bus.send('x', 1)).rejects.toThrow(/closed/);
    expect(conn.isOpen).toBe(true);
    conn.close();
  });
});
