/**
 * The bus clock of a database file: one clock that every process on the machine agrees on,
 * never going back, and deaf to steps of the wall clock.
 *
 * A file database is shared only by processes of one machine (its lock is a directory on a
 * local file system), and they share the machine's monotonic clock (`CLOCK_MONOTONIC`, what
 * `process.hrtime` reads). The database stores an *anchor*: a wall time and the monotonic
 * reading taken at that moment, plus the boot id. Every process computes
 * `now = anchor.wall + (monotonic - anchor.mono)`, so a wall-clock step (NTP, a person,
 * a VM resume) changes nothing: delays, backoffs and leases run on elapsed time. After a
 * reboot the monotonic clock restarts, so the anchor is replaced, starting no earlier than the
 * latest time stored in the bus (times never go back).
 *
 * @module
 */
import { readFileSync } from 'node:fs';

/** The stored anchor. */
export interface ClockAnchor {
  /** Bus time (ms since the epoch) at the anchor. */
  readonly wall: number;
  /** Monotonic reading (ms) at the anchor. */
  readonly mono: number;
  /** The boot the monotonic reading belongs to. */
  readonly boot: string;
}

/** Milliseconds of the machine's monotonic clock (shared by its processes). */
export function monotonicMs(): number {
  return Number(process.hrtime.bigint() / 1000n) / 1000;
}

let bootId: string | undefined;

/** Identifies this boot of the machine (Linux boot id; elsewhere, the boot time to a minute). */
export function currentBoot(): string {
  if (bootId !== undefined) return bootId;
  try {
    bootId = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    bootId = `t${Math.round((Date.now() - monotonicMs()) / 60_000)}`;
  }
  return bootId;
}

/** Parses a stored anchor; `undefined` when missing or malformed. */
export function parseAnchor(text: string | undefined): ClockAnchor | undefined {
  if (text === undefined) return undefined;
  try {
    const a = JSON.parse(text) as ClockAnchor;
    if (Number.isFinite(a.wall) && Number.isFinite(a.mono) && typeof a.boot === 'string') return a;
  } catch {
    // malformed: replaced
  }
  return undefined;
}

/**
 * Whether `anchor` can be used in this process: same boot, and the monotonic clock has not
 * gone below it.
 */
export function anchorUsable(anchor: ClockAnchor | undefined): boolean {
  return anchor !== undefined && anchor.boot === currentBoot() && monotonicMs() >= anchor.mono;
}

/** A new anchor at `max(wall clock, floor)`. */
export function newAnchor(floor: number): ClockAnchor {
  return { wall: Math.max(Date.now(), Math.ceil(floor)), mono: monotonicMs(), boot: currentBoot() };
}

/** The clock of one bus, from its database's anchor. */
export class BusClock {
  private last = 0;

  constructor(private readonly anchor: ClockAnchor) {}

  /** Bus time in whole ms; never less than a value it returned before. */
  now(): number {
    const t = Math.floor(this.anchor.wall + (monotonicMs() - this.anchor.mono));
    if (t > this.last) this.last = t;
    return this.last;
  }
}
