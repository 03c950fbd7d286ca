import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { makeBus, sleep } from './helpers.js';

const WORKER = fileURLToPath(new URL('./fixtures/proc-worker.mjs', import.meta.url));

function spawnWorker(file: string, lease: number, mode = 'queue'): Promise<ChildProcess> {
  return new Promise((resolve, reject) => {
    const child = fork(WORKER, [file, String(lease), mode], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    child.once('message', () => resolve(child));
    child.once('error', reject);
    child.once('exit', (code, signal) => reject(new Error(`worker exited early: ${code ?? signal}`)));
  });
}

function exited(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve();
    else child.once('exit', () => resolve());
  });
}

describe('SqliteBus: several processes on one file', () => {
  it('exactly-once effects while 4 processes drain 2,000 commands and are SIGKILLed at random', async () => {
    const N = 2_000;
    const LEASE = 1_000;
    const { bus, conn, path, cleanup } = await makeBus('file');
    conn.exec('CREATE TABLE effects (msg TEXT NOT NULL, pid INTEGER NOT NULL, grp TEXT)'); // no UNIQUE: duplicates would show
    const h = conn.connect();
    await h.transaction(
      async (tx) => {
        for (let i = 0; i < N; i++) await bus.send('fx', i, { id: `fx-${i}`, conn: tx });
      },
      { mode: 'immediate' },
    );
    h.close();

    const children = new Set<ChildProcess>();
    const start = async () => {
      const c = await spawnWorker(path, LEASE);
      children.add(c);
      c.once('exit', () => children.delete(c));
    };
    await Promise.all([1, 2, 3, 4].map(start));
    let kills = 0;
    const t0 = Date.now();
    const deadline = Date.now() + 75_000;
    const remaining = () =>
      conn.get<{ n: number }>(`SELECT count(*) AS n FROM bus_queue WHERE state IN ('ready', 'inflight')`)?.n ?? -1;
    const read = async <T>(fn: () => T): Promise<T> => {
      for (;;) {
        try {
          return fn();
        } catch (e) {
          if ((e as { retryable?: boolean }).retryable) {
            await sleep(5);
            continue;
          }
          throw e;
        }
      }
    };
    // kill a random worker every 200-500 ms while a good part of the work remains
    while ((await read(remaining)) > N / 4 && kills < 8 && Date.now() < deadline) {
      await sleep(200 + Math.random() * 300);
      const victims = [...children];
      const victim = victims[Math.floor(Math.random() * victims.length)];
      if (victim) {
        victim.kill('SIGKILL');
        kills++;
        await exited(victim);
        await start();
      }
    }
    const progress = () => process.env.BUS_TEST_DEBUG && console.log(`t=${Date.now() - t0} ms kills=${kills} remaining=${remaining()}`);
    progress();
    while ((await read(remaining)) > 0 && Date.now() < deadline) {
      await sleep(50);
      if (Math.random() < 0.1) await read(progress);
    }
    await read(progress);
    for (const c of children) c.kill('SIGTERM');
    await Promise.all([...children].map(exited));

    expect(kills).toBeGreaterThan(0);
    expect(await read(remaining)).toBe(0);
    const effects = await read(() => conn.get<{ total: number; uniq: number }>('SELECT count(*) AS total, count(DISTINCT msg) AS uniq FROM effects'));
    expect(effects).toEqual({ total: N, uniq: N });
    const handled = await read(() => conn.get<{ n: number }>(`SELECT count(*) AS n FROM bus_queue WHERE state = 'done'`)?.n);
    expect(handled).toBe(N);
    expect(await bus.deadLetters()).toEqual([]);
    const pids = await read(() => conn.get<{ n: number }>('SELECT count(DISTINCT pid) AS n FROM effects')?.n ?? 0);
    expect(pids).toBeGreaterThan(1);
    await cleanup();
  }, 120_000);

  it('two groups, two processes each, read every event once per group while a third process publishes', async () => {
    const { bus, conn, path, cleanup } = await makeBus('file');
    conn.exec('CREATE TABLE effects (msg TEXT NOT NULL, pid INTEGER NOT NULL, grp TEXT)');
    const children = await Promise.all(['ga', 'ga', 'gb', 'gb'].map((g) => spawnWorker(path, 2_000, g)));
    const N = 300;
    for (let i = 0; i < N; i++) await bus.publish('ev', i, { id: `ev-${i}` });
    const counts = async () => {
      for (;;) {
        try {
          return conn.all<{ grp: string; total: number; uniq: number }>(
            'SELECT grp, count(*) AS total, count(DISTINCT msg) AS uniq FROM effects GROUP BY grp ORDER BY grp',
          );
        } catch (e) {
          if (!(e as { retryable?: boolean }).retryable) throw e;
          await sleep(5);
        }
      }
    };
    const deadline = Date.now() + 40_000;
    while (Date.now() < deadline) {
      const c = await counts();
      if (c.length === 2 && c.every((r) => r.uniq === N)) break;
      await sleep(50);
    }
    for (const c of children) c.kill('SIGTERM');
    await Promise.all(children.map(exited));
    expect(await counts()).toEqual([
      { grp: 'ga', total: N, uniq: N },
      { grp: 'gb', total: N, uniq: N },
    ]);
    const stats = await bus.stats();
    expect(stats.groups.ga).toMatchObject({ offset: N, lag: 0 });
    expect(stats.groups.gb).toMatchObject({ offset: N, lag: 0 });
    await cleanup();
  }, 60_000);
});
