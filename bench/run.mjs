#!/usr/bin/env node
// One benchmark command: `pnpm bench` (= `pnpm run build && node bench/run.mjs`).
//
//   node bench/run.mjs            every suite in bench/suites/*.mjs, full size; writes
//                                 bench/results/latest.json, docs/benchmarks.md, docs/charts/*.svg
//   node bench/run.mjs --quick    tiny iteration counts (CI smoke test, < 2 minutes); writes
//                                 bench/results/quick.json only, never the docs
//   node bench/run.mjs --suite raw-engine,concurrent-tx
//                                 only those suites; writes bench/results/partial.json only
//   node bench/run.mjs --suite bus --merge
//                                 also puts them into latest.json (replacing those suites, each
//                                 labelled with its own run) and rewrites the docs
//
// Each suite runs in its own child process (bench/lib/child.mjs) with a time limit. The exit
// code is non-zero only when a suite crashes, times out or fails a correctness check; slow
// figures and missed targets are reported, never fatal.
import { fork, execFileSync } from 'node:child_process';
import { readdirSync, writeFileSync, mkdirSync, readFileSync } from 'node:fs';
import os from 'node:os';
import { dirname, join, basename } from 'node:path';
import { fileURLToPath } from 'node:url';
import { summarize } from './lib/measure.mjs';
import { render, writeDocs, fmtTarget, mergeSuites } from './lib/report.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..');
const args = process.argv.slice(2);
const quick = args.includes('--quick');
const suiteArg = args.find((a, i) => args[i - 1] === '--suite') ?? args.find((a) => a.startsWith('--suite='))?.slice(8);
const only = suiteArg ? new Set(suiteArg.split(',')) : null;
const SUITE_TIMEOUT_MS = quick ? 90_000 : 20 * 60_000;

function machine() {
  const cpus = os.cpus();
  let distro = '';
  try {
    distro = /PRETTY_NAME="?([^"\n]*)/.exec(readFileSync('/etc/os-release', 'utf8'))?.[1] ?? '';
  } catch {}
  return {
    cpu: cpus[0]?.model?.trim() ?? 'unknown',
    cores: cpus.length,
    memoryGB: Math.round((os.totalmem() / 2 ** 30) * 10) / 10,
    os: `${distro ? distro + ', ' : ''}${os.type()} ${os.release()} ${os.arch()}`,
    node: process.version,
    loadAverageAtStart: os.loadavg().map((x) => Math.round(x * 100) / 100), // 1, 5, 15 min: others' work on a shared machine
  };
}

function gitCommit() {
  try {
    const sha = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: root, encoding: 'utf8' }).trim();
    // Measured code that differs from the commit (packages or bench) is flagged.
    const dirty = execFileSync('git', ['status', '--porcelain', '--', 'packages', 'bench'], { cwd: root, encoding: 'utf8' }).trim();
    return dirty ? `${sha}+uncommitted changes` : sha;
  } catch {
    return 'unknown';
  }
}

function runSuite(file) {
  return new Promise((resolve) => {
    const child = fork(join(here, 'lib', 'child.mjs'), [file, quick ? 'quick' : 'full'], {
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      execArgv: ['--expose-gc'],
    });
    let message = null;
    const timer = setTimeout(() => {
      message = { type: 'crash', message: `timed out after ${SUITE_TIMEOUT_MS / 1000} s` };
      child.kill('SIGKILL');
    }, SUITE_TIMEOUT_MS);
    child.on('message', (m) => {
      if (!message) message = m;
    });
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      if (!message) message = { type: 'crash', message: `suite process exited with ${signal ?? `code ${code}`} without a result` };
      resolve(message);
    });
  });
}

/**
 * Per-round ratios of two figures (paired by round), summarized. A spec without `den` reports
 * the `num` figure itself (a count or an index with a goal); `atMost` makes the target a ceiling.
 */
function ratioOf(spec, byId) {
  const a = byId.get(spec.num);
  const b = spec.den === undefined ? null : byId.get(spec.den);
  const out = { id: spec.id ?? (spec.den === undefined ? spec.num : `${spec.num}/${spec.den}`), label: spec.label, num: spec.num, den: spec.den ?? null, target: spec.target ?? null, atMost: spec.atMost === true, unit: spec.unit ?? 'x' };
  if (!a?.samples?.length || (spec.den !== undefined && !b?.samples?.length)) return { ...out, median: NaN, min: NaN, max: NaN, met: null, note: 'a peer was skipped' };
  const n = b ? Math.min(a.samples.length, b.samples.length) : a.samples.length;
  const per = [];
  for (let i = 0; i < n; i++) per.push(b ? a.samples[i] / b.samples[i] : a.samples[i]);
  const s = summarize(per);
  const met = spec.target == null ? null : out.atMost ? s.median <= spec.target : s.median >= spec.target;
  return { ...out, median: s.median, p25: s.p25, p75: s.p75, min: s.min, max: s.max, met };
}

