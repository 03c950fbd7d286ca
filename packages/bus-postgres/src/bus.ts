/**
 * `PgBus`: the `@siblite/bus` API on PostgreSQL. The worker runtime, validation and codec
 * come from `@siblite/bus`; this module is only storage: SQL on node-postgres.
 *
 * - Claims are one statement each: `FOR UPDATE SKIP LOCKED` picks claimable rows without
 *   waiting on rows other workers are claiming; leases and claim tokens fence every
 *   settlement as in the SQLite transport, with every time taken from the server's clock.
 * - Ordering keys: a keyed command is claimable only while no older unsettled command of
 *   its key exists; a keyed event only while no lower unsettled event of its key exists in
 *   the group.
 * - Consumer groups read a log numbered by the sequencer (see `schema.ts`), in commit order,
 *   never skipping an event a late commit adds. A group's claims and offset moves are
 *   serialized by a row lock on the group.
 * - Wake-ups: `NOTIFY` on the bus's channel when work is produced or put back (delivered at
 *   commit, so the outbox wakes workers only once its transaction committed); polling is the
 *   fallback.
 *
 * @module
 */
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import {
  BusClosedError,
  BusError,
  StaleClaimError,
  ValidationError,
  MAX_TIMER_MS,
  checkBatch,
  checkFilter,
  checkLogger,
  checkReceiveOptions,
  groupSource,
  decodeOrNull,
  decodeRow,
  pauseKey,
  startFromEnd,
  toClaim,
  encodeHeaders,
  encodePayload,
  makeDelivery,
  notify,
  startWorker,
  validateContentType,
  validateGroup,
  validateHandlers,
  validateHeaders,
  validateId,
  validateMs,
  validateName,
  validatePositiveInt,
  validatePriority,
  type BaseHandlerContext,
  type Bus,
  type BusStats,
  type Claim,
  type DeadLetter,
  type DeadLetterFilter,
  type Delivery,
  type GroupStats,
  type Handlers,
  type Logger,
  type Message,
  type MessageInfo,
  type MessageKind,
  type MessageRow,
  type NameStats,
  type PauseTarget,
  type BatchCommand,
  type Payload,
  type ProduceOptions,
  type ProduceResult,
  type ReceiveOptions,
  type SettleOptions,
  type Source,
  type StopOptions,
  type Store,
  type SubscribeOptions,
  type TransactResult,
  type Worker,
  type WorkerOptions,
} from '@siblite/bus';
import { migrate, quoteSchema } from './schema.js';

/** The handler context on PostgreSQL. */
export interface PgHandlerContext extends BaseHandlerContext {
  /**
   * A client inside the transaction that commits together with the acknowledgement: writes
   * through it take effect exactly once. Do not end the transaction yourself.
   */
  readonly client: pg.PoolClient;
}

/** Handlers by message name, with the PostgreSQL handler context. */
export type PgHandlers = Handlers<PgHandlerContext>;

/** Options of `send` and `publish` on PostgreSQL. */
export interface PgProduceOptions extends Omit<ProduceOptions, 'conn'> {
  /**
   * A node-postgres client (possibly inside your transaction) to write the message with:
   * the transactional outbox. The message exists only if that transaction commits.
   */
  client?: pg.ClientBase;
}

/** Options of `PgDelivery.ack`. */
export interface PgSettleOptions extends SettleOptions {
  /** Acknowledge inside this node-postgres client's transaction (it counts only if that commits). */
  client?: pg.ClientBase;
}

/** A claimed message on PostgreSQL: `ack` can join your transaction through `client`. */
export interface PgDelivery extends Delivery {
  /** Marks the message handled (inside `options.client`'s transaction if given). @throws StaleClaimError */
  ack(options?: PgSettleOptions): Promise<void>;
}

/** Options of `PgBus.open`. */
export interface PgBusOptions {
  /** Where the tables live (created if missing). Default `siblite_bus`. */
  schema?: string;
  /**
   * A connection string or node-postgres pool settings for the bus's own pool (default
   * `max` 20). Default: node-postgres's environment variables (`PGHOST`, ...). The workers of
   * one bus may run at most `max - 2` handlers at once (each holds a client for its
   * transaction); `listen` and `subscribe` refuse more.
   */
  connection?: string | pg.PoolConfig;
  /** Where failures are reported; `console` by default, `null` silences. */
  logger?: Logger | null;
}

const MAX_RERUNS = 8;
/** Pool clients kept free of handler transactions: claims, lease renewals, settlements. */
const RESERVED_CLIENTS = 2;
const MSG_COLS = 'id, name, kind, encoding, payload, content_type, headers, key, created_at, available_at';
const UNSETTLED = `state IN ('ready', 'inflight')`;

/** bigint columns are milliseconds and counts well inside the safe integer range. */
const types = {
  getTypeParser(oid: number, format?: 'text' | 'binary') {
    if (oid === pg.types.builtins.INT8) return (v: string) => Number(v);
    return pg.types.getTypeParser(oid, format as 'text');
  },
} as pg.CustomTypesConfig;

/** The bus on PostgreSQL. Open with {@link PgBus.open}. */
export class PgBus implements Bus<PgHandlerContext>, Store<pg.PoolClient> {
  private readonly S: string;
  private readonly workers = new Set<Worker>();
  private readonly advancing = new Map<string, Promise<void>>();
  private closed = false;
  /** Handlers the running workers may run at once (the sum of their concurrency). */
  private handlerSlots = 0;

  private constructor(
    private readonly pool: pg.Pool,
    private listener: pg.Client,
    private readonly clientConfig: pg.ClientConfig,
    schema: string,
    private readonly instance: string,
    private readonly clockOffset: number,
    private readonly logger: Logger | null,
    private readonly poolMax: number,
  ) {
    this.S = quoteSchema(schema);
  }

