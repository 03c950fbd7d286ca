import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { decodeRow, encodePayload, type MessageRow } from '../src/codec.js';
import { DecodeError, ValidationError } from '../src/errors.js';
import { buildPlans } from '../src/sqlite/plans.js';
import { validateGroup, validateName, validateNamespace } from '../src/validate.js';

const row = (over: Partial<MessageRow> = {}): MessageRow => ({
  id: 'm1',
  name: 'a.b',
  kind: 'command',
  encoding: 'json',
  payload: '{"x":1}',
  content_type: 'application/json',
  headers: '{"h":"v"}',
  key: null,
  attempts: 1,
  created_at: 1,
  available_at: 2,
  ...over,
});

/** Whether a JSON value holds -0 somewhere. */
function hasNegativeZero(v: unknown): boolean {
  if (Object.is(v, -0)) return true;
  if (Array.isArray(v)) return v.some(hasNegativeZero);
  if (v !== null && typeof v === 'object') return Object.values(v).some(hasNegativeZero);
  return false;
}

describe('codec', () => {
  it('JSON payloads round-trip exactly (property)', () => {
    fc.assert(
      // -0 is refused (JSON would store it as 0: lossy); see the test below.
      fc.property(fc.jsonValue().filter((v) => !hasNegativeZero(v)), (value) => {
        const enc = encodePayload(value);
        const msg = decodeRow(row({ encoding: enc.encoding, payload: enc.payload }), 'command', null, null);
        expect(msg.payload).toEqual(value);
      }),
    );
  });

  it('refuses -0 anywhere in a payload (property)', () => {
    fc.assert(
      fc.property(fc.jsonValue(), fc.constantFrom<(v: unknown) => unknown>((v) => [v, -0], (v) => ({ v, z: { n: -0 } })), (v, wrap) => {
        const value = wrap(v);
        expect(() => encodePayload(value)).toThrow(ValidationError);
      }),
    );
  });

  it('byte payloads round-trip (property)', () => {
    fc.assert(
      fc.property(fc.uint8Array(), (bytes) => {
        const enc = encodePayload(bytes, 'application/x-test');
        const msg = decodeRow(row({ encoding: enc.encoding, payload: enc.payload }), 'command', null, null);
        expect(msg.payload).toEqual(bytes);
      }),
    );
  });

  it('rejects what JSON cannot carry', () => {
    const cyclic: unknown[] = [];
    cyclic.push(cyclic);
    class Point {
      x = 1;
    }
    for (const bad of [1n, { a: 1n }, () => 1, Symbol('s'), undefined, [undefined], cyclic, Number.NaN, Infinity, new Date(), new Point(), new Map(), { nested: new Uint8Array(1) }]) {
      expect(() => encodePayload(bad)).toThrow(ValidationError);
    }
    expect(encodePayload({ a: undefined, b: 1 }).payload).toBe('{"b":1}');
    const shared = { s: 1 };
    expect(encodePayload([shared, shared]).payload).toBe('[{"s":1},{"s":1}]'); // shared, not cyclic
  });

  it('decodes strictly', () => {
    const bad: [Partial<MessageRow>, RegExp][] = [
      [{ kind: 'event' }, /bad kind/],
      [{ name: null }, /missing name/],
      [{ name: 'a b' }, /bad name/],
      [{ headers: '{' }, /bad headers JSON/],
      [{ headers: '[]' }, /not a JSON object/],
      [{ headers: '{"a":1}' }, /not a string/],
      [{ headers: null }, /bad headers/],
      [{ payload: '{' }, /bad payload JSON/],
      [{ payload: new Uint8Array(1) }, /stored as object/],
      [{ encoding: 'bytes', payload: 'text' }, /bytes payload/],
      [{ encoding: 'xml' }, /encoding/],
      [{ id: '' }, /bad id/],
      [{ attempts: -1 }, /attempts/],
      [{ created_at: 'now' }, /created_at/],
      [{ content_type: '' }, /content type/],
      [{ key: '' }, /bad key/],
    ];
    for (const [over, re] of bad) {
      let error: unknown;
      try {
        decodeRow(row(over), 'command', null, null);
      } catch (e) {
        error = e;
      }
      expect(error).toBeInstanceOf(DecodeError);
      expect((error as Error).message).toMatch(re);
    }
  });
});

describe('validation', () => {
  it('accepts exactly the documented names, groups and namespaces (property)', () => {
    const chars = fc.constantFrom(...'abcXYZ019-_. "\';é\u0000/'.split(''));
    fc.assert(
      fc.property(fc.array(chars, { maxLength: 140 }).map((a) => a.join('')), (s) => {
        const nameOk = s.length >= 1 && s.length <= 128 && /^[A-Za-z0-9_.-]+$/.test(s);
        const groupOk = s.length >= 1 && s.length <= 128 && /^[A-Za-z0-9_-]+$/.test(s);
        expect(accepts(() => validateName(s))).toBe(nameOk);
        expect(accepts(() => validateGroup(s))).toBe(groupOk);
        expect(accepts(() => validateNamespace(s))).toBe(groupOk && !s.toLowerCase().startsWith('sqlite_'));
      }),
    );
  });

  it('derives every table name from the validated namespace, quoted', () => {
    const plans = buildPlans('my-app_1');
    expect(plans.tables.queue).toBe('"my-app_1_queue"');
    expect(() => buildPlans('x"; DROP TABLE y; --')).toThrow(ValidationError);
  });
});

function accepts(fn: () => unknown): boolean {
  try {
    fn();
    return true;
  } catch (e) {
    if (!(e instanceof ValidationError)) throw e;
    return false;
  }
}
