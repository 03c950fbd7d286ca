// Several processes on one database file: how fast the file lock is handed from process to
// process, and how many writes per second 2, 4 and 8 processes complete together (with the
// worst wait any one of them saw). Each process loops `await conn.transaction(insert)`, which
// never returns to the event loop between transactions: the hand-over happens at each commit.
import { fork } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { interleaved } from '../lib/measure.mjs';
import { loadSiblite, tempDir } from '../lib/peers.mjs';

export const name = 'file-locking';
export const title = 'Processes sharing one file';
const PROCESSES = [2, 4, 8];
export const workload =
  `N processes (${PROCESSES.join(', ')}) open one database file (default options: locking 'auto', busy timeout 5 s, ` +
  'synchronous FULL) and, from a common start time, each loops `await conn.transaction(tx => tx.run(INSERT ...))` ' +
  'for a fixed time. Figures: committed writes per second of all processes together; the longest time any one process ' +
  'waited between two of its commits (lower is better); and the hand-over latency: the time one process needs for a ' +
  'single write while another process keeps the file busy with such a loop (lower is better). After every run the bench ' +
  'checks that the table holds exactly the writes the processes reported.';
export const ratio = 'writes/s of 8 processes vs 2 processes (how much sharing costs), and the worst wait in ms.';
export const target = 'with 8 writer processes no writer waits more than 2 s between two of its commits.';

const child = fileURLToPath(new URL('../lib/file-locking-child.mjs', import.meta.url));

/**
 * Runs the children together: each starts, opens the file and says ready; then all get one start
 * time (so that slow process start-up on a loaded machine is not measured as waiting).
 */
async function together(jobs, startDelay) {
  const ready = [];
  const done = jobs.map(
    (job) =>
      new Promise((resolve, reject) => {
        const p = fork(child, [JSON.stringify(job)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
        let result;
        ready.push(new Promise((r) => p.on('message', (m) => (m.ready ? r(p) : (result = m)))));
        p.on('exit', (code) => (result ? resolve(result) : reject(new Error(`file-locking child exited with ${code} without a result`))));
      }),
  );
  const procs = await Promise.all(ready);
  const startAt = Date.now() + startDelay;
  for (const p of procs) p.send({ startAt });
  return Promise.all(done);
}

export async function run({ quick, log }) {
  const sib = await loadSiblite(['open']);
  if (!sib.ok) throw new Error(sib.reason);
  const ms = quick ? 300 : 3000;
  const rounds = quick ? 1 : 5;
  const startDelay = 200; // after every child said it is ready
  const tmp = tempDir('siblite-bench-files-');
  const failures = [];
  let n = 0;
  const newFile = () => {
    const file = tmp.file(`f-${++n}.db`);
    const c = sib.open(file);
    c.exec('CREATE TABLE t (id INTEGER PRIMARY KEY, who TEXT)');
    c.close();
    return file;
  };
  const count = (file) => {
    const c = sib.open(file);
    try {
      return c.get('SELECT count(*) AS n FROM t').n;
    } finally {
      c.close();
    }
  };

  const cases = PROCESSES.map((procs) => ({
    id: `writers@${procs}`,
    run: async () => {
      const file = newFile();
      const reports = await together(Array.from({ length: procs }, () => ({ file, role: 'writer', ms })), startDelay);
      const ops = reports.reduce((s, r) => s + r.ops, 0);
      const rows = count(file);
      if (rows !== ops) failures.push(`${procs} processes reported ${ops} writes, the table holds ${rows}`);
      return { wps: ops / (ms / 1000), worst: Math.max(...reports.map((r) => r.maxGap)), least: Math.min(...reports.map((r) => r.ops)) };
    },
  }));
  cases.push({
    id: 'handover',
    run: async () => {
      const file = newFile();
      const [busy, w] = await together(
        [
          { file, role: 'writer', ms: quick ? 300 : 1500 },
          { file, role: 'handover', delay: quick ? 100 : 500 },
        ],
        startDelay,
      );
      if (count(file) !== busy.ops + 1) failures.push('hand-over run: rows missing');
      return { ms: w.ms };
    },
  });
  const warmup = quick ? 0 : 1;
  log(`${cases.length} cases, ${ms} ms each, ${rounds} interleaved rounds (+${warmup} warm-up round)`);
  let samples;
  try {
    samples = await interleaved({ rounds, warmup, cases, log });
  } finally {
    tmp.cleanup();
  }
  const figures = [];
  for (const procs of PROCESSES) {
    const s = samples.get(`writers@${procs}`);
    figures.push({ id: `wps:${procs}`, group: 'committed writes/s, all processes', peer: `${procs} processes`, unit: 'writes/s', samples: s.map((x) => x.wps) });
    figures.push({
      id: `worst:${procs}`,
      group: 'longest wait of any process between two of its commits',
      peer: `${procs} processes`,
      unit: 'ms',
      higherIsBetter: false,
      samples: s.map((x) => x.worst),
    });
  }
  figures.push({
    id: 'handover',
    group: 'hand-over latency: one write while another process loops transactions',
    peer: '2 processes',
    unit: 'ms',
    higherIsBetter: false,
    samples: samples.get('handover').map((x) => x.ms),
  });
  const worst8 = Math.max(...samples.get('writers@8').map((x) => x.worst));
  const notes = [`worst wait with 8 processes over all rounds: ${Math.round(worst8)} ms (target <= 2000 ms)`];
  const starved = samples.get('writers@8').filter((x) => x.least === 0).length;
  if (starved) notes.push(`${starved} round(s) in which one of 8 processes committed nothing`);
  const checks = [
    failures.length
      ? { ok: false, message: `writes lost or invented: ${failures.slice(0, 3).join(' | ')}` }
      : { ok: true, message: 'every run: the table holds exactly the writes the processes reported' },
  ];
  const ratios = [{ label: 'writes/s, 8 processes / 2 processes', num: 'wps:8', den: 'wps:2' }];
  return { name, title, workload, ratio, target, rounds, figures, ratios, notes, checks, versions: { '@siblite/core': sib.version } };
}
