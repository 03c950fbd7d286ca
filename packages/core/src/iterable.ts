/**
 * Iterator helpers.
 * @module
 */

/** An iterator that is also iterable (for `for...of`). */
export function iterable<T>(it: Iterator<T>): IterableIterator<T> {
  if (Symbol.iterator in it) return it as IterableIterator<T>;
  return Object.assign(it, {
    [Symbol.iterator]() {
      return this;
    },
  }) as IterableIterator<T>;
}
