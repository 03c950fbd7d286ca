import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { open, type Connection } from '@siblite/core';
import { SqliteBus, type SqliteBusOptions } from '../src/index.js';

/** Opens a bus on a fresh database; call cleanup() at the end. */
export async function makeBus(where: 'memory' | 'file' = 'memory', options: SqliteBusOptions = {}) {
  let dir: string | undefined;
  let path = ':memory:';
  if (where === 'file') {
    dir = mkdtempSync(join(tmpdir(), 'siblite-bus-'));
    path = join(dir, 'bus.db');
  }
  const conn: Connection = open(path);
  const bus = await SqliteBus.open(conn, { logger: null, ...options });
  return {
    conn,
    bus,
    path,
    dir,
    async cleanup() {
      await bus.close();
      conn.close();
      if (dir) rmSync(dir, { recursive: true, force: true });
    },
  };
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/**
 * Runs `fn` until it does not throw a retryable error (another process holding the file), 5 ms
 * apart: for the test process's own reads of a file that worker processes share.
 */
export async function whenFree<T>(fn: () => T): Promise<T> {
  for (;;) {
    try {
      return fn();
    } catch (e) {
      if (!(e as { retryable?: boolean }).retryable) throw e;
      await sleep(5);
    }
  }
}

/** Polls `cond` until true or the deadline passes (then throws). */
export async function until(cond: () => boolean | Promise<boolean>, timeoutMs = 20_000, what = 'condition'): Promise<void> {
  const end = performance.now() + timeoutMs;
  while (!(await cond())) {
    if (performance.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}
