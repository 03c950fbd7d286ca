/**
 * The file system saying no: a full disk and a read-only file system, on a small tmpfs mounted
 * for the test (needs root; skipped with a note otherwise). Also names: one file under two names
 * (a symlink opened before its target exists, hard links), file modes and the umask.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, linkSync, mkdtempSync, readdirSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { open } from '../src/index.js';
import { checkSqliteError, thrown, useScope } from './helpers.js';

const scope = useScope();
const mounts: string[] = [];

afterEach(() => {
  for (const m of mounts.splice(0)) {
    spawnSync('umount', ['-l', m]);
    rmSync(m, { recursive: true, force: true });
  }
});

/** Mounts a tmpfs of `size` bytes; null (the caller skips) where this process may not mount. */
function tmpfs(size: number): string | null {
  if (process.platform !== 'linux' || process.getuid?.() !== 0) return null;
  const dir = mkdtempSync(join(tmpdir(), 'siblite-tmpfs-'));
  if (spawnSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', dir]).status !== 0) {
    rmSync(dir, { recursive: true, force: true });
    return null;
  }
  mounts.push(dir);
  return dir;
}

describe('a full disk', () => {
  it('a read that cannot take the lock fails with kind full naming the file; once space is back it works, nothing left behind', (ctx) => {
    const dir = tmpfs(256 * 1024);
    if (!dir) {
      console.warn('SKIPPED: full-disk test needs root to mount a small tmpfs');
      ctx.skip();
      return;
    }
    const file = join(dir, 'full.db');
    const c = open(file);
    c.exec('CREATE TABLE t (x); INSERT INTO t VALUES (1)');
    c.close();
    // Fill the file system to the last byte.
    const filler = join(dir, 'filler');
    const chunk = Buffer.alloc(4096, 1);
    writeFileSync(filler, '');
    try {
      for (;;) writeFileSync(filler, chunk, { flag: 'a' });
    } catch (e) {
      expect((e as NodeJS.ErrnoException).code).toBe('ENOSPC');
    }
    const d = open(file, { busyTimeout: 0 });
    const e = checkSqliteError(thrown(() => d.get('SELECT x FROM t')), 'full', 'SQLITE_FULL');
    expect(e.message).toContain(file);
    expect(e.message).toMatch(/ENOSPC|no space/);
    expect(readdirSync(dir).sort()).toEqual(['filler', 'full.db']); // no half-made lock
    rmSync(filler);
    expect(d.get('SELECT x FROM t')).toEqual({ x: 1 });
    d.close();
    expect(readdirSync(dir).filter((n) => n !== 'full.db')).toEqual([]);
  });
});

describe('a read-only file system', () => {
  it('readonly: true reads a database where the lock directory cannot be created; writing is refused with a clear error', (ctx) => {
    const dir = tmpfs(1024 * 1024);
    if (!dir) {
      console.warn('SKIPPED: read-only file system test needs root to mount a tmpfs');
      ctx.skip();
      return;
    }
    const file = join(dir, 'ro.db');
    const c = open(file);
    c.exec('CREATE TABLE t (x); INSERT INTO t VALUES (7)');
    c.close();
    expect(spawnSync('mount', ['-o', 'remount,ro', dir]).status).toBe(0);
    const r = open(file, { readonly: true });
    expect(r.get('SELECT x FROM t')).toEqual({ x: 7 });
    expect(r.get('SELECT count(*) AS n FROM t')).toEqual({ n: 1 });
    checkSqliteError(thrown(() => r.run('INSERT INTO t VALUES (8)')), 'readonly');
    r.close();
    // Without readonly the open is refused up front, naming the file.
    const e = checkSqliteError(thrown(() => open(file)), 'readonly');
    expect(e.message).toContain(file);
  });
});

describe('one file, one name', () => {
  it('a symlink opened before its target exists locks and journals under the target', () => {
    const dir = scope.dir();
    const target = join(dir, 'real.db');
    const link = join(dir, 'alias.db');
    symlinkSync(target, link); // dangling
    const viaLink = scope.open(link, { locking: 'exclusive' });
    viaLink.exec('CREATE TABLE t (x)');
    expect(viaLink.path).toBe(target);
    expect(existsSync(`${target}.lock`)).toBe(true);
    expect(existsSync(`${link}.lock`)).toBe(false);
    // Another process (here: a fresh name lookup) opening the target finds the same lock.
    viaLink.close();
    const direct = scope.open(target);
    expect(direct.all('SELECT * FROM t')).toEqual([]);
  });

  it('a dangling symlink chain is followed; a symlink loop is refused', () => {
    const dir = scope.dir();
    symlinkSync(join(dir, 'b'), join(dir, 'a'));
    symlinkSync(join(dir, 'c.db'), join(dir, 'b'));
    expect(scope.open(join(dir, 'a')).path).toBe(join(dir, 'c.db'));
    symlinkSync(join(dir, 'y'), join(dir, 'x'));
    symlinkSync(join(dir, 'x'), join(dir, 'y'));
    checkSqliteError(thrown(() => open(join(dir, 'x'))), 'io', 'SQLITE_CANTOPEN');
  });

  it('a hard-linked database is refused with a clear error, at open and when the link appears later', () => {
    const dir = scope.dir();
    const file = join(dir, 'h.db');
    const c = open(file);
    c.exec('CREATE TABLE t (x)');
    c.close();
    linkSync(file, join(dir, 'h2.db'));
    const e = checkSqliteError(thrown(() => open(join(dir, 'h2.db'))), 'io', 'SQLITE_CANTOPEN');
    expect(e.message).toMatch(/2 hard links/);
    rmSync(join(dir, 'h2.db'));
    const d = scope.open(file, { locking: 'shared' });
    d.get('SELECT count(*) FROM t');
    linkSync(file, join(dir, 'h3.db'));
    const later = checkSqliteError(thrown(() => d.get('SELECT count(*) FROM t')), 'io', 'SQLITE_CANTOPEN');
    expect(later.message).toContain(file);
    expect(later.message).toMatch(/hard links/);
  });
});

describe('file modes', () => {
  it('the database and its journal follow the umask (not a fixed 0600)', () => {
    const old = process.umask(0o022);
    try {
      const file = scope.file('m.db');
      const c = scope.open(file, { journalMode: 'persist' });
      c.exec('CREATE TABLE t (x); INSERT INTO t VALUES (1)');
      expect(statSync(file).mode & 0o777).toBe(0o644);
      expect(statSync(`${file}-journal`).mode & 0o777).toBe(0o644);
    } finally {
      process.umask(old);
    }
  });
});
