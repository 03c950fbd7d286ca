/**
 * `@siblite/bus-postgres`: the `@siblite/bus` API on PostgreSQL (node-postgres), for buses
 * shared by many machines. Same handlers, same worker options, same conformance suite.
 *
 * @packageDocumentation
 */
export { PgBus, type PgBusOptions, type PgHandlerContext, type PgHandlers, type PgProduceOptions, type PgSettleOptions, type PgDelivery } from './bus.js';
export { PG_SCHEMA_VERSION, quoteSchema } from './schema.js';
