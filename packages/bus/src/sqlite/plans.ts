/**
 * Every SQL statement of the SQLite transport, as named plans. Reading this file tells the
 * whole storage design:
 *
 * - `<ns>_meta`: schema version, the database's instance id (keys the in-process notifier)
 *   and the bus clock's anchor (see `clock.ts`).
 * - `<ns>_queue`: commands. A row is `ready` (claimable once `due_at` has passed),
 *   `inflight` (claimed under `token` until its lease ends at `due_at`; then claimable
 *   again), or terminal: `done`, `dead`, `parked`, `cancelled`. Terminal rows are kept (until
 *   `prune`) so an id sent again is still recognised and stored once (the dedupe window).
 *   `head` is 1 for the one unsettled row of each ordering key that may be claimed (the
 *   oldest), and for every row without a key; triggers keep it so, so a claim reads only
 *   claimable rows (`queue_claim`), never the backlog behind a busy key.
 * - `<ns>_log`: events, append-only. `seq` is the insertion rowid; `pos` is the log
 *   position, NULL until the *sequencer* numbers the row. The sequencer is one atomic
 *   autocommit statement that numbers committed, unnumbered rows after the current maximum,
 *   so positions are handed out in the order commits become visible: a row committed late
 *   (an outbox transaction that committed after a later one) gets a position above every
 *   position any group has already passed. Nothing is ever skipped. Replays of dead-lettered
 *   events are new rows with `target` set to the group they are for.
 * - `<ns>_groups`: one row per consumer group with `upto`: every event at or below it is
 *   settled for the group (it only moves forward), and `hw`: every event of the group at or
 *   below it has a `gstate` row (it was claimed, or passed over behind a busy key), every
 *   event above it is fresh. A claim reads the group's open `gstate` rows and a bounded
 *   window of fresh events, never the events already settled above a stuck one.
 * - `<ns>_gstate`: per (group, position) claims, retries and settlements above `upto`;
 *   rows at or below `upto` are compacted away.
 * - `<ns>_paused`: paused targets (`queue`, `name:<name>`, `group:<group>`).
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
import { validateNamespace } from '../validate.js';

/** The schema version this code writes and reads. */
export const SCHEMA_VERSION = 3;

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
  const paused = t('paused');
  const schedules = t('schedules');
  const unsettled = `state IN ('ready', 'inflight')`;
  const QUEUE_COLS = `seq, id, name, kind, encoding, payload, content_type, headers, key, attempts, created_at, available_at, state, due_at, token, settled_at, last_error`;

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
    // version 2: priorities, per-key heads, cancellation, group high-water marks, pauses
    [
      `CREATE TABLE ${t('queue_v2')} (
        seq          INTEGER PRIMARY KEY,
        id           TEXT NOT NULL UNIQUE CHECK (length(id) > 0),
        name         TEXT CHECK (name IS NOT NULL AND length(name) BETWEEN 1 AND 128),
        kind         TEXT NOT NULL DEFAULT 'command' CHECK (kind = 'command'),
        encoding     TEXT NOT NULL CHECK (encoding IN ('json', 'bytes')),
        payload      BLOB,
        content_type TEXT NOT NULL CHECK (length(content_type) > 0),
        headers      TEXT NOT NULL CHECK (json_valid(headers) AND json_type(headers) = 'object'),
        key          TEXT CHECK (key IS NULL OR length(key) > 0),
        attempts     INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
        created_at   INTEGER NOT NULL,
        available_at INTEGER NOT NULL,
        state        TEXT NOT NULL DEFAULT 'ready' CHECK (state IN ('ready', 'inflight', 'done', 'dead', 'parked', 'cancelled')),
        due_at       INTEGER NOT NULL,
        token        TEXT CHECK ((state = 'inflight') = (token IS NOT NULL)),
        settled_at   INTEGER,
        last_error   TEXT,
        priority     INTEGER NOT NULL DEFAULT 0 CHECK (priority BETWEEN -1000 AND 1000),
        head         INTEGER NOT NULL DEFAULT 1 CHECK (head IN (0, 1))
      )`,
      `INSERT INTO ${t('queue_v2')} (${QUEUE_COLS}) SELECT ${QUEUE_COLS} FROM ${queue}`,
      `DROP TABLE ${queue}`,
      `ALTER TABLE ${t('queue_v2')} RENAME TO "${ns}_queue"`,
      `UPDATE ${queue} SET head = (seq = (SELECT min(o.seq) FROM ${queue} o WHERE o.key = ${queue}.key AND o.${unsettled}))
        WHERE key IS NOT NULL AND ${unsettled}`,
      `CREATE INDEX ${t('queue_claim')} ON ${queue} (priority, due_at, seq) WHERE ${unsettled} AND head = 1`,
      `CREATE INDEX ${t('queue_next')} ON ${queue} (due_at) WHERE ${unsettled} AND head = 1`,
      `CREATE INDEX ${t('queue_key')} ON ${queue} (key, seq) WHERE key IS NOT NULL AND ${unsettled}`,
      `CREATE INDEX ${t('queue_settled')} ON ${queue} (settled_at) WHERE state IN ('done', 'dead', 'parked', 'cancelled')`,
      // A new keyed row waits behind an unsettled row of its key.
      `CREATE TRIGGER ${t('queue_head_insert')} AFTER INSERT ON ${queue}
        WHEN new.key IS NOT NULL AND new.${unsettled}
        BEGIN
          UPDATE ${queue} SET head = 0 WHERE seq = new.seq
            AND EXISTS (SELECT 1 FROM ${queue} o WHERE o.key = new.key AND o.${unsettled} AND o.seq <> new.seq);
        END`,
      // When the head of a key settles, the oldest unsettled row of the key becomes its head.
      `CREATE TRIGGER ${t('queue_head_settle')} AFTER UPDATE OF state ON ${queue}
        WHEN new.key IS NOT NULL AND old.${unsettled} AND NOT new.${unsettled} AND old.head = 1
        BEGIN
          UPDATE ${queue} SET head = 1
            WHERE seq = (SELECT min(o.seq) FROM ${queue} o WHERE o.key = new.key AND o.${unsettled});
        END`,
      // A settled row made claimable again (replay) is a head only if its key is otherwise idle.
      `CREATE TRIGGER ${t('queue_head_revive')} AFTER UPDATE OF state ON ${queue}
        WHEN new.key IS NOT NULL AND NOT old.${unsettled} AND new.${unsettled}
        BEGIN
          UPDATE ${queue} SET head = NOT EXISTS (SELECT 1 FROM ${queue} o WHERE o.key = new.key AND o.${unsettled} AND o.seq <> new.seq)
            WHERE seq = new.seq;
        END`,
      `ALTER TABLE ${groups} ADD COLUMN hw INTEGER NOT NULL DEFAULT 0`,
      `UPDATE ${groups} SET hw = max(upto, coalesce((SELECT max(pos) FROM ${gstate} s WHERE s.grp = ${groups}.grp), 0))`,
      `INSERT INTO ${gstate} (grp, pos, state, token, due_at, attempts)
        SELECT g.grp, l.pos, 'ready', NULL, 0, 0 FROM ${groups} g JOIN ${log} l ON l.pos > g.upto AND l.pos <= g.hw
        WHERE (l.target IS NULL OR l.target = g.grp)
          AND NOT EXISTS (SELECT 1 FROM ${gstate} s WHERE s.grp = g.grp AND s.pos = l.pos)`,
      `CREATE INDEX ${t('gstate_open')} ON ${gstate} (grp, pos) WHERE ${unsettled}`,
      `CREATE INDEX ${t('log_created')} ON ${log} (created_at) WHERE pos IS NOT NULL`,
      `CREATE TABLE ${paused} (target TEXT PRIMARY KEY, at INTEGER NOT NULL) WITHOUT ROWID`,
    ],
    // version 3: schedules
    [
      `CREATE TABLE ${schedules} (
        schedule     TEXT PRIMARY KEY CHECK (length(schedule) BETWEEN 1 AND 128),
        name         TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 128),
        cron         TEXT,
        every        INTEGER CHECK (every IS NULL OR every >= 1000),
        timezone     TEXT,
        encoding     TEXT NOT NULL CHECK (encoding IN ('json', 'bytes')),
        payload      BLOB,
        content_type TEXT NOT NULL,
        headers      TEXT NOT NULL,
        key          TEXT,
        priority     INTEGER NOT NULL DEFAULT 0,
        next_at      INTEGER NOT NULL,
        updated_at   INTEGER NOT NULL,
        CHECK ((cron IS NULL) <> (every IS NULL))
      ) WITHOUT ROWID`,
      `CREATE INDEX ${t('schedules_next')} ON ${schedules} (next_at)`,
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
      /** Paused targets. */
      paused,
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

    // ---------------------------------------------------------------- clock
    /** Reads the clock anchor. */
    getClock: `SELECT value FROM ${meta} WHERE key = 'clock'`,
    /** Writes the clock anchor. */
    setClock: `INSERT INTO ${meta} (key, value) VALUES ('clock', :value) ON CONFLICT (key) DO UPDATE SET value = excluded.value`,
    /** The latest time any stored row carries (a floor for a new clock anchor). */
    latestTime: `SELECT max(coalesce((SELECT max(created_at) FROM ${queue}), 0), coalesce((SELECT max(settled_at) FROM ${queue}), 0),
        coalesce((SELECT max(created_at) FROM ${log}), 0)) AS t`,

    // ---------------------------------------------------------------- commands
    /**
     * Appends a command. A second row with the same id fails on the UNIQUE index and the
     * caller reports `stored: false`. (A plain INSERT rather than an upsert: the core
     * reserves rowids for plain single-row INSERTs in concurrent transactions, so two
     * outbox transactions do not conflict merely by being handed the same rowid.) The
     * `queue_head_insert` trigger sets `head` when the commit is replayed, so it is right as
     * of the commit.
     */
    send: `INSERT INTO ${queue} (id, name, kind, encoding, payload, content_type, headers, key, attempts, created_at, available_at, state, due_at, priority)
           VALUES (:id, :name, 'command', :encoding, :payload, :contentType, :headers, :key, 0, :now, :availableAt, 'ready', :availableAt, :priority)`,
    /**
     * Appends commands, many rows in one statement: this SQL, then `sendRow` once per row
     * (comma-separated), then `sendRowsEnd`. Positional parameters per row: id, name, encoding,
     * payload, content type, headers, key, now, available at (twice: also the due time),
     * priority. An id already stored is skipped (`RETURNING id` names the rows stored).
     */
    sendRows: `INSERT INTO ${queue} (id, name, kind, encoding, payload, content_type, headers, key, attempts, created_at, available_at, state, due_at, priority) VALUES`,
    /** One row of a `sendRows` statement. */
    sendRow: `(?, ?, 'command', ?, ?, ?, ?, ?, 0, ?, ?, 'ready', ?, ?)`,
    /** The end of a `sendRows` statement. */
    sendRowsEnd: `ON CONFLICT (id) DO NOTHING RETURNING id`,
    /**
     * The distinct priorities that have claimable-shaped rows, highest first, found by index
     * seeks (one per priority), so a claim never walks rows of a priority it cannot use.
     */
    claimPriorities: `WITH RECURSIVE p(v) AS (
        SELECT max(priority) FROM ${queue} WHERE ${unsettled} AND head = 1
        UNION ALL
        SELECT (SELECT max(priority) FROM ${queue} WHERE ${unsettled} AND head = 1 AND priority < p.v) FROM p WHERE p.v IS NOT NULL)
      SELECT v FROM p WHERE v IS NOT NULL`,
    /**
     * Candidates of one priority: due heads, oldest first. The name filter is appended by
     * the claim procedure (`claims.ts`); paused names are excluded there too.
     */
    candidatesBase: `SELECT seq FROM ${queue} INDEXED BY "${ns}_queue_claim"
      WHERE ${unsettled} AND head = 1 AND priority = :priority AND due_at <= :now`,
    /**
     * Claims candidates, re-checking in the same statement that each is still claimable: this
     * SQL followed by a list of `?, ?, ...` in parentheses, then `claimReturning`. Positional
     * parameters (a long list of named ones costs more to bind): token, lease end, now, then the
     * sequence numbers.
     */
    claimCommandsIn: `UPDATE ${queue}
      SET state = 'inflight', token = ?, attempts = attempts + 1, due_at = ?
      WHERE ${unsettled} AND head = 1 AND due_at <= ? AND seq IN`,
    /** The end of a claimCommandsIn statement. */
    claimReturning: `RETURNING seq, ${MSG_COLS}, attempts, token`,
    /**
     * The next time a claimable command becomes due in the future (a delay, a backoff or a
     * lease ending). Rows waiting behind their key are not counted: the settlement that makes
     * them a head wakes the workers.
     */
    nextDueCommand: `SELECT min(due_at) AS due FROM ${queue} WHERE ${unsettled} AND head = 1 AND due_at > :now`,
    /** Settles a claimed command as handled (fenced by the token). */
    ackCommand: `UPDATE ${queue} SET state = 'done', token = NULL, settled_at = :now
      WHERE seq = :seq AND token = :token AND state = 'inflight'`,
    /**
     * Acknowledges the commands of one claim token: this SQL followed by a list of `?, ?, ...`
     * in parentheses (and `RETURNING seq`, which names the ones acknowledged). Positional
     * parameters: now, the token, then the sequence numbers.
     */
    ackCommandsIn: `UPDATE ${queue} SET state = 'done', token = NULL, settled_at = ?
      WHERE token = ? AND state = 'inflight' AND seq IN`,
    /** Puts a claimed command back, due at :at (fenced by the token). */
    nackCommand: `UPDATE ${queue} SET state = 'ready', token = NULL, due_at = :at, available_at = :at, last_error = :error
      WHERE seq = :seq AND token = :token AND state = 'inflight'`,
    /** Gives a claimed command back, due now; `:uncount` 1 takes back the attempt the claim counted. */
    releaseCommand: `UPDATE ${queue} SET state = 'ready', token = NULL, due_at = :now, attempts = max(0, attempts - :uncount)
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
    /** Reads a command and its state by id. */
    getCommand: `SELECT seq, ${MSG_COLS}, attempts, state, due_at, settled_at, last_error, priority FROM ${queue} WHERE id = :id`,
    /** Cancels a command that is waiting (not running, not settled). */
    cancelCommand: `UPDATE ${queue} SET state = 'cancelled', settled_at = :now, last_error = 'cancelled'
      WHERE id = :id AND state = 'ready'`,
    /**
     * Deletes settled commands (handled, cancelled; dead and parked ones too when asked)
     * settled before :before. Their ids may then be stored again: the dedupe window ends.
     */
    pruneCommands: `DELETE FROM ${queue} WHERE settled_at < :before
      AND (state IN ('done', 'cancelled') OR (:withDead AND state IN ('dead', 'parked')))`,

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
    createGroup: `INSERT INTO ${groups} (grp, upto, hw, created_at)
      SELECT :grp, m, m, :now FROM (SELECT CASE WHEN :fromEnd THEN (SELECT coalesce(max(pos), 0) FROM ${log}) ELSE 0 END AS m)
      WHERE true ON CONFLICT (grp) DO NOTHING`,
    /** A group's offset and claim high-water mark. */
    getGroup: `SELECT upto, hw FROM ${groups} WHERE grp = :grp`,
    /**
     * Open (unsettled) event claims of a group, lowest position first, with their keys: the
     * only per-group rows a claim reads (settled rows above a stuck event are never read).
     */
    openEvents: `SELECT s.pos, s.state, s.due_at, l.key FROM ${gstate} s INDEXED BY "${ns}_gstate_open"
      JOIN ${log} l ON l.pos = s.pos
      WHERE s.grp = :grp AND s.${unsettled} ORDER BY s.pos LIMIT :limit`,
    /** Fresh events of a group (above its high-water mark), lowest first, a bounded window. */
    freshEvents: `SELECT pos, key FROM ${log} WHERE pos > :hw AND (target IS NULL OR target = :grp) ORDER BY pos LIMIT :limit`,
    /** Claims an open event again (a retry or an expired lease), fenced on its state. */
    reclaimEvent: `UPDATE ${gstate} SET state = 'inflight', token = :token, due_at = :leaseUntil, attempts = attempts + 1
      WHERE grp = :grp AND pos = :pos AND ${unsettled} AND due_at <= :now
      RETURNING attempts`,
    /** Records a fresh event: claimed (`inflight`) or passed over behind its key (`ready`). */
    insertEventState: `INSERT INTO ${gstate} (grp, pos, state, token, due_at, attempts) VALUES (:grp, :pos, :state, :token, :dueAt, :attempts)`,
    /** Moves a group's high-water mark. */
    setHighWater: `UPDATE ${groups} SET hw = max(hw, :hw) WHERE grp = :grp`,
    /** The next time an event of the group becomes due in the future (a backoff or a lease ending). */
    nextDueEvent: `SELECT min(due_at) AS due FROM ${gstate} INDEXED BY "${ns}_gstate_open" WHERE grp = :grp AND ${unsettled} AND due_at > :now`,
    /** Reads a numbered event (events are immutable once numbered). */
    getEvent: `SELECT pos, ${MSG_COLS} FROM ${log} WHERE pos = :pos`,
    /** Reads an event by id (the original, not a replay). */
    getEventById: `SELECT pos, ${MSG_COLS} FROM ${log} WHERE id = :id AND target IS NULL`,
    /** Settles a claimed event as handled for the group (fenced). */
    ackEvent: `UPDATE ${gstate} SET state = 'done', token = NULL
      WHERE grp = :grp AND pos = :pos AND token = :token AND state = 'inflight'`,
    /** Schedules a claimed event for another try at :at (fenced). */
    nackEvent: `UPDATE ${gstate} SET state = 'ready', token = NULL, due_at = :at, last_error = :error
      WHERE grp = :grp AND pos = :pos AND token = :token AND state = 'inflight'`,
    /** Gives a claimed event back, due now (see releaseCommand). */
    releaseEvent: `UPDATE ${gstate} SET state = 'ready', token = NULL, due_at = :now, attempts = max(0, attempts - :uncount)
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
     * Moves a group's offset forward to just below its lowest unsettled event: the lowest
     * open claim, or the lowest fresh event of the group above its high-water mark; with
     * neither, to the end of the log. Index seeks only; idempotent; never moves backwards.
     */
    advanceGroup: `UPDATE ${groups} SET upto = max(upto, coalesce(
        (SELECT min(p) - 1 FROM (
          SELECT (SELECT min(s.pos) FROM ${gstate} s INDEXED BY "${ns}_gstate_open" WHERE s.grp = ${groups}.grp AND s.${unsettled}) AS p
          UNION ALL
          SELECT (SELECT min(l.pos) FROM ${log} l WHERE l.pos > ${groups}.hw AND (l.target IS NULL OR l.target = ${groups}.grp)))),
        (SELECT max(pos) FROM ${log}),
        upto))
      WHERE grp = :grp`,
    /** Keeps the high-water mark at or above the offset after an advance. */
    liftHighWater: `UPDATE ${groups} SET hw = upto WHERE grp = :grp AND hw < upto`,
    /** Drops per-event state at or below the group's offset. */
    compactGroup: `DELETE FROM ${gstate} WHERE grp = :grp AND pos <= (SELECT upto FROM ${groups} WHERE grp = :grp)`,
    /** Re-appends a dead or parked event for one group only (a new, unnumbered log row). */
    replayEvent: `INSERT INTO ${log} (pos, id, target, replay_of, name, kind, encoding, payload, content_type, headers, key, created_at, available_at)
      SELECT NULL, id, grp, ref, name, kind, encoding, payload, content_type, headers, key, created_at, :now
      FROM ${dead} WHERE dead_id = :deadId AND source = 'log'`,
    /** Deletes a group and its per-event state. */
    deleteGroup: `DELETE FROM ${groups} WHERE grp = :grp`,
    /** Deletes a group's per-event state. */
    deleteGroupState: `DELETE FROM ${gstate} WHERE grp = :grp`,
    /** The lowest offset of all groups (events at or below it are settled for everyone), or NULL without groups. */
    minOffset: `SELECT min(upto) AS m FROM ${groups}`,
    /**
     * Trims the log: events at or below :upto (every group is past them) or, with :before,
     * events created before that time as long as they are at or below :ageUpto. The newest
     * event is always kept, so positions never restart.
     */
    trimLog: `DELETE FROM ${log} WHERE pos IS NOT NULL AND pos < (SELECT max(pos) FROM ${log})
      AND (pos <= :upto OR (:before IS NOT NULL AND created_at < :before))`,
    /** Groups whose offset is below a trimmed position move up to it (their lost events are counted). */
    raiseOffsets: `UPDATE ${groups} SET upto = :upto, hw = max(hw, :upto) WHERE upto < :upto`,
    /** Drops claims of events trimmed away. */
    dropTrimmedState: `DELETE FROM ${gstate} WHERE pos < :first`,
    /** Lowest remaining position. */
    minPosition: `SELECT min(pos) AS m FROM ${log} WHERE pos IS NOT NULL`,

    // ---------------------------------------------------------------- schedules
    /** Creates or replaces a schedule. */
    upsertSchedule: `INSERT INTO ${schedules} (schedule, name, cron, every, timezone, encoding, payload, content_type, headers, key, priority, next_at, updated_at)
      VALUES (:schedule, :name, :cron, :every, :timezone, :encoding, :payload, :contentType, :headers, :key, :priority, :nextAt, :now)
      ON CONFLICT (schedule) DO UPDATE SET name = excluded.name, cron = excluded.cron, every = excluded.every, timezone = excluded.timezone,
        encoding = excluded.encoding, payload = excluded.payload, content_type = excluded.content_type, headers = excluded.headers,
        key = excluded.key, priority = excluded.priority, next_at = excluded.next_at, updated_at = excluded.updated_at`,
    /** Deletes a schedule. */
    deleteSchedule: `DELETE FROM ${schedules} WHERE schedule = :schedule`,
    /** Every schedule. */
    listSchedules: `SELECT schedule, name, cron, every, timezone, next_at FROM ${schedules} ORDER BY schedule`,
    /** Schedules whose slot has come. */
    dueSchedules: `SELECT * FROM ${schedules} WHERE next_at <= :now ORDER BY next_at`,
    /** Moves a schedule to its next slot (only from the slot just fired: a concurrent firing moves it once). */
    advanceSchedule: `UPDATE ${schedules} SET next_at = :nextAt WHERE schedule = :schedule AND next_at = :slot`,
    /** The earliest slot of any schedule. */
    nextScheduleAt: `SELECT min(next_at) AS at FROM ${schedules}`,

    // ---------------------------------------------------------------- pauses
    /** Pauses a target (`queue`, `name:<name>`, `group:<group>`). */
    pause: `INSERT INTO ${paused} (target, at) VALUES (:target, :now) ON CONFLICT (target) DO NOTHING`,
    /** Resumes a target. */
    resume: `DELETE FROM ${paused} WHERE target = :target`,
    /** Every paused target. */
    listPaused: `SELECT target FROM ${paused}`,

    // ---------------------------------------------------------------- dead letters
    /** Lists dead letters and parked messages, oldest first. */
    listDead: `SELECT dead_id, source, ref, grp, status, reason, failed_at, attempts, ${MSG_COLS} FROM ${dead}
      WHERE (:source IS NULL OR source = :source) AND (:grp IS NULL OR grp = :grp) AND (:status IS NULL OR status = :status)
        AND (:name IS NULL OR name = :name) AND dead_id > :after
      ORDER BY dead_id LIMIT :limit`,
    /** Reads one dead letter. */
    getDead: `SELECT dead_id, source, ref, grp, status FROM ${dead} WHERE dead_id = :deadId`,
    /** Deletes one dead letter. */
    deleteDead: `DELETE FROM ${dead} WHERE dead_id = :deadId`,
    /** Deletes dead or parked command rows whose dead letter is gone (their ids may be sent again). */
    dropPurgedCommands: `DELETE FROM ${queue} WHERE state IN ('dead', 'parked')
      AND NOT EXISTS (SELECT 1 FROM ${dead} d WHERE d.source = 'queue' AND d.grp IS NULL AND d.ref = ${queue}.seq)`,
    /** Deletes dead letters matching a filter. */
    purgeDead: `DELETE FROM ${dead}
      WHERE (:source IS NULL OR source = :source) AND (:grp IS NULL OR grp = :grp) AND (:status IS NULL OR status = :status)
        AND (:name IS NULL OR name = :name) AND (:before IS NULL OR failed_at < :before)`,

    // ---------------------------------------------------------------- stats
    /** Unsettled commands per name, with the oldest waiting one's creation time. */
    statsQueue: `SELECT coalesce(name, '') AS name,
        sum(state = 'ready' AND due_at <= :now) AS ready,
        sum(state = 'ready' AND due_at > :now) AS delayed,
        sum(state = 'inflight') AS inflight,
        min(CASE WHEN state = 'ready' AND due_at <= :now THEN available_at END) AS oldest
      FROM ${queue} WHERE state IN ('ready', 'inflight') GROUP BY 1`,
    /** Dead and parked counts per source, group and name. */
    statsDead: `SELECT source, grp, coalesce(name, '') AS name, sum(status = 'dead') AS dead, sum(status = 'parked') AS parked
      FROM ${dead} GROUP BY source, grp, 3`,
    /** Per-group offset, lag (open claims plus fresh events) and claim states. */
    statsGroups: `SELECT g.grp, g.upto,
        (SELECT count(*) FROM ${gstate} s WHERE s.grp = g.grp AND s.${unsettled})
          + (SELECT count(*) FROM ${log} l WHERE l.pos > g.hw AND (l.target IS NULL OR l.target = g.grp)) AS lag,
        (SELECT count(*) FROM ${gstate} s WHERE s.grp = g.grp AND s.state = 'inflight') AS inflight,
        (SELECT count(*) FROM ${gstate} s WHERE s.grp = g.grp AND s.state = 'ready' AND s.due_at > :now) AS delayed,
        (SELECT min(l.created_at) FROM ${log} l WHERE l.pos = (SELECT min(p) FROM (
            SELECT (SELECT min(s.pos) FROM ${gstate} s WHERE s.grp = g.grp AND s.${unsettled}) AS p
            UNION ALL SELECT (SELECT min(l2.pos) FROM ${log} l2 WHERE l2.pos > g.hw AND (l2.target IS NULL OR l2.target = g.grp))))) AS oldest
      FROM ${groups} g`,
    /** Numbered events in the log. */
    countEvents: `SELECT count(*) AS n FROM ${log} WHERE pos IS NOT NULL`,
  } as const;
}

/** The plans of one namespace. */
export type Plans = ReturnType<typeof buildPlans>;

const shapedSqls = new Map<string, string>();

/**
 * The text of a statement whose shape varies (a list of n values, a filter of n names): built by
 * `build` once per namespace and `shape` (each caller names its shapes, as `ack/32`), so that a
 * few texts, each prepared once, serve every call.
 */
export function shapedSql(plans: Plans, shape: string, build: () => string): string {
  const k = `${plans.namespace}/${shape}`;
  let sql = shapedSqls.get(k);
  if (sql === undefined) shapedSqls.set(k, (sql = build()));
  return sql;
}

/** `?, ?, ..`: `n` positional parameters. */
export function placeholders(n: number): string {
  return Array.from({ length: n }, () => '?').join(', ');
}
