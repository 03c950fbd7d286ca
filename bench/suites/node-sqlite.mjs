// node:sqlite (built into Node 22.5+) as a peer: point selects on a file and in memory, and the
// 32-handler awaiting workload. The running Node 20 has no node:sqlite, so this suite runs its
// measurements (siblite and node:sqlite side by side, in one process) under Node 22: the
// running Node when it has node:sqlite, otherwise Node 22 from the npm registry, cached.
import { execFileSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { nodeWithSqlite } from '../lib/node22.mjs';

export const name = 'node-sqlite';
export const title = 'node:sqlite (Node 22) as a peer';
export const workload =
  'Under Node 22, in one process, interleaved rounds. *Point select*: table `t(id INTEGER PRIMARY KEY, v TEXT, n INT)` with 10,000 rows, ' +
  '`SELECT id, v, n FROM t WHERE id = ?` with pseudo-random ids, on a file and on `:memory:`; siblite `conn.get(sql, [id])`, node:sqlite a prepared ' +
  '`StatementSync.get(id)`. *32 handlers*: each runs transactions that read its own row, `await` 2 ms, write its own row, on a database file; ' +
  "siblite: sibling handles, `transaction(fn)` (BEGIN CONCURRENT), `synchronous: 'normal'` (journal DELETE: the engine has no WAL); node:sqlite: one `DatabaseSync` per handler, `journal_mode=WAL`, `synchronous=NORMAL`, " +
  '`timeout: 0`, `BEGIN IMMEDIATE` and a retry with full-jitter backoff (1..10 ms) on SQLITE_BUSY (a busy timeout would sleep synchronously and ' +
  'block the event loop the lock holder needs). Every run checks exact row values.';
export const ratio = 'siblite vs node:sqlite, per workload (point selects: ops/s; 32 handlers: committed tx/s).';
export const target = 'none: node:sqlite is native; this places siblite next to the no-build option built into Node.';

const here = dirname(fileURLToPath(import.meta.url));

export async function run({ quick, log }) {
  const node = nodeWithSqlite();
  if (!node.ok) {
    log(`note: ${node.reason}`);
    return { name, title, workload, ratio, target, rounds: 0, figures: [], ratios: [], notes: [node.reason], checks: [], versions: {} };
  }
  log(`measuring under ${node.version}${node.fetched ? ' (fetched from the npm registry, cached)' : ''}`);
  const out = execFileSync(node.node, ['--no-warnings', join(here, '..', 'lib', 'node-sqlite-worker.mjs'), quick ? 'quick' : 'full'], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
    maxBuffer: 64 * 1024 * 1024,
  });
  const lines = out.trim().split('\n');
  for (const l of lines.slice(0, -1)) log(l);
  const result = JSON.parse(lines.at(-1));
  result.versions = { ...result.versions, 'node (node:sqlite suite)': node.version };
  return { name, title, workload, ratio, target, ...result };
}
