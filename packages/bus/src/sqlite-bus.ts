/**
 * The SQLite transport: {@link SqliteBus}.
 *
 * @module
 */
import { randomUUID } from 'node:crypto';
import { isRetryable, retry, SqliteError, type Connection, type RetryOptions, type SqlValue } from '@siblite/core';
import { decodeRow, encodeHeaders, encodePayload, type MessageRow } from './codec.js';
import { BusClosedError, BusError, DecodeError, StaleClaimError, ValidationError } from './errors.js';
import { afterTransaction, notify } from './notify.js';
import { buildPlans, SCHEMA_VERSION, type Plans } from './plans.js';
import type {
  Bus,
  DeadLetter,
  DeadLetterFilter,
  BusStats,
  Delivery,
  GroupStats,
  Handlers,
  Message,
  MessageKind,
  NameStats,
  Payload,
  ProduceOptions,
  ProduceResult,
  ReceiveOptions,
  SettleOptions,
  SubscribeOptions,
  Worker,
  WorkerOptions,
} from './types.js';
import {
  validateContentType,
  validateGroup,
  validateHandlers,
  validateHeaders,
  validateId,
  validateMs,
  validateName,
  validateNamespace,
  validatePositiveInt,
} from './validate.js';
import { BusWorker, type Source } from './worker.js';

/** Options of {@link SqliteBus.open}. */
export interface SqliteBusOptions {
  /** Prefix of the bus's tables (`<namespace>_queue`, ...). Default `bus`. */
  namespace?: string;
  /** Options of the core retry loop every database step runs in. */
  retry?: RetryOptions;
}

/** A claimed row, before it becomes a {@link Delivery}. */
export interface Claim {
  /** Queue `seq` or log `pos`. */
  readonly ref: number;
  readonly token: string;
  readonly attempts: number;
  readonly group: string | null;
  readonly kind: MessageKind;
  /** The message id as stored (for errors), if readable. */
  readonly id: string;
  readonly message: Message | null;
  readonly decodeError: DecodeError | null;
}

const DEFAULT_LEASE = 30_000;
const DEFAULT_RETRY: RetryOptions = { retries: 10_000, minTimeout: 1, maxTimeout: 50, maxElapsedMs: 120_000 };

interface ClaimedCommandRow extends MessageRow {
  seq: number;
  token: string;
}

interface EventRow extends MessageRow {
  pos: number;
}

/**
 * A durable message bus in a siblite database: a command queue with competing consumers,
 * an event log read by consumer groups, leases, claim tokens, retries with backoff, dead
 * letters, and a transactional outbox. Many buses (in one process or several) may share
 * one database file.
 *
 * @example
 * ```ts
 * import { open } from '@siblite/core';
 * import { SqliteBus } from '@siblite/bus';
 *
 * const db = open('app.db');
 * const bus = await SqliteBus.open(db);
 * const worker = bus.listen({
 *   'email.send': async (msg, { conn }) => {
 *     conn.run('INSERT INTO sent (id) VALUES (?)', [msg.id]); // commits with the ack
 *   },
 * }, { concurrency: 4 });
 * await bus.send('email.send', { to: 'a@example.com' });
 * await worker.drain();
 * await bus.close();
 * ```
 */
export class SqliteBus implements Bus {
  /** The validated namespace. */
  readonly namespace: string;
  /** @internal */
  readonly plans: Plans;
  /** @internal */
  readonly retryOptions: RetryOptions;
  private readonly main: Connection;
  private readonly idle: Connection[] = [];
  private readonly busy = new Set<Connection>();
  private readonly workers = new Set<BusWorker>();
  private readonly advancing = new Map<string, Promise<void>>();
  private readonly instance: string;
  private closed = false;

  private constructor(main: Connection, plans: Plans, instance: string, retryOptions: RetryOptions) {
    this.main = main;
    this.plans = plans;
    this.namespace = plans.namespace;
    this.instance = instance;
    this.retryOptions = retryOptions;
  }

