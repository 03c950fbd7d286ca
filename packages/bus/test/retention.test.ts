import { describe, expect, it } from 'vitest';
import { open } from '@siblite/core';
import { SqliteBus, ValidationError } from '../src/index.js';
import { makeBus, sleep, until } from './helpers.js';

describe('SqliteBus: retention', () => {
  it('trim removes events every group has passed, never the newest; with no group only by age', async () => {
    const { bus, conn, cleanup } = await makeBus();
    for (let i = 0; i < 10; i++) await bus.publish('e', i);
    expect(await bus.trim()).toEqual({ events: 0, groupsSkipped: 0 }); // no group yet: a new one may start at the beginning
    const fast = bus.subscribe('fast', { e: () => {} }, { pollInterval: 5 });
    await fast.drain();
    await fast.stop();
    const slow: number[] = [];
    const w = bus.subscribe('slow', { e: (m) => void slow.push(m.payload as number) }, { pollInterval: 5 });
    // 'slow' stops after settling some of them
    await until(() => slow.length >= 1, 5_000, 'slow started');
    await w.stop();
    const offset = (await bus.stats()).groups.slow!.offset;
    const trimmed = await bus.trim();
    expect(trimmed.events).toBe(offset); // everything at or below the slowest group's offset
    expect(conn.get<{ m: number }>('SELECT min(pos) AS m FROM bus_log')?.m).toBe(offset + 1);
    // 'slow' still gets every event after its offset
    const rest: number[] = [];
    const w2 = bus.subscribe('slow', { e: (m) => void rest.push(m.payload as number) }, { pollInterval: 5 });
    await w2.drain();
    await w2.stop();
    expect([...slow, ...rest].sort((a, b) => a - b)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    expect((await bus.trim()).events).toBe(10 - offset - 1); // the newest is kept
    expect(conn.get<{ n: number }>('SELECT count(*) AS n FROM bus_log')?.n).toBe(1);
    await bus.publish('e', 10);
    const seen: number[] = [];
    const w3 = bus.subscribe('fast', { e: (m) => void seen.push(m.payload as number) }, { pollInterval: 5 });
    await w3.drain();
    await w3.stop();
    expect(seen).toEqual([10]); // positions did not restart
    await cleanup();
  });

  it('trim by age moves a group that is behind past what it removed; deleteGroup unpins the log', async () => {
    const { bus, conn, cleanup } = await makeBus();
    for (let i = 0; i < 5; i++) await bus.publish('e', i);
    const g = await bus.receive({ group: 'laggard' });
    await g!.ack();
    await sleep(30);
    await bus.publish('e', 5);
    const r = await bus.trim({ maxAge: 20 });
    expect(r.events).toBe(5);
    expect(r.groupsSkipped).toBe(1);
    const d = await bus.receive({ group: 'laggard' });
    expect(d?.message.payload).toBe(5);
    await d!.ack();
    // a forgotten group pins the log until it is deleted
    await bus.receive({ group: 'forgotten' });
    for (let i = 0; i < 3; i++) await bus.publish('e', i);
    expect((await bus.trim()).events).toBe(0);
    expect(await bus.deleteGroup('forgotten')).toBe(true);
    expect(await bus.deleteGroup('forgotten')).toBe(false);
    expect((await bus.stats()).groups.forgotten).toBeUndefined();
    await until(async () => (await bus.stats()).groups.laggard?.lag === 3 || true, 1_000);
    for (;;) {
      const x = await bus.receive({ group: 'laggard' });
      if (!x) break;
      await x.ack();
    }
    await until(async () => (await bus.stats()).groups.laggard?.lag === 0, 5_000, 'laggard caught up');
    expect((await bus.trim()).events).toBeGreaterThan(0);
    expect(conn.get<{ n: number }>('SELECT count(*) AS n FROM bus_gstate')?.n).toBe(0);
    await cleanup();
  });

  it('prune forgets handled, cancelled, and (when asked) dead commands: the dedupe window', async () => {
    const { bus, cleanup } = await makeBus();
    await bus.send('x', 1, { id: 'done-1' });
    await bus.send('x', 1, { id: 'dead-1' });
    await bus.send('x', 1, { id: 'cancel-1', delay: 60_000 });
    await (await bus.receive())!.ack();
    await (await bus.receive())!.deadLetter('no');
    await bus.cancel('cancel-1');
    expect((await bus.send('x', 2, { id: 'done-1' })).stored).toBe(false); // inside the window
    await sleep(20);
    expect(await bus.prune(10)).toEqual({ commands: 2, deadLetters: 0 });
    expect((await bus.send('x', 2, { id: 'done-1' })).stored).toBe(true);
    expect((await bus.send('x', 2, { id: 'cancel-1' })).stored).toBe(true);
    expect((await bus.send('x', 2, { id: 'dead-1' })).stored).toBe(false); // dead rows stay unless asked
    expect(await bus.prune(10, { dead: 10 })).toEqual({ commands: 1, deadLetters: 1 });
    expect(await bus.deadLetters()).toEqual([]);
    expect((await bus.send('x', 2, { id: 'dead-1' })).stored).toBe(true);
    await expect(bus.prune(-1)).rejects.toBeInstanceOf(ValidationError);
    await cleanup();
  });

  it('automatic retention runs on a timer of SqliteBus.open', async () => {
    const conn = open(':memory:');
    const bus = await SqliteBus.open(conn, { logger: null, retention: { every: 20, done: 10 } });
    await bus.send('x', 1, { id: 'r-1' });
    await (await bus.receive())!.ack();
    await until(async () => (await bus.get('r-1')) === undefined, 5_000, 'pruned by the timer');
    await bus.close();
    await expect(SqliteBus.open(conn, { retention: { every: -1 } })).rejects.toBeInstanceOf(ValidationError);
    conn.close();
  });
});

describe('SqliteBus: schedules', () => {
  it('an interval schedule fires each slot exactly once, with two schedulers on one file', async () => {
    const { bus, path, cleanup } = await makeBus('file');
    const conn2 = open(path);
    const other = await SqliteBus.open(conn2, { logger: null });
    const info = await bus.schedule('tick', { every: 1_000, name: 'tick.run', payload: { hello: 1 } });
    expect(info.nextAt.getTime() % 1_000).toBe(0);
    const seen: string[] = [];
    const w1 = bus.listen({ 'tick.run': (m) => void seen.push(m.id) }, { pollInterval: 20 });
    const w2 = other.listen({ 'tick.run': (m) => void seen.push(m.id) }, { pollInterval: 20 });
    // both buses' schedulers (one process, one engine) race for every slot; each hammers it a few
    // extra times (across real processes: multiprocess.test.ts)
    const extra = setInterval(() => {
      void bus.fireSchedules().catch(() => {});
      void other.fireSchedules().catch(() => {});
    }, 50);
    await until(() => seen.length >= 3, 10_000, 'three slots');
    clearInterval(extra);
    await w1.stop();
    await w2.stop();
    expect(new Set(seen).size).toBe(seen.length); // no slot twice
    const slots = seen.map((id) => Number(id.split(':')[2]));
    for (let i = 1; i < slots.length; i++) expect(slots[i]! - slots[i - 1]!).toBe(1_000);
    expect(await bus.unschedule('tick')).toBe(true);
    expect(await bus.schedules()).toEqual([]);
    await other.close();
    conn2.close();
    await cleanup();
  });

  it('cron expressions fire on their slots; bad specs are refused', async () => {
    const { bus, cleanup } = await makeBus();
    await bus.schedule('every-second', { cron: '* * * * * *', name: 'c.run' });
    const list = await bus.schedules();
    expect(list).toHaveLength(1);
    expect(list[0]).toMatchObject({ schedule: 'every-second', name: 'c.run', cron: '* * * * * *', every: null });
    const got: string[] = [];
    const w = bus.listen({ 'c.run': (m) => void got.push(m.id) }, { pollInterval: 20 });
    await until(() => got.length >= 2, 10_000, 'two cron slots');
    await w.stop();
    expect(got.every((id) => id.startsWith('schedule:every-second:'))).toBe(true);
    for (const spec of [
      { cron: 'not a cron', name: 'a' },
      { cron: '* * * * *', every: 5_000, name: 'a' },
      { every: 10, name: 'a' },
      { name: 'a' },
      { every: 5_000, name: 'bad name' },
      { cron: '* * * * *', name: 'a', timezone: 'Nowhere/Atlantis' },
    ]) {
      await expect(bus.schedule('s', spec as never), JSON.stringify(spec)).rejects.toBeInstanceOf(ValidationError);
    }
    await expect(bus.schedule('bad name', { every: 5_000, name: 'a' })).rejects.toBeInstanceOf(ValidationError);
    expect((await bus.schedules()).map((s) => s.schedule)).toEqual(['every-second']);
    await cleanup();
  });
});
