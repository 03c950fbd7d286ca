import { describe, it } from 'vitest';
import { busConformance } from '../../bus/test/conformance/index.js';
import { makePgBus, serverProblem } from './helpers.js';

const problem = await serverProblem();
if (problem === null) {
  busConformance(makePgBus, 'PgBus on PostgreSQL', { sqliteConn: false });
} else {
  console.warn(`[siblite/bus-postgres] SKIPPING the PostgreSQL conformance suite: ${problem}`);
  describe.skip(`Bus conformance: PgBus on PostgreSQL (skipped: ${problem})`, () => {
    it('needs a PostgreSQL server', () => {});
  });
}
