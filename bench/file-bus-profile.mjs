// Drives SqliteBus on a database file: `consume` (16 no-op workers on N queued commands) or `send`
// (64 concurrent producers of N commands), a fresh file per round, and prints per round the rate,
// CPU per message (process.cpuUsage), fsyncs per message and the time spent in fsync.
// Usage: node bench/file-bus-profile.mjs [consume|send] [n=3000]   (ROUNDS=3; PROF=/tmp/p writes a
// CPU profile of every round after the first to /tmp/p-<round>.cpuprofile)
import fs from 'node:fs';
import inspector from 'node:inspector/promises';
import { open } from '@siblite/core';
import { SqliteBus } from '@siblite/bus';

const mode = process.argv[2] ?? 'consume';
const N = Number(process.argv[3] ?? 3000);
const PROF = process.env.PROF;
let fsyncs = 0;
let fsyncMs = 0;
const realFsync = fs.fsyncSync;
fs.fsyncSync = (fd) => {
  fsyncs++;
  const t = performance.now();
  try {
    return realFsync(fd);
  } finally {
    fsyncMs += performance.now() - t;
  }
};
const session = new inspector.Session();
session.connect();
if (PROF) await session.post('Profiler.enable');
const dir = fs.mkdtempSync('/tmp/siblite-file-bus-profile-');
try {
  for (let round = 0; round < Number(process.env.ROUNDS ?? 3); round++) {
    const conn = open(`${dir}/bus-${round}.db`);
    const bus = await SqliteBus.open(conn, { logger: null });
    let run;
    if (mode === 'consume') {
      await bus.sendMany(Array.from({ length: N }, (_, i) => ({ name: 'job', payload: { i } })));
      run = async () => {
        const w = bus.listen({ job: async () => {} }, { concurrency: 16, pollInterval: 1_000 });
        await w.drain();
        await w.stop();
        if (w.counters.handled !== N) throw new Error(`handled ${w.counters.handled} of ${N}`);
      };
    } else {
      run = () => Promise.all(Array.from({ length: 64 }, async (_, p) => { for (let i = 0; i < N / 64; i++) await bus.send('job', { p, i }); }));
    }
    if (PROF && round > 0) await session.post('Profiler.start');
    const f0 = fsyncs;
    const m0 = fsyncMs;
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    await run();
    const ms = performance.now() - t0;
    const cpu = process.cpuUsage(c0);
    if (PROF && round > 0) fs.writeFileSync(`${PROF}-${round}.cpuprofile`, JSON.stringify((await session.post('Profiler.stop')).profile));
    console.log(
      `${mode} ${N}: ${((N / ms) * 1000).toFixed(0)} msg/s, CPU ${((cpu.user + cpu.system) / N).toFixed(0)} us/msg, ` +
        `${((fsyncs - f0) / N).toFixed(3)} fsyncs/msg, ${(fsyncMs - m0).toFixed(0)} of ${ms.toFixed(0)} ms in fsync`,
    );
    await bus.close();
    conn.close();
  }
} finally {
  fs.rmSync(dir, { recursive: true, force: true });
}
