/**
 * The worker runtime shared by every transport and by `listen` (commands) and `subscribe`
 * (a group's events): concurrency, claims, handler runs with lease renewal, timeouts and
 * abort signals, retries with backoff, dead letters, graceful and forced stops. It talks to
 * storage only through the {@link Store} and {@link Source} interfaces.
 *
 * @module
 */
import { setImmediate as yieldToLoop } from 'node:timers/promises';
import { Abandon } from './abandon.js';
import { backoffPolicy } from './backoff.js';
import { PermanentError, StaleClaimError, ValidationError } from './errors.js';
import { onNotify } from './notify.js';
import type { Connection } from '@siblite/core';
import type { Claim, Source, Store } from './store.js';
import type { Handlers, Logger, Message, StopOptions, Worker, WorkerCounters, WorkerEvent, WorkerOptions } from './types.js';
import { MAX_TIMER_MS, validateMs, validatePositiveInt } from './validate.js';

const DEFAULTS = { concurrency: 1, lease: 30_000, maxAttempts: 5, pollInterval: 1_000, stopTimeout: 30_000 };
/** How long a worker with few free slots waits for more to free up before it claims (see `loop`). */
const CLAIM_GATHER_MS = 5;
/**
 * Settling handlers (code finished, acknowledgement committing) whose slots a worker gives to
 * new claims, per slot of its concurrency: a worker holds at most `concurrency * (1 + 8)` claims.
 */
const SETTLING_PER_SLOT = 8;

/**
 * The most claims a worker of `concurrency` holds at once: its running handlers and the
 * settling ones whose slots it reused (see `SETTLING_PER_SLOT`). A transport that claims ahead
 * for a worker (the SQLite prefetch) buffers no more than this.
 */
export function maxHeldClaims(concurrency: number): number {
  return concurrency * (1 + SETTLING_PER_SLOT);
}

/** Why a handler's signal was aborted. */
class AbortReason extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'AbortError';
  }
}

function errorText(e: unknown): string {
  if (e instanceof Error) return `${e.name}: ${e.message}`;
  try {
    return String(e);
  } catch {
    return 'unprintable error';
  }
}

/** A handler running now, with what is needed to abort or abandon it. */
interface Running {
  readonly claim: Claim;
  /**
   * Behind `context.signal`, created when a handler first reads it (most never do: an
   * AbortController per message is a measurable share of a no-op handler's cost).
   */
  signal: AbortController | null;
  /** Why `context.signal` was aborted (stop, lost lease, timeout), `undefined` while it is not. */
  aborted: unknown;
  /** Rolls the handler's transaction back for good (stop timeout, handler timeout). */
  readonly abandon: Abandon;
  done: Promise<void>;
}

/** Aborts `context.signal` of `r`, or records why for when the handler reads it. */
function abortHandler(r: Running, reason: AbortReason): void {
  if (r.aborted !== undefined) return;
  r.aborted = reason;
  r.signal?.abort(reason);
}

/** The signal a handler sees as `context.signal` (see {@link Running.signal}). */
function handlerSignal(r: Running): AbortSignal {
  if (!r.signal) {
    r.signal = new AbortController();
    if (r.aborted !== undefined) r.signal.abort(r.aborted);
  }
  return r.signal.signal;
}

/** Checks the `timeout` option: a number for every name, or a map of names to numbers. */
function timeoutPolicy(timeout: WorkerOptions['timeout']): (name: string) => number | undefined {
  if (timeout === undefined) return () => undefined;
  if (typeof timeout === 'number') {
    const ms = validateMs('timeout', timeout, 1, MAX_TIMER_MS);
    return () => ms;
  }
  if (timeout === null || typeof timeout !== 'object') throw new ValidationError('timeout', 'timeout must be a number or an object of numbers');
  const map = new Map<string, number>();
  for (const [name, ms] of Object.entries(timeout)) map.set(name, validateMs(`timeout.${name}`, ms, 1, MAX_TIMER_MS));
  return (name) => map.get(name);
}

