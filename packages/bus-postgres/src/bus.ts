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
  pauseKey,
  toClaim,
  receiveFrom,
  checkMessage,
  checkEventOptions,
  commandSource,
  checkSubscribe,
  eventSource,
  toDeadLetter,
  commandInfo,
  eventInfo,
  buildStats,
  type CommandRow,
  type DeadRow,
  encodeHeaders,
  encodePayload,
  Coalesced,
  makeDelivery,
  notify,
  startWorker,
  validateGroup,
  validateScheduleName,
  validateSpec,
  nextSlot,
  followingSlot,
  slotId,
  checkRetention,
  retainWith,
  runEvery,
  DEFAULT_RETENTION,
  type RetentionOptions,
  type TrimResult,
  type PruneResult,
  type RetainResult,
  type ScheduleSpec,
  type ScheduleInfo,
  validateId,
  validateMs,
  validatePositiveInt,
  validatePriority,
  type AbandonSignal,
  type BaseHandlerContext,
  type Bus,
  type BusStats,
  type Claim,
  type DeadLetter,
  type DeadLetterFilter,
  type Delivery,
  type Handlers,
  type Logger,
  type MessageInfo,
  type MessageKind,
  type MessageRow,
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
import { Lender } from './lender.js';
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
  /** Runs retention in this process on an unref'd timer (off by default). `true` uses the defaults. */
  retention?: RetentionOptions | boolean;
  /**
   * Refuse to create the bus: throw when the schema has no bus yet (for tools that inspect
   * an existing bus, like the `siblite` command line tool). An older bus is still migrated.
   */
  mustExist?: boolean;
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
  /** Prefix of this bus's prepared statement names (unique per schema, as clients may be shared). */
  private readonly stmt: string;
  private readonly workers = new Set<Worker>();
  private readonly advancing = new Coalesced<string>();
  /** Acknowledgements waiting for the statement in flight (see {@link PgBus.ack}). */
  private readonly acks: { claim: Claim; resolve: () => void; reject: (e: unknown) => void }[] = [];
  private flushingAcks = false;
  private closed = false;
  private retentionTimer: NodeJS.Timeout | undefined;
  private schedulerTimer: NodeJS.Timeout | undefined;
  /** Handlers the running workers may run at once (the sum of their concurrency). */
  private handlerSlots = 0;
  /** Handler transactions committing on a client beyond their slot's (see {@link PgBus.transact}). */
  private spareCommits = 0;
  private claimCommandsSql: string | undefined;
  /** Clients of handler transactions (see `lender.ts`). */
  private readonly lender: Lender;

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
    this.stmt = `sb_${instance}`;
    this.lender = new Lender(pool);
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
    const retention = checkRetention(options.retention);
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
        if (options.mustExist === true) {
          const found = await c.query<{ t: string | null }>('SELECT to_regclass($1) AS t', [`${quoteSchema(schema)}.meta`]);
          if (found.rows[0]?.t == null) throw new ValidationError('schema', `there is no bus in schema "${schema}"`);
        }
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
      if (retention) bus.startRetention(retention);
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
    const r = await (options.client ?? this.pool).query<{ n: number }>({
      name: `${this.stmt}_send`,
      text: `WITH ins AS (
         INSERT INTO ${S}.queue (id, name, encoding, payload, content_type, headers, key, created_at, available_at, due_at, priority)
         SELECT $1, $2, $3, $4, $5, $6, $7, t, t + $8, t + $8, $9 FROM (SELECT ${S}.now_ms() AS t) n
         ON CONFLICT (id) DO NOTHING RETURNING 1)
       SELECT (SELECT count(*) FROM ins) AS n, pg_notify($10, 'queue')`,
      values: [...p.values, delay, priority, this.channelName],
    });
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
    checkEventOptions(options);
    const p = produceParams(name, payload, options);
    const S = this.S;
    const r = await (options.client ?? this.pool).query<{ n: number }>({
      name: `${this.stmt}_publish`,
      text: `WITH ins AS (
         INSERT INTO ${S}.log (id, name, encoding, payload, content_type, headers, key, created_at, available_at)
         SELECT $1, $2, $3, $4, $5, $6, $7, t, t FROM (SELECT ${S}.now_ms() AS t) n
         ON CONFLICT (id) WHERE target IS NULL DO NOTHING RETURNING 1)
       SELECT (SELECT count(*) FROM ins) AS n, pg_notify($8, 'log')`,
      values: [...p.values, this.channelName],
    });
    if (!options.client) {
      await this.sequence();
      notify(this.channel('log'));
    }
    return { id: p.id, stored: Number(r.rows[0]?.n ?? 0) > 0 };
  }

  /** Numbers committed, unnumbered events (see `schema.ts`). @internal */
  async sequence(): Promise<void> {
    // Without waiting for its commit to reach the disk: numbering is invisible until a reader
    // acts on it, and any reader's own durable commit (a claim, an acknowledgement) is written
    // after it in the WAL, so it flushes the numbering too. A crash before that only loses
    // numbers nobody acted on; a later run numbers those events again, in the same way.
    const c = await this.pool.connect();
    try {
      await c.query(`BEGIN; SET LOCAL synchronous_commit = off; SELECT ${this.S}.sequence(); COMMIT`);
      c.release();
    } catch (e) {
      // a failed statement leaves the transaction open: end it before the client is reused
      await c.query('ROLLBACK').then(
        () => c.release(),
        (e2: Error) => c.release(e2),
      );
      throw e;
    }
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
    const source = commandSource(this, handlers, options);
    this.schedulerTimer ??= runEvery(1_000, () => this.fireSchedules(), this.logger, 'firing schedules', () => this.closed);
    return this.start(source, handlers, options);
  }

  /**
   * Starts a consumer of `group` (see `Bus.subscribe`).
   *
   * @throws ValidationError for an invalid group, handlers or options.
   */
  subscribe(group: string, handlers: PgHandlers, options: SubscribeOptions = {}): Worker {
    this.assertOpen();
    return this.start(eventSource(this, group, checkSubscribe(group, handlers, options)), handlers, options);
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
    return receiveFrom(this, options);
  }

  /** Creates `group` if missing. @internal */
  async ensureGroup(group: string, fromEnd: boolean): Promise<void> {
    await this.sequence();
    await this.pool.query(
      `INSERT INTO ${this.S}.groups (grp, upto, hw, created_at)
       SELECT $1, m, m, ${this.S}.now_ms() FROM (SELECT CASE WHEN $2 THEN (SELECT coalesce(max(pos), 0) FROM ${this.S}.log) ELSE 0 END AS m) x
       ON CONFLICT (grp) DO NOTHING`,
      [group, fromEnd],
    );
  }

  /** The earliest due time of a waiting command. @internal */
  async nextDueCommand(): Promise<number | null> {
    return this.nextDue(`SELECT min(due_at) AS due FROM ${this.S}.queue WHERE ${UNSETTLED} AND due_at > ${this.S}.now_ms()`, []);
  }

  /** The earliest due time of a waiting event of `group`. @internal */
  async nextDueEvent(group: string): Promise<number | null> {
    return this.nextDue(`SELECT min(due_at) AS due FROM ${this.S}.gstate WHERE grp = $1 AND ${UNSETTLED} AND due_at > ${this.S}.now_ms()`, [group]);
  }

  private async nextDue(sql: string, params: unknown[]): Promise<number | null> {
    const r = await this.pool.query<{ due: number | null }>(sql, params);
    return r.rows[0]?.due ?? null;
  }

  /** Claims up to `limit` commands in one round trip (only `names` when given); see `claim_commands` in schema.ts. @internal */
  async claimCommands(limit: number, lease: number, names: readonly string[] | null): Promise<Claim[]> {
    const token = randomUUID();
    const r = await this.pool.query({
      name: `${this.stmt}_claim_commands`,
      text: (this.claimCommandsSql ??= `SELECT r_seq AS seq, ${MSG_COLS.split(', ').map((c) => `r_${c} AS ${c}`).join(', ')}, r_attempts AS attempts
         FROM ${this.S}.claim_commands($1, $2, $3, $4)`),
      values: [names, limit, token, Math.ceil(lease)],
    });
    return r.rows.sort((a, b) => a.seq - b.seq).map((row) => toClaim(messageRow(row), row.seq, 'command', null, token));
  }

  /** Claims up to `limit` events of `group` (see the SQLite transport's claim rules), in one round trip. @internal */
  async claimEvents(group: string, limit: number, lease: number, ordered: boolean): Promise<Claim[]> {
    const token = randomUUID();
    const r = await this.pool.query({
      name: `${this.stmt}_claim_events`,
      text: `SELECT * FROM ${this.S}.claim_events($1, $2, $3, $4, $5)`,
      values: [group, limit, Math.ceil(lease), ordered, token],
    });
    return r.rows.map((row) => toClaim(messageRow(unprefix(row)), row.r_pos, 'event', group, token));
  }

  /**
   * Moves a group's offset to just below its lowest unsettled event (one server-side
   * function, see `schema.ts`); concurrent requests share one run.
   * @internal
   */
  advance(group: string): Promise<void> {
    return this.advancing.run(group, () =>
      this.pool.query({ name: `${this.stmt}_advance`, text: `SELECT ${this.S}.advance_group($1)`, values: [group] }),
    );
  }

  /**
   * Brings every group's offset up to date (offsets move after acknowledgements commit,
   * asynchronously), so what `stats` and `trim` read agrees with what was settled.
   */
  private async advanceAll(): Promise<void> {
    const groups = await this.pool.query<{ grp: string }>(`SELECT grp FROM ${this.S}.groups`);
    await Promise.all(groups.rows.map((r) => this.advance(r.grp)));
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
    try {
      await c.query({
        name: `${this.stmt}_ack`,
        text: `SELECT ${this.S}.ack($1, $2, $3, NULL, $4)`,
        values: [claim.group, claim.ref, claim.token, this.channelName],
      });
    } catch (e) {
      throw ackError(e, claim);
    }
  }

  /**
   * Acknowledges `claim`: on `client`, inside its transaction, if given; otherwise together
   * with the other acknowledgements waiting at that moment (one statement while another is in
   * flight: no added wait, far fewer commits with many workers).
   * @internal
   */
  async ack(claim: Claim, client?: pg.ClientBase): Promise<void> {
    if (client) await this.ackOn(client, claim);
    else await new Promise<void>((resolve, reject) => {
      this.acks.push({ claim, resolve, reject });
      // Flushed after this turn of the event loop, so acknowledgements of handlers that
      // finished together go in one statement.
      if (!this.flushingAcks) {
        this.flushingAcks = true;
        setImmediate(() => void this.flushAcks());
      }
    });
    this.settledClaim(claim);
  }

  /** Sends the waiting acknowledgements, one statement at a time, until none wait. */
  private async flushAcks(): Promise<void> {
    this.flushingAcks = true;
    try {
      while (this.acks.length > 0) {
        const batch = this.acks.splice(0, 1000);
        try {
          const r = await this.pool.query<{ grp: string | null; ref: number; key: string | null }>({
            name: `${this.stmt}_ack_many`,
            text: `WITH a AS (SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[]) AS a(grp, ref, token)),
              c AS (UPDATE ${this.S}.queue q SET state = 'done', token = NULL, settled_at = ${this.S}.now_ms() FROM a
                    WHERE a.grp IS NULL AND q.seq = a.ref AND q.token = a.token AND q.state = 'inflight' RETURNING q.seq, q.key),
              e AS (UPDATE ${this.S}.gstate s SET state = 'done', token = NULL FROM a
                    WHERE a.grp IS NOT NULL AND s.grp = a.grp AND s.pos = a.ref AND s.token = a.token AND s.state = 'inflight' RETURNING s.grp, s.pos)
              SELECT NULL::text AS grp, seq AS ref, key FROM c UNION ALL SELECT grp, pos, NULL FROM e`,
            values: [batch.map((b) => b.claim.group), batch.map((b) => b.claim.ref), batch.map((b) => b.claim.token)],
          });
          const done = new Set(r.rows.map((row) => `${row.grp ?? ''}\u0000${row.ref}`));
          for (const b of batch) {
            if (done.has(`${b.claim.group ?? ''}\u0000${b.claim.ref}`)) b.resolve();
            else b.reject(new StaleClaimError(b.claim.id));
          }
          // The next command of a key becomes claimable.
          if (r.rows.some((row) => row.key !== null)) this.wake('queue');
        } catch (e) {
          for (const b of batch) b.reject(e);
        }
      }
    } finally {
      this.flushingAcks = false;
    }
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
  async transact(claim: Claim, body: (tx: pg.PoolClient, run: number) => Promise<void>, abandon: AbandonSignal, settling?: () => void): Promise<TransactResult> {
    for (let run = 1; ; run++) {
      if (abandon.aborted) throw abandon.reason;
      const c = await this.lender.acquire();
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
      // The transaction begins with the handler's first query (written together with it, so
      // no extra round trip): a handler that never uses `context.client` costs no
      // transaction, only the acknowledgement. The transaction-local marker lets the
      // acknowledgement check that the handler did not end the transaction itself.
      const marker = randomUUID();
      const lazy = lazyBegin(c, `BEGIN; SELECT set_config('siblite_bus.tx', '${marker}', true)`);
      try {
        await step(body(c, run));
        lazy.restore();
        // From here on the outcome must be known: abandoning during COMMIT could not say
        // whether it committed, so the commit is awaited (the claim stays fenced either way).
        if (onAbandon) abandon.removeEventListener('abort', onAbandon);
        if (destroyed) throw abandon.reason;
        if (!lazy.begun) {
          this.lender.giveBack(c);
          destroyed = true; // given back: nothing to roll back
          settling?.(); // holds no client now: the worker may claim for this slot meanwhile
          await this.ack(claim);
          return { reruns: run - 1 };
        }
        // While the pool has clients to spare beyond one per handler slot, the commit holds one
        // of those, and the worker claims for this slot meanwhile (the next handler gets a
        // client of its own); otherwise the slot waits for the commit.
        const spare = settling !== undefined && this.spareCommits < this.poolMax - RESERVED_CLIENTS - this.handlerSlots;
        if (spare) {
          this.spareCommits++;
          settling();
        }
        try {
          await c.query(
            `SELECT ${this.S}.ack(${claim.group === null ? 'NULL' : c.escapeLiteral(claim.group)}, ${Number(claim.ref)}, ${c.escapeLiteral(claim.token)}, '${marker}', '${this.channelName}'); COMMIT`,
          );
        } catch (e) {
          throw ackError(e, claim);
        } finally {
          if (spare) this.spareCommits--;
        }
        return { reruns: run - 1 };
      } catch (e) {
        lazy.restore();
        if (!destroyed && lazy.begun) {
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
        lazy.restore();
        if (onAbandon) abandon.removeEventListener('abort', onAbandon);
        // A query the handler left running keeps pipeline mode on: that client is not reused.
        if (!destroyed) {
          if (lazy.clean) this.lender.giveBack(c);
          else c.release(new Error('a query of the handler is still running'));
        }
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

  // ------------------------------------------------------------------ schedules

  /**
   * Creates (or replaces) a schedule: the command `spec.name` sent at every slot of
   * `spec.cron` (croner syntax, optionally in `spec.timezone`) or every `spec.every` ms (slots
   * aligned to the epoch), on the server's clock. Each slot is sent exactly once however many
   * processes and machines fire schedules: its command id is `schedule:<schedule>:<slot ms>`.
   * Schedules fire in processes running `listen` workers (checked every second) or on
   * {@link PgBus.fireSchedules}; a slot missed while none ran is sent once, late.
   *
   * @throws ValidationError for an invalid name, expression, interval or message (nothing stored).
   */
  async schedule(schedule: string, spec: ScheduleSpec): Promise<ScheduleInfo> {
    this.assertOpen();
    validateScheduleName(schedule);
    const timing = validateSpec(spec);
    const enc = encodePayload(spec.payload ?? null);
    const nextAt = nextSlot(timing, this.now());
    const S = this.S;
    await this.pool.query(
      `INSERT INTO ${S}.schedules (schedule, name, cron, every, timezone, encoding, payload, content_type, headers, key, priority, next_at, updated_at)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, ${S}.now_ms())
       ON CONFLICT (schedule) DO UPDATE SET name = excluded.name, cron = excluded.cron, every = excluded.every, timezone = excluded.timezone,
         encoding = excluded.encoding, payload = excluded.payload, content_type = excluded.content_type, headers = excluded.headers,
         key = excluded.key, priority = excluded.priority, next_at = excluded.next_at, updated_at = excluded.updated_at`,
      [schedule, spec.name, timing.cron, timing.every, timing.timezone, enc.encoding, toBytes(enc.payload), enc.contentType, encodeHeaders(spec.headers ?? {}), spec.key ?? null, spec.priority ?? 0, nextAt],
    );
    return { schedule, name: spec.name, ...timing, nextAt: new Date(nextAt) };
  }

  /** Deletes a schedule; `false` if there was none. Commands it already sent stay. */
  async unschedule(schedule: string): Promise<boolean> {
    this.assertOpen();
    validateScheduleName(schedule);
    return ((await this.pool.query(`DELETE FROM ${this.S}.schedules WHERE schedule = $1`, [schedule])).rowCount ?? 0) > 0;
  }

  /** Lists the schedules. */
  async schedules(): Promise<ScheduleInfo[]> {
    this.assertOpen();
    const r = await this.pool.query(`SELECT schedule, name, cron, every, timezone, next_at FROM ${this.S}.schedules ORDER BY schedule`);
    return r.rows.map((x) => ({ schedule: x.schedule, name: x.name, cron: x.cron, every: x.every, timezone: x.timezone, nextAt: new Date(x.next_at) }));
  }

  /**
   * Sends the command of every schedule whose slot has come (what the scheduler of a
   * `listen`ing bus runs every second). Due schedules are locked with `SKIP LOCKED`, so
   * concurrent firings split them; the slot's command id makes a slot stored once anyway.
   *
   * @returns how many commands were stored (a slot sent already counts 0).
   */
  async fireSchedules(): Promise<number> {
    this.assertOpen();
    const S = this.S;
    const next = (await this.pool.query<{ at: number | null; now: number }>(`SELECT min(next_at) AS at, ${S}.now_ms() AS now FROM ${S}.schedules`)).rows[0];
    if (!next || next.at === null || next.at > next.now) return 0;
    const stored = await this.inTransaction(async (c) => {
      const due = await c.query(`SELECT *, ${S}.now_ms() AS now FROM ${S}.schedules WHERE next_at <= ${S}.now_ms() ORDER BY next_at FOR UPDATE SKIP LOCKED`);
      let n = 0;
      for (const s of due.rows) {
        const r = await c.query(
          `INSERT INTO ${S}.queue (id, name, encoding, payload, content_type, headers, key, created_at, available_at, due_at, priority)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $8, $9) ON CONFLICT (id) DO NOTHING`,
          [slotId(s.schedule, s.next_at), s.name, s.encoding, s.payload, s.content_type, s.headers, s.key, s.now, s.priority],
        );
        n += r.rowCount ?? 0;
        await c.query(`UPDATE ${S}.schedules SET next_at = $3 WHERE schedule = $1 AND next_at = $2`, [s.schedule, s.next_at, followingSlot(s, s.now)]);
      }
      if (n > 0) await c.query(`SELECT pg_notify($1, 'queue')`, [this.channelName]);
      return n;
    });
    if (stored > 0) notify(this.channel('queue'));
    return stored;
  }

  // ------------------------------------------------------------------ retention

  /**
   * Deletes settled commands: handled and cancelled ones settled more than `olderThan` ms ago,
   * and with `dead` (ms) dead and parked ones and dead letters older than that. `olderThan` is
   * the dedupe window: an id is recognised as a duplicate for at least that long.
   *
   * @throws ValidationError for a negative or non-finite age.
   */
  async prune(olderThan: number, options: { dead?: number } = {}): Promise<PruneResult> {
    this.assertOpen();
    validateMs('olderThan', olderThan);
    const dead = options?.dead === undefined || options.dead === Infinity ? null : validateMs('dead', options.dead);
    const S = this.S;
    return this.inTransaction(async (c) => {
      const now = (await c.query<{ now: number }>(`SELECT ${S}.now_ms() AS now`)).rows[0]!.now;
      const prune = `DELETE FROM ${S}.queue WHERE settled_at < $1 AND (state IN ('done', 'cancelled') OR ($2 AND state IN ('dead', 'parked')))`;
      let commands = (await c.query(prune, [now - olderThan, false])).rowCount ?? 0;
      let deadLetters = 0;
      if (dead !== null) {
        deadLetters = (await c.query(`DELETE FROM ${S}.dead WHERE failed_at < $1`, [now - dead])).rowCount ?? 0;
        commands += (await c.query(prune, [now - dead, true])).rowCount ?? 0;
        if (deadLetters > 0) commands += (await c.query(DROP_PURGED(S))).rowCount ?? 0;
      }
      return { commands, deadLetters };
    });
  }

  /**
   * Trims the event log: removes events every group has passed, and with `maxAge` (ms) also
   * events older than that, read or not (a group still behind one moves past it, counted in
   * `groupsSkipped`). With no group at all, only `maxAge` trims. The newest event is always
   * kept, so positions never restart.
   *
   * @throws ValidationError for an invalid `maxAge`.
   */
  async trim(options: { maxAge?: number } = {}): Promise<TrimResult> {
    this.assertOpen();
    const maxAge = options?.maxAge === undefined ? null : validateMs('maxAge', options.maxAge);
    await this.sequence();
    const S = this.S;
    await this.advanceAll();
    return this.inTransaction(async (c) => {
      const m = (await c.query<{ upto: number | null; now: number }>(`SELECT (SELECT min(upto) FROM ${S}.groups) AS upto, ${S}.now_ms() AS now`)).rows[0]!;
      const before = maxAge === null ? null : m.now - maxAge;
      const events =
        (
          await c.query(
            `DELETE FROM ${S}.log WHERE pos IS NOT NULL AND pos < (SELECT max(pos) FROM ${S}.log)
             AND (pos <= $1 OR ($2::bigint IS NOT NULL AND created_at < $2))`,
            [m.upto ?? 0, before],
          )
        ).rowCount ?? 0;
      let groupsSkipped = 0;
      if (before !== null && events > 0) {
        const first = (await c.query<{ m: number | null }>(`SELECT min(pos) AS m FROM ${S}.log WHERE pos IS NOT NULL`)).rows[0]?.m;
        if (first != null) {
          groupsSkipped = (await c.query(`UPDATE ${S}.groups SET upto = $1, hw = greatest(hw, $1) WHERE upto < $1`, [first - 1])).rowCount ?? 0;
          await c.query(`DELETE FROM ${S}.gstate WHERE pos < $1`, [first]);
        }
      }
      return { events, groupsSkipped };
    });
  }

  /**
   * Deletes a consumer group: its offset, its claims and (with `deadLetters: true`) its dead
   * letters; events it alone held back become trimmable.
   *
   * @returns `false` when no such group existed.
   */
  async deleteGroup(group: string, options: { deadLetters?: boolean } = {}): Promise<boolean> {
    this.assertOpen();
    validateGroup(group);
    const S = this.S;
    return this.inTransaction(async (c) => {
      const n = (await c.query(`DELETE FROM ${S}.groups WHERE grp = $1`, [group])).rowCount ?? 0;
      await c.query(`DELETE FROM ${S}.gstate WHERE grp = $1`, [group]);
      if (options?.deadLetters === true) await c.query(`DELETE FROM ${S}.dead WHERE source = 'log' AND grp = $1`, [group]);
      await c.query(`DELETE FROM ${S}.paused WHERE target = $1`, [`group:${group}`]);
      return n > 0;
    });
  }

  /** One retention pass with the given policy (what the `retention` option runs). */
  async retain(policy: RetentionOptions = {}): Promise<RetainResult> {
    return retainWith(this, policy);
  }

  private startRetention(policy: RetentionOptions): void {
    this.retentionTimer = runEvery(policy.every ?? DEFAULT_RETENTION.every, () => this.retain(policy), this.logger, 'retention', () => this.closed);
  }

  /** Lists paused targets (`queue`, `name:<name>`, `group:<group>`). */
  async paused(): Promise<string[]> {
    this.assertOpen();
    return (await this.pool.query<{ target: string }>(`SELECT target FROM ${this.S}.paused ORDER BY target`)).rows.map((r) => r.target);
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
      return row ? eventInfo(messageRow(row), row.pos) : undefined;
    }
    const row = (
      await this.pool.query(`SELECT seq, ${MSG_COLS}, attempts, state, due_at, settled_at, last_error, priority, ${S}.now_ms() AS now FROM ${S}.queue WHERE id = $1`, [id])
    ).rows[0];
    return row ? commandInfo(messageRow(row) as CommandRow, row.now) : undefined;
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
    return rows.rows.map((r) => toDeadLetter(messageRow(r) as DeadRow));
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
        await c.query(DROP_PURGED(S));
      }
      return n;
    });
  }

  /** Counts per command name and per group (see `Bus.stats`); every group's offset is moved up first. */
  async stats(): Promise<BusStats> {
    this.assertOpen();
    await this.sequence();
    const S = this.S;
    await this.advanceAll();
    const now = (await this.pool.query<{ now: number }>(`SELECT ${S}.now_ms() AS now`)).rows[0]?.now ?? this.now();
    const [queue, groups, dead, events] = await Promise.all([
      this.pool.query(
        `SELECT name, count(*) FILTER (WHERE state = 'ready' AND due_at <= $1) AS ready,
           count(*) FILTER (WHERE state = 'ready' AND due_at > $1) AS delayed,
           count(*) FILTER (WHERE state = 'inflight') AS inflight,
           min(available_at) FILTER (WHERE state = 'ready' AND due_at <= $1) AS oldest
         FROM ${S}.queue WHERE ${UNSETTLED} GROUP BY name`,
        [now],
      ),
      this.pool.query(
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
      ),
      this.pool.query(
        `SELECT source, grp, name, count(*) FILTER (WHERE status = 'dead') AS dead, count(*) FILTER (WHERE status = 'parked') AS parked
         FROM ${S}.dead GROUP BY source, grp, name`,
      ),
      this.pool.query<{ n: number }>(`SELECT count(*) AS n FROM ${S}.log WHERE pos IS NOT NULL`),
    ]);
    return buildStats({ queue: queue.rows, groups: groups.rows, dead: dead.rows, events: events.rows[0]?.n ?? 0 }, now);
  }

  /** Whether {@link PgBus.close} ran. */
  get isClosed(): boolean {
    return this.closed;
  }

  /** Stops every worker (see `Worker.stop`), then closes the bus's connections. Idempotent. */
  async close(options: StopOptions = {}): Promise<void> {
    if (this.closed) return;
    if (this.retentionTimer) clearInterval(this.retentionTimer);
    if (this.schedulerTimer) clearInterval(this.schedulerTimer);
    await Promise.all([...this.workers].map((w) => w.stop(options)));
    await this.advancing.settled();
    this.closed = true;
    await this.listener.end().catch(() => {});
    await this.pool.end().catch(() => {});
  }
}

