/**
 * Serializability across processes: three processes (this one and two children), several
 * sibling handles each, run `transaction()`s with awaits on one file. Every committed
 * read-modify-write is logged with the value it read: no two committed transactions may read
 * the same value of a counter (a lost update), the counters must equal their logs, and the
 * write-skew invariant (a + b >= 0, each transaction decrements one of them only when the sum
 * it read is positive) must hold.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { beforeAll, describe, expect, it } from 'vitest';
import { open } from '../../src/index.js';
import { coreDir, ensureBuilt } from '../fixtures/harness.js';

beforeAll(() => ensureBuilt(), 120_000);

const WORK = `
export async function work(open, groupCommitStats, file, tag, handles, perHandle) {
  const db = open(file);
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  await Promise.all(Array.from({ length: handles }, async (_, i) => {
    const h = db.connect();
    for (let n = 0; n < perHandle; n++) {
      const id = 1 + ((n + i) % 3);
      // Each call logs its id and attempt: a call whose ledger row is there twice committed twice.
      let attempt = 0;
      await h.transaction(async (tx) => {
        attempt++;
        const { v } = tx.get('SELECT v FROM counter WHERE id = ?', [id]);
        await sleep(Math.random() * 3);
        tx.run('UPDATE counter SET v = ? WHERE id = ?', [v + 1, id]);
        tx.run('INSERT INTO ledger (cid, seen, who) VALUES (?, ?, ?)', [id, v, tag + '-' + i + '-' + n + '#' + attempt]);
        const { a, b } = tx.get('SELECT (SELECT v FROM skew WHERE k = 1) AS a, (SELECT v FROM skew WHERE k = 2) AS b');
        await sleep(Math.random() * 2);
        if (a + b > 0) tx.run('UPDATE skew SET v = v - 1 WHERE k = ?', [1 + (n % 2)]);
      }, { retry: { retries: 1000, minTimeout: 1, maxTimeout: 20, maxElapsedMs: 60000 } });
    }
    h.close();
  }));
  const { outside } = groupCommitStats(db);
  db.close();
  return outside;
}`;

/** `pnpm fuzz --stress N` runs N rounds with more handles; CI runs one small round. */
const RUNS = Number(process.env.SIBLITE_STRESS_RUNS ?? 1);
const HANDLES = RUNS > 1 ? 6 : 3;
const PER_HANDLE = RUNS > 1 ? 12 : 6;

/** Runs {@link WORK} in a child process; resolves with its group-commit `outside` count. */
function child(file: string, tag: string, handles: number, perHandle: number): Promise<number> {
  const dist = pathToFileURL(join(coreDir, 'dist', 'index.js')).href;
  const script = `const { open, groupCommitStats } = await import(${JSON.stringify(dist)});
    const { work } = await import('data:text/javascript,' + encodeURIComponent(${JSON.stringify(WORK)}));
    process.stdout.write(String(await work(open, groupCommitStats, ${JSON.stringify(file)}, ${JSON.stringify(tag)}, ${handles}, ${perHandle})));`;
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    p.stdout.on('data', (d) => (out += d));
    p.stderr.on('data', (d) => (err += d));
    p.on('exit', (code) => (code === 0 ? resolve(Number(out)) : reject(new Error(`child ${tag} exited ${code}: ${err}`))));
  });
}

describe('adversarial: serializability across processes', () => {
  it(`no lost update, no write skew, no call committed twice: three processes on one file (${RUNS} round${RUNS > 1 ? 's' : ''})`, async () => {
    const dist = await import(pathToFileURL(join(coreDir, 'dist', 'index.js')).href);
    const { work } = await import(`data:text/javascript,${encodeURIComponent(WORK)}`);
    for (let round = 0; round < RUNS; round++) {
      const dir = mkdtempSync(join(tmpdir(), 'siblite-adv-proc-'));
      const file = join(dir, 'db.sqlite');
      try {
        const db = open(file);
        db.exec(
          'CREATE TABLE counter (id INTEGER PRIMARY KEY, v INT NOT NULL); INSERT INTO counter VALUES (1, 0), (2, 0), (3, 0);' +
            'CREATE TABLE ledger (id INTEGER PRIMARY KEY, cid INT, seen INT, who TEXT);' +
            'CREATE TABLE skew (k INTEGER PRIMARY KEY, v INT NOT NULL); INSERT INTO skew VALUES (1, 5), (2, 5);',
        );
        const outside = await Promise.all([
          child(file, 'c1', HANDLES, PER_HANDLE),
          child(file, 'c2', HANDLES, PER_HANDLE),
          work(dist.open, dist.groupCommitStats, file, 'main', HANDLES, PER_HANDLE),
        ]);
        const ledger = db.all<{ cid: number; seen: number; who: string }>('SELECT cid, seen, who FROM ledger ORDER BY cid, seen');
        const calls = new Map<string, string[]>();
        for (const r of ledger) {
          const call = r.who.split('#')[0] as string;
          calls.set(call, [...(calls.get(call) ?? []), r.who]);
        }
        // Every call committed exactly once: no call is missing, none is there twice.
        expect({ round, twice: [...calls.values()].filter((w) => w.length > 1) }).toEqual({ round, twice: [] });
        expect(calls.size).toBe(3 * HANDLES * PER_HANDLE);
        for (const id of [1, 2, 3]) {
          const seen = ledger.filter((r) => r.cid === id).map((r) => r.seen);
          expect(seen).toEqual(seen.map((_v, i) => i)); // each value read by exactly one committed transaction
          expect(db.get('SELECT v FROM counter WHERE id = ?', [id])).toEqual({ v: seen.length });
        }
        const { s } = db.get<{ s: number }>('SELECT sum(v) AS s FROM skew')!;
        expect(s).toBeGreaterThanOrEqual(0);
        // No commit group had its real transaction committed behind its back (see CommitGroup.checkAlive).
        expect(outside).toEqual([0, 0, 0]);
        db.close();
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    }
  }, 120_000 * RUNS);
});
