import { fork, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { makeBus, sleep, whenFree } from './helpers.js';

const WORKER = fileURLToPath(new URL('./fixtures/proc-worker.mjs', import.meta.url));

/** Every child started by this file, so a failing test never leaves workers behind. */
const spawned = new Set<ChildProcess>();
afterEach(() => {
  for (const c of spawned) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  spawned.clear();
});

function spawnWorker(file: string, lease: number, mode = 'queue', calls = '', concurrency = 8, env: NodeJS.ProcessEnv = {}): Promise<ChildProcess> {
  return new Promise((resolve, reject) => {
    const child = fork(WORKER, [file, String(lease), mode, String(concurrency), calls], {
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      env: { ...process.env, ...env },
    });
    spawned.add(child);
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
  // Effects keyed by a fresh id per handler call, or in a plain rowid table whose rowid SQLite
  // chooses (what most handlers do): two processes inserting at once are first handed the same
  // rowid; after one such conflict a process picks rowids in its own stripe (docs/concurrency.md).
  // No UNIQUE on msg either way: duplicates would show.
  it.each(['keyed', 'rowid'] as const)('exactly-once effects (%s table) and < 1.3 handler calls per message while 4 processes drain 200 commands and are SIGKILLed at random', async (kind) => {
    const N = 200;
    const LEASE = 1_000;
    const { bus, conn, path, dir, cleanup } = await makeBus('file');
    const calls = join(dir!, 'calls.txt');
    conn.exec(
      kind === 'keyed'
        ? 'CREATE TABLE effects (call TEXT PRIMARY KEY, msg TEXT NOT NULL, pid INTEGER NOT NULL, grp TEXT) WITHOUT ROWID'
        : 'CREATE TABLE effects (id INTEGER PRIMARY KEY, msg TEXT NOT NULL, pid INTEGER NOT NULL, grp TEXT)',
    );
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
      const c = await spawnWorker(path, LEASE, 'queue', calls, 4);
      children.add(c);
      c.once('exit', () => children.delete(c));
    };
    await Promise.all([1, 2, 3, 4].map(start));
    let kills = 0;
    const t0 = Date.now();
    const deadline = Date.now() + 75_000;
    const remaining = () =>
      conn.get<{ n: number }>(`SELECT count(*) AS n FROM bus_queue WHERE state IN ('ready', 'inflight')`)?.n ?? -1;
    // kill a random worker every 200-500 ms while a good part of the work remains
    while ((await whenFree(remaining)) > N / 4 && kills < 5 && Date.now() < deadline) {
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
    while ((await whenFree(remaining)) > 0 && Date.now() < deadline) {
      await sleep(50);
      if (Math.random() < 0.1) await whenFree(progress);
    }
    await whenFree(progress);
    for (const c of children) c.kill('SIGTERM');
    await Promise.all([...children].map(exited));

    expect(kills).toBeGreaterThan(0);
    expect(await whenFree(remaining)).toBe(0);
    const effects = await whenFree(() => conn.get<{ total: number; uniq: number }>('SELECT count(*) AS total, count(DISTINCT msg) AS uniq FROM effects'));
    expect(effects).toEqual({ total: N, uniq: N });
    const handled = await whenFree(() => conn.get<{ n: number }>(`SELECT count(*) AS n FROM bus_queue WHERE state = 'done'`)?.n);
    expect(handled).toBe(N);
    expect(await bus.deadLetters()).toEqual([]);
    const pids = await whenFree(() => conn.get<{ n: number }>('SELECT count(DISTINCT pid) AS n FROM effects')?.n ?? 0);
    expect(pids).toBeGreaterThan(1);
    // Handler calls per message: re-deliveries after a SIGKILL (the lease ran out) and reruns
    // after real conflicts only; a busy lock never runs a handler again.
    const lines = readFileSync(calls, 'utf8').trim().split('\n');
    const perMessage = lines.length / N;
    const reruns = lines.filter((l) => !l.endsWith(' 1')).length;
    if (process.env.BUS_TEST_DEBUG) console.log(`${kind}: calls=${lines.length} perMessage=${perMessage.toFixed(3)} reruns=${reruns} kills=${kills}`);
    expect(perMessage).toBeLessThan(1.3);
    await cleanup();
  }, 120_000);

  // A process paused while it holds the file lock keeps the file (core: a live holder), so the
  // others wait for it; paused between statements, it holds nothing and loses its lease.
  it.each([false, true])('a worker process paused (SIGSTOP) past its lease mid-handler, holding the file lock: %s; effects once', async (holding) => {
    const { bus, conn, path, dir, cleanup } = await makeBus('file');
    const calls = join(dir!, 'calls.txt');
    conn.exec('CREATE TABLE effects (id INTEGER PRIMARY KEY, msg TEXT NOT NULL, pid INTEGER NOT NULL, grp TEXT)');
    await bus.send('fx', 1, { id: 'paused-1' });
    const lines = () => (existsSync(calls) ? readFileSync(calls, 'utf8').trim().split('\n').filter(Boolean) : []);
    // A's handler inserts its row, then awaits 1.5 s (lease renewals included) before it commits.
    const a = await spawnWorker(path, 1_000, 'queue', calls, 1, { SLOW_HANDLER_MS: '1500' });
    try {
      const t0 = Date.now();
      while (lines().length < 1 && Date.now() - t0 < 20_000) await sleep(10);
      await sleep(100); // this process has not touched the file for a while: the lock is A's or free
      // Pause A at a moment when it does (or does not) hold the file lock.
      for (let tries = 0; ; tries++) {
        a.kill('SIGSTOP');
        await sleep(20);
        if (existsSync(`${path}.lock`) === holding) break;
        a.kill('SIGCONT');
        if (tries > 500) throw new Error('could not pause the worker in the wanted state');
        await sleep(Math.random() * 40);
      }
      const bReady = spawnWorker(path, 1_000, 'queue', calls, 1); // blocked at open while A holds the file
      await sleep(2_000); // A's lease has run out
      if (holding) expect(existsSync(`${path}.lock`)).toBe(true); // nobody could take the file from A
      else {
        await bReady; // B starts and takes the message over while A is still paused
        const until = Date.now() + 30_000;
        while ((await whenFree(() => conn.get<{ n: number }>(`SELECT count(*) AS n FROM bus_queue WHERE state = 'done'`)!.n)) < 1 && Date.now() < until) await sleep(50);
      }
      a.kill('SIGCONT');
      const b = await bReady;
      const deadline = Date.now() + 30_000;
      while ((await whenFree(() => conn.get<{ n: number }>(`SELECT count(*) AS n FROM bus_queue WHERE state = 'done'`)!.n)) < 1 && Date.now() < deadline) await sleep(50);
      await sleep(2_500); // A finishes its handler; if B took the message over, A's acknowledgement is refused
      for (const c of [a, b]) c.kill('SIGTERM');
      await Promise.all([a, b].map(exited));
      const effects = await whenFree(() => conn.all<{ msg: string; pid: number }>('SELECT msg, pid FROM effects'));
      expect(effects).toHaveLength(1);
      expect(effects[0]!.msg).toBe('paused-1');
      if (!holding) expect(effects[0]!.pid).toBe(b.pid);
      expect(await whenFree(() => conn.get<{ state: string }>(`SELECT state FROM bus_queue WHERE id = 'paused-1'`))).toEqual({ state: 'done' });
      if (process.env.BUS_TEST_DEBUG) console.log(`holding=${holding}: handled by ${effects[0]!.pid === a.pid ? 'A' : 'B'}, ${lines().length} calls`);
    } finally {
      a.kill('SIGCONT');
    }
    await cleanup();
  }, 90_000);

  it('a schedule fires each slot exactly once while three worker processes and this one race to fire it', async () => {
    const { bus, conn, path, cleanup } = await makeBus('file');
    conn.exec('CREATE TABLE effects (id INTEGER PRIMARY KEY, msg TEXT NOT NULL, pid INTEGER NOT NULL, grp TEXT)');
    await bus.schedule('tick', { every: 1_000, name: 'fx' });
    // Every listening process fires due schedules once a second; this one hammers too.
    const children = await Promise.all([1, 2, 3].map(() => spawnWorker(path, 2_000)));
    const extra = setInterval(() => void bus.fireSchedules().catch(() => {}), 100);
    const deadline = Date.now() + 30_000;
    while ((await whenFree(() => conn.get<{ n: number }>('SELECT count(*) AS n FROM effects')!.n)) < 4 && Date.now() < deadline) await sleep(100);
    clearInterval(extra);
    await bus.unschedule('tick');
    for (const c of children) c.kill('SIGTERM');
    await Promise.all(children.map(exited));
    const fired = await whenFree(() => conn.all<{ id: string }>(`SELECT id FROM bus_queue WHERE id LIKE 'schedule:tick:%' ORDER BY id`));
    const effects = await whenFree(() => conn.all<{ msg: string; n: number }>('SELECT msg, count(*) AS n FROM effects GROUP BY msg ORDER BY msg'));
    expect(fired.length).toBeGreaterThanOrEqual(4);
    // every slot sent once (its id is the slot) and handled once
    expect(effects.map((e) => e.msg)).toEqual(fired.map((f) => f.id));
    expect(effects.every((e) => e.n === 1)).toBe(true);
    const slots = fired.map((f) => Number(f.id.split(':')[2]));
    expect(slots.every((t) => t % 1_000 === 0)).toBe(true);
    await cleanup();
  }, 60_000);

  it('two groups, two processes each, read every event once per group while a third process publishes', async () => {
    const { bus, conn, path, cleanup } = await makeBus('file');
    conn.exec('CREATE TABLE effects (msg TEXT NOT NULL, pid INTEGER NOT NULL, grp TEXT)');
    const children = await Promise.all(['ga', 'ga', 'gb', 'gb'].map((g) => spawnWorker(path, 2_000, g)));
    const N = 80;
    for (let i = 0; i < N; i++) await bus.publish('ev', i, { id: `ev-${i}` });
    const counts = () =>
      whenFree(() =>
        conn.all<{ grp: string; total: number; uniq: number }>(
          'SELECT grp, count(*) AS total, count(DISTINCT msg) AS uniq FROM effects GROUP BY grp ORDER BY grp',
        ),
      );
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
