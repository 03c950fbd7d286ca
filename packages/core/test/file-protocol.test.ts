/**
 * The lock protocol under hostile schedules, with real processes: a process killed (SIGKILL) or
 * paused (SIGSTOP) at every step of acquire, release and break, while others arrive; live locks
 * of another user and of another network namespace; worker threads terminated while they hold
 * the file. The children make themselves stop or die at a named step
 * (`SIBLITE_LOCK_TEST_STEP`, see src/file/lock.ts).
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
import { beforeAll, describe, expect, it } from 'vitest';
import { open } from '../src/index.js';
import { guardName, LOCK_PROTOCOL, self, type LockStep } from '../src/file/lock.js';
import { coreDir, ensureBuilt, runWorker, spawnWorker, UNPRIVILEGED, unprivilegedCanLoad } from './fixtures/harness.js';
import { useScope } from './helpers.js';

beforeAll(() => ensureBuilt(), 120_000);

const scope = useScope();

function makeDb(): string {
  const file = scope.file('p.db');
  const c = open(file);
  c.exec('CREATE TABLE t (id INTEGER PRIMARY KEY, who TEXT)');
  c.close();
  return file;
}

/** What a holder killed while it held the lock leaves: the directory with its owner record. */
function plantStale(file: string): void {
  mkdirSync(`${file}.lock`);
  const owner = { proto: LOCK_PROTOCOL, ...self, pid: 999_999_999, guard: guardName(file), token: 'killed', since: Date.now() };
  writeFileSync(`${file}.lock/owner`, JSON.stringify(owner));
}

/** One write by this process; it must get the file within `ms`. */
function writeHere(file: string, who: string, ms = 5000): void {
  const c = open(file, { busyTimeout: ms });
  try {
    c.run('INSERT INTO t (who) VALUES (?)', [who]);
  } finally {
    c.close();
  }
}

function rows(file: string): string[] {
  const c = open(file);
  try {
    expect(c.all('PRAGMA integrity_check')).toEqual([{ integrity_check: 'ok' }]);
    return c.all<{ who: string }>('SELECT who FROM t ORDER BY id').map((r) => r.who);
  } finally {
    c.close();
  }
}

/** The lock directory and its leftovers: nothing but the database may stay once all are done. */
function leftovers(file: string): string[] {
  const base = file.split('/').pop() as string;
  return readdirSync(dirname(file)).filter((n) => n.startsWith(`${base}.lock`) && n !== `${base}.lock-wait`);
}

async function stopped(pid: number): Promise<void> {
  for (let i = 0; i < 2000; i++) {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    if (stat.slice(stat.lastIndexOf(')') + 2).startsWith('T')) return;
    await new Promise((r) => setTimeout(r, 5));
  }
  throw new Error(`process ${pid} did not stop`);
}

const ACQUIRE: LockStep[] = ['acquire:guarded', 'acquire:prepared-empty', 'acquire:prepared', 'acquire:renamed'];
const RELEASE: LockStep[] = ['release:start', 'release:renamed', 'release:unguarded'];
const BREAK: LockStep[] = ['break:judged', 'break:renamed'];
const ALL = [...ACQUIRE, ...RELEASE, ...BREAK];

/** A child that writes one row (`who`), stopping or dying at `at`. Break steps need a stale lock first. */
function child(file: string, who: string, at: LockStep, action: 'kill' | 'stop') {
  if (at.startsWith('break:')) plantStale(file);
  return spawnWorker(
    { cmd: 'probe', file, options: { busyTimeout: 5000 }, sql: 'SELECT count(*) AS n FROM t', write: `INSERT INTO t (who) VALUES ('${who}')` },
    { env: { SIBLITE_LOCK_TEST_STEP: at, SIBLITE_LOCK_TEST_ACTION: action } },
  );
}

describe('a process killed at every step of acquire, release and break', () => {
  it.each(ALL)('killed at %s: the file is never wedged and never held twice', async (at) => {
    const file = makeDb();
    const c = child(file, 'killed', at, 'kill');
    expect(await c.exited).toBe('SIGKILL');
    // The next process gets the file (breaking what the dead one left, if anything) ...
    writeHere(file, 'next');
    // ... and so does the one after it (nothing half-broken stays behind).
    writeHere(file, 'after');
    const who = rows(file);
    expect(who.slice(-2)).toEqual(['next', 'after']);
    // The killed write is there only when it was killed after its commit (while releasing).
    expect(who.filter((w) => w === 'killed').length).toBe(at.startsWith('release:') ? 1 : 0);
    expect(leftovers(file)).toEqual([]);
  });
});

describe('a process paused at every step while a third one arrives', () => {
  it.each(ALL)('paused at %s: the newcomer waits (busy) and never takes the file; after SIGCONT both write', async (at) => {
    const file = makeDb();
    const b = child(file, 'paused', at, 'stop');
    try {
      await stopped(b.proc.pid as number);
      const lockBefore = existsSync(`${file}.lock`) ? readFileSync(`${file}.lock/owner`, 'utf8') : null;
      // The newcomer (case 1 of the issue: it used to judge the paused breaker abandoned by age).
      const c = await runWorker({ cmd: 'probe', file, options: { busyTimeout: 300 }, write: "INSERT INTO t (who) VALUES ('newcomer')" });
      // Paused after its guard was closed, the process holds nothing any more: the newcomer gets in.
      const holdsNothing = at === 'release:unguarded';
      expect(c.ok).toBe(holdsNothing);
      if (!holdsNothing) {
        expect(c.error.kind).toBe('busy');
        expect(c.error.message).toMatch(/held \(or being taken or freed\) by a live process/);
        // Nothing of the paused process was touched.
        expect(existsSync(`${file}.lock`) ? readFileSync(`${file}.lock/owner`, 'utf8') : null).toBe(lockBefore);
      }
      b.proc.kill('SIGCONT');
      expect(await b.next((m) => 'ok' in m)).toMatchObject({ ok: true });
      expect(await b.exited).toBe(0);
      writeHere(file, 'after');
      expect(rows(file)).toEqual(['paused', ...(holdsNothing ? ['newcomer'] : []), 'after']);
      expect(leftovers(file)).toEqual([]);
    } finally {
      b.proc.kill('SIGKILL');
    }
  });
});

