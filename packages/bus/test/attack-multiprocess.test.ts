// Ordering keys with settling handlers (acknowledged in the write batch, their slot reused) and
// handlers writing through context.conn, in several processes SIGKILLed at random.
import { fork, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { makeBus, sleep, whenFree } from './helpers.js';

const WORKER = fileURLToPath(new URL('./fixtures/proc-keyed-worker.mjs', import.meta.url));
const spawned = new Set<ChildProcess>();
afterEach(() => {
  for (const c of spawned) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  spawned.clear();
});

function spawnWorker(file: string, lease: number, concurrency: number, calls: string): Promise<ChildProcess> {
  return new Promise((resolve, reject) => {
    const child = fork(WORKER, [file, String(lease), String(concurrency), calls], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    spawned.add(child);
    child.once('message', () => resolve(child));
    child.once('error', reject);
    child.once('exit', (code, signal) => reject(new Error(`worker exited early: ${code ?? signal}`)));
  });
}
const exited = (c: ChildProcess) => new Promise<void>((r) => (c.exitCode !== null || c.signalCode !== null ? r() : c.once('exit', () => r())));

describe('ordering keys across processes (file)', () => {
  it('no command of a key runs before the earlier ones are done; effects once; workers SIGKILLed at random', async () => {
    const N = 240;
    const { bus, conn, path, dir, cleanup } = await makeBus('file');
    const calls = join(dir!, 'calls.txt');
    conn.exec('CREATE TABLE effects (id INTEGER PRIMARY KEY, msg TEXT NOT NULL, pid INTEGER NOT NULL)');
    await bus.sendMany(Array.from({ length: N }, (_, i) => ({ name: 'fx', payload: i, id: `m${i}`, key: `k${i % 6}` })));
    const children = new Set<ChildProcess>();
    const start = async () => {
      const c = await spawnWorker(path, 800, 4, calls);
      children.add(c);
      c.once('exit', () => children.delete(c));
    };
    await Promise.all([1, 2, 3].map(start));
    const remaining = () => conn.get<{ n: number }>("SELECT count(*) AS n FROM bus_queue WHERE state IN ('ready', 'inflight')")!.n;
    const deadline = Date.now() + 80_000;
    let kills = 0;
    while ((await whenFree(remaining)) > N / 3 && kills < 4 && Date.now() < deadline) {
      await sleep(150 + Math.random() * 250);
      const victim = [...children][Math.floor(Math.random() * children.size)];
      if (victim) {
        victim.kill('SIGKILL');
        kills++;
        await exited(victim);
        await start();
      }
    }
    while ((await whenFree(remaining)) > 0 && Date.now() < deadline) await sleep(50);
    for (const c of children) c.kill('SIGTERM');
    await Promise.all([...children].map(exited));
    expect(kills).toBeGreaterThan(0);
    expect(await whenFree(remaining)).toBe(0);
    const lines = readFileSync(calls, 'utf8').trim().split('\n');
    expect(lines.filter((l) => !l.endsWith(' ok'))).toEqual([]);
    const effects = await whenFree(() => conn.get<{ total: number; uniq: number }>('SELECT count(*) AS total, count(DISTINCT msg) AS uniq FROM effects'));
    expect(effects).toEqual({ total: N / 2, uniq: N / 2 });
    await cleanup();
  }, 120_000);
});
