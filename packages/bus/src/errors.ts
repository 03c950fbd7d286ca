/**
 * The errors `@siblite/bus` throws. Every one is a {@link BusError}, itself a core
 * `SqliteError` (so `errorKind()` and `isRetryable()` work on them; none is retryable),
 * with a stable `code`.
 *
 * @module
 */
import { SqliteError, type ErrorKind , type SqliteErrorCode } from '@siblite/core';

/**
 * Base class of every error the bus itself throws (database errors from `@siblite/core`
 * pass through unchanged as `SqliteError`).
 *
 * @example
 * ```ts
 * try { await bus.send('bad name!', {}); }
 * catch (e) { if (e instanceof BusError) console.error(e.code, e.message); }
 * ```
 */
export class BusError extends SqliteError {
  /**
   * @param code - stable machine-readable code (`SIBLITE_BUS_...`).
   * @param message - human-readable explanation.
   * @param kind - the core error kind (`misuse` for bad arguments, `closed`, `other`).
   * @param cause - the underlying error, if any.
   */
  constructor(code: SqliteErrorCode, message: string, kind: ErrorKind = 'other', cause?: unknown) {
    super(message, { code, kind, cause });
    this.name = new.target.name;
  }
}

/**
 * An argument was rejected before any SQL ran: an invalid name, group, namespace, id, key,
 * header, option, or a payload that cannot be stored as JSON without loss (BigInt,
 * functions, symbols, cycles, non-finite numbers, class instances).
 *
 * @example
 * ```ts
 * await expect(bus.send('a b', 1)).rejects.toThrow(ValidationError);
 * ```
 */
export class ValidationError extends BusError {
  /** Which argument was rejected (`name`, `group`, `namespace`, `payload`, `delay`, ...). */
  readonly argument: string;

  /**
   * @param argument - which argument was rejected.
   * @param message - why.
   */
  constructor(argument: string, message: string) {
    super('SIBLITE_BUS_INVALID_ARGUMENT', message, 'misuse');
    this.argument = argument;
  }
}

/**
 * A settlement (`ack`, `nack`, `deadLetter`, `park`, `extendLease`) was attempted with a
 * claim token that is no longer current: the lease expired and the message was claimed
 * again (or settled) by someone else. Nothing was changed.
 *
 * @example
 * ```ts
 * try { await delivery.ack(); }
 * catch (e) { if (e instanceof StaleClaimError) { // another worker owns it now
 * } }
 * ```
 */
export class StaleClaimError extends BusError {
  /** The id of the message whose claim is stale. */
  readonly messageId: string;

  /**
   * @param messageId - id of the message.
   * @param detail - extra context for the message text.
   */
  constructor(messageId: string, detail = '') {
    super(
      'SIBLITE_BUS_STALE_CLAIM',
      `stale claim on message ${JSON.stringify(messageId)}: its lease expired and it was claimed or settled by someone else${detail ? ` (${detail})` : ''}`,
    );
    this.messageId = messageId;
  }
}

/**
 * A stored row could not be decoded into a message (unknown kind, bad headers JSON,
 * missing or invalid name, corrupt payload...). The bus moves such rows to the dead
 * letters with this error's message as the reason; it never blocks on them.
 */
export class DecodeError extends BusError {
  /**
   * @param message - what is wrong with the row.
   */
  constructor(message: string) {
    super('SIBLITE_BUS_DECODE', message, 'corrupt');
  }
}

/**
 * Throw this from a handler to dead-letter the message at once, without retries.
 *
 * @example
 * ```ts
 * bus.listen({
 *   'order.charge': async (msg) => {
 *     if (!isValid(msg.payload)) throw new PermanentError('invalid order');
 *   },
 * });
 * ```
 */
export class PermanentError extends BusError {
  /**
   * @param message - the reason recorded with the dead letter.
   * @param options - `cause`: the underlying error.
   */
  constructor(message: string, options?: { cause?: unknown }) {
    super('SIBLITE_BUS_PERMANENT', message, 'other', options?.cause);
  }
}

/** The bus was used after `close()`. */
export class BusClosedError extends BusError {
  /** Creates the error. */
  constructor() {
    super('SIBLITE_BUS_CLOSED', 'the bus is closed', 'closed');
  }
}
