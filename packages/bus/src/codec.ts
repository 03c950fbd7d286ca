/**
 * Payload encoding and strict row decoding. Encoding refuses anything JSON cannot carry
 * without loss; decoding refuses any row that is not exactly what the bus writes, with a
 * {@link DecodeError} naming the problem (the worker then dead-letters the row).
 *
 * @module
 */
import { DecodeError, ValidationError } from './errors.js';
import type { Claim } from './store.js';
import type { Message, MessageKind } from './types.js';
import { validateContentType, validateName } from './validate.js';

/** How a payload is stored: `json` (TEXT column) or `bytes` (BLOB column). */
export type Encoding = 'json' | 'bytes';

/** A payload ready to bind. */
export interface EncodedPayload {
  /** How the payload is stored. */
  readonly encoding: Encoding;
  /** JSON text, or the bytes. */
  readonly payload: string | Uint8Array;
  /** The content type to store. */
  readonly contentType: string;
}

/** The message columns as stored (see the SQL plans). */
export interface MessageRow {
  /** The message id. */
  id: unknown;
  /** The routing name. */
  name: unknown;
  /** `command` or `event`. */
  kind: unknown;
  /** `json` or `bytes`. */
  encoding: unknown;
  /** JSON text or bytes. */
  payload: unknown;
  /** The content type. */
  content_type: unknown;
  /** Headers as JSON object text. */
  headers: unknown;
  /** The ordering key or NULL. */
  key: unknown;
  /** Claims so far. */
  attempts: unknown;
  /** Creation time (bus clock, ms). */
  created_at: unknown;
  /** When it became claimable (bus clock, ms). */
  available_at: unknown;
}

const JSON_CT = 'application/json';
const BYTES_CT = 'application/octet-stream';

/** Deepest accepted payload nesting: far beyond real data, well within the stack. */
export const MAX_PAYLOAD_DEPTH = 512;

function checkJson(value: unknown, path: string, stack: Set<object>): void {
  switch (typeof value) {
    case 'string':
    case 'boolean':
      return;
    case 'number':
      if (!Number.isFinite(value)) throw new ValidationError('payload', `payload${path} is ${value}, which JSON cannot represent`);
      if (Object.is(value, -0)) throw new ValidationError('payload', `payload${path} is -0, which JSON stores as 0`);
      return;
    case 'bigint':
      throw new ValidationError('payload', `payload${path} is a BigInt, which JSON cannot represent (convert it to a string)`);
    case 'function':
      throw new ValidationError('payload', `payload${path} is a function, which JSON cannot represent`);
    case 'symbol':
      throw new ValidationError('payload', `payload${path} is a symbol, which JSON cannot represent`);
    case 'undefined':
      throw new ValidationError('payload', `payload${path} is undefined, which JSON cannot represent`);
    case 'object': {
      if (value === null) return;
      if (stack.has(value)) throw new ValidationError('payload', `payload${path} is a circular reference`);
      if (value instanceof Uint8Array) {
        throw new ValidationError('payload', `payload${path} is a Uint8Array nested in JSON; send bytes as the whole payload`);
      }
      if (stack.size >= MAX_PAYLOAD_DEPTH) {
        throw new ValidationError('payload', `payload${path.length > 60 ? `${path.slice(0, 60)}...` : path} is nested deeper than ${MAX_PAYLOAD_DEPTH} levels`);
      }
      stack.add(value);
      if (Array.isArray(value)) {
        const keys = Object.keys(value);
        if (keys.length !== value.length) {
          const extra = keys.find((k) => !/^(0|[1-9][0-9]*)$/.test(k) || Number(k) >= value.length);
          throw new ValidationError(
            'payload',
            extra !== undefined
              ? `payload${path} is an array with a property ${JSON.stringify(extra)}, which JSON drops`
              : `payload${path} is a sparse array (it has holes), which JSON turns into nulls`,
          );
        }
        for (let i = 0; i < value.length; i++) checkJson(value[i], `${path}[${i}]`, stack);
      } else {
        const proto = Object.getPrototypeOf(value);
        if (proto !== Object.prototype && proto !== null) {
          const ctor = (value as { constructor?: { name?: string } }).constructor?.name ?? 'object';
          throw new ValidationError('payload', `payload${path} is a ${ctor}, not a plain object; convert it to JSON data first`);
        }
        for (const [k, v] of Object.entries(value)) {
          // Properties whose value is undefined are omitted, as JSON.stringify does.
          if (v === undefined) continue;
          checkJson(v, `${path}.${k}`, stack);
        }
      }
      stack.delete(value);
      return;
    }
  }
}

/**
 * Encodes a payload: a `Uint8Array` is stored as bytes; anything else must be JSON data
 * (plain objects, arrays, strings, finite numbers, booleans, null) and is stored as JSON text.
 *
 * @throws ValidationError for BigInt, functions, symbols, undefined, cycles, non-finite
 *   numbers, non-plain objects, or an invalid content type.
 */
