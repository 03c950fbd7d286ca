/**
 * The one place where caller-supplied identifiers and options are checked. Every public
 * entry point validates here before any SQL runs; the namespace is the only caller string
 * that ever reaches SQL text, and only after {@link validateNamespace} accepted it.
 *
 * @module
 */
import { ValidationError } from './errors.js';
import type { BatchCommand, DeadLetterFilter, PauseTarget, ReceiveOptions } from './types.js';

/** Longest accepted name, group or namespace, in bytes (all accepted characters are ASCII). */
export const MAX_IDENTIFIER_BYTES = 128;
/** Longest accepted message id or ordering key, in characters. */
export const MAX_ID_LENGTH = 512;

const NAME_RE = /^[A-Za-z0-9_.-]+$/;
const GROUP_RE = /^[A-Za-z0-9_-]+$/;

function describe(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value.length > 60 ? `${value.slice(0, 60)}...` : value);
  if (typeof value === 'bigint') return `${value}n`;
  if (typeof value === 'function') return 'a function';
  return String(value);
}

function identifier(argument: string, value: unknown, re: RegExp, allowed: string): string {
  if (typeof value !== 'string') {
    throw new ValidationError(argument, `${argument} must be a string, got ${typeof value}`);
  }
  if (value.length === 0) throw new ValidationError(argument, `${argument} must not be empty`);
  if (value.length > MAX_IDENTIFIER_BYTES) {
    throw new ValidationError(argument, `${argument} ${describe(value)} is longer than ${MAX_IDENTIFIER_BYTES} bytes`);
  }
  if (!re.test(value)) {
    throw new ValidationError(argument, `${argument} ${describe(value)} may contain only ${allowed}`);
  }
  return value;
}

/**
 * Checks a message name: 1 to 128 bytes of ASCII letters, digits, `-`, `_` and `.`.
 *
 * @throws ValidationError when the name is not acceptable.
 */
export function validateName(name: unknown): string {
  return identifier('name', name, NAME_RE, 'ASCII letters, digits, "-", "_" and "."');
}

/**
 * Checks a consumer group: 1 to 128 bytes of ASCII letters, digits, `-` and `_`.
 *
 * @throws ValidationError when the group is not acceptable.
 */
export function validateGroup(group: unknown): string {
  return identifier('group', group, GROUP_RE, 'ASCII letters, digits, "-" and "_"');
}

/**
 * Checks the table namespace: 1 to 128 bytes of ASCII letters, digits, `-` and `_`, not
 * starting with `sqlite_` (reserved by SQLite). Table names are derived from it.
 *
 * @throws ValidationError when the namespace is not acceptable.
 */
export function validateNamespace(namespace: unknown): string {
  const ns = identifier('namespace', namespace, GROUP_RE, 'ASCII letters, digits, "-" and "_"');
  if (ns.toLowerCase().startsWith('sqlite_')) {
    throw new ValidationError('namespace', `namespace ${describe(ns)} must not start with "sqlite_" (reserved by SQLite)`);
  }
  return ns;
}

/** Longest accepted delay, lease or age: 100 years, so every time stays a safe integer. */
export const MAX_MS = 100 * 365 * 24 * 3_600_000;
/** Longest accepted timer-driven duration (lease, poll interval, timeouts): what `setTimeout` can wait. */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * Checks a message id or ordering key: a non-empty string of at most 512 characters, without
 * NUL characters.
 *
 * @throws ValidationError when it is not acceptable.
 */
export function validateId(argument: 'id' | 'key', value: unknown): string {
  if (typeof value !== 'string') throw new ValidationError(argument, `${argument} must be a string, got ${typeof value}`);
  if (value.length === 0) throw new ValidationError(argument, `${argument} must not be empty`);
  if (value.length > MAX_ID_LENGTH) throw new ValidationError(argument, `${argument} is longer than ${MAX_ID_LENGTH} characters`);
  if (value.includes('\u0000')) throw new ValidationError(argument, `${argument} must not contain NUL characters`);
  return value;
}

