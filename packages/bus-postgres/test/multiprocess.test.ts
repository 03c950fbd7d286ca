/**
 * Workers in several processes on one PostgreSQL bus, SIGKILLed at random while they drain:
 * every command's effect is committed exactly once (0 lost, 0 doubled).
 */
import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { afterEach, describe, expect, it } from 'vitest';
import { PG_URL, makePgBus, serverProblem } from './helpers.js';

const WORKER = fileURLToPath(new URL('./fixtures/pg-worker.mjs', import.meta.url));
const problem = await serverProblem();
if (problem !== null) console.warn(`[siblite/bus-postgres] SKIPPING the multi-process test: ${problem}`);
const suite = problem === null ? describe : describe.skip;

const spawned = new Set<ChildProcess>();
afterEach(() => {
  for (const c of spawned) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  spawned.clear();
});

function spawnWorker(schema: string, lease: number, concurrency: number): Promise<ChildProcess> {
  return new Promise((resolve, reject) => {
    const child = fork(WORKER, [PG_URL, schema, String(lease), String(concurrency)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    spawned.add(child);
    child.once('message', () => resolve(child));
    child.once('error', reject);
    child.once('exit', (code, signal) => reject(new Error(`worker exited early: ${code ?? signal}`)));
  });
}

suite(`PgBus: workers in several processes${problem === null ? '' : ` (skipped: ${problem})`}`, () => {
  it('exactly-once effects while 4 processes drain 200 commands and are SIGKILLed at random', async () => {
    const N = 200;
    const LEASE = 1_000;
    const { bus, schema, cleanup } = await makePgBus();
    const admin = new pg.Client({ connectionString: PG_URL });
    await admin.connect();
    try {
      await admin.query(`CREATE TABLE "${schema}".effects (call text PRIMARY KEY, msg text NOT NULL, pid integer NOT NULL)`);
      for (let i = 0; i < N; i++) await bus.send('fx', i, { id: `fx-${i}` });
      const children = new Set<ChildProcess>();
      const start = async () => {
        const c = await spawnWorker(schema, LEASE, 4);
        children.add(c);
        c.once('exit', () => children.delete(c));
      };
      await Promise.all([1, 2, 3, 4].map(start));
      let kills = 0;
      const done = async () => (await admin.query(`SELECT count(*)::int AS n FROM "${schema}".queue WHERE state = 'done'`)).rows[0].n as number;
      const deadline = Date.now() + 45_000;
      while ((await done()) < N) {
        if (Date.now() > deadline) throw new Error(`timed out: ${await done()} of ${N} done`);
        await new Promise((r) => setTimeout(r, 100 + Math.random() * 150));
        if (kills < 8 && children.size > 0) {
          const victim = [...children][Math.floor(Math.random() * children.size)]!;
          victim.kill('SIGKILL');
          kills++;
          await start();
        }
      }
      for (const c of children) c.kill('SIGKILL');
      console.log(`[pg multiprocess] ${kills} SIGKILLs while draining ${N} commands`);
      const fx = await admin.query(`SELECT count(*)::int AS rows, count(DISTINCT msg)::int AS msgs FROM "${schema}".effects`);
      expect(kills).toBeGreaterThan(0);
      expect(fx.rows[0]).toEqual({ rows: N, msgs: N }); // 0 lost, 0 doubled
      expect((await bus.stats()).queue.fx?.dead ?? 0).toBe(0);
    } finally {
      await admin.end();
      await cleanup();
    }
  });
});
