// A child process of bench/suites/file-locking.mjs: one process sharing one database file.
// Job (argv[2], JSON): { file, role: 'writer' | 'handover', ms, delay }; it reports { ready } once it
// has opened the file and then waits for { startAt } from the parent.
//   writer:   from startAt for ms, `await conn.transaction(insert)` in a loop; reports the count
//             and the longest time between two of its commits (its worst wait for the file).
//   handover: from startAt, one write while another process keeps the file busy; reports how
//             long it took to get the file (the hand-over latency).
import { open } from '@siblite/core';

const job = JSON.parse(process.argv[2]);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const conn = open(job.file, { busyTimeout: 60_000 });
conn.get('SELECT 1 FROM sqlite_schema LIMIT 1');
// Started and warmed up: tell the parent, which sends the common start time once all are.
const startAt = await new Promise((resolve) => {
  process.once('message', (m) => resolve(m.startAt));
  process.send({ ready: true });
});
await sleep(Math.max(0, startAt - Date.now()));
if (job.role === 'handover') {
  await sleep(job.delay ?? 0);
  const t0 = performance.now();
  conn.run("INSERT INTO t (who) VALUES ('handover')");
  const ms = performance.now() - t0;
  conn.close();
  process.send({ ms }, () => process.exit(0));
} else {
  const end = Date.now() + job.ms;
  let ops = 0;
  let last = performance.now();
  let maxGap = 0;
  while (Date.now() < end) {
    await conn.transaction((tx) => {
      tx.run('INSERT INTO t (who) VALUES (?)', [process.pid]);
    });
    ops++;
    const now = performance.now();
    maxGap = Math.max(maxGap, now - last);
    last = now;
  }
  conn.close();
  process.send({ ops, maxGap }, () => process.exit(0));
}
