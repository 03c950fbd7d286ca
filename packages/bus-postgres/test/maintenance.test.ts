import pg from 'pg';
import { describe, it } from 'vitest';
import { maintenanceConformance } from '../../bus/test/conformance/maintenance.js';
import { PgBus } from '../src/index.js';
import { PG_URL, dropSchema, freshSchema, serverProblem } from './helpers.js';

const problem = await serverProblem();
if (problem === null) {
  maintenanceConformance(
    async () => {
      const schema = freshSchema();
      const bus = await PgBus.open({ connection: PG_URL, schema, logger: null });
      const others: PgBus[] = [];
      const count = async (sql: string) => {
        const c = new pg.Client({ connectionString: PG_URL });
        await c.connect();
        try {
          return (await c.query(sql)).rows;
        } finally {
          await c.end();
        }
      };
      return {
        bus,
        async other() {
          const o = await PgBus.open({ connection: PG_URL, schema, logger: null });
          others.push(o);
          return o;
        },
        logPositions: async () => (await count(`SELECT pos FROM "${schema}".log WHERE pos IS NOT NULL ORDER BY pos`)).map((r) => Number(r.pos)),
        groupStateRows: async () => Number((await count(`SELECT count(*) AS n FROM "${schema}".gstate`))[0].n),
        async cleanup() {
          for (const o of others) await o.close({ timeout: 1000 });
          await bus.close({ timeout: 1000 });
          await dropSchema(schema);
        },
      };
    },
    async (retention) => {
      const schema = freshSchema();
      try {
        const bus = await PgBus.open({ connection: PG_URL, schema, logger: null, retention });
        return {
          bus,
          async cleanup() {
            await bus.close({ timeout: 1000 });
            await dropSchema(schema);
          },
        };
      } catch (e) {
        await dropSchema(schema);
        throw e;
      }
    },
    'PgBus on PostgreSQL',
  );
} else {
  console.warn(`[siblite/bus-postgres] SKIPPING the PostgreSQL maintenance suite: ${problem}`);
  describe.skip(`Bus maintenance: PgBus on PostgreSQL (skipped: ${problem})`, () => {
    it('needs a PostgreSQL server', () => {});
  });
}
