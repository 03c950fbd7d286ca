/**
 * The transport-independent vocabulary of the bus: messages, handlers, options, workers,
 * deliveries, stats, and the small {@link Bus} interface every transport implements.
 *
 * @module
 */
import type { Connection } from '@siblite/core';

/** A JSON value: what a payload may be unless it is raw bytes. */
export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };

/** What `send` and `publish` accept as a payload. */
export type Payload = JsonValue | Uint8Array | { readonly [key: string]: unknown } | readonly unknown[];

/** `command`: queued, one consumer. `event`: logged, every group. */
export type MessageKind = 'command' | 'event';

/** A decoded message, as handlers and `receive()` see it. */
export interface Message<P = unknown> {
  /** Unique per queue (commands) or per log (events). */
  readonly id: string;
  /** Routing name. */
  readonly name: string;
  /** `command` or `event`. */
  readonly kind: MessageKind;
  /** The payload: a JSON value, or a `Uint8Array` for binary payloads. */
  readonly payload: P;
  /** `application/json` for JSON payloads unless the sender said otherwise. */
  readonly contentType: string;
  /** String headers (correlation and causation ids live here). */
  readonly headers: Readonly<Record<string, string>>;
  /** Ordering key, or `null`. Messages sharing a key are handled one at a time, in order. */
  readonly key: string | null;
  /** How many times this message has been claimed, this delivery included (1 on first delivery). */
  readonly attempts: number;
  /** When it was sent. */
  readonly createdAt: Date;
  /** When it became (or becomes) claimable. */
  readonly availableAt: Date;
  /** Events only: the position in the log (commit order). `null` for commands. */
  readonly position: number | null;
  /** Events only: the consumer group this delivery is for. `null` for commands. */
  readonly group: string | null;
}

/** Options of `send` and `publish`. */
export interface ProduceOptions {
  /** Message id; a random UUID if omitted. Sending the same id twice stores the message once. */
  id?: string;
  /** String headers. */
  headers?: Record<string, string>;
  /** Content type; defaults to `application/json`, or `application/octet-stream` for bytes. */
  contentType?: string;
  /** Ordering key. */
  key?: string;
  /** Commands only: milliseconds before the command becomes claimable (at most 100 years). */
  delay?: number;
  /**
   * Commands only: among claimable commands, higher priorities are claimed first (then
   * oldest first). An integer from -1000 to 1000; default 0.
   */
  priority?: number;
  /**
   * A `Connection` (possibly inside a transaction) to write the message with: the
   * transactional outbox. The message exists only if that transaction commits.
   */
  conn?: Connection;
}

/** What `send` and `publish` return. */
export interface ProduceResult {
  /** The message id (generated when not given). */
  readonly id: string;
  /** `false` when a message with this id was already stored (nothing was written). */
  readonly stored: boolean;
}

/**
 * One command of {@link Bus.sendMany}: its name and payload, with the options of `send`
 * (except the transaction handle, which `sendMany` takes once for the whole batch).
 */
export interface BatchCommand extends Omit<ProduceOptions, 'conn'> {
  /** Routing name. */
  name: string;
  /** The payload. */
  payload: Payload;
}

/** Options of {@link Bus.sendMany} on the SQLite transport. */
export interface SendManyOptions {
  /**
   * A `Connection` (possibly inside a transaction) to write the batch with: the transactional
   * outbox. Without it the batch is one transaction of its own.
   */
  conn?: Connection;
}

/** Exponential retry delays: `base * 2^(attempt - 1)`, capped at `max`. */
export interface ExponentialBackoff {
  /** Only `exponential` for now. */
  readonly type?: 'exponential';
  /** Delay after the first failure, in ms. Default 1000. */
  readonly base?: number;
  /** Longest delay, in ms. Default 300 000. */
  readonly max?: number;
  /** Randomize each delay within [delay / 2, delay] so retries spread out. Default true. */
  readonly jitter?: boolean;
}

