// The `siblite` binary, run for real (the built dist, through the package's `bin` entry) on a
// real database file.
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { open } from '@siblite/core';
import { SqliteBus } from '../src/index.js';
import { makeBus } from './helpers.js';

const pkgDir = join(dirname(fileURLToPath(import.meta.url)), '..');
const bin = join(pkgDir, (JSON.parse(readFileSync(join(pkgDir, 'package.json'), 'utf8')) as { bin: { siblite: string } }).bin.siblite);

function siblite(...args: string[]): { code: number | null; out: string; err: string } {
  const r = spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', timeout: 30_000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

/** A file with some commands (one dead, one parked), events and a group; the bus is closed again. */
async function fixture() {
  const f = await makeBus('file');
  const { bus } = f;
  await bus.send('email.send', { to: 'a' }, { id: 'ok-1' });
  await bus.send('billing.charge', { amount: 5 }, { id: 'charge-1' });
  await bus.send('billing.charge', { amount: 7 }, { id: 'charge-2' });
  await bus.send('later', 1, { delay: 3_600_000 });
  const a = await bus.receive({ names: ['billing.charge'] });
  await a!.deadLetter('card declined');
  const b = await bus.receive({ names: ['billing.charge'] });
  await b!.park('ask a person');
  for (let i = 0; i < 5; i++) await bus.publish('order.placed', i);
  const w = bus.subscribe('audit', { 'order.placed': () => {} }, { pollInterval: 5 });
  await w.drain();
  await w.stop();
  await bus.close();
  f.conn.close(); // the file is the CLI's now (an open handle here would hold its lock)
  return f;
}

describe('siblite CLI (the real binary on a real file)', () => {
  it('bus stats: a table per name and group, or JSON', async () => {
    const f = await fixture();
    try {
      const text = siblite('bus', 'stats', f.path);
      expect(text.code).toBe(0);
      expect(text.out).toMatch(/command\s+ready\s+delayed\s+in flight\s+dead\s+parked\s+oldest/);
      expect(text.out).toMatch(/billing\.charge\s+0\s+0\s+0\s+1\s+1/);
      expect(text.out).toMatch(/later\s+0\s+1\s+0\s+0\s+0/);
      expect(text.out).toMatch(/audit\s+5\s+0/);
      const json = siblite('bus', 'stats', f.path, '--json');
      expect(json.code).toBe(0);
      const s = JSON.parse(json.out) as { queue: Record<string, { ready: number; dead: number }>; groups: Record<string, { offset: number; lag: number }>; events: number };
      expect(s.queue['email.send']?.ready).toBe(1);
      expect(s.groups.audit).toMatchObject({ offset: 5, lag: 0 });
      expect(s.events).toBe(5);
    } finally {
      await f.cleanup();
    }
  });

  it('bus dead: list with filters, show, replay, purge', async () => {
    const f = await fixture();
    try {
      const list = JSON.parse(siblite('bus', 'dead', f.path, '--json').out) as { deadId: number; id: string; status: string }[];
      expect(list.map((d) => [d.id, d.status])).toEqual([
        ['charge-1', 'dead'],
        ['charge-2', 'parked'],
      ]);
      const parked = JSON.parse(siblite('bus', 'dead', f.path, 'list', '--status', 'parked', '--json').out) as { id: string }[];
      expect(parked.map((d) => d.id)).toEqual(['charge-2']);
      expect(JSON.parse(siblite('bus', 'dead', f.path, '--name', 'email.send', '--json').out)).toEqual([]);
      const show = siblite('bus', 'dead', f.path, 'show', String(list[0]!.deadId));
      expect(show.code).toBe(0);
      expect(show.out).toMatch(/reason: card declined/);
      expect(show.out).toMatch(/payload: \{"amount":5\}/);
      expect(siblite('bus', 'dead', f.path, 'replay', String(list[0]!.deadId)).out).toMatch(/replayed 1/);
      // purge refuses without a filter; with one it deletes, and frees the id for a new send
      const refused = siblite('bus', 'dead', f.path, 'purge');
      expect(refused.code).toBe(2);
      expect(refused.err).toMatch(/give filters/);
      expect(siblite('bus', 'dead', f.path, 'purge', '--status', 'parked').out).toMatch(/purged 1/);
      expect(siblite('bus', 'dead', f.path, 'replay', '999').code).toBe(1);
      const conn = open(f.path);
      const bus = await SqliteBus.open(conn, { logger: null });
      expect((await bus.get('charge-1'))?.state).toBe('ready'); // replayed
      expect(await bus.get('charge-2')).toBeUndefined(); // purged: gone, id free again
      expect((await bus.send('billing.charge', { amount: 7 }, { id: 'charge-2' })).stored).toBe(true);
      expect(await bus.deadLetters()).toEqual([]);
      await bus.close();
      conn.close();
    } finally {
      await f.cleanup();
    }
  });

  it('bus trim removes events every group has passed; bad input exits 2, a missing file 1', async () => {
    const f = await fixture();
    try {
      const r = siblite('bus', 'trim', f.path, '--json');
      expect(r.code).toBe(0);
      expect(JSON.parse(r.out)).toMatchObject({ events: 4, groupsSkipped: 0 }); // the newest is kept
      expect(siblite('bus', 'trim', f.path, '--max-age', 'soon').code).toBe(2);
      expect(siblite('bus', 'stats').code).toBe(2);
      expect(siblite('bus', 'frobnicate', f.path).code).toBe(2);
      expect(siblite('bus', 'dead', f.path, '--source', 'elsewhere').code).toBe(2);
      const missing = siblite('bus', 'stats', join(f.dir!, 'nope.db'));
      expect(missing.code).toBe(1);
      expect(missing.err).toMatch(/no such file/);
      const other = siblite('bus', 'stats', f.path, '--namespace', 'other');
      expect(other.code).toBe(1);
      expect(other.err).toMatch(/no bus in namespace "other"/);
    } finally {
      await f.cleanup();
    }
  });
});
