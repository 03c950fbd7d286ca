// Kysely transactions that await: 32 request handlers, each running Kysely transactions that
// read its own row, await 2 ms, write its own row. @siblite/kysely (a sibling handle per Kysely
// connection, BEGIN CONCURRENT, retryTransaction) vs Kysely's stock SqliteDialect on
// better-sqlite3 (one connection behind Kysely's mutex).
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { interleaved, sleep } from '../lib/measure.mjs';
import { loadBetterSqlite3, loadSiblite } from '../lib/peers.mjs';

export const name = 'kysely';
export const title = 'Kysely transactions that await';
const HANDLERS = 32;
export const workload =
  `${HANDLERS} handlers side by side; each runs a series of Kysely transactions: select its own row, \`await\` 2 ms, ` +
  'update its own row (`n = n_read + 1`), commit. `:memory:`. ' +
  '*@siblite/kysely*: `new Kysely({ dialect: new SibliteDialect({ database: open(":memory:") }) })`, each transaction ' +
  '`retryTransaction(db, fn)` (BEGIN CONCURRENT, a sibling handle per Kysely connection). ' +
  "*Kysely SqliteDialect + better-sqlite3*: Kysely's stock dialect, `db.transaction().execute(fn)` (one connection behind Kysely's mutex). " +
  'Figures: committed transactions per second. Every run checks that every row holds exactly its number of commits.';
export const ratio = 'committed tx/s of @siblite/kysely vs Kysely SqliteDialect on better-sqlite3.';
export const target = '@siblite/kysely >= 5x the stock dialect.';

const require = createRequire(import.meta.url);

/** A package's version, for packages whose exports hide package.json. */
function packageVersion(pkg) {
  let dir = dirname(require.resolve(pkg));
  for (;;) {
    try {
      const json = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8'));
      if (json.name === pkg) return json.version;
    } catch {}
    const up = dirname(dir);
    if (up === dir) return 'unknown';
    dir = up;
  }
}

export async function run({ quick, log }) {
  const notes = [];
  const versions = {};
  const failures = [];
  const perHandler = quick ? 2 : 15;
  const rounds = quick ? 2 : 7;
  const { Kysely, SqliteDialect } = await import('kysely');
  versions.kysely = packageVersion('kysely');

  async function workload(db) {
    await db.schema.createTable('acct').addColumn('id', 'integer', (c) => c.primaryKey()).addColumn('n', 'integer', (c) => c.notNull()).execute();
    await db.insertInto('acct').values(Array.from({ length: HANDLERS }, (_, i) => ({ id: i + 1, n: 0 }))).execute();
  }
  async function verify(db, label) {
    const rows = await db.selectFrom('acct').select(['id', 'n']).execute();
    const wrong = rows.filter((r) => Number(r.n) !== perHandler);
    if (wrong.length || rows.length !== HANDLERS) failures.push(`${label}: ${wrong.length} rows differ from ${perHandler}`);
  }
  const body = (i) => async (trx) => {
    const { n } = await trx.selectFrom('acct').select('n').where('id', '=', i).executeTakeFirstOrThrow();
    await sleep(2);
    await trx.updateTable('acct').set({ n: n + 1 }).where('id', '=', i).execute();
  };
  async function timed(db, runTx, label) {
    try {
      await workload(db);
      const t0 = performance.now();
      await Promise.all(
        Array.from({ length: HANDLERS }, async (_, k) => {
          for (let j = 0; j < perHandler; j++) await runTx(body(k + 1));
        }),
      );
      const elapsed = performance.now() - t0;
      await verify(db, label);
      return (HANDLERS * perHandler) / (elapsed / 1000);
    } finally {
      await db.destroy();
    }
  }

  const cases = [];
  const sib = await loadSiblite(['open']);
  if (sib.ok) {
    const { SibliteDialect, retryTransaction } = await import('@siblite/kysely');
    versions['@siblite/kysely'] = sib.version;
    cases.push({
      id: 'siblite',
      label: '@siblite/kysely, BEGIN CONCURRENT',
      run: () => {
        const db = new Kysely({ dialect: new SibliteDialect({ database: sib.open(':memory:') }) });
        return timed(db, (fn) => retryTransaction(db, fn, { retries: 10_000, maxTimeout: 10 }), 'siblite');
      },
    });
  } else notes.push(`@siblite/kysely skipped: ${sib.reason}`);
  const b = loadBetterSqlite3();
  if (b.ok) {
    versions['better-sqlite3'] = b.version;
    cases.push({
      id: 'stock',
      label: 'Kysely SqliteDialect + better-sqlite3 (mutex)',
      run: () => {
        const db = new Kysely({ dialect: new SqliteDialect({ database: new b.Database(':memory:') }) });
        return timed(db, (fn) => db.transaction().execute(fn), 'stock');
      },
    });
  } else notes.push(b.reason);
  for (const n of notes) log(`note: ${n}`);
  log(`${cases.length} cases, ${HANDLERS} handlers x ${perHandler} transactions, ${rounds} interleaved rounds (+1 warm-up)`);
  const samples = await interleaved({ rounds, warmup: 1, cases, log });
  const figures = cases.map((c) => ({ id: `tps:${c.id}`, group: 'committed tx/s', peer: c.label, unit: 'tx/s', samples: samples.get(c.id) }));
  const ratios = cases.length === 2 ? [{ label: '@siblite/kysely / stock Kysely SqliteDialect (better-sqlite3)', num: 'tps:siblite', den: 'tps:stock', target: 5 }] : [];
  const checks = [
    failures.length
      ? { ok: false, message: `rows wrong after the runs: ${failures.slice(0, 3).join(' | ')}` }
      : { ok: true, message: `every run ended with every row at exactly ${perHandler}` },
  ];
  return { name, title, workload, ratio, target, rounds, figures, ratios, notes, checks, versions };
}
