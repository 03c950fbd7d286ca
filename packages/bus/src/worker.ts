/**
 * The worker loop shared by `listen` (commands) and `subscribe` (a group's events).
 *
 * @module
 */
import { backoffPolicy } from './backoff.js';
import { PermanentError, StaleClaimError, ValidationError } from './errors.js';
import { onNotify } from './notify.js';
import type { Claim, SqliteBus } from './sqlite-bus.js';
import type { Handlers, Message, Worker, WorkerCounters, WorkerEvent, WorkerOptions } from './types.js';
import { validateMs, validatePositiveInt } from './validate.js';

/** Where a worker gets its work. @internal */
export interface Source {
  /** Notifier key that signals new work. */
  readonly channel: string;
  /** Runs once before the first claim (creates the group). */
  prepare(): Promise<void>;
  /** Claims up to `limit` messages under a lease of `lease` ms. */
  claim(limit: number, lease: number): Promise<Claim[]>;
  /** The earliest time something becomes claimable, or null. */
  nextDue(): Promise<number | null>;
  /** Called after a handler's acknowledgement committed. */
  settled(): void;
  /** Called when nothing is claimable (and when stopping): catch up on deferred work. */
  idle(): Promise<void>;
}

const DEFAULTS = { concurrency: 1, lease: 30_000, maxAttempts: 5, pollInterval: 1_000 };

function errorText(e: unknown): string {
  if (e instanceof Error) return `${e.name}: ${e.message}`;
  try {
    return String(e);
  } catch {
    return 'unprintable error';
  }
}

/** A running worker. @internal */
export class BusWorker implements Worker {
  readonly counters: WorkerCounters = { claimed: 0, handled: 0, retried: 0, deadLettered: 0, unknown: 0, stale: 0, inFlight: 0 };
  private readonly concurrency: number;
  private readonly lease: number;
  private readonly maxAttempts: number;
  private readonly pollInterval: number;
  private readonly onUnknown: 'ack' | 'deadLetter' | 'skip';
  private readonly keepAlive: boolean;
  private readonly delayFor: (attempt: number) => number;
  private readonly onEvent: ((e: WorkerEvent) => void) | undefined;
  private readonly signal: AbortSignal;
  private readonly abortListener: (() => void) | undefined;
  private running = true;
  private dirty = true;
  private wakeUp: (() => void) | null = null;
  private loopDone: Promise<void> = Promise.resolve();
  private readonly inflight = new Set<Promise<void>>();
  private drainWaiters: { after: number; resolve: () => void }[] = [];
  private claimSeq = 0;
  private unsubscribe: () => void = () => {};

  constructor(
    private readonly bus: SqliteBus,
    private readonly source: Source,
    private readonly handlers: Handlers,
    options: WorkerOptions,
    private readonly onStopped: () => void,
  ) {
    if (options === null || typeof options !== 'object') throw new ValidationError('options', 'options must be an object');
    this.concurrency = options.concurrency === undefined ? DEFAULTS.concurrency : validatePositiveInt('concurrency', options.concurrency);
    this.lease = options.lease === undefined ? DEFAULTS.lease : validateMs('lease', options.lease, 1);
    this.maxAttempts = options.maxAttempts === undefined ? DEFAULTS.maxAttempts : validatePositiveInt('maxAttempts', options.maxAttempts);
    this.pollInterval = options.pollInterval === undefined ? DEFAULTS.pollInterval : validateMs('pollInterval', options.pollInterval, 1);
    const onUnknown = options.onUnknown ?? 'ack';
    if (onUnknown !== 'ack' && onUnknown !== 'deadLetter' && onUnknown !== 'skip') {
      throw new ValidationError('onUnknown', 'onUnknown must be "ack", "deadLetter" or "skip"');
    }
    this.onUnknown = onUnknown;
    this.keepAlive = options.keepAlive === true;
    this.delayFor = backoffPolicy(options.backoff);
    if (options.onEvent !== undefined && typeof options.onEvent !== 'function') {
      throw new ValidationError('onEvent', 'onEvent must be a function');
    }
    this.onEvent = options.onEvent;
    const controller = new AbortController();
    this.signal = controller.signal;
    const external = options.signal;
    if (external !== undefined) {
      if (!(external instanceof AbortSignal)) throw new ValidationError('signal', 'signal must be an AbortSignal');
      const abort = () => {
        controller.abort(external.reason);
        void this.stop();
      };
      if (external.aborted) {
        this.running = false;
        controller.abort(external.reason);
      } else {
        external.addEventListener('abort', abort, { once: true });
        this.abortListener = () => external.removeEventListener('abort', abort);
      }
    }
  }

  /** Starts the loop. */
  start(): void {
    this.unsubscribe = onNotify(this.source.channel, () => this.wake());
    this.loopDone = this.loop().finally(() => {
      this.unsubscribe();
      this.abortListener?.();
      this.onStopped();
      this.resolveDrain();
    });
  }

  private emit(e: WorkerEvent): void {
    if (!this.onEvent) return;
    try {
      this.onEvent(e);
    } catch {
      // a progress callback must not break the worker
    }
  }

  private wake(): void {
    this.dirty = true;
    const w = this.wakeUp;
    this.wakeUp = null;
    w?.();
  }