/** Deletes dead or parked command rows whose dead letter is gone (their ids may be sent again). */
const DROP_PURGED = (S: string) =>
  `DELETE FROM ${S}.queue q WHERE state IN ('dead', 'parked')
   AND NOT EXISTS (SELECT 1 FROM ${S}.dead d WHERE d.source = 'queue' AND d.grp IS NULL AND d.ref = q.seq)`;

/** A payload as node-postgres binds a bytea. */
function toBytes(payload: string | Uint8Array): Buffer {
  return typeof payload === 'string' ? Buffer.from(payload, 'utf8') : Buffer.from(payload);
}

function cols(alias: string): string {
  return MSG_COLS.split(', ')
    .map((c) => `${alias}.${c}`)
    .join(', ');
}

/** Rows per INSERT statement of `sendMany` (9 parameters each). */
const SEND_MANY_CHUNK = 5000;

function produceParams(name: string, payload: Payload, options: PgProduceOptions) {
  const m = checkMessage(name, payload, options);
  if ((options as ProduceOptions).conn !== undefined) throw new ValidationError('conn', 'the PostgreSQL bus takes a pg client as `client`, not a siblite `conn`');
  if (options.client !== undefined && (options.client === null || typeof options.client.query !== 'function')) {
    throw new ValidationError('client', 'client must be a node-postgres client');
  }
  return { id: m.id, values: [m.id, m.name, m.encoding, toBytes(m.payload), m.contentType, m.headers, m.key] as unknown[] };
}