/** Validates the logger option: `undefined` means the bus's default, `null` silences. */
export function checkLogger(logger: unknown, argument = 'logger'): Logger | null | undefined {
  if (logger === undefined || logger === null) return logger;
  const l = logger as Logger;
  if (typeof l !== 'object' || typeof l.warn !== 'function' || typeof l.error !== 'function') {
    throw new ValidationError(argument, `${argument} must have warn() and error() methods, or be null`);
  }
  return l;
}

/** A running worker. @internal */
export class BusWorker<Tx = Connection> implements Worker {
  readonly counters: WorkerCounters = {
    claimed: 0,
    handled: 0,
    retried: 0,
    deadLettered: 0,
    unknown: 0,
    stale: 0,
    inFlight: 0,
    reruns: 0,
    calls: 0,
    released: 0,
  };
  private readonly concurrency: number;
  /** Claims held at once, running and settling (see {@link maxHeldClaims}). */
  private readonly maxHeld: number;
  /** Free slots worth a claim while other handlers still run: half the concurrency. */
  private readonly claimBatch: number;
  private readonly lease: number;
  private readonly maxAttempts: number;
  private readonly pollInterval: number;
  private readonly onUnknown: 'ack' | 'deadLetter' | 'skip';
  private readonly keepAlive: boolean;
  private readonly delayFor: (attempt: number) => number;
  private readonly timeoutOf: (name: string) => number | undefined;
  private readonly onEvent: ((e: WorkerEvent) => void) | undefined;
  private readonly logger: Logger | null;
  private readonly abortListener: (() => void) | undefined;
  private running = true;
  private dirty = true;
  private wakeUp: (() => void) | null = null;
  private loopDone: Promise<void> = Promise.resolve();
  private readonly inflight = new Map<Promise<void>, Running>();
  private drainWaiters: { after: number; resolve: () => void }[] = [];
  private claimSeq = 0;
  private stopping: Promise<void> | null = null;
  private unsubscribe: () => void = () => {};
  /** Handlers whose code finished and whose acknowledgement is committing (see `Store.transact`). */
  private settling = 0;
  private slotWaiters: (() => void)[] = [];

