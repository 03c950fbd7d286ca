import { describe, expect, it } from 'vitest';
import { makeBus } from './helpers.js';

describe('smoke', () => {
  it('send + listen + drain', async () => {
    const { bus, cleanup } = await makeBus();
    const seen: string[] = [];
    for (let i = 0; i < 10; i++) await bus.send('a.b', { i });
    const w = bus.listen({ 'a.b': async (m) => { seen.push(String((m.payload as any).i)); } }, { concurrency: 3 });
    await w.drain();
    expect(seen.length).toBe(10);
    expect(w.counters.handled).toBe(10);
    const s = await bus.stats();
    expect(s.queue['a.b']).toBeUndefined();
    await cleanup();
  });
  it('publish + subscribe', async () => {
    const { bus, cleanup } = await makeBus();
    for (let i = 0; i < 5; i++) await bus.publish('e', i);
    const seen: number[] = [];
    const w = bus.subscribe('g1', { e: (m) => { seen.push(m.payload as number); } });
    await w.drain();
    expect(seen).toEqual([0, 1, 2, 3, 4]);
    await bus.publish('e', 5);
    await w.drain();
    expect(seen).toEqual([0, 1, 2, 3, 4, 5]);
    await w.stop();
    const s = await bus.stats();
    expect(s.groups.g1).toMatchObject({ offset: 6, lag: 0 });
    await cleanup();
  });
});