describe('live locks are never broken', () => {
  it('a live holder running as another user (kill(pid, 0) answers EPERM): busy, never broken', async (ctx) => {
    if (process.getuid?.() !== 0 || !unprivilegedCanLoad()) {
      ctx.skip(); // needs root to start a child as another user
      return;
    }
    const dir = scope.dir();
    spawnSync('chmod', ['777', dir]);
    const file = join(dir, 'u.db');
    const h = spawnWorker({ cmd: 'hold', file }, UNPRIVILEGED);
    await h.next((m) => m.ready);
    let eperm = '';
    try {
      process.kill(h.proc.pid as number, 0);
    } catch (e) {
      eperm = (e as NodeJS.ErrnoException).code ?? '';
    }
    // As root kill(pid, 0) succeeds; what matters is that liveness is never read from pids.
    expect(['', 'EPERM']).toContain(eperm);
    const probe = await runWorker({ cmd: 'probe', file, options: { busyTimeout: 200 } }, UNPRIVILEGED);
    expect(probe).toMatchObject({ ok: false, error: { kind: 'busy' } });
    expect(probe.locks.staleBroken).toBe(0);
    const c = open(file, { busyTimeout: 200 });
    expect(() => c.get('SELECT 1 FROM sqlite_schema')).toThrow(/live process/);
    c.close();
    await h.kill9();
    // Dead now: proven by the guard, whoever the owner was.
    writeHere(file, 'after');
  });

  it('a live holder in another network namespace (a container): busy, never broken, even after it died', async (ctx) => {
    if (spawnSync('unshare', ['--net', 'true']).status !== 0) {
      ctx.skip(); // needs unshare(CLONE_NEWNET), i.e. root
      return;
    }
    const file = makeDb();
    const h = spawnWorker({ cmd: 'hold', file }, { wrapper: ['unshare', '--net'] });
    await h.next((m) => m.ready);
    const owner = JSON.parse(readFileSync(`${file}.lock/owner`, 'utf8'));
    expect(owner.netns).not.toBe(self.netns);
    const c = open(file, { busyTimeout: 200 });
    expect(() => c.get('SELECT 1 FROM sqlite_schema')).toThrow(/another network namespace/);
    await h.kill9();
    // No proof from here that it is gone (its guard lived in its own namespace): still refused.
    expect(() => c.get('SELECT 1 FROM sqlite_schema')).toThrow(/never breaks this lock/);
    expect(existsSync(`${file}.lock/owner`)).toBe(true);
    c.close();
  });
});

describe('worker threads', () => {
  it('worker.terminate() of a thread that held the file: the lock is proven stale and broken', async () => {
    const file = makeDb();
    const dist = pathToFileURL(join(coreDir, 'dist', 'index.js')).href;
    const w = new Worker(
      `const { parentPort, workerData } = require('node:worker_threads');
       import(workerData.dist).then(({ open }) => {
         const c = open(workerData.file, { locking: 'exclusive' });
         c.run("INSERT INTO t (who) VALUES ('thread')");
         parentPort.postMessage('holding');
         setInterval(() => {}, 1000);
       });`,
      { eval: true, workerData: { dist, file } },
    );
    await new Promise((resolve) => w.once('message', resolve));
    const c = open(file, { busyTimeout: 0 });
    expect(() => c.get('SELECT 1 FROM t')).toThrow(/live process/); // the thread is alive
    await w.terminate();
    expect(c.all('SELECT who FROM t')).toEqual([{ who: 'thread' }]);
    c.close();
  });
});

describe('the lock campaign (quick)', () => {
  it('random SIGKILLs and SIGSTOPs, also at protocol steps: every acknowledged commit stays, no wedge, nothing left', () => {
    const t0 = performance.now();
    const r = spawnSync(process.execPath, [join(coreDir, 'test', 'fixtures', 'lock-campaign.mjs'), '--quick', '--seconds', '5'], {
      encoding: 'utf8',
      timeout: 50_000,
    });
    // How it ended, with what it printed: status null alone does not tell a timeout (error
    // ETIMEDOUT, signal SIGTERM) from a crash (another signal). A writer that outlived the
    // campaign holding its stdout shows as ETIMEDOUT with status 0: a failure too.
    const how = { status: r.status, signal: r.signal, error: (r.error as NodeJS.ErrnoException | undefined)?.code };
    const report = `${JSON.stringify(how)} after ${Math.round(performance.now() - t0)} ms\nstdout:\n${r.stdout}\nstderr:\n${r.stderr.slice(-4000)}`;
    expect(r.stderr, report).not.toMatch(/FAILED/);
    expect(r.stdout, report).toMatch(/^ok: every acknowledged commit/m);
    expect(how, report).toEqual({ status: 0, signal: null, error: undefined });
  }, 60_000);
});
