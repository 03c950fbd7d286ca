// Several processes on one database file. Three worker processes (child_process.fork) each run
// 40 concurrent transactions that increment a shared counter and record their own work; the
// file lock serializes them between processes, contention surfaces as BusyError, and the
// retry loop of conn.transaction() absorbs it. Then a process is killed (SIGKILL) while it
// holds the write lock: the lock it leaves behind must not block the file.
//   pnpm run build && node examples/multi-process.mjs
import assert from 'node:assert/strict';
import { fork } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { open, retry } from '@siblite/core';

const self = fileURLToPath(import.meta.url);
const [role, file, arg] = process.argv.slice(2);
const RETRY = { retries: 10_000, minTimeout: 1, maxTimeout: 50, maxElapsedMs: 30_000 };

if (role === 'worker') {
  // A worker process: its own engine on the shared file.
  const db = open(file);
  let retries = 0;
  for (let i = 0; i < Number(arg); i++) {
    await db.transaction(
      async (tx) => {
        const { n } = tx.get('SELECT n FROM counter WHERE id = 1');
        await new Promise((resolve) => setTimeout(resolve, 1)); // some async work
        tx.run('UPDATE counter SET n = ? WHERE id = 1', [n + 1]);
        tx.run('INSERT INTO work (pid, seq) VALUES (?, ?)', [process.pid, i]);
      },
      { mode: 'concurrent', retry: { ...RETRY, onRetry: () => retries++ } },
    );
  }
  db.close();
  process.send({ pid: process.pid, retries }, () => process.exit(0));
} else if (role === 'holder') {
  // Takes the write lock, says so, and waits to be killed.
  const db = open(file);
  db.exec('BEGIN IMMEDIATE');
  db.run('UPDATE counter SET n = -1 WHERE id = 1'); // must never become visible
  process.send('locked');
  setInterval(() => {}, 1000);
} else {
  const dir = mkdtempSync(join(tmpdir(), 'siblite-multiprocess-'));
  const path = join(dir, 'shared.db');
  try {
    const db = open(path);
    db.exec(`
      CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL);
      INSERT INTO counter VALUES (1, 0);
      CREATE TABLE work (pid INTEGER NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (pid, seq));
    `);
    db.close(); // let the workers have the file

    const WORKERS = 3;
    const EACH = 40;
    const t0 = performance.now();
    const reports = await Promise.all(
      Array.from({ length: WORKERS }, () => {
        const child = fork(self, ['worker', path, String(EACH)], { stdio: 'inherit' });
        return new Promise((resolve, reject) => {
          let report;
          child.on('message', (m) => (report = m));
          child.on('exit', (code) => (code === 0 && report ? resolve(report) : reject(new Error(`worker exited with ${code}`))));
        });
      }),
    );
    const ms = performance.now() - t0;
    const db2 = open(path);
    const n = await retry(() => db2.get('SELECT n FROM counter WHERE id = 1').n, RETRY);
    const perPid = await retry(() => db2.all('SELECT pid, count(*) AS c FROM work GROUP BY pid ORDER BY pid'), RETRY);
    console.log(`${WORKERS} processes x ${EACH} transactions in ${ms.toFixed(0)} ms; retries per process: ${reports.map((r) => r.retries).join(', ')}`);
    console.log(`counter = ${n}, rows per process: ${perPid.map((r) => r.c).join(', ')}`);
    assert.equal(n, WORKERS * EACH, 'no increment lost across processes');
    assert.deepEqual(perPid.map((r) => r.c), Array(WORKERS).fill(EACH));
    db2.close();

    // A process dies (SIGKILL) while it holds the write lock in the middle of a transaction.
    const holder = fork(self, ['holder', path], { stdio: 'inherit' });
    await new Promise((resolve) => holder.once('message', resolve));
    holder.kill('SIGKILL');
    await new Promise((resolve) => holder.once('exit', resolve));
    const t1 = performance.now();
    const db3 = open(path);
    await retry(() => db3.run('UPDATE counter SET n = n + 1 WHERE id = 1'), RETRY);
    const after = await retry(() => db3.get('SELECT n FROM counter WHERE id = 1').n, RETRY);
    console.log(`after a writer was killed with SIGKILL, the next write went through in ${(performance.now() - t1).toFixed(0)} ms; counter = ${after}`);
    assert.equal(after, WORKERS * EACH + 1, "the killed process's uncommitted write left no trace");
    db3.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
