/**
 * Every SQL statement of the SQLite transport, as named plans. Reading this file tells the
 * whole storage design:
 *
 * - `<ns>_meta`: schema version and the database's instance id (keys the in-process notifier).
 * - `<ns>_queue`: commands. A row is `ready` (claimable once `due_at` has passed),
 *   `inflight` (claimed under `token` until its lease ends at `due_at`; then claimable
 *   again), or terminal: `done`, `dead`, `parked`. Terminal rows are kept (until `prune`)
 *   so an id sent again is still recognised and stored once.
 * - `<ns>_log`: events, append-only. `seq` is the insertion rowid; `pos` is the log
 *   position, NULL until the *sequencer* numbers the row. The sequencer is one atomic
 *   autocommit statement that numbers committed, unnumbered rows after the current maximum,
 *   so positions are handed out in the order commits become visible: a row committed late
 *   (an outbox transaction that committed after a later one) gets a position above every
 *   position any group has already passed. Nothing is ever skipped. Replays of dead-lettered
 *   events are new rows with `target` set to the group they are for.
 * - `<ns>_groups`: one row per consumer group with `upto`: every event at or below it is
 *   settled for the group. It only moves forward.
 * - `<ns>_gstate`: per (group, position) claims, retries and settlements above `upto`;
 *   rows at or below `upto` are compacted away.
 * - `<ns>_dead`: dead letters and parked messages, each with a verbatim copy of the whole
 *   stored message (copied in SQL, so even undecodable rows are kept exactly), the reason,
 *   the attempt count and the time.
 *
 * Every time value is bound from JavaScript (milliseconds since the epoch); no statement
 * calls a non-deterministic SQL function, because concurrent transactions may be
 * re-executed to validate them.
 *
 * @module
 */
import { validateNamespace } from './validate.js';

/** The schema version this code writes and reads. */
export const SCHEMA_VERSION = 1;

/** The columns that make up a stored message, in the order the dead-letter copy uses. */
const MSG_COLS = 'id, name, kind, encoding, payload, content_type, headers, key, created_at, available_at';

/**
 * Builds every statement for one namespace (validated here: the namespace is the only
 * caller-supplied text that reaches SQL, as quoted table names).
 *
 * @throws ValidationError for an invalid namespace.
 * @example
 * ```ts
 * const plans = buildPlans('bus');
 * console.log(plans.claimCommands);
 * ```
 */
