/**
 * Installs the packages as a user would: `pnpm pack` every package of packages/, `npm install`
 * the tarballs into a scratch project in the OS temp directory (outside the workspace, so
 * nothing resolves through the workspace's node_modules), then runs the apps in ./apps there
 * as ESM, CommonJS and TypeScript (tsc), and bundles one with esbuild (docs/bundling.md).
 * One install serves every test.
 */
import { execFileSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const apps = join(dirname(fileURLToPath(import.meta.url)), 'apps');
const bin = (name: string) => join(root, 'node_modules', '.bin', name);
const packages = readdirSync(join(root, 'packages')).filter((p) => existsSync(join(root, 'packages', p, 'package.json')));

let scratch = '';
// The pnpm that runs this test (`pnpm test` sets npm_execpath), else the one on PATH.
const execpath = process.env.npm_execpath ?? '';
const pnpm = /pnpm/.test(execpath) && /\.c?js$/.test(execpath) ? [process.execPath, execpath] : ['pnpm'];
// pnpm puts the workspace's packages on NODE_PATH: clear it, or the scratch apps would resolve
// through the workspace instead of their own node_modules.
const cleanEnv = { ...process.env, NODE_OPTIONS: '', NODE_PATH: '' };
delete cleanEnv.SIBLITE_ENGINE_DIR;
const run = (cmd: string, args: string[], cwd = scratch) =>
  execFileSync(cmd, args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], env: cleanEnv });

beforeAll(() => {
  scratch = mkdtempSync(join(os.tmpdir(), 'siblite-install-'));
  const tarballs = join(scratch, 'tarballs');
  mkdirSync(tarballs);
  const deps: Record<string, string> = {};
  for (const p of packages) {
    const dir = join(root, 'packages', p);
    const out = run(pnpm[0]!, [...pnpm.slice(1), 'pack', '--pack-destination', tarballs], dir).trim().split('\n');
    const file = out.find((l) => l.endsWith('.tgz'))!.trim();
    const name = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')).name as string;
    deps[name] = `file:${join(tarballs, file.split('/').pop()!)}`;
  }
  const app = join(scratch, 'app');
  mkdirSync(app);
  cpSync(apps, app, { recursive: true });
  const extra = JSON.parse(readFileSync(join(apps, 'deps.json'), 'utf8')) as Record<string, string>;
  writeFileSync(
    join(app, 'package.json'),
    JSON.stringify({ name: 'scratch-app', private: true, type: 'module', dependencies: { ...deps, ...extra } }, null, 2),
  );
  scratch = app;
  run('npm', ['install', '--no-audit', '--no-fund', '--prefer-offline', '--loglevel=error']);
}, 300_000);

afterAll(() => {
  if (scratch) rmSync(dirname(scratch), { recursive: true, force: true });
});

describe('installed from the packed tarballs: the quickstart, a Kysely app and a Drizzle app', () => {
  it('ships LICENSE, README, dist with maps and the sources the maps name, and no internal members in the typings', () => {
    for (const p of packages) {
      const pkgJson = JSON.parse(readFileSync(join(root, 'packages', p, 'package.json'), 'utf8'));
      const dir = join(scratch, 'node_modules', ...pkgJson.name.split('/'));
      for (const f of ['LICENSE', 'README.md', 'dist/index.js', 'dist/index.d.ts', 'dist/index.js.map']) {
        expect(existsSync(join(dir, f)), `${pkgJson.name}: ${f}`).toBe(true);
      }
      const map = JSON.parse(readFileSync(join(dir, 'dist/index.js.map'), 'utf8')) as { sources: string[] };
      for (const s of map.sources) expect(existsSync(join(dir, 'dist', s)), `${pkgJson.name}: ${s}`).toBe(true);
      expect(pkgJson.repository?.url, pkgJson.name).toBeTruthy();
      expect(pkgJson.keywords?.length, pkgJson.name).toBeGreaterThan(0);
      expect(pkgJson.exports['.'].require, pkgJson.name).toBeTruthy();
    }
    const conn = readFileSync(join(scratch, 'node_modules/@siblite/core/dist/connection.d.ts'), 'utf8');
    expect(conn).not.toMatch(/\bsession\b/);
  });

  it('runs the quickstart as ESM', () => {
    expect(run('node', ['quickstart.mjs'])).toContain('esm ok qty=7');
    expect(run('node', ['kysely.mjs'])).toContain('kysely esm ok sum=32');
    expect(run('node', ['drizzle.mjs'])).toContain('drizzle esm ok sum=32');
  });

  it('runs the quickstart as CommonJS (require)', () => {
    expect(run('node', ['quickstart.cjs'])).toContain('cjs ok qty=7');
    expect(run('node', ['kysely.cjs'])).toContain('kysely cjs ok n=8');
    expect(run('node', ['drizzle.cjs'])).toContain('drizzle cjs ok n=8');
  });

  it('type-checks and runs the quickstart as TypeScript', () => {
    run(bin('tsc'), ['-p', 'tsconfig.json']);
    expect(run('node', ['out/quickstart.mjs'])).toContain('ts ok qty=7');
    expect(run('node', ['out/kysely.mjs'])).toContain('kysely ts ok n=8');
    expect(run('node', ['out/drizzle.mjs'])).toContain('drizzle ts ok n=8');
  });

  it('runs from an esbuild bundle that has the engine files copied next to it, with no node_modules', () => {
    for (const [format, entry] of [['esm', 'quickstart.mjs'], ['cjs', 'quickstart.cjs']] as const) {
      const out = join(dirname(scratch), `bundle-${format}`);
      const file = join(out, format === 'esm' ? 'app.mjs' : 'app.cjs');
      run(bin('esbuild'), [entry, '--bundle', '--platform=node', `--format=${format}`, `--outfile=${file}`, '--log-level=error']);
      // Without the engine files the bundle fails, saying what to copy.
      expect(() => run('node', [file], out)).toThrow(/cannot find the SQLite engine.*docs\/bundling\.md/s);
      // What docs/bundling.md says to copy: the engine's two files.
      const engine = join(scratch, 'node_modules/node-sqlite3-wasm/dist');
      for (const f of ['node-sqlite3-wasm.js', 'node-sqlite3-wasm.wasm']) cpSync(join(engine, f), join(out, f));
      expect(run('node', [file], out)).toContain(`${format} ok qty=7`);
    }
  });
});
