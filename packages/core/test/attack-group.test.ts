/**
 * Randomized attack on group commit (commit-group.ts) on a file: many handles interleave at
 * random `transaction()` calls (concurrent, retries, awaits, hot rows for the priority lane,
 * read-only ones, ones that throw, nested calls), hand-written `BEGIN CONCURRENT` ended by
 * `commitAsync()` or a synchronous `COMMIT`, autocommit reads and writes, pessimistic
 * transactions, `OR ROLLBACK` statements that fail, and handles closed mid-flight, while a child
 * process writes the same file now and then (file lock hand-overs).
 *
 * Every logical call logs a unique `id#attempt` in the ledger. After each history: a call whose
 * promise resolved (or whose synchronous statement returned) is there exactly once, a rejected
 * one is not there; each counter equals its log and no two committed calls read the same value
 * (no lost update); `groupCommitStats().outside` is 0; no uncaught exception or unhandled
 * rejection; integrity_check ok; a fresh open can write. In half of the histories, now and then
 * an undo the engine runs (`ROLLBACK`, `ROLLBACK TO`, `RELEASE`) fails in one of the shapes of
 * an I/O error (helpers.ts, injectExecFaults), and the next read from the disk fails with EIO
 * (failNextRead, armed before some reads): the same checks must hold.
 *
 * SIBLITE_ATTACK_GROUP_RUNS=N runs N histories (default 4), SIBLITE_ATTACK_GROUP_SEED=S runs
 * the history of seed S first. A failure prints its seed.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, it } from 'vitest';
import { commitAsync, errorKind, groupCommitStats, open, type Connection } from '../src/index.js';
import { laneOf } from '../src/lane.js';
import { ensureBuilt } from './fixtures/harness.js';
import { failNextRead, FAULT_SHAPES, injectExecFaults, prng } from './helpers.js';

const RUNS = Number(process.env.SIBLITE_ATTACK_GROUP_RUNS ?? 4);
const FIRST_SEED = process.env.SIBLITE_ATTACK_GROUP_SEED;
const HANDLES = 7;
/** A history that runs longer than this hangs (they take about a second). */
const HISTORY_MS = 40_000;
const OPS_PER_HANDLE = 14;
const RETRY = { retries: 1000, minTimeout: 1, maxTimeout: 10, maxElapsedMs: 30_000 };
const CHILD = join(dirname(fileURLToPath(import.meta.url)), 'fixtures', 'attack-group-child.mjs');


/** Uncaught exceptions and unhandled rejections seen while the histories run. */
const stray: unknown[] = [];
const onStray = (e: unknown) => void stray.push(e);
beforeAll(() => {
  ensureBuilt();
  process.on('uncaughtException', onStray);
  process.on('unhandledRejection', onStray);
}, 120_000);
afterAll(() => {
  process.off('uncaughtException', onStray);
  process.off('unhandledRejection', onStray);
});

type Outcome = 'resolved' | 'rejected';

const SCHEMA = `
  CREATE TABLE counter (id INTEGER PRIMARY KEY, v INT NOT NULL);
  INSERT INTO counter VALUES (1, 0), (2, 0), (3, 0), (4, 0);
  CREATE TABLE ledger (id INTEGER PRIMARY KEY, who TEXT NOT NULL, cid INT, seen INT, bump INT NOT NULL DEFAULT 0);
  -- An autocommit call logs and bumps in one statement (INSERT ... SELECT): atomic across processes.
  CREATE TRIGGER bump AFTER INSERT ON ledger WHEN NEW.bump = 1 BEGIN UPDATE counter SET v = v + 1 WHERE id = NEW.cid; END;
  CREATE TABLE other (id INTEGER PRIMARY KEY, tag TEXT);
  CREATE TABLE uniq (k INTEGER PRIMARY KEY);
  INSERT INTO uniq VALUES (1);
`;

interface History {
  seed: number;
  window: number;
  cap: number;
  /** How many undos were made to fail (undefined: no faults in this history). */
  faults?: number;
  outcomes: Map<string, Outcome>;
  /** Calls whose outcome cannot be known (none in this process; kept for the child). */
  unknown: Set<string>;
  log: string[];
  /** The calls under way, with what they are doing (a history that hangs reports them). */
  inFlight: Map<string, string>;
  /** The state of the engine, its lane, group and handles, for the report of a history that hangs. */
  dump?: () => string;
}

