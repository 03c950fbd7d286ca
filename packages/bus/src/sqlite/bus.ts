/**
 * The SQLite transport: {@link SqliteBus}.
 *
 * @module
 */
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { commitAsync, errorKind, isRetryable, retry, SqliteError, type Connection, type RetryOptions, type SqlValue } from '@siblite/core';
import { encodeHeaders, encodePayload, toClaim, type MessageRow } from '../codec.js';
import { BusClosedError, BusError, StaleClaimError, ValidationError } from '../errors.js';
import { afterTransaction, notify } from '../notify.js';
import type { Claim, Source, TransactResult } from '../store.js';
import { checkLogger, BusWorker } from '../worker.js';
import { makeDelivery } from '../delivery.js';
import { Coalesced } from '../coalesce.js';
import { buildStats, checkEventOptions, checkMessage, checkSubscribe, commandInfo, commandNames, commandSource, eventInfo, eventSource, receiveFrom, toDeadLetter, type CommandRow, type DeadRow, type StatsRows } from '../transport.js';
import { claimCommandRows, claimEventRows, inImmediate, inSavepoint, type ClaimedCommandRow } from './claims.js';
import { anchorUsable, BusClock, newAnchor, parseAnchor } from './clock.js';
import { batchedAcks } from './acks.js';
import { WriteBatch, type GatheredWrites } from './batch.js';
import { batchedSends, insertCommands, type CommandToStore } from './sends.js';
import { HandlerTx } from './guard.js';
import { CommandPrefetch, prefetcherOf } from './prefetch.js';
import { followingSlot, nextSlot, slotId, validateScheduleName, validateSpec, type ScheduleInfo, type ScheduleSpec } from '../schedule.js';
import { checkRetention, DEFAULT_RETENTION, retainWith, runEvery, type PruneResult, type RetainResult, type RetentionOptions, type TrimResult } from '../retention.js';
import { buildPlans, SCHEMA_VERSION, type Plans } from './plans.js';
import type {
  BatchCommand,
  Bus,
  DeadLetter,
  DeadLetterFilter,
  BusStats,
  Delivery,
  Handlers,
  Logger,
  MessageInfo,
  MessageKind,
  PauseTarget,
  Payload,
  ProduceOptions,
  ProduceResult,
  ReceiveOptions,
  SendManyOptions,
  SettleOptions,
  StopOptions,
  SubscribeOptions,
  Worker,
  WorkerOptions,
} from '../types.js';
import {
  checkBatch,
  validateGroup,
  validateId,
  validateMs,
  validateNamespace,
  validatePositiveInt,
  validatePriority,
  MAX_TIMER_MS,
  checkFilter,
  pauseKey,
} from '../validate.js';

/** Options of {@link SqliteBus.open}. */
export interface SqliteBusOptions {
  /** Prefix of the bus's tables (`<namespace>_queue`, ...). Default `bus`. */
  namespace?: string;
  /** Options of the core retry loop every database step runs in. */
  retry?: RetryOptions;
  /** Where workers report failures by default: `console` unless given; `null` silences. */
  logger?: Logger | null;
  /** Runs retention in this process on an unref'd timer (off by default). `true` uses the defaults. */
  retention?: RetentionOptions | boolean;
}

const DEFAULT_RETRY: RetryOptions = { retries: 10_000, minTimeout: 1, maxTimeout: 50, maxElapsedMs: 120_000 };
/** Reruns of a handler for conflicts before the attempt counts as failed. */
const MAX_RERUNS = 100;

/** A stored schedule. */
interface ScheduleRow {
  schedule: string;
  name: string;
  cron: string | null;
  every: number | null;
  timezone: string | null;
  encoding: string;
  payload: SqlValue;
  content_type: string;
  headers: string;
  key: string | null;
  priority: number;
  next_at: number;
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
  private readonly workers = new Set<BusWorker<HandlerTx>>();
  private readonly advancing = new Coalesced<string>();
  private sequencing: Promise<void> | undefined;
  /** The bus's own writes of this turn, committed together (see batch.ts). */
  private readonly batch = new WriteBatch((fn) => this.immediate(fn));
  /** Command acknowledgements of this turn, one statement per claim token in the batch (see acks.ts). */
  private readonly acks: GatheredWrites<Claim, void>;
  /** Sends of this turn without a caller's transaction, many rows per statement in the batch (see sends.ts). */
  private readonly sends: GatheredWrites<CommandToStore, number>;
  private readonly instance: string;
  private readonly clock: BusClock;
  /** The default logger of this bus's workers. @internal */
  readonly logger: Logger | null;
  private retentionTimer: NodeJS.Timeout | undefined;
  private schedulerTimer: NodeJS.Timeout | undefined;
  private closed = false;