  /**
   * Connects, creates or migrates the schema (idempotent, under an advisory lock), and
   * starts listening for wake-ups.
   *
   * @throws ValidationError for an invalid schema name or options; node-postgres errors
   *   when the server cannot be reached.
   * @example
   * ```ts
   * const bus = await PgBus.open({ connection: 'postgres://localhost/app', schema: 'jobs' });
   * ```
   */
  static async open(options: PgBusOptions = {}): Promise<PgBus> {
    if (options === null || typeof options !== 'object') throw new ValidationError('options', 'options must be an object');
    const schema = options.schema ?? 'siblite_bus';
    quoteSchema(schema);
    const logger = checkLogger(options.logger);
    const base: pg.PoolConfig = typeof options.connection === 'string' ? { connectionString: options.connection } : { ...(options.connection ?? {}) };
    const poolMax = base.max ?? 20;
    if (!Number.isSafeInteger(poolMax) || poolMax <= RESERVED_CLIENTS) throw new ValidationError('connection.max', `connection.max must be an integer above ${RESERVED_CLIENTS}`);
    const pool = new pg.Pool({ ...base, max: poolMax, types });
    pool.on('error', () => {}); // an idle client lost: the pool replaces it
    let listener: pg.Client | null = null;
    try {
      const c = await pool.connect();
      let instance: string;
      let offset: number;
      try {
        instance = await migrate(c, schema);
        const before = Date.now();
        const r = await c.query<{ now: number }>(`SELECT ${quoteSchema(schema)}.now_ms() AS now`);
        offset = (r.rows[0]?.now ?? before) - (before + Date.now()) / 2;
      } finally {
        c.release();
      }
      listener = new pg.Client({ ...base, types });
      const bus = new PgBus(pool, listener, { ...base, types }, schema, instance, offset, logger === undefined ? console : logger, poolMax);
      await bus.startListening(listener);
      return bus;
    } catch (e) {
      await listener?.end().catch(() => {});
      await pool.end().catch(() => {});
      throw e;
    }
  }

  private get channelName(): string {
    return `sb_${this.instance}`;
  }

  /**
   * LISTENs on the bus's channel. A lost connection is replaced after a second (polling
   * covers the gap), and every worker is woken once it is back, for what it missed.
   */
  private async startListening(client: pg.Client): Promise<void> {
    let lost = false;
    const onLost = (e?: unknown) => {
      if (lost || this.closed) return;
      lost = true;
      this.logger?.warn('[siblite/bus-postgres] the LISTEN connection was lost; workers poll until it is back', e);
      void client.end().catch(() => {});
      const retry = setTimeout(() => {
        if (this.closed) return;
        this.listener = new pg.Client(this.clientConfig);
        this.startListening(this.listener).then(
          () => {
            notify(this.channel('queue'));
            notify(this.channel('log'));
          },
          (err) => onLostAgain(err),
        );
      }, 1000);
      retry.unref();
    };
    const onLostAgain = (err: unknown) => {
      lost = false;
      onLost(err);
    };
    client.on('error', onLost);
    client.on('end', () => onLost());
    client.on('notification', (n) => {
      if (n.payload === 'queue' || n.payload === 'log') notify(this.channel(n.payload));
    });
    await client.connect();
    await client.query(`LISTEN ${this.channelName}`);
  }

  /** The in-process notifier key of a channel. @internal */
  channel(which: 'queue' | 'log'): string {
    return `pg:${this.instance}:${which}`;
  }

  /** Wakes workers here at once and in other processes through NOTIFY. */
  private wake(which: 'queue' | 'log'): void {
    notify(this.channel(which));
    if (!this.closed) void this.pool.query('SELECT pg_notify($1, $2)', [this.channelName, which]).catch(() => {});
  }

  /** The server's clock in ms (estimated locally from the offset measured at open). */
  now(): number {
    return Date.now() + this.clockOffset;
  }

  private assertOpen(): void {
    if (this.closed) throw new BusClosedError();
  }

  // ------------------------------------------------------------------ producing

  /**
   * Appends a command. With `options.client` it is written in that client's transaction
   * (the outbox) and workers are woken when it commits.
   *
   * @throws ValidationError for invalid arguments (nothing written).
   * @example
   * ```ts
   * await client.query('BEGIN');
   * await client.query('INSERT INTO orders (id) VALUES ($1)', [42]);
   * await bus.send('order.ship', { order: 42 }, { client });
   * await client.query('COMMIT');
   * ```
   */
  async send(name: string, payload: Payload, options: PgProduceOptions = {}): Promise<ProduceResult> {
    this.assertOpen();
    const p = produceParams(name, payload, options);
    const delay = options.delay === undefined ? 0 : Math.ceil(validateMs('delay', options.delay));
    const priority = options.priority === undefined ? 0 : validatePriority(options.priority);
    const S = this.S;
    const r = await (options.client ?? this.pool).query<{ n: number }>(
      `WITH ins AS (
         INSERT INTO ${S}.queue (id, name, encoding, payload, content_type, headers, key, created_at, available_at, due_at, priority)
         SELECT $1, $2, $3, $4, $5, $6, $7, t, t + $8, t + $8, $9 FROM (SELECT ${S}.now_ms() AS t) n
         ON CONFLICT (id) DO NOTHING RETURNING 1)
       SELECT (SELECT count(*) FROM ins) AS n, pg_notify($10, 'queue')`,
      [...p.values, delay, priority, this.channelName],
    );
    if (!options.client) notify(this.channel('queue'));
    return { id: p.id, stored: Number(r.rows[0]?.n ?? 0) > 0 };
  }

  /**
   * Appends many commands with one multi-row INSERT in one transaction (see `Bus.sendMany`):
   * every message is validated before anything is written; all are stored or none. With
   * `options.client` the batch is written in that client's transaction.
   *
   * @returns one result per message, in order (`stored: false` for an id already stored or
   *   repeated earlier in the batch).
   * @throws ValidationError naming the first invalid message (`messages[i].name`, ...); nothing
   *   is written.
   */
  async sendMany(messages: readonly BatchCommand[], options: { client?: pg.ClientBase } = {}): Promise<ProduceResult[]> {
    this.assertOpen();
    if (options === null || typeof options !== 'object') throw new ValidationError('options', 'options must be an object');
    if (options.client !== undefined && (options.client === null || typeof options.client.query !== 'function')) {
      throw new ValidationError('client', 'client must be a node-postgres client');
    }
    const batch = checkBatch(messages, (m) => {
      const p = produceParams(m.name, m.payload, { ...m, client: undefined });
      const delay = m.delay === undefined ? 0 : Math.ceil(validateMs('delay', m.delay));
      const priority = m.priority === undefined ? 0 : validatePriority(m.priority);
      return { id: p.id, values: [...p.values, delay, priority] };
    });
    if (batch.length === 0) return [];
    const S = this.S;
    const stored = new Set<string>();
    // Chunks keep a statement under PostgreSQL's 65,535 parameters; one transaction holds them all.
    const insert = async (c: pg.ClientBase | pg.Pool) => {
      for (let at = 0; at < batch.length; at += SEND_MANY_CHUNK) {
        const chunk = batch.slice(at, at + SEND_MANY_CHUNK);
        const rows = chunk.map((_, i) => {
          const b = i * 9;
          return `($${b + 1}::text, $${b + 2}::text, $${b + 3}::text, $${b + 4}::bytea, $${b + 5}::text, $${b + 6}::text, $${b + 7}::text, $${b + 8}::bigint, $${b + 9}::integer, ${i})`;
        });
        const r = await c.query<{ id: string }>(
          `INSERT INTO ${S}.queue (id, name, encoding, payload, content_type, headers, key, created_at, available_at, due_at, priority)
           SELECT v.id, v.name, v.enc, v.payload, v.ct, v.headers, v.key, n.t, n.t + v.delay, n.t + v.delay, v.priority
           FROM (VALUES ${rows.join(', ')}) AS v(id, name, enc, payload, ct, headers, key, delay, priority, ord),
                (SELECT ${S}.now_ms() AS t) n
           ORDER BY v.ord
           ON CONFLICT (id) DO NOTHING RETURNING id`,
          chunk.flatMap((x) => x.values),
        );
        for (const row of r.rows) stored.add(row.id);
      }
      await c.query('SELECT pg_notify($1, $2)', [this.channelName, 'queue']);
    };
    if (options.client) await insert(options.client);
    else if (batch.length <= SEND_MANY_CHUNK) await insert(this.pool);
    else await this.inTransaction(insert);
    if (!options.client) notify(this.channel('queue'));
    const seen = new Set<string>();
    return batch.map((b) => {
      const first = !seen.has(b.id);
      seen.add(b.id);
      return { id: b.id, stored: first && stored.has(b.id) };
    });
  }

