/**
 * The parts of the `Bus` API every transport builds the same way on its storage: the checks
 * of `send` and `publish`, `receive()`
 * (claim one, dead-letter undecodable rows on the way), the sources of `listen` and
 * `subscribe` (option checks, name filter, group offsets in batches), and the shapes of
 * dead letters, `get` and `stats`. A transport implements {@link ClaimStore} and calls these.
 *
 * @module
 */
import { randomUUID } from 'node:crypto';
import { decodeOrNull, decodeRow, encodeHeaders, encodePayload, type Encoding, type MessageRow } from './codec.js';
import { ValidationError } from './errors.js';
import { groupSource } from './group-source.js';
import type { Claim, Source, Store } from './store.js';
import type { BusStats, DeadLetter, Delivery, GroupStats, Handlers, Message, MessageInfo, NameStats, Payload, ProduceOptions, ReceiveOptions, SubscribeOptions, WorkerOptions } from './types.js';
import { checkReceiveOptions, startFromEnd, validateContentType, validateGroup, validateHandlers, validateHeaders, validateId, validateName } from './validate.js';

/** The claim side of a transport's storage, as `receive`, `listen` and `subscribe` use it. */
export interface ClaimStore<D extends Delivery = Delivery> extends Pick<Store<unknown>, 'bury'> {
  /** Claims up to `limit` commands (only `names` when given) under a lease of `lease` ms. */
  claimCommands(limit: number, lease: number, names: readonly string[] | null): Promise<Claim[]>;
  /** Claims up to `limit` events of `group` (strictly in log order when `ordered`). */
  claimEvents(group: string, limit: number, lease: number, ordered: boolean): Promise<Claim[]>;
  /** Creates `group` if it does not exist, at the beginning of the log or at its end. */
  ensureGroup(group: string, fromEnd: boolean): Promise<void>;
  /** The earliest time (store clock) a command becomes claimable, or `null`. */
  nextDueCommand(): Promise<number | null>;
  /** The earliest time (store clock) an event of `group` becomes claimable again, or `null`. */
  nextDueEvent(group: string): Promise<number | null>;
  /** Moves the offset of `group` over its settled events. */
  advance(group: string): Promise<void>;
  /** Wraps a decoded claim in the transport's {@link Delivery}. */
  delivery(claim: Claim): D;
  /** The in-process notifier key of new commands (`queue`) or events (`log`). */
  channel(which: 'queue' | 'log'): string;
}

/** A message checked and encoded for storage, as `send` and `publish` write it. */
export interface CheckedMessage {
  /** The id (a random UUID when not given). */
  readonly id: string;
  /** The routing name. */
  readonly name: string;
  /** How the payload is stored. */
  readonly encoding: Encoding;
  /** JSON text or bytes. */
  readonly payload: string | Uint8Array;
  /** The content type to store. */
  readonly contentType: string;
  /** Headers as JSON object text. */
  readonly headers: string;
  /** The ordering key or `null`. */
  readonly key: string | null;
}

/**
 * Checks and encodes what `send` and `publish` share: name, id, key, headers, content type
 * and payload (a transport checks its own transaction handle option).
 *
 * @throws ValidationError for anything invalid (nothing is written).
 */
export function checkMessage(name: string, payload: Payload, options: ProduceOptions | Record<string, unknown>): CheckedMessage {
  validateName(name);
  if (options === null || typeof options !== 'object') throw new ValidationError('options', 'options must be an object');
  const o = options as ProduceOptions;
  const id = o.id === undefined ? randomUUID() : validateId('id', o.id);
  const key = o.key === undefined ? null : validateId('key', o.key);
  const headers = o.headers === undefined ? {} : validateHeaders(o.headers);
  if (o.contentType !== undefined) validateContentType(o.contentType);
  const enc = encodePayload(payload, o.contentType);
  return { id, name, encoding: enc.encoding, payload: enc.payload, contentType: enc.contentType, headers: encodeHeaders(headers), key };
}

/**
 * Refuses the options of `send` that events do not have (`delay`, `priority`).
 *
 * @throws ValidationError when one is given.
 */
export function checkEventOptions(options: object | null | undefined): void {
  const o = (options ?? {}) as ProduceOptions;
  if (o.delay !== undefined) throw new ValidationError('delay', 'events cannot be delayed; use send() for delayed commands');
  if (o.priority !== undefined) throw new ValidationError('priority', 'events have no priority (every group reads the log in order)');
}

