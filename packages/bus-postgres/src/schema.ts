/**
 * The PostgreSQL schema of the bus, created and migrated idempotently under a transaction-
 * scoped advisory lock, so many processes may open the same bus at once.
 *
 * The tables mirror the SQLite transport (see `@siblite/bus`'s plans): `queue` (commands),
 * `log` (events, numbered by the sequencer), `groups` and `gstate` (consumer groups),
 * `dead` (dead letters, verbatim copies), `paused`, `meta`. Every time is milliseconds since
 * the epoch on the *server's* clock (`now_ms()`), so every machine shares one clock.
 *
 * @module
 */
import type pg from 'pg';
import { ValidationError, validateNamespace } from '@siblite/bus';

/** The schema version this code writes and reads. */
export const PG_SCHEMA_VERSION = 3;

/**
 * Validates and quotes a schema name: 1 to 63 bytes (PostgreSQL would silently truncate a
 * longer one) of ASCII letters, digits, `-` and `_`, not starting with `pg_`.
 *
 * @throws ValidationError for anything else.
 */
export function quoteSchema(schema: string): string {
  const s = validateNamespace(schema);
  if (s.length > 63) throw new ValidationError('schema', `schema "${s}" is longer than 63 bytes (PostgreSQL's identifier limit)`);
  if (s.toLowerCase().startsWith('pg_')) throw new ValidationError('schema', `schema "${s}" must not start with "pg_" (reserved by PostgreSQL)`);
  return `"${s}"`;
}

