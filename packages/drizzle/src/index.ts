/**
 * `@siblite/drizzle`: a Drizzle ORM driver over siblite. Every `db.transaction()` runs on a
 * sibling handle of its own as `BEGIN CONCURRENT`, so transactions may await side by side;
 * rows travel as arrays, so joins of same-named columns are exact; {@link retryTransaction}
 * reruns a whole transaction on a conflict, seeing through Drizzle's wrapped errors.
 * @packageDocumentation
 */
export { drizzle, type SibliteDrizzleConfig, type SibliteDrizzleDatabase } from './driver.js';
export { migrate } from './migrate.js';
export { retryTransaction } from './retry.js';
