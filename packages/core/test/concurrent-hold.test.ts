/**
 * A long concurrent transaction holds the engine against other transaction() callbacks instead
 * of being parked and replayed at every turn (concurrent/hold.ts): both still commit, with the
 * results a serial execution gives, and hand-written transactions are parked as before.
 */
import { describe, expect, it } from 'vitest';
import { HOLD_AFTER_STATEMENTS, HOLD_AT_MOST_MS } from '../src/concurrent/hold.js';
import { useScope } from './helpers.js';

const scope = useScope();
const tick = () => new Promise<void>((r) => setImmediate(r));
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const SCHEMA = 'CREATE TABLE acct (id INTEGER PRIMARY KEY, n INT); INSERT INTO acct VALUES (1, 0), (2, 0); CREATE TABLE item (id INTEGER PRIMARY KEY, owner INT, v INT);';

describe('long transactions taking turns', () => {
  it('two transaction() callbacks of 200 statements, an await after each, both commit exactly once', async () => {
    const root = scope.open(':memory:');
    root.exec(SCHEMA);
    const hs = [scope.track(root.connect()), scope.track(root.connect())];
    const attempts = [0, 0];
    const seen: number[][] = [[], []];
    await Promise.all(
      hs.map((h, k) =>
        h.transaction(async (tx) => {
          attempts[k]!++;
          seen[k] = [];
          for (let j = 0; j < 200; j++) {
            if (j % 2 === 0) tx.run('UPDATE acct SET n = n + 1 WHERE id = ?', [k + 1]);
            else seen[k]!.push(tx.get<{ n: number }>('SELECT n FROM acct WHERE id = ?', [k + 1])!.n);
            tx.run('INSERT INTO item (owner, v) VALUES (?, ?)', [k + 1, j]);
            await tick();
          }
        }, { mode: 'concurrent' }),
      ),
    );
    expect(root.all('SELECT id, n FROM acct ORDER BY id')).toEqual([{ id: 1, n: 100 }, { id: 2, n: 100 }]);
    expect(root.get('SELECT count(*) AS c FROM item')).toEqual({ c: 400 });
    // What each callback saw is what it would have seen alone (its committed attempt).
    for (const s of seen) expect(s).toEqual(Array.from({ length: 100 }, (_, i) => i + 1));
    // One of them was refused while the other held the engine and ran again.
    expect(attempts[0]! + attempts[1]!).toBeGreaterThan(2);
  });

  it('a hand-written BEGIN CONCURRENT is parked as before, never refused', async () => {
    const root = scope.open(':memory:');
    root.exec(SCHEMA);
    const a = scope.track(root.connect());
    const b = scope.track(root.connect());
    const long = a.transaction(async (tx) => {
      for (let j = 0; j < HOLD_AFTER_STATEMENTS * 3; j++) {
        tx.run('UPDATE acct SET n = n + 1 WHERE id = 1');
        await tick();
      }
    }, { mode: 'concurrent' });
    b.exec('BEGIN CONCURRENT');
    for (let j = 0; j < HOLD_AFTER_STATEMENTS * 2; j++) {
      b.run('UPDATE acct SET n = n + 1 WHERE id = 2');
      await tick();
    }
    b.exec('COMMIT');
    // An autocommit write is never refused either.
    b.run('INSERT INTO item (owner, v) VALUES (2, 0)');
    await long;
    expect(root.all('SELECT n FROM acct ORDER BY id')).toEqual([{ n: HOLD_AFTER_STATEMENTS * 3 }, { n: HOLD_AFTER_STATEMENTS * 2 }]);
  });

  it("a COMMIT refused by a holder waits for it and keeps the callback's work", async () => {
    const root = scope.open(':memory:');
    root.exec(SCHEMA);
    const a = scope.track(root.connect());
    const b = scope.track(root.connect());
    let bRuns = 0;
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const short = b.transaction(async (tx) => {
      bRuns++;
      tx.run('UPDATE acct SET n = n + 1 WHERE id = 2');
      await gate; // a grows long meanwhile; b's COMMIT then finds it in the engine
    }, { mode: 'concurrent' });
    const long = a.transaction(async (tx) => {
      for (let j = 0; j < HOLD_AFTER_STATEMENTS * 2; j++) {
        tx.run('UPDATE acct SET n = n + 1 WHERE id = 1');
        if (j === HOLD_AFTER_STATEMENTS + 1) release();
        await tick();
      }
    }, { mode: 'concurrent' });
    await Promise.all([short, long]);
    expect(bRuns).toBe(1);
    expect(root.all('SELECT n FROM acct ORDER BY id')).toEqual([{ n: HOLD_AFTER_STATEMENTS * 2 }, { n: 1 }]);
  });

  it('a long transaction that keeps awaiting is parked after all once another callback has waited long enough', async () => {
    const root = scope.open(':memory:');
    root.exec(SCHEMA);
    const a = scope.track(root.connect());
    const b = scope.track(root.connect());
    const order: string[] = [];
    let grown!: () => void;
    const isLong = new Promise<void>((r) => (grown = r));
    const long = a.transaction(async (tx) => {
      for (let j = 0; j < HOLD_AFTER_STATEMENTS + 4; j++) tx.run('UPDATE acct SET n = n + 1 WHERE id = 1');
      grown();
      await sleep(HOLD_AT_MOST_MS * 4);
      tx.run('UPDATE acct SET n = n + 1 WHERE id = 1');
      order.push('long');
    }, { mode: 'concurrent' });
    await isLong;
    await b.transaction((tx) => {
      tx.run('UPDATE acct SET n = n + 1 WHERE id = 2');
    }, { mode: 'concurrent' });
    order.push('short');
    await long;
    expect(order).toEqual(['short', 'long']);
    expect(root.all('SELECT n FROM acct ORDER BY id')).toEqual([{ n: HOLD_AFTER_STATEMENTS + 5 }, { n: 1 }]);
  });
});
