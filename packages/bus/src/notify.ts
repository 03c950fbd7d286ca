/**
 * The in-process notifier: wakes idle workers at once when work is produced through the
 * same process, without polling. Keyed by the database's instance id (stored in its meta
 * table, so every handle and every bus on one database shares a key) plus the namespace
 * and the channel (`queue` or `log`). Work from other processes is found by polling.
 *
 * @module
 */
import type { Connection } from '@siblite/core';

const listeners = new Map<string, Set<() => void>>();

/** Registers `fn` for `key`; returns the function that unregisters it. */
export function onNotify(key: string, fn: () => void): () => void {
  let set = listeners.get(key);
  if (!set) {
    set = new Set();
    listeners.set(key, set);
  }
  set.add(fn);
  return () => {
    const s = listeners.get(key);
    if (!s) return;
    s.delete(fn);
    if (s.size === 0) listeners.delete(key);
  };
}

/** Wakes every listener of `key`. */
export function notify(key: string): void {
  const set = listeners.get(key);
  if (!set) return;
  for (const fn of [...set]) {
    try {
      fn();
    } catch {
      // a listener must not break the producer
    }
  }
}

const watching = new WeakMap<Connection, Set<() => void>>();

/**
 * Runs `fn` once `conn` is no longer in a transaction (committed or rolled back), or at once
 * when it is not in one. The core has no commit hook, so a cheap unref'd timer checks the
 * handle's `inTransaction` flag every few milliseconds while a transaction is open.
 */
export function afterTransaction(conn: Connection, fn: () => void): void {
  if (!conn.isOpen || !conn.inTransaction) {
    fn();
    return;
  }
  let pending = watching.get(conn);
  if (pending) {
    pending.add(fn);
    return;
  }
  pending = new Set([fn]);
  watching.set(conn, pending);
  const check = () => {
    if (conn.isOpen && conn.inTransaction) {
      setTimeout(check, 2).unref();
      return;
    }
    const fns = watching.get(conn);
    watching.delete(conn);
    for (const f of fns ?? []) f();
  };
  setTimeout(check, 1).unref();
}