/** Statements of each schema version, in order. `S` is the quoted schema. */
function migrations(S: string): readonly (readonly string[])[] {
  const unsettled = `state IN ('ready', 'inflight')`;
  return [
    [
      `CREATE OR REPLACE FUNCTION ${S}.now_ms() RETURNS bigint LANGUAGE sql VOLATILE AS
        $$ SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint $$`,
      `CREATE TABLE ${S}.queue (
        seq          bigserial PRIMARY KEY,
        id           text NOT NULL UNIQUE CHECK (length(id) > 0),
        name         text NOT NULL CHECK (length(name) BETWEEN 1 AND 128),
        kind         text NOT NULL DEFAULT 'command' CHECK (kind = 'command'),
        encoding     text NOT NULL CHECK (encoding IN ('json', 'bytes')),
        payload      bytea,
        content_type text NOT NULL CHECK (length(content_type) > 0),
        headers      text NOT NULL,
        key          text CHECK (key IS NULL OR length(key) > 0),
        attempts     integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
        created_at   bigint NOT NULL,
        available_at bigint NOT NULL,
        state        text NOT NULL DEFAULT 'ready' CHECK (state IN ('ready', 'inflight', 'done', 'dead', 'parked', 'cancelled')),
        due_at       bigint NOT NULL,
        token        text CHECK ((state = 'inflight') = (token IS NOT NULL)),
        settled_at   bigint,
        last_error   text,
        priority     integer NOT NULL DEFAULT 0 CHECK (priority BETWEEN -1000 AND 1000)
      )`,
      `CREATE INDEX queue_claim ON ${S}.queue (priority DESC, due_at, seq) WHERE ${unsettled}`,
      `CREATE INDEX queue_key ON ${S}.queue (key, seq) WHERE key IS NOT NULL AND ${unsettled}`,
      // pos: NULL until the sequencer numbers the row (after its transaction committed).
      // xid: the inserting transaction, kept for diagnosis of late commits.
      `CREATE TABLE ${S}.log (
        seq          bigserial PRIMARY KEY,
        pos          bigint UNIQUE CHECK (pos IS NULL OR pos > 0),
        xid          xid8 NOT NULL DEFAULT pg_current_xact_id(),
        id           text NOT NULL CHECK (length(id) > 0),
        target       text,
        replay_of    bigint,
        name         text NOT NULL CHECK (length(name) BETWEEN 1 AND 128),
        kind         text NOT NULL DEFAULT 'event' CHECK (kind = 'event'),
        encoding     text NOT NULL CHECK (encoding IN ('json', 'bytes')),
        payload      bytea,
        content_type text NOT NULL CHECK (length(content_type) > 0),
        headers      text NOT NULL,
        key          text CHECK (key IS NULL OR length(key) > 0),
        created_at   bigint NOT NULL,
        available_at bigint NOT NULL
      )`,
      `CREATE UNIQUE INDEX log_id ON ${S}.log (id) WHERE target IS NULL`,
      `CREATE INDEX log_unsequenced ON ${S}.log (seq) WHERE pos IS NULL`,
      `CREATE TABLE ${S}.groups (
        grp        text PRIMARY KEY CHECK (length(grp) BETWEEN 1 AND 128),
        upto       bigint NOT NULL CHECK (upto >= 0),
        hw         bigint NOT NULL,
        created_at bigint NOT NULL
      )`,
      `CREATE TABLE ${S}.gstate (
        grp        text NOT NULL,
        pos        bigint NOT NULL,
        state      text NOT NULL CHECK (state IN ('ready', 'inflight', 'done', 'dead', 'parked')),
        token      text CHECK ((state = 'inflight') = (token IS NOT NULL)),
        due_at     bigint NOT NULL,
        attempts   integer NOT NULL CHECK (attempts >= 0),
        last_error text,
        PRIMARY KEY (grp, pos)
      )`,
      `CREATE INDEX gstate_open ON ${S}.gstate (grp, pos) WHERE ${unsettled}`,
      `CREATE TABLE ${S}.dead (
        dead_id      bigserial PRIMARY KEY,
        source       text NOT NULL CHECK (source IN ('queue', 'log')),
        ref          bigint NOT NULL,
        grp          text CHECK ((source = 'log') = (grp IS NOT NULL)),
        status       text NOT NULL CHECK (status IN ('dead', 'parked')),
        reason       text NOT NULL,
        failed_at    bigint NOT NULL,
        attempts     integer NOT NULL,
        id text, name text, kind text, encoding text, payload bytea, content_type text, headers text, key text,
        created_at bigint, available_at bigint
      )`,
      `CREATE TABLE ${S}.paused (target text PRIMARY KEY, at bigint NOT NULL)`,
      // The sequencer: numbers committed, unnumbered events after the current maximum, one
      // run at a time (advisory lock). Each statement of a VOLATILE function takes a new
      // snapshot, so the UPDATE sees every earlier run's numbers; rows of transactions still
      // open are invisible and get numbered by a later run, above every position handed out
      // before. So positions follow commit order and a reader never passes a position that
      // a late commit could still fill.
      `CREATE OR REPLACE FUNCTION ${S}.sequence() RETURNS void LANGUAGE plpgsql VOLATILE AS $$
        BEGIN
          IF NOT EXISTS (SELECT 1 FROM ${S}.log WHERE pos IS NULL) THEN RETURN; END IF;
          PERFORM pg_advisory_xact_lock(hashtext('siblite_bus_sequencer:' || ${literal(S)}));
          UPDATE ${S}.log l SET pos = b.m + t.rn
            FROM (SELECT coalesce(max(pos), 0) AS m FROM ${S}.log) b,
                 (SELECT seq, row_number() OVER (ORDER BY seq) AS rn FROM ${S}.log WHERE pos IS NULL) t
            WHERE l.seq = t.seq;
        END $$`,
    ],
    // Version 2: one round trip per claim, offset move and acknowledgement (server-side
    // functions instead of several statements from the client); schedules; retention's indexes.
    [
      `CREATE TABLE ${S}.schedules (
        schedule     text PRIMARY KEY CHECK (length(schedule) BETWEEN 1 AND 128),
        name         text NOT NULL CHECK (length(name) BETWEEN 1 AND 128),
        cron         text,
        every        bigint CHECK (every IS NULL OR every >= 1000),
        timezone     text,
        encoding     text NOT NULL CHECK (encoding IN ('json', 'bytes')),
        payload      bytea,
        content_type text NOT NULL,
        headers      text NOT NULL,
        key          text,
        priority     integer NOT NULL DEFAULT 0,
        next_at      bigint NOT NULL,
        updated_at   bigint NOT NULL,
        CHECK ((cron IS NULL) <> (every IS NULL))
      )`,
      `CREATE INDEX schedules_next ON ${S}.schedules (next_at)`,
      `CREATE INDEX log_created ON ${S}.log (created_at) WHERE pos IS NOT NULL`,
      `CREATE INDEX queue_settled ON ${S}.queue (settled_at) WHERE settled_at IS NOT NULL`,
      // Claims up to p_limit events of a group (the rules of the SQLite transport's claims):
      // retries and events passed over first, in log order, then fresh events after the
      // high-water mark; a keyed event only while no lower unsettled event of its key is open;
      // with p_ordered only the group's lowest unsettled event. The group row lock serializes
      // the group's claims and offset moves. Returns the claimed events' rows.
      //
      // Claims (of commands too) and offset moves commit without waiting for the disk
      // (synchronous_commit off for their transaction only): losing one in a server crash is
      // a lease that ended early (the message is claimable again and the holder's ack is
      // refused as stale, so its handler's transaction never commits), and any acknowledgement
      // that did reach the disk comes after the claim in the WAL, so it made the claim durable
      // too. What a user sees as done (sends, acks with their effects, dead letters) keeps
      // waiting for the disk.
      `CREATE OR REPLACE FUNCTION ${S}.claim_events(p_grp text, p_limit int, p_lease bigint, p_ordered boolean, p_token text)
        RETURNS TABLE (r_pos bigint, r_attempts int, r_id text, r_name text, r_kind text, r_encoding text, r_payload bytea,
                       r_content_type text, r_headers text, r_key text, r_created_at bigint, r_available_at bigint)
        LANGUAGE plpgsql VOLATILE AS $$
        DECLARE
          v_hw bigint; v_paused boolean; v_now bigint; v_until bigint; v_busy text[] := '{}'; v_earlier boolean := false;
          o record; v_att int; v_pos bigint[] := '{}'; v_atts int[] := '{}'; v_passed bigint[] := '{}'; v_newhw bigint;
        BEGIN
          PERFORM set_config('synchronous_commit', 'off', true);
          PERFORM ${S}.sequence();
          SELECT g.hw, EXISTS (SELECT 1 FROM ${S}.paused p WHERE p.target = 'group:' || p_grp) INTO v_hw, v_paused
            FROM ${S}.groups g WHERE g.grp = p_grp FOR UPDATE;
          IF NOT FOUND OR v_paused THEN RETURN; END IF;
          v_now := ${S}.now_ms();
          v_until := v_now + p_lease;
          FOR o IN SELECT s.pos, s.due_at, l.key FROM ${S}.gstate s JOIN ${S}.log l ON l.pos = s.pos
                   WHERE s.grp = p_grp AND s.${unsettled} ORDER BY s.pos LOOP
            IF o.due_at <= v_now AND (o.key IS NULL OR NOT (o.key = ANY (v_busy))) AND NOT (p_ordered AND v_earlier)
               AND cardinality(v_pos) < p_limit THEN
              UPDATE ${S}.gstate s SET state = 'inflight', token = p_token, due_at = v_until, attempts = s.attempts + 1
                WHERE s.grp = p_grp AND s.pos = o.pos AND s.${unsettled} AND s.due_at <= v_now RETURNING s.attempts INTO v_att;
              IF FOUND THEN v_pos := v_pos || o.pos; v_atts := v_atts || v_att; END IF;
            END IF;
            v_earlier := true;
            IF o.key IS NOT NULL THEN v_busy := v_busy || o.key; END IF;
            EXIT WHEN p_ordered;
          END LOOP;
          IF cardinality(v_pos) < p_limit AND NOT (p_ordered AND v_earlier) THEN
            v_newhw := v_hw;
            FOR o IN SELECT l.pos, l.key FROM ${S}.log l WHERE l.pos > v_hw AND (l.target IS NULL OR l.target = p_grp)
                     ORDER BY l.pos LIMIT CASE WHEN p_ordered THEN 1 ELSE greatest(64, p_limit * 16) END LOOP
              EXIT WHEN cardinality(v_pos) >= p_limit;
              IF o.key IS NOT NULL AND o.key = ANY (v_busy) THEN
                v_passed := v_passed || o.pos;
                CONTINUE;
              END IF;
              -- Events passed over behind their key get an open row, so the high-water mark can move past them.
              INSERT INTO ${S}.gstate (grp, pos, state, token, due_at, attempts) SELECT p_grp, x, 'ready', NULL, 0, 0 FROM unnest(v_passed) x;
              v_passed := '{}';
              INSERT INTO ${S}.gstate (grp, pos, state, token, due_at, attempts) VALUES (p_grp, o.pos, 'inflight', p_token, v_until, 1);
              v_pos := v_pos || o.pos;
              v_atts := v_atts || 1;
              v_newhw := o.pos;
              IF o.key IS NOT NULL THEN v_busy := v_busy || o.key; END IF;
            END LOOP;
            IF v_newhw > v_hw THEN UPDATE ${S}.groups SET hw = greatest(hw, v_newhw) WHERE grp = p_grp; END IF;
          END IF;
          RETURN QUERY SELECT l.pos, c.a, l.id, l.name, l.kind, l.encoding, l.payload, l.content_type, l.headers, l.key, l.created_at, l.available_at
            FROM unnest(v_pos, v_atts) AS c(p, a) JOIN ${S}.log l ON l.pos = c.p ORDER BY l.pos;
        END $$`,
      // Moves a group's offset to just below its lowest unsettled event. The group row is
      // locked first, in its own statement, so the next statements' snapshots see every claim
      // committed before (each statement of a VOLATILE function takes a new snapshot).
      `CREATE OR REPLACE FUNCTION ${S}.advance_group(p_grp text) RETURNS void LANGUAGE plpgsql VOLATILE AS $$
        BEGIN
          PERFORM set_config('synchronous_commit', 'off', true);
          PERFORM 1 FROM ${S}.groups WHERE grp = p_grp FOR UPDATE;
          UPDATE ${S}.groups g SET upto = greatest(g.upto, coalesce(
             (SELECT min(p) - 1 FROM (
               SELECT (SELECT min(s.pos) FROM ${S}.gstate s WHERE s.grp = g.grp AND s.${unsettled}) AS p
               UNION ALL
               SELECT (SELECT min(l.pos) FROM ${S}.log l WHERE l.pos > g.hw AND (l.target IS NULL OR l.target = g.grp))) x),
             (SELECT max(pos) FROM ${S}.log),
             g.upto))
           WHERE grp = p_grp;
          UPDATE ${S}.groups SET hw = upto WHERE grp = p_grp AND hw < upto;
          DELETE FROM ${S}.gstate WHERE grp = p_grp AND pos <= (SELECT upto FROM ${S}.groups WHERE grp = p_grp);
        END $$`,
      // The fenced acknowledgement of a command (p_grp NULL) or of a group's event. With
      // p_marker, it first checks that the transaction is still the one the bus began (its
      // transaction-local setting is gone once a handler ended it). Raises SBTX1 for a handler
      // that ended the transaction, SBST1 for a stale claim; a keyed command wakes workers.
      `CREATE OR REPLACE FUNCTION ${S}.ack(p_grp text, p_ref bigint, p_token text, p_marker text, p_channel text)
        RETURNS void LANGUAGE plpgsql VOLATILE AS $$
        DECLARE v_key text;
        BEGIN
          IF p_marker IS NOT NULL AND current_setting('siblite_bus.tx', true) IS DISTINCT FROM p_marker THEN
            RAISE EXCEPTION 'the handler ended the bus transaction of context.client' USING ERRCODE = 'SBTX1';
          END IF;
          IF p_grp IS NULL THEN
            UPDATE ${S}.queue SET state = 'done', token = NULL, settled_at = ${S}.now_ms()
              WHERE seq = p_ref AND token = p_token AND state = 'inflight' RETURNING key INTO v_key;
            IF NOT FOUND THEN RAISE EXCEPTION 'stale claim' USING ERRCODE = 'SBST1'; END IF;
            IF v_key IS NOT NULL THEN PERFORM pg_notify(p_channel, 'queue'); END IF;
          ELSE
            UPDATE ${S}.gstate SET state = 'done', token = NULL WHERE grp = p_grp AND pos = p_ref AND token = p_token AND state = 'inflight';
            IF NOT FOUND THEN RAISE EXCEPTION 'stale claim' USING ERRCODE = 'SBST1'; END IF;
          END IF;
        END $$`,
    ],
    // Version 3: the command claim as a function whose plan walks the claim index in its
    // order and stops after p_limit rows. A claim used to run as one statement, and right
    // after a backlog was written (before autovacuum analyzed the table) the planner took
    // every ready row, checked each against the pause table and sorted them all, so each
    // claim cost time proportional to the backlog (9 ms per claim with 2,000 queued).
    // enable_sort = off (for this function only) leaves the claim index's order as the only
    // plan; pauses are read once per claim instead of once per row.
    [
      `CREATE OR REPLACE FUNCTION ${S}.claim_commands(p_names text[], p_limit int, p_token text, p_lease bigint)
        RETURNS TABLE (r_seq bigint, r_id text, r_name text, r_kind text, r_encoding text, r_payload bytea, r_content_type text,
                       r_headers text, r_key text, r_created_at bigint, r_available_at bigint, r_attempts int)
        LANGUAGE plpgsql VOLATILE SET enable_sort = off AS $$
        DECLARE v_now bigint; v_paused text[];
        BEGIN
          PERFORM set_config('synchronous_commit', 'off', true);
          IF EXISTS (SELECT 1 FROM ${S}.paused WHERE target = 'queue') THEN RETURN; END IF;
          v_paused := ARRAY(SELECT substr(target, 6) FROM ${S}.paused WHERE target LIKE 'name:%');
          v_now := ${S}.now_ms();
          RETURN QUERY WITH c AS (
              SELECT q.seq FROM ${S}.queue q
              WHERE q.${unsettled} AND q.due_at <= v_now
                AND (p_names IS NULL OR q.name = ANY (p_names)) AND NOT (q.name = ANY (v_paused))
                AND (q.key IS NULL OR NOT EXISTS (SELECT 1 FROM ${S}.queue o WHERE o.key = q.key AND o.${unsettled} AND o.seq < q.seq))
              ORDER BY q.priority DESC, q.due_at, q.seq
              LIMIT p_limit FOR UPDATE OF q SKIP LOCKED)
            UPDATE ${S}.queue q SET state = 'inflight', token = p_token, attempts = q.attempts + 1, due_at = v_now + p_lease
            FROM c WHERE q.seq = c.seq
            RETURNING q.seq, q.id, q.name, q.kind, q.encoding, q.payload, q.content_type, q.headers, q.key, q.created_at, q.available_at, q.attempts;
        END $$`,
    ],
  ];
}

