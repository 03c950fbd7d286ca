#!/usr/bin/env node
// `pnpm fuzz`: the BEGIN CONCURRENT serializability property (packages/core/test/
// concurrent-property.test.ts) with many seeds. On a failure fast-check prints the seed, the
// path and the shrunk minimal history; `--seed S --path P` replays exactly that case.
//
//   pnpm fuzz                      20,000 histories in memory + 200 with a second process
//                                  + 1,000 on a file with group commit
//   pnpm fuzz --seeds 3000         fewer histories (and 3000/100 with a second process)
//   pnpm fuzz --seed 42 [--path 3:1:2]   reproduce one failure
//   pnpm fuzz --processes 0        skip the two-process property
//   pnpm fuzz --stress 50          50 rounds of three processes running transaction()s on one
//                                  file (adversarial/processes.test.ts: every call committed
//                                  exactly once, no lost update or write skew); default 10
//   pnpm fuzz --attack 500         500 random histories of the group-commit attack
//                                  (attack-group.test.ts); default 100
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: {
    seeds: { type: 'string', default: '20000' },
    seed: { type: 'string' },
    path: { type: 'string' },
    processes: { type: 'string' },
    group: { type: 'string' },
    stress: { type: 'string' },
    attack: { type: 'string' },
    help: { type: 'boolean', short: 'h' },
  },
});
if (values.help) {
  console.log('usage: pnpm fuzz [--seeds N] [--processes N] [--group N] [--stress N] [--attack N] [--seed S [--path P] [--processes 1 | --group 1]]');
  process.exit(0);
}
const seeds = Number(values.seeds);
const processes = values.processes === undefined ? Math.max(1, Math.round(seeds / 100)) : Number(values.processes);
const group = values.group === undefined ? Math.max(1, Math.round(seeds / 20)) : Number(values.group);
const stress = values.seed !== undefined ? 0 : values.stress === undefined ? 10 : Number(values.stress);
const attack = values.seed !== undefined ? 0 : values.attack === undefined ? 100 : Number(values.attack);
if ([seeds, processes, group, stress, attack].some((n) => !Number.isInteger(n) || n < 0)) {
  console.error('--seeds, --processes, --group, --stress and --attack take a whole number');
  process.exit(2);
}
const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const env = {
  ...process.env,
  SIBLITE_FUZZ_RUNS: String(values.seed === undefined ? seeds : 1),
  SIBLITE_FUZZ_PROCESS_RUNS: String(values.seed === undefined ? processes : 0),
  SIBLITE_FUZZ_GROUP_RUNS: String(values.seed === undefined ? group : 0),
  // About 0.1 s per history on a loaded 2-core machine: leave room.
  SIBLITE_FUZZ_TIMEOUT_MS: String(Math.max(240_000, seeds * 200 + processes * 5_000 + group * 1_000)),
  SIBLITE_STRESS_RUNS: String(stress),
  SIBLITE_ATTACK_GROUP_RUNS: String(attack),
};
if (values.seed !== undefined) {
  env.SIBLITE_FUZZ_SEED = values.seed;
  if (values.path) env.SIBLITE_FUZZ_PATH = values.path;
  if (values.processes !== undefined) {
    // Reproduce in the two-process property instead.
    env.SIBLITE_FUZZ_RUNS = '0';
    env.SIBLITE_FUZZ_PROCESS_RUNS = '1';
  } else if (values.group !== undefined) {
    // Reproduce in the group-commit property instead.
    env.SIBLITE_FUZZ_RUNS = '0';
    env.SIBLITE_FUZZ_GROUP_RUNS = '1';
  }
}
console.log(
  values.seed === undefined
    ? `fuzz: ${seeds} histories in memory, ${processes} with a second process, ${group} on a file with group commit, ` +
        `${stress} rounds of three processes on one file, ${attack} group-commit attack histories`
    : `fuzz: replaying seed ${values.seed}${values.path ? ` path ${values.path}` : ''}`,
);
const started = Date.now();
const r = spawnSync(
  process.execPath,
  [
    join(root, 'node_modules', 'vitest', 'vitest.mjs'),
    'run',
    'packages/core/test/concurrent-property.test.ts',
    ...(stress > 0 ? ['packages/core/test/adversarial/processes.test.ts'] : []),
    ...(attack > 0 ? ['packages/core/test/attack-group.test.ts'] : []),
  ],
  { cwd: root, env, stdio: 'inherit' },
);
console.log(`fuzz: ${r.status === 0 ? 'no violation found' : 'FAILED (seed, path and minimal history above)'} in ${((Date.now() - started) / 1000).toFixed(0)} s`);
process.exit(r.status ?? 1);
