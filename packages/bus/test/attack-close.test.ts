import { describe, expect, it } from 'vitest';
import { open } from '@siblite/core';
import { SqliteBus } from '../src/index.js';
import { makeBus } from './helpers.js';

describe('close() with writes waiting in the batch (file)', () => {
  it('a send made just before close() is stored, or its promise rejects', async () => {
    const f = await makeBus('file');
    const sends = [f.bus.send('a', 1, { id: 's1' }), f.bus.sendMany([{ name: 'a', payload: 2, id: 's2' }])];
    const d = f.bus.receive({ lease: 60_000 });
    await f.bus.close();
    const r = await Promise.allSettled([...sends, d]);
    f.conn.close();
    const c2 = open(f.path);
    const stored = c2.all<{ id: string }>('SELECT id FROM bus_queue ORDER BY id').map((x) => x.id);
    c2.close();
    const said = [r[0]!.status === 'fulfilled' && 's1', r[1]!.status === 'fulfilled' && 's2'].filter(Boolean);
    expect(stored).toEqual(said);
  });
});