/**
 * `receive()`: claims one message, a command or with `options.group` an event of that group;
 * undecodable rows met on the way are dead-lettered, never returned.
 *
 * @throws ValidationError for invalid options.
 */
export async function receiveFrom<D extends Delivery>(store: ClaimStore<D>, options: ReceiveOptions): Promise<D | undefined> {
  const { lease, names, group, fromEnd } = checkReceiveOptions(options);
  let claimOnce: () => Promise<Claim[]>;
  if (group !== null) {
    await store.ensureGroup(group, fromEnd);
    claimOnce = () => store.claimEvents(group, 1, lease, false);
  } else {
    claimOnce = () => store.claimCommands(1, lease, names);
  }
  for (let i = 0; i < 1000; i++) {
    const [claim] = await claimOnce();
    if (!claim) return undefined;
    if (claim.message) return store.delivery(claim);
    await store.bury(claim, 'dead', `decode error: ${claim.decodeError?.message ?? 'unknown'}`);
  }
  return undefined;
}

/** The names a command worker claims: its handlers' (unknown names are skipped), or every name (`null`). */
export function commandNames(handlers: Handlers<any>, options: WorkerOptions): readonly string[] | null {
  return (options?.onUnknown ?? 'skip') === 'skip' ? Object.keys(handlers) : null;
}

/**
 * The source of `listen`: commands, by default only the names `handlers` has.
 *
 * @throws ValidationError for invalid handlers.
 */
export function commandSource(store: ClaimStore, handlers: Handlers<any>, options: WorkerOptions): Source {
  validateHandlers(handlers);
  const names = commandNames(handlers, options);
  return {
    channel: store.channel('queue'),
    prepare: async () => {},
    claim: (limit, lease) => store.claimCommands(limit, lease, names),
    nextDue: () => store.nextDueCommand(),
    settled: () => {},
    idle: async () => {},
  };
}

/** The checked options of `subscribe`. */
export interface CheckedSubscribe {
  /** Where a new group starts. */
  readonly fromEnd: boolean;
  /** Strict log order. */
  readonly ordered: boolean;
}

/**
 * Checks the arguments of `subscribe`.
 *
 * @throws ValidationError for an invalid group, handlers or options.
 */
export function checkSubscribe(group: string, handlers: Handlers<any>, options: SubscribeOptions): CheckedSubscribe {
  validateGroup(group);
  validateHandlers(handlers);
  const fromEnd = startFromEnd(options?.startFrom);
  if (options?.ordered !== undefined && typeof options.ordered !== 'boolean') throw new ValidationError('ordered', 'ordered must be a boolean');
  return { fromEnd, ordered: options?.ordered === true };
}

/** The source of `subscribe` for arguments checked by {@link checkSubscribe}. */
export function eventSource(store: ClaimStore, group: string, checked: CheckedSubscribe): Source {
  return groupSource({
    channel: store.channel('log'),
    prepare: () => store.ensureGroup(group, checked.fromEnd),
    claim: (limit, lease) => store.claimEvents(group, limit, lease, checked.ordered),
    nextDue: () => store.nextDueEvent(group),
    advance: () => store.advance(group),
  });
}

/** A stored dead letter: its own columns and the message's. */
export interface DeadRow extends MessageRow {
  /** Its id. */
  dead_id: unknown;
  /** `queue` or `log`. */
  source: unknown;
  /** The queue sequence number or log position of the message. */
  ref: unknown;
  /** The group (events), or NULL. */
  grp: unknown;
  /** `dead` or `parked`. */
  status: unknown;
  /** Why. */
  reason: unknown;
  /** When (store clock, ms). */
  failed_at: unknown;
}

