/**
 * Cleanup never fails: `sqlite3_finalize` frees a statement whatever it returns, and the error
 * it may report only repeats the last evaluation's. Found by the two-process property: closing
 * an engine threw "database is locked" because the file policy's last hand-back read had been
 * refused by another process.
 */
import { describe, expect, it } from 'vitest';
import { finalizeStatement, loadSqlite } from '../src/file/load.js';

describe('finalizeStatement', () => {
  it('frees a statement whose last step failed, without rethrowing that failure', () => {
    const { Database } = loadSqlite();
    const db = new Database(':memory:');
    try {
      db.exec('CREATE TABLE t (id INTEGER PRIMARY KEY); INSERT INTO t VALUES (1)');
      const stmt = db.prepare('INSERT INTO t VALUES (1)');
      expect(() => stmt.run()).toThrow(/UNIQUE/);
      expect(() => finalizeStatement(stmt)).not.toThrow();
      expect(stmt.isFinalized).toBe(true);
      expect(() => finalizeStatement(stmt)).not.toThrow(); // twice is harmless
    } finally {
      db.close();
    }
  });
});
