// A minimal async mutex: what a single-connection query builder (Kysely's and Drizzle's
// SQLite drivers) effectively does, serializing each transaction, awaits included.
export class Mutex {
  #tail = Promise.resolve();

  /** Runs `fn` once every earlier holder has finished; returns fn's result. */
  async run(fn) {
    const previous = this.#tail;
    let release;
    this.#tail = new Promise((resolve) => (release = resolve));
    await previous;
    try {
      return await fn();
    } finally {
      release();
    }
  }
}
