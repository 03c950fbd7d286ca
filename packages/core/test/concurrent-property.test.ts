/**
 * Property: BEGIN CONCURRENT histories are serializable (see property/history.ts for the
 * programs, the operations and the oracle). CI runs a modest number of seeds; `pnpm fuzz` runs
 * many more through the same file (SIBLITE_FUZZ_RUNS, SIBLITE_FUZZ_SEED, SIBLITE_FUZZ_PROCESS_RUNS).
 */
import fc from 'fast-check';
import { describe, it } from 'vitest';
import { historyArb, runHistory } from './property/history.js';
import { processHistoryArb, withOtherProcess } from './property/processes.js';
import { digestPolicy } from '../src/engine/row-digest.js';

const runs = Number(process.env.SIBLITE_FUZZ_RUNS ?? 150);
const processRuns = Number(process.env.SIBLITE_FUZZ_PROCESS_RUNS ?? 8);
const seed = process.env.SIBLITE_FUZZ_SEED === undefined ? undefined : Number(process.env.SIBLITE_FUZZ_SEED);
const path = process.env.SIBLITE_FUZZ_PATH;
const timeout = Number(process.env.SIBLITE_FUZZ_TIMEOUT_MS ?? 240_000);

function params(numRuns: number): fc.Parameters<unknown> {
  return { numRuns, ...(seed === undefined ? {} : { seed }), ...(path ? { path } : {}), endOnFailure: process.env.SIBLITE_FUZZ_NO_SHRINK === '1' };
}

describe('BEGIN CONCURRENT is serializable (property)', () => {
  it.skipIf(runs === 0)('every committed history equals a serial execution in commit order, one handle per program', async () => {
    await fc.assert(
      fc.asyncProperty(historyArb, ([programs, schedule]) => runHistory(programs, schedule)),
      params(runs),
    );
  }, timeout);

  it.skipIf(runs === 0)('the same with every read of a concurrent transaction logged as a digest of its rows', async () => {
    const saved = digestPolicy.aboveRows;
    digestPolicy.aboveRows = 0;
    try {
      await fc.assert(
        fc.asyncProperty(historyArb, ([programs, schedule]) => runHistory(programs, schedule)),
        params(Math.ceil(runs / 3)),
      );
    } finally {
      digestPolicy.aboveRows = saved;
    }
  }, timeout);

  it.skipIf(processRuns === 0)('the same on a file while another process commits between the steps', async () => {
    await withOtherProcess(async (other) => {
      await fc.assert(
        fc.asyncProperty(processHistoryArb, ([programs, schedule, external]) => other.run(programs, schedule, external)),
        params(processRuns),
      );
    });
  }, timeout);
});
