/**
 * Memory (spec "Statements": "no API leaks engine memory when used normally"): the engine's
 * WebAssembly heap does not grow across 100k statement cycles, and closing handles and engines
 * releases their statements.
 *
 * The heap is node-sqlite3-wasm's WebAssembly.Memory, which the package does not export. It is
 * captured here by watching `new WebAssembly.Instance` while siblite loads the package (the load
 * happens at the first open() of this test file), and checked to be the heap siblite uses.
 */
import { describe, expect, it } from 'vitest';
import { open, type Connection } from '../src/index.js';
import { useScope } from './helpers.js';

const scope = useScope();

// The project's type libraries do not declare WebAssembly; these few members are all we use.
interface WasmMemory {
  readonly buffer: ArrayBuffer;
}
interface WasmApi {
  Instance: new (...args: unknown[]) => { readonly exports: Record<string, unknown> };
  Memory: new (...args: unknown[]) => WasmMemory;
}
const WA = (globalThis as unknown as { WebAssembly: WasmApi }).WebAssembly;
const memories: WasmMemory[] = [];
const OriginalInstance = WA.Instance;
WA.Instance = new Proxy(OriginalInstance, {
  construct(target, args, newTarget) {
    const instance = Reflect.construct(target, args, newTarget) as InstanceType<WasmApi['Instance']>;
    for (const v of Object.values(instance.exports)) if (v instanceof WA.Memory) memories.push(v);
    return instance;
  },
});
let heap: WasmMemory | undefined;

/** The engine's heap size in bytes (it only ever grows, so growth means peak use went up). */
function heapBytes(): number {
  if (!heap) {
    open(':memory:').close(); // loads the engine, if this file has not yet
    WA.Instance = OriginalInstance;
    expect(memories.length).toBeGreaterThan(0);
    // The largest memory instantiated during the load is the SQLite heap.
    heap = memories.reduce((a, b) => (b.buffer.byteLength > a.buffer.byteLength ? b : a));
  }
  return heap.buffer.byteLength;
}

const MB = 1024 * 1024;
/** Allowed growth across a 100k-iteration loop: far below any per-iteration leak (>= 10 bytes x 100k = 1 MB). */
const BOUND = 1 * MB;

function setup(): Connection {
  const db = scope.open(':memory:');
  db.exec('CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT, b BLOB); INSERT INTO t VALUES (1, NULL, NULL)');
  return db;
}