  /**
   * @param kind - `command` workers skip unknown names by not claiming them (the source
   *   filters); `event` workers settle them.
   */
  constructor(
    private readonly store: Store<Tx>,
    private readonly source: Source,
    private readonly handlers: Handlers<any>,
    options: WorkerOptions,
    defaultLogger: Logger | null,
    private readonly onStopped: () => void,
  ) {
    if (options === null || typeof options !== 'object') throw new ValidationError('options', 'options must be an object');
    this.concurrency = options.concurrency === undefined ? DEFAULTS.concurrency : validatePositiveInt('concurrency', options.concurrency);
    this.claimBatch = Math.ceil(this.concurrency / 2);
    this.maxHeld = maxHeldClaims(this.concurrency);
    this.lease = options.lease === undefined ? DEFAULTS.lease : validateMs('lease', options.lease, 1, MAX_TIMER_MS);
    this.maxAttempts = options.maxAttempts === undefined ? DEFAULTS.maxAttempts : validatePositiveInt('maxAttempts', options.maxAttempts);
    this.pollInterval = options.pollInterval === undefined ? DEFAULTS.pollInterval : validateMs('pollInterval', options.pollInterval, 1, MAX_TIMER_MS);
    this.onUnknown = checkOnUnknown(options.onUnknown);
    this.keepAlive = options.keepAlive === true;
    this.delayFor = backoffPolicy(options.backoff);
    this.timeoutOf = timeoutPolicy(options.timeout);
    if (options.onEvent !== undefined && typeof options.onEvent !== 'function') {
      throw new ValidationError('onEvent', 'onEvent must be a function');
    }
    this.onEvent = options.onEvent;
    const logger = checkLogger(options.logger);
    this.logger = logger === undefined ? defaultLogger : logger;
    const external = options.signal;
    if (external !== undefined) {
      if (!(external instanceof AbortSignal)) throw new ValidationError('signal', 'signal must be an AbortSignal');
      const abort = () => void this.stop();
      if (external.aborted) {
        this.running = false;
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
    this.log(e);
    if (!this.onEvent) return;
    try {
      this.onEvent(e);
    } catch {
      // a progress callback must not break the worker
    }
  }

  private log(e: WorkerEvent): void {
    const l = this.logger;
    if (!l) return;
    try {
      const what = (m: Message | null) => (m ? `${m.kind} ${m.name} ${JSON.stringify(m.id)}` : 'an undecodable message');
      if (e.type === 'retry') l.warn(`[siblite/bus] ${what(e.message)} failed (attempt ${e.message.attempts}); retrying in ${Math.round(e.delay)} ms: ${errorText(e.error)}`);
      else if (e.type === 'dead') l.error(`[siblite/bus] ${what(e.message)} dead-lettered: ${e.reason}`);
      else if (e.type === 'stale') l.warn(`[siblite/bus] ${what(e.message)}: the claim went stale (lease lost) before it settled`);
      else if (e.type === 'error') l.error('[siblite/bus] worker error (it keeps running):', e.error);
    } catch {
      // a logger must not break the worker
    }
  }

  /**
   * Resolves when a slot may have freed up: a handler finished, or its code finished before
   * its acknowledgement committed, or stop() was called; or after `ms` when given. One
   * promise, instead of a race over every running handler on every turn.
   */
  private slotFreed(ms?: number): Promise<void> {
    if (!this.running) return Promise.resolve();
    return new Promise((resolve) => {
      if (ms === undefined) {
        this.slotWaiters.push(resolve);
        return;
      }
      const timer = setTimeout(resolve, ms);
      timer.unref();
      this.slotWaiters.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  private freeSlot(): void {
    if (this.slotWaiters.length === 0) return;
    for (const w of this.slotWaiters.splice(0)) w();
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
      const timer = setTimeout(
        () => {
          this.wakeUp = null;
          resolve();
        },
        Math.min(MAX_TIMER_MS, Math.max(1, ms)),
      );
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
    let gatherUntil = 0;
    while (this.running) {
      try {
        // Every turn goes through the event loop's macrotask phases, so timers, I/O and
        // signal handlers of the process run while a worker drains a backlog. Claims the
        // source already holds in memory are taken without that detour: there are at most
        // maxHeld of them, and only a commit (a macrotask) adds more.
        const buffered = this.source.buffered?.() ?? 0;
        if (buffered === 0) await yieldToLoop();
        if (!this.running) break;
        if (!prepared) {
          await this.source.prepare();
          prepared = true;
        }
        // A handler whose code finished while its acknowledgement commits frees its slot,
        // up to maxHeld claims held in all.
        const held = this.inflight.size;
        const free = Math.min(this.concurrency - (held - this.settling), this.maxHeld - held);
        if (free <= 0) {
          await this.slotFreed();
          continue;
        }
        // Batch claims: while handlers run and few slots are free, give the others up to
        // CLAIM_GATHER_MS to finish, so one claim (one commit) fills several slots.
        if (buffered === 0 && free < this.claimBatch && held > this.settling) {
          gatherUntil ||= performance.now() + CLAIM_GATHER_MS;
          const left = gatherUntil - performance.now();
          if (left > 0) {
            await this.slotFreed(left);
            continue;
          }
        }
        gatherUntil = 0;
        this.dirty = false;
        const claimSeq = ++this.claimSeq;
        const claims = await this.source.claim(free, this.lease);
        if (!this.running) {
          // Stopped while claiming: give the claims back at once, without counting an attempt.
          await this.giveBack(claims, false);
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
          if (due !== null) wait = Math.min(wait, due - this.store.now() + 1);
          if (wait <= 0) continue;
          await this.sleep(wait);
          continue;
        }
        for (const claim of claims) this.start1(claim);
      } catch (e) {
        if (!this.running) break;
        this.emit({ type: 'error', error: e });
        await this.sleep(Math.min(this.pollInterval, 100));
      }
    }
    await Promise.allSettled([...this.inflight.keys()]);
    await this.source.idle().catch(() => {});
  }

  private start1(claim: Claim): void {
    this.counters.claimed++;
    const r: Running = { claim, signal: null, aborted: undefined, abandon: new Abandon(), done: Promise.resolve() };
    const p: Promise<void> = this.handle(r).finally(() => {
      this.inflight.delete(p);
      this.counters.inFlight = this.inflight.size;
      this.freeSlot();
      this.wake();
    });
    r.done = p;
    this.inflight.set(p, r);
    this.counters.inFlight = this.inflight.size;
  }

  private async giveBack(claims: readonly Claim[], countAttempt: boolean): Promise<void> {
    if (claims.length === 0) return;
    try {
      await this.store.release(claims, countAttempt);
      this.counters.released += claims.length;
    } catch (e) {
      // The leases run out on their own; nothing is lost.
      this.emit({ type: 'error', error: e });
    }
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
    if (await this.settle(() => this.store.bury(claim, 'dead', reason), claim.message)) {
      this.counters.deadLettered++;
      this.emit({ type: 'dead', message: claim.message, reason });
    }
  }

  private async handle(r: Running): Promise<void> {
    const claim = r.claim;
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
      } else if (await this.settle(() => this.store.ack(claim), message)) {
        this.counters.unknown++;
        this.emit({ type: 'unknown', message });
      }
      return;
    }
    const started = performance.now();
    const stopRenewal = this.renewLease(r);
    const timeout = this.timeoutOf(message.name);
    let timer: NodeJS.Timeout | undefined;
    if (timeout !== undefined) {
      timer = setTimeout(() => {
        const reason = new AbortReason(`handler timeout: ${timeout} ms passed`);
        abortHandler(r, reason);
        r.abandon.abort(reason);
      }, timeout);
      timer.unref();
    }
    let failure: unknown;
    let ok = false;
    let settling = false;
    const onSettling = () => {
      if (settling) return;
      settling = true;
      this.settling++;
      this.freeSlot();
      this.wake();
    };
    try {
      const { reruns } = await this.store.transact(
        claim,
        async (tx, run) => {
          this.counters.calls++;
          if (run > 1) this.counters.reruns++;
          const context = {
            get signal() {
              return handlerSignal(r);
            },
            run,
            extendLease: (ms: number) => this.store.extend(claim, ms),
          };
          // The transport's fields are copied as they are defined, so that a getter (a
          // transaction opened when first used) stays one.
          await handler(message, Object.defineProperties(context, Object.getOwnPropertyDescriptors(this.store.txContext(tx))) as never);
        },
        r.abandon,
        onSettling,
      );
      void reruns;
      ok = true;
    } catch (e) {
      failure = e;
    } finally {
      if (settling) this.settling--;
      stopRenewal();
      if (timer) clearTimeout(timer);
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
    const abandoned = r.abandon.aborted ? String((r.abandon.reason as Error)?.message ?? '') : null;
    if (abandoned !== null && abandoned.startsWith('the lease was lost')) {
      // Another worker may have it now: nothing committed here.
      this.counters.stale++;
      this.emit({ type: 'stale', message });
      return;
    }
    if (abandoned !== null && !abandoned.startsWith('handler timeout')) {
      // Abandoned by stop(): the release already happened (or the lease runs out).
      return;
    }
    if (!this.running && r.aborted !== undefined && !r.abandon.aborted) {
      // The handler gave up because the worker is stopping: not a failure of the message.
      await this.giveBack([claim], false);
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
    if (await this.settle(() => this.store.nack(claim, delay, errorText(failure)), message)) {
      this.counters.retried++;
      this.emit({ type: 'retry', message, error: failure, delay });
    }
  }

  /** Renews the lease every third of it while the handler runs; a lost lease aborts the handler. */
  private renewLease(r: Running): () => void {
    const every = Math.max(1, Math.floor(this.lease / 3));
    let busy = false;
    const timer = setInterval(() => {
      if (busy || r.abandon.aborted) return;
      busy = true;
      this.store
        .extend(r.claim, this.lease)
        .catch((e) => {
          if (e instanceof StaleClaimError) {
            const reason = new AbortReason('the lease was lost: another worker may be handling this message now');
            abortHandler(r, reason);
            r.abandon.abort(reason);
          }
          // other errors (busy for too long): the next tick tries again
        })
        .finally(() => {
          busy = false;
        });
    }, every);
    timer.unref();
    return () => clearInterval(timer);
  }

  /**
   * Stops: no new claims; running handlers' signals are aborted; waits up to `timeout` ms for
   * them, then abandons the rest (rolled back, released for another worker).
   */
  stop(options: StopOptions = {}): Promise<void> {
    if (options === null || typeof options !== 'object') return Promise.reject(new ValidationError('options', 'options must be an object'));
    let timeout: number;
    try {
      timeout = options.timeout === undefined ? DEFAULTS.stopTimeout : options.timeout === Infinity ? Infinity : validateMs('timeout', options.timeout, 0, MAX_TIMER_MS);
    } catch (e) {
      return Promise.reject(e);
    }
    this.running = false;
    this.wake();
    this.freeSlot(); // a loop waiting for a free slot wakes up
    const stopping = new AbortReason('the worker is stopping');
    for (const r of this.inflight.values()) abortHandler(r, stopping);
    this.stopping ??= this.finishStop(timeout);
    return this.stopping;
  }

  private async finishStop(timeout: number): Promise<void> {
    if (timeout !== Infinity && this.inflight.size > 0) {
      let timer: NodeJS.Timeout | undefined;
      const expired = new Promise<boolean>((resolve) => {
        timer = setTimeout(() => resolve(true), timeout);
      });
      const settled = Promise.allSettled([...this.inflight.keys()]).then(() => false);
      const timedOut = await Promise.race([settled, expired]);
      clearTimeout(timer);
      if (timedOut) {
        const abandoned = [...this.inflight.values()];
        const reason = new AbortReason(`abandoned: stop() timeout of ${timeout} ms passed`);
        for (const r of abandoned) r.abandon.abort(reason);
        await this.giveBack(
          abandoned.map((r) => r.claim),
          true,
        );
        for (const r of abandoned) this.inflight.delete(r.done);
        this.counters.inFlight = this.inflight.size;
      }
    }
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

function checkOnUnknown(value: unknown): 'ack' | 'deadLetter' | 'skip' {
  const v = value ?? 'skip';
  if (v !== 'ack' && v !== 'deadLetter' && v !== 'skip') {
    throw new ValidationError('onUnknown', 'onUnknown must be "skip", "ack" or "deadLetter"');
  }
  return v;
}

/**
 * Starts a worker on a transport's {@link Store}: the whole runtime (concurrency, leases,
 * retries, dead letters, stop and drain) for a transport that only implements storage.
 *
 * @param store - the transport's storage operations.
 * @param source - where this worker claims (commands, or one group's events).
 * @param handlers - validated handlers by message name.
 * @param options - the worker options (validated here).
 * @param defaultLogger - the bus's logger, used unless `options.logger` says otherwise.
 * @param onStopped - called once when the worker has stopped.
 * @throws ValidationError for invalid options.
 */
export function startWorker<Tx>(
  store: Store<Tx>,
  source: Source,
  handlers: Handlers<any>,
  options: WorkerOptions,
  defaultLogger: Logger | null,
  onStopped: () => void,
): Worker {
  const worker = new BusWorker<Tx>(store, source, handlers, options, defaultLogger, onStopped);
  worker.start();
  return worker;
}