/** A bytea as text, without copying when node-postgres gave a Buffer (it does). */
function utf8(p: Uint8Array): string {
  return Buffer.isBuffer(p) ? p.toString('utf8') : Buffer.from(p.buffer, p.byteOffset, p.byteLength).toString('utf8');
}

/** A stored row as the codec expects it: JSON payloads as text, bytes as a plain Uint8Array. */
function messageRow(r: Record<string, unknown>): MessageRow {
  const p = r.payload;
  const payload = p instanceof Uint8Array ? (r.encoding === 'json' ? utf8(p) : new Uint8Array(p)) : p;
  return { ...r, payload } as unknown as MessageRow;
}






/** The error of a failed acknowledgement: the bus's own for its raised codes, else as thrown. */
function ackError(e: unknown, claim: Claim): unknown {
  const code = (e as { code?: string })?.code;
  if (code === 'SBST1') return new StaleClaimError(claim.id);
  if (code === 'SBTX1') return new BusError('SIBLITE_BUS_HANDLER_TRANSACTION', 'the handler ended the bus transaction of context.client', 'misuse');
  return e;
}

/** A row of `claim_events` with its `r_` prefixes removed. */
function unprefix(row: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(row)) out[k.startsWith('r_') ? k.slice(2) : k] = v;
  return out;
}

