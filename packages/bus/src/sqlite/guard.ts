/**
 * The handle a handler gets as `context.conn`: the bus's transaction handle, except that it
 * refuses to end that transaction (`COMMIT`, `END`, `ROLLBACK`, `BEGIN`) or to close the
 * handle. A handler that committed by itself would make its writes permanent before the
 * acknowledgement, so a later throw would apply them twice. `SAVEPOINT`, `RELEASE`,
 * `ROLLBACK TO` and `conn.transaction()` (a savepoint inside) stay allowed. (A statement that
 * finds the file locked by another process waits for it per the database's `busyTimeout`,
 * in the core, so the handler is not stopped half-way.)
 *
 * @module
 */
import type { Connection } from '@siblite/core';
import { BusError } from '../errors.js';

/** Strips leading whitespace and comments, then reads the first keyword and the next one. */
function leadingWords(sql: string): [string, string] {
  let s = sql;
  for (;;) {
    const t = s.replace(/^\s+/, '');
    if (t.startsWith('--')) {
      const nl = t.indexOf('\n');
      s = nl < 0 ? '' : t.slice(nl + 1);
    } else if (t.startsWith('/*')) {
      const end = t.indexOf('*/');
      s = end < 0 ? '' : t.slice(end + 2);
    } else {
      s = t;
      break;
    }
  }
  const m = /^([A-Za-z]+)\s*([A-Za-z]*)/.exec(s);
  return [m?.[1]?.toUpperCase() ?? '', m?.[2]?.toUpperCase() ?? ''];
}

/** Whether a statement would end or start a transaction. */
function endsTransaction(sql: string): boolean {
  const [first, second] = leadingWords(sql);
  if (first === 'COMMIT' || first === 'END' || first === 'BEGIN') return true;
  if (first === 'ROLLBACK') return !(second === 'TO' || (second === 'TRANSACTION' && /\bTO\b/i.test(sql)));
  return false;
}

/** Whether a script contains a statement that would end or start a transaction. */
function scriptEndsTransaction(script: string): boolean {
  // Conservative: any statement start (beginning or after `;`) with such a keyword.
  return script.split(';').some((part) => endsTransaction(part));
}

function refuse(what: string): never {
  throw new BusError(
    'SIBLITE_BUS_HANDLER_TRANSACTION',
    `${what} inside a handler: context.conn is in the bus's transaction, which commits together with the acknowledgement once the handler returns`,
    'misuse',
  );
}

/**
 * Wraps a statement prepared on a handler's `context.conn`: once that handler call's transaction
 * is over (`live()` false) the statement is refused, since its handle has gone back to the pool
 * and a run there would commit on its own (or inside another handler's transaction), outside the
 * acknowledgement. Methods that return the statement itself (`pluck()`, `raw()`, ...) return
 * the wrapper, so that a chained statement stays guarded.
 */
function guardStatement<S extends object>(stmt: S, live: () => boolean): S {
  const guarded: S = new Proxy(stmt, {
    get(target, prop, receiver) {
      const value = Reflect.get(target, prop, receiver) as unknown;
      if (typeof value !== 'function') return value;
      return (...args: unknown[]) => {
        if (!live()) refuse('running a statement prepared on context.conn by an earlier handler call is not allowed (prepare it again from this call\'s context.conn)');
        const out = (value as (...a: unknown[]) => unknown).apply(target, args);
        return out === target ? guarded : out;
      };
    },
  });
  return guarded;
}

/**
 * Wraps `conn` for a handler (see the module documentation). `onUse` is called whenever a method
 * of the handle is taken (the handler may be about to run SQL in the transaction); `live` says
 * whether the handler call's transaction is still the one open (statements prepared on the
 * handle are refused after it, see `guardStatement`).
 */
export function guardHandlerConn(conn: Connection, onUse?: () => void, live: () => boolean = () => true): Connection {
  return new Proxy(conn, {
    get(target, prop, receiver) {
      const value = Reflect.get(target, prop, receiver) as unknown;
      if (typeof value !== 'function') return value;
      // After the handler call: its handle went back to the pool (or to another call).
      if (!live()) refuse('using context.conn after the handler call returned is not allowed');
      onUse?.();
      switch (prop) {
        case 'run':
        case 'get':
        case 'all':
        case 'iterate':
          return (sql: string, ...rest: unknown[]) => {
            if (typeof sql === 'string' && endsTransaction(sql)) refuse(`"${leadingWords(sql).join(' ').trim()}" is not allowed`);
            return (value as (...a: unknown[]) => unknown).call(target, sql, ...rest);
          };
        case 'prepare':
          return (sql: string) => {
            if (typeof sql === 'string' && endsTransaction(sql)) refuse(`"${leadingWords(sql).join(' ').trim()}" is not allowed`);
            return guardStatement((value as (s: string) => object).call(target, sql), live);
          };
        case 'exec':
          return (sql: string) => {
            if (typeof sql === 'string' && scriptEndsTransaction(sql)) refuse('ending or starting a transaction is not allowed');
            // A script is not retried: statements before the refused one stay applied.
            return (value as (s: string) => unknown).call(target, sql);
          };
        case 'transaction':
          return (fn: (c: Connection) => unknown, options?: unknown) =>
            (value as (f: (c: Connection) => unknown, o?: unknown) => unknown).call(target, (c: Connection) => fn(guardHandlerConn(c, onUse, live)), options);
        case 'close':
          return () => refuse('closing the handle is not allowed');
        default:
          return (value as (...a: unknown[]) => unknown).bind(target);
      }
    },
  });
}


/**
 * A handler run's transaction, opened when the handler first reads `context.conn`: a handler
 * that never does costs no handle and no `BEGIN CONCURRENT` / `ROLLBACK` (its acknowledgement
 * goes into the bus's write batch). Reading `context.conn` takes a pooled handle and begins the
 * transaction there and then; when `BEGIN` is refused (the file is busy in another process)
 * the read throws that busy error, and the bus runs the handler again.
 */
export class HandlerTx {
  private h: Connection | null = null;
  private begun = false;
  private guarded: Connection | null = null;
  /** Whether the handler took a method of `context.conn` (it may have run SQL in the transaction). */
  used = false;
  /** Set when the handler call is over: statements prepared on `context.conn` are refused after that. */
  private ended = false;

  /** @param acquire - takes a pooled handle (throws when the run was abandoned or the bus closed). */
  constructor(private readonly acquire: () => Connection) {}

  /** The handle, if one was taken (to release, roll back or close it). */
  get handle(): Connection | null {
    return this.h;
  }

  /** The handle with its transaction begun (taken and begun now if need be). */
  begin(): Connection {
    const h = (this.h ??= this.acquire());
    if (!this.begun) {
      h.exec('BEGIN CONCURRENT');
      this.begun = true;
    }
    return h;
  }

  /** What the handler gets as `context.conn`: the guarded handle of the begun transaction. */
  get conn(): Connection {
    if (this.ended) refuse('reading context.conn after the handler call returned is not allowed');
    const h = this.begin();
    return (this.guarded ??= guardHandlerConn(
      h,
      () => {
        this.used = true;
      },
      () => !this.ended,
    ));
  }

  /** The handler call is over (its transaction committed or rolled back). */
  end(): void {
    this.ended = true;
  }
}
