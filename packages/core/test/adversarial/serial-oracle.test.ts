/**
 * The adversarial serializability checker (serial-checker.ts) on a modest number of seeds per
 * history kind. More seeds: `ADV_SEEDS=400 pnpm exec vitest run packages/core/test/adversarial/serial-oracle.test.ts`
 * (`ADV_FROM` picks the first seed; `ADV_DEBUG=1` prints every statement). The findings of
 * FINDINGS.md are fixed, so histories no longer steer around them.
 */
import { describe, expect, it } from 'vitest';
import { runHistory, type HistoryKind } from './serial-checker.js';

const SEEDS = Number(process.env.ADV_SEEDS ?? 15);
const FROM = Number(process.env.ADV_FROM ?? 1);

describe('adversarial serial oracle', () => {
  for (const kind of ['mixed', 'settings', 'lane', 'exotic', 'hot', 'span', 'evict'] as HistoryKind[]) {
    it(`${kind} histories are serializable`, async () => {
      let committed = 0;
      for (let seed = FROM; seed < FROM + SEEDS; seed++) {
        const r = await runHistory(seed, kind).catch((e: Error) => {
          throw new Error(`seed ${seed} (${kind}) threw: ${e.stack ?? e.message}`);
        });
        if (!r.ok) expect.fail(r.report);
        committed += r.committed;
      }
      console.log(`${kind}: ${SEEDS} histories, ${committed} committed units`);
    }, Math.max(170_000, SEEDS * (kind === 'evict' ? 2_000 : 300))); // 'evict' floods thousands of statements per history
  }
});
