// Drives PgBus consume with W workers on N queued commands and prints client CPU per message.
// Usage: node [--cpu-prof] bench/pgcpu-profile.mjs [workers=16] [n=3000] [effect=0]
import pg from 'pg';
import { randomUUID } from 'node:crypto';
import { PgBus } from '@siblite/bus-postgres';
const W = Number(process.argv[2] ?? 16), N = Number(process.argv[3] ?? 3000), EFFECT = process.argv[4] === '1';
const URL = process.env.SIBLITE_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
const schema = `prof_${randomUUID().replaceAll('-', '').slice(0, 10)}`;
const bus = await PgBus.open({ connection: URL, schema, logger: null });
const admin = new pg.Client({ connectionString: URL });
await admin.connect();
if (EFFECT) await admin.query(`CREATE TABLE "${schema}".eff (i int)`);
await bus.sendMany(Array.from({ length: N }, (_, i) => ({ name: 'job', payload: { i } })));
let handled = 0;
const c0 = process.cpuUsage();
const t0 = performance.now();
const w = bus.listen({ job: async (m, ctx) => { if (EFFECT) await ctx.client.query(`INSERT INTO "${schema}".eff VALUES ($1)`, [m.payload.i]); handled++; } }, { concurrency: W });
await w.drain();
const ms = performance.now() - t0;
const cpu = process.cpuUsage(c0);
await w.stop();
console.log(`W=${W} N=${N} handled=${handled} ${(N / (ms / 1000)).toFixed(0)} msg/s; client CPU ${((cpu.user + cpu.system) / 1000 / N).toFixed(3)} ms/msg (user ${(cpu.user / 1000 / N).toFixed(3)})`);
await bus.close();
await admin.query(`DROP SCHEMA "${schema}" CASCADE`);
await admin.end();