/** A dead-letter row as `deadLetters()` returns it: the message decoded if it can be, and the row verbatim. */
export function toDeadLetter(r: DeadRow): DeadLetter {
  const source = r.source as 'queue' | 'log';
  let message: Message | null = null;
  let decodeError: string | null = null;
  try {
    message = decodeRow(r, source === 'queue' ? 'command' : 'event', source === 'log' ? (r.ref as number) : null, (r.grp as string | null) ?? null);
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
}

/** A stored command with its state columns, as `get` reads it. */
export interface CommandRow extends MessageRow {
  /** `ready`, `inflight`, `done`, `dead`, `parked` or `cancelled`. */
  state: string;
  /** When it becomes claimable, or its lease ends (store clock, ms). */
  due_at: number;
  /** When it was settled, or NULL. */
  settled_at: number | null;
  /** The last failure, or NULL. */
  last_error: string | null;
  /** Its priority. */
  priority: number;
}

/** What `get` returns for a command row, at store time `now`. */
export function commandInfo(row: CommandRow, now: number): MessageInfo {
  return {
    message: decodeOrNull(row, 'command', null, null),
    state: row.state === 'ready' && row.due_at > now ? 'delayed' : (row.state as MessageInfo['state']),
    attempts: row.attempts as number,
    lastError: row.last_error,
    settledAt: row.settled_at === null ? null : new Date(row.settled_at),
    priority: row.priority,
  };
}

/** What `get` returns for an event row at log position `pos`. */
export function eventInfo(row: MessageRow, pos: number): MessageInfo {
  return { message: decodeOrNull({ ...row, attempts: 0 }, 'event', pos, null), state: 'logged', attempts: 0, lastError: null, settledAt: null, priority: 0 };
}

/** Unsettled commands of one name, as a stats query counts them. */
export interface QueueStatsRow {
  /** The command name. */
  readonly name: string;
  /** Claimable now. */
  readonly ready: number;
  /** Waiting for their time. */
  readonly delayed: number;
  /** Claimed. */
  readonly inflight: number;
  /** When the oldest ready one became claimable (store clock, ms), or NULL. */
  readonly oldest: number | null;
}

/** One group, as a stats query counts it. */
export interface GroupStatsRow {
  /** The group. */
  readonly grp: string;
  /** Its offset. */
  readonly upto: number;
  /** Events after the offset not settled for it. */
  readonly lag: number;
  /** Claimed. */
  readonly inflight: number;
  /** Waiting for a retry. */
  readonly delayed: number;
  /** Creation time of its oldest unsettled event (store clock, ms), or NULL. */
  readonly oldest: number | null;
}

/** Dead letters of one source, group and name, as a stats query counts them. */
export interface DeadStatsRow {
  /** `queue` or `log`. */
  readonly source: string;
  /** The group (events), or NULL. */
  readonly grp: string | null;
  /** The message name, or NULL when unreadable. */
  readonly name: string | null;
  /** Dead. */
  readonly dead: number;
  /** Parked. */
  readonly parked: number;
}

/** Rows of a transport's stats queries, with times on the store clock. */
export interface StatsRows {
  /** Unsettled commands per name. */
  readonly queue: readonly QueueStatsRow[];
  /** Groups. */
  readonly groups: readonly GroupStatsRow[];
  /** Dead letters per source, group and name. */
  readonly dead: readonly DeadStatsRow[];
  /** Events in the log. */
  readonly events: number;
}

/** Assembles `stats()` from a transport's rows at store time `now`. */
export function buildStats(rows: StatsRows, now: number): BusStats {
  const age = (t: number | null) => (t === null ? null : Math.max(0, now - t));
  const queue: Record<string, NameStats> = {};
  const entry = (name: string): NameStats => (queue[name] ??= { ready: 0, delayed: 0, inFlight: 0, dead: 0, parked: 0, oldestAge: null });
  for (const r of rows.queue) Object.assign(entry(r.name), { ready: r.ready, delayed: r.delayed, inFlight: r.inflight, oldestAge: age(r.oldest) });
  const groups: Record<string, GroupStats> = {};
  const group = (g: string): GroupStats => (groups[g] ??= { offset: 0, lag: 0, inFlight: 0, delayed: 0, dead: 0, parked: 0, oldestAge: null });
  for (const r of rows.groups) Object.assign(group(r.grp), { offset: r.upto, lag: r.lag, inFlight: r.inflight, delayed: r.delayed, oldestAge: age(r.oldest) });
  for (const r of rows.dead) {
    const e = r.source === 'queue' ? entry(r.name ?? '') : r.grp !== null ? group(r.grp) : null;
    if (!e) continue;
    e.dead += r.dead;
    e.parked += r.parked;
  }
  return { queue, groups, events: rows.events };
}
