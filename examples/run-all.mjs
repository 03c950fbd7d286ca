#!/usr/bin/env node
// Runs every example (examples/*.mjs except this file) as a child process with a time limit,
// and exits non-zero if any fails. Examples assert what they print, so this is a test.
//
// An example may declare what it needs in a comment line:
//   // @requires @siblite/bus SqliteBus
// If that package export is missing (the feature has not landed yet), the example is skipped
// with a printed note. A missing export is the only reason to skip; everything else must pass.
import { spawn } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const TIMEOUT_MS = Number(process.env.EXAMPLE_TIMEOUT_MS ?? 60_000);
const only = process.argv.slice(2);

const files = readdirSync(here)
  .filter((f) => f.endsWith('.mjs') && f !== 'run-all.mjs' && !f.startsWith('_'))
  .filter((f) => only.length === 0 || only.some((o) => f.startsWith(o)))
  .sort();

async function missingRequirement(file) {
  const text = readFileSync(join(here, file), 'utf8');
  for (const m of text.matchAll(/^\/\/ @requires (\S+) (.+)$/gm)) {
    const [, pkg, names] = m;
    let mod;
    try {
      mod = await import(pkg);
    } catch (e) {
      return `${pkg} is not importable (${e.code ?? e.message}); run \`pnpm run build\``;
    }
    const missing = names.split(/[\s,]+/).filter((n) => n && mod[n] === undefined);
    if (missing.length) return `${pkg} does not export ${missing.join(', ')} yet`;
  }
  return null;
}

function runOne(file) {
  return new Promise((resolve) => {
    const started = performance.now();
    const child = spawn(process.execPath, [join(here, file)], { cwd: here, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (d) => (output += d));
    child.stderr.on('data', (d) => (output += d));
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, TIMEOUT_MS);
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, timedOut, output, ms: performance.now() - started });
    });
  });
}

let failed = 0;
let skipped = 0;
for (const file of files) {
  const missing = await missingRequirement(file);
  if (missing) {
    skipped++;
    console.log(`-- ${file}: SKIPPED (${missing})`);
    continue;
  }
  console.log(`-- ${file}`);
  const r = await runOne(file);
  const out = r.output.replace(/\n$/, '');
  if (out) console.log(out.replace(/^/gm, '   | '));
  if (r.code === 0) console.log(`   ok (${(r.ms / 1000).toFixed(1)} s)`);
  else {
    failed++;
    console.log(`   FAILED: ${r.timedOut ? `timed out after ${TIMEOUT_MS / 1000} s` : `exit ${r.signal ?? r.code}`}`);
  }
}
console.log(`\n${files.length - failed - skipped} passed, ${failed} failed, ${skipped} skipped`);
process.exit(failed ? 1 : 0);