/**
 * Retry delay policy: a fixed delay in ms, exponential parameters, or a function from the
 * attempt number (1 after the first failure) to a delay in ms.
 *
 * @example
 * ```ts
 * bus.listen(handlers, { backoff: { base: 200, max: 10_000 } });
 * bus.listen(handlers, { backoff: (attempt) => attempt * 1000 });
 * ```
 */
export type Backoff = number | ExponentialBackoff | ((attempt: number) => number);

/** What every transport puts in the second argument of a handler. */
export interface BaseHandlerContext {
  /**
   * Aborted when the handler should give up: the worker is stopping (`stop()`, `close()` or
   * the worker's own `signal`), the lease was lost (another worker may have the message now),
   * or the handler's `timeout` passed. Nothing the handler writes through `conn` after that
   * is committed.
   */
  readonly signal: AbortSignal;
  /**
   * Which run of the handler this is for this delivery: 1, or more when a real conflict of its
   * transaction with another commit made the bus run it again (never for a busy lock). Keep
   * external side effects idempotent, or skip them when `run > 1`.
   */
  readonly run: number;
  /**
   * Pushes this delivery's lease `ms` milliseconds from now. The worker already renews the
   * lease while the handler runs; this is for longer pauses. Throws `StaleClaimError` if lost.
   */
  extendLease(ms: number): Promise<void>;
}

/** The second argument of a handler on the SQLite transport. */
export interface HandlerContext extends BaseHandlerContext {
  /**
   * A handle inside a `BEGIN CONCURRENT` transaction that commits together with the
   * acknowledgement: writes through it take effect exactly once.
   */
  readonly conn: Connection;
}

/** A message handler. Throw to retry (with backoff), throw `PermanentError` to dead-letter at once. */
export type Handler<P = any, C extends BaseHandlerContext = HandlerContext> = (message: Message<P>, context: C) => Promise<void> | void;

/** Maps message names to handlers (`C`: the transport's handler context). */
export type Handlers<C extends BaseHandlerContext = HandlerContext> = Record<string, Handler<any, C>>;

/** A message was handled and acknowledged. */
export interface HandledEvent {
  /** Discriminant. */
  readonly type: 'handled';
  /** The message. */
  readonly message: Message;
  /** Handler time plus commit, in ms. */
  readonly ms: number;
}

/** A handler failed; the message was put back for another attempt. */
export interface RetryEvent {
  /** Discriminant. */
  readonly type: 'retry';
  /** The message. */
  readonly message: Message;
  /** What the handler threw. */
  readonly error: unknown;
  /** Milliseconds until the next attempt. */
  readonly delay: number;
}

/** A message was dead-lettered (failures exhausted, `PermanentError`, undecodable row, no handler). */
export interface DeadEvent {
  /** Discriminant. */
  readonly type: 'dead';
  /** The message, or `null` when the row could not be decoded. */
  readonly message: Message | null;
  /** The reason recorded with the dead letter. */
  readonly reason: string;
}

/** A message without a handler was acknowledged (`onUnknown: 'ack'`) or skipped by its group. */
export interface UnknownEvent {
  /** Discriminant. */
  readonly type: 'unknown';
  /** The message. */
  readonly message: Message;
}

/** A settlement was refused because the claim had gone stale (lease expired, claimed again). */
export interface StaleEvent {
  /** Discriminant. */
  readonly type: 'stale';
  /** The message. */
  readonly message: Message;
}

/** The worker hit an unexpected error (it keeps running and tries again). */
export interface ErrorEvent {
  /** Discriminant. */
  readonly type: 'error';
  /** The error. */
  readonly error: unknown;
}

/** A progress notification from a worker, for logs and metrics. */
export type WorkerEvent = HandledEvent | RetryEvent | DeadEvent | UnknownEvent | StaleEvent | ErrorEvent;

/** Where a bus reports failures nobody else hears about: `console` unless told otherwise. */
export interface Logger {
  /** Retries, stale claims. */
  warn(message: string, ...details: unknown[]): void;
  /** Dead letters, unexpected worker errors. */
  error(message: string, ...details: unknown[]): void;
}