  /**
   * Appends an event. With `options.client` it is written in that client's transaction and
   * gets its log position after commit (when the sequencer next runs).
   *
   * @throws ValidationError for invalid arguments (a `delay` or `priority` too).
   */
  async publish(name: string, payload: Payload, options: Omit<PgProduceOptions, 'delay'> = {}): Promise<ProduceResult> {
    this.assertOpen();
    if ((options as PgProduceOptions)?.delay !== undefined) throw new ValidationError('delay', 'events cannot be delayed; use send() for delayed commands');
    if ((options as PgProduceOptions)?.priority !== undefined) throw new ValidationError('priority', 'events have no priority (every group reads the log in order)');
    const p = produceParams(name, payload, options);
    const S = this.S;
    const r = await (options.client ?? this.pool).query<{ n: number }>(
      `WITH ins AS (
         INSERT INTO ${S}.log (id, name, encoding, payload, content_type, headers, key, created_at, available_at)
         SELECT $1, $2, $3, $4, $5, $6, $7, t, t FROM (SELECT ${S}.now_ms() AS t) n
         ON CONFLICT (id) WHERE target IS NULL DO NOTHING RETURNING 1)
       SELECT (SELECT count(*) FROM ins) AS n, pg_notify($8, 'log')`,
      [...p.values, this.channelName],
    );
    if (!options.client) {
      await this.sequence();
      notify(this.channel('log'));
    }
    return { id: p.id, stored: Number(r.rows[0]?.n ?? 0) > 0 };
  }

  /** Numbers committed, unnumbered events (see `schema.ts`). @internal */
  async sequence(): Promise<void> {
    await this.pool.query(`SELECT ${this.S}.sequence()`);
  }

  // ------------------------------------------------------------------ consuming

  /**
   * Starts competing consumers for commands (see `Bus.listen`). Handlers get
   * `context.client`, inside the transaction that acknowledges the message.
   *
   * @throws ValidationError for invalid handlers or options.
   */
  listen(handlers: PgHandlers, options: WorkerOptions = {}): Worker {
    this.assertOpen();
    validateHandlers(handlers);
    const names = (options?.onUnknown ?? 'skip') === 'skip' ? Object.keys(handlers) : null;
    const source: Source = {
      channel: this.channel('queue'),
      prepare: async () => {},
      claim: (limit, lease) => this.claimCommands(limit, lease, names),
      nextDue: () => this.nextDue(`SELECT min(due_at) AS due FROM ${this.S}.queue WHERE ${UNSETTLED} AND due_at > ${this.S}.now_ms()`, []),
      settled: () => {},
      idle: async () => {},
    };
    return this.start(source, handlers, options);
  }

  /**
   * Starts a consumer of `group` (see `Bus.subscribe`).
   *
   * @throws ValidationError for an invalid group, handlers or options.
   */
  subscribe(group: string, handlers: PgHandlers, options: SubscribeOptions = {}): Worker {
    this.assertOpen();
    validateGroup(group);
    validateHandlers(handlers);
    const fromEnd = startFromEnd(options?.startFrom);
    if (options?.ordered !== undefined && typeof options.ordered !== 'boolean') throw new ValidationError('ordered', 'ordered must be a boolean');
    const ordered = options?.ordered === true;
    const source = groupSource({
      channel: this.channel('log'),
      prepare: () => this.ensureGroup(group, fromEnd),
      claim: (limit, lease) => this.claimEvents(group, limit, lease, ordered),
      nextDue: () => this.nextDue(`SELECT min(due_at) AS due FROM ${this.S}.gstate WHERE grp = $1 AND ${UNSETTLED} AND due_at > ${this.S}.now_ms()`, [group]),
      advance: () => this.advance(group),
    });
    return this.start(source, handlers, options);
  }

  /**
   * Each running handler holds a pool client for its transaction, and lease renewals need
   * one more: running handlers of all workers together must leave clients free, or
   * renewals would wait for ever. Refused up front rather than stalling.
   */
  private start(source: Source, handlers: PgHandlers, options: WorkerOptions): Worker {
    const want = typeof options?.concurrency === 'number' && options.concurrency > 0 ? options.concurrency : 1;
    const limit = this.poolMax - RESERVED_CLIENTS;
    if (this.handlerSlots + want > limit) {
      throw new ValidationError(
        'concurrency',
        `the workers of this bus would run ${this.handlerSlots + want} handlers at once, more than its pool allows (${limit}: pool max ${this.poolMax} minus ${RESERVED_CLIENTS} for claims and lease renewals); raise connection.max`,
      );
    }
    const worker: Worker = startWorker(this, source, handlers, options, this.logger, () => {
      this.workers.delete(worker);
      this.handlerSlots -= want;
    });
    this.handlerSlots += want;
    this.workers.add(worker);
    return worker;
  }

