/**
 * Property: random programs on 2-8 handles, randomly interleaved statement by statement with
 * awaits in between, produce only serializable histories. Every committed transaction
 * (autocommit statements included) is replayed serially, in commit order, on a fresh database:
 * each must be shown exactly what it was shown in the concurrent run, and the final tables must
 * be equal.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { errorKind, open, type Connection } from '../src/index.js';

type Op =
  | { t: 'get'; k: number }
  | { t: 'range'; lo: number; hi: number }
  | { t: 'sum'; above: number }
  | { t: 'put'; k: number; v: number }
  | { t: 'add'; k: number; d: number }
  | { t: 'del'; k: number }
  | { t: 'incr'; k: number }
  | { t: 'ins'; v: number };

interface Program {
  mode: 'concurrent' | 'autocommit';
  ops: Op[];
  end: 'commit' | 'rollback';
}

const key = fc.integer({ min: 1, max: 8 });
const op: fc.Arbitrary<Op> = fc.oneof(
  fc.record({ t: fc.constant('get' as const), k: key }),
  fc.record({ t: fc.constant('range' as const), lo: key, hi: key }),
  fc.record({ t: fc.constant('sum' as const), above: fc.integer({ min: 0, max: 80 }) }),
  fc.record({ t: fc.constant('put' as const), k: key, v: fc.integer({ min: 0, max: 99 }) }),
  fc.record({ t: fc.constant('add' as const), k: key, d: fc.integer({ min: -5, max: 5 }) }),
  fc.record({ t: fc.constant('del' as const), k: key }),
  fc.record({ t: fc.constant('incr' as const), k: key }),
  fc.record({ t: fc.constant('ins' as const), v: fc.integer({ min: 0, max: 99 }) }),
);
const program: fc.Arbitrary<Program> = fc.record({
  mode: fc.oneof({ weight: 4, arbitrary: fc.constant('concurrent' as const) }, { weight: 1, arbitrary: fc.constant('autocommit' as const) }),
  ops: fc.array(op, { minLength: 1, maxLength: 5 }),
  end: fc.oneof({ weight: 9, arbitrary: fc.constant('commit' as const) }, { weight: 1, arbitrary: fc.constant('rollback' as const) }),
});

/** Runs one op; returns what the application saw. */
function apply(h: Connection, o: Op): unknown {
  switch (o.t) {
    case 'get':
      return h.get('SELECT v FROM kv WHERE k = ?', [o.k]) ?? null;
    case 'range':
      return h.all('SELECT k, v FROM kv WHERE k BETWEEN ? AND ? ORDER BY k', [Math.min(o.lo, o.hi), Math.max(o.lo, o.hi)]);
    case 'sum':
      return h.get('SELECT count(*) AS n, total(v) AS s FROM kv WHERE v > ?', [o.above]);
    case 'put':
      return h.run('INSERT INTO kv (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v', [o.k, o.v]).changes;
    case 'add':
      return h.run('UPDATE kv SET v = v + ? WHERE k = ?', [o.d, o.k]).changes;
    case 'del':
      return h.run('DELETE FROM kv WHERE k = ?', [o.k]).changes;
    case 'incr': {
      // Read-modify-write in the application: the classic lost-update shape.
      const row = h.get<{ v: number }>('SELECT v FROM kv WHERE k = ?', [o.k]);
      if (!row) return null;
      h.run('UPDATE kv SET v = ? WHERE k = ?', [row.v + 1, o.k]);
      return row.v;
    }
    case 'ins':
      // SQLite picks the rowid (in the log table); the application is told it.
      return Number(h.run('INSERT INTO log (v) VALUES (?)', [o.v]).lastInsertRowid);
  }
}

const SCHEMA =
  'CREATE TABLE kv (k INTEGER PRIMARY KEY, v INT NOT NULL); CREATE TABLE log (id INTEGER PRIMARY KEY, v INT NOT NULL);' +
  'INSERT INTO kv VALUES (1, 10), (2, 20), (3, 30), (4, 40), (5, 50), (6, 60);';

