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
export const PG_SCHEMA_VERSION = 1;

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