export function buildPlans(namespace: string) {
  const ns = validateNamespace(namespace);
  const t = (suffix: string) => `"${ns}_${suffix}"`;
  const meta = t('meta');
  const queue = t('queue');
  const log = t('log');
  const groups = t('groups');
  const gstate = t('gstate');
  const dead = t('dead');

  /** Statements of each schema version, applied in order inside one IMMEDIATE transaction. */
  const migrations: readonly (readonly string[])[] = [
    // version 1
    [
      `CREATE TABLE IF NOT EXISTS ${queue} (
        seq          INTEGER PRIMARY KEY,
        id           TEXT NOT NULL UNIQUE CHECK (length(id) > 0),
        name         TEXT CHECK (name IS NOT NULL AND length(name) BETWEEN 1 AND 128),
        kind         TEXT NOT NULL DEFAULT 'command' CHECK (kind = 'command'),
        encoding     TEXT NOT NULL CHECK (encoding IN ('json', 'bytes')),
        payload      BLOB, -- JSON text or bytes, stored as given (no affinity)
        content_type TEXT NOT NULL CHECK (length(content_type) > 0),
        headers      TEXT NOT NULL CHECK (json_valid(headers) AND json_type(headers) = 'object'),
        key          TEXT CHECK (key IS NULL OR length(key) > 0),
        attempts     INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
        created_at   INTEGER NOT NULL,
        available_at INTEGER NOT NULL,
        state        TEXT NOT NULL DEFAULT 'ready' CHECK (state IN ('ready', 'inflight', 'done', 'dead', 'parked')),
        due_at       INTEGER NOT NULL,
        token        TEXT CHECK ((state = 'inflight') = (token IS NOT NULL)),
        settled_at   INTEGER,
        last_error   TEXT
      )`,
      `CREATE INDEX IF NOT EXISTS ${t('queue_due')} ON ${queue} (due_at, seq) WHERE state IN ('ready', 'inflight')`,
      `CREATE INDEX IF NOT EXISTS ${t('queue_key')} ON ${queue} (key, seq) WHERE key IS NOT NULL AND state IN ('ready', 'inflight')`,
      `CREATE INDEX IF NOT EXISTS ${t('queue_settled')} ON ${queue} (settled_at) WHERE state = 'done'`,
      `CREATE TABLE IF NOT EXISTS ${log} (
        seq          INTEGER PRIMARY KEY,
        pos          INTEGER CHECK (pos IS NULL OR pos > 0),
        id           TEXT NOT NULL CHECK (length(id) > 0),
        target       TEXT,
        replay_of    INTEGER,
        name         TEXT CHECK (name IS NOT NULL AND length(name) BETWEEN 1 AND 128),
        kind         TEXT NOT NULL DEFAULT 'event' CHECK (kind = 'event'),
        encoding     TEXT NOT NULL CHECK (encoding IN ('json', 'bytes')),
        payload      BLOB, -- JSON text or bytes, stored as given (no affinity)
        content_type TEXT NOT NULL CHECK (length(content_type) > 0),
        headers      TEXT NOT NULL CHECK (json_valid(headers) AND json_type(headers) = 'object'),
        key          TEXT CHECK (key IS NULL OR length(key) > 0),
        created_at   INTEGER NOT NULL,
        available_at INTEGER NOT NULL
      )`,
      `CREATE UNIQUE INDEX IF NOT EXISTS ${t('log_pos')} ON ${log} (pos) WHERE pos IS NOT NULL`,
      `CREATE UNIQUE INDEX IF NOT EXISTS ${t('log_id')} ON ${log} (id) WHERE target IS NULL`,
      `CREATE INDEX IF NOT EXISTS ${t('log_unsequenced')} ON ${log} (seq) WHERE pos IS NULL`,
      `CREATE INDEX IF NOT EXISTS ${t('log_key')} ON ${log} (key, pos) WHERE key IS NOT NULL`,
      `CREATE TABLE IF NOT EXISTS ${groups} (
        grp        TEXT PRIMARY KEY CHECK (length(grp) BETWEEN 1 AND 128),
        upto       INTEGER NOT NULL CHECK (upto >= 0),
        created_at INTEGER NOT NULL
      )`,
      `CREATE TABLE IF NOT EXISTS ${gstate} (
        grp        TEXT NOT NULL,
        pos        INTEGER NOT NULL,
        state      TEXT NOT NULL CHECK (state IN ('ready', 'inflight', 'done', 'dead', 'parked')),
        token      TEXT CHECK ((state = 'inflight') = (token IS NOT NULL)),
        due_at     INTEGER NOT NULL,
        attempts   INTEGER NOT NULL CHECK (attempts >= 0),
        last_error TEXT,
        PRIMARY KEY (grp, pos)
      ) WITHOUT ROWID`,
      `CREATE TABLE IF NOT EXISTS ${dead} (
        dead_id      INTEGER PRIMARY KEY,
        source       TEXT NOT NULL CHECK (source IN ('queue', 'log')),
        ref          INTEGER NOT NULL,
        grp          TEXT CHECK ((source = 'log') = (grp IS NOT NULL)),
        status       TEXT NOT NULL CHECK (status IN ('dead', 'parked')),
        reason       TEXT NOT NULL,
        failed_at    INTEGER NOT NULL,
        attempts     INTEGER NOT NULL CHECK (attempts >= 0),
        id, name, kind, encoding, payload, content_type, headers, key, created_at, available_at
      )`,
      `CREATE INDEX IF NOT EXISTS ${t('dead_source')} ON ${dead} (source, grp, ref)`,
    ],
  ];

  return {
    /** The validated namespace. */
    namespace: ns,
    /** The quoted table names. */
    tables: {
      /** Schema version and instance id. */
      meta,
      /** Commands. */
      queue,
      /** Events. */
      log,
      /** Consumer group offsets. */
      groups,
      /** Per-group claims and settlements above the offset. */
      gstate,
      /** Dead letters and parked messages. */
      dead,
    },
    /** Statements of each schema version. */
    migrations,

    // ---------------------------------------------------------------- schema
    /** Creates the meta table (outside the versioned migrations: it records the version). */
    createMeta: `CREATE TABLE IF NOT EXISTS ${meta} (key TEXT PRIMARY KEY, value TEXT NOT NULL)`,
    /** Reads the recorded schema version. */
    getVersion: `SELECT value FROM ${meta} WHERE key = 'schema_version'`,
    /** Records the schema version. */
    setVersion: `INSERT INTO ${meta} (key, value) VALUES ('schema_version', :version)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value`,
    /** Creates the instance id once (keys the in-process notifier: same database, same id). */
    initInstance: `INSERT INTO ${meta} (key, value) VALUES ('instance', :instance) ON CONFLICT (key) DO NOTHING`,
    /** Reads the instance id. */
    getInstance: `SELECT value FROM ${meta} WHERE key = 'instance'`,

    // ---------------------------------------------------------------- commands
    /**
     * Appends a command. A second row with the same id fails on the UNIQUE index and the
     * caller reports `stored: false`. (A plain INSERT rather than an upsert: the core
     * reserves rowids for plain single-row INSERTs in concurrent transactions, so two
     * outbox transactions do not conflict merely by being handed the same rowid.)
     */
    send: `INSERT INTO ${queue} (id, name, kind, encoding, payload, content_type, headers, key, attempts, created_at, available_at, state, due_at)
           VALUES (:id, :name, 'command', :encoding, :payload, :contentType, :headers, :key, 0, :now, :availableAt, 'ready', :availableAt)`,
    /**
     * Claims up to :limit due commands in one atomic statement: ready rows whose time has
     * come and in-flight rows whose lease ended, oldest first, skipping any row whose
     * ordering key has an earlier unsettled row. One claim per key at a time follows.
     * :names (JSON array or NULL) restricts the names claimed (rows without a name are
     * always eligible so they reach the dead letters).
     */
    claimCommands: `UPDATE ${queue}
      SET state = 'inflight', token = :token, attempts = attempts + 1, due_at = :leaseUntil
      WHERE seq IN (
        SELECT c.seq FROM ${queue} c
        WHERE c.state IN ('ready', 'inflight') AND c.due_at <= :now
          AND (:names IS NULL OR c.name IS NULL OR c.name IN (SELECT value FROM json_each(:names)))
          AND (c.key IS NULL OR NOT EXISTS (
                SELECT 1 FROM ${queue} o
                WHERE o.key = c.key AND o.state IN ('ready', 'inflight') AND o.seq < c.seq))
        ORDER BY c.due_at, c.seq
        LIMIT :limit)
      RETURNING seq, ${MSG_COLS}, attempts, token`,
    /**
     * The next time a command becomes due in the future (a delay, a backoff or a lease
     * ending). Rows already due but blocked by their ordering key are not counted: the
     * settlement that unblocks them wakes the workers.
     */
    nextDueCommand: `SELECT min(due_at) AS due FROM ${queue} WHERE state IN ('ready', 'inflight') AND due_at > :now`,
    /** Settles a claimed command as handled (fenced by the token). */
    ackCommand: `UPDATE ${queue} SET state = 'done', token = NULL, settled_at = :now
      WHERE seq = :seq AND token = :token AND state = 'inflight'`,
    /** Puts a claimed command back, due at :at (fenced by the token). */
    nackCommand: `UPDATE ${queue} SET state = 'ready', token = NULL, due_at = :at, available_at = :at, last_error = :error
      WHERE seq = :seq AND token = :token AND state = 'inflight'`,
    /** Extends a claimed command's lease (fenced by the token). */
    extendCommand: `UPDATE ${queue} SET due_at = :leaseUntil WHERE seq = :seq AND token = :token AND state = 'inflight'`,
    /** Marks a claimed command dead or parked (fenced; followed by copyCommandToDead in the same transaction). */
    buryCommand: `UPDATE ${queue} SET state = :status, token = NULL, settled_at = :now, last_error = :reason
      WHERE seq = :seq AND token = :token AND state = 'inflight'`,
    /** Copies the whole stored command, verbatim, to the dead letters. */
    copyCommandToDead: `INSERT INTO ${dead} (source, ref, grp, status, reason, failed_at, attempts, ${MSG_COLS})
      SELECT 'queue', seq, NULL, :status, :reason, :now, attempts, ${MSG_COLS} FROM ${queue} WHERE seq = :seq`,
    /** Makes a dead or parked command ready again with a fresh attempt count. */
    reviveCommand: `UPDATE ${queue} SET state = 'ready', token = NULL, attempts = 0, due_at = :now, available_at = :now, last_error = NULL, settled_at = NULL
      WHERE seq = :ref AND state IN ('dead', 'parked')`,
    /** Re-inserts a dead command whose queue row was pruned. */
    reinsertCommand: `INSERT INTO ${queue} (id, name, kind, encoding, payload, content_type, headers, key, attempts, created_at, available_at, state, due_at)
      SELECT id, name, kind, encoding, payload, content_type, headers, key, 0, created_at, :now, 'ready', :now FROM ${dead} WHERE dead_id = :deadId
      ON CONFLICT (id) DO UPDATE SET state = 'ready', token = NULL, attempts = 0, due_at = :now, available_at = :now, last_error = NULL, settled_at = NULL`,
    /** Deletes handled commands settled before :before (their ids may then be stored again). */
    pruneCommands: `DELETE FROM ${queue} WHERE state = 'done' AND settled_at < :before`,

    // ---------------------------------------------------------------- events
    /** Appends an event, unnumbered; a duplicate id fails on the UNIQUE index (see `send`). */
    publish: `INSERT INTO ${log} (pos, id, target, replay_of, name, kind, encoding, payload, content_type, headers, key, created_at, available_at)
      VALUES (NULL, :id, NULL, NULL, :name, 'event', :encoding, :payload, :contentType, :headers, :key, :now, :now)`,
    /**
     * The sequencer: numbers every committed, unnumbered event after the current maximum
     * position, in insertion order, in one atomic statement (so numbering happens after
     * commit, and a late commit never lands below a position a group has passed).
     */
    sequence: `WITH base AS (SELECT coalesce(max(pos), 0) AS m FROM ${log}),
      todo AS (SELECT seq, row_number() OVER (ORDER BY seq) AS rn FROM ${log} WHERE pos IS NULL ORDER BY seq LIMIT 10000)
      UPDATE ${log} SET pos = base.m + todo.rn FROM base, todo WHERE ${log}.seq = todo.seq`,
    /** Is anything waiting for the sequencer? */
    hasUnsequenced: `SELECT EXISTS (SELECT 1 FROM ${log} WHERE pos IS NULL) AS pending`,
    /** Creates a group at the beginning (0) or the end (current maximum) of the log, unless it exists. */
    createGroup: `INSERT INTO ${groups} (grp, upto, created_at)
      VALUES (:grp, CASE WHEN :fromEnd THEN (SELECT coalesce(max(pos), 0) FROM ${log}) ELSE 0 END, :now)
      ON CONFLICT (grp) DO NOTHING`,
    /**
     * Claims up to :limit events for a group in one atomic statement: positions above the
     * group's offset that are neither settled nor under a live lease, lowest first,
     * skipping any event whose ordering key has an earlier unsettled event in the group
     * (with :ordered, any event that has an earlier unsettled event at all: strict log order).
     */
    claimEvents: `INSERT INTO ${gstate} (grp, pos, state, token, due_at, attempts)
      SELECT :grp, l.pos, 'inflight', :token, :leaseUntil, 1
      FROM ${groups} g JOIN ${log} l ON l.pos > g.upto
      WHERE g.grp = :grp
        AND (l.target IS NULL OR l.target = :grp)
        AND (:names IS NULL OR l.name IS NULL OR l.name IN (SELECT value FROM json_each(:names)))
        AND NOT EXISTS (SELECT 1 FROM ${gstate} s WHERE s.grp = :grp AND s.pos = l.pos
                        AND NOT (s.state IN ('ready', 'inflight') AND s.due_at <= :now))
        AND ((l.key IS NULL AND NOT :ordered) OR NOT EXISTS (
              SELECT 1 FROM ${log} e
              WHERE (:ordered OR e.key = l.key) AND e.pos > g.upto AND e.pos < l.pos
                AND (e.target IS NULL OR e.target = :grp)
                AND NOT EXISTS (SELECT 1 FROM ${gstate} s2 WHERE s2.grp = :grp AND s2.pos = e.pos
                                AND s2.state IN ('done', 'dead', 'parked'))))
      ORDER BY l.pos
      LIMIT :limit
      ON CONFLICT (grp, pos) DO UPDATE SET state = 'inflight', token = excluded.token, due_at = excluded.due_at,
        attempts = ${gstate}.attempts + 1
      RETURNING pos, attempts, token`,
    /** The next time an event of the group becomes due in the future (a backoff or a lease ending). */
    nextDueEvent: `SELECT min(due_at) AS due FROM ${gstate} WHERE grp = :grp AND state IN ('ready', 'inflight') AND due_at > :now`,
    /** Reads a numbered event (events are immutable once numbered). */
    getEvent: `SELECT pos, ${MSG_COLS} FROM ${log} WHERE pos = :pos`,
    /** Settles a claimed event as handled for the group (fenced). */
    ackEvent: `UPDATE ${gstate} SET state = 'done', token = NULL
      WHERE grp = :grp AND pos = :pos AND token = :token AND state = 'inflight'`,
    /** Schedules a claimed event for another try at :at (fenced). */
    nackEvent: `UPDATE ${gstate} SET state = 'ready', token = NULL, due_at = :at, last_error = :error
      WHERE grp = :grp AND pos = :pos AND token = :token AND state = 'inflight'`,
    /** Extends a claimed event's lease (fenced). */
    extendEvent: `UPDATE ${gstate} SET due_at = :leaseUntil
      WHERE grp = :grp AND pos = :pos AND token = :token AND state = 'inflight'`,
    /** Marks a claimed event dead or parked for the group (fenced; followed by copyEventToDead). */
    buryEvent: `UPDATE ${gstate} SET state = :status, token = NULL, last_error = :reason
      WHERE grp = :grp AND pos = :pos AND token = :token AND state = 'inflight'`,
    /** Copies the whole stored event, verbatim, to the dead letters of the group. */
    copyEventToDead: `INSERT INTO ${dead} (source, ref, grp, status, reason, failed_at, attempts, ${MSG_COLS})
      SELECT 'log', l.pos, :grp, :status, :reason, :now, s.attempts, ${MSG_COLS.split(', ').map((c) => `l.${c}`).join(', ')}
      FROM ${log} l JOIN ${gstate} s ON s.grp = :grp AND s.pos = l.pos WHERE l.pos = :pos`,
    /**
     * Moves a group's offset forward past every settled event (to just below the lowest
     * unsettled one). Idempotent; never moves backwards.
     */
    advanceGroup: `UPDATE ${groups} SET upto = max(upto, coalesce(
        (SELECT min(l.pos) - 1 FROM ${log} l
          WHERE l.pos > ${groups}.upto AND (l.target IS NULL OR l.target = ${groups}.grp)
            AND NOT EXISTS (SELECT 1 FROM ${gstate} s WHERE s.grp = ${groups}.grp AND s.pos = l.pos
                            AND s.state IN ('done', 'dead', 'parked'))),
        (SELECT max(pos) FROM ${log}),
        upto))
      WHERE grp = :grp`,
    /** Drops per-event state at or below the group's offset. */
    compactGroup: `DELETE FROM ${gstate} WHERE grp = :grp AND pos <= (SELECT upto FROM ${groups} WHERE grp = :grp)`,
    /** Re-appends a dead or parked event for one group only (a new, unnumbered log row). */
    replayEvent: `INSERT INTO ${log} (pos, id, target, replay_of, name, kind, encoding, payload, content_type, headers, key, created_at, available_at)
      SELECT NULL, id, grp, ref, name, kind, encoding, payload, content_type, headers, key, created_at, :now
      FROM ${dead} WHERE dead_id = :deadId AND source = 'log'`,

    // ---------------------------------------------------------------- dead letters
    /** Lists dead letters and parked messages, oldest first. */
    listDead: `SELECT dead_id, source, ref, grp, status, reason, failed_at, attempts, ${MSG_COLS} FROM ${dead}
      WHERE (:source IS NULL OR source = :source) AND (:grp IS NULL OR grp = :grp) AND (:status IS NULL OR status = :status)
        AND dead_id > :after
      ORDER BY dead_id LIMIT :limit`,
    /** Reads one dead letter. */
    getDead: `SELECT dead_id, source, ref, grp, status FROM ${dead} WHERE dead_id = :deadId`,
    /** Deletes one dead letter. */
    deleteDead: `DELETE FROM ${dead} WHERE dead_id = :deadId`,
    /** Deletes dead letters matching a filter. */
    purgeDead: `DELETE FROM ${dead}
      WHERE (:source IS NULL OR source = :source) AND (:grp IS NULL OR grp = :grp) AND (:status IS NULL OR status = :status)
        AND (:before IS NULL OR failed_at < :before)`,

    // ---------------------------------------------------------------- stats
    /** Unsettled commands per name. */
    statsQueue: `SELECT coalesce(name, '') AS name,
        sum(state = 'ready' AND due_at <= :now) AS ready,
        sum(state = 'ready' AND due_at > :now) AS delayed,
        sum(state = 'inflight') AS inflight
      FROM ${queue} WHERE state IN ('ready', 'inflight') GROUP BY 1`,
    /** Dead and parked counts per source, group and name. */
    statsDead: `SELECT source, grp, coalesce(name, '') AS name, sum(status = 'dead') AS dead, sum(status = 'parked') AS parked
      FROM ${dead} GROUP BY source, grp, 3`,
    /** Per-group offset, lag and claim states. */
    statsGroups: `SELECT g.grp, g.upto,
        (SELECT count(*) FROM ${log} l WHERE l.pos > g.upto AND (l.target IS NULL OR l.target = g.grp)
           AND NOT EXISTS (SELECT 1 FROM ${gstate} s WHERE s.grp = g.grp AND s.pos = l.pos AND s.state IN ('done', 'dead', 'parked'))) AS lag,
        (SELECT count(*) FROM ${gstate} s WHERE s.grp = g.grp AND s.state = 'inflight') AS inflight,
        (SELECT count(*) FROM ${gstate} s WHERE s.grp = g.grp AND s.state = 'ready') AS delayed
      FROM ${groups} g`,
    /** Numbered events in the log. */
    countEvents: `SELECT count(*) AS n FROM ${log} WHERE pos IS NOT NULL`,
  } as const;
}

/** The plans of one namespace. */
export type Plans = ReturnType<typeof buildPlans>;
