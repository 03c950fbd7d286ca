/**
 * The maintenance conformance suite: retention (trim, prune, deleteGroup, automatic
 * retention) and schedules, which every transport offers beyond the `Bus` interface. Each
 * transport runs it with a fixture that can also open a second bus on the same storage (as
 * another process would) and read two storage facts the API does not expose.
 */
import { describe, expect, it } from 'vitest';
import { ValidationError, type Bus, type PruneResult, type RetentionOptions, type ScheduleInfo, type ScheduleSpec, type TrimResult } from '../../src/index.js';

/** The maintenance API both transports implement. */
export interface MaintainedBus extends Bus<any> {
  trim(options?: { maxAge?: number }): Promise<TrimResult>;
  prune(olderThan: number, options?: { dead?: number }): Promise<PruneResult>;
  deleteGroup(group: string, options?: { deadLetters?: boolean }): Promise<boolean>;
  schedule(schedule: string, spec: ScheduleSpec): Promise<ScheduleInfo>;
  unschedule(schedule: string): Promise<boolean>;
  schedules(): Promise<ScheduleInfo[]>;
  fireSchedules(): Promise<number>;
}

/** What a transport's factory returns. */
export interface MaintenanceFixture {
  bus: MaintainedBus;
  /** Opens another bus on the same storage (another process's view); closed by the caller. */
  other(): Promise<MaintainedBus>;
  /** Positions of the events stored in the log, ascending. */
  logPositions(): Promise<number[]>;
  /** Rows of per-group event state left in storage. */
  groupStateRows(): Promise<number>;
  cleanup(): Promise<void>;
}

/** Opens a bus with automatic retention (and cleans it up). */
export type OpenWithRetention = (retention: RetentionOptions) => Promise<{ bus: MaintainedBus; cleanup(): Promise<void> }>;

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

async function until(cond: () => boolean | Promise<boolean>, timeoutMs = 20_000, what = 'condition'): Promise<void> {
  const end = performance.now() + timeoutMs;
  while (!(await cond())) {
    if (performance.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

/** Registers the retention and schedule tests for one transport. */
export function maintenanceConformance(make: () => Promise<MaintenanceFixture>, openWithRetention: OpenWithRetention, label: string): void {
  describe(`Bus maintenance: ${label}: retention`, () => {
    it('trim removes events every group has passed, never the newest; with no group only by age', async () => {
      const { bus, logPositions, cleanup } = await make();
      try {
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
        expect((await logPositions())[0]).toBe(offset + 1);
        // 'slow' still gets every event after its offset
        const rest: number[] = [];
        const w2 = bus.subscribe('slow', { e: (m) => void rest.push(m.payload as number) }, { pollInterval: 5 });
        await w2.drain();
        await w2.stop();
        expect([...slow, ...rest].sort((a, b) => a - b)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
        expect((await bus.trim()).events).toBe(10 - offset - 1); // the newest is kept
        expect(await logPositions()).toHaveLength(1);
        await bus.publish('e', 10);
        const seen: number[] = [];
        const w3 = bus.subscribe('fast', { e: (m) => void seen.push(m.payload as number) }, { pollInterval: 5 });
        await w3.drain();
        await w3.stop();
        expect(seen).toEqual([10]); // positions did not restart
      } finally {
        await cleanup();
      }
    });

    it('trim by age moves a group that is behind past what it removed; deleteGroup unpins the log', async () => {
      const { bus, groupStateRows, cleanup } = await make();
      try {
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
        for (;;) {
          const x = await bus.receive({ group: 'laggard' });
          if (!x) break;
          await x.ack();
        }
        await until(async () => (await bus.stats()).groups.laggard?.lag === 0, 5_000, 'laggard caught up');
        expect((await bus.trim()).events).toBeGreaterThan(0);
        expect(await groupStateRows()).toBe(0);
      } finally {
        await cleanup();
      }
    });

    it('prune forgets handled, cancelled, and (when asked) dead commands: the dedupe window', async () => {
      const { bus, cleanup } = await make();
      try {
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
      } finally {
        await cleanup();
      }
    });

    it('automatic retention runs on a timer of the bus; a bad policy is refused', async () => {
      const { bus, cleanup } = await openWithRetention({ every: 20, done: 10 });
      try {
        await bus.send('x', 1, { id: 'r-1' });
        await (await bus.receive())!.ack();
        await until(async () => (await bus.get('r-1')) === undefined, 5_000, 'pruned by the timer');
      } finally {
        await cleanup();
      }
      await expect(openWithRetention({ every: -1 })).rejects.toBeInstanceOf(ValidationError);
    });
  });

  describe(`Bus maintenance: ${label}: schedules`, () => {
    it('an interval schedule fires each slot exactly once, with two schedulers racing', async () => {
      const { bus, other: openOther, cleanup } = await make();
      const other = await openOther();
      try {
        const info = await bus.schedule('tick', { every: 1_000, name: 'tick.run', payload: { hello: 1 } });
        expect(info.nextAt.getTime() % 1_000).toBe(0);
        const seen: string[] = [];
        const w1 = bus.listen({ 'tick.run': (m) => void seen.push(m.id) }, { pollInterval: 20 });
        const w2 = other.listen({ 'tick.run': (m) => void seen.push(m.id) }, { pollInterval: 20 });
        // both buses' schedulers race for every slot; each hammers it a few extra times (on SQLite
        // across real processes: multiprocess.test.ts)
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
      } finally {
        await other.close();
        await cleanup();
      }
    });

    it('cron expressions fire on their slots; bad specs are refused', async () => {
      const { bus, cleanup } = await make();
      try {
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
      } finally {
        await cleanup();
      }
    });
  });
}
