/**
 * `@siblite/bus`: a durable command queue and event log inside a siblite database, with
 * leases, claim tokens, consumer groups, retries, dead letters, workers and a transactional
 * outbox.
 *
 * @packageDocumentation
 */
export { SqliteBus, type SqliteBusOptions } from './sqlite/bus.js';
export {
  checkRetention,
  retainWith,
  runEvery,
  DEFAULT_RETENTION,
  type RetentionDefaults,
  type RetentionOptions,
  type TrimResult,
  type PruneResult,
  type RetainResult,
  type Retainable,
} from './retention.js';
export { BusError, ValidationError, StaleClaimError, DecodeError, PermanentError, BusClosedError } from './errors.js';
export type {
  Bus,
  BaseHandlerContext,
  DeadLetter,
  DeadLetterFilter,
  BusStats,
  Backoff,
  BatchCommand,
  SendManyOptions,
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
  Logger,
  Message,
  MessageInfo,
  MessageKind,
  NameStats,
  PauseTarget,
  Payload,
  ProduceOptions,
  ProduceResult,
  ReceiveOptions,
  SettleOptions,
  StopOptions,
  SubscribeOptions,
  Worker,
  WorkerCounters,
  WorkerEvent,
  WorkerOptions,
} from './types.js';
export type { Claim, Source, Store, TransactResult } from './store.js';
export type { AbandonSignal } from './abandon.js';
export { validateName, validateGroup, validateNamespace } from './validate.js';
export { buildPlans, SCHEMA_VERSION, type Plans } from './sqlite/plans.js';
export { claimCommandRows, claimEventRows, inImmediate, type CommandClaimArgs, type EventClaimArgs, type ClaimedCommandRow, type ClaimedEvent } from './sqlite/claims.js';
export { backoffPolicy } from './backoff.js';
export { validateScheduleName, validateSpec, nextSlot, followingSlot, slotId, type ScheduleSpec, type ScheduleInfo, type Timing } from './schedule.js';
export type { MessageRow } from './codec.js';

// For other transports (`@siblite/bus-postgres`): the shared runtime, codec and validation.
export { startWorker, checkLogger } from './worker.js';
export { encodePayload, encodeHeaders, decodeRow, decodeOrNull, toClaim, type EncodedPayload, type Encoding } from './codec.js';
export { checkBatch, MAX_BATCH } from './validate.js';
export { validateId, validateHeaders, validateContentType, validateMs, validatePriority, validatePositiveInt, validateHandlers, MAX_TIMER_MS, pauseKey, startFromEnd, checkFilter, checkReceiveOptions, DEFAULT_RECEIVE_LEASE, type CheckedFilter, type CheckedReceive } from './validate.js';
export { notify } from './notify.js';
export { makeDelivery, type TransportDelivery } from './delivery.js';
export { groupSource, ADVANCE_EVERY, type GroupSourceParts } from './group-source.js';
export { Coalesced } from './coalesce.js';
export {
  checkMessage,
  checkEventOptions,
  receiveFrom,
  commandSource,
  checkSubscribe,
  eventSource,
  toDeadLetter,
  commandInfo,
  eventInfo,
  buildStats,
  type ClaimStore,
  type CheckedMessage,
  type CheckedSubscribe,
  type CommandRow,
  type DeadRow,
  type StatsRows,
  type QueueStatsRow,
  type GroupStatsRow,
  type DeadStatsRow,
} from './transport.js';