/** Options of `listen` and `subscribe`. */
export interface WorkerOptions {
  /** Handlers running at once in this worker. Default 1. */
  concurrency?: number;
  /**
   * Lease in milliseconds: how long a claim is held before others may claim again. Default
   * 30 000. The worker renews it every third of a lease while the handler runs, so a crashed
   * or frozen process loses its messages after one lease, a live one never.
   */
  lease?: number;
  /**
   * Handler timeout in ms, for every name or per name (`{ 'img.resize': 60_000 }`; names
   * not listed have none). When it passes, `context.signal` is aborted, the handler's
   * transaction is rolled back and the attempt counts as failed (retried with backoff).
   */
  timeout?: number | Record<string, number>;
  /** Claims per message before it is dead-lettered. Default 5. */
  maxAttempts?: number;
  /** Retry delay policy. Default exponential from 1 s, capped at 5 min, with jitter. */
  backoff?: Backoff;
  /** Aborting it stops the worker (like `stop()`). */
  signal?: AbortSignal;
  /** How often idle workers look for work from other processes, in ms. Default 1000. */
  pollInterval?: number;
  /**
   * What to do with a message that has no handler. `skip` (default): a command worker never
   * claims names it has no handler for (they stay queued for a worker that has one); a group
   * settles such events without a handler (counted as `unknown`), so they never hold back its
   * offset. `ack`: claim and acknowledge (counted as `unknown`). `deadLetter`: claim and
   * dead-letter.
   */
  onUnknown?: 'ack' | 'deadLetter' | 'skip';
  /**
   * Where failures are reported (retries and stale claims as warnings, dead letters and
   * worker errors as errors). Default: the bus's logger (`console` unless `SqliteBus.open`
   * was given another); `null` silences it.
   */
  logger?: Logger | null;
  /**
   * Whether the worker's timers keep the Node process alive. Default `false`: timers are
   * unref'd, so a worker never holds a finished program open; a process whose only job is
   * to run workers sets `keepAlive: true` (or keeps something else alive).
   */
  keepAlive?: boolean;
  /** Progress callback: called for every handled, retried, dead-lettered, unknown or stale message. */
  onEvent?: (event: WorkerEvent) => void;
}

/** Options of `subscribe`. */
export interface SubscribeOptions extends WorkerOptions {
  /** Where a group that does not exist yet starts: `beginning` (default) or `end` of the log. */
  startFrom?: 'beginning' | 'end';
  /**
   * Strict log order for this worker's claims: an event is handed out only once every
   * earlier event of the group is settled, so a failing event holds back the ones after it
   * until it succeeds or is dead-lettered (as if every event shared one ordering key).
   * Default `false`: events without a key are handled in parallel up to `concurrency`, and a
   * retry does not hold back later events.
   */
  ordered?: boolean;
}

/** Counters of a worker. */
export interface WorkerCounters {
  /** Messages claimed. */
  claimed: number;
  /** Messages handled and acknowledged. */
  handled: number;
  /** Handler failures that were scheduled for retry. */
  retried: number;
  /** Messages dead-lettered (failures, permanent errors, corrupt rows). */
  deadLettered: number;
  /** Messages without a handler. */
  unknown: number;
  /** Settlements refused because the claim had gone stale. */
  stale: number;
  /** Handler runs repeated because their transaction conflicted with another commit (see `HandlerContext.run`). */
  reruns: number;
  /** Handler calls in total (first runs and reruns). */
  calls: number;
  /** Claims given back without a settlement (stop, timeout of `stop`), not counted as attempts when no handler ran. */
  released: number;
  /** Handlers running right now. */
  inFlight: number;
}

/** Options of `Worker.stop` and `Bus.close`. */
export interface StopOptions {
  /** How long to wait for running handlers before abandoning them, in ms. Default 30 000. */
  timeout?: number;
}

/** A running consumer returned by `listen` and `subscribe`. */
export interface Worker {
  /** Live counters. */
  readonly counters: Readonly<WorkerCounters>;
  /**
   * Stops the worker: no new claims, `context.signal` of running handlers aborted; resolves
   * when they have settled or, after `timeout` ms (default 30 000; `Infinity` waits for ever),
   * abandons the rest: their transactions are rolled back and their messages released for
   * another worker.
   */
  stop(options?: StopOptions): Promise<void>;
  /** Resolves when nothing is claimable right now and nothing is in flight in this worker. */
  drain(): Promise<void>;
}