  /**
   * Opens a bus on `conn`'s database: validates the namespace, then creates or upgrades the
   * bus's tables (idempotent; safe from several processes at once). The bus works through
   * its own sibling handles of `conn`; `conn` itself stays the caller's.
   *
   * @throws ValidationError for an invalid namespace (before any SQL runs); SqliteError from
   *   the database (for example kind `readonly`), or when the stored schema is newer than
   *   this code.
   */
  static async open(conn: Connection, options: SqliteBusOptions = {}): Promise<SqliteBus> {
    const plans = buildPlans(validateNamespace(options.namespace ?? 'bus'));
    const retryOptions = { ...DEFAULT_RETRY, ...options.retry };
    const main = conn.connect();
    try {
      await retry(() => migrate(main, plans), retryOptions);
      const row = main.get<{ value: string }>(plans.getInstance);
      if (!row) throw new Error('bus meta table has no instance id');
      return new SqliteBus(main, plans, row.value, retryOptions);
    } catch (e) {
      main.close();
      throw e;
    }
  }

  // ------------------------------------------------------------------ plumbing

  /** Runs `fn` on the bus's own handle inside the core retry loop. @internal */
  db<T>(fn: (h: Connection) => T): Promise<T> {
    if (this.closed) return Promise.reject(new BusClosedError());
    // Fast path: most statements succeed at once; the retry loop is entered on a busy error.
    try {
      return Promise.resolve(fn(this.main));
    } catch (e) {
      if (!isRetryable(e)) return Promise.reject(e);
      return retry(() => fn(this.main), this.retryOptions);
    }
  }

  /** Runs `fn` in a concurrent transaction on `h`, retried as a whole on busy errors. @internal */
  async txOn<T>(h: Connection, fn: (h: Connection) => T | Promise<T>): Promise<T> {
    try {
      return await h.transaction(fn, { mode: 'concurrent', retry: false });
    } catch (e) {
      if (!isRetryable(e)) throw e;
      return h.transaction(fn, { mode: 'concurrent', retry: this.retryOptions });
    }
  }

  /** A sibling handle for a transaction; give it back with {@link release}. @internal */
  acquire(): Connection {
    if (this.closed) throw new BusClosedError();
    const h = this.idle.pop() ?? this.main.connect();
    this.busy.add(h);
    return h;
  }

  /** @internal */
  release(h: Connection): void {
    this.busy.delete(h);
    if (this.closed || h.inTransaction || this.idle.length >= 64) h.close();
    else this.idle.push(h);
  }

  /** Runs `fn` in a concurrent transaction on a pooled handle, retried on busy errors. @internal */
  async tx<T>(fn: (h: Connection) => T | Promise<T>): Promise<T> {
    const h = this.acquire();
    try {
      return await this.txOn(h, fn);
    } finally {
      this.release(h);
    }
  }

  /** The notifier key of a channel. @internal */
  channel(which: 'queue' | 'log'): string {
    return `${this.instance}/${this.namespace}/${which}`;
  }

  private assertOpen(): void {
    if (this.closed) throw new BusClosedError();
  }

  // ------------------------------------------------------------------ producing

  /**
   * Appends a command to the queue. With `options.conn` the command is written on that
   * handle, inside its transaction if it has one (the transactional outbox). Idle workers
   * in this process wake at once (after that transaction ends, for the outbox).
   *
   * @returns the id and whether it was stored (`false`: that id was already there).
   * @throws ValidationError for an invalid name, id, key, headers, content type, delay or
   *   payload (nothing is written); SqliteError from the database.
   * @example
   * ```ts
   * await db.transaction(async (tx) => {
   *   tx.run('INSERT INTO orders (id) VALUES (?)', [42]);
   *   await bus.send('order.ship', { order: 42 }, { conn: tx, key: 'order-42' });
   * }, { mode: 'concurrent' });
   * ```
   */
  async send(name: string, payload: Payload, options: ProduceOptions = {}): Promise<ProduceResult> {
    this.assertOpen();
    const p = this.produceParams(name, payload, options);
    const delay = options.delay === undefined ? 0 : validateMs('delay', options.delay);
    const now = Date.now();
    const params = { ...p.params, now, availableAt: now + Math.ceil(delay) };
    const changes = await this.write(options.conn, (h) => insertOnce(h, this.plans.send, params));
    this.afterProduce(options.conn, 'queue');
    return { id: p.id, stored: changes > 0 };
  }

