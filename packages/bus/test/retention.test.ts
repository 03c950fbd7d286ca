import { open } from '@siblite/core';
import { SqliteBus } from '../src/index.js';
import { maintenanceConformance } from './conformance/maintenance.js';
import { makeBus } from './helpers.js';

// Retention and schedules, as every transport must offer them (the same suite runs against
// PostgreSQL in @siblite/bus-postgres), on a file so that a second bus is another handle.
maintenanceConformance(
  async () => {
    const f = await makeBus('file');
    const others: { conn: ReturnType<typeof open>; bus: SqliteBus }[] = [];
    return {
      bus: f.bus,
      async other() {
        const conn = open(f.path);
        const bus = await SqliteBus.open(conn, { logger: null });
        others.push({ conn, bus });
        return bus;
      },
      logPositions: async () => f.conn.all<{ pos: number }>('SELECT pos FROM bus_log WHERE pos IS NOT NULL ORDER BY pos').map((r) => r.pos),
      groupStateRows: async () => f.conn.get<{ n: number }>('SELECT count(*) AS n FROM bus_gstate')?.n ?? 0,
      async cleanup() {
        for (const o of others) {
          await o.bus.close();
          o.conn.close();
        }
        await f.cleanup();
      },
    };
  },
  async (retention) => {
    const conn = open(':memory:');
    try {
      const bus = await SqliteBus.open(conn, { logger: null, retention });
      return {
        bus,
        async cleanup() {
          await bus.close();
          conn.close();
        },
      };
    } catch (e) {
      conn.close();
      throw e;
    }
  },
  'SqliteBus',
);
