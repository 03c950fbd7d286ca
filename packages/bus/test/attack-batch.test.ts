// Attacks on the bus's write batch on a file (src/sqlite/sends.ts, acks.ts, batch.ts).
import { afterEach, describe, expect, it } from 'vitest';
import { makeBus } from './helpers.js';

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