  /**
   * Appends an event to the log. With `options.conn`, it is written inside that handle's
   * transaction (the transactional outbox) and gets its log position only after commit.
   *
   * @returns the id and whether it was stored (`false`: that id was already there).
   * @throws ValidationError as {@link SqliteBus.send} (a `delay` is rejected: events are
   *   never delayed); SqliteError from the database.
   */
  async publish(name: string, payload: Payload, options: Omit<ProduceOptions, 'delay'> = {}): Promise<ProduceResult> {
    this.assertOpen();
    if ((options as ProduceOptions).delay !== undefined) {
      throw new ValidationError('delay', 'events cannot be delayed; use send() for delayed commands');
    }
    const p = this.produceParams(name, payload, options);
    const params = { ...p.params, now: Date.now() };
    const changes = await this.write(options.conn, (h) => insertOnce(h, this.plans.publish, params));
    if (!options.conn || !options.conn.inTransaction) await this.sequence();
    this.afterProduce(options.conn, 'log');
    return { id: p.id, stored: changes > 0 };
  }

  private produceParams(name: string, payload: Payload, options: ProduceOptions) {
    validateName(name);
    if (options === null || typeof options !== 'object') throw new ValidationError('options', 'options must be an object');
    const id = options.id === undefined ? randomUUID() : validateId('id', options.id);
    const key = options.key === undefined ? null : validateId('key', options.key);
    const headers = options.headers === undefined ? {} : validateHeaders(options.headers);
    if (options.contentType !== undefined) validateContentType(options.contentType);
    if (options.conn !== undefined && (options.conn === null || typeof (options.conn as Connection).run !== 'function')) {
      throw new ValidationError('conn', 'conn must be a Connection');
    }
    const enc = encodePayload(payload, options.contentType);
    return {
      id,
      params: {
        id,
        name,
        encoding: enc.encoding,
        payload: enc.payload,
        contentType: enc.contentType,
        headers: encodeHeaders(headers),
        key,
      },
    };
  }

  private write<T>(conn: Connection | undefined, fn: (h: Connection) => T): Promise<T> {
    return conn ? this.onCaller(conn, fn) : this.db(fn);
  }

  /**
   * Runs one statement on the caller's handle. A busy lock (`SQLITE_BUSY`) leaves their
   * transaction open, so the statement is retried; once their transaction has ended (a
   * conflict rolled it back), the error is passed on instead: retrying would write outside it.
   * @internal
   */
  onCaller<T>(conn: Connection, fn: (h: Connection) => T): Promise<T> {
    const inTx = conn.inTransaction;
    const once = () => {
      if (inTx && !conn.inTransaction) {
        throw new BusError('SIBLITE_BUS_TRANSACTION_ENDED', 'the transaction of the given conn ended (rolled back) before the bus could write in it', 'misuse');
      }
      return fn(conn);
    };
    try {
      return Promise.resolve(once());
    } catch (e) {
      if (!isRetryable(e) || (inTx && !conn.inTransaction)) return Promise.reject(e);
      return retry(once, this.retryOptions);
    }
  }

  private afterProduce(conn: Connection | undefined, which: 'queue' | 'log'): void {
    const key = this.channel(which);
    if (conn && conn.inTransaction) afterTransaction(conn, () => notify(key));
    else notify(key);
  }

  /** Numbers committed, unnumbered events (see the plans). @internal */
  async sequence(): Promise<void> {
    await this.db((h) => h.run(this.plans.sequence));
  }

  // ------------------------------------------------------------------ consuming