/**
 * Checks headers: a plain object whose keys are non-empty strings and whose values are strings.
 *
 * @throws ValidationError when they are not acceptable.
 */
export function validateHeaders(headers: unknown): Record<string, string> {
  if (headers === null || typeof headers !== 'object' || Array.isArray(headers)) {
    throw new ValidationError('headers', 'headers must be an object of string values');
  }
  const proto = Object.getPrototypeOf(headers);
  if (proto !== Object.prototype && proto !== null) {
    throw new ValidationError('headers', 'headers must be a plain object');
  }
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(headers)) {
    if (k.length === 0) throw new ValidationError('headers', 'header names must not be empty');
    if (typeof v !== 'string') {
      throw new ValidationError('headers', `header ${JSON.stringify(k)} must be a string, got ${typeof v}`);
    }
    out[k] = v;
  }
  return out;
}

/**
 * Checks a content type: a non-empty string of at most 255 characters.
 *
 * @throws ValidationError when it is not acceptable.
 */
export function validateContentType(value: unknown): string {
  if (typeof value !== 'string' || value.length === 0 || value.length > 255) {
    throw new ValidationError('contentType', 'contentType must be a non-empty string of at most 255 characters');
  }
  return value;
}

/**
 * Checks a duration or delay in milliseconds: a finite number from `min` to `max`.
 *
 * @throws ValidationError when it is not acceptable.
 */
export function validateMs(argument: string, value: unknown, min = 0, max = MAX_MS): number {
  if (typeof value !== 'number' || !Number.isFinite(value) || value < min || value > max) {
    throw new ValidationError(argument, `${argument} must be a number from ${min} to ${max} (milliseconds), got ${describe(value)}`);
  }
  return value;
}

/**
 * Checks a command priority: an integer from -1000 to 1000.
 *
 * @throws ValidationError when it is not acceptable.
 */
export function validatePriority(value: unknown): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < -1000 || value > 1000) {
    throw new ValidationError('priority', `priority must be an integer from -1000 to 1000, got ${describe(value)}`);
  }
  return value;
}

/**
 * Checks a positive integer option (`concurrency`, `maxAttempts`, `batch`, ...).
 *
 * @throws ValidationError when it is not acceptable.
 */
export function validatePositiveInt(argument: string, value: unknown): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 1) {
    throw new ValidationError(argument, `${argument} must be an integer >= 1, got ${describe(value)}`);
  }
  return value;
}

/**
 * Checks a handler map: an object mapping valid names to functions.
 *
 * @throws ValidationError when it is not acceptable.
 */
export function validateHandlers(handlers: unknown): void {
  if (handlers === null || typeof handlers !== 'object') {
    throw new ValidationError('handlers', 'handlers must be an object mapping names to functions');
  }
  for (const [name, fn] of Object.entries(handlers)) {
    validateName(name);
    if (typeof fn !== 'function') {
      throw new ValidationError('handlers', `handler for ${JSON.stringify(name)} must be a function`);
    }
  }
}

/**
 * Checks a pause target and returns its stored key: `queue` (nothing given), `name:<name>`
 * or `group:<group>`.
 *
 * @throws ValidationError for anything else.
 */
export function pauseKey(target: PauseTarget | undefined): string {
  if (target === undefined) return 'queue';
  if (target === null || typeof target !== 'object') throw new ValidationError('target', 'target must be { name } or { group } or nothing');
  if (target.name !== undefined && target.group !== undefined) throw new ValidationError('target', 'give a name or a group, not both');
  if (target.name !== undefined) return `name:${validateName(target.name)}`;
  if (target.group !== undefined) return `group:${validateGroup(target.group)}`;
  return 'queue';
}

/**
 * Checks `startFrom`: `true` for `end`, `false` for `beginning` or nothing.
 *
 * @throws ValidationError for anything else.
 */
