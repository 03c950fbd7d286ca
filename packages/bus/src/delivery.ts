/**
 * The public settlement API of a claimed message, shared by every transport: each
 * settlement at most once, every call fenced by the claim token in the store.
 *
 * @module
 */
import { DecodeError, StaleClaimError } from './errors.js';
import type { Claim, Store } from './store.js';
import type { Delivery } from './types.js';
import { validateMs } from './validate.js';

/** A {@link Delivery} whose `ack` takes the transport's options. */
export interface TransportDelivery<Options> extends Omit<Delivery, 'ack'> {
  /** Marks the message handled (inside the caller's transaction when the options say so). @throws StaleClaimError */
  ack(options?: Options): Promise<void>;
}

/**
 * Wraps `claim` in a {@link Delivery}. `ack` is the transport's acknowledgement, which may
 * take options (`conn` on SQLite, `client` on PostgreSQL) to join the caller's transaction.
 *
 * @param claim - a decoded claim.
 * @param store - settles it.
 * @param ack - acknowledges it, with the caller's options.
 * @throws DecodeError when the claim carries no decoded message.
 */
export function makeDelivery<Options>(
  claim: Claim,
  store: Pick<Store<unknown>, 'nack' | 'bury' | 'extend'>,
  ack: (options?: Options) => Promise<void>,
): TransportDelivery<Options> {
  if (!claim.message) throw claim.decodeError ?? new DecodeError('undecodable message');
  let settled: string | null = null;
  const stale = () => new StaleClaimError(claim.id, `this delivery was already settled with ${settled}()`);
  const once = (what: string, fn: () => Promise<void>): Promise<void> => {
    if (settled !== null) return Promise.reject(stale());
    let p: Promise<void>;
    try {
      p = fn();
    } catch (e) {
      return Promise.reject(e);
    }
    return p.then(() => {
      settled = what;
    });
  };
  return {
    message: claim.message,
    token: claim.token,
    ack: (options?: Options) => once('ack', () => ack(options)),
    nack: (options?: { delay?: number }) => once('nack', () => store.nack(claim, options?.delay === undefined ? 0 : validateMs('delay', options.delay), null)),
    deadLetter: (reason: string) => once('deadLetter', () => store.bury(claim, 'dead', reason)),
    park: (reason: string) => once('park', () => store.bury(claim, 'parked', reason)),
    extendLease: (ms: number) => {
      if (settled !== null) return Promise.reject(stale());
      try {
        return store.extend(claim, ms);
      } catch (e) {
        return Promise.reject(e);
      }
    },
  };
}
