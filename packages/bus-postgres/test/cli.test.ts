// The `siblite` binary of @siblite/bus, run for real on a PostgreSQL bus (`postgres://` URL):
// it loads @siblite/bus-postgres at run time (resolved from the current directory's project,
// here this package), and never creates a bus.
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { PgBus } from '../src/index.js';
import { PG_URL, dropSchema, freshSchema, serverProblem } from './helpers.js';

const problem = await serverProblem();
if (problem !== null) console.warn(`[siblite/bus-postgres] SKIPPING the PostgreSQL CLI tests: ${problem}`);
const suite = problem === null ? describe : describe.skip;

const here = dirname(fileURLToPath(import.meta.url));
const pkgDir = join(here, '..');
const busDir = join(pkgDir, '..', 'bus');
const bin = join(busDir, (JSON.parse(readFileSync(join(busDir, 'package.json'), 'utf8')) as { bin: { siblite: string } }).bin.siblite);

function siblite(...args: string[]): { code: number | null; out: string; err: string } {
  const r = spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', timeout: 30_000, cwd: pkgDir });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

/** A schema with some commands (one dead, one parked), events and a group; the bus is closed again. */
async function fixture(): Promise<{ schema: string; cleanup(): Promise<void> }> {
  const schema = freshSchema();
  const bus = await PgBus.open({ connection: PG_URL, schema, logger: null });
  await bus.send('email.send', { to: 'a' }, { id: 'ok-1' });
  await bus.send('billing.charge', { amount: 5 }, { id: 'charge-1' });
  await bus.send('billing.charge', { amount: 7 }, { id: 'charge-2' });
  await bus.send('later', 1, { delay: 3_600_000 });
  await (await bus.receive({ names: ['billing.charge'] }))!.deadLetter('card declined');
  await (await bus.receive({ names: ['billing.charge'] }))!.park('ask a person');
  for (let i = 0; i < 5; i++) await bus.publish('order.placed', i);
  const w = bus.subscribe('audit', { 'order.placed': () => {} }, { pollInterval: 5 });
  await w.drain();
  await w.stop();
  await bus.close();
  return { schema, cleanup: () => dropSchema(schema) };
}

suite(`siblite CLI on a PostgreSQL bus${problem === null ? '' : ` (skipped: ${problem})`}`, () => {
  it('stats, dead (list, show, replay, purge) and trim on a postgres:// URL', async () => {
    const f = await fixture();
    try {
      const text = siblite('bus', 'stats', PG_URL, '--schema', f.schema);
      expect(text.err).toBe('');
      expect(text.code).toBe(0);
      expect(text.out).toMatch(/billing\.charge\s+0\s+0\s+0\s+1\s+1/);
      expect(text.out).toMatch(/later\s+0\s+1\s+0\s+0\s+0/);
      expect(text.out).toMatch(/audit\s+5\s+0/);
      const s = JSON.parse(siblite('bus', 'stats', PG_URL, '--schema', f.schema, '--json').out) as { queue: Record<string, { ready: number }>; events: number };
      expect(s.queue['email.send']?.ready).toBe(1);
      expect(s.events).toBe(5);

      const list = JSON.parse(siblite('bus', 'dead', PG_URL, '--schema', f.schema, '--json').out) as { deadId: number; id: string; status: string }[];
      expect(list.map((d) => [d.id, d.status])).toEqual([
        ['charge-1', 'dead'],
        ['charge-2', 'parked'],
      ]);
      const show = siblite('bus', 'dead', PG_URL, '--schema', f.schema, 'show', String(list[0]!.deadId));
      expect(show.out).toMatch(/reason: card declined/);
      expect(show.out).toMatch(/payload: \{"amount":5\}/);
      expect(siblite('bus', 'dead', PG_URL, '--schema', f.schema, 'replay', String(list[0]!.deadId)).out).toMatch(/replayed 1/);
      expect(siblite('bus', 'dead', PG_URL, '--schema', f.schema, 'purge').code).toBe(2);
      expect(siblite('bus', 'dead', PG_URL, '--schema', f.schema, 'purge', '--status', 'parked').out).toMatch(/purged 1/);

      const trimmed = siblite('bus', 'trim', PG_URL, '--schema', f.schema, '--json');
      expect(trimmed.code).toBe(0);
      expect(JSON.parse(trimmed.out)).toMatchObject({ events: 4, groupsSkipped: 0 }); // the newest is kept

      const bus = await PgBus.open({ connection: PG_URL, schema: f.schema, logger: null });
      try {
        expect((await bus.get('charge-1'))?.state).toBe('ready'); // replayed
        expect(await bus.get('charge-2')).toBeUndefined(); // purged: the id is free again
        expect(await bus.deadLetters()).toEqual([]);
      } finally {
        await bus.close();
      }
    } finally {
      await f.cleanup();
    }
  });

  it('a schema without a bus exits 1 and is not created; mixed-up options exit 2', async () => {
    const schema = freshSchema();
    try {
      const missing = siblite('bus', 'stats', PG_URL, '--schema', schema);
      expect(missing.code).toBe(1);
      expect(missing.err).toMatch(/no bus in schema/);
      const again = siblite('bus', 'stats', PG_URL, '--schema', schema);
      expect(again.code).toBe(1); // still none: the first run created nothing
      expect(siblite('bus', 'stats', PG_URL, '--namespace', 'bus').code).toBe(2);
      expect(siblite('bus', 'stats', PG_URL, '--schema', 'pg_nope').code).toBe(2);
    } finally {
      await dropSchema(schema);
    }
  });
});