export function startFromEnd(startFrom: unknown): boolean {
  if (startFrom === undefined || startFrom === 'beginning') return false;
  if (startFrom === 'end') return true;
  throw new ValidationError('startFrom', 'startFrom must be "beginning" or "end"');
}

/** The lease of a claim by `receive()` when none is given, in ms. */
export const DEFAULT_RECEIVE_LEASE = 30_000;

/** `receive()` options, checked (every transport reads them the same way). */
export interface CheckedReceive {
  /** The lease in ms. */
  readonly lease: number;
  /** The command names to claim, or `null` for any. */
  readonly names: string[] | null;
  /** The group whose events to claim, or `null` for commands. */
  readonly group: string | null;
  /** A new group starts at the end of the log. */
  readonly fromEnd: boolean;
}

/**
 * Checks the options of `receive()`.
 *
 * @throws ValidationError for invalid options.
 */
export function checkReceiveOptions(options: ReceiveOptions): CheckedReceive {
  if (options === null || typeof options !== 'object') throw new ValidationError('options', 'options must be an object');
  const lease = options.lease === undefined ? DEFAULT_RECEIVE_LEASE : validateMs('lease', options.lease, 1);
  if (options.names !== undefined) options.names.forEach((n) => validateName(n));
  const names = options.names ? [...options.names] : null;
  if (options.group === undefined) return { lease, names, group: null, fromEnd: false };
  return { lease, names, group: validateGroup(options.group), fromEnd: startFromEnd(options.startFrom) };
}

/** A checked dead-letter filter, `null` where not given (ready to bind). */
export interface CheckedFilter {
  /** `queue` or `log`. */
  source: 'queue' | 'log' | null;
  /** The group. */
  grp: string | null;
  /** `dead` or `parked`. */
  status: 'dead' | 'parked' | null;
  /** The message name. */
  name: string | null;
}

/**
 * Checks a dead-letter filter and returns its parts (`null` where not given).
 *
 * @throws ValidationError for an invalid filter.
 */
export function checkFilter(filter: DeadLetterFilter): CheckedFilter {
  if (filter === null || typeof filter !== 'object') throw new ValidationError('filter', 'filter must be an object');
  const source = filter.source ?? null;
  if (source !== null && source !== 'queue' && source !== 'log') throw new ValidationError('source', 'source must be "queue" or "log"');
  const status = filter.status ?? null;
  if (status !== null && status !== 'dead' && status !== 'parked') throw new ValidationError('status', 'status must be "dead" or "parked"');
  const grp = filter.group === undefined ? null : validateGroup(filter.group);
  const name = filter.name === undefined ? null : validateName(filter.name);
  return { source, grp, status, name };
}

/** The most commands one `sendMany` call takes. */
export const MAX_BATCH = 10_000;

/**
 * Validates the messages of `sendMany` with `check` (a transport's checks of one message),
 * every one before anything is written. A `ValidationError` of message `i` is thrown again
 * naming it: argument `messages[i].name`, message prefixed with `messages[i]: `.
 */
export function checkBatch<T>(messages: unknown, check: (m: BatchCommand) => T): T[] {
  if (!Array.isArray(messages)) throw new ValidationError('messages', 'messages must be an array of { name, payload, ...options }');
  if (messages.length > MAX_BATCH) throw new ValidationError('messages', `at most ${MAX_BATCH} messages per sendMany call; got ${messages.length}`);
  return messages.map((m: unknown, i) => {
    try {
      if (m === null || typeof m !== 'object') throw new ValidationError('message', 'a message must be an object { name, payload, ...options }');
      return check(m as BatchCommand);
    } catch (e) {
      if (!(e instanceof ValidationError)) throw e;
      throw new ValidationError(`messages[${i}].${e.argument}`, `messages[${i}]: ${e.message}`);
    }
  });
}
