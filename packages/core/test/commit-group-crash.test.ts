// Group commit survives SIGKILL: a child process runs many concurrent transaction()s on a file
// (their commits grouped), reporting each transaction's outcome after its promise settled; the
// parent kills it at a random moment, then checks that no resolved transaction is lost, no
// rejected one is present, the file is intact and a new opener can write.
// SIBLITE_CRASH_RUNS=N runs a longer campaign (default 3 kills, a few seconds).
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { beforeAll, describe, expect, it } from 'vitest';
import { open } from '../src/index.js';
import { ensureBuilt, spawnWorker } from './fixtures/harness.js';
import { useScope } from './helpers.js';

const scope = useScope();
const script = join(dirname(fileURLToPath(import.meta.url)), 'fixtures', 'group-commit-worker.mjs');
const RUNS = Number(process.env.SIBLITE_CRASH_RUNS ?? 3);

beforeAll(() => ensureBuilt(), 120_000);

describe('group commit and SIGKILL', () => {
  it(`${RUNS} random kills during grouped commits: resolved kept, rejected absent, integrity ok, not wedged`, async () => {
    for (let run = 0; run < RUNS; run++) {
      const file = scope.file(`crash-${run}.db`);
      const child = spawnWorker({ file, handlers: 8 + Math.floor(Math.random() * 24), window: run % 2 === 0 ? 0 : 2 }, { script });
      const target = 20 + Math.floor(Math.random() * 150);
      await child.next(() => child.messages.filter((m) => 'resolved' in m).length >= target, 30_000);
      await new Promise((r) => setTimeout(r, Math.random() * 20));
      await child.kill9();
      const resolved = child.messages.filter((m) => 'resolved' in m).map((m) => m.resolved as string);
      const rejected = child.messages.filter((m) => 'rejected' in m).map((m) => m.rejected as string);
      expect(resolved.length).toBeGreaterThanOrEqual(target);

      const db = open(file);
      try {
        const present = new Set(db.all<{ id: string }>('SELECT id FROM t').map((r) => r.id));
        const lost = resolved.filter((id) => !present.has(id));
        const ghosts = rejected.filter((id) => present.has(id));
        expect({ run, lost, ghosts }).toEqual({ run, lost: [], ghosts: [] });
        expect(db.all('PRAGMA integrity_check')).toEqual([{ integrity_check: 'ok' }]);
        expect(db.get<{ n: number }>('SELECT count(*) AS n FROM child')!.n).toBe(0); // every fk member failed
        db.run("INSERT INTO t (id) VALUES ('after-crash')"); // not wedged
        expect(db.get("SELECT id FROM t WHERE id = 'after-crash'")).toEqual({ id: 'after-crash' });
      } finally {
        db.close();
      }
      expect(existsSync(`${file}-journal`)).toBe(false);
    }
  }, 60_000 + RUNS * 10_000);
});