describe('engine memory', () => {
  it('the probe measures the heap siblite uses', () => {
    const db = setup();
    const before = heapBytes();
    db.run('CREATE TABLE fat (b BLOB)');
    db.run('INSERT INTO fat VALUES (randomblob(?))', [8 * MB]);
    expect(heapBytes() - before).toBeGreaterThanOrEqual(8 * MB);
  });

  it('100k prepare/run/finalize cycles and 100k cached run() calls do not grow the heap', () => {
    const db = setup();
    const text = 'x'.repeat(200);
    const blob = new Uint8Array(200).fill(7);
    const cycle = (i: number) => {
      const up = db.prepare('UPDATE t SET v = ?, b = ? WHERE id = 1');
      up.run([text, blob]);
      up.finalize();
      if (i % 10 === 0) {
        const sel = db.prepare('SELECT v, b, :i AS i FROM t WHERE id = :id');
        sel.get({ id: 1, i });
        sel.finalize();
      }
    };
    const cached = (i: number) => {
      db.run('UPDATE t SET v = :v, b = @b WHERE id = $id', { v: text, b: blob, id: 1 });
      if (i % 10 === 0) db.get('SELECT v, b, ? AS i FROM t WHERE id = 1', [i]);
    };
    for (let i = 0; i < 2_000; i++) {
      cycle(i);
      cached(i);
    }
    const before = heapBytes();
    for (let i = 0; i < 100_000; i++) cycle(i);
    const afterPrepared = heapBytes();
    for (let i = 0; i < 100_000; i++) cached(i);
    const afterCached = heapBytes();
    expect(afterPrepared - before).toBeLessThanOrEqual(BOUND);
    expect(afterCached - before).toBeLessThanOrEqual(BOUND);
    expect(db.get('SELECT length(v) AS n FROM t')).toEqual({ n: 200 });
  });

  it('statements evicted from the per-handle cache are released (many distinct SQL texts)', () => {
    const db = setup();
    for (let i = 0; i < 1_000; i++) db.get(`SELECT ${i} AS n, v FROM t WHERE id = 1`);
    const before = heapBytes();
    for (let i = 0; i < 10_000; i++) db.get(`SELECT ${i % 5_000} AS n, v FROM t WHERE id = 1`);
    expect(heapBytes() - before).toBeLessThanOrEqual(BOUND);
  });

  it('errors leave nothing behind (failed binds, constraint errors, busy errors)', () => {
    const db = setup();
    db.exec('CREATE TABLE u (k TEXT UNIQUE)');
    db.run("INSERT INTO u VALUES ('k')");
    const other = scope.connect(db);
    const text = 'y'.repeat(500);
    const fail = () => {
      for (const f of [
        () => db.run('INSERT INTO u VALUES (?)', ['k']),
        () => db.run('UPDATE t SET v = ?, b = ? WHERE id = 1', [text, {} as never]),
        () => db.run('UPDATE t SET v = :v WHERE id = 1', { v: text, nope: 1 }),
        () => db.prepare('SELEC 1'),
      ]) {
        try {
          f();
        } catch {
          // expected
        }
      }
    };
    for (let i = 0; i < 500; i++) fail();
    db.exec('BEGIN IMMEDIATE; UPDATE t SET v = 1');
    const before = heapBytes();
    for (let i = 0; i < 4_000; i++) {
      fail();
      try {
        other.get('SELECT v FROM t');
      } catch {
        // busy
      }
    }
    db.exec('ROLLBACK');
    expect(heapBytes() - before).toBeLessThanOrEqual(BOUND);
  });

  it('closing a handle finalizes its prepared and cached statements', () => {
    const db = setup();
    const round = () => {
      const sib = db.connect();
      const stmts = Array.from({ length: 20 }, (_, k) => sib.prepare(`SELECT ${k} AS k, v FROM t`));
      for (const s of stmts) s.get();
      for (let k = 0; k < 20; k++) sib.run(`UPDATE t SET v = '${k}' WHERE id = 1`);
      sib.close();
      for (const s of stmts) expect(s.isFinalized).toBe(true);
    };
    for (let i = 0; i < 200; i++) round();
    const before = heapBytes();
    for (let i = 0; i < 1_000; i++) round();
    expect(heapBytes() - before).toBeLessThanOrEqual(BOUND);
    expect(db.get('SELECT v FROM t')).toEqual({ v: '19' });
  });

  it('closing the last handle closes the engine with its statements: open/close cycles do not grow the heap', () => {
    const file = scope.file();
    const seed = open(file);
    seed.exec('CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, NULL)');
    seed.close();
    const round = (i: number) => {
      const db = open(file);
      const sib = db.connect();
      db.prepare('SELECT v FROM t').get(); // never finalized by the user
      sib.prepare('UPDATE t SET v = ?').run([String(i)]);
      sib.get('SELECT count(*) FROM t');
      db.exec('BEGIN; UPDATE t SET v = v');
      sib.close();
      db.close(); // rolls back the open transaction and closes the engine
    };
    for (let i = 0; i < 20; i++) round(i);
    const before = heapBytes();
    for (let i = 0; i < 300; i++) round(i);
    expect(heapBytes() - before).toBeLessThanOrEqual(BOUND);
    const check = scope.open(file);
    expect(check.get('SELECT v FROM t')).toEqual({ v: '299' });
  });
});
