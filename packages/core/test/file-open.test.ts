/**
 * Opening file databases: bad paths give typed errors with the path in the message and change
 * nothing on disk; the locking and durability options are validated and applied.
 */
import { chmodSync, mkdirSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { open } from '../src/index.js';
import { coreDir, ensureBuilt, runWorker, UNPRIVILEGED, unprivilegedCanLoad } from './fixtures/harness.js';
import { expectSqliteError, useScope } from './helpers.js';

const scope = useScope();

/** Lists a directory tree (names relative to `dir`), to prove a failed open left nothing. */
function tree(dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    out.push(e.name);
    if (e.isDirectory()) for (const sub of tree(join(dir, e.name))) out.push(`${e.name}/${sub}`);
  }
  return out.sort();
}

describe('bad paths', () => {
  it('a missing directory: kind io (SQLITE_CANTOPEN), path in the message, nothing created', () => {
    const dir = scope.dir();
    const file = join(dir, 'no', 'such', 'dir', 'x.db');
    const e = expectSqliteError(() => open(file), 'io', 'SQLITE_CANTOPEN');
    expect(e.message).toContain(file);
    expect(e.message).toContain('does not exist');
    expect(tree(dir)).toEqual([]);
  });

  it('a directory where the file should be: kind io, nothing created', () => {
    const dir = scope.dir();
    mkdirSync(join(dir, 'x.db'));
    const e = expectSqliteError(() => open(join(dir, 'x.db')), 'io', 'SQLITE_CANTOPEN');
    expect(e.message).toContain(join(dir, 'x.db'));
    expect(e.message).toContain('is a directory');
    expect(tree(dir)).toEqual(['x.db']);
  });

  it('a path through a regular file: kind io', () => {
    const dir = scope.dir();
    writeFileSync(join(dir, 'plain'), 'x');
    const e = expectSqliteError(() => open(join(dir, 'plain', 'x.db')), 'io', 'SQLITE_CANTOPEN');
    expect(e.message).toContain(join(dir, 'plain', 'x.db'));
    expect(tree(dir)).toEqual(['plain']);
  });

  it('a file that is not a database: kind corrupt (SQLITE_NOTADB), the file untouched', () => {
    const dir = scope.dir();
    const file = join(dir, 'notes.txt');
    const text = 'hello, I am not a database\n'.repeat(20);
    writeFileSync(file, text);
    const e = expectSqliteError(() => open(file), 'corrupt', 'SQLITE_NOTADB');
    expect(e.message).toContain(file);
    expect(tree(dir)).toEqual(['notes.txt']);
    // A short non-empty file too.
    writeFileSync(file, 'SQLite');
    expectSqliteError(() => open(file), 'corrupt', 'SQLITE_NOTADB');
    expect(tree(dir)).toEqual(['notes.txt']);
  });

  it('a missing file with fileMustExist or readonly: kind io, nothing created', () => {
    const dir = scope.dir();
    const file = join(dir, 'x.db');
    expect(expectSqliteError(() => open(file, { fileMustExist: true }), 'io', 'SQLITE_CANTOPEN').message).toContain(file);
    expect(expectSqliteError(() => open(file, { readonly: true }), 'io', 'SQLITE_CANTOPEN').message).toContain(file);
    expect(tree(dir)).toEqual([]);
  });

  it('an empty file is a new, empty database', () => {
    const dir = scope.dir();
    const file = join(dir, 'empty.db');
    writeFileSync(file, '');
    const c = scope.open(file);
    c.exec('CREATE TABLE t (x)');
    expect(c.all('SELECT name FROM sqlite_schema')).toEqual([{ name: 't' }]);
  });

  it('permission denied and read-only files, as an unprivileged process', async (ctx) => {
    ensureBuilt();
    if (!unprivilegedCanLoad()) {
      // As root, the check needs a child running as 'nobody', which must be able to read the
      // package: not so when the checkout sits under a directory only root may enter.
      console.warn(`skipped: user 'nobody' cannot read ${coreDir}, so the unprivileged child cannot start here`);
      ctx.skip();
    }
    const dir = scope.dir();
    chmodSync(dir, 0o777);
    const make = (name: string, mode: number) => {
      const file = join(dir, name);
      const c = open(file);
      c.exec('CREATE TABLE t (x); INSERT INTO t VALUES (1)');
      c.close();
      chmodSync(file, mode);
      return file;
    };
    const secret = make('secret.db', 0o000);
    const ro = make('ro.db', 0o444);
    const locked = join(dir, 'locked');
    mkdirSync(locked, { mode: 0o755 }); // owned by this user: not writable for the child
    const inLocked = join(locked, 'in.db');
    const before = tree(dir);

    // As root (CI containers), permissions do not apply: run the checks as 'nobody'.
    const asUser = process.getuid?.() === 0 ? UNPRIVILEGED : {};
    const sql = 'SELECT count(*) AS n FROM t';
    const r1 = await runWorker({ cmd: 'probe', file: secret, sql }, asUser);
    expect(r1.error).toMatchObject({ kind: 'io', code: 'SQLITE_CANTOPEN' });
    expect(r1.error.message).toContain(secret);
    expect(r1.error.message).toContain('permission denied');

    const r2 = await runWorker({ cmd: 'probe', file: ro, sql }, asUser);
    expect(r2.error).toMatchObject({ kind: 'readonly', code: 'SQLITE_READONLY' });
    expect(r2.error.message).toContain(ro);

    // Asked for read-only, the same file opens and reads; writes fail as readonly.
    const r3 = await runWorker({ cmd: 'probe', file: ro, sql, options: { readonly: true } }, asUser);
    expect(r3).toMatchObject({ ok: true, row: { n: 1 } });
    const r4 = await runWorker({ cmd: 'probe', file: ro, sql, options: { readonly: true }, write: 'INSERT INTO t VALUES (2)' }, asUser);
    expect(r4.error).toMatchObject({ kind: 'readonly' });

    const r5 = await runWorker({ cmd: 'probe', file: inLocked, sql }, asUser);
    expect(r5.error).toMatchObject({ kind: 'io', code: 'SQLITE_CANTOPEN' });
    expect(r5.error.message).toContain(inLocked);

    // A database in a directory the user cannot write (the lock directory cannot be created):
    // readonly: true reads it (holding only the guard); for writing it is refused up front.
    const readable = join(locked, 'readable.db');
    const c = open(readable);
    c.exec('CREATE TABLE t (x); INSERT INTO t VALUES (1)');
    c.close();
    const r6 = await runWorker({ cmd: 'probe', file: readable, sql, options: { readonly: true } }, asUser);
    expect(r6).toMatchObject({ ok: true, row: { n: 1 } });
    const r7 = await runWorker({ cmd: 'probe', file: readable, sql }, asUser);
    expect(r7.error).toMatchObject({ kind: 'readonly', code: 'SQLITE_READONLY' });
    expect(r7.error.message).toContain(readable);
    rmSync(readable);

    expect(tree(dir)).toEqual(before);
    chmodSync(secret, 0o644);
  });
});

