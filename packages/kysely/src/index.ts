/**
 * `@siblite/kysely`: a Kysely dialect over siblite. Every Kysely connection is its own sibling
 * handle, so there is no mutex: transactions run as `BEGIN CONCURRENT` by default and may await
 * side by side; {@link retryTransaction} runs a whole Kysely transaction again on a conflict.
 * @packageDocumentation
 */
export { SibliteDialect, type SibliteDialectConfig } from './dialect.js';
export { SibliteDriver, SibliteKyselyConnection } from './driver.js';
export { retryTransaction } from './retry.js';
