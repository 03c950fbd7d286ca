/**
 * Retention as every transport offers it: the policy, its validation and defaults, one pass
 * (trim the log, prune settled commands), and the unref'd timers that run passes and the
 * scheduler in the background. A transport supplies `trim` and `prune`.
 *
 * @module
 */
import { ValidationError } from './errors.js';
import type { Logger } from './types.js';
import { MAX_TIMER_MS, validateMs } from './validate.js';

/** Automatic retention: what a bus keeps and for how long (see `trim` and `prune` of each transport). */
export interface RetentionOptions {
  /** How often to run it, in ms. Default 60 000. */
  every?: number;
  /** Keep handled and cancelled commands (and so their ids: the dedupe window) this long, in ms. Default 7 days. */
  done?: number;
  /** Keep dead and parked commands and dead letters this long, in ms; `Infinity` keeps them. Default 30 days. */
  dead?: number;
  /**
   * Events: trimmed once every group is past them; with `maxAge` (ms), also any event older
   * than that, read or not (groups behind it skip it). Default: only once every group is past.
   */
  maxEventAge?: number;
}

/** What `trim` removed. */
export interface TrimResult {
  /** Events removed from the log. */
  readonly events: number;
  /** Groups whose offset was moved up past events removed by age before they read them. */
  readonly groupsSkipped: number;
}

/** What `prune` removed. */
export interface PruneResult {
  /** Settled commands removed from the queue (their ids may be sent again). */
  readonly commands: number;
  /** Dead letters removed. */
  readonly deadLetters: number;
}

/** What one retention pass (`retain`) removed. */
export interface RetainResult {
  /** From the log. */
  readonly trim: TrimResult;
  /** From the queue and the dead letters. */
  readonly prune: PruneResult;
}

/** The retention operations a transport implements. */
export interface Retainable {
  /** Trims the event log (see `SqliteBus.trim`). */
  trim(options?: { maxAge?: number }): Promise<TrimResult>;
  /** Deletes settled commands and old dead letters (see `SqliteBus.prune`). */
  prune(olderThan: number, options?: { dead?: number }): Promise<PruneResult>;
}

const DAY = 24 * 3_600_000;
/** The defaults of a retention policy, in ms. */
export interface RetentionDefaults {
  /** How often a pass runs. */
  readonly every: number;
  /** How long handled and cancelled commands are kept. */
  readonly done: number;
  /** How long dead and parked commands and dead letters are kept. */
  readonly dead: number;
}

/** The defaults of a retention policy: every minute; 7 days for handled commands, 30 for dead ones. */
export const DEFAULT_RETENTION: RetentionDefaults = { every: 60_000, done: 7 * DAY, dead: 30 * DAY };

/**
 * Validates the `retention` option of a bus: `false` (or absent) for none, `true` for the
 * defaults, or a policy.
 *
 * @throws ValidationError for anything else.
 */
export function checkRetention(r: RetentionOptions | boolean | undefined): RetentionOptions | false {
  if (r === undefined || r === false) return false;
  if (r === true) return { ...DEFAULT_RETENTION };
  if (r === null || typeof r !== 'object') throw new ValidationError('retention', 'retention must be true, false or an object');
  const out: RetentionOptions = {};
  if (r.every !== undefined) out.every = validateMs('retention.every', r.every, 1, MAX_TIMER_MS);
  if (r.done !== undefined) out.done = validateMs('retention.done', r.done);
  if (r.dead !== undefined) out.dead = r.dead === Infinity ? Infinity : validateMs('retention.dead', r.dead);
  if (r.maxEventAge !== undefined) out.maxEventAge = validateMs('retention.maxEventAge', r.maxEventAge);
  return out;
}

/**
 * One retention pass with `policy` (defaults where it says nothing): trims the log, then
 * prunes settled commands and old dead letters.
 *
 * @throws ValidationError for an invalid policy.
 */
export async function retainWith(bus: Retainable, policy: RetentionOptions = {}): Promise<RetainResult> {
  const p = checkRetention(policy) || { ...DEFAULT_RETENTION };
  const trim = await bus.trim(p.maxEventAge === undefined ? {} : { maxAge: p.maxEventAge });
  const prune = await bus.prune(p.done ?? DEFAULT_RETENTION.done, { dead: p.dead ?? DEFAULT_RETENTION.dead });
  return { trim, prune };
}

/**
 * Runs `task` every `ms` on an unref'd timer (never two runs at once); a failure is logged
 * unless `stopped()` says the bus is closing. Returns the timer, for `clearInterval`.
 */
export function runEvery(ms: number, task: () => Promise<unknown>, logger: Logger | null, what: string, stopped: () => boolean): NodeJS.Timeout {
  let running = false;
  const timer = setInterval(() => {
    if (running || stopped()) return;
    running = true;
    task()
      .catch((e) => {
        if (!stopped()) logger?.error(`[siblite/bus] ${what} failed (tried again later):`, e);
      })
      .finally(() => {
        running = false;
      });
  }, ms);
  timer.unref();
  return timer;
}