/** The `## ` sections of a benchmarks page marked `<!-- Written by hand ...`, verbatim. */
function handWrittenSections(page) {
  return page
    .split(/^(?=## )/m)
    .filter((p) => /^## [^\n]*\n+<!-- Written by hand/.test(p))
    .join('');
}

const started = performance.now();
const files = readdirSync(join(here, 'suites'))
  .filter((f) => f.endsWith('.mjs'))
  .sort()
  .filter((f) => !only || only.has(basename(f, '.mjs')));
if (files.length === 0) {
  console.error(`no suites to run${only ? ` (asked for ${[...only].join(', ')})` : ''}`);
  process.exit(1);
}

console.log(`siblite bench${quick ? ' (quick: tiny iteration counts, numbers are meaningless)' : ''}: ${files.length} suite(s)`);
const m = machine();
console.log(`machine: ${m.cpu}, ${m.cores} cores, ${m.memoryGB} GB, ${m.os}, node ${m.node}`);

const results = {
  command: quick ? 'node bench/run.mjs --quick' : only ? `node bench/run.mjs --suite ${[...only].join(',')}` : 'pnpm bench',
  quick,
  date: new Date().toISOString(),
  commit: gitCommit(),
  machine: m,
  versions: {},
  suites: [],
  durationMs: 0,
};
let failed = false;

for (const f of files) {
  const name = basename(f, '.mjs');
  console.log(`\n== ${name}`);
  const t0 = performance.now();
  const msg = await runSuite(join(here, 'suites', f));
  const durationMs = Math.round(performance.now() - t0);
  if (msg.type !== 'result') {
    failed = true;
    console.error(`!! suite ${name} crashed: ${msg.message}`);
    results.suites.push({ name, error: msg.message, durationMs });
    continue;
  }
  const r = msg.result;
  const figures = (r.figures ?? []).map((fig) => {
    const samples = (fig.samples ?? []).filter((v) => Number.isFinite(v));
    return { ...fig, ...summarize(samples), samples };
  });
  const byId = new Map(figures.map((fig) => [fig.id, fig]));
  const ratios = (r.ratios ?? []).map((spec) => ratioOf(spec, byId));
  const checks = r.checks ?? [];
  if (checks.some((c) => !c.ok)) failed = true;
  Object.assign(results.versions, r.versions ?? {});
  const suite = {
    name: r.name ?? name,
    title: r.title ?? name,
    workload: r.workload,
    ratio: r.ratio,
    target: r.target,
    rounds: r.rounds,
    figures,
    ratios,
    curves: r.curves ?? [],
    notes: r.notes ?? [],
    checks,
    durationMs,
  };
  results.suites.push(suite);
  for (const fig of figures) {
    const v = Number.isFinite(fig.median) ? `${fig.median.toFixed(fig.unit === '%' ? 2 : 0)} ${fig.unit} (min ${fig.min.toFixed(0)}, max ${fig.max.toFixed(0)})` : 'skipped';
    console.log(`  ${fig.group} | ${fig.peer}: ${v}`);
  }
  for (const ra of ratios) {
    console.log(`  ratio ${ra.label}: ${Number.isFinite(ra.median) ? ra.median.toFixed(2) + ra.unit : 'n/a'}${ra.note ? ` (${ra.note})` : ra.target != null ? ` (goal ${fmtTarget(ra)}: ${ra.met ? 'met' : 'not met'})` : ''}`);
  }
  for (const n of suite.notes) console.log(`  note: ${n}`);
  for (const c of checks) (c.ok ? console.log : console.error)(`  check ${c.ok ? 'ok' : 'FAILED'}: ${c.message}`);
  console.log(`  (${(durationMs / 1000).toFixed(1)} s)`);
}

results.durationMs = Math.round(performance.now() - started);
results.machine.loadAverageAtEnd = os.loadavg().map((x) => Math.round(x * 100) / 100);
mkdirSync(join(here, 'results'), { recursive: true });
render(results); // smoke-tests the report generator in every mode
if (quick) {
  writeFileSync(join(here, 'results', 'quick.json'), JSON.stringify(results, null, 2) + '\n');
  console.log('\nwrote bench/results/quick.json (docs/benchmarks.md is only written by a full run)');
} else if (only) {
  writeFileSync(join(here, 'results', 'partial.json'), JSON.stringify(results, null, 2) + '\n');
  if (args.includes('--merge')) {
    const latest = mergeSuites(JSON.parse(readFileSync(join(here, 'results', 'latest.json'), 'utf8')), results);
    writeFileSync(join(here, 'results', 'latest.json'), JSON.stringify(latest, null, 2) + '\n');
    const page = join(root, 'docs', 'benchmarks.md');
    const handWritten = handWrittenSections(readFileSync(page, 'utf8'));
    const written = writeDocs(latest);
    // Sections written by hand (from partial runs of suites not in latest.json yet) stay.
    if (handWritten) writeFileSync(page, readFileSync(page, 'utf8').trimEnd() + '\n\n' + handWritten);
    console.log(`\nwrote bench/results/partial.json, bench/results/latest.json (merged), ${written.join(', ')}`);
  } else {
    console.log('\nwrote bench/results/partial.json (a partial run does not touch latest.json or the docs)');
  }
} else {
  writeFileSync(join(here, 'results', 'latest.json'), JSON.stringify(results, null, 2) + '\n');
  const written = writeDocs(results);
  console.log(`\nwrote bench/results/latest.json, ${written.join(', ')}`);
}
console.log(`total ${(results.durationMs / 1000).toFixed(1)} s`);
if (failed) {
  console.error('bench: FAILED (a suite crashed, timed out or failed a correctness check)');
  process.exit(1);
}