/** Runs one random history on a fresh file; returns what the checks need. */
async function history(seed: number, started: (h: History) => void): Promise<{ h: History; file: string; dir: string; child: ChildProcess; childDone: Promise<any> }> {
  const random = prng(seed);
  const pick = <T,>(xs: readonly T[]): T => xs[Math.floor(random() * xs.length)] as T;
  const window = pick([0, 0, 1, 3]);
  // A small cap flushes a full group at once, inside the joining commit.
  const cap = pick([64, 64, 2, 3]);
  // The upper bounds of the kinds of call (transaction(), read-only, hand-written, autocommit;
  // the rest pessimistic): a mixed history, or one of mostly concurrent commits (bigger groups).
  const mix = pick([
    [0.4, 0.5, 0.7, 0.85],
    [0.65, 0.72, 0.92, 0.97],
  ]) as [number, number, number, number];
  const dir = mkdtempSync(join(tmpdir(), 'siblite-attack-group-'));
  const file = join(dir, 'db.sqlite');
  const h: History = { seed, window, cap, outcomes: new Map(), unknown: new Set(), log: [], inFlight: new Map() };
  started(h);
  const db = open(file, { groupCommit: { window, cap } });
  db.exec(SCHEMA);
  if (random() < 0.5) {
    h.faults = 0;
    const engine = db.session.engine as any;
    injectExecFaults(db, (sql) => {
      if (process.env.SIBLITE_ATTACK_GROUP_TRACE) h.log.push(`exec ${sql} [active ${engine.active?.handleId ?? '-'} inReal ${engine.inRealTransaction} serial ${engine.realSerial}/${engine.committedSerial}]`);
      if (!/^(ROLLBACK|RELEASE)\b/i.test(sql) || random() >= 0.1) return undefined;
      (h.faults as number)++;
      const shape = pick(FAULT_SHAPES);
      h.log.push(`fault ${shape}: ${sql} (${h.dump?.()})`);
      return shape;
    });
  }
  const live = new Map<number, Connection>();
  h.dump = () => {
    const engine = db.session.engine as any;
    const group = engine.group as any;
    const lane = laneOf(engine) as any;
    const conns = [...live.entries()].map(([hi, c]) => {
      const s = c.session as any;
      return `h${hi}#${s.id}:tx=${s.tx?.kind ?? '-'}${s.tx && engine.active === s.tx ? '(active)' : ''} pending=${s.commitPending} open=${s.isOpen} running=${(c as any).runningTransaction}`;
    });
    return JSON.stringify({
      active: engine.active ? `${engine.active.kind} #${engine.active.handleId}` : null,
      inReal: engine.inRealTransaction,
      group: group && { pending: group.pending.length, applied: group.applied.length, top: group.top?.handleId ?? null, scheduled: group.scheduled },
      lane: { held: lane.held, waiting: lane.waiting.length, holder: lane.holder?.id, priority: lane.priority?.id, keptFor: lane.keptFor?.id },
      conns,
    });
  };

  const child = fork(CHILD, [JSON.stringify({ file, window, pauseMs: 2 + Math.floor(random() * 8) })], {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const childMessages: any[] = [];
  const childDone = new Promise<any>((resolve, reject) => {
    child.on('message', (m: any) => {
      childMessages.push(m);
      if (m.resolved) h.outcomes.set(m.resolved, 'resolved');
      if (m.rejected) h.outcomes.set(m.rejected, 'rejected');
      if (m.done) resolve(m);
    });
    child.on('exit', (code) => (code === 0 ? resolve({ outside: 0, exited: true }) : reject(new Error(`child exited ${code}`))));
  });

  const pause = (): Promise<void> | undefined => {
    const r = random();
    if (r < 0.3) return undefined;
    if (r < 0.6) return new Promise((res) => setImmediate(res));
    if (r < 0.8) return Promise.resolve();
    return new Promise((res) => setTimeout(res, random() * 3));
  };
  const hotId = () => (random() < 0.5 ? 1 : 1 + Math.floor(random() * 4));
  /** In a history with faults, now and then the next read from the disk fails (disarmed at the history's end). */
  let disarmRead: (() => boolean) | undefined;
  const maybeFailRead = () => {
    if (h.faults === undefined || random() >= 0.1) return;
    if (disarmRead?.()) h.log.push('the armed EIO fired');
    disarmRead = failNextRead();
    h.faults++;
    h.log.push(`fault EIO on the next read (${h.dump?.()})`);
  };
  let seq = 0;
  let maxAttempt = 0;

  async function op(state: { conn: Connection }, hi: number): Promise<void> {
    const conn = state.conn;
    const id = `h${hi}-${seq++}`;
    const kind = random();
    const cid = hotId();
    const note = (o: Outcome, why = '') => {
      h.inFlight.delete(id);
      h.outcomes.set(id, o);
      h.log.push(`${id} ${o}${why ? ` (${why})` : ''}`);
    };
    const doing = (what: string) => void h.inFlight.set(id, what);
    doing(`kind ${kind.toFixed(2)}`);
    // Close the handle at a random moment during this call, now and then.
    const closeLater = random() < 0.05;
    if (closeLater) {
      const delay = random() * 4;
      setTimeout(() => conn.close(), delay);
    }
    try {
      if (kind < mix[0]) {
        // transaction(): read-modify-write with awaits; some nested calls, some throw at the end.
        const throws = random() < 0.1;
        const nestedMode = random();
        const orRollback = random() < 0.05;
        const immediate = random() < 0.1;
        let attempt = 0;
        await conn.transaction(
          async (tx) => {
            attempt++;
            maxAttempt = Math.max(maxAttempt, attempt);
            doing(`transaction() attempt ${attempt}${immediate ? ' immediate' : ''}`);
            const { v } = tx.get<{ v: number }>('SELECT v FROM counter WHERE id = ?', [cid])!;
            await pause();
            tx.run('UPDATE counter SET v = ? WHERE id = ?', [v + 1, cid]);
            h.log.push(`${id}#${attempt} set counter ${cid} to ${v + 1}${immediate ? ' (immediate)' : ''}`);
            const row = [`${id}#${attempt}`, cid, v];
            if (nestedMode < 0.15) {
              await tx.transaction(async (t2) => {
                await pause();
                t2.run('INSERT INTO ledger (who, cid, seen) VALUES (?, ?, ?)', row);
              });
            } else {
              tx.run('INSERT INTO ledger (who, cid, seen) VALUES (?, ?, ?)', row);
            }
            if (nestedMode > 0.85) {
              // A nested call that throws: its write must not survive.
              await tx
                .transaction(async (t2) => {
                  t2.run("INSERT INTO other (tag) VALUES ('inner')");
                  await pause();
                  throw new Error('inner');
                })
                .catch((e: unknown) => {
                  if ((e as Error).message !== 'inner') throw e;
                });
            }
            await pause();
            if (random() < 0.3) tx.get('SELECT count(*) AS n FROM other');
            if (orRollback) tx.run('INSERT OR ROLLBACK INTO uniq (k) VALUES (1)');
            if (throws) throw new Error('callback throws');
            doing(`transaction() attempt ${attempt} committing`);
          },
          { mode: immediate ? 'immediate' : 'concurrent', retry: RETRY },
        );
        note('resolved');
      } else if (kind < mix[1]) {
        // A read-only transaction(): commits nothing, logs nothing.
        await conn.transaction(async (tx) => {
          maybeFailRead();
          tx.all('SELECT * FROM counter');
          await pause();
          tx.get('SELECT count(*) FROM ledger');
        }, { retry: RETRY });
      } else if (kind < mix[2]) {
        // Hand-written BEGIN CONCURRENT, ended by commitAsync() or a synchronous COMMIT.
        const sync = random() < 0.4;
        try {
          conn.exec('BEGIN CONCURRENT');
          const { v } = conn.get<{ v: number }>('SELECT v FROM counter WHERE id = ?', [cid])!;
          await pause();
          conn.run('UPDATE counter SET v = ? WHERE id = ?', [v + 1, cid]);
          h.log.push(`${id}#1 set counter ${cid} to ${v + 1} (hand-written)`);
          conn.run('INSERT INTO ledger (who, cid, seen) VALUES (?, ?, ?)', [`${id}#1`, cid, v]);
          await pause();
          if (random() < 0.05) conn.run('INSERT OR ROLLBACK INTO uniq (k) VALUES (1)');
          doing(sync ? 'sync COMMIT' : 'commitAsync');
          if (sync) conn.exec('COMMIT');
          else await commitAsync(conn);
          note('resolved', sync ? 'sync' : 'async');
        } catch (e) {
          if (conn.isOpen && conn.inTransaction) conn.exec('ROLLBACK');
          throw e;
        }
      } else if (kind < mix[3]) {
        // Autocommit: a write that logs and bumps in one statement, or a read.
        if (random() < 0.6) {
          conn.run('INSERT INTO ledger (who, cid, seen, bump) SELECT ?, id, v, 1 FROM counter WHERE id = ?', [`${id}#1`, cid]);
          note('resolved', 'autocommit');
        } else {
          maybeFailRead();
          conn.all('SELECT * FROM ledger WHERE cid = ?', [cid]);
          if (random() < 0.2) conn.run('INSERT OR ROLLBACK INTO uniq (k) VALUES (1)');
        }
      } else {
        // Pessimistic transaction(), read-modify-write.
        let attempt = 0;
        await conn.transaction(
          async (tx) => {
            attempt++;
            const { v } = tx.get<{ v: number }>('SELECT v FROM counter WHERE id = ?', [cid])!;
            await pause();
            tx.run('UPDATE counter SET v = ? WHERE id = ?', [v + 1, cid]);
            h.log.push(`${id}#${attempt} set counter ${cid} to ${v + 1} (pessimistic)`);
            tx.run('INSERT INTO ledger (who, cid, seen) VALUES (?, ?, ?)', [`${id}#${attempt}`, cid, v]);
          },
          { mode: 'immediate', retry: RETRY },
        );
        note('resolved', 'immediate');
      }
    } catch (e) {
      note('rejected', `${errorKind(e)}: ${(e as Error).message}`.slice(0, 160));
    }
    h.inFlight.delete(id);
    if (!state.conn.isOpen) state.conn = db.connect();
  }

  await Promise.all(
    Array.from({ length: HANDLES }, async (_, hi) => {
      const state = { conn: db.connect() };
      for (let k = 0; k < OPS_PER_HANDLE; k++) {
        live.set(hi, state.conn);
        await op(state, hi);
        await pause();
      }
      state.conn.close();
    }),
  ).then(() => h.inFlight.clear());
  if (disarmRead?.()) h.log.push('the armed EIO fired');
  const eio = h.log.filter((l) => l === 'the armed EIO fired').length;
  const stats = groupCommitStats(db);
  const outside = stats.outside;
  h.log.push(`stats ${JSON.stringify(stats)} most attempts ${maxAttempt}${h.faults !== undefined ? ` faults ${h.faults} (EIO fired ${eio})` : ''}`);
  db.close();
  if (outside !== 0) h.log.push(`outside ${outside}`);
  (h as History & { outside?: number }).outside = outside;
  return { h, file, dir, child, childDone };
}

/** The checks of one history (see the module documentation); returns the problems found. */
async function check(run: Awaited<ReturnType<typeof history>>): Promise<string[]> {
  const { h, file, child, childDone } = run;
  child.send('stop');
  const done = await childDone;
  const problems: string[] = [];
  const outside = (h as History & { outside?: number }).outside ?? 0;
  if (outside !== 0) problems.push(`groupCommitStats().outside = ${outside} in this process`);
  if (done.outside !== 0) problems.push(`groupCommitStats().outside = ${done.outside} in the child`);
  const db = open(file);
  try {
    const rows = db.all<{ who: string; cid: number; seen: number }>('SELECT who, cid, seen FROM ledger');
    const calls = new Map<string, string[]>();
    for (const r of rows) {
      const call = r.who.split('#')[0] as string;
      calls.set(call, [...(calls.get(call) ?? []), r.who]);
    }
    for (const [call, rowsOf] of calls) {
      const o = h.outcomes.get(call);
      if (rowsOf.length > 1) problems.push(`call ${call} committed ${rowsOf.length} times: ${rowsOf.join(', ')} (${o ?? 'no outcome'})`);
      if (o === 'rejected') problems.push(`call ${call} rejected but committed: ${rowsOf.join(', ')}`);
      if (o === undefined && !h.unknown.has(call)) problems.push(`call ${call} committed but has no outcome`);
    }
    for (const [call, o] of h.outcomes) if (o === 'resolved' && !calls.has(call)) problems.push(`call ${call} resolved but is not in the ledger`);
    for (const cid of [1, 2, 3, 4]) {
      const seen = rows.filter((r) => r.cid === cid).map((r) => r.seen).sort((a, b) => a - b);
      const v = db.get<{ v: number }>('SELECT v FROM counter WHERE id = ?', [cid])!.v;
      if (v !== seen.length) problems.push(`counter ${cid} is ${v}, its log has ${seen.length} rows`);
      const dup = seen.filter((s, i) => s !== i);
      if (dup.length > 0) problems.push(`counter ${cid}: values read by committed calls are not 0..n-1 (lost update): ${seen.join(',')}`);
    }
    const inner = db.get<{ n: number }>("SELECT count(*) AS n FROM other WHERE tag = 'inner'")!.n;
    if (inner !== 0) problems.push(`${inner} rows of nested calls that threw survived`);
    const integrity = db.all<{ integrity_check: string }>('PRAGMA integrity_check');
    if (integrity[0]?.integrity_check !== 'ok') problems.push(`integrity_check: ${JSON.stringify(integrity)}`);
    // Not wedged: a fresh engine writes.
    db.run("INSERT INTO other (tag) VALUES ('fresh')");
  } catch (e) {
    problems.push(`checking failed: ${(e as Error).message}`);
  } finally {
    db.close();
  }
  if (stray.length > 0) problems.push(`uncaught: ${stray.splice(0).map((e) => (e as Error)?.stack ?? String(e)).join('\n')}`);
  return problems;
}

describe('attack: group commit under random interleavings, a second process on the file', () => {
  it(`every resolved call committed exactly once, no rejected call committed, no lost update (${RUNS} histories)`, async () => {
    const base = FIRST_SEED !== undefined ? Number(FIRST_SEED) : (Date.now() ^ (process.pid << 8)) >>> 0;
    for (let i = 0; i < RUNS; i++) {
      const seed = (base + i * 7919) >>> 0;
      let hung: History | undefined;
      const running = history(seed, (x) => (hung = x));
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<never>((_r, reject) => {
        timer = setTimeout(() => reject(new Error(`seed ${seed}: the history did not end within ${HISTORY_MS} ms; under way: ${JSON.stringify([...(hung?.inFlight ?? [])])}; ${hung?.dump?.()}`)), HISTORY_MS);
        timer.unref();
      });
      process.stderr.write(`attack-group: history ${i} seed ${seed}\n`);
      let problems: string[];
      try {
        const run = await Promise.race([running, timeout]);
        if (process.env.SIBLITE_ATTACK_GROUP_VERBOSE) process.stderr.write(`${run.h.log.at(-1)}\n`);
        try {
          problems = await Promise.race([check(run), timeout]);
        } finally {
          run.child.kill();
          rmSync(run.dir, { recursive: true, force: true });
        }
        if (problems.length > 0) {
          if (process.env.SIBLITE_ATTACK_GROUP_LOG) writeFileSync(process.env.SIBLITE_ATTACK_GROUP_LOG, run.h.log.join('\n'));
          // The calls the problems name, then the last calls of the history.
          // With faults, the lines before each named call too (the faults it met).
          const before = run.h.faults !== undefined ? 6 : 0;
          const named = run.h.log.flatMap((l, i) =>
            problems.some((p) => p.includes(`call ${l.split(' ')[0]} `)) ? [...run.h.log.slice(Math.max(0, i - before), i), l] : [],
          );
          const tail = [...named, '...', ...run.h.log.slice(-25)].join('\n');
          throw new Error(`seed ${seed} (SIBLITE_ATTACK_GROUP_SEED=${seed}, window ${run.h.window}, cap ${run.h.cap}, faults ${run.h.faults ?? 'off'}):\n${problems.join('\n')}\n-- last calls:\n${tail}`);
        }
      } finally {
        // A history that ended must not have its hang report fire later, over closed databases.
        clearTimeout(timer);
      }
    }
  }, 60_000 + RUNS * 30_000);
});
