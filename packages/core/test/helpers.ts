/**
 * Shared helpers of the core tests: temp directories and handles that are cleaned up after
 * each test, and assertions on the typed errors.
 */
import fs, { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, expect } from 'vitest';
import { BusyError, open, SqliteError, type Connection, type ErrorKind, type OpenOptions } from '../src/index.js';

/** Temp dirs and handles of one test file; everything is closed and removed after each test. */
export function useScope() {
  const conns: Connection[] = [];
  const dirs: string[] = [];
  afterEach(() => {
    for (const c of conns.splice(0).reverse()) c.close();
    for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  });
  const scope = {
    dir(): string {
      const d = mkdtempSync(join(tmpdir(), 'siblite-test-'));
      dirs.push(d);
      return d;
    },
    file(name = 'db.sqlite'): string {
      return join(scope.dir(), name);
    },
    track<T extends Connection>(c: T): T {
      conns.push(c);
      return c;
    },
    open(path: string, options?: OpenOptions): Connection {
      return scope.track(open(path, options));
    },
    connect(c: Connection): Connection {
      return scope.track(c.connect());
    },
  };
  return scope;
}

/** Runs `fn` and returns what it threw; fails the test when it did not throw. */
export function thrown(fn: () => unknown): unknown {
  try {
    fn();
  } catch (e) {
    return e;
  }
  throw new Error('expected the call to throw, but it returned');
}

/** Asserts `fn` throws a SqliteError of this kind (and code), with `retryable` and the class consistent. */
export function expectSqliteError(fn: () => unknown, kind: ErrorKind, code?: string | RegExp): SqliteError {
  const e = thrown(fn);
  return checkSqliteError(e, kind, code);
}

/** Asserts `e` is a SqliteError of this kind (and code). */
export function checkSqliteError(e: unknown, kind: ErrorKind, code?: string | RegExp): SqliteError {
  if (!(e instanceof SqliteError)) throw new Error(`expected a SqliteError of kind ${kind}, got: ${String(e)}`, { cause: e });
  expect({ kind: e.kind, message: e.message }).toEqual({ kind, message: e.message });
  if (typeof code === 'string') expect(e.code).toBe(code);
  else if (code) expect(e.code).toMatch(code);
  const busy = kind === 'busy' || kind === 'busy_snapshot';
  expect(e.retryable).toBe(busy);
  expect(e instanceof BusyError).toBe(busy);
  expect(e).toBeInstanceOf(Error);
  return e;
}

/** Asserts `fn` throws BusyError SQLITE_BUSY. */
export function expectBusy(fn: () => unknown): SqliteError {
  return expectSqliteError(fn, 'busy', 'SQLITE_BUSY');
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** A small seeded PRNG (mulberry32), so that a failing random test can be replayed from its seed. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * The shapes an engine statement's failure can take (an I/O error, out of memory): refused
 * before anything ran, failed after the first statement of its script ran, failed after all of
 * it ran, or ended the whole real transaction (what SQLite does on an I/O error inside one).
 */
export type FaultShape = 'before' | 'half' | 'after' | 'ends';
export const FAULT_SHAPES: readonly FaultShape[] = ['before', 'half', 'after', 'ends'];

interface FaultableEngine {
  exec(sql: string): void;
  db: { exec(sql: string): void; inTransaction: boolean };
}

/**
 * Injects failures into what the engine of `conn` runs through its `exec` (the real engine:
 * transaction control, savepoints, the commit group's undos): `decide(sql)` returns the shape
 * of the failure for that SQL, or undefined to run it. Returns the function that stops it.
 */
export function injectExecFaults(conn: Connection, decide: (sql: string) => FaultShape | undefined): () => void {
  const engine = conn.session.engine as unknown as FaultableEngine;
  const real = Object.getPrototypeOf(engine).exec as (sql: string) => void;
  engine.exec = function (this: FaultableEngine, sql: string): void {
    const shape = decide(sql);
    if (shape === undefined) return real.call(this, sql);
    const wasIn = this.db.inTransaction;
    const ran = shape === 'half' ? (sql.split(';')[0] as string) : sql;
    if (shape === 'half') this.db.exec(ran);
    if (shape === 'after') real.call(this, sql);
    // A RELEASE that committed (of an outermost savepoint) cannot then fail: SQLite's commit
    // fails before its commit point or not at all.
    if ((shape === 'half' || shape === 'after') && wasIn && !this.db.inTransaction && /^\s*RELEASE\b/i.test(ran)) return;
    if (shape === 'ends' && this.db.inTransaction) this.db.exec('ROLLBACK');
    throw new SqliteError(`disk I/O error (injected, ${shape})`, { code: 'SQLITE_IOERR' });
  };
  return () => void delete (engine as Partial<FaultableEngine>).exec;
}

/**
 * Makes the next read from any file in this process fail with EIO (once), as a failing disk
 * does (node's `fs.readSync`, which the engine's file system layer calls). Returns the function
 * that disarms it and tells whether it fired.
 */
export function failNextRead(): () => boolean {
  const real = fs.readSync;
  let fired = false;
  (fs as { readSync: unknown }).readSync = function (...args: unknown[]) {
    if (!fired) {
      fired = true;
      (fs as { readSync: unknown }).readSync = real;
      throw Object.assign(new Error('EIO: i/o error, read (injected)'), { code: 'EIO' });
    }
    return (real as (...a: unknown[]) => number).apply(fs, args);
  };
  return () => {
    (fs as { readSync: unknown }).readSync = real;
    return fired;
  };
}
