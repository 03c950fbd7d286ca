/**
 * The {@link Source} of a consumer group, as every transport builds it: the transport's claim,
 * due-time and offset steps, with the offset moved in batches.
 * @module
 */
import type { Source } from './store.js';

/** Acknowledgements after which a group's offset moves (it also moves whenever the worker is idle). */
export const ADVANCE_EVERY = 16;

/** What a transport supplies for {@link groupSource}. */
export interface GroupSourceParts extends Omit<Source, 'settled' | 'idle' | 'buffered'> {
  /** Moves the group's offset over every settled event; failures are retried at the next call. */
  advance(): Promise<unknown>;
}

/**
 * A group's source whose offset moves every {@link ADVANCE_EVERY} acknowledgements and whenever
 * the worker runs out of work: claims never read settled events anyway, so batching only saves
 * commits.
 */
export function groupSource(parts: GroupSourceParts): Source {
  const { advance, ...source } = parts;
  let pending = 0;
  return {
    ...source,
    settled: () => {
      if (++pending >= ADVANCE_EVERY) {
        pending = 0;
        void advance().catch(() => {});
      }
    },
    idle: async () => {
      if (pending === 0) return;
      pending = 0;
      await advance().catch(() => {});
    },
  };
}