  /**
   * Starts competing consumers for commands: each command is handled by one worker at a
   * time across every handle and process sharing the database.
   *
   * @throws ValidationError for invalid handlers or options.
   * @example
   * ```ts
   * const worker = bus.listen({ 'img.resize': resize }, { concurrency: 8, lease: 60_000, maxAttempts: 3 });
   * // later
   * await worker.stop();
   * ```
   */
  listen(handlers: Handlers, options: WorkerOptions = {}): Worker {
    this.assertOpen();
    validateHandlers(handlers);
    const worker = new BusWorker(this, this.commandSource(options, handlers), handlers, options, () => this.workers.delete(worker));
    this.workers.add(worker);
    worker.start();
    return worker;
  }

  /**
   * Starts a consumer of `group`: every event after the group's offset, in log order; the
   * group's workers (in any process) share its events. A new group starts at the beginning
   * of the log, or at its end with `startFrom: 'end'`.
   *
   * @throws ValidationError for an invalid group, handlers or options.
   */
  subscribe(group: string, handlers: Handlers, options: SubscribeOptions = {}): Worker {
    this.assertOpen();
    validateGroup(group);
    validateHandlers(handlers);
    const fromEnd = startFromEnd(options.startFrom);
    this.tryCreateGroupNow(group, fromEnd);
    const source = this.eventSource(group, fromEnd, options, handlers);
    const worker = new BusWorker(this, source, handlers, options, () => this.workers.delete(worker));
    this.workers.add(worker);
    worker.start();
    return worker;
  }

  /**
   * Claims one message: a command, or with `options.group` an event for that group.
   * Undecodable rows met on the way are dead-lettered, never returned.
   *
   * @returns a {@link Delivery} to settle, or `undefined` when nothing is claimable.
   * @throws ValidationError for invalid options.
   */
  async receive(options: ReceiveOptions = {}): Promise<Delivery | undefined> {
    this.assertOpen();
    const lease = options.lease === undefined ? DEFAULT_LEASE : validateMs('lease', options.lease, 1);
    if (options.names !== undefined) options.names.forEach((n) => validateName(n));
    const names = options.names ? [...options.names] : null;
    let claimOnce: () => Promise<Claim[]>;
    if (options.group !== undefined) {
      const group = validateGroup(options.group);
      const fromEnd = startFromEnd(options.startFrom);
      await this.ensureGroup(group, fromEnd);
      claimOnce = () => this.claimEvents(group, 1, lease, names);
    } else {
      claimOnce = () => this.claimCommands(1, lease, names);
    }
    for (let i = 0; i < 1000; i++) {
      const [claim] = await claimOnce();
      if (!claim) return undefined;
      if (claim.message) return this.delivery(claim);
      await this.bury(claim, 'dead', `decode error: ${claim.decodeError?.message ?? 'unknown'}`);
    }
    return undefined;
  }

  private commandSource(options: WorkerOptions, handlers: Handlers): Source {
    const names = options.onUnknown === 'skip' ? Object.keys(handlers) : null;
    return {
      channel: this.channel('queue'),
      prepare: async () => {},
      claim: (limit, lease) => this.claimCommands(limit, lease, names),
      nextDue: () => this.nextDueCommand(),
      settled: () => {},
      idle: async () => {},
    };
  }

  private eventSource(group: string, fromEnd: boolean, options: SubscribeOptions, handlers: Handlers): Source {
    const names = options.onUnknown === 'skip' ? Object.keys(handlers) : null;
    if (options.ordered !== undefined && typeof options.ordered !== 'boolean') {
      throw new ValidationError('ordered', 'ordered must be a boolean');
    }
    const ordered = options.ordered === true;
    let pending = 0;
    return {
      channel: this.channel('log'),
      prepare: () => this.ensureGroup(group, fromEnd),
      claim: (limit, lease) => this.claimEvents(group, limit, lease, names, ordered),
      nextDue: () => this.nextDueEvent(group),
      // The offset moves every 16 acknowledgements and whenever the worker runs out of work:
      // claims skip settled events above the offset anyway, so this only saves commits.
      settled: () => {
        if (++pending >= 16) {
          pending = 0;
          void this.advance(group).catch(() => {});
        }
      },
      idle: async () => {
        if (pending === 0) return;
        pending = 0;
        await this.advance(group).catch(() => {});
      },
    };
  }

