/**
 * Runs of a task per key that callers in the same turn share (both transports use it to move a
 * consumer group's offset once for many acknowledgements).
 * @module
 */

/** Per-key runs of a task, shared by the calls made before the run starts. */
export class Coalesced<K> {
  private readonly running = new Map<K, Promise<void>>();

  /**
   * Runs `task` for `key`, or joins the run that calls in this turn already asked for. A run
   * starts after a microtask; calls made once it has started ask for a new run.
   */
  run(key: K, task: () => Promise<unknown>): Promise<void> {
    const running = this.running.get(key);
    if (running) return running;
    const p = (async () => {
      await Promise.resolve();
      this.running.delete(key);
      await task();
    })();
    this.running.set(key, p);
    return p;
  }

  /** Resolves once the runs asked for so far have ended (their errors are the callers'). */
  async settled(): Promise<void> {
    await Promise.all([...this.running.values()].map((p) => p.catch(() => {})));
  }
}
