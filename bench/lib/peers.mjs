// Loading the peers. Each loader returns { ok: true, ... } or { ok: false, reason } and never
// throws, so a suite can print a note and skip a peer that is missing on this machine.
import { createRequire } from 'node:module';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const require = createRequire(import.meta.url);

/** node-sqlite3-wasm: SQLite compiled to WebAssembly; the engine siblite runs on. */
export function loadWasm() {
  try {
    const mod = require('node-sqlite3-wasm');
    const version = require('node-sqlite3-wasm/package.json').version;
    return { ok: true, Database: mod.Database, version };
  } catch (e) {
    return { ok: false, reason: `node-sqlite3-wasm did not load: ${e.message}` };
  }
}

/** better-sqlite3 (native, built from source; optional dependency of the bench). */
export function loadBetterSqlite3() {
  try {
    const Database = require('better-sqlite3');
    const version = require('better-sqlite3/package.json').version;
    const probe = new Database(':memory:');
    const sqlite = probe.prepare('select sqlite_version() as v').get().v;
    probe.close();
    return { ok: true, Database, version, sqlite };
  } catch (e) {
    return { ok: false, reason: `better-sqlite3 is not usable here (${e.code ?? e.message}); its figures are skipped` };
  }
}

/** plainjob: a SQLite job queue for better-sqlite3 (peer of the bus suite). */
export async function loadPlainjob() {
  const b = loadBetterSqlite3();
  if (!b.ok) return { ok: false, reason: `plainjob needs better-sqlite3: ${b.reason}` };
  try {
    const mod = await import('plainjob');
    const version = require('plainjob/package.json').version;
    return { ok: true, ...mod, Database: b.Database, version };
  } catch (e) {
    return { ok: false, reason: `plainjob did not load: ${e.message}` };
  }
}

/**
 * @siblite/core, built (`pnpm run build`). Returns { ok: false } while the package has not
 * been built or does not export what the bench needs.
 */
export async function loadSiblite(names = ['open']) {
  try {
    const mod = await import('@siblite/core');
    const missing = names.filter((n) => typeof mod[n] !== 'function');
    if (missing.length) return { ok: false, reason: `@siblite/core does not export ${missing.join(', ')} yet` };
    let version = 'workspace';
    try {
      version = JSON.parse(readFileSync(new URL('../../packages/core/package.json', import.meta.url), 'utf8')).version;
    } catch {}
    return { ok: true, ...mod, version };
  } catch (e) {
    return { ok: false, reason: `@siblite/core is not importable (run \`pnpm run build\`): ${e.code ?? e.message}` };
  }
}

/** @siblite/bus, built. */
export async function loadBus(names = []) {
  try {
    const mod = await import('@siblite/bus');
    const missing = names.filter((n) => typeof mod[n] === 'undefined');
    if (missing.length) return { ok: false, reason: `@siblite/bus does not export ${missing.join(', ')} yet` };
    return { ok: true, ...mod };
  } catch (e) {
    return { ok: false, reason: `@siblite/bus is not importable (run \`pnpm run build\`): ${e.code ?? e.message}` };
  }
}

/** A fresh temporary directory; call the returned cleanup() when done. */
export function tempDir(prefix = 'siblite-bench-') {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return { dir, file: (name) => join(dir, name), cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}