  /**
   * Claims one message: a command, or with `options.group` an event of that group.
   *
   * @returns a delivery to settle, or `undefined` when nothing is claimable.
   * @throws ValidationError for invalid options.
   */
  async receive(options: ReceiveOptions = {}): Promise<PgDelivery | undefined> {
    this.assertOpen();
    const { lease, names, group, fromEnd } = checkReceiveOptions(options);
    let claimOnce: () => Promise<Claim[]>;
    if (group !== null) {
      await this.ensureGroup(group, fromEnd);
      claimOnce = () => this.claimEvents(group, 1, lease, false);
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

  private async ensureGroup(group: string, fromEnd: boolean): Promise<void> {
    await this.sequence();
    await this.pool.query(
      `INSERT INTO ${this.S}.groups (grp, upto, hw, created_at)
       SELECT $1, m, m, ${this.S}.now_ms() FROM (SELECT CASE WHEN $2 THEN (SELECT coalesce(max(pos), 0) FROM ${this.S}.log) ELSE 0 END AS m) x
       ON CONFLICT (grp) DO NOTHING`,
      [group, fromEnd],
    );
  }

  private async nextDue(sql: string, params: unknown[]): Promise<number | null> {
    const r = await this.pool.query<{ due: number | null }>(sql, params);
    return r.rows[0]?.due ?? null;
  }

  /** Claims up to `limit` commands in one statement (only `names` when given). @internal */
  async claimCommands(limit: number, lease: number, names: readonly string[] | null): Promise<Claim[]> {
    const S = this.S;
    const token = randomUUID();
    const r = await this.pool.query(
      `WITH c AS (
         SELECT q.seq FROM ${S}.queue q
         WHERE q.${UNSETTLED} AND q.due_at <= ${S}.now_ms()
           AND ($1::text[] IS NULL OR q.name = ANY($1::text[]))
           AND NOT EXISTS (SELECT 1 FROM ${S}.paused p WHERE p.target = 'queue' OR p.target = 'name:' || q.name)
           AND (q.key IS NULL OR NOT EXISTS (SELECT 1 FROM ${S}.queue o WHERE o.key = q.key AND o.${UNSETTLED} AND o.seq < q.seq))
         ORDER BY q.priority DESC, q.due_at, q.seq
         LIMIT $2 FOR UPDATE OF q SKIP LOCKED)
       UPDATE ${S}.queue q SET state = 'inflight', token = $3, attempts = q.attempts + 1, due_at = ${S}.now_ms() + $4
       FROM c WHERE q.seq = c.seq
       RETURNING q.seq, ${cols('q')}, q.attempts`,
      [names ? [...names] : null, limit, token, Math.ceil(lease)],
    );
    return r.rows.sort((a, b) => a.seq - b.seq).map((row) => toClaim(messageRow(row), row.seq, 'command', null, token));
  }

  /** Claims up to `limit` events of `group` (see the SQLite transport's claim rules). @internal */
  async claimEvents(group: string, limit: number, lease: number, ordered: boolean): Promise<Claim[]> {
    const S = this.S;
    await this.sequence();
    const token = randomUUID();
    const claimed = await this.inTransaction(async (c) => {
      const g = (
        await c.query<{ hw: number; now: number; paused: boolean }>(
          `SELECT hw, ${S}.now_ms() AS now, EXISTS (SELECT 1 FROM ${S}.paused WHERE target = 'group:' || $1) AS paused
           FROM ${S}.groups WHERE grp = $1 FOR UPDATE`,
          [group],
        )
      ).rows[0];
      if (!g || g.paused) return [];
      const now = g.now;
      const leaseUntil = now + Math.ceil(lease);
      const out: { pos: number; attempts: number }[] = [];
      const busyKeys = new Set<string>();
      let earlierUnsettled = false;
      const open = await c.query<{ pos: number; due_at: number; key: string | null }>(
        `SELECT s.pos, s.due_at, l.key FROM ${S}.gstate s JOIN ${S}.log l ON l.pos = s.pos
         WHERE s.grp = $1 AND s.${UNSETTLED} ORDER BY s.pos`,
        [group],
      );
      for (const o of open.rows) {
        const free = o.due_at <= now && (o.key === null || !busyKeys.has(o.key)) && !(ordered && earlierUnsettled);
        if (free && out.length < limit) {
          const r = await c.query<{ attempts: number }>(
            `UPDATE ${S}.gstate SET state = 'inflight', token = $3, due_at = $4, attempts = attempts + 1
             WHERE grp = $1 AND pos = $2 AND ${UNSETTLED} AND due_at <= $5 RETURNING attempts`,
            [group, o.pos, token, leaseUntil, now],
          );
          if (r.rows[0]) out.push({ pos: o.pos, attempts: r.rows[0].attempts });
        }
        earlierUnsettled = true;
        if (o.key !== null) busyKeys.add(o.key);
        if (ordered) break;
      }
      if (out.length >= limit || (ordered && earlierUnsettled)) return out;
      const fresh = await c.query<{ pos: number; key: string | null }>(
        `SELECT pos, key FROM ${S}.log WHERE pos > $1 AND (target IS NULL OR target = $2) ORDER BY pos LIMIT $3`,
        [g.hw, group, ordered ? 1 : Math.max(64, limit * 16)],
      );
      const passed: number[] = [];
      let hw = g.hw;
      const insert = `INSERT INTO ${S}.gstate (grp, pos, state, token, due_at, attempts) VALUES ($1, $2, $3, $4, $5, $6)`;
      for (const f of fresh.rows) {
        if (out.length >= limit) break;
        if (f.key !== null && busyKeys.has(f.key)) {
          passed.push(f.pos);
          continue;
        }
        // Events passed over behind their key get an open row, so the high-water mark can move past them.
        for (const pos of passed) await c.query(insert, [group, pos, 'ready', null, 0, 0]);
        passed.length = 0;
        await c.query(insert, [group, f.pos, 'inflight', token, leaseUntil, 1]);
        out.push({ pos: f.pos, attempts: 1 });
        hw = f.pos;
        if (f.key !== null) busyKeys.add(f.key);
      }
      if (hw > g.hw) await c.query(`UPDATE ${S}.groups SET hw = greatest(hw, $2) WHERE grp = $1`, [group, hw]);
      return out;
    });
    if (claimed.length === 0) return [];
    const rows = await this.pool.query(`SELECT pos, ${MSG_COLS} FROM ${S}.log WHERE pos = ANY($1::bigint[])`, [claimed.map((c) => c.pos)]);
    const byPos = new Map(rows.rows.map((r) => [r.pos as number, r]));
    const out: Claim[] = [];
    for (const c of claimed) {
      const row = byPos.get(c.pos);
      if (row) out.push(toClaim(messageRow({ ...row, attempts: c.attempts }), c.pos, 'event', group, token));
    }
    return out;
  }

  /**
   * Moves a group's offset to just below its lowest unsettled event. The group row is locked
   * first, in its own statement, so the update's snapshot sees every claim committed before
   * (an UPDATE that waited for the lock would otherwise judge the group by an older snapshot).
   * @internal
   */
  advance(group: string): Promise<void> {
    const running = this.advancing.get(group);
    if (running) return running;
    const S = this.S;
    const p = (async () => {
      await Promise.resolve();
      this.advancing.delete(group);
      await this.inTransaction(async (c) => {
        await c.query(`SELECT 1 FROM ${S}.groups WHERE grp = $1 FOR UPDATE`, [group]);
        await c.query(
          `UPDATE ${S}.groups g SET upto = greatest(g.upto, coalesce(
             (SELECT min(p) - 1 FROM (
               SELECT (SELECT min(s.pos) FROM ${S}.gstate s WHERE s.grp = g.grp AND s.${UNSETTLED}) AS p
               UNION ALL
               SELECT (SELECT min(l.pos) FROM ${S}.log l WHERE l.pos > g.hw AND (l.target IS NULL OR l.target = g.grp))) x),
             (SELECT max(pos) FROM ${S}.log),
             g.upto))
           WHERE grp = $1`,
          [group],
        );
        await c.query(`UPDATE ${S}.groups SET hw = upto WHERE grp = $1 AND hw < upto`, [group]);
        await c.query(`DELETE FROM ${S}.gstate WHERE grp = $1 AND pos <= (SELECT upto FROM ${S}.groups WHERE grp = $1)`, [group]);
      });
    })();
    this.advancing.set(group, p);
    return p;
  }

  private async inTransaction<T>(fn: (c: pg.PoolClient) => Promise<T>): Promise<T> {
    const c = await this.pool.connect();
    try {
      await c.query('BEGIN');
      const out = await fn(c);
      await c.query('COMMIT');
      c.release();
      return out;
    } catch (e) {
      try {
        await c.query('ROLLBACK');
        c.release();
      } catch (e2) {
        c.release(e2 as Error);
      }
      throw e;
    }
  }

  // ------------------------------------------------------------------ settlement

  /** Runs the fenced ack of `claim` on `c` (any client, in any transaction). */
  private async ackOn(c: pg.ClientBase | pg.Pool, claim: Claim): Promise<void> {
    const S = this.S;
    const r =
      claim.kind === 'command'
        ? await c.query(
            `UPDATE ${S}.queue SET state = 'done', token = NULL, settled_at = ${S}.now_ms()
             WHERE seq = $1 AND token = $2 AND state = 'inflight' RETURNING key`,
            [claim.ref, claim.token],
          )
        : await c.query(`UPDATE ${S}.gstate SET state = 'done', token = NULL WHERE grp = $1 AND pos = $2 AND token = $3 AND state = 'inflight'`, [
            claim.group,
            claim.ref,
            claim.token,
          ]);
    if (r.rowCount === 0) throw new StaleClaimError(claim.id);
    // The next command of the key becomes claimable: wake the workers when this commits.
    if (claim.kind === 'command' && r.rows[0]?.key != null) await c.query(`SELECT pg_notify($1, 'queue')`, [this.channelName]);
  }

  /** Acknowledges `claim` (on `client`, inside its transaction, if given). @internal */
  async ack(claim: Claim, client?: pg.ClientBase): Promise<void> {
    await this.ackOn(client ?? this.pool, claim);
    this.settledClaim(claim);
  }

  /** Puts `claim` back, claimable after `delay` ms. @internal */
  async nack(claim: Claim, delay: number, error: string | null): Promise<void> {
    const S = this.S;
    const d = Math.ceil(delay);
    const r =
      claim.kind === 'command'
        ? await this.pool.query(
            `UPDATE ${S}.queue SET state = 'ready', token = NULL, due_at = ${S}.now_ms() + $3, available_at = ${S}.now_ms() + $3, last_error = $4
             WHERE seq = $1 AND token = $2 AND state = 'inflight'`,
            [claim.ref, claim.token, d, error],
          )
        : await this.pool.query(
            `UPDATE ${S}.gstate SET state = 'ready', token = NULL, due_at = ${S}.now_ms() + $4, last_error = $5
             WHERE grp = $1 AND pos = $2 AND token = $3 AND state = 'inflight'`,
            [claim.group, claim.ref, claim.token, d, error],
          );
    if (r.rowCount === 0) throw new StaleClaimError(claim.id);
    this.wake(claim.kind === 'command' ? 'queue' : 'log');
  }

  /** Gives claims back, claimable now; `countAttempt: false` takes back the attempt. @internal */
  async release(claims: readonly Claim[], countAttempt: boolean): Promise<void> {
    if (claims.length === 0) return;
    const S = this.S;
    const uncount = countAttempt ? 0 : 1;
    await this.inTransaction(async (c) => {
      for (const claim of claims) {
        if (claim.kind === 'command') {
          await c.query(
            `UPDATE ${S}.queue SET state = 'ready', token = NULL, due_at = ${S}.now_ms(), attempts = greatest(0, attempts - $3)
             WHERE seq = $1 AND token = $2 AND state = 'inflight'`,
            [claim.ref, claim.token, uncount],
          );
        } else {
          await c.query(
            `UPDATE ${S}.gstate SET state = 'ready', token = NULL, due_at = ${S}.now_ms(), attempts = greatest(0, attempts - $4)
             WHERE grp = $1 AND pos = $2 AND token = $3 AND state = 'inflight'`,
            [claim.group, claim.ref, claim.token, uncount],
          );
        }
      }
    });
    this.wake('queue');
    this.wake('log');
  }

  /** Extends the lease of `claim` to `ms` from now (server clock). @internal */
  async extend(claim: Claim, ms: number): Promise<void> {
    validateMs('ms', ms, 1, MAX_TIMER_MS);
    const S = this.S;
    const r =
      claim.kind === 'command'
        ? await this.pool.query(`UPDATE ${S}.queue SET due_at = ${S}.now_ms() + $3 WHERE seq = $1 AND token = $2 AND state = 'inflight'`, [
            claim.ref,
            claim.token,
            Math.ceil(ms),
          ])
        : await this.pool.query(`UPDATE ${S}.gstate SET due_at = ${S}.now_ms() + $4 WHERE grp = $1 AND pos = $2 AND token = $3 AND state = 'inflight'`, [
            claim.group,
            claim.ref,
            claim.token,
            Math.ceil(ms),
          ]);
    if (r.rowCount === 0) throw new StaleClaimError(claim.id);
  }

  /** Moves `claim` to the dead letters (or parks it) with a verbatim copy, in one statement. @internal */
  async bury(claim: Claim, status: 'dead' | 'parked', reason: string): Promise<void> {
    if (typeof reason !== 'string') throw new ValidationError('reason', 'reason must be a string');
    const S = this.S;
    const r =
      claim.kind === 'command'
        ? await this.pool.query(
            `WITH b AS (UPDATE ${S}.queue SET state = $3, token = NULL, settled_at = ${S}.now_ms(), last_error = $4
                        WHERE seq = $1 AND token = $2 AND state = 'inflight' RETURNING *)
             INSERT INTO ${S}.dead (source, ref, grp, status, reason, failed_at, attempts, ${MSG_COLS})
             SELECT 'queue', seq, NULL, $3, $4, ${S}.now_ms(), attempts, ${MSG_COLS} FROM b`,
            [claim.ref, claim.token, status, reason],
          )
        : await this.pool.query(
            `WITH b AS (UPDATE ${S}.gstate SET state = $4, token = NULL, last_error = $5
                        WHERE grp = $1 AND pos = $2 AND token = $3 AND state = 'inflight' RETURNING attempts)
             INSERT INTO ${S}.dead (source, ref, grp, status, reason, failed_at, attempts, ${MSG_COLS})
             SELECT 'log', l.pos, $1, $4, $5, ${S}.now_ms(), b.attempts, ${cols('l')} FROM b, ${S}.log l WHERE l.pos = $2`,
            [claim.group, claim.ref, claim.token, status, reason],
          );
    if (r.rowCount === 0) throw new StaleClaimError(claim.id);
    if (claim.kind === 'command') this.wake('queue');
    this.settledClaim(claim);
  }

  /**
   * Runs a handler in a transaction that commits with the acknowledgement. When `abandon` is
   * aborted the connection is destroyed, which rolls the transaction back at once. A
   * serialization failure or deadlock runs the handler again (`run` counts up).
   * @internal
   */
  async transact(claim: Claim, body: (tx: pg.PoolClient, run: number) => Promise<void>, abandon: AbortSignal): Promise<TransactResult> {
    for (let run = 1; ; run++) {
      if (abandon.aborted) throw abandon.reason;
      const c = await this.pool.connect();
      let destroyed = false;
      let onAbandon: (() => void) | undefined;
      const abandoned = new Promise<never>((_, reject) => {
        onAbandon = () => {
          destroyed = true;
          c.release(new Error('abandoned: the transaction is rolled back'));
          reject(abandon.reason);
        };
        abandon.addEventListener('abort', onAbandon, { once: true });
      });
      abandoned.catch(() => {});
      const step = <T>(p: Promise<T>) => Promise.race([p, abandoned]);
      try {
        await step(c.query('BEGIN'));
        const xid = (await step(c.query<{ x: string }>('SELECT pg_current_xact_id()::text AS x'))).rows[0]?.x;
        await step(body(c, run));
        const same = await step(c.query<{ same: boolean }>('SELECT pg_current_xact_id()::text = $1 AS same', [xid]));
        if (!same.rows[0]?.same) {
          throw new BusError('SIBLITE_BUS_HANDLER_TRANSACTION', 'the handler ended the bus transaction of context.client', 'misuse');
        }
        await step(this.ackOn(c, claim));
        // From here on the outcome must be known: abandoning during COMMIT could not say
        // whether it committed, so the commit is awaited (the claim stays fenced either way).
        if (onAbandon) abandon.removeEventListener('abort', onAbandon);
        if (destroyed) throw abandon.reason;
        await c.query('COMMIT');
        this.settledClaim(claim);
        return { reruns: run - 1 };
      } catch (e) {
        if (!destroyed) {
          try {
            await c.query('ROLLBACK');
          } catch {
            destroyed = true;
            c.release(new Error('rollback failed'));
          }
        }
        if (abandon.aborted) throw abandon.reason;
        const code = (e as { code?: string })?.code;
        if ((code === '40001' || code === '40P01') && run < MAX_RERUNS) continue;
        throw e;
      } finally {
        if (onAbandon) abandon.removeEventListener('abort', onAbandon);
        if (!destroyed) c.release();
      }
    }
  }

  /** The handler context's transport field: `client`, inside the bus transaction. @internal */
  txContext(client: pg.PoolClient): { client: pg.PoolClient } {
    return { client };
  }

  private settledClaim(claim: Claim): void {
    if (claim.kind !== 'event' || claim.group === null) return;
    void this.advance(claim.group).catch(() => {});
  }

  /** Wraps a claim in the public settlement API. @internal */
  delivery(claim: Claim): PgDelivery {
    return makeDelivery<PgSettleOptions>(claim, this, async (options) => {
      if (options?.conn !== undefined) throw new ValidationError('conn', 'the PostgreSQL bus takes a pg client as `client`, not a siblite `conn`');
      await this.ack(claim, options?.client);
    });
  }

  // ------------------------------------------------------------------ inspection and control

  /** Reads a command (default) or an event by id, with its state; `undefined` if unknown. */
  async get(id: string, options: { kind?: MessageKind } = {}): Promise<MessageInfo | undefined> {
    this.assertOpen();
    validateId('id', id);
    const kind = options?.kind ?? 'command';
    if (kind !== 'command' && kind !== 'event') throw new ValidationError('kind', 'kind must be "command" or "event"');
    const S = this.S;
    if (kind === 'event') {
      const row = (await this.pool.query(`SELECT pos, ${MSG_COLS} FROM ${S}.log WHERE id = $1 AND target IS NULL`, [id])).rows[0];
      if (!row) return undefined;
      return { message: decodeOrNull(messageRow({ ...row, attempts: 0 }), 'event', row.pos, null), state: 'logged', attempts: 0, lastError: null, settledAt: null, priority: 0 };
    }
    const row = (
      await this.pool.query(`SELECT seq, ${MSG_COLS}, attempts, state, due_at, settled_at, last_error, priority, ${S}.now_ms() AS now FROM ${S}.queue WHERE id = $1`, [id])
    ).rows[0];
    if (!row) return undefined;
    const state = row.state === 'ready' && row.due_at > row.now ? 'delayed' : (row.state as MessageInfo['state']);
    return {
      message: decodeOrNull(messageRow(row), 'command', null, null),
      state,
      attempts: row.attempts,
      lastError: row.last_error,
      settledAt: row.settled_at === null ? null : new Date(row.settled_at),
      priority: row.priority,
    };
  }

  /** Cancels a waiting command (not one being handled or settled); `true` if cancelled. */
  async cancel(id: string): Promise<boolean> {
    this.assertOpen();
    validateId('id', id);
    const r = await this.pool.query(`UPDATE ${this.S}.queue SET state = 'cancelled', settled_at = ${this.S}.now_ms(), last_error = 'cancelled' WHERE id = $1 AND state = 'ready'`, [
      id,
    ]);
    const done = (r.rowCount ?? 0) > 0;
    if (done) this.wake('queue');
    return done;
  }

  /** Pauses claims of the whole queue, one command name, or one group, for every process. */
  async pause(target?: PauseTarget): Promise<void> {
    this.assertOpen();
    await this.pool.query(`INSERT INTO ${this.S}.paused (target, at) VALUES ($1, ${this.S}.now_ms()) ON CONFLICT (target) DO NOTHING`, [pauseKey(target)]);
  }

  /** Undoes {@link PgBus.pause} for the same target. */
  async resume(target?: PauseTarget): Promise<void> {
    this.assertOpen();
    const t = pauseKey(target);
    await this.pool.query(`DELETE FROM ${this.S}.paused WHERE target = $1`, [t]);
    this.wake(t.startsWith('group:') ? 'log' : 'queue');
  }

  /** Lists dead letters and parked messages, oldest first (`limit` default 100, `after` a deadId). */
  async deadLetters(filter: DeadLetterFilter & { limit?: number; after?: number } = {}): Promise<DeadLetter[]> {
    this.assertOpen();
    const f = checkFilter(filter);
    const limit = filter.limit === undefined ? 100 : validatePositiveInt('limit', filter.limit);
    const after = filter.after === undefined ? 0 : validateMs('after', filter.after);
    const rows = await this.pool.query(
      `SELECT dead_id, source, ref, grp, status, reason, failed_at, attempts, ${MSG_COLS} FROM ${this.S}.dead
       WHERE ($1::text IS NULL OR source = $1) AND ($2::text IS NULL OR grp = $2) AND ($3::text IS NULL OR status = $3)
         AND ($4::text IS NULL OR name = $4) AND dead_id > $5
       ORDER BY dead_id LIMIT $6`,
      [f.source, f.grp, f.status, f.name, after, limit],
    );
    return rows.rows.map((r) => {
      const source = r.source as 'queue' | 'log';
      let message: Message | null = null;
      let decodeError: string | null = null;
      try {
        message = decodeRow(messageRow(r), source === 'queue' ? 'command' : 'event', source === 'log' ? r.ref : null, r.grp ?? null);
      } catch (e) {
        decodeError = (e as Error).message;
      }
      return {
        deadId: r.dead_id,
        source,
        group: r.grp ?? null,
        status: r.status,
        reason: r.reason,
        failedAt: new Date(r.failed_at),
        attempts: r.attempts,
        message,
        decodeError,
        raw: Object.freeze({ ...r }),
      };
    });
  }

  /** Replays a dead letter (a command back to the queue, an event to its group only). `false` if unknown. */
  async replayDeadLetter(deadId: number): Promise<boolean> {
    this.assertOpen();
    validatePositiveInt('deadId', deadId);
    const S = this.S;
    const found = await this.inTransaction(async (c) => {
      const d = (await c.query<{ source: string; ref: number }>(`SELECT source, ref FROM ${S}.dead WHERE dead_id = $1 FOR UPDATE`, [deadId])).rows[0];
      if (!d) return null;
      if (d.source === 'queue') {
        const revived = await c.query(
          `UPDATE ${S}.queue SET state = 'ready', token = NULL, attempts = 0, due_at = ${S}.now_ms(), available_at = ${S}.now_ms(), last_error = NULL, settled_at = NULL
           WHERE seq = $1 AND state IN ('dead', 'parked')`,
          [d.ref],
        );
        if (revived.rowCount === 0) {
          await c.query(
            `INSERT INTO ${S}.queue (id, name, kind, encoding, payload, content_type, headers, key, attempts, created_at, available_at, state, due_at)
             SELECT id, name, kind, encoding, payload, content_type, headers, key, 0, created_at, ${S}.now_ms(), 'ready', ${S}.now_ms() FROM ${S}.dead WHERE dead_id = $1
             ON CONFLICT (id) DO UPDATE SET state = 'ready', token = NULL, attempts = 0, due_at = excluded.due_at, available_at = excluded.available_at, last_error = NULL, settled_at = NULL`,
            [deadId],
          );
        }
      } else {
        await c.query(
          `INSERT INTO ${S}.log (id, target, replay_of, name, kind, encoding, payload, content_type, headers, key, created_at, available_at)
           SELECT id, grp, ref, name, kind, encoding, payload, content_type, headers, key, created_at, ${S}.now_ms() FROM ${S}.dead WHERE dead_id = $1`,
          [deadId],
        );
      }
      await c.query(`DELETE FROM ${S}.dead WHERE dead_id = $1`, [deadId]);
      return d.source;
    });
    if (found === null) return false;
    if (found === 'log') await this.sequence();
    this.wake(found === 'queue' ? 'queue' : 'log');
    return true;
  }

  /** Deletes dead letters matching the filter (with the queue rows of purged commands); returns how many. */
  async purgeDeadLetters(filter: DeadLetterFilter & { before?: Date | number } = {}): Promise<number> {
    this.assertOpen();
    const f = checkFilter(filter);
    const before = filter.before === undefined ? null : filter.before instanceof Date ? filter.before.getTime() : validateMs('before', filter.before, 0, Number.MAX_SAFE_INTEGER);
    const S = this.S;
    return this.inTransaction(async (c) => {
      const r = await c.query(
        `DELETE FROM ${S}.dead WHERE ($1::text IS NULL OR source = $1) AND ($2::text IS NULL OR grp = $2) AND ($3::text IS NULL OR status = $3)
           AND ($4::text IS NULL OR name = $4) AND ($5::bigint IS NULL OR failed_at < $5)`,
        [f.source, f.grp, f.status, f.name, before],
      );
      const n = r.rowCount ?? 0;
      if (n > 0) {
        await c.query(
          `DELETE FROM ${S}.queue q WHERE state IN ('dead', 'parked')
           AND NOT EXISTS (SELECT 1 FROM ${S}.dead d WHERE d.source = 'queue' AND d.grp IS NULL AND d.ref = q.seq)`,
        );
      }
      return n;
    });
  }

  /** Counts per command name and per group (see `Bus.stats`); every group's offset is moved up first. */
  async stats(): Promise<BusStats> {
    this.assertOpen();
    await this.sequence();
    const S = this.S;
    // Offsets move after acknowledgements commit, asynchronously: bring every group's up to
    // date first, so the offsets shown agree with the lag shown.
    const names = await this.pool.query<{ grp: string }>(`SELECT grp FROM ${S}.groups`);
    await Promise.all(names.rows.map((r) => this.advance(r.grp)));
    const now = (await this.pool.query<{ now: number }>(`SELECT ${S}.now_ms() AS now`)).rows[0]?.now ?? this.now();
    const age = (t: number | null) => (t === null ? null : Math.max(0, now - t));
    const queue: Record<string, NameStats> = {};
    const entry = (name: string): NameStats => (queue[name] ??= { ready: 0, delayed: 0, inFlight: 0, dead: 0, parked: 0, oldestAge: null });
    const q = await this.pool.query(
      `SELECT name, count(*) FILTER (WHERE state = 'ready' AND due_at <= $1) AS ready,
         count(*) FILTER (WHERE state = 'ready' AND due_at > $1) AS delayed,
         count(*) FILTER (WHERE state = 'inflight') AS inflight,
         min(available_at) FILTER (WHERE state = 'ready' AND due_at <= $1) AS oldest
       FROM ${S}.queue WHERE ${UNSETTLED} GROUP BY name`,
      [now],
    );
    for (const r of q.rows) Object.assign(entry(r.name), { ready: r.ready, delayed: r.delayed, inFlight: r.inflight, oldestAge: age(r.oldest) });
    const groups: Record<string, GroupStats> = {};
    const group = (g: string): GroupStats => (groups[g] ??= { offset: 0, lag: 0, inFlight: 0, delayed: 0, dead: 0, parked: 0, oldestAge: null });
    const g = await this.pool.query(
      `SELECT g.grp, g.upto,
         (SELECT count(*) FROM ${S}.gstate s WHERE s.grp = g.grp AND s.${UNSETTLED})
           + (SELECT count(*) FROM ${S}.log l WHERE l.pos > g.hw AND (l.target IS NULL OR l.target = g.grp)) AS lag,
         (SELECT count(*) FROM ${S}.gstate s WHERE s.grp = g.grp AND s.state = 'inflight') AS inflight,
         (SELECT count(*) FROM ${S}.gstate s WHERE s.grp = g.grp AND s.state = 'ready' AND s.due_at > $1) AS delayed,
         (SELECT l.created_at FROM ${S}.log l WHERE l.pos = least(
            (SELECT min(s.pos) FROM ${S}.gstate s WHERE s.grp = g.grp AND s.${UNSETTLED}),
            (SELECT min(l2.pos) FROM ${S}.log l2 WHERE l2.pos > g.hw AND (l2.target IS NULL OR l2.target = g.grp)))) AS oldest
       FROM ${S}.groups g`,
      [now],
    );
    for (const r of g.rows) Object.assign(group(r.grp), { offset: r.upto, lag: r.lag, inFlight: r.inflight, delayed: r.delayed, oldestAge: age(r.oldest) });
    const d = await this.pool.query(
      `SELECT source, grp, name, count(*) FILTER (WHERE status = 'dead') AS dead, count(*) FILTER (WHERE status = 'parked') AS parked
       FROM ${S}.dead GROUP BY source, grp, name`,
    );
    for (const r of d.rows) {
      const e = r.source === 'queue' ? entry(r.name ?? '') : r.grp !== null ? group(r.grp) : null;
      if (!e) continue;
      e.dead += r.dead;
      e.parked += r.parked;
    }
    const events = (await this.pool.query<{ n: number }>(`SELECT count(*) AS n FROM ${S}.log WHERE pos IS NOT NULL`)).rows[0]?.n ?? 0;
    return { queue, groups, events };
  }

  /** Whether {@link PgBus.close} ran. */
  get isClosed(): boolean {
    return this.closed;
  }

  /** Stops every worker (see `Worker.stop`), then closes the bus's connections. Idempotent. */
  async close(options: StopOptions = {}): Promise<void> {
    if (this.closed) return;
    await Promise.all([...this.workers].map((w) => w.stop(options)));
    await Promise.all([...this.advancing.values()].map((p) => p.catch(() => {})));
    this.closed = true;
    await this.listener.end().catch(() => {});
    await this.pool.end().catch(() => {});
  }
}

function cols(alias: string): string {
  return MSG_COLS.split(', ')
    .map((c) => `${alias}.${c}`)
    .join(', ');
}

/** Rows per INSERT statement of `sendMany` (9 parameters each). */
const SEND_MANY_CHUNK = 5000;

function produceParams(name: string, payload: Payload, options: PgProduceOptions) {
  validateName(name);
  if (options === null || typeof options !== 'object') throw new ValidationError('options', 'options must be an object');
  const id = options.id === undefined ? randomUUID() : validateId('id', options.id);
  const key = options.key === undefined ? null : validateId('key', options.key);
  const headers = options.headers === undefined ? {} : validateHeaders(options.headers);
  if (options.contentType !== undefined) validateContentType(options.contentType);
  if ((options as ProduceOptions).conn !== undefined) throw new ValidationError('conn', 'the PostgreSQL bus takes a pg client as `client`, not a siblite `conn`');
  if (options.client !== undefined && (options.client === null || typeof options.client.query !== 'function')) {
    throw new ValidationError('client', 'client must be a node-postgres client');
  }
  const enc = encodePayload(payload, options.contentType);
  const bytes = typeof enc.payload === 'string' ? Buffer.from(enc.payload, 'utf8') : Buffer.from(enc.payload);
  return { id, values: [id, name, enc.encoding, bytes, enc.contentType, encodeHeaders(headers), key] as unknown[] };
}

/** A stored row as the codec expects it: JSON payloads as text, bytes as a plain Uint8Array. */
function messageRow(r: Record<string, unknown>): MessageRow {
  const p = r.payload;
  const payload = p instanceof Uint8Array ? (r.encoding === 'json' ? Buffer.from(p).toString('utf8') : new Uint8Array(p)) : p;
  return { ...r, payload } as unknown as MessageRow;
}





