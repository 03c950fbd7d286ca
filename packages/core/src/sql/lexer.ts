/**
 * A small SQLite lexer: enough to split a script into statements and to read the keywords
 * that decide how siblite routes a statement. It never interprets expressions.
 * @module
 */

/** One token: a keyword or identifier (`word`), a quoted thing, a number, or punctuation. */
export interface Token {
  type: 'word' | 'quoted' | 'string' | 'number' | 'param' | 'punct';
  /** Lower-cased for words, the raw text otherwise. */
  text: string;
  start: number;
  end: number;
}

const isWordStart = (c: number) =>
  (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || c === 95 || c > 127;
const isWordPart = (c: number) => isWordStart(c) || (c >= 48 && c <= 57) || c === 36;
const isDigit = (c: number) => c >= 48 && c <= 57;

/** Tokenizes `sql`; comments and white space are dropped. An unterminated quote ends the input. */
export function tokenize(sql: string): Token[] {
  const out: Token[] = [];
  const n = sql.length;
  let i = 0;
  while (i < n) {
    const c = sql.charCodeAt(i);
    if (c <= 32) {
      i++;
    } else if (c === 45 /* - */ && sql.charCodeAt(i + 1) === 45) {
      const nl = sql.indexOf('\n', i);
      i = nl < 0 ? n : nl + 1;
    } else if (c === 47 /* / */ && sql.charCodeAt(i + 1) === 42) {
      const close = sql.indexOf('*/', i + 2);
      i = close < 0 ? n : close + 2;
    } else if (c === 39 /* ' */ || c === 34 /* " */ || c === 96 /* ` */) {
      const start = i;
      i++;
      while (i < n) {
        if (sql.charCodeAt(i) === c) {
          if (sql.charCodeAt(i + 1) === c) i += 2;
          else break;
        } else i++;
      }
      i = Math.min(i + 1, n);
      out.push({ type: c === 39 ? 'string' : 'quoted', text: sql.slice(start, i), start, end: i });
    } else if (c === 91 /* [ */) {
      const start = i;
      const close = sql.indexOf(']', i);
      i = close < 0 ? n : close + 1;
      out.push({ type: 'quoted', text: sql.slice(start, i), start, end: i });
    } else if ((c === 120 || c === 88) && sql.charCodeAt(i + 1) === 39) {
      // Blob literal x'...'
      const start = i;
      const close = sql.indexOf("'", i + 2);
      i = close < 0 ? n : close + 1;
      out.push({ type: 'string', text: sql.slice(start, i), start, end: i });
    } else if (isWordStart(c)) {
      const start = i;
      while (i < n && isWordPart(sql.charCodeAt(i))) i++;
      out.push({ type: 'word', text: sql.slice(start, i).toLowerCase(), start, end: i });
    } else if (isDigit(c) || (c === 46 && isDigit(sql.charCodeAt(i + 1)))) {
      const start = i;
      while (i < n && (isWordPart(sql.charCodeAt(i)) || sql.charCodeAt(i) === 46)) i++;
      out.push({ type: 'number', text: sql.slice(start, i), start, end: i });
    } else if (c === 63 /* ? */ || c === 58 /* : */ || c === 64 /* @ */ || c === 36 /* $ */) {
      const start = i;
      i++;
      while (i < n && isWordPart(sql.charCodeAt(i))) i++;
      out.push({ type: 'param', text: sql.slice(start, i), start, end: i });
    } else {
      out.push({ type: 'punct', text: sql[i] as string, start: i, end: i + 1 });
      i++;
    }
  }
  return out;
}

/** One statement of a script: its text (without the `;`) and its tokens. */
export interface SplitStatement {
  sql: string;
  tokens: Token[];
}

/**
 * Splits a script into statements at top-level semicolons. Semicolons inside strings,
 * comments and `CREATE TRIGGER ... BEGIN ... END` bodies do not split. Empty statements are
 * dropped.
 */
export function splitStatements(script: string): SplitStatement[] {
  const tokens = tokenize(script);
  const out: SplitStatement[] = [];
  let first = 0;
  let depth = 0; // BEGIN/CASE ... END nesting inside a trigger body
  let inTrigger = false;
  for (let i = 0; i < tokens.length; i++) {
    const t = tokens[i] as Token;
    if (i === first) inTrigger = isCreateTrigger(tokens, first);
    if (inTrigger && t.type === 'word') {
      if (t.text === 'begin' || t.text === 'case') depth++;
      else if (t.text === 'end' && depth > 0) depth--;
    }
    if (t.type === 'punct' && t.text === ';' && depth === 0) {
      if (i > first) out.push(slice(script, tokens, first, i));
      first = i + 1;
    }
  }
  if (first < tokens.length) out.push(slice(script, tokens, first, tokens.length));
  return out;
}

function slice(script: string, tokens: Token[], from: number, to: number): SplitStatement {
  const part = tokens.slice(from, to);
  const start = (part[0] as Token).start;
  const end = (part[part.length - 1] as Token).end;
  const sql = script.slice(start, end);
  return { sql, tokens: part.map((t) => ({ ...t, start: t.start - start, end: t.end - start })) };
}

function isCreateTrigger(tokens: Token[], at: number): boolean {
  const w = (k: number) => tokens[at + k]?.text;
  if (w(0) !== 'create') return false;
  return w(1) === 'trigger' || ((w(1) === 'temp' || w(1) === 'temporary') && w(2) === 'trigger');
}

/** The transaction modes a `BEGIN` can ask for. */
export type BeginMode = 'deferred' | 'immediate' | 'exclusive' | 'concurrent';

/** What a statement is, as far as routing it between handles is concerned. */
export type StatementClass =
  | { type: 'begin'; mode: BeginMode }
  | { type: 'commit' }
  | { type: 'rollback' }
  | { type: 'savepoint'; name: string }
  | { type: 'release'; name: string }
  | { type: 'rollback_to'; name: string }
  | { type: 'journal_mode'; value: string | null }
  | { type: 'busy_timeout'; value: string | null }
  | { type: 'ddl' }
  /**
   * Changes the shared connection's state or needs it outside any transaction: a PRAGMA that
   * sets something, VACUUM, ATTACH, DETACH. Such a statement never runs inside another handle's
   * real transaction (it would fail there, or be silently ignored).
   */
  | { type: 'setting' }
  | { type: 'dml'; verb: 'select' | 'insert' | 'update' | 'delete' | 'other' };

const DDL = new Set(['create', 'drop', 'alter', 'reindex', 'analyze']);
const SETTINGS = new Set(['vacuum', 'attach', 'detach']);
/** PRAGMAs that take an argument but only report (the table-valued ones). */
const QUERY_PRAGMAS = new Set([
  'table_info',
  'table_xinfo',
  'table_list',
  'index_info',
  'index_xinfo',
  'index_list',
  'foreign_key_list',
  'foreign_key_check',
  'integrity_check',
  'quick_check',
]);

/** Classifies one statement from its tokens. Unknown shapes are `dml` with verb `other`. */
export function classify(tokens: Token[]): StatementClass {
  const w = (k: number) => (tokens[k]?.type === 'word' ? (tokens[k] as Token).text : undefined);
  const first = w(0);
  switch (first) {
    case 'begin': {
      const m = w(1);
      const mode: BeginMode =
        m === 'immediate' || m === 'exclusive' || m === 'concurrent' ? m : 'deferred';
      return { type: 'begin', mode };
    }
    case 'commit':
    case 'end':
      return { type: 'commit' };
    case 'rollback': {
      let k = 1;
      if (w(k) === 'transaction') k++;
      if (w(k) === 'to') {
        k++;
        if (w(k) === 'savepoint') k++;
        return { type: 'rollback_to', name: nameOf(tokens[k]) };
      }
      return { type: 'rollback' };
    }
    case 'savepoint':
      return { type: 'savepoint', name: nameOf(tokens[1]) };
    case 'release':
      return { type: 'release', name: nameOf(tokens[w(1) === 'savepoint' ? 2 : 1]) };
    case 'pragma': {
      let k = 1;
      if (tokens[k + 1]?.text === '.') k += 2;
      if (w(k) === 'journal_mode') {
        const v = tokens[k + 1]?.text === '=' ? tokens[k + 2] : tokens[k + 1]?.text === '(' ? tokens[k + 2] : undefined;
        return { type: 'journal_mode', value: v ? nameOf(v).toLowerCase() : null };
      }
      if (w(k) === 'busy_timeout') {
        // siblite's own busy timeout (see busy-timeout.ts): the value's tokens, e.g. "-1".
        const at = tokens[k + 1]?.text === '=' || tokens[k + 1]?.text === '(' ? k + 2 : -1;
        const value = at < 0 ? null : tokens.slice(at).filter((t) => t.text !== ')' && t.text !== ';').map((t) => nameOf(t)).join('');
        return { type: 'busy_timeout', value };
      }
      const sets = tokens[k + 1]?.text === '=' || tokens[k + 1]?.text === '(';
      if (sets && !QUERY_PRAGMAS.has(w(k) ?? '')) return { type: 'setting' };
      return { type: 'dml', verb: 'other' };
    }
    default:
      if (first && DDL.has(first)) return { type: 'ddl' };
      if (first && SETTINGS.has(first)) return { type: 'setting' };
      return { type: 'dml', verb: verbOf(tokens) };
  }
}

/** The verb of a DML statement, looking past a leading `WITH` clause. */
function verbOf(tokens: Token[]): 'select' | 'insert' | 'update' | 'delete' | 'other' {
  let depth = 0;
  for (const t of tokens) {
    if (t.type === 'punct') {
      if (t.text === '(') depth++;
      else if (t.text === ')') depth--;
      continue;
    }
    if (depth !== 0 || t.type !== 'word') continue;
    switch (t.text) {
      case 'select':
      case 'values':
        return 'select';
      case 'insert':
      case 'replace':
        return 'insert';
      case 'update':
        return 'update';
      case 'delete':
        return 'delete';
      case 'with':
      case 'recursive':
      case 'as':
      case 'not':
      case 'materialized':
        continue;
      default:
        // A CTE name or column list word; keep looking only while inside a WITH clause.
        if (tokens[0]?.text !== 'with') return 'other';
    }
  }
  return 'other';
}

/** The plain name of an identifier token (quotes removed). */
export function nameOf(t: Token | undefined): string {
  if (!t) return '';
  const s = t.text;
  if (t.type === 'quoted' || t.type === 'string') {
    const inner = s.slice(1, -1);
    const q = s[0] as string;
    return q === '[' ? inner : inner.split(q + q).join(q);
  }
  return s;
}

/**
 * The shape of a single-row `INSERT [OR ABORT|FAIL|IGNORE|ROLLBACK] INTO t (cols) VALUES (...)
 * [ON CONFLICT ...] [RETURNING ...]`: the table, its listed columns, and where an extra column
 * and value can be spliced in to give the row an explicit rowid. Anything else (several rows,
 * SELECT, OR REPLACE, DEFAULT VALUES, WITH) returns `undefined`.
 */
export interface SingleRowInsert {
  schema: string | undefined;
  table: string;
  columns: string[];
  /** Offset of the `)` that closes the column list. */
  columnsClose: number;
  /** Offset of the `)` that closes the single VALUES tuple. */
  valuesClose: number;
  /** `DEFAULT VALUES`: the offsets of `DEFAULT` and of the end of `VALUES` (no column list). */
  defaults?: { start: number; end: number };
}

/** The table an INSERT (or REPLACE) writes into, looking past a leading WITH clause. */
export function insertTarget(tokens: Token[]): { schema: string | undefined; table: string } | undefined {
  let depth = 0;
  for (let k = 0; k < tokens.length; k++) {
    const t = tokens[k] as Token;
    if (t.text === '(') depth++;
    else if (t.text === ')') depth--;
    if (depth !== 0 || t.type !== 'word' || t.text !== 'into') continue;
    const prev = tokens[k - 1]?.text;
    if (prev !== 'insert' && prev !== 'replace' && tokens[k - 3]?.text !== 'insert') return undefined;
    const first = tokens[k + 1];
    if (!first) return undefined;
    if (tokens[k + 2]?.text === '.') return { schema: nameOf(first), table: nameOf(tokens[k + 3]) };
    return { schema: undefined, table: nameOf(first) };
  }
  return undefined;
}

/** Recognizes a {@link SingleRowInsert}. */
export function singleRowInsert(tokens: Token[]): SingleRowInsert | undefined {
  let k = 0;
  const at = (i: number) => tokens[i];
  if (at(k)?.text !== 'insert' && at(k)?.text !== 'replace') return undefined;
  k++;
  if (at(0)?.text === 'insert' && at(k)?.text === 'or') {
    const c = at(k + 1)?.text;
    if (c !== 'abort' && c !== 'fail' && c !== 'ignore' && c !== 'rollback' && c !== 'replace') return undefined;
    k += 2;
  }
  if (at(k)?.text !== 'into') return undefined;
  k++;
  let schema: string | undefined;
  let table = nameOf(at(k));
  if (at(k + 1)?.text === '.') {
    schema = table;
    table = nameOf(at(k + 2));
    k += 2;
  }
  k++;
  if (at(k)?.text === 'as') k += 2;
  if (at(k)?.text === 'default' && at(k + 1)?.text === 'values') {
    const next = at(k + 2);
    if (next && next.text !== 'returning') return undefined;
    const d = { start: (at(k) as Token).start, end: (at(k + 1) as Token).end };
    return { schema, table, columns: [], columnsClose: d.start, valuesClose: d.end, defaults: d };
  }
  if (at(k)?.text !== '(') return undefined;
  k++;
  const columns: string[] = [];
  while (k < tokens.length && at(k)?.text !== ')') {
    const t = at(k) as Token;
    if (t.text !== ',') columns.push(nameOf(t).toLowerCase());
    k++;
  }
  const columnsClose = at(k);
  if (!columnsClose || columns.length === 0) return undefined;
  k++;
  if (at(k)?.text !== 'values' || at(k + 1)?.text !== '(') return undefined;
  k += 2;
  let depth = 1;
  while (k < tokens.length && depth > 0) {
    const t = (at(k) as Token).text;
    if (t === '(') depth++;
    else if (t === ')') depth--;
    if (depth > 0) k++;
  }
  const valuesClose = at(k);
  if (!valuesClose) return undefined;
  // An upsert clause may follow: with an explicit rowid, a conflict on its target still updates
  // (or skips) as before, and a conflict on the rowid itself surfaces as an error.
  const next = at(k + 1);
  if (next && next.text !== 'returning' && next.text !== 'on') return undefined;
  return { schema, table, columns, columnsClose: columnsClose.start, valuesClose: valuesClose.start };
}

/**
 * How many parameter slots the statement has, numbered as SQLite numbers them: `?` takes the
 * next slot, `?NNN` slot NNN, and a named parameter a new slot the first time its name appears.
 * (The engine binding does not export `sqlite3_bind_parameter_count`.)
 */
export function parameterCount(tokens: readonly Token[]): number {
  let count = 0;
  let names: Set<string> | undefined;
  for (const t of tokens) {
    if (t.type !== 'param') continue;
    if (t.text === '?') count++;
    else if (t.text[0] === '?') count = Math.max(count, Number(t.text.slice(1)) || 0);
    else {
      names ??= new Set();
      if (!names.has(t.text)) {
        names.add(t.text);
        count++;
      }
    }
  }
  return count;
}