/** Options of `receive`. */
export interface ReceiveOptions {
  /** Receive an event for this consumer group instead of a command. */
  group?: string;
  /** Where a new group starts (see {@link SubscribeOptions.startFrom}). */
  startFrom?: 'beginning' | 'end';
  /** Lease in ms. Default 30 000. */
  lease?: number;
  /** Only claim messages with these names. */
  names?: readonly string[];
}

/** Options of settlements that can join the caller's transaction. */
export interface SettleOptions {
  /** Run the settlement on this handle (for example inside your transaction). */
  conn?: Connection;
}

/** A claimed message with its settlement methods, fenced by the claim token. */
export interface Delivery<P = unknown> {
  /** The message. */
  readonly message: Message<P>;
  /** The claim token. */
  readonly token: string;
  /** Marks the message handled. @throws StaleClaimError if the claim is no longer current. */
  ack(options?: SettleOptions): Promise<void>;
  /** Puts it back after `delay` ms (default 0). @throws StaleClaimError */
  nack(options?: { delay?: number }): Promise<void>;
  /** Moves it to the dead letters. @throws StaleClaimError */
  deadLetter(reason: string): Promise<void>;
  /** Keeps it aside for a person (listed with the dead letters, not retried). @throws StaleClaimError */
  park(reason: string): Promise<void>;
  /** Extends the lease to `ms` from now. @throws StaleClaimError */
  extendLease(ms: number): Promise<void>;
}

/** Per-name queue counts. */
export interface NameStats {
  /** Claimable now. */
  ready: number;
  /** Waiting for their delay or backoff. */
  delayed: number;
  /** Claimed and not settled. */
  inFlight: number;
  /** Dead-lettered. */
  dead: number;
  /** Parked. */
  parked: number;
  /** How long the oldest ready command has been claimable, in ms, or `null` when none is. */
  oldestAge: number | null;
}

/** Per-group counts. */
export interface GroupStats {
  /** All events at or below this position are settled for the group. */
  offset: number;
  /** Events after the offset. */
  lag: number;
  /** Events of the group being handled now. */
  inFlight: number;
  /** Events waiting for a retry. */
  delayed: number;
  /** Dead-lettered events of this group. */
  dead: number;
  /** Parked events of this group. */
  parked: number;
  /** Age of the oldest event the group has not settled, in ms, or `null` when it is caught up. */
  oldestAge: number | null;
}

/** What `stats()` returns. */
export interface BusStats {
  /** Commands, per name. */
  readonly queue: Record<string, NameStats>;
  /** Consumer groups. */
  readonly groups: Record<string, GroupStats>;
  /** Events in the log. */
  readonly events: number;
}

/** A dead-lettered or parked message, as listed by {@link SqliteBus.deadLetters}. */
export interface DeadLetter {
  /** Identifies the dead letter (for replay and purge). */
  readonly deadId: number;
  /** `queue` (a command) or `log` (an event, for one group). */
  readonly source: 'queue' | 'log';
  /** The group, for events. */
  readonly group: string | null;
  /** `dead` (failed) or `parked` (kept aside by a person's decision). */
  readonly status: 'dead' | 'parked';
  /** Why. */
  readonly reason: string;
  /** When. */
  readonly failedAt: Date;
  /** Claims made before it was set aside. */
  readonly attempts: number;
  /** The decoded message, or `null` when the stored row cannot be decoded. */
  readonly message: Message | null;
  /** The decode error when `message` is `null`. */
  readonly decodeError: string | null;
  /** The stored columns, verbatim. */
  readonly raw: Readonly<Record<string, unknown>>;
}

/** Filters of {@link SqliteBus.deadLetters} and {@link SqliteBus.purgeDeadLetters}. */
export interface DeadLetterFilter {
  /** Only commands (`queue`) or only events (`log`). */
  source?: 'queue' | 'log';
  /** Only this group's events. */
  group?: string;
  /** Only dead or only parked. */
  status?: 'dead' | 'parked';
  /** Only messages with this name. */
  name?: string;
}

