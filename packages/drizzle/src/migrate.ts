/**
 * drizzle-kit migrations.
 * @module
 */
import type { MigrationConfig } from 'drizzle-orm/migrator';
import { migrate as proxyMigrate } from 'drizzle-orm/sqlite-proxy/migrator';
import type { SibliteDrizzleDatabase } from './driver.js';

/**
 * Applies the migrations that `drizzle-kit generate` wrote to `config.migrationsFolder` and that
 * the database has not seen yet, all in one `BEGIN IMMEDIATE` transaction (schema changes are
 * not allowed in `BEGIN CONCURRENT`) on a handle of its own: all of them apply, or none.
 */
export async function migrate<TSchema extends Record<string, unknown>>(
  db: SibliteDrizzleDatabase<TSchema>,
  config: MigrationConfig,
): Promise<void> {
  await proxyMigrate(
    db,
    async (queries) => {
      const pooled = db.$pool.acquire();
      const h = pooled.handle;
      try {
        h.exec('BEGIN IMMEDIATE');
        try {
          for (const q of queries) h.exec(q);
          h.exec('COMMIT');
        } catch (e) {
          if (h.inTransaction) h.exec('ROLLBACK');
          throw e;
        }
      } finally {
        db.$pool.release(pooled);
      }
    },
    config,
  );
}
