/**
 * Property: BEGIN CONCURRENT histories are serializable (see property/history.ts for the
 * programs, the operations and the oracle). CI runs a modest number of seeds; `pnpm fuzz` runs
 * many more through the same file (SIBLITE_FUZZ_RUNS, SIBLITE_FUZZ_SEED, SIBLITE_FUZZ_PROCESS_RUNS).
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { commitAsync, groupCommitStats, open } from '../src/index.js';
import { historyArb, runHistory, SCHEMA } from './property/history.js';
import { processHistoryArb, withOtherProcess } from './property/processes.js';
import { digestPolicy } from '../src/engine/row-digest.js';

const runs = Number(process.env.SIBLITE_FUZZ_RUNS ?? 150);
const processRuns = Number(process.env.SIBLITE_FUZZ_PROCESS_RUNS ?? 8);
const groupRuns = Number(process.env.SIBLITE_FUZZ_GROUP_RUNS ?? 25);
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

  it.skipIf(groupRuns === 0)('the same on a file with group commit: commits of several handles applied in one real transaction', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'siblite-prop-group-'));
    let n = 0;
    const grouped = { groups: 0, committed: 0, conflicts: 0, stacked: 0 };
    try {
      await fc.assert(
        fc.asyncProperty(historyArb, async ([programs, schedule]) => {
          // A window of a few ms: the scheduler steps one handle per turn, so groups span steps.
          const db = open(join(dir, `g${++n}.db`), { groupCommit: { window: 3 } });
          try {
            db.exec(SCHEMA);
            await runHistory(programs, schedule, { db, commit: commitAsync });
            const st = groupCommitStats(db);
            // Nothing but the group ever committed its members' real transaction.
            expect(st.outside).toBe(0);
            grouped.groups += st.groups;
            grouped.committed += st.committed;
            grouped.conflicts += st.conflicts;
            grouped.stacked += st.stacked;
          } finally {
            db.close();
          }
        }),
        params(groupRuns),
      );
      // The histories did exercise groups of several transactions (and conflicts inside them).
      if (process.env.SIBLITE_FUZZ_VERBOSE) console.log('group commit in the property:', grouped);
      expect(grouped.committed).toBeGreaterThan(grouped.groups);
      expect(grouped.stacked).toBeGreaterThan(0); // transactions ran on top of pending members
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
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
