/**
 * The signal a worker gives `Store.transact` to roll a handler's transaction back for
 * good: the part of `AbortSignal` transports use, without its cost. One is made per message,
 * and an `AbortController` with its signal costs some 20 µs of CPU on Node 20, a tenth of
 * what a no-op handler costs on PostgreSQL.
 *
 * @module
 */
/** What a transport may use of the `abandon` signal of `Store.transact`; an `AbortSignal` has it too. */
export interface AbandonSignal {
  /** Whether it was aborted. */
  readonly aborted: boolean;
  /** Why (set when aborted). */
  readonly reason: unknown;
  /** Calls `listener` once when it is aborted (never if it already was). */
  addEventListener(type: 'abort', listener: () => void, options?: { once?: boolean }): void;
  /** Removes a listener added with {@link AbandonSignal.addEventListener}. */
  removeEventListener(type: 'abort', listener: () => void): void;
}

/** A one-shot abort flag: an {@link AbandonSignal} that can be aborted. @internal */
export class Abandon implements AbandonSignal {
  aborted = false;
  reason: unknown = undefined;
  private listeners: (() => void)[] | null = null;

  /** Aborts with `reason` and calls the listeners, once; later calls do nothing. */
  abort(reason: unknown): void {
    if (this.aborted) return;
    this.aborted = true;
    this.reason = reason;
    const listeners = this.listeners;
    this.listeners = null;
    for (const l of listeners ?? []) {
      try {
        l();
      } catch {
        // as with EventTarget, one listener's failure does not stop the others
      }
    }
  }

  /** Listeners are always once: a signal aborts once. */
  addEventListener(_type: 'abort', listener: () => void): void {
    if (!this.aborted) (this.listeners ??= []).push(listener);
  }

  removeEventListener(_type: 'abort', listener: () => void): void {
    const i = this.listeners?.indexOf(listener) ?? -1;
    if (i >= 0) this.listeners!.splice(i, 1);
  }
}