  private tryCreateGroupNow(group: string, fromEnd: boolean): void {
    try {
      this.main.run(this.plans.sequence);
      this.main.run(this.plans.createGroup, { grp: group, fromEnd: fromEnd ? 1 : 0, now: Date.now() });
    } catch {
      // busy: the worker creates it before its first claim
    }
  }

  private async ensureGroup(group: string, fromEnd: boolean): Promise<void> {
    await this.sequence();
    await this.db((h) => h.run(this.plans.createGroup, { grp: group, fromEnd: fromEnd ? 1 : 0, now: Date.now() }));
  }

  /** Claims up to `limit` commands. @internal */
  async claimCommands(limit: number, lease: number, names: string[] | null): Promise<Claim[]> {
    const token = randomUUID();
    const rows = await this.db((h) => {
      const now = Date.now();
      return h.all<ClaimedCommandRow>(this.plans.claimCommands, {
        token,
        leaseUntil: now + lease,
        now,
        names: names ? JSON.stringify(names) : null,
        limit,
      });
    });
    rows.sort((a, b) => a.seq - b.seq);
    return rows.map((r) => toClaim(r, r.seq, 'command', null, token));
  }

  /** Claims up to `limit` events for `group`. @internal */
  async claimEvents(group: string, limit: number, lease: number, names: string[] | null, ordered = false): Promise<Claim[]> {
    const token = randomUUID();
    const claimed = await this.db((h) => {
      h.run(this.plans.sequence);
      const now = Date.now();
      return h.all<{ pos: number; attempts: number; token: string }>(this.plans.claimEvents, {
        grp: group,
        token,
        leaseUntil: now + lease,
        now,
        names: names ? JSON.stringify(names) : null,
        limit,
        ordered: ordered ? 1 : 0,
      });
    });
    claimed.sort((a, b) => a.pos - b.pos);
    const out: Claim[] = [];
    for (const c of claimed) {
      const row = await this.db((h) => h.get<EventRow>(this.plans.getEvent, { pos: c.pos }));
      if (!row) continue; // cannot happen: numbered events are never deleted
      out.push(toClaim({ ...row, attempts: c.attempts }, c.pos, 'event', group, token));
    }
    return out;
  }

  private async nextDueCommand(): Promise<number | null> {
    const row = await this.db((h) =>
      h.get<{ due: number | null }>(this.plans.nextDueCommand, { now: Date.now() }),
    );
    return row?.due ?? null;
  }

  private async nextDueEvent(group: string): Promise<number | null> {
    const row = await this.db((h) =>
      h.get<{ due: number | null }>(this.plans.nextDueEvent, { grp: group, now: Date.now() }),
    );
    return row?.due ?? null;
  }

  /** Moves a group's offset past settled events, coalescing concurrent requests. @internal */
  advance(group: string): Promise<void> {
    const running = this.advancing.get(group);
    if (running) return running;
    const p = (async () => {
      await Promise.resolve();
      this.advancing.delete(group);
      await this.db((h) => {
        h.run(this.plans.advanceGroup, { grp: group });
        h.run(this.plans.compactGroup, { grp: group });
      });
    })();
    this.advancing.set(group, p);
    return p;
  }

  // ------------------------------------------------------------------ settlement

  /** Runs the fenced ack statement of `claim` on `h` (any handle, in any transaction). @internal */
  ackOn(h: Connection, claim: Claim): void {
    const changes =
      claim.kind === 'command'
        ? h.run(this.plans.ackCommand, { seq: claim.ref, token: claim.token, now: Date.now() }).changes
        : h.run(this.plans.ackEvent, { grp: claim.group, pos: claim.ref, token: claim.token }).changes;
    if (changes === 0) throw new StaleClaimError(claim.id);
  }

