#!/usr/bin/env node
/**
 * The `siblite` command line tool: looks into and maintains the bus of a database file, or
 * of a PostgreSQL schema when `<file>` is a `postgres://` URL (through `@siblite/bus-postgres`,
 * loaded at run time: this package does not depend on it).
 *
 * ```
 * siblite bus stats <file> [--namespace ns] [--json]
 * siblite bus dead <file> [list] [filters] [--limit n] [--json]
 * siblite bus dead <file> show <deadId> [--json]
 * siblite bus dead <file> replay <deadId...> | --all [filters]
 * siblite bus dead <file> purge (--all | filters) [--before <age>]
 * siblite bus trim <file> [--max-age <age>] [--done <age>] [--dead <age>] [--json]
 * siblite bus <command> postgres://user@host/db [--schema s] ...   (the same commands)
 * ```
 *
 * Filters: `--source queue|log`, `--group g`, `--status dead|parked`, `--name n`. Ages:
 * milliseconds or a number with `s`, `m`, `h` or `d`. Exit codes: 0 done, 1 failed, 2 usage.
 *
 * @module
 */
import { existsSync, realpathSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { open } from '@siblite/core';
import { ValidationError } from './errors.js';
import { SqliteBus } from './sqlite/bus.js';
import { validateNamespace } from './validate.js';
import type { Retainable } from './retention.js';
import type { BusStats, DeadLetter, DeadLetterFilter } from './types.js';

const USAGE = `usage:
  siblite bus stats <file> [--namespace ns] [--json]
  siblite bus dead <file> [list] [--source queue|log] [--group g] [--status dead|parked] [--name n] [--limit n] [--json]
  siblite bus dead <file> show <deadId> [--json]
  siblite bus dead <file> replay (<deadId>... | --all [filters])
  siblite bus dead <file> purge (--all | filters) [--before <age>]
  siblite bus trim <file> [--max-age <age>] [--done <age>] [--dead <age>] [--json]
<file> may be a postgres:// URL (needs @siblite/bus-postgres); its bus is named by --schema (default siblite_bus)
ages: milliseconds, or a number followed by s, m, h or d (for example 7d)`;

/** A usage mistake: exit code 2. */
class UsageError extends Error {}

const OPTIONS = {
  namespace: { type: 'string' },
  schema: { type: 'string' },
  json: { type: 'boolean' },
  source: { type: 'string' },
  group: { type: 'string' },
  status: { type: 'string' },
  name: { type: 'string' },
  limit: { type: 'string' },
  all: { type: 'boolean' },
  before: { type: 'string' },
  'max-age': { type: 'string' },
  done: { type: 'string' },
  dead: { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const;

/** Parses an age: ms, or a number with a unit (`s`, `m`, `h`, `d`). */
export function parseAge(text: string, what: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$/.exec(text.trim());
  if (!m) throw new UsageError(`${what}: "${text}" is not an age (use ms, or a number with s, m, h or d)`);
  const unit = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 }[(m[2] ?? 'ms') as 'ms'];
  return Number(m[1]) * unit;
}

function ageText(ms: number | null): string {
  if (ms === null) return '-';
  if (ms < 1_000) return `${Math.round(ms)}ms`;
  if (ms < 60_000) return `${(ms / 1_000).toFixed(1)}s`;
  if (ms < 3_600_000) return `${(ms / 60_000).toFixed(1)}m`;
  if (ms < 86_400_000) return `${(ms / 3_600_000).toFixed(1)}h`;
  return `${(ms / 86_400_000).toFixed(1)}d`;
}

function table(headers: string[], rows: (string | number)[][]): string {
  const cells = [headers, ...rows.map((r) => r.map(String))];
  const widths = headers.map((_, i) => Math.max(...cells.map((r) => (r[i] ?? '').length)));
  return cells.map((r) => r.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ').trimEnd()).join('\n');
}

/** What the tool needs of a bus, on either transport. */
export interface MaintainedBus extends Retainable {
  stats(): Promise<BusStats>;
  deadLetters(filter?: DeadLetterFilter & { limit?: number; after?: number }): Promise<DeadLetter[]>;
  replayDeadLetter(deadId: number): Promise<boolean>;
  purgeDeadLetters(filter?: DeadLetterFilter & { before?: Date | number }): Promise<number>;
  close(): Promise<void>;
}

/** Whether `target` names a PostgreSQL server rather than a file. */
export function isPostgresUrl(target: string): boolean {
  return /^postgres(ql)?:\/\//i.test(target);
}

/** An opened bus and what closes it. */
interface Opened {
  bus: MaintainedBus;
  close(): Promise<void>;
}

/** Opens the file's bus; refuses a missing file or a database without this bus. */
async function openFile(file: string, namespace: string): Promise<Opened> {
  if (!existsSync(file)) throw new Error(`no such file: ${file}`);
  const conn = open(file, { fileMustExist: true });
  try {
    const meta = conn.get(`SELECT 1 AS ok FROM sqlite_schema WHERE type = 'table' AND name = ?`, [`${namespace}_meta`]);
    if (!meta) throw new Error(`${file} has no bus in namespace "${namespace}"`);
    const bus = await SqliteBus.open(conn, { namespace, logger: null });
    return {
      bus,
      async close() {
        await bus.close();
        conn.close();
      },
    };
  } catch (e) {
    conn.close();
    throw e;
  }
}

/**
 * Loads `@siblite/bus-postgres` at run time (this package does not depend on it): from where
 * this tool is installed, else from the current directory's project.
 */
async function loadPostgres(): Promise<{ PgBus: { open(options: object): Promise<MaintainedBus> } }> {
  const name = '@siblite/bus-postgres';
  try {
    return (await import(name)) as never;
  } catch {
    try {
      const path = createRequire(join(process.cwd(), 'package.json')).resolve(name);
      return (await import(pathToFileURL(path).href)) as never;
    } catch {
      throw new Error(`a postgres:// target needs ${name}: install it next to @siblite/bus (npm install ${name})`);
    }
  }
}

/** Opens the bus of a PostgreSQL schema; refuses a schema without a bus (never creates one). */
async function openPostgres(url: string, schema: string): Promise<Opened> {
  const { PgBus } = await loadPostgres();
  let bus: MaintainedBus;
  try {
    bus = await PgBus.open({ connection: url, schema, logger: null, mustExist: true });
  } catch (e) {
    // a missing bus is a failure (exit 1), not a usage mistake
    if (e instanceof Error && /there is no bus/.test(e.message)) throw new Error(e.message);
    throw e;
  }
  return { bus, close: () => bus.close() };
}

/** Opens the bus of `target`: a file, or a `postgres://` URL. */
async function openBus(target: string | undefined, values: { namespace?: string; schema?: string }): Promise<Opened> {
  if (!target) throw new UsageError('missing <file> (or postgres:// URL)');
  if (isPostgresUrl(target)) {
    if (values.namespace !== undefined) throw new UsageError('--namespace is for files; a PostgreSQL bus is named by --schema');
    return openPostgres(target, validateNamespace(values.schema ?? 'siblite_bus'));
  }
  if (values.schema !== undefined) throw new UsageError('--schema is for postgres:// URLs; a file\'s bus is named by --namespace');
  return openFile(target, validateNamespace(values.namespace ?? 'bus'));
}

function filterOf(values: Record<string, unknown>): DeadLetterFilter {
  const f: DeadLetterFilter = {};
  if (values.source !== undefined) f.source = values.source as 'queue' | 'log';
  if (values.group !== undefined) f.group = values.group as string;
  if (values.status !== undefined) f.status = values.status as 'dead' | 'parked';
  if (values.name !== undefined) f.name = values.name as string;
  return f;
}

function deadJson(d: DeadLetter): Record<string, unknown> {
  return {
    deadId: d.deadId,
    source: d.source,
    group: d.group,
    status: d.status,
    reason: d.reason,
    failedAt: d.failedAt.toISOString(),
    attempts: d.attempts,
    id: d.raw.id,
    name: d.raw.name,
    payload: d.message ? (d.message.payload instanceof Uint8Array ? `<${d.message.payload.length} bytes>` : d.message.payload) : null,
    headers: d.message?.headers ?? null,
    key: d.message?.key ?? null,
    decodeError: d.decodeError,
  };
}

async function allDead(bus: MaintainedBus, filter: DeadLetterFilter): Promise<DeadLetter[]> {
  const out: DeadLetter[] = [];
  let after = 0;
  for (;;) {
    const page = await bus.deadLetters({ ...filter, after, limit: 500 });
    out.push(...page);
    if (page.length < 500) return out;
    after = page[page.length - 1]!.deadId;
  }
}

/** Runs the tool with `argv` (without `node` and the script); returns the exit code. */
export async function main(argv: string[], out: (s: string) => void = (s) => console.log(s)): Promise<number> {
  let opened: Opened | undefined;
  try {
    const { values, positionals } = parseArgs({ args: argv, options: OPTIONS, allowPositionals: true, strict: true });
    if (values.help) {
      out(USAGE);
      return 0;
    }
    const [area, command, file, ...rest] = positionals;
    if (area !== 'bus' || !command) throw new UsageError('expected: siblite bus <stats|dead|trim> <file>');
    const json = values.json === true;
    const emit = (data: unknown, text: () => string) => out(json ? JSON.stringify(data, null, 2) : text());
    if (!['stats', 'dead', 'trim'].includes(command)) throw new UsageError(`unknown command "${command}"`);
    opened = await openBus(file, values);
    const bus = opened.bus;
    if (command === 'stats') {
      const s = await bus.stats();
      emit(s, () => {
        const q = Object.entries(s.queue).map(([n, v]) => [n, v.ready, v.delayed, v.inFlight, v.dead, v.parked, ageText(v.oldestAge)]);
        const g = Object.entries(s.groups).map(([n, v]) => [n, v.offset, v.lag, v.inFlight, v.delayed, v.dead, v.parked, ageText(v.oldestAge)]);
        return [
          q.length ? table(['command', 'ready', 'delayed', 'in flight', 'dead', 'parked', 'oldest'], q) : 'no commands',
          '',
          g.length ? table(['group', 'offset', 'lag', 'in flight', 'delayed', 'dead', 'parked', 'oldest'], g) : 'no groups',
          '',
          `events in the log: ${s.events}`,
        ].join('\n');
      });
      return 0;
    }
    if (command === 'trim') {
      const maxAge = values['max-age'] === undefined ? undefined : parseAge(values['max-age'], '--max-age');
      const trimmed = await bus.trim(maxAge === undefined ? {} : { maxAge });
      const done = values.done === undefined ? undefined : parseAge(values.done, '--done');
      const dead = values.dead === undefined ? undefined : parseAge(values.dead, '--dead');
      const pruned = done === undefined && dead === undefined ? { commands: 0, deadLetters: 0 } : await bus.prune(done ?? Number.MAX_SAFE_INTEGER / 2, dead === undefined ? {} : { dead });
      emit({ ...trimmed, ...pruned }, () =>
        `trimmed ${trimmed.events} events (${trimmed.groupsSkipped} groups moved past unread ones); pruned ${pruned.commands} commands, ${pruned.deadLetters} dead letters`,
      );
      return 0;
    }
    // dead
    const [sub = 'list', ...ids] = rest;
    const filter = filterOf(values);
    if (sub === 'list') {
      const limit = values.limit === undefined ? 100 : Number(values.limit);
      if (!Number.isInteger(limit) || limit < 1) throw new UsageError('--limit must be an integer >= 1');
      const list = await bus.deadLetters({ ...filter, limit });
      emit(list.map(deadJson), () =>
        list.length === 0
          ? 'no dead letters'
          : table(
              ['dead id', 'source', 'group', 'status', 'name', 'id', 'attempts', 'failed at', 'reason'],
              list.map((d) => [d.deadId, d.source, d.group ?? '-', d.status, String(d.raw.name ?? '-'), String(d.raw.id), d.attempts, d.failedAt.toISOString(), d.reason.length > 60 ? `${d.reason.slice(0, 57)}...` : d.reason]),
            ),
      );
      return 0;
    }
    if (sub === 'show') {
      const id = Number(ids[0]);
      if (!Number.isInteger(id) || id < 1) throw new UsageError('show needs a dead id');
      const [d] = await bus.deadLetters({ after: id - 1, limit: 1 });
      if (!d || d.deadId !== id) throw new Error(`no dead letter ${id}`);
      emit(deadJson(d), () => Object.entries(deadJson(d)).map(([k, v]) => `${k}: ${typeof v === 'string' ? v : JSON.stringify(v)}`).join('\n'));
      return 0;
    }
    if (sub === 'replay') {
      let targets: number[];
      if (values.all) targets = (await allDead(bus, filter)).map((d) => d.deadId);
      else {
        if (ids.length === 0) throw new UsageError('replay needs dead ids, or --all with filters');
        targets = ids.map((s) => {
          const n = Number(s);
          if (!Number.isInteger(n) || n < 1) throw new UsageError(`not a dead id: ${s}`);
          return n;
        });
      }
      const missing: number[] = [];
      let replayed = 0;
      for (const id of targets) {
        if (await bus.replayDeadLetter(id)) replayed++;
        else missing.push(id);
      }
      emit({ replayed, missing }, () => `replayed ${replayed}${missing.length ? `; no such dead letter: ${missing.join(', ')}` : ''}`);
      return missing.length ? 1 : 0;
    }
    if (sub === 'purge') {
      const before = values.before === undefined ? undefined : Date.now() - parseAge(values.before, '--before');
      if (!values.all && Object.keys(filter).length === 0 && before === undefined) {
        throw new UsageError('purge deletes dead letters for good: give filters, --before, or --all');
      }
      const purged = await bus.purgeDeadLetters({ ...filter, ...(before === undefined ? {} : { before }) });
      emit({ purged }, () => `purged ${purged} dead letters`);
      return 0;
    }
    throw new UsageError(`unknown dead subcommand "${sub}"`);
  } catch (e) {
    if (e instanceof UsageError || e instanceof ValidationError || String((e as { code?: unknown }).code).startsWith('ERR_PARSE_ARGS')) {
      console.error(`siblite: ${(e as Error).message}\n${USAGE}`);
      return 2;
    }
    console.error(`siblite: ${(e as Error).message}`);
    return 1;
  } finally {
    await opened?.close();
  }
}

/** Whether this module is the program being run (directly or through the `siblite` bin link). */
function isMain(): boolean {
  try {
    return process.argv[1] !== undefined && realpathSync(process.argv[1]) === realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
}

if (isMain()) {
  // Exit explicitly once the work is done: at a natural exit Node waits for V8's background
  // tasks, and here (node 20) that wait sometimes never ended after the engine's WebAssembly was
  // still being optimized in the background (seen as a CLI run that hung for good, 1 in ~10).
  void main(process.argv.slice(2)).then((code) => process.exit(code));
}