export function encodePayload(payload: unknown, contentType?: string): EncodedPayload {
  if (contentType !== undefined) validateContentType(contentType);
  if (payload instanceof Uint8Array) {
    return { encoding: 'bytes', payload: new Uint8Array(payload), contentType: contentType ?? BYTES_CT };
  }
  checkJson(payload, '', new Set());
  return { encoding: 'json', payload: JSON.stringify(payload), contentType: contentType ?? JSON_CT };
}

/**
 * Encodes headers as JSON text (they were validated by the caller).
 */
export function encodeHeaders(headers: Record<string, string> | undefined): string {
  return JSON.stringify(headers ?? {});
}

function int(value: unknown, what: string, min = 0): number {
  if (typeof value === 'number' && Number.isSafeInteger(value) && value >= min) return value;
  throw new DecodeError(`${what} is not an integer >= ${min}: ${String(value)}`);
}

/**
 * Decodes one stored row strictly.
 *
 * @param row - the stored columns.
 * @param expected - the kind the table holds.
 * @param position - the log position (events) or `null`.
 * @param group - the group the delivery is for, or `null`.
 * @throws DecodeError naming the first problem found.
 */
export function decodeRow(row: MessageRow, expected: MessageKind, position: number | null, group: string | null): Message {
  if (typeof row.id !== 'string' || row.id.length === 0) throw new DecodeError(`bad id: ${String(row.id)}`);
  if (row.kind !== expected) throw new DecodeError(`bad kind ${JSON.stringify(row.kind)}: expected "${expected}"`);
  if (row.name === null || row.name === undefined) throw new DecodeError('missing name');
  let name: string;
  try {
    name = validateName(row.name);
  } catch (e) {
    throw new DecodeError(`bad name: ${(e as Error).message}`);
  }
  if (typeof row.content_type !== 'string' || row.content_type.length === 0) {
    throw new DecodeError(`bad content type: ${String(row.content_type)}`);
  }
  let headers: Record<string, string>;
  if (typeof row.headers !== 'string') throw new DecodeError(`bad headers: not JSON text (${typeof row.headers})`);
  try {
    headers = JSON.parse(row.headers) as Record<string, string>;
  } catch (e) {
    throw new DecodeError(`bad headers JSON: ${(e as Error).message}`);
  }
  if (headers === null || typeof headers !== 'object' || Array.isArray(headers)) {
    throw new DecodeError('bad headers: not a JSON object');
  }
  for (const [k, v] of Object.entries(headers)) {
    if (typeof v !== 'string') throw new DecodeError(`bad headers: value of ${JSON.stringify(k)} is not a string`);
  }
  let payload: unknown;
  if (row.encoding === 'json') {
    if (typeof row.payload !== 'string') throw new DecodeError(`bad payload: JSON payload stored as ${typeof row.payload}`);
    try {
      payload = JSON.parse(row.payload);
    } catch (e) {
      throw new DecodeError(`bad payload JSON: ${(e as Error).message}`);
    }
  } else if (row.encoding === 'bytes') {
    if (!(row.payload instanceof Uint8Array)) throw new DecodeError(`bad payload: bytes payload stored as ${typeof row.payload}`);
    payload = row.payload;
  } else {
    throw new DecodeError(`bad payload encoding ${JSON.stringify(row.encoding)}`);
  }
  if (row.key !== null && (typeof row.key !== 'string' || row.key.length === 0)) throw new DecodeError(`bad key: ${String(row.key)}`);
  return {
    id: row.id,
    name,
    kind: expected,
    payload,
    contentType: row.content_type,
    headers: Object.freeze(headers),
    key: row.key,
    attempts: int(row.attempts, 'attempts'),
    createdAt: new Date(int(row.created_at, 'created_at')),
    availableAt: new Date(int(row.available_at, 'available_at')),
    position,
    group,
  };
}

/** Decodes a row, or returns `null` when it cannot be decoded (for listings). */
export function decodeOrNull(row: MessageRow, kind: MessageKind, position: number | null, group: string | null): Message | null {
  try {
    return decodeRow(row, kind, position, group);
  } catch {
    return null;
  }
}

/**
 * Builds a {@link Claim} from a claimed row: decoded, or carrying the decode error (the
 * worker then dead-letters it).
 *
 * @param row - the stored columns, with the claim's attempt count.
 * @param ref - the transport's reference of the row (queue sequence or log position).
 * @param kind - `command` or `event`.
 * @param group - the group of an event claim, else `null`.
 * @param token - the claim token.
 */
export function toClaim(row: MessageRow, ref: number, kind: MessageKind, group: string | null, token: string): Claim {
  const attempts = typeof row.attempts === 'number' ? row.attempts : 0;
  const id = typeof row.id === 'string' ? row.id : String(row.id);
  try {
    const message = decodeRow(row, kind, kind === 'event' ? ref : null, group);
    return { ref, token, attempts, group, kind, id, message, decodeError: null };
  } catch (e) {
    const err = e instanceof DecodeError ? e : new DecodeError(String((e as Error)?.message ?? e));
    return { ref, token, attempts, group, kind, id, message: null, decodeError: err };
  }
}
