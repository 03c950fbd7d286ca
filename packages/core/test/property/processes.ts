/**
 * The two-process variant of the serializability property: the histories run on a database
 * file while a child process commits plain writes between the steps of the handles. Its
 * commits are part of the serial order at the moment they return.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { open } from '../../src/index.js';
import { ensureBuilt, coreDir } from '../fixtures/harness.js';
import { historyArb, key, plainWrite, runHistory, SCHEMA, type PlainWrite, type Program } from './history.js';

const plainArb: fc.Arbitrary<PlainWrite> = fc.oneof(
  fc.record({ t: fc.constant('put' as const), k: key, v: fc.integer({ min: 0, max: 99 }) }),
  fc.record({ t: fc.constant('add' as const), k: key, d: fc.integer({ min: -5, max: 5 }) }),
  fc.record({ t: fc.constant('del' as const), k: key }),
  fc.record({ t: fc.constant('setcfg' as const), x: fc.integer({ min: 0, max: 9 }) }),
);

/** Programs, an interleaving, and the other process's writes (taken in order when their turn comes). */
export const processHistoryArb = fc.tuple(
  historyArb.map(([p]) => p.slice(0, 4)),
  fc.array(fc.nat({ max: 7 }), { minLength: 3, maxLength: 30 }),
  fc.array(plainArb, { minLength: 1, maxLength: 6 }),
);

/** The child process, and running one history with it. */
export interface OtherProcess {
  run(programs: Program[], schedule: number[], writes: PlainWrite[]): Promise<void>;
}

/** Starts the child for the duration of `fn`. */
export async function withOtherProcess(fn: (other: OtherProcess) => Promise<void>): Promise<void> {
  ensureBuilt();
  const child = fork(join(coreDir, 'test', 'fixtures', 'sql-worker.mjs'), [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  let failed: ((e: Error) => void) | undefined;
  child.on('exit', (code) => failed?.(new Error(`the other process exited (${code})`)));
  const reply = () =>
    new Promise<any>((resolve, reject) => {
      failed = reject;
      child.once('message', resolve);
    });
  const ask = async (m: unknown) => {
    const r = reply();
    child.send(m as never);
    return r;
  };
  await reply(); // ready
  try {
    await fn({
      async run(programs, schedule, writes) {
        const dir = mkdtempSync(join(tmpdir(), 'siblite-prop-'));
        const file = join(dir, 'db.sqlite');
        const db = open(file);
        try {
          db.exec(SCHEMA);
          await ask({ open: file });
          let next = 0;
          await runHistory(programs, schedule, {
            db,
            external: async () => {
              const op = writes[next++];
              if (!op) return undefined;
              const [sql, params] = plainWrite(op);
              const r = await ask({ sql, params });
              if (r.error !== undefined) {
                if (r.kind === 'busy') return undefined; // refused: nothing committed
                return { op, saw: { error: r.error } };
              }
              return { op, saw: r.changes };
            },
          });
        } finally {
          await ask({ close: true });
          db.close();
          rmSync(dir, { recursive: true, force: true });
        }
      },
    });
  } finally {
    child.disconnect();
    await new Promise((r) => (child.exitCode !== null ? r(undefined) : child.once('exit', r)));
  }
}