  private constructor(main: Connection, plans: Plans, instance: string, retryOptions: RetryOptions, clock: BusClock, logger: Logger | null) {
    this.main = main;
    this.plans = plans;
    this.namespace = plans.namespace;
    this.instance = instance;
    this.retryOptions = retryOptions;
    this.clock = clock;
    this.logger = logger;
    this.acks = batchedAcks(this.batch, plans, () => this.now());
    this.sends = batchedSends(this.batch, plans, () => this.now());
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
    if (options === null || typeof options !== 'object') throw new ValidationError('options', 'options must be an object');
    const plans = buildPlans(validateNamespace(options.namespace ?? 'bus'));
    const logger = checkLogger(options.logger);
    const retention = checkRetention(options.retention);
    const retryOptions = { ...DEFAULT_RETRY, ...options.retry };
    const main = conn.connect();
    try {
      const { instance, clock } = await retry(() => migrate(main, plans), retryOptions);
      const bus = new SqliteBus(main, plans, instance, retryOptions, clock, logger === undefined ? console : logger);
      if (retention) bus.startRetention(retention);
      return bus;
    } catch (e) {
      main.close();
      throw e;
    }
  }

  /**
   * The bus clock in ms since the epoch: the database's clock, shared by every process on
   * the machine, never going back, unaffected by steps of the wall clock (see docs/bus.md).
   * Every stored time (`createdAt`, delays, leases) is on it.
   */
  now(): number {
    return this.clock.now();
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

  /** A pooled sibling handle for a handler's transaction; give it back with `release1`. @internal */
  acquire(): Connection {
    if (this.closed) throw new BusClosedError();
    const h = this.idle.pop() ?? this.main.connect();
    this.busy.add(h);
    return h;
  }

  /** Runs `fn` in one `BEGIN IMMEDIATE` transaction on the bus's handle, retried on busy errors. @internal */
  immediate<T>(fn: (h: Connection) => T): Promise<T> {
    return this.db((h) => inImmediate(h, () => fn(h)));
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
    const c = this.commandParams(name, payload, options);
    const changes =
      options.conn || this.main.memory
        ? await this.write(options.conn, (h) => insertOnce(h, this.plans.send, this.commandRow(c, this.now())))
        : await this.sends.add(c);
    this.afterProduce(options.conn, 'queue');
    return { id: c.id, stored: changes > 0 };
  }

  /**
   * Appends many commands in one transaction (see {@link Bus.sendMany}): all are validated
   * before anything is written, then stored together (in `options.conn`'s transaction when
   * given, as a savepoint of it) or not at all.
   *
   * @returns one result per message, in order; `stored: false` for an id already stored or
   *   repeated earlier in the batch.
   * @throws ValidationError naming the first invalid message (`messages[i].name`, ...);
   *   nothing is written. SqliteError from the database (nothing is written).
   * @example
   * ```ts
   * await bus.sendMany([
   *   { name: 'email.send', payload: { to: 'a@example.com' } },
   *   { name: 'email.send', payload: { to: 'b@example.com' }, delay: 60_000 },
   * ]);
   * ```
   */
  async sendMany(messages: readonly BatchCommand[], options: SendManyOptions = {}): Promise<ProduceResult[]> {
    this.assertOpen();
    if (options === null || typeof options !== 'object') throw new ValidationError('options', 'options must be an object');
    const conn = options.conn;
    if (conn !== undefined && (conn === null || typeof (conn as Connection).run !== 'function')) {
      throw new ValidationError('conn', 'conn must be a Connection');
    }
    const batch = checkBatch(messages, (m) => this.commandParams(m.name, m.payload, { ...m, conn: undefined }));
    if (batch.length === 0) return [];
    const insertAll = (h: Connection) => {
      const now = this.now();
      return batch.map((c) => insertOnce(h, this.plans.send, this.commandRow(c, now)));
    };
    // All or nothing: in the caller's transaction (a savepoint of it, or one of their handle's
    // own), else as one item of this turn's write batch, inside a savepoint of its own, many
    // rows per statement (see sends.ts).
    const changes = conn
      ? await conn.transaction(insertAll)
      : await this.batch.add((h) => inSavepoint(h, () => insertCommands(h, this.plans, batch, this.now())));
    this.afterProduce(conn, 'queue');
    return batch.map((c, i) => ({ id: c.id, stored: (changes[i] ?? 0) > 0 }));
  }

  /** Validates one command; its row needs only the time of writing (see {@link SqliteBus.commandRow}). */
  private commandParams(name: string, payload: Payload, options: ProduceOptions): CommandToStore {
    const m = checkMessage(name, payload, options);
    checkConnOption(options.conn);
    const delay = options.delay === undefined ? 0 : validateMs('delay', options.delay);
    const priority = options.priority === undefined ? 0 : validatePriority(options.priority);
    return { id: m.id, fields: [name, m.encoding, m.payload, m.contentType, m.headers, m.key], delay: Math.ceil(delay), priority };
  }

  /** The named parameters of `plans.send` for `c` written at `now`. */
  private commandRow(c: CommandToStore, now: number): Record<string, SqlValue> {
    const [name, encoding, payload, contentType, headers, key] = c.fields;
    return { id: c.id, name, encoding, payload, contentType, headers, key, now, availableAt: now + c.delay, priority: c.priority };
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
    checkEventOptions(options);
    const p = this.produceParams(name, payload, options);
    const params = { ...p.params, now: this.now() };
    const changes = await this.write(options.conn, (h) => insertOnce(h, this.plans.publish, params));
    if (!options.conn || !options.conn.inTransaction) await this.sequenceSoon();
    this.afterProduce(options.conn, 'log');
    return { id: p.id, stored: changes > 0 };
  }

  private produceParams(name: string, payload: Payload, options: ProduceOptions) {
    const m = checkMessage(name, payload, options);
    checkConnOption(options.conn);
    return { id: m.id, params: { id: m.id, name, encoding: m.encoding, payload: m.payload, contentType: m.contentType, headers: m.headers, key: m.key } };
  }

  /**
   * A write of one statement (or a few): in the caller's transaction when given, else in this
   * turn's write batch on a file (one commit for all the bus's writes of the turn), or as an
   * autocommit statement in memory (no fsync to share).
   */
  private write<T>(conn: Connection | undefined, fn: (h: Connection) => T): Promise<T> {
    if (conn) return this.onCaller(conn, fn);
    if (this.main.memory) return this.db(fn);
    this.assertOpen();
    return this.batch.add(fn);
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

  /**
   * {@link SqliteBus.sequence} at the end of this turn of the event loop, once for every
   * caller of this turn: publishers whose inserts committed together share one numbering commit.
   */
  private sequenceSoon(): Promise<void> {
    if (this.sequencing) return this.sequencing;
    const p = new Promise<void>((resolve) => setImmediate(resolve)).then(() => {
      this.sequencing = undefined;
      return this.sequence();
    });
    this.sequencing = p;
    return p;
  }

  // ------------------------------------------------------------------ consuming

  /**
   * Starts competing consumers for commands: each command is handled by one worker at a
   * time across every handle and process sharing the database. By default a worker claims
   * only the names it has handlers for.
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
    const source = commandSource(this, handlers, options);
    this.startScheduler();
    if (this.main.memory) return this.startWorker(source, handlers, options);
    // On a file, the worker's claims ride on the write batch, with its acknowledgements (see prefetch.ts).
    const names = commandNames(handlers, options);
    const prefetch = new CommandPrefetch({
      now: () => this.now(),
      claimOn: (h, limit, lease) => this.commandClaimsOn(h, limit, lease, names),
      release: (claims, countAttempt) => this.release(claims, countAttempt),
      batch: this.batch,
    });
    return this.startWorker(
      { ...source, claim: (limit, lease) => prefetch.claim(limit, lease), idle: () => prefetch.giveBack(), buffered: () => prefetch.buffered() },
      handlers,
      options,
    );
  }

  /**
   * Starts a consumer of `group`: every event after the group's offset, in log order; the
   * group's workers (in any process) share its events. A new group starts at the beginning
   * of the log, or at its end with `startFrom: 'end'`. Events without a handler are settled
   * without one (unless `onUnknown` says otherwise), so they never hold the offset back.
   *
   * @throws ValidationError for an invalid group, handlers or options.
   */
  subscribe(group: string, handlers: Handlers, options: SubscribeOptions = {}): Worker {
    this.assertOpen();
    const checked = checkSubscribe(group, handlers, options);
    this.tryCreateGroupNow(group, checked.fromEnd);
    return this.startWorker(eventSource(this, group, checked), handlers, options);
  }

  private startWorker(source: Source, handlers: Handlers, options: WorkerOptions): Worker {
    const worker: BusWorker<HandlerTx> = new BusWorker(this, source, handlers, options, this.logger, () => this.workers.delete(worker));
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
    return receiveFrom(this, options);
  }

  private tryCreateGroupNow(group: string, fromEnd: boolean): void {
    try {
      this.main.run(this.plans.sequence);
      this.main.run(this.plans.createGroup, { grp: group, fromEnd: fromEnd ? 1 : 0, now: this.now() });
    } catch {
      // busy: the worker creates it before its first claim
    }
  }

  /** Creates `group` if missing. @internal */
  async ensureGroup(group: string, fromEnd: boolean): Promise<void> {
    await this.sequence();
    await this.db((h) => h.run(this.plans.createGroup, { grp: group, fromEnd: fromEnd ? 1 : 0, now: this.now() }));
  }

  /** Claims up to `limit` commands (only `names` when given). @internal */
  claimCommands(limit: number, lease: number, names: readonly string[] | null): Promise<Claim[]> {
    return this.immediate((h) => this.commandClaimsOn(h, limit, lease, names));
  }

  /** Claims up to `limit` commands on `h`, inside its transaction. */
  private commandClaimsOn(h: Connection, limit: number, lease: number, names: readonly string[] | null): Claim[] {
    const token = randomUUID();
    const now = this.now();
    const rows = claimCommandRows(h, this.plans, { token, now, leaseUntil: now + lease, limit, names });
    rows.sort((a: ClaimedCommandRow, b: ClaimedCommandRow) => a.seq - b.seq);
    return rows.map((r) => toClaim(r, r.seq, 'command', null, token));
  }

  /** Claims up to `limit` events for `group`. @internal */
  async claimEvents(group: string, limit: number, lease: number, ordered = false): Promise<Claim[]> {
    const token = randomUUID();
    const claimed = await this.db((h) =>
      inImmediate(h, () => {
        h.run(this.plans.sequence);
        const now = this.now();
        return claimEventRows(h, this.plans, { group, token, now, leaseUntil: now + lease, limit, ordered });
      }),
    );
    const out: Claim[] = [];
    for (const c of claimed) {
      const row = await this.db((h) => h.get<EventRow>(this.plans.getEvent, { pos: c.pos }));
      if (!row) continue; // trimmed by age meanwhile
      out.push(toClaim({ ...row, attempts: c.attempts }, c.pos, 'event', group, token));
    }
    return out;
  }

  /** The earliest due time of a waiting command. @internal */
  async nextDueCommand(): Promise<number | null> {
    const row = await this.db((h) => h.get<{ due: number | null }>(this.plans.nextDueCommand, { now: this.now() }));
    return row?.due ?? null;
  }

  /** The earliest due time of a waiting event of `group`. @internal */
  async nextDueEvent(group: string): Promise<number | null> {
    const row = await this.db((h) => h.get<{ due: number | null }>(this.plans.nextDueEvent, { grp: group, now: this.now() }));
    return row?.due ?? null;
  }

  /** Moves a group's offset past settled events, coalescing concurrent requests. @internal */
  advance(group: string): Promise<void> {
    return this.advancing.run(group, () =>
      this.db((h) =>
        inImmediate(h, () => {
          h.run(this.plans.advanceGroup, { grp: group });
          h.run(this.plans.liftHighWater, { grp: group });
          h.run(this.plans.compactGroup, { grp: group });
        }),
      ),
    );
  }

  // ------------------------------------------------------------------ settlement

  /** Runs the fenced ack statement of `claim` on `h` (any handle, in any transaction). @internal */
  ackOn(h: Connection, claim: Claim): void {
    const changes =
      claim.kind === 'command'
        ? h.run(this.plans.ackCommand, { seq: claim.ref, token: claim.token, now: this.now() }).changes
        : h.run(this.plans.ackEvent, { grp: claim.group, pos: claim.ref, token: claim.token }).changes;
    if (changes === 0) throw new StaleClaimError(claim.id);
  }

  /** Acknowledges `claim` (on `conn` if given). @internal */
  async ack(claim: Claim, conn?: Connection): Promise<void> {
    if (conn) await this.onCaller(conn, (h) => this.ackOn(h, claim));
    else await this.ackSoon(claim);
    this.settledClaim(claim, conn);
  }

  /**
   * Acknowledges `claim` in this turn's write batch on a file (a command with the other
   * commands' acknowledgements of the turn, in one statement per claim token), or at once in memory.
   */
  private ackSoon(claim: Claim): Promise<void> {
    if (this.main.memory) return this.db((h) => this.ackOn(h, claim));
    this.assertOpen();
    if (claim.kind === 'command') return this.acks.add(claim);
    return this.batch.add((h) => this.ackOn(h, claim));
  }

  /** Puts `claim` back, claimable after `delay` ms. @internal */
  async nack(claim: Claim, delay: number, error: string | null): Promise<void> {
    const changes = await this.db((h) => {
      const at = this.now() + Math.ceil(delay);
      return claim.kind === 'command'
        ? h.run(this.plans.nackCommand, { seq: claim.ref, token: claim.token, at, error }).changes
        : h.run(this.plans.nackEvent, { grp: claim.group, pos: claim.ref, token: claim.token, at, error }).changes;
    });
    if (changes === 0) throw new StaleClaimError(claim.id);
    notify(this.channel(claim.kind === 'command' ? 'queue' : 'log'));
  }

  /** Gives claims back, claimable now; `countAttempt: false` takes back the attempt. @internal */
  async release(claims: readonly Claim[], countAttempt: boolean): Promise<void> {
    if (claims.length === 0) return;
    await this.db((h) =>
      inImmediate(h, () => {
        const now = this.now();
        const uncount = countAttempt ? 0 : 1;
        for (const c of claims) {
          if (c.kind === 'command') h.run(this.plans.releaseCommand, { seq: c.ref, token: c.token, now, uncount });
          else h.run(this.plans.releaseEvent, { grp: c.group, pos: c.ref, token: c.token, now, uncount });
        }
      }),
    );
    notify(this.channel('queue'));
    notify(this.channel('log'));
  }

  /** Extends the lease of `claim` to `ms` from now. @internal */
  async extend(claim: Claim, ms: number): Promise<void> {
    validateMs('ms', ms, 1, MAX_TIMER_MS);
    const changes = await this.db((h) => {
      const leaseUntil = this.now() + Math.ceil(ms);
      return claim.kind === 'command'
        ? h.run(this.plans.extendCommand, { seq: claim.ref, token: claim.token, leaseUntil }).changes
        : h.run(this.plans.extendEvent, { grp: claim.group, pos: claim.ref, token: claim.token, leaseUntil }).changes;
    });
    if (changes === 0) throw new StaleClaimError(claim.id);
  }

  /** Moves `claim` to the dead letters (or parks it), with a verbatim copy of the row. @internal */
  async bury(claim: Claim, status: 'dead' | 'parked', reason: string): Promise<void> {
    if (typeof reason !== 'string') throw new ValidationError('reason', 'reason must be a string');
    await this.db((h) =>
      inImmediate(h, () => {
        const now = this.now();
        if (claim.kind === 'command') {
          const p = { seq: claim.ref, token: claim.token, status, reason, now };
          if (h.run(this.plans.buryCommand, p).changes === 0) throw new StaleClaimError(claim.id);
          h.run(this.plans.copyCommandToDead, { seq: claim.ref, status, reason, now });
        } else {
          const p = { grp: claim.group, pos: claim.ref, token: claim.token, status, reason };
          if (h.run(this.plans.buryEvent, p).changes === 0) throw new StaleClaimError(claim.id);
          h.run(this.plans.copyEventToDead, { grp: claim.group, pos: claim.ref, status, reason, now });
        }
      }),
    );
    this.settledClaim(claim);
  }

  /**
   * Runs a handler in a `BEGIN CONCURRENT` transaction that commits with the acknowledgement
   * (see {@link Store.transact}). On a file the transaction is opened when the handler first
   * reads `context.conn` (see {@link HandlerTx}); a handler that never uses it is acknowledged
   * in the write batch, and the worker may reuse its slot while that commits (`settling`). A
   * busy lock while acknowledging or committing leaves the transaction parked: the same step is
   * tried again after a short wait, for as long as the lease holds (the worker renews it), so
   * the handler is not run again. Only a conflict (`SQLITE_BUSY_SNAPSHOT`), or a busy error that
   * the handler's own statement (or its `BEGIN`) threw, runs the handler again, with `run`
   * counting up.
   * @internal
   */
  async transact(claim: Claim, body: (tx: HandlerTx, run: number) => Promise<void>, abandon: AbortSignal, settling?: () => void): Promise<TransactResult> {
    for (let run = 1; ; run++) {
      const tx = new HandlerTx(() => {
        if (abandon.aborted) throw abandon.reason;
        return this.acquire();
      });
      let onAbandon: (() => void) | undefined;
      /** Set once the worker reused the slot: the handler is not run again after that. */
      let settled = false;
      try {
        if (abandon.aborted) throw abandon.reason;
        const abandoned = new Promise<never>((_, reject) => {
          onAbandon = () => {
            // Roll back for good: the handler may still run, but nothing it writes can commit.
            tx.handle?.close();
            reject(abandon.reason);
          };
          abandon.addEventListener('abort', onAbandon, { once: true });
        });
        abandoned.catch(() => {});
        // In memory the acknowledgement is a statement of the handler's transaction, always.
        if (this.main.memory) tx.begin();
        await Promise.race([body(tx, run), abandoned]);
        tx.end(); // context.conn is the handler's only while it runs
        const h = tx.handle;
        if (!tx.used && !this.main.memory) {
          // The handler never used context.conn: nothing to commit of its own. The ack joins
          // this turn's write batch (one commit with the other handlers' acks) instead.
          if (h?.isOpen && h.inTransaction) h.exec('ROLLBACK');
          if (abandon.aborted) throw abandon.reason;
          const acked = this.ackSoon(claim);
          // The same commit claims this worker's next command (see prefetch.ts).
          prefetcherOf(claim)?.acked(this.batch);
          // Only the ack is left, on no handle of this run: the worker may reuse the slot while
          // it commits. A failed ack then fails the attempt (never a second run of the handler).
          settled = true;
          settling?.();
          await acked;
          this.settledClaim(claim);
          return { reruns: run - 1 };
        }
        if (!h || !h.isOpen || !h.inTransaction) {
          throw new BusError('SIBLITE_BUS_HANDLER_TRANSACTION', 'the handler ended the bus transaction of context.conn', 'misuse');
        }
        await this.untilUnlocked(h, abandon, () => this.ackOn(h, claim));
        // Concurrent handlers that finish in the same turn share this COMMIT (group commit).
        await this.untilUnlocked(h, abandon, () => commitAsync(h));
        this.settledClaim(claim);
        return { reruns: run - 1 };
      } catch (e) {
        const h = tx.handle;
        if (h?.isOpen && h.inTransaction) {
          try {
            h.exec('ROLLBACK');
          } catch {
            // gone already
          }
        }
        if (abandon.aborted) throw abandon.reason;
        const kind = errorKind(e);
        if (!settled && (kind === 'busy_snapshot' || kind === 'busy') && run < MAX_RERUNS) {
          await sleep(Math.random() * Math.min(50, 2 ** run));
          continue;
        }
        throw e;
      } finally {
        if (onAbandon) abandon.removeEventListener('abort', onAbandon);
        tx.end();
        if (tx.handle) this.release1(tx.handle);
      }
    }
  }

  /** The handler context's transport fields: `conn`, the transaction's handle (opened when first read). @internal */
  txContext(tx: HandlerTx): { readonly conn: Connection } {
    return {
      get conn() {
        return tx.conn;
      },
    };
  }

  /** Runs `step` on `h` until no lock is in the way; the transaction stays open (parked) meanwhile. */
  private async untilUnlocked(h: Connection, abandon: AbortSignal, step: () => void | Promise<void>): Promise<void> {
    for (let i = 0; ; i++) {
      if (abandon.aborted) throw abandon.reason;
      try {
        await step();
        return;
      } catch (e) {
        if (errorKind(e) !== 'busy' || !h.isOpen || !h.inTransaction || this.closed) throw e;
        await sleep(1 + Math.random() * Math.min(20, 2 ** i));
      }
    }
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
    return makeDelivery<SettleOptions>(claim, this, (options) => this.ack(claim, options?.conn));
  }

  // ------------------------------------------------------------------ schedules

  /**
   * Creates (or replaces) a schedule: the command `spec.name` with `spec.payload`, sent at
   * every slot of `spec.cron` (a cron expression, croner syntax, optionally in
   * `spec.timezone`) or every `spec.every` ms (slots aligned to the epoch). Each slot is sent
   * exactly once however many processes run the scheduler: its command id is
   * `schedule:<schedule>:<slot ms>`. Schedules fire in processes running `listen` workers
   * (checked every second) or on {@link SqliteBus.fireSchedules}; a slot missed while no such
   * process ran is sent once, late, and the schedule then continues from the next slot.
   *
   * @throws ValidationError for an invalid name, expression, interval or message (nothing stored).
   * @example
   * ```ts
   * await bus.schedule('nightly-report', { cron: '0 3 * * *', timezone: 'Europe/Paris', name: 'report.build' });
   * await bus.schedule('heartbeat', { every: 60_000, name: 'health.ping', payload: { from: 'cron' } });
   * ```
   */
  async schedule(schedule: string, spec: ScheduleSpec): Promise<ScheduleInfo> {
    this.assertOpen();
    validateScheduleName(schedule);
    const timing = validateSpec(spec);
    const enc = encodePayload(spec.payload ?? null);
    const now = this.now();
    const nextAt = nextSlot(timing, now);
    await this.db((h) =>
      h.run(this.plans.upsertSchedule, {
        schedule,
        name: spec.name,
        ...timing,
        encoding: enc.encoding,
        payload: enc.payload,
        contentType: enc.contentType,
        headers: encodeHeaders(spec.headers ?? {}),
        key: spec.key ?? null,
        priority: spec.priority ?? 0,
        nextAt,
        now,
      }),
    );
    return { schedule, name: spec.name, ...timing, nextAt: new Date(nextAt) };
  }

  /** Deletes a schedule; `false` if there was none. Commands it already sent stay. */
  async unschedule(schedule: string): Promise<boolean> {
    this.assertOpen();
    validateScheduleName(schedule);
    return (await this.db((h) => h.run(this.plans.deleteSchedule, { schedule }).changes)) > 0;
  }

  /** Lists the schedules. */
  async schedules(): Promise<ScheduleInfo[]> {
    this.assertOpen();
    const rows = await this.db((h) =>
      h.all<{ schedule: string; name: string; cron: string | null; every: number | null; timezone: string | null; next_at: number }>(this.plans.listSchedules),
    );
    return rows.map((r) => ({ schedule: r.schedule, name: r.name, cron: r.cron, every: r.every, timezone: r.timezone, nextAt: new Date(r.next_at) }));
  }

  /**
   * Sends the command of every schedule whose slot has come (what the scheduler of a
   * `listen`ing bus runs every second).
   *
   * @returns how many commands were stored (a slot another process sent already counts 0).
   */
  async fireSchedules(): Promise<number> {
    this.assertOpen();
    const next = await this.db((h) => h.get<{ at: number | null }>(this.plans.nextScheduleAt)?.at ?? null);
    if (next === null || next > this.now()) return 0;
    const fired = await this.immediate((h) => {
      const now = this.now();
      let stored = 0;
      for (const s of h.all<ScheduleRow>(this.plans.dueSchedules, { now })) {
        const nextAt = followingSlot(s, now);
        stored += insertOnce(h, this.plans.send, {
          id: slotId(s.schedule, s.next_at),
          name: s.name,
          encoding: s.encoding,
          payload: s.payload,
          contentType: s.content_type,
          headers: s.headers,
          key: s.key,
          priority: s.priority,
          now,
          availableAt: now,
        });
        h.run(this.plans.advanceSchedule, { schedule: s.schedule, slot: s.next_at, nextAt });
      }
      return stored;
    });
    if (fired > 0) notify(this.channel('queue'));
    return fired;
  }

  private startScheduler(): void {
    this.schedulerTimer ??= runEvery(1_000, () => this.fireSchedules(), this.logger, 'firing schedules', () => this.closed);
  }

  // ------------------------------------------------------------------ by id, pauses

  /**
   * Reads a message by id with its state: a command (default) or, with `kind: 'event'`, an
   * event of the log.
   *
   * @returns the message and its state, or `undefined` when no such id is stored (never
   *   sent, or pruned).
   */
  async get(id: string, options: { kind?: MessageKind } = {}): Promise<MessageInfo | undefined> {
    this.assertOpen();
    validateId('id', id);
    const kind = options?.kind ?? 'command';
    if (kind !== 'command' && kind !== 'event') throw new ValidationError('kind', 'kind must be "command" or "event"');
    if (kind === 'event') {
      const row = await this.db((h) => h.get<EventRow>(this.plans.getEventById, { id }));
      return row ? eventInfo(row, row.pos) : undefined;
    }
    const row = await this.db((h) => h.get<CommandRow>(this.plans.getCommand, { id }));
    return row ? commandInfo(row, this.now()) : undefined;
  }

  /**
   * Cancels a waiting command (ready or delayed; not one being handled, not a settled one).
   * Its id stays taken until `prune` removes it, like a handled one.
   *
   * @returns `true` when it was cancelled.
   */
  async cancel(id: string): Promise<boolean> {
    this.assertOpen();
    validateId('id', id);
    const changes = await this.db((h) => h.run(this.plans.cancelCommand, { id, now: this.now() }).changes);
    if (changes > 0) notify(this.channel('queue'));
    return changes > 0;
  }

  /**
   * Pauses claims, for every process on the database: of the whole queue (no argument), of
   * one command name, or of one group. Running handlers finish; sending and publishing go on.
   */
  async pause(target?: PauseTarget): Promise<void> {
    this.assertOpen();
    const t = pauseKey(target);
    await this.db((h) => h.run(this.plans.pause, { target: t, now: this.now() }));
  }

  /** Resumes what {@link SqliteBus.pause} paused (the same target). */
  async resume(target?: PauseTarget): Promise<void> {
    this.assertOpen();
    const t = pauseKey(target);
    await this.db((h) => h.run(this.plans.resume, { target: t }));
    notify(this.channel(t.startsWith('group:') ? 'log' : 'queue'));
  }

  /** Lists paused targets (`queue`, `name:<name>`, `group:<group>`). */
  async paused(): Promise<string[]> {
    this.assertOpen();
    return (await this.db((h) => h.all<{ target: string }>(this.plans.listPaused))).map((r) => r.target).sort();
  }

  /** Releases a pooled handle. @internal */
  private release1(h: Connection): void {
    this.busy.delete(h);
    if (this.closed || !h.isOpen || h.inTransaction || this.idle.length >= 64) {
      if (h.isOpen) h.close();
    } else this.idle.push(h);
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
    return (await this.db((h) => h.all<DeadRow>(this.plans.listDead, { ...f, after, limit }))).map(toDeadLetter);
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
    const found = await this.immediate((h) => {
      const d = h.get<{ source: string; ref: number }>(this.plans.getDead, { deadId });
      if (!d) return null;
      const now = this.now();
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
   * Deletes dead letters matching the filter (all of them without one). The queue rows of
   * purged commands go too, so their ids may be sent again.
   *
   * @param filter - source, group, status, and `before` (only those that failed earlier).
   * @returns how many were deleted.
   */
  async purgeDeadLetters(filter: DeadLetterFilter & { before?: Date | number } = {}): Promise<number> {
    this.assertOpen();
    const f = checkFilter(filter);
    const before = filter.before === undefined ? null : filter.before instanceof Date ? filter.before.getTime() : validateMs('before', filter.before, 0, Number.MAX_SAFE_INTEGER);
    return this.immediate((h) => {
      const n = h.run(this.plans.purgeDead, { ...f, before }).changes;
      if (n > 0) h.run(this.plans.dropPurgedCommands);
      return n;
    });
  }

  /**
   * Deletes settled commands: handled and cancelled ones settled more than `olderThan` ms ago,
   * and with `dead` (ms) dead and parked ones and dead letters older than that. Their ids are
   * then forgotten: sending one again stores it again. So `olderThan` is the *dedupe window*:
   * an id is recognised as a duplicate for at least that long after its command settled.
   *
   * @returns how many commands and dead letters were removed.
   * @throws ValidationError for a negative or non-finite age.
   */
  async prune(olderThan: number, options: { dead?: number } = {}): Promise<PruneResult> {
    this.assertOpen();
    validateMs('olderThan', olderThan);
    const dead = options?.dead === undefined || options.dead === Infinity ? null : validateMs('dead', options.dead);
    return this.immediate((h) => {
      const now = this.now();
      let commands = h.run(this.plans.pruneCommands, { before: now - olderThan, withDead: 0 }).changes;
      let deadLetters = 0;
      if (dead !== null) {
        deadLetters = h.run(this.plans.purgeDead, { source: null, grp: null, status: null, name: null, before: now - dead }).changes;
        commands += h.run(this.plans.pruneCommands, { before: now - dead, withDead: 1 }).changes;
        if (deadLetters > 0) commands += h.run(this.plans.dropPurgedCommands).changes;
      }
      return { commands, deadLetters };
    });
  }

  /**
   * Trims the event log: removes events every group has passed (settled), and with `maxAge`
   * (ms) also events older than that whether read or not; a group still behind such an
   * event moves past it (counted in `groupsSkipped`). With no group at all, only `maxAge`
   * trims (a group created later may want to start at the beginning). The newest event is
   * always kept, so positions never restart.
   *
   * @throws ValidationError for an invalid `maxAge`.
   */
  async trim(options: { maxAge?: number } = {}): Promise<TrimResult> {
    this.assertOpen();
    const maxAge = options?.maxAge === undefined ? null : validateMs('maxAge', options.maxAge);
    await this.sequence();
    return this.immediate((h) => {
      const upto = h.get<{ m: number | null }>(this.plans.minOffset)?.m ?? 0;
      const before = maxAge === null ? null : this.now() - maxAge;
      const events = h.run(this.plans.trimLog, { upto, before }).changes;
      let groupsSkipped = 0;
      if (before !== null && events > 0) {
        const first = h.get<{ m: number | null }>(this.plans.minPosition)?.m;
        if (first !== null && first !== undefined) {
          groupsSkipped = h.run(this.plans.raiseOffsets, { upto: first - 1 }).changes;
          h.run(this.plans.dropTrimmedState, { first });
        }
      }
      return { events, groupsSkipped };
    });
  }

  /**
   * Deletes a consumer group: its offset, its claims and (with `deadLetters: true`) its dead
   * letters. Events it alone held back become trimmable.
   *
   * @returns `false` when no such group existed.
   */
  async deleteGroup(group: string, options: { deadLetters?: boolean } = {}): Promise<boolean> {
    this.assertOpen();
    validateGroup(group);
    return this.immediate((h) => {
      const n = h.run(this.plans.deleteGroup, { grp: group }).changes;
      h.run(this.plans.deleteGroupState, { grp: group });
      if (options?.deadLetters === true) h.run(this.plans.purgeDead, { source: 'log', grp: group, status: null, name: null, before: null });
      h.run(this.plans.resume, { target: `group:${group}` });
      return n > 0;
    });
  }

  /** One retention pass with the given policy (what the automatic retention runs). */
  async retain(policy: RetentionOptions = {}): Promise<RetainResult> {
    return retainWith(this, policy);
  }

  private startRetention(policy: RetentionOptions): void {
    this.retentionTimer = runEvery(policy.every ?? DEFAULT_RETENTION.every, () => this.retain(policy), this.logger, 'retention', () => this.closed);
  }

  // ------------------------------------------------------------------ observability

  /**
   * Counts per command name (ready, delayed, in flight, dead, parked, age of the oldest ready
   * one) and per group (offset, lag, in flight, delayed, dead, parked, age of the oldest
   * unsettled event). Rows without a readable name count under `''`.
   */
  async stats(): Promise<BusStats> {
    this.assertOpen();
    await this.sequence();
    return this.db((h) => {
      const now = this.now();
      const rows: StatsRows = {
        queue: h.all(this.plans.statsQueue, { now }),
        groups: h.all(this.plans.statsGroups, { now }),
        dead: h.all(this.plans.statsDead),
        events: h.get<{ n: number }>(this.plans.countEvents)?.n ?? 0,
      };
      return buildStats(rows, now);
    });
  }

  // ------------------------------------------------------------------ lifecycle

  /** Whether {@link SqliteBus.close} ran. */
  get isClosed(): boolean {
    return this.closed;
  }

  /**
   * Stops every worker of this bus (see `Worker.stop`: running handlers get `timeout` ms,
   * default 30 000, then are abandoned and their messages released), then closes the bus's
   * own handles. The caller's `Connection` stays open. Calling it again does nothing.
   */
  async close(options: StopOptions = {}): Promise<void> {
    if (this.closed) return;
    if (this.retentionTimer) clearInterval(this.retentionTimer);
    if (this.schedulerTimer) clearInterval(this.schedulerTimer);
    await Promise.all([...this.workers].map((w) => w.stop(options)));
    await this.advancing.settled();
    this.closed = true;
    for (const h of this.idle.splice(0)) h.close();
    for (const h of this.busy) h.close();
    this.busy.clear();
    this.main.close();
  }
}

/** Checks the `conn` option of `send` and `publish`. @throws ValidationError */
function checkConnOption(conn: unknown): void {
  if (conn !== undefined && (conn === null || typeof (conn as Connection).run !== 'function')) {
    throw new ValidationError('conn', 'conn must be a Connection');
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



/**
 * Creates or upgrades the schema inside one IMMEDIATE transaction, and reads (or sets) the
 * instance id and the clock anchor.
 */
async function migrate(h: Connection, plans: Plans): Promise<{ instance: string; clock: BusClock }> {
  return h.transaction(
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
      const instance = tx.get<{ value: string }>(plans.getInstance)?.value;
      if (instance === undefined) throw new Error('bus meta table has no instance id');
      const stored = parseAnchor(tx.get<{ value: string }>(plans.getClock)?.value);
      let anchor = stored;
      if (anchor === undefined || !anchorUsable(anchor)) {
        // First open, or the machine rebooted: a new anchor, never before a stored time.
        anchor = newAnchor(Math.max(tx.get<{ t: number }>(plans.latestTime)?.t ?? 0, stored?.wall ?? 0));
        tx.run(plans.setClock, { value: JSON.stringify(anchor) });
      }
      return { instance, clock: new BusClock(anchor) };
    },
    { mode: 'immediate', retry: false },
  );
}