/** node-postgres client internals that pipelining the transaction's BEGIN relies on (pg >= 8.23). */
interface PipelineInternals {
  pipeline?: boolean;
  _activeQuery?: unknown;
  _sentQueryQueue?: unknown[];
  _queryQueue?: unknown[];
  connection?: { stream?: { cork?(): void; uncork?(): void } };
}

/** Whether node-postgres can pipeline on `c`: it has the mode, and nothing is queued or in flight. */
function canPipeline(c: PipelineInternals): boolean {
  return typeof c.pipeline === 'boolean' && Array.isArray(c._sentQueryQueue) && Array.isArray(c._queryQueue) && isIdle(c);
}

function isIdle(c: PipelineInternals): boolean {
  return !c._activeQuery && c._sentQueryQueue?.length === 0 && c._queryQueue?.length === 0;
}

/**
 * Makes `begin` run just before the first query anyone sends on `c`. Both are written at
 * once (node-postgres's pipeline mode, on only until the client is idle again), so the
 * transaction costs no round trip of its own; a cursor or a `rows` query, which pipeline mode
 * refuses, goes after the BEGIN the usual way. `restore` puts the client's own `query` back
 * and ends pipeline mode once nothing is in flight; `clean` says whether it has ended.
 */
function lazyBegin(c: pg.PoolClient, begin: string): { readonly begun: boolean; restore(): void; readonly clean: boolean } {
  const own = c.query;
  const hadOwn = Object.prototype.hasOwnProperty.call(c, 'query');
  const internals = c as unknown as PipelineInternals;
  let begun = false;
  let pipelined = false;
  const unpipeline = () => {
    if (pipelined && isIdle(internals)) {
      internals.pipeline = false;
      pipelined = false;
    }
  };
  const patched = function (this: unknown, ...args: unknown[]) {
    if (!begun) {
      begun = true;
      const first = args[0] as { submit?: unknown; rows?: unknown } | string | null | undefined;
      const plain = typeof first === 'string' || (typeof first === 'object' && first !== null && typeof first.submit !== 'function' && first.rows === undefined);
      if (plain && canPipeline(internals)) {
        internals.pipeline = true;
        pipelined = true;
        // One socket write for both: on a loaded machine a write costs more than the rest.
        const stream = internals.connection?.stream;
        stream?.cork?.();
        try {
          (own as (sql: string) => Promise<unknown>).call(c, begin).catch(() => {});
          return (own as (...a: unknown[]) => unknown).apply(c, args);
        } finally {
          stream?.uncork?.();
        }
      }
      // Its failure shows in the handler's query or in the acknowledgement's marker check.
      (own as (sql: string) => Promise<unknown>).call(c, begin).catch(() => {});
    } else {
      unpipeline();
    }
    return (own as (...a: unknown[]) => unknown).apply(c, args);
  };
  (c as unknown as { query: unknown }).query = patched;
  return {
    get begun() {
      return begun;
    },
    get clean() {
      return !pipelined;
    },
    restore() {
      unpipeline();
      const target = c as unknown as { query?: unknown };
      if (target.query !== patched) return;
      if (hadOwn) target.query = own;
      else delete target.query;
    },
  };
}
