/**
 * Hot reads: the statements (SQL text and parameters) whose re-check made a concurrent
 * transaction conflict lately, per engine. Under contention on one row, every optimistic
 * attempt that reads it while another transaction is about to change it is wasted: it runs,
 * awaits, and conflicts. The priority lane (lane.ts) uses this set to queue such a
 * `transaction()` callback at its first hot read instead, before it has done any work, while
 * the lane is in use; a read that never conflicted (another row, another key) is never
 * queued, so contention on one row does not serialize the transactions around it.
 *
 * Only a scheduling hint: it decides who waits, never what commits (validation is unchanged).
 * @module
 */
import type { BindParams } from '../engine/execute.js';

/** How long a statement stays hot after its last conflict, or its last run by a lane holder, in ms. */
export const HOT_FOR_MS = 1000;

/** At most this many hot statements are kept per engine (the oldest are forgotten first). */
const MAX_HOT = 256;

/** A statement with a longer text parameter is not tracked. */
const MAX_TEXT = 256;

/** The hot statements of one engine. */
export class HotReads {
  /** Statement key (see {@link statementKey}) to the last time it was seen hot. */
  private readonly seen = new Map<string, number>();

  /** Whether no statement is hot (nothing to look up). */
  get empty(): boolean {
    return this.seen.size === 0;
  }

  /** A re-check of the statement `key` conflicted (or a lane holder ran it): it is hot now. */
  touch(key: string, now: number): void {
    this.seen.delete(key);
    this.seen.set(key, now);
    if (this.seen.size > MAX_HOT) this.seen.delete(this.seen.keys().next().value as string);
  }

  /** Whether the statement `key` is hot at `now` (forgotten once {@link HOT_FOR_MS} have passed). */
  has(key: string, now: number): boolean {
    const at = this.seen.get(key);
    if (at === undefined) return false;
    if (now - at <= HOT_FOR_MS) return true;
    this.seen.delete(key);
    return false;
  }
}

/**
 * A key for a statement and its parameters, or `undefined` when a parameter is not a number,
 * BigInt, string (of at most 256 characters), boolean or null (a blob, for instance): such a
 * statement is never tracked.
 */
export function statementKey(sql: string, params: BindParams | undefined): string | undefined {
  if (params === undefined || params === null) return sql;
  if (Array.isArray(params)) {
    let key = sql;
    for (const v of params as unknown[]) {
      const part = valueKey(v);
      if (part === undefined) return undefined;
      key += part;
    }
    return key;
  }
  if (typeof params === 'object') {
    if (params instanceof Uint8Array) return undefined;
    let key = sql;
    for (const name in params as Record<string, unknown>) {
      const part = valueKey((params as Record<string, unknown>)[name]);
      if (part === undefined) return undefined;
      key += `\u0000${name}${part}`;
    }
    return key;
  }
  const part = valueKey(params);
  return part === undefined ? undefined : sql + part;
}

/** One parameter's part of a statement key (typed, so that 1 and '1' differ), or `undefined`. */
function valueKey(v: unknown): string | undefined {
  switch (typeof v) {
    case 'number':
      return `\u0000n${v}`;
    case 'bigint':
      return `\u0000b${v}`;
    case 'string':
      // A long text is not worth a key (nor the copy of it a key would make).
      return v.length > MAX_TEXT ? undefined : `\u0000s${v}`;
    case 'boolean':
      return `\u0000n${v ? 1 : 0}`;
    default:
      return v === null ? '\u0000z' : undefined;
  }
}