function literal(text: string): string {
  return `'${text.replaceAll("'", "''")}'`;
}

/**
 * Creates the schema and its tables, or upgrades them, inside one transaction holding an
 * advisory lock keyed by the schema name (concurrent openers wait; the second finds the
 * work done). Returns the bus instance id stored in the schema (it names the NOTIFY channel).
 *
 * @throws ValidationError when the schema was written by a newer version.
 */
export async function migrate(client: pg.PoolClient, schema: string): Promise<string> {
  const S = quoteSchema(schema);
  await client.query('BEGIN');
  try {
    await client.query(`SELECT pg_advisory_xact_lock(hashtext($1))`, [`siblite_bus_migrate:${schema}`]);
    await client.query(`CREATE SCHEMA IF NOT EXISTS ${S}`);
    await client.query(`CREATE TABLE IF NOT EXISTS ${S}.meta (key text PRIMARY KEY, value text NOT NULL)`);
    const v = await client.query<{ value: string }>(`SELECT value FROM ${S}.meta WHERE key = 'schema_version'`);
    const current = Number(v.rows[0]?.value ?? 0);
    if (current > PG_SCHEMA_VERSION) {
      throw new ValidationError('schema', `the bus schema "${schema}" is version ${current}, newer than this code (${PG_SCHEMA_VERSION})`);
    }
    const all = migrations(S);
    for (let i = current; i < PG_SCHEMA_VERSION; i++) for (const sql of all[i] ?? []) await client.query(sql);
    await client.query(
      `INSERT INTO ${S}.meta (key, value) VALUES ('schema_version', $1) ON CONFLICT (key) DO UPDATE SET value = excluded.value`,
      [String(PG_SCHEMA_VERSION)],
    );
    await client.query(`INSERT INTO ${S}.meta (key, value) VALUES ('instance', replace(gen_random_uuid()::text, '-', '')) ON CONFLICT (key) DO NOTHING`);
    const instance = (await client.query<{ value: string }>(`SELECT value FROM ${S}.meta WHERE key = 'instance'`)).rows[0]?.value;
    await client.query('COMMIT');
    if (instance === undefined) throw new Error('bus meta table has no instance id');
    return instance;
  } catch (e) {
    await client.query('ROLLBACK').catch(() => {});
    throw e;
  }
}