  private sleep(ms: number): Promise<void> {
    if (this.dirty || !this.running) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.wakeUp = null;
        resolve();
      }, Math.max(1, ms));
      if (!this.keepAlive) timer.unref();
      this.wakeUp = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }

  /** Resolves the drain waiters registered before claim number `claimSeq` began (all when omitted). */
  private resolveDrain(claimSeq = Infinity): void {
    if (this.drainWaiters.length === 0) return;
    const ready = this.drainWaiters.filter((w) => w.after < claimSeq);
    this.drainWaiters = this.drainWaiters.filter((w) => w.after >= claimSeq);
    for (const w of ready) w.resolve();
  }

  private async loop(): Promise<void> {
    let prepared = false;
    while (this.running) {
      try {
        if (!prepared) {
          await this.source.prepare();
          prepared = true;
        }
        const free = this.concurrency - this.inflight.size;
        if (free <= 0) {
          await Promise.race(this.inflight);
          continue;
        }
        this.dirty = false;
        const claimSeq = ++this.claimSeq;
        const claims = await this.source.claim(free, this.lease);
        if (!this.running) {
          // stopped while claiming: give the claims back at once
          for (const c of claims) void this.bus.nack(c, 0, null).catch(() => {});
          break;
        }
        if (claims.length === 0) {
          if (this.inflight.size === 0) {
            await this.source.idle();
            this.resolveDrain(claimSeq);
          }
          if (this.dirty) continue;
          let wait = this.pollInterval;
          const due = await this.source.nextDue().catch(() => null);
          if (due !== null) wait = Math.min(wait, due - Date.now() + 1);
          if (wait <= 0) continue;
          await this.sleep(wait);
          continue;
        }
        for (const claim of claims) {
          this.counters.claimed++;
          const p: Promise<void> = this.handle(claim).finally(() => {
            this.inflight.delete(p);
            this.counters.inFlight = this.inflight.size;
            this.wake();
          });
          this.inflight.add(p);
          this.counters.inFlight = this.inflight.size;
        }
      } catch (e) {
        if (!this.running) break;
        this.emit({ type: 'error', error: e });
        await this.sleep(Math.min(this.pollInterval, 100));
      }
    }
    await Promise.allSettled([...this.inflight]);
    await this.source.idle().catch(() => {});
  }

  private async settle(step: () => Promise<void>, message: Message | null): Promise<boolean> {
    try {
      await step();
      return true;
    } catch (e) {
      if (e instanceof StaleClaimError) {
        this.counters.stale++;
        if (message) this.emit({ type: 'stale', message });
        return false;
      }
      this.emit({ type: 'error', error: e });
      return false;
    }
  }

  private async deadLetter(claim: Claim, reason: string): Promise<void> {
    if (await this.settle(() => this.bus.bury(claim, 'dead', reason), claim.message)) {
      this.counters.deadLettered++;
      this.emit({ type: 'dead', message: claim.message, reason });
    }
  }

  private async handle(claim: Claim): Promise<void> {
    const message = claim.message;
    if (!message) {
      await this.deadLetter(claim, `decode error: ${claim.decodeError?.message ?? 'unknown'}`);
      return;
    }
    if (claim.attempts > this.maxAttempts) {
      await this.deadLetter(claim, `lease expired on the last of ${this.maxAttempts} attempts (the handler never settled it)`);
      return;
    }
    const handler = this.handlers[message.name];
    if (!handler) {
      if (this.onUnknown === 'deadLetter') {
        await this.deadLetter(claim, `no handler for "${message.name}"`);
      } else if (await this.settle(() => this.bus.ack(claim), message)) {
        this.counters.unknown++;
        this.emit({ type: 'unknown', message });
      }
      return;
    }
    const started = performance.now();
    const h = this.bus.acquire();
    let failure: unknown;
    let ok = false;
    try {
      await this.bus.txOn(h, async (tx) => {
        await handler(message, {
          conn: tx,
          signal: this.signal,
          extendLease: (ms: number) => this.bus.extend(claim, ms),
        });
        this.bus.ackOn(tx, claim);
      });
      ok = true;
    } catch (e) {
      failure = e;
    } finally {
      this.bus.release(h);
    }
    if (ok) {
      this.counters.handled++;
      this.source.settled();
      this.emit({ type: 'handled', message, ms: performance.now() - started });
      return;
    }
    if (failure instanceof StaleClaimError) {
      this.counters.stale++;
      this.emit({ type: 'stale', message });
      return;
    }
    if (failure instanceof PermanentError) {
      await this.deadLetter(claim, `permanent error: ${failure.message}`);
      return;
    }
    if (claim.attempts >= this.maxAttempts) {
      await this.deadLetter(claim, `failed ${claim.attempts} of ${this.maxAttempts} attempts; last error: ${errorText(failure)}`);
      return;
    }
    const delay = this.delayFor(claim.attempts);
    if (await this.settle(() => this.bus.nack(claim, delay, errorText(failure)), message)) {
      this.counters.retried++;
      this.emit({ type: 'retry', message, error: failure, delay });
    }
  }

  /** Graceful stop: no new claims; resolves once in-flight handlers have finished. */
  async stop(): Promise<void> {
    this.running = false;
    this.wake();
    await this.loopDone;
  }

  /** Resolves when nothing is claimable now and nothing is in flight in this worker. */
  drain(): Promise<void> {
    if (!this.running) return this.loopDone;
    return new Promise((resolve) => {
      this.drainWaiters.push({ after: this.claimSeq, resolve });
      this.wake();
    });
  }
}