interface Committed {
  seq: number;
  steps: Array<{ op: Op; saw: unknown }>;
}

/** A gate per handle: the scheduler lets one handle run one step at a time. */
class Scheduler {
  private waiting = new Map<number, () => void>();
  private arrived: (() => void) | undefined;
  async turn(h: number): Promise<void> {
    await new Promise<void>((resolve) => {
      this.waiting.set(h, resolve);
      this.arrived?.();
    });
  }
  async step(h: number): Promise<boolean> {
    const go = this.waiting.get(h);
    if (!go) return false;
    this.waiting.delete(h);
    const arrived = new Promise<void>((r) => (this.arrived = r));
    go();
    await Promise.race([arrived, this.done.get(h)]);
    return true;
  }
  done = new Map<number, Promise<void>>();
  pending(): number[] {
    return [...this.waiting.keys()];
  }
}

async function runHistory(programs: Program[], schedule: number[]): Promise<void> {
  const db = open(':memory:');
  db.exec(SCHEMA);
  const committed: Committed[] = [];
  let seq = 0;
  const sched = new Scheduler();
  const tasks = programs.map((p, i) => {
    const h = db.connect();
    const task = (async () => {
      await sched.turn(i);
      if (p.mode === 'autocommit') {
        for (const o of p.ops) {
          const saw = apply(h, o);
          committed.push({ seq: ++seq, steps: [{ op: o, saw }] });
          await sched.turn(i);
        }
        h.close();
        return;
      }
      h.exec('BEGIN CONCURRENT');
      const steps: Committed['steps'] = [];
      try {
        for (const o of p.ops) {
          await sched.turn(i);
          steps.push({ op: o, saw: apply(h, o) });
        }
        await sched.turn(i);
        if (p.end === 'rollback') h.exec('ROLLBACK');
        else {
          h.exec('COMMIT');
          committed.push({ seq: ++seq, steps });
        }
      } catch (e) {
        if (errorKind(e) !== 'busy_snapshot') throw e;
        h.exec('ROLLBACK'); // a no-op after a conflict
        expect(h.inTransaction).toBe(false);
      } finally {
        h.close();
      }
    })();
    sched.done.set(i, task);
    return task;
  });
  // Drive the interleaving: the schedule first, then round-robin until everyone is done.
  await new Promise((r) => setImmediate(r));
  let s = 0;
  for (;;) {
    const pending = sched.pending();
    if (pending.length === 0) break;
    const pick = s < schedule.length ? (schedule[s] as number) % programs.length : -1;
    s++;
    const h = pending.includes(pick) ? pick : (pending[s % pending.length] as number);
    await sched.step(h);
    await new Promise((r) => setImmediate(r));
  }
  await Promise.all(tasks);

  // Serial replay in commit order on a fresh database.
  const serial = open(':memory:');
  serial.exec(SCHEMA);
  try {
    for (const c of committed.sort((a, b) => a.seq - b.seq)) {
      serial.exec('BEGIN');
      for (const { op: o, saw } of c.steps) {
        if (o.t === 'ins') {
          // Reserved rowids may differ from a serial max+1: replay with the rowid it was told.
          serial.run('INSERT INTO log (id, v) VALUES (?, ?)', [saw as number, o.v]);
          continue;
        }
        expect(apply(serial, o), `${JSON.stringify(o)} in commit #${c.seq}`).toEqual(saw);
      }
      serial.exec('COMMIT');
    }
    expect(db.all('SELECT * FROM kv ORDER BY k')).toEqual(serial.all('SELECT * FROM kv ORDER BY k'));
    expect(db.all('SELECT * FROM log ORDER BY id')).toEqual(serial.all('SELECT * FROM log ORDER BY id'));
  } finally {
    serial.close();
    db.close();
  }
}

describe('BEGIN CONCURRENT is serializable (property)', () => {
  it('every committed history equals a serial execution in commit order', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(program, { minLength: 2, maxLength: 8 }),
        fc.array(fc.nat({ max: 7 }), { minLength: 0, maxLength: 60 }),
        runHistory,
      ),
      { numRuns: 200 },
    );
  }, 120_000);
});
