/**
 * `@siblite/bus`: a durable command queue and event log inside a siblite database, with
 * leases, claim tokens, consumer groups, retries, dead letters, workers and a transactional
 * outbox.
 *
 * @packageDocumentation
 */
export { SqliteBus, type SqliteBusOptions } from './sqlite-bus.js';
export { BusError, ValidationError, StaleClaimError, DecodeError, PermanentError, BusClosedError } from './errors.js';
export type {
  Bus,
  DeadLetter,
  DeadLetterFilter,
  BusStats,
  Backoff,
  ExponentialBackoff,
  HandledEvent,
  RetryEvent,
  DeadEvent,
  UnknownEvent,
  StaleEvent,
  ErrorEvent,
  Delivery,
  GroupStats,
  Handler,
  HandlerContext,
  Handlers,
  JsonValue,
  Message,
  MessageKind,
  NameStats,
  Payload,
  ProduceOptions,
  ProduceResult,
  ReceiveOptions,
  SettleOptions,
  SubscribeOptions,
  Worker,
  WorkerCounters,
  WorkerEvent,
  WorkerOptions,
} from './types.js';
export { validateName, validateGroup, validateNamespace } from './validate.js';
export { buildPlans, SCHEMA_VERSION, type Plans } from './plans.js';
export { backoffPolicy } from './backoff.js';