  /** Acknowledges `claim` (on `conn` if given). @internal */
  async ack(claim: Claim, conn?: Connection): Promise<void> {
    if (conn) await this.onCaller(conn, (h) => this.ackOn(h, claim));
    else await this.db((h) => this.ackOn(h, claim));
    this.settledClaim(claim, conn);
  }

  /** Puts `claim` back, claimable after `delay` ms. @internal */
  async nack(claim: Claim, delay: number, error: string | null): Promise<void> {
    const changes = await this.db((h) => {
      const at = Date.now() + Math.ceil(delay);
      return claim.kind === 'command'
        ? h.run(this.plans.nackCommand, { seq: claim.ref, token: claim.token, at, error }).changes
        : h.run(this.plans.nackEvent, { grp: claim.group, pos: claim.ref, token: claim.token, at, error }).changes;
    });
    if (changes === 0) throw new StaleClaimError(claim.id);
    notify(this.channel(claim.kind === 'command' ? 'queue' : 'log'));
  }

  /** Extends the lease of `claim` to `ms` from now. @internal */
  async extend(claim: Claim, ms: number): Promise<void> {
    validateMs('ms', ms, 1);
    const changes = await this.db((h) => {
      const leaseUntil = Date.now() + Math.ceil(ms);
      return claim.kind === 'command'
        ? h.run(this.plans.extendCommand, { seq: claim.ref, token: claim.token, leaseUntil }).changes
        : h.run(this.plans.extendEvent, { grp: claim.group, pos: claim.ref, token: claim.token, leaseUntil }).changes;
    });
    if (changes === 0) throw new StaleClaimError(claim.id);
  }

  /** Moves `claim` to the dead letters (or parks it), with a verbatim copy of the row. @internal */
  async bury(claim: Claim, status: 'dead' | 'parked', reason: string): Promise<void> {
    if (typeof reason !== 'string') throw new ValidationError('reason', 'reason must be a string');
    await this.tx((h) => {
      const now = Date.now();
      if (claim.kind === 'command') {
        const p = { seq: claim.ref, token: claim.token, status, reason, now };
        if (h.run(this.plans.buryCommand, p).changes === 0) throw new StaleClaimError(claim.id);
        h.run(this.plans.copyCommandToDead, { seq: claim.ref, status, reason, now });
      } else {
        const p = { grp: claim.group, pos: claim.ref, token: claim.token, status, reason };
        if (h.run(this.plans.buryEvent, p).changes === 0) throw new StaleClaimError(claim.id);
        h.run(this.plans.copyEventToDead, { grp: claim.group, pos: claim.ref, status, reason, now });
      }
    });
    this.settledClaim(claim);
  }

  private settledClaim(claim: Claim, conn?: Connection): void {
    if (claim.kind !== 'event' || claim.group === null) return;
    const group = claim.group;
    const go = () => void this.advance(group).catch(() => {});
    if (conn && conn.inTransaction) afterTransaction(conn, go);
    else go();
  }

  /** Wraps a claim in the public settlement API. @internal */
  delivery(claim: Claim): Delivery {
    if (!claim.message) throw claim.decodeError ?? new DecodeError('undecodable message');
    const message = claim.message;
    return {
      message,
      token: claim.token,
      ack: (options?: SettleOptions) => this.ack(claim, options?.conn),
      nack: (options?: { delay?: number }) =>
        this.nack(claim, options?.delay === undefined ? 0 : validateMs('delay', options.delay), null),
      deadLetter: (reason: string) => this.bury(claim, 'dead', reason),
      park: (reason: string) => this.bury(claim, 'parked', reason),
      extendLease: (ms: number) => this.extend(claim, ms),
    };
  }

  // ------------------------------------------------------------------ dead letters