describe('options', () => {
  it("journalMode 'wal' is rejected with kind misuse, before anything is created", () => {
    const dir = scope.dir();
    const e = expectSqliteError(() => open(join(dir, 'x.db'), { journalMode: 'wal' as never }), 'misuse', 'SQLITE_MISUSE');
    expect(e.message).toContain('wal');
    expect(tree(dir)).toEqual([]);
  });

  it('unknown option values are rejected with kind misuse', () => {
    const file = scope.file();
    expectSqliteError(() => open(file, { locking: 'sometimes' as never }), 'misuse');
    expectSqliteError(() => open(file, { synchronous: 'always' as never }), 'misuse');
    expectSqliteError(() => open(file, { journalMode: 'weird' as never }), 'misuse');
  });

  it('synchronous and journalMode are applied; defaults are full and delete', () => {
    const a = scope.open(scope.file());
    expect(a.get('PRAGMA synchronous')).toEqual({ synchronous: 2 });
    expect(a.get('PRAGMA journal_mode')).toEqual({ journal_mode: 'delete' });
    const b = scope.open(scope.file(), { synchronous: 'normal', journalMode: 'truncate' });
    expect(b.get('PRAGMA synchronous')).toEqual({ synchronous: 1 });
    expect(b.get('PRAGMA journal_mode')).toEqual({ journal_mode: 'truncate' });
    const c = scope.open(scope.file(), { synchronous: 'off', journalMode: 'persist' });
    expect(c.get('PRAGMA synchronous')).toEqual({ synchronous: 0 });
    expect(c.get('PRAGMA journal_mode')).toEqual({ journal_mode: 'persist' });
  });

  it('a second open of the same file with different file options is a misuse; same or omitted is fine', () => {
    const file = scope.file();
    scope.open(file, { locking: 'shared' });
    scope.open(file);
    scope.open(file, { locking: 'shared' });
    const e = expectSqliteError(() => open(file, { locking: 'exclusive' }), 'misuse');
    expect(e.message).toContain('shared');
  });
});