/**
 * The transport interface. `SqliteBus` implements it; a server-based transport (PostgreSQL
 * with `FOR UPDATE SKIP LOCKED`, NATS JetStream) would implement the same interface and
 * run the same conformance suite.
 */
export interface Bus<C extends BaseHandlerContext = HandlerContext> {
  /** Appends a command to the queue. */
  send(name: string, payload: Payload, options?: ProduceOptions): Promise<ProduceResult>;
  /**
   * Appends many commands in one transaction: every message is validated before anything is
   * written (an invalid one throws `ValidationError` naming it, e.g. `messages[3].name`, and
   * nothing is stored), then all are stored together or none. Results are in input order; a
   * repeated id (already stored, or earlier in the batch) is `stored: false`. `options` are the
   * transport's: `{ conn }` ({@link SendManyOptions}) for SQLite, `{ client }` for PostgreSQL,
   * to write the batch inside the caller's transaction.
   */
  sendMany(messages: readonly BatchCommand[], options?: object): Promise<ProduceResult[]>;
  /** Appends an event to the log. */
  publish(name: string, payload: Payload, options?: Omit<ProduceOptions, 'delay'>): Promise<ProduceResult>;
  /** Starts competing consumers for commands. */
  listen(handlers: Handlers<C>, options?: WorkerOptions): Worker;
  /** Starts a consumer of a group reading every event. */
  subscribe(group: string, handlers: Handlers<C>, options?: SubscribeOptions): Worker;
  /** Claims one message (a command, or an event for `options.group`), or returns `undefined`. */
  receive(options?: ReceiveOptions): Promise<Delivery | undefined>;
  /** Counts per name and per group. */
  stats(): Promise<BusStats>;
  /** Lists dead letters and parked messages, oldest first. */
  deadLetters(filter?: DeadLetterFilter & { limit?: number; after?: number }): Promise<DeadLetter[]>;
  /** Replays one dead letter (back to the queue, or to its group). `false` if unknown. */
  replayDeadLetter(deadId: number): Promise<boolean>;
  /** Deletes dead letters matching the filter; returns how many. */
  purgeDeadLetters(filter?: DeadLetterFilter & { before?: Date | number }): Promise<number>;
  /** Reads a command (by default) or an event by id, with its state; `undefined` if unknown. */
  get(id: string, options?: { kind?: MessageKind }): Promise<MessageInfo | undefined>;
  /** Cancels a command that is not running or settled; `true` if it was cancelled. */
  cancel(id: string): Promise<boolean>;
  /** Stops claims of the whole queue, of one command name, or of one group (every process). */
  pause(target?: PauseTarget): Promise<void>;
  /** Undoes {@link Bus.pause} for the same target. */
  resume(target?: PauseTarget): Promise<void>;
  /** Stops workers (see `Worker.stop`) and releases handles. */
  close(options?: StopOptions): Promise<void>;
}

/** What `pause` and `resume` act on: nothing (the whole queue), a command `name`, or a `group`. */
export interface PauseTarget {
  /** A command name. */
  name?: string;
  /** A consumer group. */
  group?: string;
}

/** A stored message and where it stands, as `get` returns it. */
export interface MessageInfo {
  /** The decoded message, or `null` when the stored row cannot be decoded. */
  readonly message: Message | null;
  /**
   * Commands: `ready`, `delayed`, `inflight`, `done`, `dead`, `parked` or `cancelled`.
   * Events: `logged` (per-group progress is in `stats()`).
   */
  readonly state: 'ready' | 'delayed' | 'inflight' | 'done' | 'dead' | 'parked' | 'cancelled' | 'logged';
  /** Commands: the claims so far. */
  readonly attempts: number;
  /** Commands: the error of the last failed attempt, or the dead-letter reason. */
  readonly lastError: string | null;
  /** Commands: when it was settled (handled, dead-lettered, parked, cancelled). */
  readonly settledAt: Date | null;
  /** Commands: its priority. */
  readonly priority: number;
}