  /**
   * Lists dead letters and parked messages, oldest first, with the whole original message.
   *
   * @param filter - source, group, status; `limit` (default 100) and `after` (a `deadId`,
   *   for paging).
   * @throws ValidationError for an invalid filter.
   */
  async deadLetters(filter: DeadLetterFilter & { limit?: number; after?: number } = {}): Promise<DeadLetter[]> {
    this.assertOpen();
    const f = checkFilter(filter);
    const limit = filter.limit === undefined ? 100 : validatePositiveInt('limit', filter.limit);
    const after = filter.after === undefined ? 0 : validateMs('after', filter.after);
    const rows = await this.db((h) => h.all<Record<string, unknown>>(this.plans.listDead, { ...f, after, limit }));
    return rows.map((r) => {
      const source = r.source as 'queue' | 'log';
      let message: Message | null = null;
      let decodeError: string | null = null;
      try {
        message = decodeRow(r as unknown as MessageRow, source === 'queue' ? 'command' : 'event', source === 'log' ? (r.ref as number) : null, (r.grp as string | null) ?? null);
      } catch (e) {
        decodeError = (e as Error).message;
      }
      return {
        deadId: r.dead_id as number,
        source,
        group: (r.grp as string | null) ?? null,
        status: r.status as 'dead' | 'parked',
        reason: r.reason as string,
        failedAt: new Date(r.failed_at as number),
        attempts: r.attempts as number,
        message,
        decodeError,
        raw: Object.freeze({ ...r }),
      };
    });
  }

  /**
   * Replays a dead letter: a command goes back to the queue (ready now, attempts reset); an
   * event is appended again for its group only (the group's offset never moves back).
   *
   * @returns `false` when no dead letter has that id.
   */
  async replayDeadLetter(deadId: number): Promise<boolean> {
    this.assertOpen();
    validatePositiveInt('deadId', deadId);
    const found = await this.tx((h) => {
      const d = h.get<{ source: string; ref: number }>(this.plans.getDead, { deadId });
      if (!d) return null;
      const now = Date.now();
      if (d.source === 'queue') {
        if (h.run(this.plans.reviveCommand, { ref: d.ref, now }).changes === 0) {
          h.run(this.plans.reinsertCommand, { deadId, now });
        }
      } else {
        h.run(this.plans.replayEvent, { deadId, now });
      }
      h.run(this.plans.deleteDead, { deadId });
      return d.source;
    });
    if (found === null) return false;
    if (found === 'log') await this.sequence();
    notify(this.channel(found === 'queue' ? 'queue' : 'log'));
    return true;
  }

  /**
   * Deletes dead letters matching the filter (all of them without one).
   *
   * @param filter - source, group, status, and `before` (only those that failed earlier).
   * @returns how many were deleted.
   */
  async purgeDeadLetters(filter: DeadLetterFilter & { before?: Date | number } = {}): Promise<number> {
    this.assertOpen();
    const f = checkFilter(filter);
    const before = filter.before === undefined ? null : filter.before instanceof Date ? filter.before.getTime() : validateMs('before', filter.before);
    return this.db((h) => h.run(this.plans.purgeDead, { ...f, before }).changes);
  }

  /**
   * Deletes handled commands settled more than `olderThan` ms ago. Their ids are then no
   * longer remembered, so sending one again stores it again.
   *
   * @returns how many rows were deleted.
   */
  async prune(olderThan: number): Promise<number> {
    this.assertOpen();
    validateMs('olderThan', olderThan);
    return this.db((h) => h.run(this.plans.pruneCommands, { before: Date.now() - olderThan }).changes);
  }

  // ------------------------------------------------------------------ observability

