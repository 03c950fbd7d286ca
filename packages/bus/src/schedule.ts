/**
 * Schedules: a command sent on a cron expression (parsed by croner) or at a fixed interval.
 * Each firing is a command whose id names the schedule and the slot
 * (`schedule:<name>:<slot ms>`), so a slot fired by two processes at once is stored once:
 * exactly one command per slot, whichever process fires it.
 *
 * @module
 */
import { Cron } from 'croner';
import { ValidationError } from './errors.js';
import type { Payload } from './types.js';
import { MAX_MS, validateGroup, validateHeaders, validateId, validateName, validatePriority } from './validate.js';

/** What `schedule` accepts: a cron expression or an interval, and the command to send. */
export interface ScheduleSpec {
  /** A cron expression (5 or 6 fields, seconds first when 6; croner syntax). */
  cron?: string;
  /** Or a fixed interval in ms (at least 1 000). */
  every?: number;
  /** IANA time zone of the cron expression. Default: the process's. */
  timezone?: string;
  /** The command name to send at each slot. */
  name: string;
  /** Its payload (the same every time). */
  payload?: Payload;
  /** Its headers. */
  headers?: Record<string, string>;
  /** Its ordering key. */
  key?: string;
  /** Its priority. */
  priority?: number;
}

/** A stored schedule, as `schedules()` lists it. */
export interface ScheduleInfo {
  /** The schedule's name. */
  readonly schedule: string;
  /** The command name it sends. */
  readonly name: string;
  /** Its cron expression, or `null`. */
  readonly cron: string | null;
  /** Its interval in ms, or `null`. */
  readonly every: number | null;
  /** Its time zone, or `null`. */
  readonly timezone: string | null;
  /** The next slot. */
  readonly nextAt: Date;
}

/** Checks a schedule name: like a group (ASCII letters, digits, `-`, `_`). */
export function validateScheduleName(name: unknown): string {
  try {
    return validateGroup(name);
  } catch (e) {
    throw new ValidationError('schedule', (e as Error).message.replace(/^group/, 'schedule'));
  }
}

/** The validated timing of a spec. */
export interface Timing {
  /** The cron expression, or `null`. */
  readonly cron: string | null;
  /** The interval in ms, or `null`. */
  readonly every: number | null;
  /** The cron expression's time zone, or `null` for the process's. */
  readonly timezone: string | null;
}

/**
 * Checks a spec's timing and message fields (the payload is encoded by the caller).
 *
 * @throws ValidationError for anything invalid (nothing is stored).
 */
export function validateSpec(spec: ScheduleSpec): Timing {
  if (spec === null || typeof spec !== 'object') throw new ValidationError('spec', 'the schedule must be an object');
  validateName(spec.name);
  if (spec.headers !== undefined) validateHeaders(spec.headers);
  if (spec.key !== undefined) validateId('key', spec.key);
  if (spec.priority !== undefined) validatePriority(spec.priority);
  const hasCron = spec.cron !== undefined;
  const hasEvery = spec.every !== undefined;
  if (hasCron === hasEvery) throw new ValidationError('spec', 'give exactly one of cron and every');
  if (hasEvery) {
    const every = spec.every as unknown;
    if (typeof every !== 'number' || !Number.isInteger(every) || every < 1_000 || every > MAX_MS) {
      throw new ValidationError('every', `every must be an integer number of ms from 1000 to ${MAX_MS}`);
    }
    if (spec.timezone !== undefined) throw new ValidationError('timezone', 'a timezone applies to cron schedules only');
    return { cron: null, every, timezone: null };
  }
  if (typeof spec.cron !== 'string' || spec.cron.length > 200) throw new ValidationError('cron', 'cron must be a cron expression');
  if (spec.timezone !== undefined && typeof spec.timezone !== 'string') throw new ValidationError('timezone', 'timezone must be a string');
  const timing = { cron: spec.cron, every: null, timezone: spec.timezone ?? null };
  nextSlot(timing, Date.now()); // throws ValidationError when croner refuses it
  return timing;
}

/**
 * The first slot strictly after `after` (ms): for an interval, the next multiple of it
 * (slots are aligned to the epoch, so every process computes the same ones).
 *
 * @throws ValidationError for an expression croner refuses, or one that never fires.
 */
export function nextSlot(t: Timing, after: number): number {
  if (t.every !== null) return (Math.floor(after / t.every) + 1) * t.every;
  let next: Date | null;
  try {
    const job = new Cron(t.cron as string, { paused: true, ...(t.timezone ? { timezone: t.timezone } : {}) });
    next = job.nextRun(new Date(after));
  } catch (e) {
    throw new ValidationError('cron', `invalid cron expression ${JSON.stringify(t.cron)}: ${(e as Error).message}`);
  }
  if (next === null) throw new ValidationError('cron', `the cron expression ${JSON.stringify(t.cron)} never fires`);
  return next.getTime();
}

/**
 * The slot after the one firing now: {@link nextSlot}, or an hour from `now` for an
 * expression this croner refuses (a row edited by hand), so it is looked at again later.
 */
export function followingSlot(t: Timing, now: number): number {
  try {
    return nextSlot({ cron: t.cron, every: t.every, timezone: t.timezone }, now);
  } catch {
    return now + 3_600_000;
  }
}

/** The id of the command fired for `schedule` at `slot`: the same in every process. */
export function slotId(schedule: string, slot: number): string {
  return `schedule:${schedule}:${slot}`;
}