  /**
   * Counts per command name (ready, delayed, in flight, dead, parked) and per group (offset,
   * lag, in flight, delayed, dead, parked). Rows without a readable name count under `''`.
   */
  async stats(): Promise<BusStats> {
    this.assertOpen();
    await this.sequence();
    return this.db((h) => {
      const now = Date.now();
      const queue: Record<string, NameStats> = {};
      const entry = (name: string): NameStats => (queue[name] ??= { ready: 0, delayed: 0, inFlight: 0, dead: 0, parked: 0 });
      for (const r of h.all<{ name: string; ready: number; delayed: number; inflight: number }>(this.plans.statsQueue, { now })) {
        const e = entry(r.name);
        e.ready = r.ready;
        e.delayed = r.delayed;
        e.inFlight = r.inflight;
      }
      const groups: Record<string, GroupStats> = {};
      for (const r of h.all<{ grp: string; upto: number; lag: number; inflight: number; delayed: number }>(this.plans.statsGroups)) {
        groups[r.grp] = { offset: r.upto, lag: r.lag, inFlight: r.inflight, delayed: r.delayed, dead: 0, parked: 0 };
      }
      for (const r of h.all<{ source: string; grp: string | null; name: string; dead: number; parked: number }>(this.plans.statsDead)) {
        if (r.source === 'queue') {
          const e = entry(r.name);
          e.dead += r.dead;
          e.parked += r.parked;
        } else if (r.grp !== null) {
          const g = (groups[r.grp] ??= { offset: 0, lag: 0, inFlight: 0, delayed: 0, dead: 0, parked: 0 });
          g.dead += r.dead;
          g.parked += r.parked;
        }
      }
      const events = h.get<{ n: number }>(this.plans.countEvents)?.n ?? 0;
      return { queue, groups, events };
    });
  }

  // ------------------------------------------------------------------ lifecycle

  /** Whether {@link SqliteBus.close} ran. */
  get isClosed(): boolean {
    return this.closed;
  }

  /**
   * Stops every worker of this bus gracefully, then closes the bus's own handles. The
   * caller's `Connection` stays open. Calling it again does nothing.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    await Promise.all([...this.workers].map((w) => w.stop()));
    await Promise.all([...this.advancing.values()].map((p) => p.catch(() => {})));
    this.closed = true;
    for (const h of this.idle.splice(0)) h.close();
    for (const h of this.busy) h.close();
    this.busy.clear();
    this.main.close();
  }
}

/** Runs an INSERT; a UNIQUE violation (the id exists) counts as 0 rows stored. */
function insertOnce(h: Connection, sql: string, params: Record<string, SqlValue>): number {
  try {
    return h.run(sql, params).changes;
  } catch (e) {
    if (e instanceof SqliteError && e.code === 'SQLITE_CONSTRAINT_UNIQUE') return 0;
    throw e;
  }
}

function startFromEnd(startFrom: unknown): boolean {
  if (startFrom === undefined || startFrom === 'beginning') return false;
  if (startFrom === 'end') return true;
  throw new ValidationError('startFrom', 'startFrom must be "beginning" or "end"');
}

function checkFilter(filter: DeadLetterFilter) {
  if (filter === null || typeof filter !== 'object') throw new ValidationError('filter', 'filter must be an object');
  const source = filter.source ?? null;
  if (source !== null && source !== 'queue' && source !== 'log') throw new ValidationError('source', 'source must be "queue" or "log"');
  const status = filter.status ?? null;
  if (status !== null && status !== 'dead' && status !== 'parked') throw new ValidationError('status', 'status must be "dead" or "parked"');
  const grp = filter.group === undefined ? null : validateGroup(filter.group);
  return { source, grp, status };
}

function toClaim(row: MessageRow, ref: number, kind: MessageKind, group: string | null, token: string): Claim {
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

/** Creates or upgrades the schema inside one IMMEDIATE transaction. */
async function migrate(h: Connection, plans: Plans): Promise<void> {
  await h.transaction(
    (tx) => {
      tx.run(plans.createMeta);
      const current = Number(tx.get<{ value: string }>(plans.getVersion)?.value ?? 0);
      if (current > SCHEMA_VERSION) {
        throw new ValidationError(
          'namespace',
          `the bus schema in namespace "${plans.namespace}" is version ${current}, newer than this code (${SCHEMA_VERSION})`,
        );
      }
      for (let v = current; v < SCHEMA_VERSION; v++) {
        for (const sql of plans.migrations[v] ?? []) tx.run(sql);
      }
      if (current !== SCHEMA_VERSION) tx.run(plans.setVersion, { version: String(SCHEMA_VERSION) });
      tx.run(plans.initInstance, { instance: randomUUID() });
    },
    { mode: 'immediate', retry: false },
  );
}
